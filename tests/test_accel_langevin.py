"""Static-graph (oneDNN) Langevin step (paddle_coopflow/accel) against the dygraph step, T = 30, on a tiny EBM_res.

The reference is a plain loop over `langevin.langevin_step` (the dygraph step, itself checked against
closed forms in test_langevin.py). Both program variants are forced in turn (strict: a failure raises
instead of falling back), and every comparison asserts that the static program really ran.
"""
import copy
import logging

import numpy as np
import paddle
import pytest

from paddle_coopflow.accel import make_langevin_step
from paddle_coopflow.accel.langevin_step import CPU_FLAGS, StaticLangevinStep
from paddle_coopflow.langevin import langevin_flow, langevin_step
from paddle_coopflow.models.ebm import EBMPlain, EBMRes
from paddle_coopflow.utils.env import onednn_cpu

T = 30
TOL = 1e-5
CLIPS = (2.0, 0.02, (-1.0, 1.0))   # s, δ, image clip: about half the drift is clipped at this init


def _dygraph_flow(ebm, x, n, s, delta, clip, noise=None, std=0.0):
    for k in range(n):
        x, _, _ = langevin_step(ebm, x, s, delta, clip, None if noise is None else noise[k], std)
    return x


def _fast_flow(fast, x, n, s, delta, clip, noise=None, std=0.0):
    for k in range(n):
        x, _, _ = fast(fast.ebm, x, s, delta, clip, None if noise is None else noise[k], std)
    return x


def _maxdiff(a, b):
    return float(np.abs(a.numpy().astype(np.float64) - b.numpy()).max())


def _x(n, seed, size=8):
    return paddle.to_tensor(np.random.RandomState(seed).uniform(-1, 1, (n, 3, size, size)).astype("float32"))


@pytest.fixture(scope="module")
def ebm():
    paddle.seed(3)
    return EBMRes(3, 8, 8)   # 8 px: stem + one block + head


def test_equals_dygraph_with_weight_update_and_bookkeeping(ebm):
    check_equals_dygraph_with_weight_update(ebm, "manual")


def test_autograd_variant_equals_dygraph_without_onednn(ebm, monkeypatch):
    """The opt-in paddle.grad program: same chain as dygraph over T = 30 and after an Adam step, and never
    run with oneDNN (while the manual program does set the flag, so the spy is not blind)."""
    ebm = copy.deepcopy(ebm)
    seen = []
    real = paddle.set_flags
    monkeypatch.setattr(paddle, "set_flags", lambda flags: (seen.append(dict(flags)), real(flags)))
    check_equals_dygraph_with_weight_update(ebm, "autograd")
    assert not any(f.get("FLAGS_use_onednn") for f in seen), seen
    if onednn_cpu():
        StaticLangevinStep(ebm, "manual", strict=True)(ebm, _x(2, 1), *CLIPS)
        assert any(f.get("FLAGS_use_onednn") for f in seen)


def check_equals_dygraph_with_weight_update(ebm, variant):
    """Clips active; an Adam step in dygraph between two calls must be seen by the program."""
    fast = StaticLangevinStep(ebm, variant, strict=True)
    x = _x(3, 0)
    x_copy = x.numpy().copy()
    opt = paddle.optimizer.Adam(1e-2, parameters=ebm.parameters())
    (-ebm(_x(4, 9)).mean()).backward()          # leave some parameter grads behind
    grads = [p.grad.numpy().copy() for p in ebm.parameters()]
    flags = [p.stop_gradient for p in ebm.parameters()]
    global_flags = paddle.get_flags(list(CPU_FLAGS))

    a = _fast_flow(fast, x, T, *CLIPS)
    b = _dygraph_flow(ebm, x, T, *CLIPS)
    assert _maxdiff(a, b) <= TOL
    # the clips really bind, and the chain really moves
    _, _, drift = langevin_step(ebm, x, *CLIPS)
    assert float((drift.abs() > CLIPS[1]).astype("float32").mean()) > 0.2
    assert float((a.abs() == 1.0).astype("float32").mean()) > 0.01
    assert _maxdiff(a, x) > 0.1
    # bookkeeping: input untouched, flags restored, grads untouched, the requested program in use
    np.testing.assert_array_equal(x.numpy(), x_copy)
    assert [p.stop_gradient for p in ebm.parameters()] == flags
    assert paddle.get_flags(list(CPU_FLAGS)) == global_flags   # only set around the static call
    for p, g in zip(ebm.parameters(), grads):
        np.testing.assert_array_equal(p.grad.numpy(), g)
    assert list(fast.chosen().values()) == [variant] and fast.n_compiled == 1 and fast.n_fallback_steps == 0

    opt.step()                                   # weights change in dygraph
    opt.clear_grad()
    a2 = _fast_flow(fast, x, T, *CLIPS)
    b2 = _dygraph_flow(ebm, x, T, *CLIPS)
    assert _maxdiff(a2, b2) <= TOL
    assert _maxdiff(a2, a) > 1e-3                # the update did change the chain
    assert fast.n_compiled == 1                  # same program, new weights


