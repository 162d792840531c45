"""hubconf.py through paddle.hub, as a user calls it on a clone: list, help, and load with source='local'
for a CoopFlow checkpoint prefix, the official code's tiny CoopFlow and flow-only files (tests/fixtures),
and fresh networks."""
import json
import os

import numpy as np
import paddle
import pytest

import paddle_coopflow as pcf
from conftest import OFFICIAL_TINY, ROOT

ENTRIES = {"coopflow_cifar10", "coopflow_cifar10_t200", "coopflow_pre_cifar10", "flow_cifar10", "langevin_cifar10",
           "coopflow_svhn", "coopflow_pre_svhn", "flow_svhn", "coopflow_celeba", "coopflow_pre_celeba",
           "flow_celeba", "digits_demo"}


def _hub_load(name, **kwargs):
    return paddle.hub.load(ROOT, name, source="local", **kwargs)


@pytest.fixture(scope="module")
def tiny_overrides():
    """The widths of the official tiny files (config.json) as -o strings."""
    spec = json.load(open(os.path.join(OFFICIAL_TINY, "config.json")))
    over = [f"Flow.{k}={json.dumps(v)}" for k, v in spec["flow"].items()] + ["Flow.num_dequant_components=32"]
    return over + [f"EBM.{k}={v}" for k, v in spec["ebm"].items()]


@pytest.fixture(scope="module")
def ref():
    with np.load(os.path.join(OFFICIAL_TINY, "reference.npz")) as z:
        return {k: z[k] for k in z.files}


def _rel(a, b):
    return float(np.abs(np.asarray(a, np.float64) - b).max() / np.abs(b).max())


def test_list_names_the_entry_points_only():
    assert set(paddle.hub.list(ROOT, source="local")) == ENTRIES


def test_help_describes_the_model_and_the_arguments():
    doc = paddle.hub.help(ROOT, "flow_cifar10", source="local")
    assert "configs/cifar10_flow_pretrain.yaml" in doc
    assert all(f"{arg}:" in doc for arg in ("ckpt", "official", "overrides", "device", "threads"))


def test_every_entry_point_names_an_existing_config():
    import hubconf

    for name in ENTRIES:
        doc = getattr(hubconf, name).__doc__
        configs = [w.strip("();.,") for w in doc.split() if "configs/" in w]
        assert configs and all(os.path.isfile(os.path.join(ROOT, c)) for c in configs), name


def test_coopflow_from_a_checkpoint_prefix(digits_demo_run):
    prefix = os.path.join(digits_demo_run, "ckpt", "latest")
    model = _hub_load("digits_demo", ckpt=prefix, overrides=["Langevin.n_steps=4"])
    assert isinstance(model, pcf.CoopFlowModel)
    direct = pcf.load(prefix)
    for ours, theirs in ((model.flow, direct.flow), (model.ebm, direct.ebm)):
        state = theirs.state_dict()
        assert all(np.array_equal(v.numpy(), state[k].numpy()) for k, v in ours.state_dict().items())
    x, y = model.sample(3, seed=2)
    x2, y2 = direct.sample(3, seed=2)
    np.testing.assert_allclose(x, x2, atol=1e-6)
    np.testing.assert_allclose(y, y2, atol=1e-6)


def test_coopflow_from_an_official_file(tiny_overrides, ref):
    """coopflow_cifar10 with the official legacy-format file: the official energies and Langevin chain."""
    model = _hub_load("coopflow_cifar10", official=os.path.join(OFFICIAL_TINY, "coopflow_legacy.pth.tar"),
                      overrides=tiny_overrides)
    assert _rel(model.energy(ref["x"]), ref["energy"]) < 1e-4
    chain = model.revise(ref["x"], n_steps=int(ref["langevin_steps"]), step_size=float(ref["langevin_step_size"]))
    assert _rel(chain, ref["langevin"]) < 1e-4


def test_flow_only_from_an_official_file(tiny_overrides, ref):
    """flow_cifar10 with the official pre-trained Flow++ file: the official z and log-determinant, no EBM."""
    model = _hub_load("flow_cifar10", official=os.path.join(OFFICIAL_TINY, "flow_only.pth.tar"),
                      overrides=tiny_overrides, device="cpu")
    assert model.ebm is None and model.cfg.Train.mode == "flow_only"
    with paddle.no_grad():
        z, sldj = model.flow(paddle.to_tensor(ref["x"]), noise=paddle.to_tensor(ref["eps"]))
    assert _rel(z.numpy(), ref["flow_z"]) < 1e-4 and _rel(sldj.numpy(), ref["flow_sldj"]) < 1e-4
    proposals, samples = model.sample(2, seed=0, batch_size=2)
    assert proposals.shape == (2, 3, 32, 32)
    np.testing.assert_array_equal(proposals, samples)


def test_fresh_networks_without_weights():
    model = _hub_load("langevin_cifar10", overrides=["EBM.base_channels=8"])
    assert model.flow is None and type(model.ebm).__name__ == "EBMRes"
    assert model.energy(np.zeros((2, 3, 32, 32), "float32")).shape == (2,)


def test_mistakes_are_one_line_user_errors(digits_demo_run, tiny_overrides):
    prefix = os.path.join(digits_demo_run, "ckpt", "latest")
    with pytest.raises(pcf.UserError, match="not both"):
        _hub_load("digits_demo", ckpt=prefix, official=os.path.join(OFFICIAL_TINY, "flow_only.pth.tar"))
    with pytest.raises(pcf.UserError, match="CoopFlow file .* Train.mode=flow_only") as err:
        _hub_load("flow_cifar10", official=os.path.join(OFFICIAL_TINY, "coopflow_zip.pth.tar"),
                  overrides=tiny_overrides)
    assert "\n" not in str(err.value)
    with pytest.raises(pcf.UserError) as err:  # the checkpoint does not fit narrower networks
        _hub_load("digits_demo", ckpt=prefix, overrides=["EBM.base_channels=8"])
    assert "\n" not in str(err.value)
