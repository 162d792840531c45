"""FID: Fréchet distance numerics, stats files, the torch-free .pth reader, the Inception port.

Inception forwards at 299x299 cost ~0.2 s per image on CPU, so the network tests
use 2-3 tiny images and random (explicitly labelled) weights.
"""
import collections
import os
import pickle
import struct
import warnings
import zipfile

import numpy as np
import pytest

from paddle_coopflow.errors import UserError
from paddle_coopflow.metrics import fid as fidmod
from paddle_coopflow.metrics.fid import (FIDEvaluator, StatsAccumulator, compute_stats,
                                         frechet_distance, load_stats, save_stats,
                                         stats_from_source)
from paddle_coopflow.utils.pth_reader import load_pth, load_state_dict

FILE = "pt_inception-2015-12-05-6726825d.pth"


# ----------------------------------------------------------------- torch files, by hand
class _Global:
    """Written as a pickle GLOBAL opcode `module.name` (torch is not installed)."""

    def __init__(self, module, name):
        self.module, self.name = module, name

    def __call__(self, *args):  # pickle's save_reduce insists on a callable
        raise NotImplementedError


class _Storage:
    def __init__(self, key, array):
        self.key, self.array = key, np.ascontiguousarray(array).ravel()


class _Tensor:
    def __init__(self, storage, offset, size, stride):
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride

    def __reduce__(self):
        return (_Global("torch._utils", "_rebuild_tensor_v2"),
                (self.storage, self.offset, tuple(self.size), tuple(self.stride), False,
                 collections.OrderedDict()))


_STORAGE_NAME = {np.dtype(np.float32): "FloatStorage", np.dtype(np.int64): "LongStorage"}


class _TorchPickler(pickle._Pickler):
    dispatch = pickle._Pickler.dispatch.copy()
    dispatch[_Global] = lambda self, g: self.write(
        pickle.GLOBAL + f"{g.module}\n{g.name}\n".encode())

    def __init__(self, fh, legacy):
        super().__init__(fh, protocol=2)
        self.legacy, self.storages = legacy, {}

    def persistent_id(self, obj):
        if not isinstance(obj, _Storage):
            return None
        self.storages[obj.key] = obj
        pid = ("storage", _Global("torch", _STORAGE_NAME[obj.array.dtype]), obj.key, "cpu",
               obj.array.size)
        return pid + (None,) if self.legacy else pid


def write_torch_file(path, obj, legacy=False, archive="fake_ckpt"):
    """torch.save's zip layout (or its pre-1.6 layout) written without torch."""
    if legacy:
        with open(path, "wb") as fh:
            for header in (0x1950A86A20F9469CFC6C, 1001, {"little_endian": True}):
                pickle.dump(header, fh, protocol=2)
            p = _TorchPickler(fh, legacy=True)
            p.dump(obj)
            keys = sorted(p.storages)
            pickle.dump(keys, fh, protocol=2)
            for k in keys:
                fh.write(struct.pack("<q", p.storages[k].array.size))
                fh.write(p.storages[k].array.astype(p.storages[k].array.dtype.newbyteorder("<"))
                         .tobytes())
        return
    import io
    buf = io.BytesIO()
    p = _TorchPickler(buf, legacy=False)
    p.dump(obj)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr(f"{archive}/data.pkl", buf.getvalue())
        zf.writestr(f"{archive}/byteorder", "little")
        for k, st in p.storages.items():
            zf.writestr(f"{archive}/data/{k}", st.array.astype("<" + st.array.dtype.str[1:])
                        .tobytes())
        zf.writestr(f"{archive}/version", "3\n")