def program_output_ops(static_layer):
    """(op name, op id) of every op whose result a cached program of `static_layer` returns, per program.
    Reads to_static's program cache (private API; Paddle 3.3.1)."""
    found = []
    for _, (_, partial) in static_layer.forward._program_cache._caches.items():  # noqa: SIM118
        prog = partial.infer_program.forward_program
        ops = [op.operand_source(0).get_defining_op() for op in prog.global_block().ops
               if op.name() == "builtin.shadow_output"]
        found.append(([(op.name(), op.id()) for op in ops],
                      any(op.name().startswith("onednn_op.") for op in prog.global_block().ops)))
    return found


def test_output_ops_survive_the_onednn_rewrite(ebm):
    """Under oneDNN the first run replaces the program's pd_ops by onednn_ops in place, while run_program keeps
    the original output values: an output made by a replaced op is read from freed memory (the intermittent
    segfault; before the fix output 0 came from a replaced clip). Every output must come from an op that is
    not replaced: pd_op.share_data_ (.detach())."""
    if not onednn_cpu():
        pytest.skip("needs a CPU Paddle build with oneDNN")
    fast = StaticLangevinStep(ebm, "manual", strict=True)
    fast(ebm, _x(3, 4), *CLIPS)                                 # builds, checks and runs the program
    fast(ebm, _x(3, 4), 2.0, 0.02, None, None, 0.5)             # no image clip, noise input
    assert len(fast.cache.programs) == 2
    for variant, layer in fast.cache.programs.values():
        for outputs, rewritten in program_output_ops(layer):
            assert rewritten, "no onednn_op in the program: the check would be blind"
            assert len(outputs) == 3 and all(name == "pd_op.share_data_" for name, _ in outputs), outputs


def test_chain_scope_computes_weight_factors_once_per_chain(ebm, monkeypatch):
    """Inside fast.chain() the manual step reuses its weight-only factors; a new chain sees new weights."""
    ebm = copy.deepcopy(ebm)
    calls = []
    real = ebm.adjoint_weights
    monkeypatch.setattr(ebm, "adjoint_weights", lambda: calls.append(1) or real())
    fast = StaticLangevinStep(ebm, "manual", strict=True)
    opt = paddle.optimizer.Adam(1e-2, parameters=ebm.parameters())
    x = _x(3, 0)
    with fast.chain():
        a = _fast_flow(fast, x, T, *CLIPS)
    assert len(calls) == 1 and fast._adjoint is None   # once for the chain, dropped at its end
    assert _maxdiff(a, _dygraph_flow(ebm, x, T, *CLIPS)) <= TOL
    (ebm(_x(4, 9)).mean() - ebm(a).mean()).backward()
    opt.step()
    with fast.chain():
        a2 = _fast_flow(fast, x, T, *CLIPS)
    assert len(calls) == 2
    assert _maxdiff(a2, _dygraph_flow(ebm, x, T, *CLIPS)) <= TOL and _maxdiff(a2, a) > 1e-3
    _fast_flow(fast, x, 2, *CLIPS)                  # outside a chain: recomputed every step
    assert len(calls) == 4


def test_no_clips_given_noise_no_grad_and_dynamic_batch(ebm):
    fast = StaticLangevinStep(ebm, "manual", strict=True)
    s, std = 0.3, 0.5
    for n in (3, 5):                             # second batch size: same program
        x = _x(n, n)
        noise = paddle.to_tensor(np.random.RandomState(10 + n).randn(T, n, 3, 8, 8).astype("float32"))
        with paddle.no_grad():
            a = _fast_flow(fast, x, T, s, None, None, noise, std)
        b = _dygraph_flow(ebm, x, T, s, None, None, noise, std)
        assert _maxdiff(a, b) <= TOL
        assert float(a.abs().max()) > 1.0        # no image clip: values leave [-1, 1]
    assert fast.n_compiled == 1 and fast.n_fallback_steps == 0
    # drawn noise: the same seed gives the same chain on both paths
    x = _x(3, 1)
    paddle.seed(7)
    a = _fast_flow(fast, x, 5, s, None, None, None, std)
    paddle.seed(7)
    b = _dygraph_flow(ebm, x, 5, s, None, None, None, std)
    assert _maxdiff(a, b) <= TOL and fast.n_compiled == 1


