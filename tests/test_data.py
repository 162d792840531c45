"""Dataset layer: real file formats built in tmp_path (never fetched), values checked
against independent index arithmetic / a float64 resize reference, and the epoch
sampler's determinism, resume, sharding and worker equivalence."""
import io
import os
import pickle
import tarfile
import warnings
import zipfile
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from conftest import CIFAR_SAMPLE, NO_CIFAR_SAMPLE
from paddle_coopflow.data import (DatasetError, EpochBatchSampler, build_dataloader,
                                  build_dataset, load_images)
from paddle_coopflow.data.base import ArrayDataset


def cfg(**kw):
    return SimpleNamespace(**kw)


def px(v):
    """Independent [-1, 1] value of a uint8 level."""
    return np.float32(v) / np.float32(255) * 2 - 1


# ----------------------------------------------------------------------------- CIFAR-10
CIFAR_PER_BATCH, CIFAR_TEST = 3, 4


def _cifar_batch(rng, n, tag):
    data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    labels = [int(v) for v in rng.integers(0, 10, size=n)]
    return {b"batch_label": tag.encode(), b"labels": labels, b"data": data,
            b"filenames": [f"img_{tag}_{k}.png".encode() for k in range(n)]}


@pytest.fixture(scope="module")
def cifar(tmp_path_factory):
    """Official layout: cifar-10-python.tar.gz holding cifar-10-batches-py/* (protocol 2)."""
    root = tmp_path_factory.mktemp("cifar")
    rng = np.random.default_rng(0)
    batches = {f"data_batch_{k}": _cifar_batch(rng, CIFAR_PER_BATCH, f"training batch {k} of 5")
               for k in range(1, 6)}
    batches["test_batch"] = _cifar_batch(rng, CIFAR_TEST, "testing batch 1 of 1")
    folder = root / "extracted" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    tar_path = root / "cifar-10-python.tar.gz"
    with tarfile.open(tar_path, "w:gz") as tf:
        for name in ["batches.meta", "test_batch"] + [f"data_batch_{k}" for k in range(1, 6)]:
            obj = batches.get(name, {b"label_names": [b"airplane"]})
            raw = pickle.dumps(obj, protocol=2)
            (folder / name).write_bytes(raw)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(raw)
            tf.addfile(info, io.BytesIO(raw))
    return root, tar_path, folder, batches


