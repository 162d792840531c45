"""2-D toy experiment: data generators, file loading, Flow2D, sample metrics, and a short run."""
import importlib.util
import json
import math
import os
import sys

import numpy as np
import paddle
import pytest

from paddle_coopflow.cli import run_cli
from paddle_coopflow.data import DatasetError
from paddle_coopflow.data.toy2d import GENERATORS, load_points_file, make_toy2d, toy_train_heldout
from paddle_coopflow.metrics.sample_distance import mmd2_unbiased, sample_distance, sliced_wasserstein
from paddle_coopflow.models.flow2d import Flow2D

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ------------------------------------------------------------------------------------------ data
@pytest.mark.parametrize("name", sorted(GENERATORS))
def test_generators_deterministic_by_seed(name):
    a = make_toy2d(name, 500, 0.05, seed=3)
    assert a.shape == (500, 2) and a.dtype == np.float32
    np.testing.assert_array_equal(a, make_toy2d(name, 500, 0.05, seed=3))
    assert not np.allclose(a, make_toy2d(name, 500, 0.05, seed=4))
    assert not np.allclose(a, make_toy2d(name, 500, 0.05, seed=3, stream=1))  # held-out stream differs
    assert np.abs(a).max() < 4.0  # inside the default plot range


def test_generator_geometry_without_noise():
    r = np.linalg.norm(make_toy2d("rings", 3000, 0.0, seed=0), axis=1)
    assert np.allclose(np.min(np.abs(r[:, None] - np.array([1.0, 2.0, 3.0])), axis=1), 0.0, atol=1e-5)
    # equal density along each circle: counts proportional to the radius (1:2:3)
    frac = [(np.abs(r - k) < 1e-3).mean() for k in (1, 2, 3)]
    np.testing.assert_allclose(frac, [1 / 6, 2 / 6, 3 / 6], atol=0.03)
    c = make_toy2d("checkerboard", 3000, 0.0, seed=0)
    cell = np.floor((c + 3.2) / 1.6).astype(int)
    assert ((cell[:, 0] + cell[:, 1]) % 2 == 0).all() and cell.min() >= 0 and cell.max() <= 3
    s = make_toy2d("spiral", 3000, 0.0, seed=0).astype(np.float64)
    rad, ang = np.linalg.norm(s, axis=1), np.arctan2(s[:, 1], s[:, 0])
    theta = rad / 3.3 * 3 * np.pi  # r = 3.3·θ/θ_max ⇒ the polar angle must equal θ mod 2π
    assert np.allclose(np.cos(theta - ang), 1.0, atol=1e-4)


def test_file_loading_npy_and_csv(tmp_path):
    pts = np.random.default_rng(0).standard_normal((60, 2)).astype(np.float32)
    np.save(tmp_path / "p.npy", pts)
    np.testing.assert_array_equal(load_points_file(str(tmp_path / "p.npy")), pts)
    np.savetxt(tmp_path / "p.csv", pts, delimiter=",", fmt="%.9g")
    np.testing.assert_allclose(load_points_file(str(tmp_path / "p.csv")), pts, rtol=1e-6)
    np.savetxt(tmp_path / "h.csv", pts, delimiter=",", fmt="%.9g", header="x,y", comments="")
    np.testing.assert_allclose(load_points_file(str(tmp_path / "h.csv")), pts, rtol=1e-6)
    tr, ho = toy_train_heldout("file", str(tmp_path / "p.npy"), 0, 0.0, 5000, seed=1)
    assert ho.shape == (12, 2) and tr.shape == (48, 2)  # held-out capped at a fifth of the file
    assert sorted(map(tuple, np.concatenate([tr, ho]))) == sorted(map(tuple, pts))


@pytest.mark.parametrize("maker,expect", [
    (lambda d: str(d / "missing.npy"), "not found"),
    (lambda d: (np.save(d / "x.npy", np.zeros((10, 3))), str(d / "x.npy"))[1], "N×2"),
    (lambda d: ((d / "x.csv").write_text("1,2\n3,abc\n4,5\n"), str(d / "x.csv"))[1], "cannot read"),
    (lambda d: (np.save(d / "n.npy", np.full((10, 2), np.nan)), str(d / "n.npy"))[1], "NaN"),
    (lambda d: ((d / "x.txt").write_text("1,2\n"), str(d / "x.txt"))[1], "extension"),
    (lambda d: ((d / "b.npy").write_bytes(b"not a numpy file"), str(d / "b.npy"))[1], "cannot read"),
])
def test_file_loading_errors(tmp_path, maker, expect):
    path = maker(tmp_path)
    with pytest.raises(DatasetError) as err:
        load_points_file(path)
    msg = str(err.value)
    assert expect in msg and "\n" not in msg and "Data.root" in msg


