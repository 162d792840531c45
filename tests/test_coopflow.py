"""Algorithm 1 (CoopFlow.train_step), the baselines, and the optimizer / LR / clipping helpers."""
import math

import numpy as np
import paddle
import paddle.nn as nn
import pytest

from paddle_coopflow.config import Config
from paddle_coopflow.coopflow import CoopFlow, CoopFlowOptions
from paddle_coopflow.models.ebm import EBMRes, swish
from paddle_coopflow.optim import (WarmupLambda, build_ebm_optimizer, build_flow_optimizer,
                                   clip_grad_norm, clip_grad_norm_groups)

SHAPE = (3, 32, 32)


class AffineFlow(nn.Layer):
    """Stand-in flow x = exp(weight_g)·z + bias (element-wise), with exact NLL in nats.

    The log-scale is named `weight_g` so the flow optimizer's WN-gain group selection sees it.
    """

    def __init__(self, shape=SHAPE):
        super().__init__()
        self.z_shape = tuple(shape)
        self.weight_g = self.create_parameter(list(shape), default_initializer=nn.initializer.Constant(-1.0))
        self.bias = self.create_parameter(list(shape), default_initializer=nn.initializer.Constant(0.1))
        self.inverse_modes = []
        self.poison = False

    def inverse(self, z):
        self.inverse_modes.append(self.training)
        return paddle.exp(self.weight_g) * z + self.bias

    def nll(self, x):
        z = (x - self.bias) * paddle.exp(-self.weight_g)
        d = float(np.prod(self.z_shape))
        logp = (-0.5 * z ** 2).reshape([0, -1]).sum(1) - 0.5 * d * math.log(2 * math.pi) - self.weight_g.sum()
        out = -logp
        return out * float("nan") if self.poison else out


def _params(*nets):
    return [p.numpy().copy() for n in nets for p in n.parameters()]


def _changed(before, net):
    return any(not np.array_equal(b, p.numpy()) for b, p in zip(before, net.parameters()))


def _opts(**keys):
    """Options from the config defaults with `keys` (config key names) changed: the learner's only source."""
    cfg = Config()
    for section in ("Train", "Langevin", "Optimizer"):
        for k in list(keys):
            if hasattr(getattr(cfg, section), k):
                setattr(getattr(cfg, section), k, keys.pop(k))
    assert not keys, f"not config keys: {sorted(keys)}"
    return CoopFlowOptions.from_config(cfg)


def _make(opts=None, warmup=0, B=4, lr=1e-3, seed=0):
    paddle.seed(seed)
    flow, ebm = AffineFlow(), EBMRes(3, 4, 32)
    fo = build_flow_optimizer(flow, lr=lr, warmup_iters=warmup, batch_size=B)
    eo = build_ebm_optimizer(ebm, lr=lr, warmup_iters=warmup, batch_size=B)
    o = opts or _opts(n_steps=3, step_size=0.5)
    return CoopFlow(flow, ebm, fo, eo, o), flow, ebm


def _data(B=4, seed=1):
    return paddle.to_tensor(np.random.RandomState(seed).uniform(-1, 1, size=(B,) + SHAPE).astype("float32"))


def test_one_iteration_changes_both_nets_and_reports_stats():
    cf, flow, ebm = _make()
    fb, eb = _params(flow), _params(ebm)
    st = cf.train_step(_data(), epoch=0, it=0)
    assert _changed(fb, flow) and _changed(eb, ebm)
    assert st["ebm_stepped"] and st["flow_stepped"] and not st["nonfinite"]
    assert flow.inverse_modes == [True]  # proposals drawn with the flow in train mode (official)
    for k in ("ebm_loss", "f_data", "f_revised", "f_proposal", "flow_nll", "flow_bpd", "flow_grad_norm",
              "ebm_grad_norm", "langevin_mse", "lr_flow", "lr_ebm"):
        assert math.isfinite(st[k]), k
    assert st["ebm_loss"] == pytest.approx(st["f_revised"] - st["f_data"], rel=1e-5, abs=1e-6)
    assert st["flow_bpd"] == pytest.approx(st["flow_nll"] / (3072 * math.log(2)))
    assert st["samples_seen"] == 4
    assert all(p.grad is None for p in list(flow.parameters()) + list(ebm.parameters()))