def test_cifar_pixels_and_labels_from_tarball(cifar):
    root, tar_path, _, batches = cifar
    ds = build_dataset(cfg(name="cifar10", root=str(tar_path)), "train")
    assert len(ds) == 5 * CIFAR_PER_BATCH and ds.hflip  # flip default on for CIFAR train
    # Image 4 = data_batch_2 row 1. Row layout: 1024 R, 1024 G, 1024 B, each row-major 32x32.
    row = batches["data_batch_2"][b"data"][1]
    x, y = ds[4]
    assert x.shape == (3, 32, 32) and x.dtype == np.float32 and y.dtype == np.int64
    assert y == batches["data_batch_2"][b"labels"][1]
    for c, r, col in [(0, 0, 0), (1, 5, 7), (2, 31, 30), (0, 17, 2)]:
        assert x[c, r, col] == pytest.approx(px(row[c * 1024 + r * 32 + col]), abs=1e-6)
    expect = np.empty((3, 32, 32), np.float32)
    for k in range(3072):
        expect[k // 1024, (k % 1024) // 32, k % 32] = px(row[k])
    np.testing.assert_allclose(x, expect, atol=1e-6)
    labels = [ds.label(i) for i in range(len(ds))]
    assert labels == sum((batches[f"data_batch_{k}"][b"labels"] for k in range(1, 6)), [])


def test_cifar_layouts_agree_and_test_split(cifar):
    root, tar_path, folder, batches = cifar
    a = load_images(cfg(name="cifar10", root=str(tar_path)), "test")
    b = load_images(cfg(name="cifar10", root=str(folder)), "test")
    c = load_images(cfg(name="cifar10", root=str(root)), "test")  # parent of the archive
    assert a.shape == (CIFAR_TEST, 32, 32, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, c)
    d = batches["test_batch"][b"data"][2]
    assert a[2, 3, 4, 1] == d[1024 + 3 * 32 + 4]
    ds = build_dataset(cfg(name="cifar10", root=str(folder)), "test")
    assert not ds.hflip  # never flip outside train


def test_cifar_errors(cifar, tmp_path):
    with pytest.raises(DatasetError, match="cs.toronto.edu") as e:
        build_dataset(cfg(name="cifar10", root=str(tmp_path / "nope")), "train")
    assert str(tmp_path / "nope") in str(e.value)
    bad = tmp_path / "cifar-10-python.tar.gz"
    bad.write_bytes(os.urandom(2000))
    with pytest.raises(DatasetError, match="corrupt") as e:
        build_dataset(cfg(name="cifar10", root=str(bad)), "train")
    assert str(bad) in str(e.value)
    # An archive lacking a batch.
    part = tmp_path / "part.tar.gz"
    with tarfile.open(part, "w:gz") as tf:
        tf.add(str(cifar[2] / "test_batch"), arcname="cifar-10-batches-py/test_batch")
    with pytest.raises(DatasetError, match="data_batch_1"):
        build_dataset(cfg(name="cifar10", root=str(part)), "train")


class _Evil:
    def __reduce__(self):
        return (os.getcwd, ())


def test_cifar_pickle_cannot_run_code(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    (folder / "test_batch").write_bytes(pickle.dumps({b"data": _Evil(), b"labels": []}, protocol=2))
    with pytest.raises(DatasetError, match="forbidden"):
        build_dataset(cfg(name="cifar10", root=str(folder)), "test")


# ----------------------------------------------------------------------------- SVHN
def test_svhn_mat(tmp_path):
    import scipy.io

    rng = np.random.default_rng(1)
    X = rng.integers(0, 256, size=(32, 32, 3, 5), dtype=np.uint8)
    y = np.array([[1], [10], [3], [10], [9]], dtype=np.uint8)
    scipy.io.savemat(tmp_path / "train_32x32.mat", {"X": X, "y": y})
    scipy.io.savemat(tmp_path / "test_32x32.mat", {"X": X[..., :2], "y": y[:2]})
    ds = build_dataset(cfg(name="svhn", root=str(tmp_path)), "train")
    assert len(ds) == 5 and not ds.hflip
    assert [ds.label(i) for i in range(5)] == [1, 0, 3, 0, 9]
    x, lab = ds[3]
    for r, c, ch in [(0, 0, 0), (7, 21, 2), (31, 31, 1)]:
        assert x[ch, r, c] == pytest.approx(px(X[r, c, ch, 3]), abs=1e-6)
    # A file root named for another split resolves to its sibling.
    t = build_dataset(cfg(name="svhn", root=str(tmp_path / "train_32x32.mat")), "test")
    assert len(t) == 2
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "test_32x32.mat").write_bytes(b"MATLAB" + os.urandom(500))
    with pytest.raises(DatasetError, match="corrupt") as e:
        build_dataset(cfg(name="svhn", root=str(tmp_path / "broken")), "test")
    assert "test_32x32.mat" in str(e.value)
    with pytest.raises(DatasetError, match="ufldl.stanford.edu") as e:
        build_dataset(cfg(name="svhn", root=str(tmp_path / "broken")), "train")
    assert str(tmp_path / "broken" / "train_32x32.mat") in str(e.value)


# ----------------------------------------------------------------------------- CelebA
def _tri_resize_axis(a, out, axis):
    """Float64 antialiased bilinear (triangle filter widened by the scale) along `axis`."""
    n_in = a.shape[axis]
    scale = n_in / out
    sup = max(scale, 1.0)
    w = np.zeros((out, n_in))
    for i in range(out):
        center = (i + 0.5) * scale
        d = (np.arange(n_in) + 0.5 - center) / sup
        w[i] = np.maximum(0.0, 1.0 - np.abs(d))
        w[i] /= w[i].sum()
    return np.moveaxis(np.tensordot(w, np.moveaxis(a, axis, 0), axes=1), 0, axis)


def _reference_resize_crop(a, size):
    """torchvision Resize(size) + CenterCrop(size) semantics on uint8 [H, W, C], in float64."""
    h, w = a.shape[:2]
    nh, nw = (int(size * h / w), size) if w <= h else (size, int(size * w / h))
    r = _tri_resize_axis(_tri_resize_axis(a.astype(np.float64), nw, 1), nh, 0)
    top, left = int(round((nh - size) / 2.0)), int(round((nw - size) / 2.0))
    return r[top:top + size, left:left + size]


def _celeba_like(k):
    """178x218 RGB: R = vertical ramp, G = horizontal ramp, B = noise (k = 0, so that an
    unfiltered resize shows) or the constant 40 k."""
    rr, cc = np.meshgrid(np.arange(218), np.arange(178), indexing="ij")
    b = np.random.default_rng(k).integers(0, 256, rr.shape) if k == 0 else np.full_like(rr, 40 * k)
    return np.stack([rr * 255 // 217, cc * 255 // 177, b], -1).astype(np.uint8)


@pytest.fixture(scope="module")
def celeba(tmp_path_factory):
    root = tmp_path_factory.mktemp("celeba")
    folder = root / "img_align_celeba"
    folder.mkdir()
    arrays = [_celeba_like(k) for k in range(3)]
    names = ["000001.png", "000002.png", "000003.jpg"]
    for a, n in zip(arrays, names):
        Image.fromarray(a).save(folder / n, quality=95)
    zroot = root / "z"
    zroot.mkdir()
    with zipfile.ZipFile(zroot / "img_align_celeba.zip", "w") as zf:
        zf.writestr("img_align_celeba/", "")
        for n in names:
            zf.write(folder / n, f"img_align_celeba/{n}")
    return root, zroot, arrays


def test_celeba_resize_crop_against_reference(celeba):
    root, _, arrays = celeba
    ds = build_dataset(cfg(name="celeba", root=str(root)), "all")
    assert len(ds) == 3 and ds.label(0) == 0
    got = ds.image(0).astype(np.float64)  # PNG: lossless source
    assert got.shape == (32, 32, 3)
    # Resize short side 178 -> 32 (218 -> int(32*218/178) = 39), crop rows round(3.5) = 4..35.
    ref = _tri_resize_axis(_tri_resize_axis(arrays[0].astype(np.float64), 32, 1), 39, 0)
    assert np.abs(got - ref[4:36]).max() <= 2.0
    np.testing.assert_array_equal(ref[4:36], _reference_resize_crop(arrays[0], 32))
    assert np.abs(got[:, :, 0] - ref[3:35, :, 0]).max() > 4  # an off-by-one crop would fail
    x, _ = ds[0]
    np.testing.assert_allclose(x, (got.transpose(2, 0, 1) / 255 * 2 - 1), atol=1e-6)


def test_celeba_zip_equals_folder_and_split_rule(celeba):
    root, zroot, _ = celeba
    a = load_images(cfg(name="celeba", root=str(root)), "all")
    b = load_images(cfg(name="celeba", root=str(zroot / "img_align_celeba.zip")), "train")
    c = load_images(cfg(name="celeba", root=str(zroot)), "all")
    assert a.shape == (3, 32, 32, 3)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, c)
    assert abs(float(a[2, :, :, 2].mean()) - 80) < 3  # JPEG image 3 has B = 80 everywhere
    with pytest.raises(DatasetError, match="'test' split"):
        build_dataset(cfg(name="celeba", root=str(root)), "test")


def test_celeba_zip_workers_and_errors(celeba, tmp_path):
    _, zroot, _ = celeba
    ds = build_dataset(cfg(name="celeba", root=str(zroot / "img_align_celeba.zip")), "all")
    a = [x.numpy() for x, _ in build_dataloader(ds, 2, True, 5, 0)]
    b = [x.numpy() for x, _ in build_dataloader(ds, 2, True, 5, 0, num_workers=2)]
    assert len(a) == len(b) == 2
    for p, q in zip(a, b):
        np.testing.assert_array_equal(p, q)
    bad = tmp_path / "img_align_celeba.zip"
    bad.write_bytes(os.urandom(3000))
    with pytest.raises(DatasetError, match="corrupt") as e:
        build_dataset(cfg(name="celeba", root=str(bad)), "all")
    assert str(bad) in str(e.value)
    with pytest.raises(DatasetError, match="img_align_celeba.zip") as e:
        build_dataset(cfg(name="celeba", root=str(tmp_path / "missing")), "all")
    assert str(tmp_path / "missing") in str(e.value)


# ----------------------------------------------------------------------------- image folder
def test_image_folder_labels_order_and_formats(tmp_path):
    def save(rel, arr, **kw):
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(arr).save(p, **kw)

    solid = lambda rgb, h=32, w=32: np.tile(np.array(rgb, np.uint8), (h, w, 1))  # noqa: E731
    save("dog/c.bmp", solid((10, 20, 30)))
    save("cat/sub/b.JPG", solid((200, 100, 50)), quality=100, format="JPEG")
    save("cat/a.png", solid((255, 0, 0), 40, 48))  # resized 40x48 -> 32x38 -> crop 32
    save("dog/d.webp", solid((0, 0, 255)), lossless=True)
    ramp = np.repeat((np.arange(47) * 255 // 46).astype(np.uint8)[:, None, None], 40, 1)
    save("dog/e.png", np.repeat(ramp, 3, 2))  # 40 wide, 47 high: int(32*47/40) = 37 rows
    wide = np.ascontiguousarray(np.repeat(ramp, 3, 2).transpose(1, 0, 2))  # 47 wide, 40 high
    save("dog/f.png", wide)
    (tmp_path / "dog" / "notes.txt").write_text("not an image")
    save("cat/.hidden.png", solid((1, 1, 1)))
    save("loose.png", solid((9, 9, 9)))
    with pytest.warns(UserWarning, match="ignoring 1 image"):
        ds = build_dataset(cfg(name="folder", root=str(tmp_path)), "train")
    assert ds.files == ["cat/a.png", "cat/sub/b.JPG", "dog/c.bmp", "dog/d.webp", "dog/e.png",
                        "dog/f.png"]
    assert ds.classes == ["cat", "dog"] and [ds.label(i) for i in range(6)] == [0, 0, 1, 1, 1, 1]
    ref = _reference_resize_crop(np.repeat(ramp, 3, 2), 32)
    assert np.abs(ds.image(4).astype(np.float64) - ref).max() <= 2.0
    assert np.abs(ds.image(5).astype(np.float64) - _reference_resize_crop(wide, 32)).max() <= 2.0
    x, _ = ds[0]
    assert x.shape == (3, 32, 32)
    np.testing.assert_allclose(x[:, 5, 5], [1, -1, -1], atol=1e-6)
    np.testing.assert_allclose(ds[2][0][:, 0, 0], [px(10), px(20), px(30)], atol=1e-6)
    np.testing.assert_allclose(ds[3][0][:, 31, 31], [-1, -1, 1], atol=1e-6)
    # Grey: ITU-R 601-2 luma L = R*299/1000 + G*587/1000 + B*114/1000.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        g = build_dataset(cfg(name="folder", root=str(tmp_path), channels=1), "all")
    luma = (10 * 299 + 20 * 587 + 30 * 114) / 1000
    assert g[2][0].shape == (1, 32, 32)
    assert abs(g.image(2)[0, 0, 0] - luma) <= 1


def test_image_folder_flat_and_errors(tmp_path):
    for k in range(3):
        Image.fromarray(np.full((32, 32, 3), 50 * k, np.uint8)).save(tmp_path / f"{k}.png")
    ds = build_dataset(cfg(name="folder", root=str(tmp_path)), "all")
    assert [ds.label(i) for i in range(3)] == [0, 0, 0] and ds.classes == []
    assert ds[1][0][0, 0, 0] == pytest.approx(px(50), abs=1e-6)
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    with pytest.raises(DatasetError, match="no images") as e:
        build_dataset(cfg(name="folder", root=str(empty)), "all")
    assert str(empty) in str(e.value)
    (tmp_path / "3.png").write_bytes(b"\x89PNG garbage")
    ds = build_dataset(cfg(name="folder", root=str(tmp_path)), "all")
    with pytest.raises(DatasetError, match="3.png"):
        ds[3]
    with pytest.raises(DatasetError, match="unknown dataset"):
        build_dataset(cfg(name="imagenet", root=str(tmp_path)), "all")


# ----------------------------------------------------------------------------- digits
def test_digits_values_sizes_and_splits():
    from sklearn.datasets import load_digits

    raw = load_digits().images  # float 0..16
    ds8 = build_dataset(cfg(name="digits", image_size=8, channels=1), "train")
    assert len(ds8) == 1500
    assert len(build_dataset(cfg(name="digits", image_size=8), "test")) == 297
    x, y = ds8[7]
    assert y == load_digits().target[7]
    assert np.abs(x[0] - (raw[7] / 16 * 2 - 1)).max() <= 1 / 255 + 1e-6  # quantisation bound
    np.testing.assert_array_equal(x[0][raw[7] == 0], -1)
    np.testing.assert_array_equal(x[0][raw[7] == 16], 1)
    test0 = build_dataset(cfg(name="digits", image_size=8, channels=1), "test")[0][0]
    assert np.abs(test0[0] - (raw[1500] / 16 * 2 - 1)).max() <= 1 / 255 + 1e-6
    ds16 = build_dataset(cfg(name="digits", image_size=16, channels=3), "all")
    x16 = ds16[7][0]
    assert len(ds16) == 1797 and x16.shape == (3, 16, 16)
    np.testing.assert_array_equal(x16[0], x16[2])
    # Upsampled 2x: each 2x2 block's mean stays near the source pixel.
    blocks = (x16[0].reshape(8, 2, 8, 2).mean((1, 3)) + 1) / 2 * 16
    assert np.abs(blocks - raw[7]).mean() < 1.5
    with pytest.raises(DatasetError, match="digits_size"):
        build_dataset(cfg(name="digits", image_size=32, digits_size=16), "train")


# ----------------------------------------------------------------------------- sampler / loader
def test_sampler_world1_matches_reference_batching():
    s = EpochBatchSampler(50000, 28, True, seed=0, epoch=0)
    b = s.index_batches()
    assert len(s) == len(b) == 1786 and len(b[-1]) == 20  # the official CIFAR-10 batching at B = 28
    assert sorted(np.concatenate(b).tolist()) == list(range(50000))
    assert not np.array_equal(np.concatenate(b)[:100], np.arange(100))
    plain = EpochBatchSampler(10, 4, False, 0, 0).index_batches()
    assert [p.tolist() for p in plain] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert len(EpochBatchSampler(10, 4, False, 0, 0, drop_last=True)) == 2


@pytest.mark.parametrize("n,b,w", [(103, 8, 3), (96, 8, 3), (10, 4, 2), (17, 4, 4), (2, 1, 3)])
def test_sampler_sharding(n, b, w):
    ranks = [EpochBatchSampler(n, b, True, 7, 3, rank=r, world_size=w).index_batches()
             for r in range(w)]
    assert len({len(r) for r in ranks}) == 1  # same iteration count on every rank
    assert all(len(batch) >= 1 for r in ranks for batch in r)
    flat = np.concatenate([np.concatenate(r) for r in ranks])
    assert set(flat.tolist()) == set(range(n))  # covering
    rem = n % (b * w)
    dup = w - rem if 0 < rem < w else 0
    assert len(flat) == n + dup  # disjoint except the documented padding
    if rem == 0 or rem >= w:
        assert len(set(flat.tolist())) == len(flat)


def test_sampler_determinism_and_resume():
    a = EpochBatchSampler(37, 5, True, 11, 2, hflip=True)
    assert list(a) == list(EpochBatchSampler(37, 5, True, 11, 2, hflip=True))
    c = list(EpochBatchSampler(37, 5, True, 11, 3, hflip=True))
    assert [k for bt in c for k in bt] != [k for bt in a for k in bt]
    full = list(a)
    for k in (0, 3, 7, 8):
        assert list(EpochBatchSampler(37, 5, True, 11, 2, start_batch=k, hflip=True)) == full[k:]
    with pytest.raises(ValueError, match="start_batch"):
        EpochBatchSampler(37, 5, True, 11, 2, start_batch=9)
    # A sample's flip depends on (seed, epoch, index) only, not on the sharding.
    flips1 = dict(k for bt in full for k in bt)
    sh = [k for r in range(2) for bt in EpochBatchSampler(37, 3, True, 11, 2, rank=r, world_size=2,
                                                             hflip=True) for k in bt]
    assert all(flips1[i] == f for i, f in sh)
    frac = np.mean([f for bt in EpochBatchSampler(2000, 50, True, 1, 0, hflip=True) for _, f in bt])
    assert 0.45 < frac < 0.55


@pytest.fixture(scope="module")
def indexed():
    """Train dataset whose label is the index, with asymmetric random images."""
    rng = np.random.default_rng(3)
    imgs = rng.integers(0, 256, size=(23, 8, 8, 3), dtype=np.uint8)
    return ArrayDataset(imgs, np.arange(23), "toy", "train", 8, 3, hflip=True), imgs


def test_loader_flips_resume_and_workers(indexed):
    ds, imgs = indexed
    def run(epoch, **kw):
        return [(x.numpy(), y.numpy()) for x, y in build_dataloader(ds, 4, True, 9, epoch, **kw)]
    e0 = run(0)
    assert len(e0) == 6 and e0[-1][0].shape == (3, 3, 8, 8)
    n_flip = 0
    for x, y in e0:
        assert x.dtype == np.float32 and y.dtype == np.int64
        for xi, i in zip(x, y):
            plain = imgs[i].transpose(2, 0, 1) / 255.0 * 2 - 1
            flipped = plain[:, :, ::-1]
            is_flip = np.allclose(xi, flipped, atol=1e-6)
            assert is_flip or np.allclose(xi, plain, atol=1e-6)
            n_flip += is_flip
    assert 0 < n_flip < 23
    again = run(0)
    assert all(np.array_equal(p[0], q[0]) and np.array_equal(p[1], q[1]) for p, q in zip(e0, again))
    e1 = run(1)
    assert not all(np.array_equal(p[1], q[1]) for p, q in zip(e0, e1))
    resumed = run(0, start_batch=4)
    assert len(resumed) == 2
    for p, q in zip(resumed, e0[4:]):
        np.testing.assert_array_equal(p[0], q[0])
        np.testing.assert_array_equal(p[1], q[1])
    w2 = run(0, start_batch=1, num_workers=2, rank=1, world_size=2)
    w0 = run(0, start_batch=1, num_workers=0, rank=1, world_size=2)
    assert len(w0) == len(w2) == 2
    for p, q in zip(w0, w2):
        np.testing.assert_array_equal(p[0], q[0])
        np.testing.assert_array_equal(p[1], q[1])
    # Evaluation split: same images never flipped.
    test = ArrayDataset(imgs, np.arange(23), "toy", "test", 8, 3, hflip=False)
    xs = np.concatenate([x.numpy() for x, _ in build_dataloader(test, 5, False, 9, 0)])
    np.testing.assert_allclose(xs, imgs.transpose(0, 3, 1, 2) / 255.0 * 2 - 1, atol=1e-6)


def test_load_images_shuffle(cifar):
    _, tar_path, _, batches = cifar
    c = cfg(name="cifar10", root=str(tar_path))
    allimgs = load_images(c, "train")
    two = load_images(c, "train", n=2, shuffle_seed=4)
    perm = np.random.default_rng(4).permutation(15)[:2]
    np.testing.assert_array_equal(two, allimgs[perm])
    assert load_images(c, "train", n=100).shape[0] == 15


# ----------------------------------------------------------------------------- shared sample
@pytest.mark.skipif(not os.path.isdir(CIFAR_SAMPLE), reason=NO_CIFAR_SAMPLE)
def test_shared_cifar10_sample_as_folder():
    ds = build_dataset(cfg(name="folder", root=CIFAR_SAMPLE), "train")
    assert len(ds) == 1000 and len(ds.classes) == 10 and ds.classes[0] == "airplane"
    assert np.bincount([ds.label(i) for i in range(1000)]).tolist() == [100] * 10
    ref = np.asarray(Image.open(os.path.join(CIFAR_SAMPLE, ds.files[0])).convert("RGB"))
    x, y = ds[0]
    assert y == 0 and x.shape == (3, 32, 32)
    np.testing.assert_allclose(x, ref.transpose(2, 0, 1) / 255.0 * 2 - 1, atol=1e-6)
    batches = list(build_dataloader(ds, 250, True, 0, 0))
    assert [b[0].shape[0] for b in batches] == [250] * 4
