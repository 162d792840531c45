"""Flow++ tests: numerics against independent references (numpy float64, finite-difference
Jacobians, scipy root finding), index conventions, parameter count, and API contracts.

All flows here are tiny (8x8 images, width 8, one block, K = 3) so the file runs in seconds.
"""
import math

import numpy as np
import paddle
import pytest
from scipy.optimize import brentq
from scipy.special import expit

from conftest import OFFICIAL_FLOWPP_KEYS as REF_KEYS
from paddle_coopflow.models import FlowPlusPlus
from paddle_coopflow.models.flowpp import data_init
from paddle_coopflow.models.flowpp.act_norm import ActNorm
from paddle_coopflow.models.flowpp.mixture import (mixture_inv_cdf, mixture_log_cdf, mixture_log_pdf,
                                                  mixture_log_pdf_and_cdf)
from paddle_coopflow.models.flowpp.nn import NN, GatedAttn, Rescale
from paddle_coopflow.models.flowpp.splits import (channelwise, channelwise_inverse, checkerboard,
                                                  checkerboard_inverse, squeeze, unsqueeze)
from paddle_coopflow.models.flowpp.weight_norm import WeightNormConv2D, WeightNormLinear


# The official code's inverse: the tolerances below are its; the Newton inverse has tests/test_mixture_inverse.py.
TINY = dict(in_shape=(3, 8, 8), scales=((0, 2), (2, 2)), mid_channels=8, num_blocks=1,
            num_components=3, num_dequant_blocks=1, drop_prob=0.2, inverse_method="bisection")


def _tiny(seed=0, dtype="float32", **overrides):
    """A tiny data-initialised flow in eval mode."""
    paddle.seed(seed)
    flow = FlowPlusPlus(**{**TINY, **overrides})
    x = paddle.rand([6, *flow.in_shape]) * 2 - 1
    assert data_init(flow, x)
    flow.eval()
    if dtype != "float32":
        flow.to(dtype=dtype)
    return flow


def _t(a, dtype="float64"):
    return paddle.to_tensor(np.asarray(a), dtype=dtype)


def _fd_jacobian(fn, x0, h=1e-5):
    """Central-difference Jacobian of a per-sample map, all perturbations in one batch.

    fn: [B, *shape] -> [B, *shape'] (float64, no cross-sample coupling); x0: numpy [*shape].
    Returns [D_out, D_in].
    """
    d = x0.size
    eye = np.eye(d).reshape(d, *x0.shape) * h
    batch = np.concatenate([x0[None] + eye, x0[None] - eye])
    out = fn(_t(batch)).numpy().reshape(2 * d, -1)
    return ((out[:d] - out[d:]) / (2 * h)).T


# --------------------------------------------------------------------------- structure
def test_parameter_count_cifar_config():
    """The CIFAR configuration has exactly 28,784,792 trainable parameters, as the official Flow++ model."""
    flow = FlowPlusPlus()
    n = sum(int(np.prod(p.shape)) for p in flow.parameters() if not p.stop_gradient)
    assert n == 28_784_792
    buffers = {k for k in flow.state_dict() if k.endswith("is_initialized") or k == "bounds"}
    assert len(buffers) == 1 + 13  # bounds + 9 main and 4 dequant ActNorms
    assert not flow.is_initialized


def test_state_dict_mirrors_reference_layout():
    """Same keys as the official PyTorch model; shapes equal except Linear weights (transposed in Paddle)."""
    ref = {}
    with open(REF_KEYS) as f:
        for line in f:
            if line.startswith("#") or line.startswith("key\t"):
                continue
            k, s = line.rstrip("\n").split("\t")
            ref[k] = tuple(int(v) for v in s.strip("()").split(",") if v.strip())
    ours = {k: tuple(v.shape) for k, v in FlowPlusPlus().state_dict().items()}
    assert set(ours) == set(ref)
    for k, shape in ref.items():
        linear = ".attn." in k and (k.endswith("weight_v") or k.endswith("weight_g"))
        assert ours[k] == (shape[::-1] if linear else shape), k