# ------------------------------------------------------------------------------------------ flow
@pytest.fixture
def flow64():
    """A float64 Flow2D with random (non-identity) output layers."""
    old = paddle.get_default_dtype()
    paddle.set_default_dtype("float64")
    try:
        paddle.seed(0)
        flow = Flow2D(hidden=16, num_layers=4)
        rng = np.random.default_rng(0)
        for layer in flow.layers:
            layer.out.weight.set_value(0.3 * rng.standard_normal(layer.out.weight.shape))
            layer.out.bias.set_value(0.3 * rng.standard_normal(layer.out.bias.shape))
        yield flow
    finally:
        paddle.set_default_dtype(old)


def test_flow2d_identity_at_init():
    flow = Flow2D(hidden=8, num_layers=3)
    x = paddle.randn([50, 2])
    z, ld = flow(x)
    np.testing.assert_allclose(z.numpy(), x.numpy(), atol=1e-7)
    nll_ref = 0.5 * (x.numpy() ** 2).sum(1) + math.log(2 * math.pi)  # N(0, I₂)
    np.testing.assert_allclose(flow.nll(x).numpy(), nll_ref, rtol=1e-5)
    assert tuple(flow.z_shape) == (2,) and flow.sample(7).shape == [7, 2]


def test_flow2d_inverse_and_logdet_brute_force(flow64):
    x = np.random.default_rng(1).standard_normal((6, 2)) * 1.5
    z, ld = flow64(paddle.to_tensor(x))
    np.testing.assert_allclose(flow64.inverse(z).numpy(), x, atol=1e-10)
    assert np.abs(z.numpy() - x).max() > 0.1  # the fixture really is not the identity

    def fwd(p):
        return flow64(paddle.to_tensor(p))[0].numpy()

    h = 1e-6
    for i in range(x.shape[0]):  # central finite-difference Jacobian, float64
        jac = np.stack([(fwd(x[i:i + 1] + h * e) - fwd(x[i:i + 1] - h * e))[0] / (2 * h) for e in np.eye(2)], 1)
        assert abs(np.log(abs(np.linalg.det(jac))) - ld.numpy()[i]) < 1e-6
    zn = z.numpy()
    nll_ref = 0.5 * (zn ** 2).sum(1) + math.log(2 * math.pi) - ld.numpy()
    np.testing.assert_allclose(flow64.nll(paddle.to_tensor(x)).numpy(), nll_ref, rtol=1e-12)
    np.testing.assert_allclose(flow64.log_prob(paddle.to_tensor(x)).numpy(), -nll_ref, rtol=1e-12)


def test_flow2d_density_integrates_to_one(flow64):
    g = np.linspace(-12, 12, 241)
    xx, yy = np.meshgrid(g, g)
    pts = paddle.to_tensor(np.stack([xx.ravel(), yy.ravel()], 1))
    q = np.exp(-flow64.nll(pts).numpy())
    assert abs(q.sum() * (g[1] - g[0]) ** 2 - 1.0) < 0.02


def test_flow2d_scale_is_bounded():
    flow = Flow2D(hidden=4, num_layers=2, scale_bound=3.0)
    for layer in flow.layers:
        layer.out.bias.set_value(np.array([1e4, 0.0], np.float32))
    _, ld = flow(paddle.randn([10, 2]))
    np.testing.assert_allclose(ld.numpy(), 6.0, rtol=1e-6)  # 2 layers × S


