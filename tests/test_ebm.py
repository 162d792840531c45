"""EBM architectures: parameter counts and keys of the official code, output shapes, init, double backward, the hand-written input gradient."""
import math

import numpy as np
import paddle
import pytest

from conftest import OFFICIAL_EBM_KEYS as KEYS_TSV
from paddle_coopflow.models.ebm import EBMMLP, EBMPlain, EBMRes, build_ebm


def _count(m):
    return sum(int(np.prod(p.shape)) for p in m.parameters())


def test_param_counts_match_the_official_models():
    assert _count(EBMRes(3, 128, 32)) == 17_129_444
    assert _count(EBMPlain(3, 128)) == 12_653_924


def test_state_dict_keys_and_shapes_match_official():
    rows = [l.rstrip("\n").split("\t") for l in open(KEYS_TSV) if l.strip() and not l.startswith("#")]
    ref = {k: tuple(int(d) for d in s.strip("()").split(",") if d.strip()) for k, s in rows[1:]}
    ours = {k: tuple(v.shape) for k, v in EBMRes(3, 128, 32).state_dict().items()}
    assert ours == ref


@pytest.mark.parametrize("n", [1, 3])
def test_output_shape_is_batch(n):
    x = paddle.rand([n, 3, 32, 32]) * 2 - 1
    assert EBMRes(3, 4, 32)(x).shape == [n]
    assert EBMPlain(3, 4)(x).shape == [n]
    assert EBMRes(3, 4, 64)(paddle.rand([n, 3, 64, 64])).shape == [n]
    assert EBMMLP(2, 8, 2)(paddle.rand([n, 2])).shape == [n]


def test_output_is_sum_of_100_head_channels():
    m = EBMRes(3, 4, 32)
    x = paddle.rand([2, 3, 32, 32])
    head = m.f(x)
    assert head.shape == [2, 100, 1, 1]
    terms = head.numpy().reshape(2, 100).astype(np.float64)
    # float64 reference; the sum nearly cancels, so the bound is float32 rounding of the terms' magnitude
    np.testing.assert_allclose(m(x).numpy(), terms.sum(1), rtol=0, atol=1e-5 * np.abs(terms).sum(1).max())


def test_pytorch_default_init_bounds():
    paddle.seed(0)
    m = EBMRes(3, 16, 32)
    conv = m.f[2].conv2  # fan_in = 16 * 9
    bound = 1.0 / math.sqrt(16 * 9)
    w = conv.weight.numpy()
    assert np.abs(w).max() <= bound + 1e-7
    assert w.std() == pytest.approx(bound / math.sqrt(3), rel=0.05)  # U(-b, b) has std b/sqrt(3)
    assert np.abs(conv.bias.numpy()).max() <= bound + 1e-7
    assert np.abs(conv.bias.numpy()).max() > 0.5 * bound  # not zero-initialised
    lin = EBMMLP(2, 64, 2).f[2]  # Linear(64, 64): fan_in 64
    assert np.abs(lin.weight.numpy()).max() <= 1 / 8 + 1e-7


def test_double_backward_through_swish_matches_finite_differences():
    """∂/∂x ⟨∇ₓf(x), u⟩ vs a central difference of ∇ₓf (float64)."""
    paddle.seed(1)
    m = EBMMLP(3, 16, 2)
    m.to(dtype="float64")
    rng = np.random.RandomState(0)
    x0, u, v = rng.randn(2, 3), rng.randn(2, 3), rng.randn(2, 3)

    def grad_f(xn, create_graph=False):
        x = paddle.to_tensor(xn)
        x.stop_gradient = False
        g = paddle.grad([m(x).sum()], [x], create_graph=create_graph)[0]
        return x, g

    x, g = grad_f(x0, create_graph=True)
    hv = paddle.grad([(g * paddle.to_tensor(u)).sum()], [x])[0].numpy()
    eps = 1e-5
    fd = ((grad_f(x0 + eps * v)[1].numpy() - grad_f(x0 - eps * v)[1].numpy()) * u).sum() / (2 * eps)
    assert (hv * v).sum() == pytest.approx(fd, rel=1e-6)


