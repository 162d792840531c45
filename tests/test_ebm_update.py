"""The EBM update (eq. 2) as one static oneDNN program (paddle_coopflow/accel/ebm_update.py).

References: the dygraph loss `coopflow.ebm_ml_loss` through paddle's autograd, and the same loss in
float64 (the program and dygraph are both float32; each is compared with float64 at float32 rounding).
"""
import logging

import numpy as np
import paddle
import pytest

from paddle_coopflow.accel import make_ebm_loss
from paddle_coopflow.accel.ebm_update import StaticEBMLoss
from paddle_coopflow.coopflow import ebm_ml_loss
from paddle_coopflow.models.ebm import EBMPlain, EBMRes
from paddle_coopflow.utils.env import onednn_cpu


@pytest.fixture
def ebm():
    paddle.seed(3)
    return EBMRes(3, 8, 16)


def _batches(b=6, m=4, size=16, seed=0):
    rng = np.random.RandomState(seed)
    return [paddle.to_tensor(rng.uniform(-1, 1, (n, 3, size, size)).astype("float32")) for n in (b, m)]


def _grads(ebm, loss_fn, x_data, x_rev):
    for p in ebm.parameters():
        p.clear_gradient()
    loss, f_data, f_rev = loss_fn(ebm, x_data, x_rev)
    loss.backward()
    return (float(loss), f_data.numpy(), f_rev.numpy()), [p.grad.numpy().astype("float64") for p in ebm.parameters()]


def _float64_grads(ebm, x_data, x_rev):
    net = EBMRes(3, 8, 16)
    net.set_state_dict(ebm.state_dict())
    net.to(dtype="float64")
    loss, _, _ = ebm_ml_loss(net, x_data.astype("float64"), x_rev.astype("float64"))
    return float(loss), [g.numpy() for g in paddle.grad([loss], net.parameters())]