def test_eval_mode_ebm_gets_its_own_program(ebm):
    fast = StaticLangevinStep(ebm, "manual", strict=True)
    x = _x(3, 2)
    fast(ebm, x, *CLIPS)
    ebm.eval()
    try:
        a = _fast_flow(fast, x, 5, *CLIPS)
        assert not ebm.training                  # the wrapper's training flag never leaks into the EBM
        assert _maxdiff(a, _dygraph_flow(ebm, x, 5, *CLIPS)) <= TOL
    finally:
        ebm.train()
    assert fast.n_compiled == 2


def test_returns_f_and_drift_like_the_dygraph_step(ebm):
    fast = StaticLangevinStep(ebm, "manual", strict=True)
    x = _x(3, 4)
    got = fast(ebm, x, *CLIPS)                    # first call: build, check, return the program's result
    ref = langevin_step(ebm, x, *CLIPS)
    np.testing.assert_allclose(got[1].numpy(), ref[1].numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got[2].numpy(), ref[2].numpy(), rtol=1e-5, atol=1e-6)
    assert all(t.stop_gradient for t in got)


def test_auto_is_deterministic_and_first_call_is_the_program(ebm):
    """'auto' never times anything: EBM_res always gets the static program, and the very first call
    already returns the program's result (bit-identical to a later call on the same input), so a process
    that starts mid-run (resume) computes what an uninterrupted one does."""
    if not onednn_cpu():
        pytest.skip("'auto' builds the static step only on CPU builds with oneDNN")
    x = _x(2, 3)
    step = make_langevin_step(ebm, "auto")
    first = step(ebm, x, *CLIPS)
    fast = step
    assert list(fast.chosen().values()) == ["manual"] and fast.n_fallback_steps == 0 and fast.n_compiled == 1
    again = step(ebm, x, *CLIPS)
    third = make_langevin_step(ebm, "auto")(ebm, x, *CLIPS)   # a second object (another process, say)
    for a, b, c in zip(first, again, third):
        assert _maxdiff(a, b) == 0.0 and _maxdiff(a, c) == 0.0
    plain = EBMPlain(3, 4)                          # no manual gradient: dygraph ('autograd' is opt-in only)
    assert make_langevin_step(plain, "auto") is langevin_step
    with pytest.raises(ValueError, match="Langevin.engine=auto or dygraph"):
        make_langevin_step(plain, "static")


def test_fallback_when_compile_fails(ebm, monkeypatch, caplog):
    monkeypatch.setattr(StaticLangevinStep, "_make", lambda self, key, dtype, adjoint: 1 / 0)
    fast = StaticLangevinStep(ebm)
    x = _x(3, 5)
    with caplog.at_level(logging.WARNING, logger="paddle_coopflow.accel.langevin"):
        out = x
        for _ in range(4):
            out = fast(ebm, out, *CLIPS)[0]
    assert _maxdiff(out, _dygraph_flow(ebm, x, 4, *CLIPS)) == 0.0
    assert fast.n_fallback_steps == 4 and fast.n_compiled == 0
    lines = [r.getMessage() for r in caplog.records if "dygraph" in r.getMessage()]
    assert len(lines) == 1 and "ZeroDivisionError" in lines[0]   # one line for the one candidate tried
    with pytest.raises(RuntimeError, match="Langevin.engine"):   # forced static: an error naming the switch
        StaticLangevinStep(ebm, strict=True)(ebm, x, *CLIPS)


def test_wrong_numbers_on_first_run_fall_back(ebm, monkeypatch):
    from paddle_coopflow.accel.program import ProgramCache

    real_call = ProgramCache.call

    def bad_call(self, key, inputs):
        out = real_call(self, key, inputs)
        return None if out is None else (out[0] + 1e-3,) + out[1:]

    monkeypatch.setattr(ProgramCache, "call", bad_call)
    fast = StaticLangevinStep(ebm, "manual")
    x = _x(3, 6)
    for _ in range(2):
        out = fast(ebm, x, *CLIPS)[0]
        assert _maxdiff(out, langevin_step(ebm, x, *CLIPS)[0]) == 0.0
    assert fast.n_compiled == 0 and fast.n_fallback_steps == 2