def test_updates_have_the_right_sign():
    """The EBM step raises mean f(data) − mean f(x̃); the flow step lowers its NLL on x̃."""
    cf, flow, ebm = _make(lr=1e-3)
    x = _data()
    paddle.seed(11)
    x_rev, _ = cf.revise(cf.propose(4))
    with paddle.no_grad():
        f_data, f_rev = float(ebm(x).mean().item()), float(ebm(x_rev).mean().item())
        gap0 = f_data - f_rev
        nll0 = float(flow.nll(x_rev).mean().item())
    paddle.seed(11)  # same z, hence the same x̂ and x̃ inside train_step
    st = cf.train_step(x, epoch=0, it=0)
    # the update's energies come from other kernels (the oneDNN program): equal to float32 rounding of the
    # energies, not of their (much smaller) difference
    assert st["ebm_loss"] == pytest.approx(-gap0, abs=1e-5 * (abs(f_data) + abs(f_rev)))
    with paddle.no_grad():
        gap1 = float((ebm(x).mean() - ebm(x_rev).mean()).item())
        nll1 = float(flow.nll(x_rev).mean().item())
    assert gap1 > gap0
    assert nll1 < nll0


def test_frozen_flow_does_not_change_but_nll_is_logged():
    cf, flow, ebm = _make()
    fb, eb = _params(flow), _params(ebm)
    st = cf.train_step(_data(), epoch=0, it=0, frozen_flow=True)
    assert not _changed(fb, flow) and _changed(eb, ebm)
    assert math.isfinite(st["flow_nll"]) and not st["flow_stepped"] and not st["flow_skipped"]


def test_n_update_flow_gates_by_iteration():
    cf, flow, _ = _make(_opts(n_steps=2, step_size=0.5, n_update_flow=2))
    fb = _params(flow)
    assert not cf.train_step(_data(), 0, it=1)["flow_stepped"]
    assert not _changed(fb, flow)
    assert cf.train_step(_data(), 0, it=2)["flow_stepped"]


@pytest.mark.parametrize("waits,flow_moves", [(True, False), (False, True)])
def test_skipped_ebm_step(waits, flow_moves):
    cf, flow, ebm = _make(_opts(n_steps=2, step_size=0.5, ebm_skip_norm=1e-12, flow_waits_for_ebm=waits))
    fb, eb = _params(flow), _params(ebm)
    st = cf.train_step(_data(), epoch=1, it=0)
    assert st["ebm_skipped"] and not _changed(eb, ebm)
    assert _changed(fb, flow) == flow_moves
    assert cf.samples_seen == 4  # samples are counted even on skipped steps (official)


def test_first_epoch_never_skips_ebm_when_asked():
    cf, _, ebm = _make(_opts(n_steps=2, step_size=0.5, ebm_skip_norm=1e-12,
                                       ebm_skip_in_first_epoch=False))
    eb = _params(ebm)
    assert cf.train_step(_data(), epoch=0, it=0)["ebm_stepped"] and _changed(eb, ebm)


def test_flow_skip_threshold():
    cf, flow, ebm = _make(_opts(n_steps=2, step_size=0.5, flow_skip_norm=1e-12))
    fb, eb = _params(flow), _params(ebm)
    st = cf.train_step(_data(), 0, 0)
    assert st["flow_skipped"] and not _changed(fb, flow) and _changed(eb, ebm)


def test_nonfinite_data_skips_both_steps():
    cf, flow, ebm = _make()
    fb, eb = _params(flow), _params(ebm)
    x = _data()
    x = paddle.where(paddle.arange(x.numel()).reshape(x.shape) == 5, paddle.full_like(x, float("nan")), x)
    st = cf.train_step(x, 0, 0)
    assert st["nonfinite"] and not st["ebm_stepped"] and not st["flow_stepped"]
    assert not _changed(fb, flow) and not _changed(eb, ebm)
    assert not cf.train_step(_data(), 0, 1)["nonfinite"]  # recovers next iteration


@pytest.mark.parametrize("waits", [True, False])
def test_nonfinite_flow_nll_blocks_only_the_flow(waits):
    """Each net is vetoed by its own values: a NaN flow NLL skips the flow step, never the EBM step."""
    cf, flow, ebm = _make(_opts(n_steps=3, step_size=0.5, flow_waits_for_ebm=waits))
    fb, eb = _params(flow), _params(ebm)
    flow.poison = True
    st = cf.train_step(_data(), 0, 0)
    assert st["nonfinite"] and st["ebm_stepped"] and not st["flow_stepped"] and st["flow_skipped"]
    assert not _changed(fb, flow) and _changed(eb, ebm)


