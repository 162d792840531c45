"""Official PyTorch checkpoints → this package (paddle_coopflow/official.py, tools/convert_official.py).

Reference data: tiny checkpoints written by the official PyTorch code in its three layouts (CoopFlow zip
with 'module.', CoopFlow legacy without, pre-trained Flow++ 'net') and the official networks' outputs on
fixed inputs, in tests/fixtures (its README says how they were made).

The official dequantization flow always has 32 mixture components, whatever the main flow's; the tiny
files have 4 in the main flow, so their config sets Flow.num_dequant_components=32.
"""
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import paddle
import pytest

from conftest import FIXTURES, OFFICIAL_TINY
from paddle_coopflow import official
from paddle_coopflow.builder import load_trained
from paddle_coopflow.config import load_config
from paddle_coopflow.errors import UserError
from paddle_coopflow.langevin import langevin_flow

ROOT = Path(__file__).resolve().parents[1]
REF = Path(FIXTURES)
TINY = Path(OFFICIAL_TINY)
FILES = {"coopflow_zip": False, "coopflow_legacy": False, "flow_only": True}  # name -> flow_only

OFFICIAL_DEQUANT_COMPONENTS = 32
DEQUANT_COMPONENTS_KEY = "num_dequant_components"


def _rel(ours, ref):
    """max |ours - ref| / max |ref|."""
    return float(np.abs(np.asarray(ours, np.float64) - ref).max() / np.abs(ref).max())


@pytest.fixture(scope="module")
def ref():
    with np.load(TINY / "reference.npz") as z:
        return {k: z[k] for k in z.files}


@pytest.fixture(scope="module")
def tiny_yaml(tmp_path_factory):
    """A config with the reference's widths (config.json), written as a user would."""
    import yaml

    spec = json.loads((TINY / "config.json").read_text())
    flow = dict(spec["flow"])
    flow[DEQUANT_COMPONENTS_KEY] = OFFICIAL_DEQUANT_COMPONENTS
    ebm = spec["ebm"]
    body = {"Global": {"threads": 1, "use_visualdl": False, "sample_interval": 0},
            "Flow": flow, "Langevin": {"n_steps": 5},
            "EBM": {k: ebm[k] for k in ("arch", "in_channels", "base_channels", "img_size")},
            "Export": {"on_train_end": False}}
    path = tmp_path_factory.mktemp("cfg") / "tiny.yaml"
    path.write_text(yaml.safe_dump(body))
    return str(path)


@pytest.fixture(scope="module")
def converted(tiny_yaml):
    cfg = load_config(tiny_yaml)
    return {name: official.convert(str(TINY / f"{name}.pth.tar"), cfg, flow_only=fo)
            for name, fo in FILES.items()}


def _convert_tool(src, prefix, tiny_yaml, *flags):
    """tools/convert_official.py, which must succeed."""
    r = _tool("convert_official.py", "--src", src, "--dst", prefix, "-c", tiny_yaml, *flags)
    assert r.returncode == 0, r.stderr