def test_engines_and_dispatch_rules(ebm):
    with pytest.raises(ValueError, match="Langevin.engine"):
        make_langevin_step(ebm, "fast")
    with pytest.raises(ValueError, match="variant"):
        StaticLangevinStep(ebm, "fast")
    assert make_langevin_step(ebm, "dygraph") is langevin_step
    static = make_langevin_step(ebm, "static")
    assert isinstance(static, StaticLangevinStep) and static.cache.strict
    auto = make_langevin_step(ebm, "auto")
    assert (auto is langevin_step) == (not onednn_cpu())
    assert onednn_cpu() == (paddle.get_device().startswith("cpu") and paddle.base.core.is_compiled_with_mkldnn())
    assert not hasattr(ebm, "_coopflow_fast_langevin")       # nothing is hung on the EBM
    # the differentiable chain goes to the dygraph step
    x = _x(2, 7)
    x.stop_gradient = False
    y, _, _ = static(ebm, x, 0.5, None, None, create_graph=True)
    (gx,) = paddle.grad([y.sum()], [x])
    assert gx is not None and not y.stop_gradient and static.n_compiled == 0


def test_engine_choice_is_logged_once_per_call(ebm, caplog):
    with caplog.at_level(logging.INFO, logger="paddle_coopflow.accel.langevin"):
        make_langevin_step(ebm, "static")
        make_langevin_step(ebm, "dygraph")
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2 and "static" in lines[0] and "dygraph" in lines[1] and "Langevin.engine" in lines[1]


def test_inside_a_to_static_trace_the_dygraph_step_is_traced(ebm):
    """The exported sampler calls langevin_flow inside to_static: no nested static step there."""
    step = make_langevin_step(ebm, "static")
    seen = []

    class Sampler(paddle.nn.Layer):
        def __init__(self):
            super().__init__()
            self.ebm = ebm

        def forward(self, x):
            seen.append(paddle.in_dynamic_mode())
            for _ in range(3):
                x = step(self.ebm, x, *CLIPS)[0]
            return x

    layer = Sampler()
    layer.training = False
    static = paddle.jit.to_static(layer, input_spec=[paddle.static.InputSpec([None, 3, 8, 8], "float32")],
                                  full_graph=True)
    ref = _dygraph_flow(ebm, _x(3, 11), 3, *CLIPS)
    out = static(_x(3, 11))   # a fresh input: the traced dygraph step is not ours to guard
    assert seen == [False] and step.n_compiled == 0
    assert _maxdiff(out, ref) <= TOL


def test_langevin_flow_with_the_static_step(ebm):
    """langevin_flow(step=make_langevin_step(ebm, 'static')) equals the dygraph flow, and the program ran."""
    x = _x(3, 8)
    step = make_langevin_step(ebm, "static")
    a, st = langevin_flow(ebm, x, T, *CLIPS, return_stats=True, step=step)
    b, sb = langevin_flow(ebm, x, T, *CLIPS, return_stats=True)
    assert _maxdiff(a, b) <= TOL
    assert abs(st["delta_clip_frac"] - sb["delta_clip_frac"]) < 1e-3 and st["delta_clip_frac"] > 0
    assert step.n_compiled == 1 and step.n_fallback_steps == 0
    assert step._adjoint is None          # the chain scope was closed


def test_programs_can_be_dropped_and_rebuilt_in_one_process():
    """Nothing keeps programs alive: build, run and drop programs for several EBMs, collect, repeat; every
    program still equals dygraph (the larger version of this check is in docs/paddle_notes.md)."""
    import gc

    for round_ in range(2):
        for i in range(3):
            paddle.seed(100 * round_ + i)
            net = EBMRes(3, 4, 8)
            fast = StaticLangevinStep(net, "manual", strict=True)
            x = _x(2 + i, i)
            for s in (1.0, 2.0):
                got = fast(net, x, s, 0.05, (-1.0, 1.0))[0]
                assert _maxdiff(got, langevin_step(net, x, s, 0.05, (-1.0, 1.0))[0]) <= TOL
            assert fast.n_compiled == 2 and fast.n_fallback_steps == 0
            del fast, net, got
        gc.collect()