def test_checkerboard_squeeze_conventions_match_numpy_reference():
    """The official code's index conventions (checkerboard, channel-wise, squeeze), built by explicit loops."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 3, 4, 6)).astype("float32")
    n, c, h, w = x.shape
    flat = x.reshape(n, c, h * w)
    first_idx = [i * w + j for i in range(h) for j in range(w) if i % 2 == j % 2]
    second_idx = [i * w + j for i in range(h) for j in range(w) if i % 2 != j % 2]
    ref1 = flat[:, :, first_idx].reshape(n, c, h, w // 2)
    ref2 = flat[:, :, second_idx].reshape(n, c, h, w // 2)
    a, b = checkerboard(paddle.to_tensor(x))
    np.testing.assert_array_equal(a.numpy(), ref1)
    np.testing.assert_array_equal(b.numpy(), ref2)
    np.testing.assert_array_equal(checkerboard_inverse((a, b)).numpy(), x)

    ref_sq = np.zeros((n, 4 * c, h // 2, w // 2), "float32")
    for ch in range(c):
        for di in range(2):
            for dj in range(2):
                ref_sq[:, 4 * ch + 2 * di + dj] = x[:, ch, di::2, dj::2]
    sq = squeeze(paddle.to_tensor(x))
    np.testing.assert_array_equal(sq.numpy(), ref_sq)
    np.testing.assert_array_equal(unsqueeze(sq).numpy(), x)

    y = rng.normal(size=(2, 6, 2, 2)).astype("float32")
    p, q = channelwise(paddle.to_tensor(y))
    np.testing.assert_array_equal(p.numpy(), y[:, :3])
    np.testing.assert_array_equal(channelwise_inverse((p, q)).numpy(), y)
    with pytest.raises(ValueError, match="even width"):
        checkerboard(paddle.zeros([1, 1, 2, 3]))


# --------------------------------------------------------------------------- layers
def test_weight_norm_per_output_unit_and_default_init():
    rng = np.random.default_rng(1)
    lin = WeightNormLinear(5, 7)
    # Default init: g = ||v|| so the effective weight is v, and v ~ U(+-1/sqrt(fan_in)).
    np.testing.assert_allclose(lin.weight.numpy(), lin.weight_v.numpy(), rtol=1e-5, atol=1e-7)
    assert np.abs(lin.weight_v.numpy()).max() <= 1 / math.sqrt(5) and np.abs(lin.bias.numpy()).max() <= 1 / math.sqrt(5)
    g, v = rng.normal(size=(1, 7)), rng.normal(size=(5, 7))
    lin.weight_g.set_value(g.astype("float32"))
    lin.weight_v.set_value(v.astype("float32"))
    # PyTorch layout: W_t [out, in], row o = g_o v_t[o] / ||v_t[o]||.
    v_t = v.T
    w_t = g.reshape(7, 1) * v_t / np.linalg.norm(v_t, axis=1, keepdims=True)
    x = rng.normal(size=(3, 5))
    np.testing.assert_allclose(lin(_t(x, "float32")).numpy(), x @ w_t.T + lin.bias.numpy(), rtol=1e-5, atol=1e-5)

    conv = WeightNormConv2D(4, 6, 3, padding=1)
    fan_in = 4 * 9
    assert np.abs(conv.weight_v.numpy()).max() <= 1 / math.sqrt(fan_in)
    gc, vc = rng.normal(size=(6, 1, 1, 1)), rng.normal(size=(6, 4, 3, 3))
    conv.weight_g.set_value(gc.astype("float32"))
    conv.weight_v.set_value(vc.astype("float32"))
    wc = gc * vc / np.sqrt((vc ** 2).sum(axis=(1, 2, 3), keepdims=True))
    xc = rng.normal(size=(2, 4, 5, 5))
    xp = np.pad(xc, ((0, 0), (0, 0), (1, 1), (1, 1)))
    ref = np.zeros((2, 6, 5, 5))
    for i in range(5):
        for j in range(5):
            ref[:, :, i, j] = np.einsum("nckl,ockl->no", xp[:, :, i:i + 3, j:j + 3], wc)
    ref += conv.bias.numpy().reshape(1, 6, 1, 1)
    np.testing.assert_allclose(conv(_t(xc, "float32")).numpy(), ref, rtol=1e-4, atol=1e-4)

    # Rescale: effective per-channel scale g_c * sign(v_c), initially 1.
    rs = Rescale(3)
    xr = rng.normal(size=(2, 3, 2, 2))
    np.testing.assert_allclose(rs(_t(xr, "float32")).numpy(), xr, rtol=1e-6)
    rs.weight_g.set_value(np.array([2.0, 0.5, 3.0], "float32").reshape(3, 1, 1))
    rs.weight_v.set_value(np.array([-4.0, 0.1, 7.0], "float32").reshape(3, 1, 1))
    np.testing.assert_allclose(rs(_t(xr, "float32")).numpy(),
                               xr * np.array([-2.0, 0.5, 3.0]).reshape(1, 3, 1, 1), rtol=1e-6)


def test_act_norm_data_init_and_flag():
    rng = np.random.default_rng(2)
    an = ActNorm(2)
    halves = [_t(rng.normal(3.0, 5.0, size=(4, 2, 3, 3)), "float32") for _ in range(2)]
    an.eval()
    an(halves, paddle.zeros([4]))
    assert not an.initialized  # eval mode never initialises
    an.train()
    (a, b), sldj = an(halves, paddle.zeros([4]))
    out = np.concatenate([a.numpy(), b.numpy()], axis=1)
    np.testing.assert_allclose(out.mean(axis=(0, 2, 3)), 0.0, atol=1e-5)
    np.testing.assert_allclose(out.var(axis=(0, 2, 3)), 1.0, atol=1e-4)
    h = np.concatenate([t.numpy() for t in halves], axis=1).astype("float64")
    np.testing.assert_allclose(sldj.numpy(), -9 * np.log(h.std(axis=(0, 2, 3)) + 1e-6).sum(), rtol=1e-5)
    assert an.initialized and float(an.state_dict()["is_initialized"].numpy()[0]) == 1.0
    mean_before = an.mean.numpy().copy()
    an([t + 10 for t in halves], paddle.zeros([4]))
    np.testing.assert_array_equal(an.mean.numpy(), mean_before)  # initialises once only


def test_mixture_bisection_matches_brentq():
    rng = np.random.default_rng(3)
    n, k, c, h, w = 2, 4, 2, 3, 3
    logits = rng.normal(size=(n, k, c, h, w))
    means = rng.normal(scale=2.0, size=(n, k, c, h, w))
    log_s = rng.uniform(-2.0, 1.0, size=(n, k, c, h, w))
    y = rng.uniform(1e-3, 1 - 1e-3, size=(n, c, h, w))

    def cdf(x, idx):
        pi = np.exp(logits[idx]) / np.exp(logits[idx]).sum()
        return float((pi * expit((x - means[idx]) / np.exp(log_s[idx]))).sum())

    roots = np.zeros_like(y)
    for idx in np.ndindex(n, c, h, w):
        sl = (idx[0], slice(None)) + idx[1:]
        roots[idx] = brentq(lambda x: cdf(x, sl) - y[idx], -200, 200, xtol=1e-14, rtol=1e-14)

    for dtype, tol in (("float64", 1e-8), ("float32", 2e-4)):
        x = mixture_inv_cdf(_t(y, dtype), _t(logits, dtype), _t(means, dtype), _t(log_s, dtype),
                            method="bisection").numpy()
        err = np.abs(x - roots).max()
        assert err < tol, (dtype, err)

    # log-pdf and log-cdf against the numpy closed forms.
    xq = rng.normal(size=(n, c, h, w))
    log_pi = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    z = (xq[:, None] - means) / np.exp(log_s)
    ref_cdf = np.log((np.exp(log_pi) / (1 + np.exp(-z))).sum(axis=1))
    ref_pdf = np.log((np.exp(log_pi - log_s) * np.exp(-z) / (1 + np.exp(-z)) ** 2).sum(axis=1))
    args = [_t(a) for a in (xq, logits, means, log_s)]
    np.testing.assert_allclose(mixture_log_cdf(*args).numpy(), ref_cdf, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(mixture_log_pdf(*args).numpy(), ref_pdf, rtol=1e-10, atol=1e-12)
    both = mixture_log_pdf_and_cdf(*args)          # the coupling's forward: both from shared log pi, z
    np.testing.assert_allclose(both[0].numpy(), ref_pdf, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(both[1].numpy(), ref_cdf, rtol=1e-10, atol=1e-12)
    # float32 (the training dtype): values and gradients against the float64 computation.
    a32 = [_t(a, "float32") for a in (xq, logits, means, log_s)]
    a64 = [_t(a) for a in (xq, logits, means, log_s)]
    for t in a32 + a64:
        t.stop_gradient = False
    grads = []
    for a in (a32, a64):
        pdf, cdf = mixture_log_pdf_and_cdf(*a)
        (pdf.sum() + 0.5 * cdf.sum()).backward()
        grads.append([t.grad.numpy().astype("float64") for t in a])
    for g32, g64 in zip(*grads):
        assert np.abs(g32 - g64).max() <= 1e-5 * (1.0 + np.abs(g64).max())
    with pytest.raises(ValueError, match="0 < y < 1"):
        mixture_inv_cdf(_t(np.ones((n, c, h, w))), *args[1:])


def test_nn_output_slots_and_log_scale_clamp():
    """Component-major slot layout (j * C + c), tanh+Rescale on a, log s clamped at -7."""
    c, k = 2, 3
    net = NN(c, 8, 1, k, drop_prob=0.0)
    net.eval()
    n_out = c * (2 + 3 * k)
    bias = np.arange(n_out, dtype="float32") * 0.1 - 1.0
    bias[-c:] = -10.0  # last slot is log s of the last component
    net.out_conv.conv.weight_g.set_value(np.zeros((n_out, 1, 1, 1), "float32"))
    net.out_conv.conv.bias.set_value(bias)
    a, b, pi, mu, log_s = [t.numpy() for t in net(paddle.randn([1, c, 4, 4]))]
    slot = bias.reshape(2 + 3 * k, c)  # [slot, channel]
    np.testing.assert_allclose(a[0, :, 0, 0], np.tanh(slot[0]), rtol=1e-6)
    np.testing.assert_allclose(b[0, :, 0, 0], slot[1], rtol=1e-6)
    np.testing.assert_allclose(pi[0, :, :, 0, 0], slot[2:2 + k], rtol=1e-6)
    np.testing.assert_allclose(mu[0, :, :, 0, 0], slot[2 + k:2 + 2 * k], rtol=1e-6)
    np.testing.assert_allclose(log_s[0, :, :, 0, 0], np.maximum(slot[2 + 2 * k:], -7.0), rtol=1e-6)


def test_gated_attn_matches_numpy():
    rng = np.random.default_rng(4)
    d, heads, hh, ww = 8, 4, 2, 3
    attn = GatedAttn(d, heads, drop_prob=0.5)
    attn.eval()
    x = rng.normal(size=(2, hh, ww, d))
    out = attn(_t(x, "float32")).numpy()
    seq = x.reshape(2, hh * ww, d)
    nt = d // 2
    inv_ts = np.exp(-np.arange(nt) * np.log(1e4) / (nt - 1))
    st = np.arange(hh * ww)[:, None] * inv_ts[None]
    seq = seq + np.concatenate([np.sin(st), np.cos(st)], axis=1)[None]
    proj = seq @ attn.in_proj.weight.numpy()
    k, v, q = proj[..., :d], proj[..., d:2 * d], proj[..., 2 * d:]
    split = lambda t: t.reshape(2, -1, heads, d // heads).transpose(0, 2, 1, 3)  # noqa: E731
    q, k, v = split(q) * (d // heads) ** -0.5, split(k), split(v)
    logits = q @ k.transpose(0, 1, 3, 2)
    wts = np.exp(logits - logits.max(-1, keepdims=True))
    wts /= wts.sum(-1, keepdims=True)
    o = (wts @ v).transpose(0, 2, 1, 3).reshape(2, hh, ww, d)
    g = o @ attn.gate.weight.numpy() + attn.gate.bias.numpy()
    ref = g[..., :d] / (1 + np.exp(-g[..., d:]))
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5)
    attn.train()
    assert not np.allclose(attn(_t(x, "float32")).numpy(), out)  # attention dropout active in training


def test_gated_conv_dropout_drops_whole_channels():
    from paddle_coopflow.models.flowpp.nn import GatedConv

    gc = GatedConv(8, drop_prob=0.5)
    gc.train()
    out = gc.drop(paddle.ones([4, 16, 3, 3])).numpy().reshape(64, 9)
    per_channel = np.unique(out, axis=1)
    assert per_channel.shape[1] == 1 and set(np.unique(out)) == {0.0, 2.0}  # whole maps kept (x2) or zeroed


# --------------------------------------------------------------------------- log-determinants
def test_main_flow_logdet_matches_finite_difference_jacobian():
    flow = _tiny(seed=5, dtype="float64")
    rng = np.random.default_rng(5)
    l0 = rng.normal(scale=1.5, size=flow.in_shape)

    def fn(l):
        return flow.flows(l, paddle.zeros([l.shape[0]], dtype="float64"))[0]

    jac = _fd_jacobian(fn, l0)
    _, ref = np.linalg.slogdet(jac)
    z, sldj = flow.flows(_t(l0[None]), paddle.zeros([1], dtype="float64"))
    np.testing.assert_allclose(sldj.numpy()[0], ref, rtol=1e-7, atol=1e-6)
    # The reverse pass accumulates exactly the negative log-det.
    l_back, sldj_rev = flow.flows(z, paddle.zeros([1], dtype="float64"), reverse=True)
    np.testing.assert_allclose(sldj_rev.numpy()[0], -ref, rtol=1e-7, atol=1e-5)
    np.testing.assert_allclose(l_back.numpy()[0], l0, atol=1e-8)


def test_logit_step_logdet_matches_finite_difference():
    flow = FlowPlusPlus(**TINY)
    flow.to(dtype="float64")
    y = np.random.default_rng(6).uniform(0.001, 0.999, size=(1, *flow.in_shape))
    l, ldj = flow.to_logits(_t(y), paddle.zeros([1], dtype="float64"))
    h = 1e-7
    lp = flow.to_logits(_t(y + h), paddle.zeros([1], dtype="float64"))[0].numpy()
    lm = flow.to_logits(_t(y - h), paddle.zeros([1], dtype="float64"))[0].numpy()
    ref = np.log((lp - lm) / (2 * h)).sum()
    np.testing.assert_allclose(ldj.numpy()[0], ref, rtol=1e-8)
    bound = float(np.float32(0.9))  # the buffer holds float32(0.9), as in the reference
    yb = ((2 * y - 1) * bound + 1) / 2
    np.testing.assert_allclose(l.numpy(), np.log(yb / (1 - yb)), rtol=1e-12)


def test_dequant_logdet_matches_finite_difference_jacobian():
    """sldj(dequant) = -log N(eps) + log|du/deps| with u = 256 y - 255 x (x fixed)."""
    flow = _tiny(seed=7, dtype="float64")
    rng = np.random.default_rng(7)
    x01 = rng.integers(0, 256, size=(1, *flow.in_shape)) / 255.0
    eps0 = rng.normal(size=flow.in_shape)
    deq = flow.dequant_flows

    def fn(eps):
        xb = _t(np.repeat(x01, eps.shape[0], axis=0))
        y, _ = deq(xb, paddle.zeros([eps.shape[0]], dtype="float64"), eps=eps)
        return 256.0 * y - 255.0 * xb

    jac = _fd_jacobian(fn, eps0)
    ref = np.linalg.slogdet(jac)[1] + (0.5 * (eps0 ** 2 + np.log(2 * np.pi))).sum()
    u = fn(_t(eps0[None])).numpy()
    assert 0 < u.min() and u.max() < 1
    _, sldj = deq(_t(x01), paddle.zeros([1], dtype="float64"), eps=_t(eps0[None]))
    np.testing.assert_allclose(sldj.numpy()[0], ref, rtol=1e-7, atol=1e-6)


# --------------------------------------------------------------------------- invertibility and API
def test_invertibility_main_flow_float64_exact():
    """In float64 the reverse pass undoes the main flow to bisection precision (eps 1e-10)."""
    flow = _tiny(seed=8, dtype="float64")
    l = _t(np.random.default_rng(8).normal(scale=1.5, size=(4, *flow.in_shape)))
    z, _ = flow.flows(l, paddle.zeros([4], dtype="float64"))
    l_back, _ = flow.flows(z, paddle.zeros([4], dtype="float64"), reverse=True)
    err = float((l_back - l).abs().max())
    print(f"float64 main-flow inverse max |dl|: {err:.1e}")
    assert err <= 1e-7


def test_invertibility_float32_and_full_round_trip():
    """float32, on the dequantized logits of real-range input.

    The l-space error is bounded by float32 rounding of the mixture CDF divided by its pdf:
    where a mixture CDF is flat the forward map contracts and no float32 inverse can do better
    (typical max 2e-5..7e-5, one in ten random tiny nets ~9e-4), so the tight bound is checked
    in z space (forward of the reconstruction) and on the bulk of l.
    """
    flow = _tiny(seed=8, undo_bound=True)
    x = paddle.rand([4, *flow.in_shape]) * 2 - 1
    noise = paddle.randn(x.shape)
    l, _ = flow.preprocess(x, noise)
    z, _ = flow.flows(l, paddle.zeros([4]))
    l_back, _ = flow.flows(z, paddle.zeros([4]), reverse=True)
    err = (l_back - l).abs().numpy()
    z_again, _ = flow.flows(l_back, paddle.zeros([4]))
    err_z = float((z_again - z).abs().max())
    print(f"float32 main-flow inverse: max |dl| {err.max():.1e}, 99th pct {np.percentile(err, 99):.1e}, "
          f"max |dz| after re-forward {err_z:.1e}")
    assert err.max() <= 1e-3 and np.percentile(err, 99) <= 1e-4 and err_z <= 1e-4

    # inverse(forward(x)) returns the dequantized image y = (255 x01 + u)/256 (mapped to [-1,1]) ...
    z, _ = flow(x, noise)
    x_back = flow.inverse(z)
    y, _ = flow.dequant_flows((x + 1) / 2, paddle.zeros([4]), eps=noise)
    err_y = float((x_back - (2 * y - 1)).abs().max())
    # ... which lies within 1/256 of x in [0,1] units (the dequantization noise u/256).
    err01 = float(((x_back - x) / 2).abs().max())
    print(f"inverse(forward(x)): max |x_back - (2y-1)| {err_y:.1e}; max |dx| in [0,1] units {err01 * 256:.3f}/256")
    assert err_y <= 1e-4 and err01 < 1 / 256
    # Reference mode keeps the sample-time 0.9 shrink.
    flow.undo_bound = False
    np.testing.assert_allclose(flow.inverse(z).numpy(), 0.9 * x_back.numpy(), rtol=1e-4, atol=1e-5)


def test_nll_bpd_modes_batch_one_and_state_dict_round_trip():
    flow = _tiny(seed=9)
    x = paddle.rand([1, *flow.in_shape]) * 2 - 1
    noise = paddle.randn(x.shape)
    nll = flow.nll(x, noise)
    z, sldj = flow(x, noise)
    d = int(np.prod(flow.in_shape))
    ref = -(-0.5 * (z.numpy() ** 2 + np.log(2 * np.pi)).sum() - d * np.log(256) + sldj.numpy()[0])
    np.testing.assert_allclose(nll.numpy()[0], ref, rtol=1e-5)
    np.testing.assert_allclose(flow.bits_per_dim(nll).numpy(), nll.numpy() / (d * np.log(2)), rtol=1e-6)
    assert np.isfinite(nll.numpy()).all() and nll.shape == [1]

    flow.train()  # batch 1, dropout on, gradients reach every parameter group
    loss = flow.nll(x).mean()
    loss.backward()
    grads = [p.grad for p in flow.parameters()]
    assert all(g is not None for g in grads) and all(np.isfinite(g.numpy()).all() for g in grads)
    assert flow.sample(1).stop_gradient  # the sampler builds no graph
    flow.eval()
    s = flow.sample(2)
    assert s.shape == [2, *flow.in_shape] and np.isfinite(s.numpy()).all() and float(s.abs().max()) <= 1

    fresh = FlowPlusPlus(**TINY)
    assert not fresh.is_initialized
    fresh.set_state_dict(flow.state_dict())
    fresh.eval()
    assert fresh.is_initialized
    np.testing.assert_allclose(fresh.nll(x, noise).numpy(), flow.nll(x, noise).numpy(), rtol=1e-6)


def test_uniform_dequant_from_config_and_validation():
    from types import SimpleNamespace

    cfg = SimpleNamespace(**{**TINY, "in_shape": [1, 8, 8], "scales": [[0, 1], [1, 1]], "num_dequant_blocks": 0})
    flow = FlowPlusPlus.from_config(cfg)
    assert flow.dequant_flows is None and flow.z_shape == (1, 8, 8)
    x = paddle.rand([2, 1, 8, 8]) * 2 - 1
    u = paddle.rand(x.shape)
    l, sldj = flow.preprocess(x, u)
    y = ((x.numpy() + 1) / 2 * 255 + u.numpy()) / 256
    np.testing.assert_allclose(l.numpy(), np.log((0.05 + 0.9 * y) / (0.95 - 0.9 * y)), rtol=1e-4, atol=1e-4)
    assert data_init(flow, x) and np.isfinite(flow.nll(x).numpy()).all()

    with pytest.raises(ValueError, match="even"):
        FlowPlusPlus(**{**TINY, "in_shape": (3, 8, 7)})
    with pytest.raises(ValueError, match="even channel count"):
        FlowPlusPlus(**{**TINY, "scales": ((1, 2),)})
    with pytest.raises(ValueError, match="squeeze"):
        FlowPlusPlus(**{**TINY, "in_shape": (3, 6, 8), "scales": ((0, 1), (0, 1), (0, 1))})
    with pytest.raises(ValueError, match="inverse_method 'secant'; choose one of .*'newton'"):
        FlowPlusPlus(**{**TINY, "inverse_method": "secant"})
    with pytest.raises(ValueError, match="expects images of shape"):
        flow(paddle.zeros([1, 3, 8, 8]))


def test_invconv_log_det_equals_numpy_slogdet_and_traces_with_a_scalar_shape():
    """log|det W| of InvConv against numpy's slogdet (float64), eagerly and inside a traced program,
    where Paddle declares slogdet's output with the wrong shape (docs/paddle_notes.md)."""
    from paddle_coopflow.models.flowpp.inv_conv import InvConv, log_abs_det

    rng = np.random.RandomState(3)
    for n in (2, 6, 12):
        w = rng.randn(n, n) + 3.0 * np.eye(n)
        want = np.linalg.slogdet(w)[1]
        got = log_abs_det(paddle.to_tensor(w))
        assert got.shape == [] and abs(float(got.item()) - want) <= 1e-12 * max(1.0, abs(want))

    layer = InvConv(3)
    with paddle.no_grad():   # log|det| of order 1, so that rtol bites (the initial I + 1e-3 N has ~1e-3)
        layer.weight.set_value((np.eye(6) + 0.3 * rng.randn(6, 6)).astype("float32"))

    class Wrap(paddle.nn.Layer):
        def __init__(self):
            super().__init__()
            self.inv = layer

        def forward(self, x):
            (a, b), sldj = self.inv((x, x * 2.0), paddle.zeros([x.shape[0]]))
            return sldj

    static = paddle.jit.to_static(Wrap(), input_spec=[paddle.static.InputSpec([None, 3, 4, 4], "float32")],
                                  full_graph=True)
    out = static(paddle.rand([5, 3, 4, 4]))
    want = np.linalg.slogdet(layer.weight.numpy().astype(np.float64))[1] * 16
    assert out.shape == [5]
    np.testing.assert_allclose(out.numpy(), np.full(5, want), rtol=1e-5, atol=1e-6)
