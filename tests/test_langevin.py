"""Langevin flow (eq. 3) against closed forms and finite differences."""
import numpy as np
import paddle
import paddle.nn as nn
import pytest

import ast
import contextlib
import os

from paddle_coopflow import langevin
from paddle_coopflow.langevin import (langevin_flow, langevin_step, langevin_update, noise_decay_factor,
                                      noise_std_for)
from paddle_coopflow.models.ebm import EBMMLP, EBMRes


class Quadratic(nn.Layer):
    """f(x) = -½ Σ a (x - μ)² per sample, so ∇ₓf = -a (x - μ) in closed form."""

    def __init__(self, a, mu):
        super().__init__()
        self.a = self.create_parameter(list(a.shape), default_initializer=nn.initializer.Assign(a))
        self.mu = paddle.to_tensor(mu)

    def forward(self, x):
        return (-0.5 * self.a * (x - self.mu) ** 2).reshape([x.shape[0], -1]).sum(1)


def _numpy_chain(x, a, mu, s, T, delta, lo, hi, noise=None, std=0.0):
    x = x.astype(np.float64).copy()
    for k in range(T):
        d = np.clip(0.5 * s * s * (-a * (x - mu)), -delta, delta)
        x = x + d
        if noise is not None:
            x = x + std * s * noise[k]
        x = np.clip(x, lo, hi)
    return x


@pytest.fixture
def quad():
    rng = np.random.RandomState(0)
    shape = (3, 2, 4, 4)
    a = rng.uniform(0.5, 6.0, size=shape[1:]).astype("float32")
    mu = rng.uniform(-1.6, 1.6, size=shape[1:]).astype("float32")  # |μ| > 1: the image clip binds
    x0 = rng.uniform(-1, 1, size=shape).astype("float32")
    return Quadratic(a, mu), a, mu, x0


def test_step_matches_formula_with_both_clips_and_noise(quad):
    ebm, a, mu, x0 = quad
    T, s, delta, std = 6, 0.5, 0.1, 0.7
    noise = np.random.RandomState(1).randn(T, *x0.shape).astype("float32")
    out = langevin_flow(ebm, paddle.to_tensor(x0), T, s, delta_clip=delta, image_clip=(-1.0, 1.0),
                        noise_std=std, noise=paddle.to_tensor(noise))
    ref = _numpy_chain(x0, a, mu, s, T, delta, -1.0, 1.0, noise, std)
    np.testing.assert_allclose(out.numpy(), ref, atol=2e-6)
    # both clips must really have been active in this configuration
    d0 = 0.5 * s * s * np.abs(a * (x0 - mu))
    assert (d0 > delta).mean() > 0.2 and (np.abs(ref) == 1.0).mean() > 0.05


def test_no_clip_no_noise_is_plain_gradient_ascent(quad):
    ebm, a, mu, x0 = quad
    out = langevin_flow(ebm, paddle.to_tensor(x0), 4, 0.3, delta_clip=None, image_clip=None)
    ref = _numpy_chain(x0, a, mu, 0.3, 4, np.inf, -np.inf, np.inf)
    np.testing.assert_allclose(out.numpy(), ref, atol=2e-6)
    assert np.abs(ref).max() > 1.0  # would have been clipped otherwise


def test_input_untouched_no_grad_and_param_grads_untouched(quad):
    ebm, a, mu, x0 = quad
    x = paddle.to_tensor(x0)
    # give the parameter a known .grad first: Langevin must neither clear nor accumulate into it
    ebm(x).sum().backward()
    g_before = ebm.a.grad.numpy().copy()
    with paddle.no_grad():
        out = langevin_flow(ebm, x, 3, 0.5)
        assert not paddle.is_grad_enabled()
    np.testing.assert_array_equal(x.numpy(), x0)
    np.testing.assert_array_equal(ebm.a.grad.numpy(), g_before)
    assert out.stop_gradient
    assert not np.allclose(out.numpy(), x0)
    x2 = paddle.to_tensor(x0)
    out0 = langevin_flow(ebm, x2, 0, 0.5)
    np.testing.assert_array_equal(out0.numpy(), x0)