def test_eq2_and_eq6_losses_against_numpy():
    """ebm_ml_loss = mean f(x̃) − mean f(x) (eq. 2); flow_ml_loss = mean NLL (eq. 6)."""
    from paddle_coopflow.coopflow import ebm_ml_loss, flow_ml_loss

    w = paddle.to_tensor(np.array([0.5, -2.0], np.float32))
    energy = lambda x: (x * w).sum(1)  # noqa: E731
    x = paddle.to_tensor(np.array([[1, 2], [3, 4]], np.float32))
    xr = paddle.to_tensor(np.array([[0, 1], [1, 0], [2, 2]], np.float32))
    loss, fd, fr = ebm_ml_loss(energy, x, xr)
    f = lambda a: (a @ np.array([0.5, -2.0])).mean()  # noqa: E731
    assert float(loss.item()) == pytest.approx(f(xr.numpy()) - f(x.numpy()))
    assert fd.shape == [2] and fr.shape == [3]
    assert float(fd.mean().item()) == pytest.approx(f(x.numpy())) and float(fr.mean().item()) == pytest.approx(f(xr.numpy()))
    assert float(flow_ml_loss(lambda a: (a ** 2).sum(1), xr).item()) == pytest.approx(10 / 3)  # (1 + 1 + 8) / 3


def test_energy_l2_guard_loss_and_gradient_against_numpy():
    """α·(mean f(x)² + mean f(x̃)²) and its gradient for a linear f(x) = w·x, in float64 NumPy by hand."""
    from paddle_coopflow.coopflow import ebm_energy_l2_penalty, ebm_ml_loss

    rng = np.random.default_rng(3)
    xd, xr, w0 = rng.normal(size=(4, 3)), rng.normal(size=(5, 3)), rng.normal(size=3)
    alpha = 0.7
    w = paddle.to_tensor(w0.astype(np.float32), stop_gradient=False)
    energy = lambda a: (a * w).sum(1)  # noqa: E731
    ml, fd, fr = ebm_ml_loss(energy, paddle.to_tensor(xd.astype(np.float32)), paddle.to_tensor(xr.astype(np.float32)))
    pen = ebm_energy_l2_penalty(fd, fr, alpha)
    (ml + pen).backward()
    ed, er = xd @ w0, xr @ w0
    assert float(pen.item()) == pytest.approx(alpha * ((ed ** 2).mean() + (er ** 2).mean()), rel=1e-5)
    # d/dw [mean(w·x̃) − mean(w·x) + α(mean (w·x)² + mean (w·x̃)²)]
    grad = xr.mean(0) - xd.mean(0) + alpha * (2 * (ed[:, None] * xd).mean(0) + 2 * (er[:, None] * xr).mean(0))
    np.testing.assert_allclose(w.grad.numpy(), grad, rtol=1e-5, atol=1e-6)


def test_energy_l2_guard_in_train_step_pulls_energies_to_zero():
    """With the guard on, the logged penalty is α·(f_data² + f_revised²) of a constant-shifted EBM, and steps shrink it."""
    cf, _, ebm = _make(_opts(n_steps=2, step_size=0.5, ebm_energy_l2=1.0))
    bias = dict(ebm.named_parameters())["f.5.bias"]  # f sums the last conv's 100 channels: f shifts by +5
    bias.set_value(bias + 0.05)
    x = _data()
    first = cf.train_step(x, 0, 0)
    assert first["ebm_energy_l2"] == pytest.approx(first["f_data"] ** 2 + first["f_revised"] ** 2, rel=0.2)
    last = [cf.train_step(x, 0, i)["ebm_energy_l2"] for i in range(1, 30)][-1]
    assert last < 0.5 * first["ebm_energy_l2"]
    assert "ebm_energy_l2" not in _make()[0].train_step(x, 0, 0)  # off by default: nothing added, nothing logged


def test_warmup_lr_sequence_and_first_steps_at_zero():
    B, W, lr = 2, 4, 1e-3
    cf, _, ebm = _make(warmup=W, B=B, lr=lr)
    eb = _params(ebm)
    lrs = []
    for it in range(7):
        st = cf.train_step(_data(B), 0, it)
        lrs.append(st["lr_ebm"])
        if it == 1:
            assert not _changed(eb, ebm)  # two official lr-0 steps: nothing moves
    # step k uses λ((k-1)·B) (λ(0) for k = 0), λ(g) = min(1, g / (W·B))
    np.testing.assert_allclose(lrs, [0, 0, lr / 4, lr / 2, 3 * lr / 4, lr, lr], rtol=1e-6, atol=1e-12)
    lam = WarmupLambda(W, B, first_step_zero=False)
    assert [lam(g) for g in (0, 2, 4, 6, 100)] == [0.25, 0.5, 0.75, 1.0, 1.0]
    assert WarmupLambda(0, B)(0) == 1.0


