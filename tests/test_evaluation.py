"""Evaluation tools: sampling, FID plumbing, reconstruction / inpainting / interpolation (paper §5.3, Figure 12).

A tiny CoopFlow (1×16×16 digits, T = 3) is trained for 2 iterations once per module; tools run as
subprocesses with a handful of images. Inception forwards cost ~0.2 s per image on CPU, so FID tests use
8 images and random (explicitly labelled) weights.
"""
import json
import os
import subprocess
import sys

import numpy as np
import paddle
import pytest
from PIL import Image

from paddle_coopflow import evaluation as ev
from paddle_coopflow.cli import load_model
from paddle_coopflow.config import load_config
from paddle_coopflow.errors import UserError
from paddle_coopflow.models.ebm import EBMRes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["Data.name=digits", "Data.root=", "Data.image_size=16", "Data.channels=1",
        "Flow.in_shape=[1,16,16]", "Flow.scales=[[0,2],[2,2]]", "Flow.mid_channels=8", "Flow.num_blocks=1",
        "Flow.num_components=2", "Flow.num_dequant_blocks=1", "Flow.drop_prob=0.0",
        "EBM.in_channels=1", "EBM.base_channels=8", "EBM.img_size=16",
        "Langevin.n_steps=3", "Train.batch_size=8", "Train.max_iters=2", "Train.data_init_batches=1",
        "Train.data_init_group=1", "Export.on_train_end=false", "Global.use_visualdl=false",
        "Global.sample_interval=0", "Global.threads=2", "Langevin.engine=dygraph", "Eval.fid_num_samples=8", "Eval.ref_num=8",
        "Eval.fid_batch_size=8", "Eval.sample_batch_size=4"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """(config path, checkpoint prefix, cfg) of a 2-iteration CoopFlow run."""
    from paddle_coopflow.training import Trainer

    out = tmp_path_factory.mktemp("run")
    cfg = load_config(None, TINY + [f"Global.output_dir={out}"])
    Trainer(cfg).train()
    path = str(out / "tiny.yaml")
    with open(path, "w") as fh:
        fh.write(cfg.dump())
    return path, str(out / "ckpt" / "latest"), cfg


@pytest.fixture(scope="module")
def nets(run):
    from paddle_coopflow.builder import load_trained

    return load_trained(run[2], run[1])


def tool(name, *args):
    env = dict(os.environ, GLOG_minloglevel="2")
    env.pop("OMP_NUM_THREADS", None)  # set by the in-process Trainer; paddle warns about it on import
    return subprocess.run([sys.executable, os.path.join(ROOT, "tools", name), *map(str, args)],
                          capture_output=True, text=True, env=env, timeout=300)


# ------------------------------------------------------------------------------------ metric
def test_mse_per_pixel_is_the_papers_definition():
    rng = np.random.RandomState(0)
    x, y = rng.uniform(-1, 1, (3, 3, 4, 5)), rng.uniform(-1, 1, (3, 3, 4, 5))
    hand = []
    for i in range(3):  # Σ over c, h, w of the squared error, / (H·W) — not / (C·H·W)
        total = sum((x[i, c, h, w] - y[i, c, h, w]) ** 2 for c in range(3) for h in range(4) for w in range(5))
        hand.append(total / 20.0)
    np.testing.assert_allclose(ev.mse_per_pixel(x, y), hand, rtol=1e-12)
    region = rng.rand(4, 5) > 0.5
    hand_r = [sum((x[i, :, h, w] - y[i, :, h, w]) @ (x[i, :, h, w] - y[i, :, h, w])
                  for h in range(4) for w in range(5) if region[h, w]) / region.sum() for i in range(3)]
    np.testing.assert_allclose(ev.mse_per_pixel(x, y, region), hand_r, rtol=1e-12)


# ------------------------------------------------------------------------------------ reconstruction core
def _tiny_ebm64():
    paddle.seed(1)
    ebm = EBMRes(1, 2, 8)
    ebm.to(dtype="float64")
    return ebm


def test_recon_loss_gradient_matches_finite_differences():
    ebm, rng = _tiny_ebm64(), np.random.RandomState(3)
    x0, target = rng.uniform(-1, 1, (2, 1, 8, 8)), rng.uniform(-1, 1, (2, 1, 8, 8))
    mask = paddle.to_tensor((rng.rand(1, 1, 8, 8) > 0.3).astype("float64"))
    T, s = 2, 3.0  # a large step so the Langevin Jacobian is far from the identity

    def L(xx):
        return float(ev.recon_loss(ebm, paddle.to_tensor(xx), paddle.to_tensor(target), T, s, mask)[0].item())

    xt = paddle.to_tensor(x0)
    xt.stop_gradient = False
    g = paddle.grad([ev.recon_loss(ebm, xt, paddle.to_tensor(target), T, s, mask)[0]], [xt])[0].numpy()
    v = rng.randn(*x0.shape)
    fd = (L(x0 + 1e-6 * v) - L(x0 - 1e-6 * v)) / 2e-6
    assert float((g * v).sum()) == pytest.approx(fd, rel=1e-6)


def test_inpainting_loss_ignores_missing_pixels_by_construction():
    ebm, rng = _tiny_ebm64(), np.random.RandomState(4)
    x0 = paddle.to_tensor(rng.uniform(-1, 1, (2, 1, 8, 8)))
    mask_np = ev.default_mask(8, 8, (2, 3, 3, 4))
    assert mask_np.sum() == 64 - 12 and mask_np[2:5, 3:7].sum() == 0
    mask = paddle.to_tensor(mask_np[None, None].astype("float64"))
    target = rng.uniform(-1, 1, (2, 1, 8, 8))
    other = target.copy()
    other[:, :, 2:5, 3:7] = rng.uniform(-1, 1, (2, 1, 3, 4))  # change only the missing pixels
    la = float(ev.recon_loss(ebm, x0, paddle.to_tensor(target), 2, 1.0, mask)[0].item())
    lb = float(ev.recon_loss(ebm, x0, paddle.to_tensor(other), 2, 1.0, mask)[0].item())
    assert la == lb
    other[0, 0, 0, 0] += 0.5  # an observed pixel does count
    assert float(ev.recon_loss(ebm, x0, paddle.to_tensor(other), 2, 1.0, mask)[0].item()) != la
    with pytest.raises(UserError):
        ev.default_mask(8, 8, (6, 0, 4, 2))


def test_reconstruction_decreases_the_error(run, nets):
    flow, ebm = nets
    x = ev.load_eval_images(run[2], "test", 0, 3)
    r = ev.reconstruct(flow, ebm, x, steps=4, lr=0.05, n_steps=3, step_size=0.03)
    assert r["curve"].shape == (5,) and r["x_hat"].shape == x.shape
    assert r["curve"][-1] < 0.8 * r["curve"][0]
    np.testing.assert_allclose(r["errors"].mean(), r["curve"][-1], rtol=1e-6)
    assert np.abs(r["x_hat"]).max() <= 1.0


def test_inpaint_outputs(nets):
    flow, ebm = nets
    x = np.random.RandomState(0).uniform(-1, 1, (2, 1, 16, 16)).astype("float32")
    m = ev.default_mask(16, 16)
    r = ev.inpaint(flow, ebm, x, m, n_init=2, steps=2, n_steps=2, snapshot=lambda j: j == 0)
    assert sorted(r["snapshots"]) == [0, 2] and r["final"].shape == (4, 1, 16, 16)
    obs = m > 0.5
    xr = np.repeat(x, 2, axis=0)
    np.testing.assert_array_equal(r["pasted"][:, :, obs], xr[:, :, obs])
    np.testing.assert_array_equal(r["pasted"][:, :, ~obs], r["final"][:, :, ~obs])
    np.testing.assert_allclose(r["err_masked"], ev.mse_per_pixel(r["final"], xr, ~obs))


# ------------------------------------------------------------------------------------ interpolation
def test_interpolation_endpoints_are_the_flow_inverses(nets):
    flow, ebm = nets
    rs = np.random.RandomState(5)
    z0, z1 = rs.randn(2, 1, 16, 16).astype("float32"), rs.randn(2, 1, 16, 16).astype("float32")
    dec, rev = ev.interpolate_latents(flow, ebm, z0, z1, n_points=5, n_steps=2)
    assert dec.shape == rev.shape == (2, 5, 1, 16, 16)
    for k, z in ((0, z0), (4, z1), (2, (z0 + z1) / 2)):
        # the bisection inverse is ill-conditioned where the CDF is flat: batching changes it by ~1e-4
        np.testing.assert_allclose(dec[:, k], flow.inverse(paddle.to_tensor(z)).numpy(), atol=1e-3)


def test_infer_latent_round_trip_and_determinism(run):
    from paddle_coopflow.builder import load_trained

    cfg = load_config(run[0], ["Flow.undo_bound=true"])
    flow, _ = load_trained(cfg, run[1])
    x = ev.load_eval_images(cfg, "train", 0, 2)
    za, zb = ev.infer_latent(flow, x, True, seed=1).numpy(), ev.infer_latent(flow, x, True, seed=2).numpy()
    np.testing.assert_array_equal(za, zb)  # ε = 0: no randomness
    zr = ev.infer_latent(flow, x, False, seed=1).numpy()
    assert np.abs(zr - za).max() > 1e-4
    # g(g⁻¹(x)) = x up to the dequantization offset (u − x')/256 in [0, 1] units, i.e. < 2/256 in [-1, 1]
    back = flow.inverse(paddle.to_tensor(za)).numpy()
    assert np.abs(back - x).max() < 2.5 / 256


# ------------------------------------------------------------------------------------ generation
def test_samples_do_not_depend_on_batch_size(run, nets):
    flow, ebm = nets
    a = ev.generate_samples(flow, ebm, run[2], 5, batch_size=2, seed=3)
    b = ev.generate_samples(flow, ebm, run[2], 5, batch_size=5, seed=3)
    # Equal up to float32 rounding, which depends on the batch size (MKL blocks its GEMMs by shape) and
    # which the flow's inverse amplifies: measured 3.7e-6 with MKL's AVX2 kernels. A wrong noise slice or
    # batch coupling would move samples by O(1).
    np.testing.assert_allclose(a[0], b[0], atol=1e-5)
    np.testing.assert_allclose(a[1], b[1], atol=1e-5)
    z = np.random.RandomState(3).randn(5, 1, 16, 16).astype("float32")  # the documented noise source
    np.testing.assert_allclose(a[0], flow.inverse(paddle.to_tensor(z)).numpy(), atol=1e-5)


def test_config_from_checkpoint_when_c_is_omitted(run):
    cfg, flow, ebm = load_model(None, ["Langevin.test_step_size=0.5"], run[1])
    assert cfg.Flow.mid_channels == 8 and cfg.Langevin.test_step_size == 0.5
    assert flow is not None and ebm is not None and not flow.training and not ebm.training


def test_sample_tool(run, tmp_path):
    cfg_path, prefix, _ = run
    out = tmp_path / "s"
    r = tool("sample.py", "-c", cfg_path, "--ckpt", prefix, "--num", 5, "--out", out, "--batch-size", 2,
             "--no-progress")
    assert r.returncode == 0, r.stderr
    for sub in ("coopflow", "flow"):
        assert sorted(os.listdir(out / sub)) == [f"{i:06d}.png" for i in range(5)]
        assert (out / f"grid_{sub}.png").is_file()
    with np.load(out / "samples.npz") as f:
        assert set(f.keys()) == {"flow", "coopflow"}
        for k in ("flow", "coopflow"):
            assert f[k].shape == (5, 1, 16, 16) and f[k].dtype == np.float32
            assert f[k].min() >= -1.0 and f[k].max() <= 1.0
        assert np.abs(f["coopflow"] - f["flow"]).max() > 0  # the Langevin flow did revise them
    assert "sampling throughput" in r.stdout
    r2 = tool("sample.py", "--ckpt", prefix, "--num", 2, "--out", out, "--no-progress")
    assert r2.returncode == 2 and "--overwrite" in r2.stderr and len(r2.stderr.strip().splitlines()) == 1


# ------------------------------------------------------------------------------------ FID
def test_eval_tool_fid_random_inception(tmp_path):
    """One full run (features + a 2048-d sqrtm, ~10-20 s on 2 idle cores): FID(X, X) = 0."""
    x = np.random.RandomState(0).uniform(-1, 1, (6, 1, 16, 16)).astype("float32")
    np.savez(tmp_path / "x.npz", coopflow=x)
    np.savez(tmp_path / "x2.npz", images=x)
    r = tool("eval.py", tmp_path / "x.npz", tmp_path / "x2.npz", "--random-init-inception", "--no-progress",
             "--save-stats", tmp_path / "xs.npz", "--batch-size", 6)
    assert r.returncode == 0, r.stderr
    assert "RANDOM-INIT" in r.stdout and "NOT an FID" in r.stdout and "per 1,000 images" in r.stdout
    last = r.stdout.strip().splitlines()[-1]
    assert last.startswith("pseudo-FID with RANDOM-INIT")
    mu, sigma = np.load(tmp_path / "xs.npz")["mu"], np.load(tmp_path / "xs.npz")["sigma"]
    assert mu.shape == (2048,) and np.trace(sigma) > 0
    assert abs(float(last.rsplit(":", 1)[1])) < 1e-4 * np.trace(sigma)  # sqrtm of a rank-5 product


def test_eval_tool_missing_weights_is_one_line(tmp_path):
    np.savez(tmp_path / "x.npz", images=np.full((2, 1, 8, 8), -0.5, np.float32))
    for extra in ([], ["--weights", tmp_path / "nope.pth"]):
        r = tool("eval.py", tmp_path / "x.npz", tmp_path / "x.npz", *extra)
        assert r.returncode == 2 and "Traceback" not in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1 and "Inception weights" in r.stderr


class PixelEvaluator:
    """Stand-in for FIDEvaluator with the pixels as features (no Inception, no 2048-d sqrtm)."""
    progress = False

    def stats(self, images):
        feats = []
        for b in ([images] if isinstance(images, np.ndarray) else images):
            b = np.asarray(b)
            if b.dtype == np.uint8:  # NHWC 0..255 → NCHW [-1, 1]
                b = b.transpose(0, 3, 1, 2) / 127.5 - 1.0
            feats.append(b.reshape(len(b), -1).astype(np.float64))
        f = np.concatenate(feats)
        return f.mean(axis=0), np.cov(f, rowvar=False)


def test_in_training_fid_wiring_and_reference_cache(run, nets, tmp_path, monkeypatch):
    from paddle_coopflow.data import load_images
    from paddle_coopflow.metrics.fid import frechet_distance

    cfg = run[2]
    with pytest.raises(UserError, match="Eval.inception_weights"):  # no weights configured: one-line error
        ev.InTrainingFID(cfg)(nets[0], nets[1], str(tmp_path))
    pe = PixelEvaluator()
    monkeypatch.setattr(ev.InTrainingFID, "_build_evaluator", lambda self: pe)
    fid_eval = ev.InTrainingFID(cfg)
    assert fid_eval.log_key == "eval/fid_8"
    fid = fid_eval(nets[0], nets[1], str(tmp_path))
    gen = ev.generate_samples(nets[0], nets[1], cfg, 8, 3, seed=cfg.Global.seed + ev.FID_SEED_OFFSET)[1]
    ref = load_images(cfg.Data, "train", n=8)
    assert fid == pytest.approx(frechet_distance(*pe.stats(gen), *pe.stats(ref)), rel=1e-6, abs=1e-8)
    assert (tmp_path / "fid_ref_stats.npz").is_file()
    import paddle_coopflow.data as data

    monkeypatch.setattr(data, "load_images", lambda *a, **k: pytest.fail("reference stats not cached"))
    assert fid_eval(nets[0], nets[1], str(tmp_path)) == pytest.approx(fid, rel=1e-6)  # same seed, cached ref
    assert ev.InTrainingFID(cfg)(nets[0], nets[1], str(tmp_path)) == pytest.approx(fid, rel=1e-6)  # a fresh object, same number


def jit_feature_net(path):
    """A tiny random conv net saved with paddle.jit.save: [N, 3, H, W] in [-1, 1] → [N, 6]."""
    paddle.seed(3)
    net = paddle.nn.Sequential(paddle.nn.Conv2D(3, 6, 3, padding=1), paddle.nn.ReLU(),
                               paddle.nn.AdaptiveAvgPool2D(1), paddle.nn.Flatten())
    net.eval()
    paddle.jit.save(net, str(path), input_spec=[paddle.static.InputSpec([None, 3, None, None], "float32")])
    return net


def test_proxy_fid_and_kid_with_a_jit_feature_model(run, nets, tmp_path):
    from paddle_coopflow.metrics.fid import compute_stats, frechet_distance
    from paddle_coopflow.metrics.kid import kernel_inception_distance

    net = jit_feature_net(tmp_path / "feat" / "net")
    ref_dir = tmp_path / "ref"
    ref_dir.mkdir()
    rs = np.random.RandomState(1)
    for i in range(6):  # the held-out reference folder (Eval.ref_root), grey 16x16 like the data
        Image.fromarray(rs.randint(0, 256, (16, 16), np.uint8)).save(ref_dir / f"{i}.png")
    cfg = load_config(run[0], [f"Eval.feature_model={tmp_path / 'feat' / 'net'}", f"Eval.ref_root={ref_dir}",
                               "Eval.ref_num=5", "Eval.fid_every_epochs=1"])
    fe = ev.InTrainingFID(cfg)
    fe.check()
    assert fe.proxy and fe.log_key == "eval/proxy_fid"
    out = fe.evaluate(nets[0], nets[1], str(tmp_path / "cache"))
    assert set(out) == {"eval/proxy_fid", "eval/proxy_kid"}

    def feats(x):  # [N, 1, H, W] in [-1, 1] → the network's features, channel repeated to 3
        return net(paddle.to_tensor(np.repeat(x, 3, axis=1).astype("float32"))).numpy().astype(np.float64)

    gen = feats(ev.generate_samples(nets[0], nets[1], cfg, 8, 4, seed=cfg.Global.seed + ev.FID_SEED_OFFSET)[1])
    ref_u8 = ev.reference_images(cfg)
    assert ref_u8.shape == (5, 16, 16, 1)
    ref = feats(ref_u8.transpose(0, 3, 1, 2) / 127.5 - 1.0)
    want = frechet_distance(*compute_stats(gen), *compute_stats(ref))
    assert out["eval/proxy_fid"] == pytest.approx(want, rel=1e-4, abs=1e-6)
    assert out["eval/proxy_kid"] == pytest.approx(kernel_inception_distance(gen, ref)[0], rel=1e-3, abs=1e-6)
    assert (tmp_path / "cache" / "proxy_ref_features.npz").is_file()
    assert fe(nets[0], nets[1], str(tmp_path / "cache")) == pytest.approx(out["eval/proxy_fid"], rel=1e-9)

    r = tool("eval.py", run[1], "ref", "-c", run[0], "--num", 4, "--no-progress",
             "-o", f"Eval.feature_model={tmp_path / 'feat' / 'net'}", "-o", f"Eval.ref_root={ref_dir}",
             "-o", "Eval.ref_num=5")
    assert r.returncode == 0, r.stderr
    assert "proxy FID:" in r.stdout and "proxy KID:" in r.stdout and "NOT comparable" in r.stdout
    bad = load_config(run[0], [f"Eval.feature_model={tmp_path / 'nope'}", "Eval.fid_every_epochs=1"])
    with pytest.raises(UserError, match="Eval.feature_model"):
        ev.InTrainingFID(bad).check()


def test_check_fid_setup_fails_fast(tmp_path):
    ev.InTrainingFID(load_config(None, TINY)).check()  # FID off: nothing to check
    for extra, named in (([], "Eval.inception_weights is empty"),
                         ([f"Eval.inception_weights={tmp_path / 'no.pth'}"], str(tmp_path / "no.pth"))):
        with pytest.raises(UserError) as e:
            ev.InTrainingFID(load_config(None, TINY + ["Eval.fid_every_epochs=5"] + extra)).check()
        msg = str(e.value)
        assert named in msg and "-o Eval.inception_weights=PATH" in msg and "-o Eval.fid_every_epochs=0" in msg
        assert "\n" not in msg
    (tmp_path / "w.pth").write_bytes(b"x")
    with pytest.raises(UserError, match="fid_ref_stats"):
        ev.InTrainingFID(load_config(None, TINY + [
            "Eval.fid_every_epochs=5", f"Eval.inception_weights={tmp_path}/w.pth",
            f"Eval.fid_ref_stats={tmp_path}/none.npz"])).check()


def test_trainer_evaluate_fid_logs_and_selects_best(run, monkeypatch):
    from paddle_coopflow.training import Trainer

    monkeypatch.setattr(ev.InTrainingFID, "_build_evaluator", lambda self: PixelEvaluator())
    trainer = Trainer(run[2], resume=run[1])
    try:
        fid = trainer.evaluate_fid()
    finally:
        trainer.log.close()
    run_dir = run[2].Global.output_dir
    assert os.path.isfile(os.path.join(run_dir, "ckpt", "best.pdparams"))
    recs = [json.loads(line) for line in open(os.path.join(run_dir, "stats.jsonl"))]
    assert any(r.get("eval/fid_8") == pytest.approx(fid) for r in recs)


# ------------------------------------------------------------------------------------ tools
def test_reconstruct_inpaint_interpolate_tools(run, tmp_path):
    cfg_path, prefix, _ = run
    r = tool("reconstruct.py", "-c", cfg_path, "--ckpt", prefix, "--out", tmp_path / "rec", "--num", 2,
             "--batch-size", 2, "--steps", 2)
    assert r.returncode == 0, r.stderr
    rows = (tmp_path / "rec" / "recon_curve.csv").read_text().split()
    assert rows[0] == "step,mse_per_pixel" and len(rows) == 4
    summary = json.loads((tmp_path / "rec" / "recon_summary.json").read_text())
    assert summary["mse_per_pixel_step2"] == pytest.approx(float(rows[-1].split(",")[1]), abs=1e-6)
    for f in ("recon_curve.png", "recon_triples.png", "recon.npz"):
        assert (tmp_path / "rec" / f).is_file()
    r = tool("reconstruct.py", "-c", cfg_path, "--ckpt", prefix, "--out", tmp_path / "base", "--num", 1,
             "--steps", 1, "--langevin-only", "-o", "Langevin.n_steps=2")
    assert r.returncode == 0 and "Langevin flow alone" in r.stdout, r.stderr
    assert json.loads((tmp_path / "base" / "recon_summary.json").read_text())["init"] == "uniform"

    r = tool("inpaint.py", "-c", cfg_path, "--ckpt", prefix, "--out", tmp_path / "inp", "--num", 1, "--n-init", 2,
             "--steps", 2, "-o", "Langevin.n_steps=2", "--snapshot-every", 1)
    assert r.returncode == 0, r.stderr
    names = set(os.listdir(tmp_path / "inp"))
    assert {"step_000.png", "step_001.png", "step_002.png", "masked.png", "original.png", "final_pasted.png",
            "inpaint_summary.json"} <= names
    s = json.loads((tmp_path / "inp" / "inpaint_summary.json").read_text())
    assert s["missing_pixels"] == 64 and np.isfinite(s["mse_per_pixel_missing"])

    r = tool("interpolate.py", "-c", cfg_path, "--ckpt", prefix, "--out", tmp_path / "itp", "--pairs", 1,
             "--points", 3, "--steps", 1, "--random-pairs", 1, "-o", "Langevin.n_steps=2", "--deterministic-dequant")
    assert r.returncode == 0, r.stderr
    with np.load(tmp_path / "itp" / "interp.npz") as f:
        assert f["revised"].shape == (1, 3, 1, 16, 16) and f["random_decoded"].shape == (1, 3, 1, 16, 16)
    for f in ("interp_coopflow.png", "interp_flow.png", "random_coopflow.png", "random_flow.png"):
        assert (tmp_path / "itp" / f).is_file()
    r = tool("inpaint.py", "-c", cfg_path, "--ckpt", prefix, "--out", tmp_path / "bad", "--mask-rect", "1,2,3")
    assert r.returncode == 2 and "TOP,LEFT,HEIGHT,WIDTH" in r.stderr
