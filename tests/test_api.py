"""The Python API (paddle_coopflow/api.py): the README example, numerics against independent computations,
the official code's outputs through load_official, one-line errors, and the Paddle version check.

The digits demo (configs/digits_demo.yaml) is trained for 2 iterations once per session (conftest); its
checkpoint stands in for the demo's.
"""
import os
import re
import subprocess
import sys

import numpy as np
import paddle
import pytest
from PIL import Image

import paddle_coopflow as pcf
from conftest import DIGITS_DEMO, DIGITS_DEMO_SHORT, OFFICIAL_TINY, ROOT
from paddle_coopflow.builder import load_trained
from paddle_coopflow.cli import run_cli
from paddle_coopflow.config import ConfigError, load_config
from paddle_coopflow.utils import env


@pytest.fixture(scope="module")
def model(digits_demo_run):
    return pcf.load(os.path.join(digits_demo_run, "ckpt", "latest"))


def _readme_example() -> str:
    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    section = text.split("## Use from Python", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def _langevin_by_hand(ebm, x, n_steps, s, delta=0.1):
    """Eq. (3) without noise, written out with paddle.grad: x ← clip(x + clip(½s²∇f, −δ, δ), −1, 1)."""
    x = paddle.to_tensor(x)
    for _ in range(n_steps):
        x = x.detach()
        x.stop_gradient = False
        grad = paddle.grad([ebm(x).sum()], [x])[0]
        x = paddle.clip(x + paddle.clip(0.5 * s * s * grad, -delta, delta), -1.0, 1.0)
    return x.detach().numpy()


# ------------------------------------------------------------------------------------ README
def test_readme_example_runs(digits_demo_run, tmp_path, monkeypatch, capsys):
    """The README's "Use from Python" block, with the demo's output directory pointing at the short run."""
    code = _readme_example()
    assert "output/digits_demo" in code and len(code.strip().splitlines()) <= 12
    monkeypatch.chdir(tmp_path)
    exec(compile(code.replace("output/digits_demo", digits_demo_run), "README.md", "exec"), {})
    pngs = list(tmp_path.glob("*.png"))
    assert len(pngs) == 1
    grid = np.asarray(Image.open(pngs[0]))
    assert grid.shape == (6 * 18 + 2, 6 * 18 + 2, 3)  # 36 images of 16 px, 2 px padding
    assert capsys.readouterr().out.strip()


# ------------------------------------------------------------------------------------ loading
def test_load_takes_the_stored_config_and_the_checkpoints_weights(digits_demo_run, model):
    prefix = os.path.join(digits_demo_run, "ckpt", "latest")
    cfg = load_config(DIGITS_DEMO, DIGITS_DEMO_SHORT + [f"Global.output_dir={digits_demo_run}"])
    assert model.cfg == cfg and model.image_shape == (1, 16, 16)
    flow, ebm = load_trained(cfg, prefix)
    for ours, theirs in ((model.flow, flow), (model.ebm, ebm)):
        assert not ours.training
        state = theirs.state_dict()
        assert all(np.array_equal(v.numpy(), state[k].numpy()) for k, v in ours.state_dict().items())
    assert "FlowPlusPlus" in repr(model) and "EBMRes" in repr(model)


def test_load_with_a_config_file_a_config_object_and_overrides(digits_demo_run):
    prefix = os.path.join(digits_demo_run, "ckpt", "latest")
    from_file = pcf.load(prefix, DIGITS_DEMO, ["Langevin.n_steps=7"], device="cpu", threads=1)
    from_obj = pcf.load(prefix, load_config(DIGITS_DEMO), ["Langevin.n_steps=7"], device="cpu", threads=1)
    assert from_file.cfg == from_obj.cfg and from_file.cfg.Langevin.n_steps == 7
    assert from_file.cfg.Global.device == "cpu" and from_file.cfg.Global.threads == 1


def test_build_follows_train_mode():
    tiny = ["Flow.in_shape=[1,8,8]", "Flow.scales=[[0,1]]", "Flow.mid_channels=4", "Flow.num_blocks=1",
            "Flow.num_components=2", "Flow.num_dequant_blocks=0", "Flow.use_attn=false",
            "EBM.in_channels=1", "EBM.base_channels=4", "EBM.img_size=8", "Langevin.n_steps=2"]
    flow_only = pcf.build(None, tiny + ["Train.mode=flow_only"])
    assert flow_only.ebm is None and flow_only.flow is not None and not flow_only.flow.training
    langevin_only = pcf.build(None, tiny + ["Train.mode=langevin_only"])
    assert langevin_only.flow is None and langevin_only.image_shape == (1, 8, 8)
    starts, samples = langevin_only.sample(3, seed=5)
    np.testing.assert_array_equal(starts, np.random.RandomState(5).uniform(-1, 1, (3, 1, 8, 8)).astype("float32"))
    np.testing.assert_allclose(samples, _langevin_by_hand(langevin_only.ebm, starts, 2, 0.04), atol=1e-5)
    with pytest.raises(pcf.UserError, match=r"^energy\(\) needs an EBM .*flow_only"):
        flow_only.energy(np.zeros((1, 1, 8, 8), "float32"))


# ------------------------------------------------------------------------------------ numerics
def test_sample_is_flow_inverse_then_langevin(model):
    """Proposals = flow⁻¹(z), z from RandomState(seed); samples = T steps of eq. (3) by hand."""
    x, y = model.sample(5, seed=3, batch_size=2)
    z = np.random.RandomState(3).randn(5, 1, 16, 16).astype("float32")
    with paddle.no_grad():
        want_x = model.flow.inverse(paddle.to_tensor(z)).numpy()
    np.testing.assert_allclose(x, want_x, atol=1e-5)
    np.testing.assert_allclose(y, _langevin_by_hand(model.ebm, x, 4, 0.04), atol=1e-4)
    x2, y2 = model.sample(5, seed=3)  # another batch size, the same images
    np.testing.assert_allclose(x2, x, atol=1e-5)
    np.testing.assert_allclose(y2, y, atol=1e-5)


def test_sample_overrides_steps_and_step_size(model):
    x, y = model.sample(3, seed=1, n_steps=0)
    np.testing.assert_array_equal(x, y)
    _, y6 = model.sample(3, seed=1, n_steps=6, step_size=0.1)
    np.testing.assert_allclose(y6, _langevin_by_hand(model.ebm, x, 6, 0.1), atol=1e-4)
    assert model.cfg.Langevin.n_steps == 4 and model.cfg.Langevin.test_step_size == 0.04  # unchanged


def test_revise_and_energy_against_direct_calls(model):
    x = np.random.RandomState(0).uniform(-1, 1, (5, 1, 16, 16)).astype("float32")
    before = x.copy()
    np.testing.assert_allclose(model.revise(x, batch_size=2), _langevin_by_hand(model.ebm, x, 4, 0.04), atol=1e-4)
    np.testing.assert_allclose(model.revise(paddle.to_tensor(x), n_steps=2, step_size=0.2),
                               _langevin_by_hand(model.ebm, x, 2, 0.2), atol=1e-4)
    np.testing.assert_array_equal(x, before)
    model.ebm.train()  # energy() evaluates in eval mode and gives the mode back
    try:
        got = model.energy(x, batch_size=3)
        assert model.ebm.training
    finally:
        model.ebm.eval()
    with paddle.no_grad():
        want = model.ebm(paddle.to_tensor(x)).numpy()
    assert got.shape == (5,) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_load_official_reproduces_the_official_outputs():
    """The tiny official checkpoint (tests/fixtures): f(x) and the 30-step Langevin chain of the official code."""
    import json

    spec = json.load(open(os.path.join(OFFICIAL_TINY, "config.json")))
    over = [f"Flow.{k}={json.dumps(v)}" for k, v in spec["flow"].items()] + ["Flow.num_dequant_components=32"]
    over += [f"EBM.{k}={v}" for k, v in spec["ebm"].items()]
    model = pcf.load_official(os.path.join(OFFICIAL_TINY, "coopflow_zip.pth.tar"), None, over)
    with np.load(os.path.join(OFFICIAL_TINY, "reference.npz")) as ref:
        ref = {k: ref[k] for k in ref.files}

    def rel(a, b):
        return float(np.abs(a - b).max() / np.abs(b).max())

    assert rel(model.energy(ref["x"]), ref["energy"]) < 1e-4
    chain = model.revise(ref["x"], n_steps=int(ref["langevin_steps"]), step_size=float(ref["langevin_step_size"]))
    assert rel(chain, ref["langevin"]) < 1e-4
    with pytest.raises(pcf.UserError, match="pre-trained Flow\\+\\+ file but the config has Train.mode=coopflow"):
        pcf.load_official(os.path.join(OFFICIAL_TINY, "flow_only.pth.tar"), None, over)


def test_save_grid_pixels(tmp_path):
    imgs = np.stack([np.full((3, 4, 4), -1.0), np.full((3, 4, 4), 0.5)]).astype("float32")
    path = pcf.save_grid(paddle.to_tensor(imgs), str(tmp_path / "sub" / "g.png"), nrow=2)
    grid = np.asarray(Image.open(path))
    assert grid.shape == (8, 14, 3)
    assert (grid[2:6, 2:6] == 0).all() and (grid[2:6, 8:12] == int(0.75 * 255 + 0.5)).all()
    assert (grid[0] == 255).all()  # white padding


# ------------------------------------------------------------------------------------ errors
@pytest.mark.parametrize("call,pattern", [
    (lambda m: m.revise(np.zeros((2, 1, 8, 8), "float32")), r"revise\(\): images of shape \[2, 1, 8, 8\]"),
    (lambda m: m.energy(np.zeros((0, 1, 16, 16), "float32")), r"N >= 1"),
    (lambda m: m.sample(0), r"n must be >= 1"),
    (lambda m: m.sample(2, batch_size=0), r"batch_size=0"),
    (lambda m: m.sample(2, n_steps=-1), r"n_steps=-1: .* integer >= 0"),
    (lambda m: m.sample(2, n_steps=1.5), r"n_steps=1.5"),
    (lambda m: m.revise(np.zeros((1, 1, 16, 16), "float32"), step_size=0), r"step_size=0: .* > 0"),
    (lambda m: pcf.save_grid(np.zeros((2, 16, 16)), "x.png"), r"save_grid\(\): images of shape \[2, 16, 16\]"),
])
def test_mistakes_are_one_line_user_errors(model, call, pattern):
    with pytest.raises(pcf.UserError, match=pattern) as err:
        call(model)
    assert "\n" not in str(err.value)


def test_load_errors(digits_demo_run, tmp_path):
    prefix = os.path.join(digits_demo_run, "ckpt", "latest")
    with pytest.raises(pcf.UserError) as err:
        pcf.load(str(tmp_path / "nothing"))
    assert "\n" not in str(err.value) and "nothing" in str(err.value)
    with pytest.raises(ConfigError, match="step_szie"):
        pcf.load(prefix, overrides=["Langevin.step_szie=0.1"])
    with pytest.raises(pcf.UserError, match="list of 'Section.key=value'"):
        pcf.load(prefix, overrides="Langevin.n_steps=3")
    with pytest.raises(pcf.UserError, match="config=3"):
        pcf.load(prefix, config=3)
    with pytest.raises(pcf.UserError, match="do not fit|mismatch|shape"):
        pcf.load(prefix, DIGITS_DEMO, ["EBM.base_channels=8"])
    if not paddle.is_compiled_with_cuda():
        with pytest.raises(pcf.UserError, match="no CUDA"):
            pcf.load(prefix, device="gpu")
    paddle.set_device("cpu")


# ------------------------------------------------------------------------------------ Paddle versions
@pytest.mark.parametrize("version,ok", [("3.3.1", True), ("3.2.0", True), ("4.0.0", True), ("0.0.0", True),
                                        ("3.1.1", False), ("3.0.0rc1", False), ("2.6.2", False), ("garbage", False)])
def test_paddle_version_range(version, ok):
    problem = env.paddle_version_problem(version)
    assert (problem is None) == ok
    if not ok:
        assert "\n" not in problem and f"PaddlePaddle {version} is installed" in problem
        assert "needs PaddlePaddle >= 3.2" in problem and "pip install" in problem


def test_unsupported_paddle_is_one_line_at_first_use(monkeypatch, capsys):
    monkeypatch.setattr(paddle, "__version__", "2.6.2")
    with pytest.raises(pcf.UserError, match="PaddlePaddle 2.6.2 is installed"):
        pcf.build()
    assert run_cli(lambda argv: pytest.fail("main ran under an unsupported Paddle"), []) == 2
    err = capsys.readouterr().err
    assert err.startswith("UserError: PaddlePaddle 2.6.2 is installed") and err.count("\n") == 1


def test_tool_exits_2_under_an_unsupported_paddle(tmp_path):
    """tools/sample.py as a user runs it, with Paddle reporting 2.6.2: one line on stderr, exit 2."""
    tools = os.path.join(ROOT, "tools")
    code = ("import sys, runpy, paddle_coopflow, paddle; paddle.__version__ = '2.6.2'; "
            f"sys.path.insert(0, {tools!r}); sys.argv = ['sample.py', '--ckpt', 'x', '--out', {str(tmp_path)!r}]; "
            f"runpy.run_path({os.path.join(tools, 'sample.py')!r}, run_name='__main__')")
    env = dict(os.environ, GLOG_minloglevel="2")
    env.pop("OMP_NUM_THREADS", None)  # set by this process's setup_threads; Paddle warns about it at import
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith("UserError: PaddlePaddle 2.6.2 is installed") and r.stderr.count("\n") == 1