def test_flow_optimizer_groups_and_coupled_l2_against_hand_adam():
    paddle.seed(0)
    flow = AffineFlow((2, 1, 2))
    fo = build_flow_optimizer(flow, lr=0.1, gain_l2=0.5, warmup_iters=0)
    assert fo.group_names == ["weight_norm_gains", "other_params"]
    assert [p.name for p in fo.groups[0]] == [flow.weight_g.name]
    c = np.array([1.0, -2.0, 0.5, 3.0]).reshape(2, 1, 2)
    p_g, p_b = flow.weight_g.numpy().astype(np.float64), flow.bias.numpy().astype(np.float64)
    st = {k: np.zeros_like(c) for k in ("mg", "vg", "mb", "vb")}
    for t in range(1, 4):
        ct = paddle.to_tensor((c * t).astype("float32"))
        ((flow.weight_g * ct).sum() + (flow.bias * ct).sum()).backward()
        fo.step(0)
        fo.clear_grad()
        for name, p, wd in (("g", p_g, 0.5), ("b", p_b, 0.0)):
            g = c * t + wd * p  # coupled L2: decay enters the gradient, hence the moments
            st["m" + name] = 0.9 * st["m" + name] + 0.1 * g
            st["v" + name] = 0.999 * st["v" + name] + 0.001 * g * g
            p -= 0.1 * (st["m" + name] / (1 - 0.9 ** t)) / (np.sqrt(st["v" + name] / (1 - 0.999 ** t)) + 1e-8)
    np.testing.assert_allclose(flow.weight_g.numpy(), p_g, atol=2e-6)
    np.testing.assert_allclose(flow.bias.numpy(), p_b, atol=2e-6)
    # decoupled (AdamW-style) decay would land elsewhere: the test can tell them apart
    assert np.abs(p_g - (-1.0 - 3 * 0.1 * np.sign(c) - 0.1 * 0.5 * 3 * (-1.0))).max() > 1e-2


def test_ebm_optimizer_betas():
    ebm = EBMRes(3, 2, 32)
    opt = build_ebm_optimizer(ebm).optimizer
    assert (opt._beta1, opt._beta2, opt._epsilon) == (0.5, 0.5, 1e-8)


def test_clip_helpers_against_numpy():
    a = paddle.create_parameter([3], "float32")
    b = paddle.create_parameter([2], "float32")
    ga, gb = np.array([3.0, 0.0, 4.0]), np.array([12.0, 0.0])

    def set_grads():
        a.clear_gradient(False)
        b.clear_gradient(False)
        ta, tb = paddle.to_tensor(ga.astype("float32")), paddle.to_tensor(gb.astype("float32"))
        ((a * ta).sum() + (b * tb).sum()).backward()

    set_grads()
    assert clip_grad_norm([a, b], None) == pytest.approx(13.0)
    np.testing.assert_allclose(a.grad.numpy(), ga)  # measuring only
    assert clip_grad_norm([a, b], 1.0) == pytest.approx(13.0)
    np.testing.assert_allclose(a.grad.numpy(), ga / (13 + 1e-6), rtol=1e-6)
    set_grads()
    total, per = clip_grad_norm_groups([[a], [b]], 1.0, "per_group")
    assert total == pytest.approx(13.0) and per == pytest.approx([5.0, 12.0])
    np.testing.assert_allclose(a.grad.numpy(), ga / 5, rtol=1e-5)
    np.testing.assert_allclose(b.grad.numpy(), gb / 12, rtol=1e-5)
    set_grads()
    total, _ = clip_grad_norm_groups([[a], [b]], 100.0, "global")
    np.testing.assert_allclose(b.grad.numpy(), gb)  # under the bound: untouched
    with pytest.raises(ValueError, match="clip mode"):
        clip_grad_norm_groups([[a]], 1.0, "layerwise")