def test_static_loss_equals_dygraph_and_float64(ebm):
    """Loss, energies and every parameter gradient: the program against dygraph and both against float64,
    over two updates (the program reads the weights by reference: it sees the first Adam step)."""
    static = make_ebm_loss(ebm, ebm_ml_loss, "static")
    assert isinstance(static, StaticEBMLoss)
    opt = paddle.optimizer.Adam(1e-2, parameters=ebm.parameters())
    for it in range(2):
        x_data, x_rev = _batches(seed=it)
        (l_s, fd_s, fr_s), g_s = _grads(ebm, static, x_data, x_rev)
        (l_d, fd_d, fr_d), g_d = _grads(ebm, ebm_ml_loss, x_data, x_rev)
        l_64, g_64 = _float64_grads(ebm, x_data, x_rev)
        scale = max(float(np.abs(g).max()) for g in g_64)
        assert scale > 1e-3
        for g in (g_s, g_d):
            assert max(float(np.abs(a - r).max()) for a, r in zip(g, g_64)) < 1e-4 * scale
        np.testing.assert_allclose(fd_s, fd_d, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(fr_s, fr_d, rtol=1e-5, atol=1e-5)
        assert abs(l_s - l_64) < 1e-5 and abs(l_d - l_64) < 1e-5
        opt.step()
        opt.clear_grad()
    assert static.n_compiled == 1 and static.cache.n_fallback_calls == 0
    assert list(static.chosen().values()) == ["manual"]


def test_program_is_deterministic_and_first_call_is_the_program(ebm):
    """Two learners' programs give the same bits, also when one builds its program at a later call (a resumed
    run computes what an uninterrupted one does)."""
    x_data, x_rev = _batches()
    a = make_ebm_loss(ebm, ebm_ml_loss, "static")
    first = _grads(ebm, a, x_data, x_rev)[1]
    again = _grads(ebm, a, x_data, x_rev)[1]
    fresh = _grads(ebm, make_ebm_loss(ebm, ebm_ml_loss, "static"), x_data, x_rev)[1]
    for x, y, z in zip(first, again, fresh):
        assert np.array_equal(x, y) and np.array_equal(x, z)


def test_gradients_accumulate_and_scale_like_autograd(ebm):
    """The PyLayer node multiplies by the upstream gradient and adds to existing .grad, as autograd does."""
    x_data, x_rev = _batches()
    static = make_ebm_loss(ebm, ebm_ml_loss, "static")
    _, once = _grads(ebm, static, x_data, x_rev)
    loss, _, _ = static(ebm, x_data, x_rev)
    (3.0 * loss).backward()
    loss, _, _ = static(ebm, x_data, x_rev)
    loss.backward()
    for p, g in zip(ebm.parameters(), once):
        np.testing.assert_allclose(p.grad.numpy(), 5.0 * g, rtol=1e-5, atol=1e-7 * float(np.abs(g).max()) + 1e-12)
    # a frozen parameter gets no gradient, the others theirs
    for p in ebm.parameters():
        p.clear_gradient()
    frozen = ebm.parameters()[0]
    frozen.stop_gradient = True
    loss, _, _ = static(ebm, x_data, x_rev)
    loss.backward()
    assert frozen.grad is None or not np.any(frozen.grad.numpy())
    np.testing.assert_allclose(ebm.parameters()[2].grad.numpy(), once[2], rtol=1e-6, atol=1e-12)


def test_dispatch_rules(ebm, caplog):
    x_data, x_rev = _batches()
    assert make_ebm_loss(ebm, ebm_ml_loss, "dygraph") is ebm_ml_loss
    assert make_ebm_loss(ebm, ebm_ml_loss, "auto", energy_grad=True) is ebm_ml_loss     # the guard needs ∂/∂f
    assert make_ebm_loss(EBMPlain(3, 4), ebm_ml_loss, "auto") is ebm_ml_loss
    auto = make_ebm_loss(ebm, ebm_ml_loss, "auto")
    assert isinstance(auto, StaticEBMLoss) == onednn_cpu()
    with pytest.raises(ValueError, match="update_engine=auto or dygraph"):
        make_ebm_loss(EBMPlain(3, 4), ebm_ml_loss, "static")
    with pytest.raises(ValueError, match="energy guard"):
        make_ebm_loss(ebm, ebm_ml_loss, "static", energy_grad=True)
    with pytest.raises(ValueError, match="update_engine"):
        make_ebm_loss(ebm, ebm_ml_loss, "fast")
    # another energy (a data-parallel wrapper) takes the dygraph loss: same numbers, no program built
    static = make_ebm_loss(ebm, ebm_ml_loss, "static")
    wrapper = lambda x: ebm(x)  # noqa: E731
    (loss, _, _), grads = _grads(ebm, lambda _e, a, b: static(wrapper, a, b), x_data, x_rev)
    (ref, _, _), ref_grads = _grads(ebm, ebm_ml_loss, x_data, x_rev)
    assert loss == ref and all(np.array_equal(a, b) for a, b in zip(grads, ref_grads))
    assert static.n_compiled == 0


def test_wrong_numbers_on_first_run_fall_back(ebm, monkeypatch, caplog):
    """A program whose first run disagrees with dygraph is not used: one line, dygraph numbers from then on."""
    x_data, x_rev = _batches()
    auto = StaticEBMLoss(ebm, ebm_ml_loss)
    real = ebm.energy_and_param_grads

    def broken(x, seed, adjoint=None):
        f, grads = real(x, seed, adjoint)
        return f, [grads[0] * 1.5] + grads[1:]

    monkeypatch.setattr(ebm, "energy_and_param_grads", broken)
    with caplog.at_level(logging.WARNING, logger="paddle_coopflow.accel.ebm_update"):
        (loss, _, _), grads = _grads(ebm, auto, x_data, x_rev)
    assert "gradient 0" in caplog.text and "using dygraph" in caplog.text
    (ref, _, _), ref_grads = _grads(ebm, ebm_ml_loss, x_data, x_rev)
    assert loss == ref and all(np.array_equal(a, b) for a, b in zip(grads, ref_grads))
    assert auto.chosen() == {next(iter(auto.chosen())): "dygraph"} and auto.cache.n_fallback_calls == 1
    with pytest.raises(RuntimeError, match="update_engine=auto"):
        StaticEBMLoss(ebm, ebm_ml_loss, strict=True)(ebm, x_data, x_rev)
