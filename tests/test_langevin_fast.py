"""Fast (static-graph, oneDNN) Langevin step against the dygraph step, T = 30, on a tiny EBM_res.

The reference is a plain loop over `langevin.langevin_step` (the dygraph step, itself checked against
closed forms in test_langevin.py), so these tests stay meaningful whatever langevin_flow dispatches to.
"""
import inspect
import logging

import numpy as np
import paddle
import pytest

from paddle_coopflow import langevin_fast as lf
from paddle_coopflow.langevin import langevin_flow, langevin_step
from paddle_coopflow.models.ebm import EBMRes

T = 30
TOL = 1e-5


def _dygraph_flow(ebm, x, n, s, delta, clip, noise=None, std=0.0):
    for k in range(n):
        x, _, _ = langevin_step(ebm, x, s, delta, clip, None if noise is None else noise[k], std)
    return x


def _fast_flow(step, ebm, x, n, s, delta, clip, noise=None, std=0.0):
    for k in range(n):
        x, _, _ = step(ebm, x, s, delta, clip, None if noise is None else noise[k], std)
    return x


def _maxdiff(a, b):
    return float(np.abs(a.numpy().astype(np.float64) - b.numpy()).max())


@pytest.fixture(autouse=True)
def _mode_off():
    old = lf.get_mode()
    lf.set_mode("off")
    yield
    lf.set_mode(old)


@pytest.fixture(scope="module")
def ebm():
    paddle.seed(3)
    return EBMRes(3, 8, 8)   # 8 px: stem + one block + head


def _x(n, seed):
    return paddle.to_tensor(np.random.RandomState(seed).uniform(-1, 1, (n, 3, 8, 8)).astype("float32"))


def test_equals_dygraph_with_weight_update_and_bookkeeping(ebm):
    """Clips active; an Adam step in dygraph between two calls must be seen by the program."""
    step = lf.make_langevin_step(ebm)
    s, delta, clip = 2.0, 0.02, (-1.0, 1.0)
    x = _x(3, 0)
    x_copy = x.numpy().copy()
    opt = paddle.optimizer.Adam(1e-2, parameters=ebm.parameters())
    (-ebm(_x(4, 9)).mean()).backward()          # leave some parameter grads behind
    grads = [p.grad.numpy().copy() for p in ebm.parameters()]
    flags = [p.stop_gradient for p in ebm.parameters()]
    global_flags = paddle.get_flags(list(lf.CPU_FLAGS))

    a = _fast_flow(step, ebm, x, T, s, delta, clip)
    b = _dygraph_flow(ebm, x, T, s, delta, clip)
    assert _maxdiff(a, b) <= TOL
    # the clips really bind, and the chain really moves
    _, _, drift = langevin_step(ebm, x, s, delta, clip)
    assert float((drift.abs() > delta).astype("float32").mean()) > 0.2
    assert float((a.abs() == 1.0).astype("float32").mean()) > 0.01
    assert _maxdiff(a, x) > 0.1
    # bookkeeping: input untouched, flags restored, grads untouched, one program compiled
    np.testing.assert_array_equal(x.numpy(), x_copy)
    assert [p.stop_gradient for p in ebm.parameters()] == flags
    assert paddle.get_flags(list(lf.CPU_FLAGS)) == global_flags   # only set around the static call
    for p, g in zip(ebm.parameters(), grads):
        np.testing.assert_array_equal(p.grad.numpy(), g)
    assert step.fast.n_compiled == 1 and step.fast.n_fallback_steps == 0

    opt.step()                                   # weights change in dygraph
    opt.clear_grad()
    a2 = _fast_flow(step, ebm, x, T, s, delta, clip)
    b2 = _dygraph_flow(ebm, x, T, s, delta, clip)
    assert _maxdiff(a2, b2) <= TOL
    assert _maxdiff(a2, a) > 1e-3                # the update did change the chain
    assert step.fast.n_compiled == 1             # same program, new weights


def test_no_clips_given_noise_no_grad_and_dynamic_batch(ebm):
    step = lf.make_langevin_step(ebm)
    s, std = 0.3, 0.5
    for n in (3, 5):                             # second batch size: same program
        x = _x(n, n)
        noise = paddle.to_tensor(np.random.RandomState(10 + n).randn(T, n, 3, 8, 8).astype("float32"))
        with paddle.no_grad():
            a = _fast_flow(step, ebm, x, T, s, None, None, noise, std)
        b = _dygraph_flow(ebm, x, T, s, None, None, noise, std)
        assert _maxdiff(a, b) <= TOL
        assert float(a.abs().max()) > 1.0        # no image clip: values leave [-1, 1]
    n_programs = step.fast.n_compiled
    assert n_programs >= 1 and step.fast.n_fallback_steps == 0
    # drawn noise: the same seed gives the same chain on both paths
    x = _x(3, 1)
    paddle.seed(7)
    a = _fast_flow(step, ebm, x, 5, s, None, None, None, std)
    paddle.seed(7)
    b = _dygraph_flow(ebm, x, 5, s, None, None, None, std)
    assert _maxdiff(a, b) <= TOL
    assert step.fast.n_compiled == n_programs