def test_per_group_mode_reports_group_norms():
    cf, _, _ = _make(_opts(n_steps=2, step_size=0.5, flow_clip_mode="per_group", flow_waits_for_ebm=False))
    st = cf.train_step(_data(), 0, 0)
    n, u = st["flow_grad_norm/weight_norm_gains"], st["flow_grad_norm/other_params"]
    assert st["flow_grad_norm"] == pytest.approx(math.hypot(n, u), rel=1e-6)


def test_baselines():
    paddle.seed(0)
    ebm = EBMRes(3, 4, 32)
    cf = CoopFlow(None, ebm, None, build_ebm_optimizer(ebm, warmup_iters=0),
                  _opts(mode="langevin_only", n_steps=2, step_size=0.5))
    eb = _params(ebm)
    st = cf.train_step(_data(), 0, 0)
    assert _changed(eb, ebm) and math.isnan(st["flow_nll"]) and st["ebm_stepped"]
    x_prop, x_rev = cf.sample(3, shape=SHAPE)
    assert x_prop.shape == [3, 3, 32, 32] and float(x_prop.abs().max().item()) <= 1.0

    flow = AffineFlow()
    cf = CoopFlow(flow, None, build_flow_optimizer(flow, warmup_iters=0), None, _opts(mode="flow_only"))
    fb = _params(flow)
    st = cf.train_step(_data(), 0, 0)
    assert _changed(fb, flow) and st["flow_stepped"] and math.isfinite(st["flow_bpd"])


def test_sample_uses_eval_mode_and_restores_it():
    cf, flow, ebm = _make()
    flow.train()
    paddle.seed(5)
    x_prop, x_rev = cf.sample(2)
    assert flow.inverse_modes == [False] and flow.training and ebm.training
    assert x_prop.shape == x_rev.shape == [2, 3, 32, 32]
    assert float(x_rev.abs().max().item()) <= 1.0
    z = paddle.randn([2, 3, 32, 32])
    a, _ = cf.sample(2, z=z)
    np.testing.assert_allclose(a.numpy(), (np.exp(-1.0) * z.numpy() + 0.1), rtol=1e-5, atol=1e-6)


def test_options_are_the_config_keys():
    """Every option is read from the config key of the same name; the learner refuses a mode it lacks nets for."""
    cfg = Config()
    cfg.Langevin.image_clip, cfg.Langevin.noise_decay_K, cfg.Train.mode = [-2, 3], 7.0, "langevin_only"
    opts = CoopFlowOptions.from_config(cfg)
    assert opts.image_clip == (-2.0, 3.0) and opts.noise_decay_K == 7.0 and opts.mode == "langevin_only"
    assert CoopFlowOptions.from_config(cfg, "flow_only").mode == "flow_only"
    with pytest.raises(ValueError, match="needs an EBM"):
        f = AffineFlow()
        CoopFlow(f, None, build_flow_optimizer(f), None, _opts())


class TinyConvEBM(nn.Layer):
    def __init__(self):
        super().__init__()
        self.c1, self.c2 = nn.Conv2D(3, 4, 3, padding=1), nn.Conv2D(4, 1, 8)

    def forward(self, x):
        return self.c2(swish(self.c1(x))).reshape([0, -1]).sum(1)


def test_one_iteration_with_tiny_flowpp():
    """Algorithm 1 with the real Flow++ (tiny widths): both nets step and change."""
    from paddle_coopflow.models.flowpp import FlowPlusPlus

    paddle.seed(0)
    flow = FlowPlusPlus(in_shape=(3, 8, 8), mid_channels=8, num_blocks=1, num_components=2, num_dequant_blocks=1)
    ebm = TinyConvEBM()
    cf = CoopFlow(flow, ebm, build_flow_optimizer(flow, warmup_iters=0), build_ebm_optimizer(ebm, warmup_iters=0),
                  _opts(n_steps=2, step_size=0.5))
    x = paddle.rand([2, 3, 8, 8]) * 2 - 1
    assert not flow.is_initialized
    flow.data_init(x)  # ActNorm data-dependent init
    assert flow.is_initialized
    assert len(cf.flow_optim.groups) == 2 and len(cf.flow_optim.groups[0]) > 0  # WN gains found by name
    fb, eb = _params(flow), _params(ebm)
    st = cf.train_step(x, 0, 0)
    assert not st["nonfinite"] and st["flow_stepped"] and st["ebm_stepped"]
    assert _changed(fb, flow) and _changed(eb, ebm)
    assert math.isfinite(st["flow_bpd"]) and st["flow_bpd"] > 0