def test_build_ebm_and_errors():
    class Cfg:
        arch = "plain"
        base_channels = 4
    assert isinstance(build_ebm(Cfg()), EBMPlain)
    assert isinstance(build_ebm({"arch": "mlp", "hidden": 8}), EBMMLP)
    assert _count(build_ebm({"arch": "res", "base_channels": 4})) == _count(EBMRes(3, 4, 32))
    with pytest.raises(ValueError, match="arch"):
        build_ebm({"arch": "resnet"})
    with pytest.raises(ValueError, match="img_size"):
        EBMRes(3, 4, 48)


@pytest.mark.parametrize("size", [8, 16, 64])
def test_hand_written_input_gradient_equals_paddle_grad_in_float64(size):
    """EBMRes.energy_and_grad (forward ops only) against paddle.grad, with the weight factors derived
    inside or precomputed once (adjoint_weights); every block is walked (64 px: four blocks)."""
    paddle.seed(5)
    net = EBMRes(3, 4, size)
    net.to(dtype="float64")
    x = paddle.to_tensor(np.random.RandomState(0).uniform(-1, 1, (2, 3, size, size)))
    x.stop_gradient = False
    f_ref = net(x)
    (g_ref,) = paddle.grad([f_ref.sum()], [x])
    assert len(net.blocks) == {8: 1, 16: 2, 64: 4}[size]
    for adjoint in (None, net.adjoint_weights()):
        f, g = net.energy_and_grad(x, adjoint)
        np.testing.assert_allclose(f.numpy(), f_ref.numpy(), rtol=1e-12)
        np.testing.assert_allclose(g.numpy(), g_ref.numpy(), rtol=1e-10, atol=1e-14)
    assert float(np.abs(g_ref.numpy()).max()) > 1e-6          # a gradient worth comparing



@pytest.mark.parametrize("size", [8, 32, 64])
def test_hand_written_parameter_gradients_equal_paddle_grad_in_float64(size):
    """EBMRes.energy_and_param_grads (forward ops only) against paddle.grad of Σ seed·f for every parameter,
    with eq. (2)'s seeds (−1/B on data, +1/M on revisions) and with arbitrary ones."""
    paddle.seed(6)
    net = EBMRes(3, 4, size)
    net.to(dtype="float64")
    rng = np.random.RandomState(1)
    x = paddle.to_tensor(rng.uniform(-1, 1, (5, 3, size, size)))
    for seed in (np.array([-0.5, -0.5, 1 / 3, 1 / 3, 1 / 3]), rng.normal(size=5)):
        seed = paddle.to_tensor(seed)
        f_ref = net(x)
        g_ref = paddle.grad([(f_ref * seed).sum()], net.parameters())
        for adjoint in (None, net.adjoint_weights()):
            f, grads = net.energy_and_param_grads(x, seed, adjoint)
            np.testing.assert_allclose(f.numpy(), f_ref.numpy(), rtol=1e-12)
            assert [list(g.shape) for g in grads] == [list(p.shape) for p in net.parameters()]
            for g, r in zip(grads, g_ref):
                np.testing.assert_allclose(g.numpy(), r.numpy(), rtol=1e-9, atol=1e-12 * float(np.abs(r.numpy()).max()))
    assert min(float(np.abs(r.numpy()).max()) for r in g_ref[:-1]) > 1e-6   # gradients worth comparing

def test_parts_are_found_by_name_and_manual_gradient_support():
    net = EBMRes(3, 4, 32)
    assert net.stem is net.f[0] and net.head is net.f[5] and net.blocks == [net.f[2], net.f[3], net.f[4]]
    assert net.supports_manual_grad()
    w = net.adjoint_weights()
    assert len(w) == 1 + 3 * 3 + 1 and list(w[0].shape) == [3, 4, 3, 3] and list(w[-1].shape) == [1, 32, 4, 4]
    assert all(t.stop_gradient for t in w)                     # weight-only factors: no graph to the weights
    net.stem._stride = [2, 2]                                  # a conv the hand-written gradient does not cover
    assert not net.supports_manual_grad()
    assert not hasattr(EBMPlain(3, 4), "supports_manual_grad") and not hasattr(EBMMLP(2, 8, 1), "energy_and_grad")