def test_eval_mode_ebm_gets_its_own_program(ebm):
    step = lf.make_langevin_step(ebm)
    before = step.fast.n_compiled
    ebm.eval()
    try:
        x = _x(3, 2)
        a = _fast_flow(step, ebm, x, 5, 2.0, 0.02, (-1.0, 1.0))
        assert not ebm.training                  # the wrapper's training flag never leaks into the EBM
        assert _maxdiff(a, _dygraph_flow(ebm, x, 5, 2.0, 0.02, (-1.0, 1.0))) <= TOL
    finally:
        ebm.train()
    assert step.fast.n_compiled == before + 1
    step(ebm, x, 2.0, 0.02, (-1.0, 1.0))
    assert ebm.training and step.fast.n_compiled == before + 1


def test_returns_f_and_drift_like_the_dygraph_step(ebm):
    step = lf.make_langevin_step(ebm)
    x = _x(3, 4)
    got = step(ebm, x, 2.0, 0.02, (-1.0, 1.0))
    ref = langevin_step(ebm, x, 2.0, 0.02, (-1.0, 1.0))
    np.testing.assert_allclose(got[1].numpy(), ref[1].numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got[2].numpy(), ref[2].numpy(), rtol=1e-5, atol=1e-6)
    assert all(t.stop_gradient for t in got)


def test_fallback_when_compile_fails(ebm, monkeypatch, caplog):
    monkeypatch.setattr(lf, "_logged", set())
    monkeypatch.setattr(lf.FastLangevin, "_compile", lambda self, key: 1 / 0)
    fast = lf.FastLangevin(ebm)
    x = _x(3, 5)
    with caplog.at_level(logging.WARNING, logger="paddle_coopflow.langevin_fast"):
        out = x
        for _ in range(4):
            out = fast.step(out, 2.0, 0.02, (-1.0, 1.0))[0]
    assert _maxdiff(out, _dygraph_flow(ebm, x, 4, 2.0, 0.02, (-1.0, 1.0))) == 0.0
    assert fast.n_fallback_steps == 4 and fast.n_compiled == 0
    lines = [r for r in caplog.records if "dygraph" in r.getMessage()]
    assert len(lines) == 1 and "ZeroDivisionError" in lines[0].getMessage()
    # forced on: the failure is an error that names the switch
    strict = lf.FastLangevin(ebm, strict=True)
    with pytest.raises(RuntimeError, match="Langevin.fast"):
        strict.step(x, 2.0, 0.02, (-1.0, 1.0))


def test_wrong_numbers_on_first_run_fall_back(ebm, monkeypatch):
    real_run = lf.FastLangevin._run

    def bad_run(self, prog, x, shift):
        out = real_run(self, prog, x, shift)
        return (out[0] + 1e-3,) + out[1:]

    monkeypatch.setattr(lf, "_logged", set())
    monkeypatch.setattr(lf.FastLangevin, "_run", bad_run)
    fast = lf.FastLangevin(ebm)
    x = _x(3, 6)
    out = fast.step(x, 2.0, 0.02, (-1.0, 1.0))[0]
    assert _maxdiff(out, langevin_step(ebm, x, 2.0, 0.02, (-1.0, 1.0))[0]) == 0.0
    assert fast.n_compiled == 0 and fast.n_fallback_steps == 1


def test_modes_and_dispatch_rules(ebm):
    with pytest.raises(ValueError, match="Langevin.fast"):
        lf.set_mode("fast")
    assert lf.enabled("off") is False and lf.enabled("on") is True
    assert lf.enabled("auto") == lf.available()
    assert lf.available() == (paddle.get_device().startswith("cpu") and paddle.base.core.is_compiled_with_mkldnn())
    step = lf.make_langevin_step(ebm)
    assert lf.make_langevin_step(ebm).fast is step.fast          # cached on the EBM
    import copy
    assert lf.make_langevin_step(copy.deepcopy(ebm)).fast is not step.fast
    # the differentiable chain goes to the dygraph step
    x = _x(2, 7)
    x.stop_gradient = False
    y, _, _ = step(ebm, x, 0.5, None, None, create_graph=True)
    (gx,) = paddle.grad([y.sum()], [x])
    assert gx is not None and not y.stop_gradient


@pytest.mark.skipif("fast" not in inspect.signature(langevin_flow).parameters,
                    reason="langevin_flow has no `fast` switch yet")
def test_langevin_flow_dispatch(ebm):
    x = _x(3, 8)
    a, st = langevin_flow(ebm, x, T, 2.0, 0.02, (-1.0, 1.0), fast=True, return_stats=True)
    b, sb = langevin_flow(ebm, x, T, 2.0, 0.02, (-1.0, 1.0), fast=False, return_stats=True)
    assert _maxdiff(a, b) <= TOL
    assert abs(st["delta_clip_frac"] - sb["delta_clip_frac"]) < 1e-3 and st["delta_clip_frac"] > 0