def _tool(name, *args):
    env = dict(os.environ, GLOG_minloglevel="2")
    env.pop("OMP_NUM_THREADS", None)
    return subprocess.run([sys.executable, str(ROOT / "tools" / name), *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, env=env, timeout=600)


# ------------------------------------------------------------------------------------- reading
def test_three_layouts_read_alike():
    """zip with 'module.' and legacy without give the same arrays; the flow-only file is detected as such."""
    zipped, legacy, flow_only = (official.read_official(str(TINY / f"{n}.pth.tar")) for n in FILES)
    assert (zipped.layout, legacy.layout, flow_only.layout) == ("coopflow", "coopflow", "flow")
    assert flow_only.ebm is None and (zipped.epoch, flow_only.epoch) == (3, 100)
    assert not any(k.startswith("module.") for s in (zipped.flow, zipped.ebm, flow_only.flow) for k in s)
    for a, b in ((zipped.flow, legacy.flow), (zipped.ebm, legacy.ebm), (zipped.flow, flow_only.flow)):
        assert a.keys() == b.keys()
        assert all(np.array_equal(a[k], b[k]) for k in a)


def test_widths_inferred_from_official_shapes():
    """The widths read off the files equal those they were made with; off the paper key list, the paper's."""
    spec = json.loads((TINY / "config.json").read_text())
    ck = official.read_official(str(TINY / "coopflow_zip.pth.tar"))
    flow = official.infer_flow_config(ck.flow)
    assert {k: flow[k] for k in ("scales", "mid_channels", "num_blocks", "num_components", "use_attn",
                                 "num_dequant_blocks")} == {k: spec["flow"][k] for k in
                                                            ("scales", "mid_channels", "num_blocks", "num_components",
                                                             "use_attn", "num_dequant_blocks")}
    assert flow["num_dequant_components"] == OFFICIAL_DEQUANT_COMPONENTS
    assert official.infer_ebm_config(ck.ebm) == {"in_channels": 3, "base_channels": 8, "img_size": 32}
    paper = _paper_sized()
    assert official.infer_flow_config(paper.flow) == {
        "scales": [[0, 4], [2, 3]], "mid_channels": 96, "num_blocks": 10, "num_components": 32, "use_attn": True,
        "num_dequant_blocks": 2, "num_dequant_components": 32}
    assert official.infer_ebm_config(paper.ebm) == {"in_channels": 3, "base_channels": 128, "img_size": 32}


def _paper_sized():
    """Zero arrays with the official paper-size keys and shapes (the official key lists)."""
    def read(name):
        rows = [l.rstrip("\n").split("\t") for l in open(REF / name) if l.strip() and not l.startswith("#")]
        return {k: np.zeros([int(d) for d in s.strip("()").split(",") if d.strip()], np.float32) for k, s in rows[1:]}

    return official.OfficialCheckpoint("paper.pth.tar", "coopflow", read("official_torch_flowpp_keys.tsv"),
                                       read("official_torch_ebm_keys.tsv"), None)


def test_paper_sized_file_with_tiny_config_suggests_the_paper_config(tiny_yaml):
    with pytest.raises(UserError) as err:
        official.convert(_paper_sized(), load_config(tiny_yaml))
    msg = str(err.value)
    assert "\n" not in msg and "'f.0.weight' is [128, 3, 3, 3] in the file but [8, 3, 3, 3]" in msg
    assert "-c configs/cifar10_t30.yaml" in msg


# ------------------------------------------------------------------------------------- numerics
@pytest.mark.parametrize("name", list(FILES))
def test_forward_energy_langevin_match_official(name, converted, ref):
    """Flow forward z and sldj (dequantization noise fixed to the reference's eps), energy, 30-step chain."""
    conv = converted[name]
    x, eps = paddle.to_tensor(ref["x"]), paddle.to_tensor(ref["eps"])
    with paddle.no_grad():
        z, sldj = conv.flow(x, noise=eps)
    assert _rel(z.numpy(), ref["flow_z"]) <= 1e-4
    assert _rel(sldj.numpy(), ref["flow_sldj"]) <= 1e-4
    if FILES[name]:
        assert conv.ebm is None
        return
    with paddle.no_grad():
        assert _rel(conv.ebm(x).numpy(), ref["energy"]) <= 1e-4
    chain = langevin_flow(conv.ebm, x, int(ref["langevin_steps"]), float(ref["langevin_step_size"]),
                          delta_clip=float(ref["delta_clip"]), image_clip=(-1.0, 1.0))  # the dygraph step
    assert np.abs(ref["langevin"] - ref["x"]).max() > 0.5  # the reference chain moves
    assert _rel(chain.numpy(), ref["langevin"]) <= 1e-4


def test_actnorm_stays_as_loaded_in_train_mode(converted, ref):
    """is_initialized is set: a train-mode forward does not re-initialise ActNorm from the batch."""
    flow = converted["flow_only"].flow
    before = {k: v.numpy().copy() for k, v in flow.state_dict().items()}
    assert flow.is_initialized
    flow.train()
    try:
        with paddle.no_grad():
            flow(paddle.to_tensor(ref["x"]), noise=paddle.to_tensor(ref["eps"]))
    finally:
        flow.eval()
    assert all(np.array_equal(before[k], v.numpy()) for k, v in flow.state_dict().items())


def test_inverse_against_official_bisection_and_float64(converted, ref, tiny_yaml):
    """Loosely against the official float32 bisection (its own error is ~5e-3); tightly against the
    float64 inverse of the same weights."""
    cfg = load_config(tiny_yaml)
    z = paddle.to_tensor(ref["z"])
    ours = converted["coopflow_zip"].flow.inverse(z).numpy()  # the config's inverse method
    bis_cfg = load_config(tiny_yaml, ["Flow.inverse_method=bisection"])
    ours_bis = official.convert(str(TINY / "coopflow_zip.pth.tar"), bis_cfg).flow
    twin = official.convert(str(TINY / "coopflow_zip.pth.tar"), cfg).flow
    twin.to(dtype="float64")
    exact = twin.inverse(paddle.to_tensor(ref["z"].astype(np.float64))).numpy()
    official_bis = ref["flow_inv_bisection"]
    assert np.abs(ours - official_bis).max() <= 5e-3
    assert np.abs(ours_bis.inverse(z).numpy() - official_bis).max() <= 5e-3
    err = np.abs(ours - exact)
    assert err.max() <= 1e-3 and np.quantile(err, 0.99) <= 1e-4
    assert np.abs(official_bis - exact).max() > err.max()  # tighter than the official bisection


# ------------------------------------------------------------------------------------- the tool
def _assert_one_line_error(r, out_dir, *fragments):
    assert r.returncode == 2, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("UserError: "), r.stderr
    for fragment in fragments:
        assert fragment in lines[0]
    assert not out_dir.exists()  # nothing written, not even the directory


@pytest.mark.parametrize("override,fragments", [
    ("Flow.mid_channels=16", ("'dequant_flows.flows.2.nn.in_conv.conv.weight_v' is [8, 3, 3, 3] in the file "
                              "but [16, 3, 3, 3]", "-o Flow.mid_channels=8")),
    ("EBM.base_channels=16", ("'f.0.weight' is [8, 3, 3, 3] in the file but [16, 3, 3, 3]",
                              "-o EBM.base_channels=8")),
])
def test_width_mismatch_is_one_line(tmp_path, tiny_yaml, override, fragments):
    r = _tool("convert_official.py", "--src", TINY / "coopflow_zip.pth.tar", "--dst", tmp_path / "out" / "m",
              "-c", tiny_yaml, "-o", override)
    _assert_one_line_error(r, tmp_path / "out", *fragments)


@pytest.mark.parametrize("kind", ["truncated_zip", "truncated_legacy", "npz", "json"])
def test_unreadable_file_is_one_line(tmp_path, tiny_yaml, kind):
    if kind.startswith("truncated"):
        src = TINY / ("coopflow_zip.pth.tar" if kind == "truncated_zip" else "coopflow_legacy.pth.tar")
        path = tmp_path / f"{kind}.pth.tar"
        path.write_bytes(src.read_bytes()[: src.stat().st_size // 2])
    else:
        path = TINY / ("reference.npz" if kind == "npz" else "config.json")
    r = _tool("convert_official.py", "--src", path, "--dst", tmp_path / "out" / "m", "-c", tiny_yaml)
    _assert_one_line_error(r, tmp_path / "out", "is not a readable PyTorch checkpoint")


@pytest.mark.parametrize("name,flag,fragment", [("coopflow_legacy", ["--flow-only"], "drop --flow-only"),
                                                ("flow_only", [], "pass --flow-only")])
def test_wrong_layout_is_one_line(tmp_path, tiny_yaml, name, flag, fragment):
    r = _tool("convert_official.py", "--src", TINY / f"{name}.pth.tar", "--dst", tmp_path / "out" / "m",
              "-c", tiny_yaml, *flag)
    _assert_one_line_error(r, tmp_path / "out", fragment)


def test_other_torch_pickle_is_one_line(tmp_path, tiny_yaml):
    """A torch file that is a state dict but no official checkpoint (no 'flow_net'/'ebm_net'/'net')."""
    path = tmp_path / "bare.pth"
    with open(path, "wb") as fh:  # legacy layout with an empty dict: magic, protocol, sys info, object, keys
        for obj in (0x1950A86A20F9469CFC6C, 1001, {"little_endian": True}, {"state_dict": {}}, []):
            pickle.dump(obj, fh, protocol=2)
    r = _tool("convert_official.py", "--src", path, "--dst", tmp_path / "out" / "m", "-c", tiny_yaml)
    _assert_one_line_error(r, tmp_path / "out", "not an official CoopFlow/Flow++ checkpoint")


# ------------------------------------------------------------------------------------- end to end
def test_convert_then_sample(tmp_path, tiny_yaml, ref):
    """convert → the prefix reproduces the official forward through load_trained → tools/sample.py without -c."""
    prefix = tmp_path / "conv" / "cifar"
    _convert_tool(TINY / "coopflow_zip.pth.tar", prefix, tiny_yaml)
    with open(f"{prefix}.pdstates", "rb") as fh:
        states = pickle.load(fh)
    assert states["official"]["layout"] == "coopflow" and states["config"]["EBM"]["base_channels"] == 8
    flow, ebm = load_trained(load_config(tiny_yaml), str(prefix))
    with paddle.no_grad():
        z, sldj = flow(paddle.to_tensor(ref["x"]), noise=paddle.to_tensor(ref["eps"]))
        energy = ebm(paddle.to_tensor(ref["x"]))
    assert max(_rel(z.numpy(), ref["flow_z"]), _rel(sldj.numpy(), ref["flow_sldj"]),
               _rel(energy.numpy(), ref["energy"])) <= 1e-4
    out = tmp_path / "samples"
    r = _tool("sample.py", "--ckpt", prefix, "--num", 4, "--batch-size", 4, "--out", out, "--no-progress")
    assert r.returncode == 0, r.stderr
    assert len(list((out / "coopflow").glob("*.png"))) == 4 and (out / "grid_coopflow.png").is_file()
    with np.load(out / "samples.npz") as s:
        assert s["coopflow"].shape == (4, 3, 32, 32) and np.abs(s["coopflow"]).max() <= 1.0


def test_flow_only_as_init_flow_for_warmup(tmp_path, tiny_yaml, rgb_image_folder):
    """convert --flow-only → tools/train.py -o Train.init_flow=PREFIX: 2 warm-up iterations keep that flow."""
    prefix = tmp_path / "conv" / "flow"
    _convert_tool(TINY / "flow_only.pth.tar", prefix, tiny_yaml, "--flow-only")
    run = tmp_path / "run"
    r = _tool("train.py", "-c", tiny_yaml, "-o", f"Train.init_flow={prefix}", "-o", "Train.pretrain_epochs=0",
              "-o", "Train.frozen_flow_epochs=1", "-o", "Train.coop_epochs=1", "-o", "Train.max_iters=2",
              "-o", "Train.batch_size=4", "-o", "Data.name=folder", "-o", f"Data.root={rgb_image_folder}",
              "-o", f"Global.output_dir={run}")
    assert r.returncode == 0, r.stderr
    assert "flow initialised from" in (run / "train.log").read_text()
    trained = paddle.load(str(run / "ckpt" / "latest.pdparams"))
    imported = paddle.load(f"{prefix}.pdparams")
    assert set(trained) >= {"flow", "ebm"}
    assert all(np.array_equal(trained["flow"][k].numpy(), v.numpy()) for k, v in imported["flow"].items())


def test_save_refuses_an_existing_prefix_and_leaves_no_staging_dir(tmp_path, converted, tiny_yaml):
    """Exactly the three files appear; an existing prefix is refused without overwrite."""
    cfg = load_config(tiny_yaml)
    prefix = tmp_path / "w" / "ebm_and_flow"
    official.save_converted(str(prefix), cfg, converted["coopflow_legacy"])
    names = sorted(os.listdir(tmp_path / "w"))
    assert names == ["ebm_and_flow.pdopt", "ebm_and_flow.pdparams", "ebm_and_flow.pdstates"]
    with pytest.raises(UserError, match="already exists"):
        official.save_converted(str(prefix), cfg, converted["coopflow_legacy"])
    official.save_converted(str(prefix) + ".pdparams", cfg, converted["coopflow_legacy"], overwrite=True)
    assert sorted(os.listdir(tmp_path / "w")) == names