def test_noise_shape_is_validated(quad):
    ebm, _, _, x0 = quad
    with pytest.raises(ValueError, match="expected"):
        langevin_flow(ebm, paddle.to_tensor(x0), 3, 0.1, noise_std=1.0, noise=paddle.zeros([2] + list(x0.shape)))


def test_drawn_noise_follows_paddle_seed(quad):
    ebm, _, _, x0 = quad
    runs = []
    for _ in range(2):
        paddle.seed(7)
        runs.append(langevin_flow(ebm, paddle.to_tensor(x0), 3, 0.2, noise_std=1.0).numpy())
    np.testing.assert_array_equal(runs[0], runs[1])
    assert not np.allclose(runs[0], langevin_flow(ebm, paddle.to_tensor(x0), 3, 0.2).numpy())


def test_stats(quad):
    ebm, a, mu, x0 = quad
    out, st = langevin_flow(ebm, paddle.to_tensor(x0), 5, 0.5, return_stats=True)
    ref = _numpy_chain(x0, a, mu, 0.5, 5, 0.1, -1.0, 1.0)
    sq = (ref - x0) ** 2
    assert st["mse"] == pytest.approx(sq.mean(), rel=1e-4)
    assert st["sq_change"] == pytest.approx(sq.mean(0).sum(), rel=1e-4)
    f0 = (-0.5 * a * (x0 - mu) ** 2).reshape(3, -1).sum(1).mean()
    assert st["f_start"] == pytest.approx(f0, rel=1e-5)
    assert 0.0 < st["delta_clip_frac"] <= 1.0


def _directional_check(ebm, x0, T, s, rng):
    """⟨∇_{x0} L, v⟩ from the differentiable chain vs a central finite difference (float64)."""
    w = paddle.to_tensor(rng.randn(*x0.shape))
    x = paddle.to_tensor(x0)
    x.stop_gradient = False
    xt = langevin_flow(ebm, x, T, s, delta_clip=None, image_clip=None, differentiable=True)
    assert not xt.stop_gradient
    g = paddle.grad([(xt * w).sum()], [x])[0].numpy()
    v = rng.randn(*x0.shape)
    eps = 1e-5

    def L(xx):
        return float((langevin_flow(ebm, paddle.to_tensor(xx), T, s, None, None) * w).sum().item())
    fd = (L(x0 + eps * v) - L(x0 - eps * v)) / (2 * eps)
    an = float((g * v).sum())
    assert an == pytest.approx(fd, rel=1e-6, abs=1e-8)
    # and the chain really is not the identity map (second-order terms matter)
    assert abs(an - float((w.numpy() * v).sum())) > 1e-3 * abs(an)


def test_differentiable_mode_matches_finite_differences_mlp():
    paddle.seed(3)
    ebm = EBMMLP(in_dim=5, hidden=16, depth=2)
    ebm.to(dtype="float64")
    rng = np.random.RandomState(2)
    _directional_check(ebm, rng.randn(4, 5), T=4, s=1.0, rng=rng)


def test_differentiable_mode_matches_finite_differences_conv():
    paddle.seed(4)
    ebm = EBMRes(3, 2, 32)
    ebm.to(dtype="float64")
    rng = np.random.RandomState(5)
    _directional_check(ebm, rng.uniform(-1, 1, size=(2, 3, 32, 32)), T=2, s=10.0, rng=rng)


def test_differentiable_mode_under_no_grad_still_differentiates_in_x():
    ebm = EBMMLP(3, 8, 1)
    x = paddle.randn([2, 3])
    with paddle.no_grad():
        y = langevin_flow(ebm, x, 2, 0.5, None, None, differentiable=True)
    assert not y.stop_gradient