@pytest.mark.parametrize("legacy", [False, True])
def test_pth_reader_views_offsets_dtypes(tmp_path, legacy):
    base = np.arange(24, dtype=np.float32) * 0.5 - 3.0
    longs = np.array([7, -2, 3, 2**40, 5], dtype=np.int64)
    fs, ls = _Storage("0", base), _Storage("1", longs)
    obj = collections.OrderedDict([
        ("contig", _Tensor(fs, 0, (2, 3), (3, 1))),
        ("transposed_at_6", _Tensor(fs, 6, (3, 4), (1, 3))),  # non-contiguous, shared storage
        ("step2_at_1", _Tensor(fs, 1, (4,), (2,))),
        ("scalar_long", _Tensor(ls, 3, (), ())),
        ("longs_2x2", _Tensor(ls, 1, (2, 2), (1, 2))),
        ("meta", {"epoch": 3}),
    ])
    path = str(tmp_path / ("legacy.pth" if legacy else "zip.pth"))
    write_torch_file(path, obj, legacy=legacy)
    out = load_pth(path)
    assert isinstance(out, collections.OrderedDict) and list(out) == list(obj)
    # Expected values by explicit element arithmetic: offset + sum(index * stride).
    np.testing.assert_array_equal(out["contig"], [[base[3 * i + j] for j in range(3)]
                                                  for i in range(2)])
    np.testing.assert_array_equal(out["transposed_at_6"],
                                  [[base[6 + i + 3 * j] for j in range(4)] for i in range(3)])
    np.testing.assert_array_equal(out["step2_at_1"], [base[1 + 2 * i] for i in range(4)])
    assert out["scalar_long"].shape == () and out["scalar_long"] == 2**40
    np.testing.assert_array_equal(out["longs_2x2"], [[longs[1 + i + 2 * j] for j in range(2)]
                                                     for i in range(2)])
    assert out["contig"].dtype == np.float32 and out["longs_2x2"].dtype == np.int64
    assert out["meta"] == {"epoch": 3}
    out["contig"][0, 0] = 99.0  # arrays own their memory: no aliasing of shared storages
    assert out["transposed_at_6"][0, 0] == base[6]
    assert list(load_state_dict(path)) == ["contig", "transposed_at_6", "step2_at_1",
                                           "scalar_long", "longs_2x2"]


def test_pth_reader_refuses_arbitrary_globals(tmp_path):
    path = str(tmp_path / "evil.pth")
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("a/data.pkl", b"\x80\x02cos\nsystem\nX\x04\x00\x00\x00echo\x85R.")
    with pytest.raises(pickle.UnpicklingError, match="refusing to load global os.system"):
        load_pth(path)


# ----------------------------------------------------------------- Fréchet distance
def _trace_sqrt_product(s1, s2):
    """tr sqrt(S1 S2) = tr sqrt(S1^1/2 S2 S1^1/2), by symmetric eigendecompositions."""
    w, v = np.linalg.eigh(s1)
    r = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    return np.sqrt(np.clip(np.linalg.eigvalsh(r @ s2 @ r), 0, None)).sum()


def _random_spd(rng, d):
    a = rng.standard_normal((d, d))
    return a @ a.T / d + 0.1 * np.eye(d)


def test_frechet_diagonal_closed_form():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.standard_normal(7), rng.standard_normal(7)
    s1, s2 = rng.uniform(0.1, 3, 7), rng.uniform(0.1, 3, 7)
    want = np.sum((mu1 - mu2) ** 2) + np.sum(s1 + s2 - 2 * np.sqrt(s1 * s2))
    assert frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2)) == pytest.approx(want, rel=1e-12)


def test_frechet_general_against_eigh_reference():
    rng = np.random.default_rng(1)
    d = 12
    mu1, mu2, s1, s2 = rng.standard_normal(d), rng.standard_normal(d), \
        _random_spd(rng, d), _random_spd(rng, d)
    want = (np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2)
            - 2 * _trace_sqrt_product(s1, s2))
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(want, rel=1e-10)


def test_fid_of_identical_sets_is_zero():
    x = np.random.default_rng(2).standard_normal((40, 16)) * 3 + 1
    mu, sigma = compute_stats(x)
    assert abs(frechet_distance(mu, sigma, mu, sigma)) < 1e-9 * np.trace(sigma)


