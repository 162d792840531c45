"""KID (paddle_coopflow/metrics/kid.py) and the offline proxy measure of bench/quality."""
import json
import os

import numpy as np
import pytest
from PIL import Image

from conftest import CIFAR_SAMPLE, NO_CIFAR_SAMPLE
from paddle_coopflow.errors import UserError
from paddle_coopflow.metrics.kid import kernel_inception_distance, mmd2_unbiased, polynomial_kernel


# ----------------------------------------------------------------------------------- KID
def _brute_mmd2(a, b):
    """Unbiased MMD², k(x, y) = (x.y / d + 1)^3, by explicit loops over all pairs (float64)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    n, m, d = len(a), len(b), a.shape[1]
    k = lambda x, y: (sum(float(x[t]) * float(y[t]) for t in range(d)) / d + 1.0) ** 3  # noqa: E731
    saa = sum(k(a[i], a[j]) for i in range(n) for j in range(n) if i != j)
    sbb = sum(k(b[i], b[j]) for i in range(m) for j in range(m) if i != j)
    sab = sum(k(a[i], b[j]) for i in range(n) for j in range(m))
    return saa / (n * (n - 1)) + sbb / (m * (m - 1)) - 2 * sab / (n * m)


def test_mmd2_matches_brute_force_loops():
    rng = np.random.RandomState(0)
    a, b = rng.randn(7, 5), rng.randn(9, 5) + 0.3
    assert mmd2_unbiased(a, b) == pytest.approx(_brute_mmd2(a, b), rel=1e-12, abs=1e-12)
    assert polynomial_kernel(a, b)[2, 3] == pytest.approx((a[2] @ b[3] / 5 + 1) ** 3, rel=1e-14)


def test_kid_whole_sets_is_one_estimate():
    rng = np.random.RandomState(1)
    a, b = rng.randn(12, 6), rng.randn(12, 6)
    mean, std = kernel_inception_distance(a, b, subset_size=1000, n_subsets=5)
    assert mean == pytest.approx(_brute_mmd2(a, b), rel=1e-12, abs=1e-12)
    assert std == 0.0


def test_kid_subsets_follow_the_documented_draws():
    rng = np.random.RandomState(2)
    a, b = rng.randn(15, 4).astype(np.float32), rng.randn(11, 4) + 1.0
    mean, std = kernel_inception_distance(a, b, subset_size=6, n_subsets=4, seed=7)
    draws = np.random.RandomState(7)
    vals = []
    for _ in range(4):
        ia, ib = draws.choice(15, 6, replace=False), draws.choice(11, 6, replace=False)
        vals.append(_brute_mmd2(a[ia], b[ib]))
    assert mean == pytest.approx(np.mean(vals), rel=1e-9)
    assert std == pytest.approx(np.std(vals), rel=1e-9)


def test_kid_is_unbiased_where_the_plain_estimate_is_not():
    rng = np.random.RandomState(3)
    n, reps = 6, 3000
    unbiased, biased = np.empty(reps), np.empty(reps)
    for r in range(reps):
        a, b = rng.randn(n, 3), rng.randn(n, 3)
        unbiased[r] = mmd2_unbiased(a, b)
        biased[r] = (polynomial_kernel(a, a).mean() + polynomial_kernel(b, b).mean()
                     - 2 * polynomial_kernel(a, b).mean())
    se = unbiased.std() / np.sqrt(reps)
    assert abs(unbiased.mean()) < 4 * se
    assert biased.mean() > 10 * biased.std() / np.sqrt(reps)


def test_kid_same_distribution_near_zero_shift_positive():
    rng = np.random.RandomState(4)
    a, b = rng.randn(400, 16), rng.randn(400, 16)
    same, _ = kernel_inception_distance(a, b, subset_size=200, n_subsets=20)
    shifted, shifted_std = kernel_inception_distance(a, b + 0.5, subset_size=200, n_subsets=20)
    assert abs(same) < 0.01
    assert shifted > 0.1 and shifted > 10 * shifted_std
    # identical sets: the unbiased estimate is 2 (S/n - tr K) / (n (n-1)), slightly negative, O(1/n)
    ident, _ = kernel_inception_distance(a, a.copy())
    k = (a @ a.T / 16 + 1) ** 3
    assert ident == pytest.approx(2 * (k.sum() / 400 - np.trace(k)) / (400 * 399), rel=1e-10)
    assert -0.1 * shifted < ident < 0


@pytest.mark.parametrize("a_shape,b_shape,kw", [((5, 3), (5, 4), {}), ((5,), (5, 3), {}),
                                                ((1, 3), (5, 3), {}), ((5, 3), (5, 3), {"n_subsets": 0})])
def test_kid_bad_input_is_user_error(a_shape, b_shape, kw):
    with pytest.raises(UserError):
        kernel_inception_distance(np.ones(a_shape), np.ones(b_shape), **kw)


# ------------------------------------------------------------------------- bench/quality
def _tiny_feature_model(prefix):
    import paddle

    from bench.quality.classifier import SmallCNN, export_features

    paddle.seed(0)
    net = SmallCNN(width=4, feat_dim=8)
    export_features(net, str(prefix))
    return net


def _write_class_folders(root, n_per_class, seed):
    rng = np.random.RandomState(seed)
    for cls in ("cat", "dog"):
        (root / cls).mkdir(parents=True)
        for i in range(n_per_class):
            base = rng.randint(0, 256, size=3) if cls == "cat" else np.array([30, 200, 90])
            img = np.clip(base + rng.randint(-40, 40, size=(32, 32, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(root / cls / f"{i:03d}.png")


def test_jit_features_match_dygraph_and_score_images(tmp_path):
    import paddle

    from bench.quality.data import to_model_input
    from bench.quality.score import score_images

    net = _tiny_feature_model(tmp_path / "features")
    rng = np.random.RandomState(5)
    imgs = rng.randint(0, 256, size=(30, 32, 32, 3)).astype(np.uint8)
    with paddle.no_grad():
        ref = net.features(paddle.to_tensor(to_model_input(imgs))).numpy()
    got = paddle.jit.load(str(tmp_path / "features"))(paddle.to_tensor(to_model_input(imgs))).numpy()
    assert got.shape == (30, 8) and np.abs(got - ref).max() < 1e-5
    same = score_images(str(tmp_path / "features"), imgs, imgs.copy())
    assert abs(same["fid"]) < 1e-4 and same["n"] == 30 and same["feat_dim"] == 8
    dark = (imgs // 4).astype(np.uint8)
    other = score_images(str(tmp_path / "features"), dark, imgs)
    assert other["fid"] > 1e-3 and other["kid"] > 0


def test_score_cli_end_to_end(tmp_path, capsys):
    from bench.quality import score

    _tiny_feature_model(tmp_path / "features")
    _write_class_folders(tmp_path / "test", 10, seed=6)
    _write_class_folders(tmp_path / "train", 12, seed=7)
    rng = np.random.RandomState(8)
    u8 = rng.randint(0, 256, size=(16, 32, 32, 3)).astype(np.uint8)
    np.savez(tmp_path / "s_u8.npz", images=u8)
    np.savez(tmp_path / "s_f.npz", images=u8.transpose(0, 3, 1, 2).astype(np.float32) / 127.5 - 1)
    base = ["--features", str(tmp_path / "features"), "--test-dir", str(tmp_path / "test"),
            "--floor-dir", str(tmp_path / "train"), "--floor-per-class", "5", "--kid-subset-size", "8",
            "--kid-subsets", "3"]
    rows = []
    for name in ("s_u8", "s_f"):
        out = tmp_path / f"{name}.json"
        assert score.cli(base + ["--samples", str(tmp_path / f"{name}.npz"), "--json-out", str(out)]) == 0
        rows.append(json.loads(out.read_text())["rows"])
    assert rows[0] == rows[1]  # float [-1, 1] NCHW is rounded to the same uint8 images
    assert set(rows[0]) == {"samples", "floor", "noise"}
    assert rows[0]["floor"]["n"] == 10 and rows[0]["noise"]["n"] == 20 and rows[0]["samples"]["n_ref"] == 20
    assert "proxy FID" in capsys.readouterr().out


def test_score_cli_bad_input_is_one_line_exit_2(tmp_path, capsys):
    from bench.quality import score

    _tiny_feature_model(tmp_path / "features")
    _write_class_folders(tmp_path / "test", 3, seed=9)
    (tmp_path / "empty").mkdir()
    np.savez(tmp_path / "other_key.npz", pics=np.zeros((4, 32, 32, 3), np.uint8))
    np.savez(tmp_path / "bad_shape.npz", images=np.zeros((4, 28, 28, 3), np.uint8))
    np.savez(tmp_path / "bad_range.npz", images=np.full((4, 3, 32, 32), 3.0, np.float32))
    np.save(tmp_path / "single.npy", np.zeros((4, 32, 32, 3), np.uint8))
    (tmp_path / "garbage.npz").write_bytes(b"not a zip file at all")
    feats, test = str(tmp_path / "features"), str(tmp_path / "test")
    cases = [(["--features", feats, "--test-dir", str(tmp_path / "missing")], "does not exist"),
             (["--features", feats, "--test-dir", str(tmp_path / "empty")], "holds no images"),
             (["--features", str(tmp_path / "nofeat"), "--test-dir", test], "no jit-saved feature model"),
             (["--features", feats, "--test-dir", test, "--samples", str(tmp_path / "other_key.npz")],
              "has no key 'images'"),
             (["--features", feats, "--test-dir", test, "--samples", str(tmp_path / "bad_shape.npz")],
              "expected uint8"),
             (["--features", feats, "--test-dir", test, "--samples", str(tmp_path / "bad_range.npz")],
              "expected [-1, 1]"),
             (["--features", feats, "--test-dir", test, "--samples", str(tmp_path / "single.npy")],
              "single array"),
             (["--features", feats, "--test-dir", test, "--samples", str(tmp_path / "garbage.npz")],
              "cannot read"),
             (["--features", feats, "--test-dir", test, "--samples", str(tmp_path / "none.npz")],
              "does not exist")]
    for argv, fragment in cases:
        assert score.cli(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("UserError: ") and fragment in err and "\n" not in err


def test_augment_crops_and_flips():
    from bench.quality.train_classifier import augment

    imgs = np.random.RandomState(10).randint(1, 256, size=(64, 32, 32, 3)).astype(np.uint8)
    out = augment(imgs, np.random.RandomState(0))
    assert out.shape == (64, 3, 32, 32) and out.dtype == np.float32 and out.min() >= -1 and out.max() <= 1
    padded = np.pad(imgs, ((0, 0), (4, 4), (4, 4), (0, 0))).transpose(0, 3, 1, 2) / 127.5 - 1
    flips = 0
    for i in range(64):
        crops = [padded[i, :, y:y + 32, x:x + 32] for y in range(9) for x in range(9)]
        plain = any(np.allclose(out[i], c, atol=1e-6) for c in crops)
        flipped = any(np.allclose(out[i], c[:, :, ::-1], atol=1e-6) for c in crops)
        assert plain or flipped
        flips += flipped and not plain
    assert 10 < flips < 54


def test_train_classifier_tiny_run(tmp_path):
    import paddle

    from bench.quality import train_classifier

    _write_class_folders(tmp_path / "train", 16, seed=11)
    _write_class_folders(tmp_path / "test", 4, seed=12)
    argv = ["--train-dir", str(tmp_path / "train"), "--test-dir", str(tmp_path / "test"), "--out",
            str(tmp_path / "out"), "--epochs", "2", "--batch-size", "8", "--width", "4", "--feat-dim", "8"]
    assert train_classifier.cli(argv) == 0
    info = json.loads((tmp_path / "out" / "classifier_info.json").read_text())
    assert info["train_images"] == 32 and info["test_images"] == 8 and info["feat_dim"] == 8
    assert 0.0 <= info["test_accuracy"] <= 1.0 and info["jit_max_abs_diff"] < 1e-5
    assert len(list((tmp_path / "out").glob("images_*.npz"))) == 2  # decoded-pixel caches
    feats = paddle.jit.load(str(tmp_path / "out" / "features"))(paddle.zeros([3, 3, 32, 32]))
    assert tuple(feats.shape) == (3, 8)
    bad = argv[:2] + ["--test-dir", str(tmp_path / "nope"), "--out", str(tmp_path / "out2")]
    assert train_classifier.cli(bad) == 2
    assert not (tmp_path / "out2").exists()  # failed before anything was decoded or written


@pytest.mark.skipif(not os.path.isdir(CIFAR_SAMPLE), reason=NO_CIFAR_SAMPLE)
def test_real_cifar_folder_loads_per_class():
    from bench.quality.data import load_class_folder

    images, labels, classes = load_class_folder(CIFAR_SAMPLE, per_class=2)
    assert images.shape == (20, 32, 32, 3) and images.dtype == np.uint8
    assert len(classes) == 10 and np.bincount(labels).tolist() == [2] * 10
    assert images.std() > 20  # real pictures, not blanks