def test_noise_decay_and_modes():
    assert noise_decay_factor(0, 30) == 1.0
    assert noise_decay_factor(15, 30) == pytest.approx(0.5 ** 20)
    assert noise_decay_factor(3, 15) == pytest.approx(0.8 ** 20)
    assert noise_decay_factor(30, 30) == 0.0
    assert noise_decay_factor(45, 30) == 0.0  # (1 - 1.5)^20 = 0.5^20 would be the sign trap
    assert noise_decay_factor(100, 15) == 0.0
    assert noise_std_for("none", 0, 30, 1.0) == 0.0
    assert noise_std_for("constant", 50, 30, 0.3) == 0.3
    assert noise_std_for("decay", 15, 30, 2.0) == pytest.approx(2.0 * 0.5 ** 20)
    with pytest.raises(ValueError, match="noise mode"):
        noise_std_for("linear", 0, 30, 1.0)


def test_single_step_function_is_the_building_block(quad):
    ebm, a, mu, x0 = quad
    x1, f, drift = langevin_step(ebm, paddle.to_tensor(x0), 0.5)
    np.testing.assert_allclose(x1.numpy(), _numpy_chain(x0, a, mu, 0.5, 1, 0.1, -1, 1), atol=2e-6)
    np.testing.assert_allclose(drift.numpy(), 0.125 * (-a * (x0 - mu)), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(f.numpy(), (-0.5 * a * (x0 - mu) ** 2).reshape(3, -1).sum(1), rtol=1e-5)


def test_update_is_eq3_with_each_clip_and_the_noise_term():
    """langevin_update alone, against the formula in float64: δ clips the gradient term only, the image
    clip comes after the noise."""
    rng = np.random.RandomState(4)
    x, g, sh = (rng.uniform(-1.5, 1.5, (2, 3, 4)).astype("float32") for _ in range(3))
    t = paddle.to_tensor
    np.testing.assert_allclose(langevin_update(t(x), t(g), None, None).numpy(), x + g, rtol=1e-6)
    np.testing.assert_allclose(langevin_update(t(x), t(g), 0.1, None).numpy(), x + np.clip(g, -0.1, 0.1), rtol=1e-6)
    want = np.clip(x + np.clip(g, -0.1, 0.1) + sh, -1, 1)
    np.testing.assert_allclose(langevin_update(t(x), t(g), 0.1, (-1.0, 1.0), t(sh)).numpy(), want, rtol=1e-6)
    assert (np.abs(want) == 1).mean() > 0.1 and (np.abs(g) > 0.1).mean() > 0.5   # both clips bind here


def test_flow_runs_a_given_step_function_inside_its_chain_scope(quad):
    """step= replaces the dygraph step for every step; a step with chain() has the loop run inside it."""
    ebm, a, mu, x0 = quad
    calls, scopes = [], []

    class Step:
        @contextlib.contextmanager
        def chain(self):
            scopes.append("open")
            yield
            scopes.append("closed")

        def __call__(self, ebm_, x, *args, **kw):
            calls.append(len(scopes))
            return langevin_step(ebm_, x, *args, **kw)

    out = langevin_flow(ebm, paddle.to_tensor(x0), 4, 0.5, step=Step())
    assert calls == [1, 1, 1, 1] and scopes == ["open", "closed"]
    np.testing.assert_array_equal(out.numpy(), langevin_flow(ebm, paddle.to_tensor(x0), 4, 0.5).numpy())
    plain = []   # a plain function works too (no chain scope)
    langevin_flow(ebm, paddle.to_tensor(x0), 2, 0.5, step=lambda *a, **k: plain.append(1) or langevin_step(*a, **k))
    assert plain == [1, 1]


def test_module_depends_on_paddle_alone():
    """langevin.py imports nothing from the package: it must stay the small pure core."""
    tree = ast.parse(open(os.path.abspath(langevin.__file__)).read())
    mods = {n.module if isinstance(n, ast.ImportFrom) else a.name
            for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))
            for a in (n.names if isinstance(n, ast.Import) else [None])}
    relative = [n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level > 0]
    assert not relative and all(m.split(".")[0] in {"__future__", "contextlib", "typing", "paddle"} for m in mods), mods