# --------------------------------------------------------------------------------------- metrics
def test_mmd_against_double_loop():
    rng = np.random.default_rng(0)
    x, y, bw = rng.standard_normal((15, 2)), rng.standard_normal((11, 2)) + 0.3, (0.5, 1.0)

    def k(a, b):
        return sum(math.exp(-float(((a - b) ** 2).sum()) / (2 * s * s)) for s in bw)

    n, m = len(x), len(y)
    ref = (sum(k(x[i], x[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
           + sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
           - 2 * sum(k(a, b) for a in x for b in y) / (n * m))
    assert abs(mmd2_unbiased(x, y, bw) - ref) < 1e-12


def test_mmd_closed_form_and_ordering():
    # X ~ N(0, σ²I₂), Y ~ N(μ, σ²I₂), Gaussian kernel of bandwidth b:
    # MMD² = 2 c (1 − exp(−|μ|² / (2(b² + 2σ²)))), c = b² / (b² + 2σ²)
    rng = np.random.default_rng(0)
    sig, b, mu = 1.0, 1.0, np.array([1.2, -0.9])
    x, y = sig * rng.standard_normal((1000, 2)), mu + sig * rng.standard_normal((1000, 2))
    c = b * b / (b * b + 2 * sig * sig)
    ref = 2 * c * (1 - math.exp(-mu @ mu / (2 * (b * b + 2 * sig * sig))))
    assert abs(mmd2_unbiased(x, y, [b]) - ref) < 0.1 * ref
    x2 = sig * rng.standard_normal((1000, 2))
    same = mmd2_unbiased(x, x2)
    assert abs(same) < 3e-3
    assert abs(mmd2_unbiased(x, x)) < 3e-2  # a set with itself (the diagonal makes it −O(1/n))
    assert same < mmd2_unbiased(x, x2 + 0.3) < mmd2_unbiased(x, x2 + 0.8)


def test_sliced_wasserstein_closed_forms():
    rng = np.random.default_rng(0)
    x1 = rng.standard_normal((300, 1))
    assert abs(sliced_wasserstein(x1, x1 + 0.7) - 0.7) < 1e-12  # 1-D: W₂ of a shift = |shift|
    x = rng.standard_normal((400, 2))
    v = np.array([0.6, -0.8])  # |v| = 1; SW₂² = mean cos² = 1/2 over equally spaced angles
    ang = np.arange(8) * np.pi / 8
    dirs = np.stack([np.cos(ang), np.sin(ang)], 1)
    assert abs(sliced_wasserstein(x, x + v, directions=dirs) - math.sqrt(0.5)) < 1e-12
    assert abs(sliced_wasserstein(x, x + v, n_projections=512) - math.sqrt(0.5)) < 0.05  # random θ
    assert sliced_wasserstein(x, x) == 0.0
    # unequal sizes: two N(0,1) vs N(0, 2²) samples, W₂ = |σ₁ − σ₂| = 1
    assert abs(sliced_wasserstein(rng.standard_normal(4000), 2 * rng.standard_normal(3000)) - 1.0) < 0.05
    assert sample_distance("swd", x, x + v) == sliced_wasserstein(x, x + v)
    with pytest.raises(ValueError):
        sample_distance("emd", x, x)


# ----------------------------------------------------------------------------------------- tool
def _tool():
    tools = os.path.join(ROOT, "tools")
    if tools not in sys.path:  # the tool imports tools/_bootstrap.py, as when run as a script
        sys.path.insert(0, tools)
    spec = importlib.util.spec_from_file_location("toy2d_tool", os.path.join(tools, "toy2d.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_short_run_improves_pi(tmp_path):
    out = tmp_path / "run"
    argv = ["-c", os.path.join(ROOT, "configs", "toy_spiral_t100.yaml"),
            "-o", f"Global.output_dir={out}", "-o", "Global.threads=1", "-o", "Global.use_visualdl=false",
            "-o", "Global.log_interval=100", "-o", "Train.max_iters=300", "-o", "Train.batch_size=128",
            "-o", "Langevin.n_steps=25", "-o", "Langevin.step_size=0.1", "-o", "Optimizer.warmup_iters=20",
            "-o", "Flow.hidden=16", "-o", "Flow.num_layers=4", "-o", "EBM.hidden=128", "-o", "EBM.depth=3",
            "-o", "Langevin.noise_mode=constant", "-o", "Langevin.noise_std=1.0", "-o", "Optimizer.flow_lr=1e-3",
            "-o", "Optimizer.ebm_lr=1e-3", "-o", "Langevin.delta_clip=null",
            "-o", "Data.num_points=2000", "-o", "Eval.num_samples=500", "-o", "Toy.metric_points=500",
            "-o", "Toy.heldout_points=500", "-o", "Toy.eval_every=300", "-o", "Toy.grid_resolution=40"]
    tool = _tool()
    assert run_cli(tool.main, argv) == 0
    res = json.loads((out / "metrics.json").read_text())
    hist = res["history"]
    assert [h["iter"] for h in hist] == [0, 300]
    assert hist[-1]["coopflow"] < 0.5 * hist[0]["coopflow"], hist
    # the reported model is the best evaluation (here the final one: iteration 0 is the untrained model)
    assert res["model"] == "best" and res["iter"] == 300 and res["final"]["iter"] == 300
    assert res["coopflow"] == res["final"]["coopflow"] and res["blowup"] is None
    s = np.load(out / "samples.npz")
    assert s["flow"].shape == (500, 2) and s["coopflow"].shape == (500, 2) and int(s["iter"]) == 300
    assert (out / "figure.png").stat().st_size > 10000
    assert (out / "flow_final.pdparams").exists() and (out / "ebm.pdparams").exists()
    # a second run into the same directory is refused with a one-line error (exit 2)
    assert run_cli(tool.main, argv) == 2


def test_cli_user_errors(tmp_path, capsys):
    tool = _tool()
    cfg = os.path.join(ROOT, "configs", "toy_spiral_t100.yaml")
    rc = run_cli(tool.main, ["-c", cfg, "-o", f"Global.output_dir={tmp_path / 'a'}", "-o", "Data.name=file",
                             "-o", f"Data.root={tmp_path / 'nope.npy'}", "-o", "Global.use_visualdl=false"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "not found" in err and "\n" not in err
    rc = run_cli(tool.main, ["-c", cfg, "-o", "EBM.arch=res", "--dry-run"])
    assert rc == 2 and "EBM.arch=mlp" in capsys.readouterr().err


TINY_TOY = ["-o", "Global.threads=1", "-o", "Global.use_visualdl=false", "-o", "Global.log_interval=50",
            "-o", "Langevin.n_steps=5", "-o", "Flow.hidden=8", "-o", "Flow.num_layers=2", "-o", "EBM.hidden=16",
            "-o", "Train.batch_size=64", "-o", "Eval.num_samples=200", "-o", "Toy.metric_points=200",
            "-o", "Toy.heldout_points=200", "-o", "Toy.grid_resolution=20", "-o", "Data.num_points=500"]


@pytest.mark.parametrize("bad,expect", [(np.zeros((100, 3)), "N×2"), (np.full((100, 2), np.nan), "NaN"),
                                        (np.zeros((0, 2)), "N×2")])
def test_bad_points_file_leaves_no_run_dir(tmp_path, capsys, bad, expect):
    np.save(tmp_path / "p.npy", bad)
    out = tmp_path / "run"
    argv = ["-c", os.path.join(ROOT, "configs", "toy_spiral_t100.yaml"), "-o", f"Global.output_dir={out}",
            "-o", "Data.name=file", "-o", f"Data.root={tmp_path / 'p.npy'}"] + TINY_TOY
    assert run_cli(_tool().main, argv) == 2
    err = capsys.readouterr().err.strip()
    assert expect in err and "\n" not in err
    assert not out.exists()


@pytest.mark.parametrize("redraw,kept", [(0.02, 10), (0.4, 30)])
def test_best_model_is_kept_and_reported(tmp_path, monkeypatch, redraw, kept):
    """A run whose π gets worse after its best evaluation reports the best one, its weights and its iteration,
    unless the best model's draw after training is worse than the final model's."""
    tool = _tool()
    scores = iter([0.5, 0.01, 0.2, 0.3, redraw])  # π at iterations 0, 10, 20, the final 30, the best drawn again
    real = tool.evaluate

    def scripted(coop, heldout, cfg, epoch, n, seed):
        m, xf, xc = real(coop, heldout, cfg, epoch, n, seed)
        return {"flow": m["flow"], "coopflow": next(scores, m["coopflow"])}, xf, xc

    monkeypatch.setattr(tool, "evaluate", scripted)
    snaps = {}
    real_snapshot = tool.snapshot
    monkeypatch.setattr(tool, "snapshot", lambda coop: snaps.setdefault(len(snaps), real_snapshot(coop)))
    out = tmp_path / "run"
    argv = ["-c", os.path.join(ROOT, "configs", "toy_spiral_t100.yaml"), "-o", f"Global.output_dir={out}",
            "-o", "Train.max_iters=30", "-o", "Toy.eval_every=10"] + TINY_TOY
    assert run_cli(tool.main, argv) == 0
    res = json.loads((out / "metrics.json").read_text())
    assert [h["iter"] for h in res["history"]] == [0, 10, 20, 30]
    assert res["iter"] == kept and res["final"] == dict(iter=30, flow=res["history"][-1]["flow"], coopflow=0.3)
    assert res["coopflow"] == (redraw if kept == 10 else 0.3) and int(np.load(out / "samples.npz")["iter"]) == kept
    reported = paddle.load(str(out / "ebm.pdparams"))
    final = paddle.load(str(out / "ebm_final.pdparams"))
    at10 = snaps[1]["ebm"]  # snapshot 1 = iteration 10 (0: iteration 0, 2: the final weights)
    for k, v in at10.items():
        np.testing.assert_array_equal(np.asarray(reported[k]), v if kept == 10 else np.asarray(final[k]))
    assert any(not np.array_equal(np.asarray(final[k]), v) for k, v in at10.items())