def test_frechet_singular_covariances():
    rng = np.random.default_rng(3)
    x, y = rng.standard_normal((4, 10)), rng.standard_normal((5, 10)) + 0.5  # ranks 3 and 4
    (m1, s1), (m2, s2) = compute_stats(x), compute_stats(y)
    want = np.sum((m1 - m2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * _trace_sqrt_product(s1, s2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = frechet_distance(m1, s1, m2, s2)
    assert np.isfinite(got) and got == pytest.approx(want, rel=1e-4, abs=1e-4)


def test_frechet_retries_with_eps_when_sqrtm_not_finite(monkeypatch):
    rng = np.random.default_rng(4)
    s1, s2, mu = _random_spd(rng, 6), _random_spd(rng, 6), np.zeros(6)
    real, calls = fidmod._sqrtm, []

    def flaky(a):
        calls.append(a)
        return np.full_like(a, np.nan) if len(calls) == 1 else real(a)

    monkeypatch.setattr(fidmod, "_sqrtm", flaky)
    with pytest.warns(UserWarning, match="not finite"):
        got = frechet_distance(mu, s1, mu, s2, eps=1e-2)
    e = 1e-2 * np.eye(6)
    want = np.trace(s1) + np.trace(s2) - 2 * _trace_sqrt_product(s1 + e, s2 + e)
    assert len(calls) == 2 and got == pytest.approx(want, rel=1e-10)


def test_frechet_rejects_large_imaginary_part():
    with pytest.raises(ValueError, match="imaginary"):
        frechet_distance(np.zeros(2), np.eye(2), np.zeros(2), np.array([[0.0, 1.0], [1.0, 0.0]]))


def test_stats_accumulator_matches_np_cov():
    x = np.random.default_rng(5).standard_normal((37, 9)) * 0.3 + 100.0  # large mean
    acc = StatsAccumulator()
    for i in range(0, 37, 10):
        acc.update(x[i:i + 10])
    mu, sigma = acc.stats()
    np.testing.assert_allclose(mu, x.mean(0), rtol=1e-13)
    np.testing.assert_allclose(sigma, np.cov(x, rowvar=False), rtol=1e-9, atol=1e-12)


def test_stats_npz_round_trip_and_pytorch_fid_format(tmp_path):
    rng = np.random.default_rng(6)
    mu, sigma = rng.standard_normal(5), _random_spd(rng, 5)
    save_stats(str(tmp_path / "s.npz"), mu, sigma)
    with np.load(tmp_path / "s.npz") as f:
        assert sorted(f.keys()) == ["mu", "sigma"]
        np.testing.assert_array_equal(f["mu"], mu)
    np.savez(tmp_path / "pt.npz", mu=mu, sigma=sigma)  # how pytorch-fid writes them
    for name in ("s.npz", "pt.npz"):
        m, s = stats_from_source(str(tmp_path / name))
        np.testing.assert_array_equal(m, mu)
        np.testing.assert_array_equal(s, sigma)
    with pytest.raises(UserError, match="mu"):
        np.savez(tmp_path / "bad.npz", mean=mu)
        load_stats(str(tmp_path / "bad.npz"))


# ----------------------------------------------------------------- Inception port
def test_resize_matches_numpy_bilinear():
    import paddle

    from paddle_coopflow.metrics.inception import resize_299

    x = np.random.default_rng(7).standard_normal((1, 3, 5, 7)).astype(np.float32)

    def axis_weights(n_in, n_out=299):  # half-pixel centres, clamp at 0 and at the edge
        src = np.maximum((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0.0)
        i0 = np.floor(src).astype(int)
        w = np.zeros((n_out, n_in))
        w[np.arange(n_out), i0] += 1 - (src - i0)
        w[np.arange(n_out), np.minimum(i0 + 1, n_in - 1)] += src - i0
        return w

    want = np.einsum("yh,nchw,xw->ncyx", axis_weights(5), x.astype(np.float64), axis_weights(7))
    got = resize_299(paddle.to_tensor(x)).numpy()
    np.testing.assert_allclose(got, want, atol=2e-6)


def test_network_structure_matches_pytorch_fid_keys():
    from paddle_coopflow.metrics.inception import FIDInceptionV3, paddle_to_torch_key

    sd = {paddle_to_torch_key(k): tuple(v.shape) for k, v in FIDInceptionV3().state_dict().items()}
    # Spot checks of pytorch-fid state-dict keys and shapes (torchvision Inception3 layout).
    for key, shape in [("Conv2d_1a_3x3.conv.weight", (32, 3, 3, 3)),
                       ("Conv2d_4a_3x3.bn.running_mean", (192,)),
                       ("Mixed_5b.branch_pool.conv.weight", (32, 192, 1, 1)),
                       ("Mixed_6a.branch3x3.conv.weight", (384, 288, 3, 3)),
                       ("Mixed_6b.branch7x7_2.conv.weight", (128, 128, 1, 7)),
                       ("Mixed_6e.branch7x7dbl_5.conv.weight", (192, 192, 1, 7)),
                       ("Mixed_7a.branch7x7x3_4.conv.weight", (192, 192, 3, 3)),
                       ("Mixed_7b.branch3x3dbl_3b.bn.running_var", (384,)),
                       ("Mixed_7c.branch_pool.conv.weight", (192, 2048, 1, 1))]:
        assert sd[key] == shape, key
    assert sum(k.endswith("conv.weight") for k in sd) == 94
    assert not any(k.endswith(".bias") and ".conv." in k for k in sd)  # convs have no bias
    # torchvision's Inception3 has 27,161,264 parameters; minus AuxLogits (3,326,696) and
    # fc (2,049,000) leaves 21,785,568 = conv weights + BN weight/bias.
    n = sum(int(np.prod(s)) for k, s in sd.items() if not k.endswith(("_mean", "_var")))
    assert n == 21_785_568


def _pool3x3_reference(x, mode):
    """3x3/1 pooling over the valid neighbours only (TF SAME): [C, H, W] float64."""
    c, h, w = x.shape
    out = np.zeros_like(x)
    for i in range(h):
        for j in range(w):
            win = x[:, max(i - 1, 0):i + 2, max(j - 1, 0):j + 2].reshape(c, -1)
            out[:, i, j] = win.mean(1) if mode == "avg" else win.max(1)
    return out


@pytest.mark.parametrize("block,mode", [("A", "avg"), ("C", "avg"), ("E_1", "avg"),
                                        ("E_2", "max")])
def test_pool_branches_are_the_fid_variants(block, mode):
    """With an identity branch_pool conv, the last channels are the pooled input itself."""
    import paddle

    from paddle_coopflow.metrics.inception import InceptionA, InceptionC, InceptionE

    c = 192
    layer = {"A": lambda: InceptionA(c, pool_features=c), "C": lambda: InceptionC(c, 16),
             "E_1": lambda: InceptionE(c, pool="avg"), "E_2": lambda: InceptionE(c, pool="max")}
    net = layer[block]()
    net.eval()
    bp = net.branch_pool
    bp.conv.weight.set_value(np.eye(c, dtype=np.float32)[:, :, None, None])
    bp.bn._variance.set_value(np.full(c, 1.0 - 1e-3, np.float32))  # (var + eps) = 1
    x = np.random.default_rng(12).uniform(0.1, 1.0, (1, c, 5, 6)).astype(np.float32)
    x[0, :, 0, 0] += 5.0  # a corner outlier: the padded zeros / count would change the result
    got = net(paddle.to_tensor(x)).numpy()[0, -c:]
    np.testing.assert_allclose(got, _pool3x3_reference(x[0].astype(np.float64), mode),
                               rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def evaluator():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return FIDEvaluator(random_init=True, batch_size=2)


def test_features_shape_batching_and_input_forms(evaluator):
    rng = np.random.default_rng(8)
    u8 = rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)  # NHWC uint8
    f = evaluator.features(u8)
    assert f.shape == (3, 2048) and f.dtype == np.float64 and np.isfinite(f).all()
    assert np.abs(f[0] - f[1]).max() > 1e-3  # different images, different features
    # the same pixels as float NCHW in [-1, 1] (resize and the affine map commute)
    pm1 = u8.transpose(0, 3, 1, 2).astype(np.float32) / 127.5 - 1.0
    np.testing.assert_allclose(evaluator.features(pm1[:2]), f[:2], rtol=1e-4, atol=1e-5)
    grey = pm1[:1, :1]
    np.testing.assert_allclose(evaluator.features(grey),
                               evaluator.features(np.repeat(grey, 3, axis=1)), atol=1e-6)


def test_missing_weights_is_one_line_error(tmp_path):
    for kwargs in ({}, {"weights": str(tmp_path / "nope.pth")}):
        with pytest.raises(UserError) as e:
            FIDEvaluator(**kwargs)
        msg = str(e.value)
        assert FILE in msg and "github.com/mseitzer/pytorch-fid/releases" in msg
        assert "Eval.inception_weights" in msg and "\n" not in msg


def _fake_fid_state(rng):
    """The pytorch-fid key set (from our names mapped back), random values, + fc and counters."""
    from paddle_coopflow.metrics.inception import FIDInceptionV3, paddle_to_torch_key

    state, key = collections.OrderedDict(), 0
    for k, v in FIDInceptionV3().state_dict().items():
        k, shape = paddle_to_torch_key(k), tuple(v.shape)
        if k.endswith("conv.weight"):
            a = rng.standard_normal(shape) * np.sqrt(2.0 / np.prod(shape[1:]))
        elif k.endswith(("bn.weight", "running_var")):
            a = rng.uniform(0.5, 1.5, shape)
        else:
            a = rng.standard_normal(shape) * 0.1
        state[k] = a.astype(np.float32)
        if k.endswith("running_var"):
            state[k[: -len("running_var")] + "num_batches_tracked"] = np.array(0, np.int64)
    state["fc.weight"] = rng.standard_normal((1008, 2048)).astype(np.float32) * 0.01
    state["fc.bias"] = np.zeros(1008, np.float32)
    tensors = collections.OrderedDict()
    for k, a in state.items():  # one storage per tensor, as torch.save writes a state dict
        tensors[k] = _Tensor(_Storage(str(key), a), 0, a.shape,
                             tuple(int(np.prod(a.shape[i + 1:])) for i in range(a.ndim)))
        key += 1
    return state, tensors


def test_weights_from_pth_and_pdparams_give_identical_features(tmp_path):
    import sys

    from paddle_coopflow.metrics.inception import build_fid_inception
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "tools"))
    from convert_inception import convert

    state, tensors = _fake_fid_state(np.random.default_rng(9))
    pth, pdp = str(tmp_path / "fake_fid.pth"), str(tmp_path / "fake_fid.pdparams")
    write_torch_file(pth, tensors)
    net = build_fid_inception(weights=pth)
    sd = net.state_dict()
    for k in ("Mixed_6b.branch7x7_2.conv.weight", "Mixed_7c.branch_pool.bn.bias"):
        np.testing.assert_array_equal(sd[k].numpy(), state[k])
    np.testing.assert_array_equal(sd["Mixed_7b.branch1x1.bn._variance"].numpy(),
                                  state["Mixed_7b.branch1x1.bn.running_var"])
    assert convert(pth, pdp) == 470
    ev_pth, ev_pdp = FIDEvaluator(weights=pth), FIDEvaluator(weights=pdp)
    x = np.random.default_rng(10).uniform(-1, 1, (2, 3, 32, 32)).astype(np.float32)
    f1, f2 = ev_pth.features(x), ev_pdp.features(x)
    assert np.isfinite(f1).all() and np.array_equal(f1, f2)

    del state["Mixed_5b.branch1x1.conv.weight"], tensors["Mixed_5b.branch1x1.conv.weight"]
    tensors["Mixed_9z.conv.weight"] = tensors.pop("fc.bias")
    write_torch_file(pth, tensors)
    with pytest.raises(UserError, match=r"1 missing .*Mixed_5b.*1 unexpected .*Mixed_9z"):
        build_fid_inception(weights=pth)


def test_stats_from_folder_and_npz_agree(evaluator, tmp_path):
    from PIL import Image

    u8 = np.random.default_rng(11).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    os.makedirs(tmp_path / "imgs" / "sub")
    for i, name in enumerate(["imgs/a.png", "imgs/b.png", "imgs/sub/c.png"]):
        Image.fromarray(u8[i]).save(tmp_path / name)
    np.savez(tmp_path / "u8.npz", images=u8)
    np.savez(tmp_path / "pm1.npz", other=np.zeros(3),
             coopflow=u8.transpose(0, 3, 1, 2).astype(np.float32) / 127.5 - 1.0)
    m_dir, s_dir = stats_from_source(str(tmp_path / "imgs"), evaluator)
    m_u8, s_u8 = stats_from_source(str(tmp_path / "u8.npz"), evaluator)
    np.testing.assert_array_equal(m_dir, m_u8)  # same pixels, same batches
    m_f, s_f = stats_from_source(str(tmp_path / "pm1.npz"), evaluator)
    np.testing.assert_allclose(m_f, m_u8, rtol=1e-4, atol=1e-5)
    want = compute_stats(evaluator.features(u8))  # independent path: np.cov of features
    np.testing.assert_allclose(s_u8, want[1], rtol=1e-6, atol=1e-9)
    with pytest.raises(UserError, match="only 3"):
        stats_from_source(str(tmp_path / "imgs"), evaluator, num=4)


def test_feature_model_replaces_inception(tmp_path):
    """Eval.feature_model: a jit-saved net's features at the images' own size, for every input form."""
    import paddle

    paddle.seed(4)
    net = paddle.nn.Sequential(paddle.nn.Conv2D(3, 5, 3, padding=1), paddle.nn.Tanh(),
                               paddle.nn.AdaptiveAvgPool2D(1), paddle.nn.Flatten())
    net.eval()
    prefix = str(tmp_path / "feat")
    paddle.jit.save(net, prefix, input_spec=[paddle.static.InputSpec([None, 3, None, None], "float32")])
    ev = FIDEvaluator(feature_model=prefix, batch_size=2)
    u8 = np.random.default_rng(13).integers(0, 256, (3, 12, 12, 3), dtype=np.uint8)
    pm1 = u8.transpose(0, 3, 1, 2).astype(np.float32) / 127.5 - 1.0
    want = net(paddle.to_tensor(pm1)).numpy()
    f = ev.features(u8)
    assert f.shape == (3, 5) and f.dtype == np.float64
    np.testing.assert_allclose(f, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ev.features([pm1[:2], pm1[2:]]), want, rtol=1e-5, atol=1e-6)  # batches
    mu, sigma = ev.stats(pm1)
    np.testing.assert_allclose(mu, want.mean(axis=0), rtol=1e-5, atol=1e-6)
    for bad in (str(tmp_path / "missing"),):
        with pytest.raises(UserError, match="Eval.feature_model"):
            FIDEvaluator(feature_model=bad)
    params = tmp_path / "feat.pdiparams"
    params.write_bytes(b"")  # an unusable file: one line, not a Paddle traceback
    with pytest.raises(UserError, match="cannot load feature model"):
        FIDEvaluator(feature_model=prefix)
