"""models/flowpp/dropout.py: F.dropout's semantics with numpy masks seeded from Paddle's generator."""
import numpy as np
import paddle
import pytest

from paddle_coopflow.models.flowpp.dropout import dropout, keep_threshold


def _x(shape, dtype="float32", seed=0):
    x = paddle.to_tensor(np.random.default_rng(seed).uniform(0.5, 2.0, shape).astype(dtype))  # no zeros in x
    x.stop_gradient = False
    return x


@pytest.mark.parametrize("p", [0.2, 0.5])
def test_values_keep_fraction_and_gradient(p):
    """Every output is 0 or x / (1 - p); the kept fraction is Binomial(n, 1 - p) (5 sigma); the gradient of
    sum(w * out) is w / (1 - p) where kept and 0 where dropped (closed form, float64)."""
    shape = [4, 3, 64, 64]
    x = _x(shape, "float64")
    out = dropout(x, p)
    xo, yo = x.numpy(), out.numpy()
    kept = yo != 0
    np.testing.assert_allclose(yo[kept], xo[kept] / (1 - p), rtol=1e-15)
    n = kept.size
    assert abs(kept.sum() - n * (1 - p)) < 5 * np.sqrt(n * p * (1 - p))
    w = np.random.default_rng(1).standard_normal(shape)
    (out * paddle.to_tensor(w)).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), np.where(kept, w / (1 - p), 0.0), rtol=1e-15, atol=0)
    assert out.dtype == x.dtype and x.grad.dtype == x.dtype


def test_masks_follow_paddles_generator():
    """paddle.seed and get/set_rng_state (what checkpoints and recompute's replay use) fix the masks;
    consecutive calls draw new ones; float32 and float64 inputs get the same mask from the same state."""
    x32, x64 = _x([8, 256]), _x([8, 256], "float64")
    paddle.seed(7)
    a = dropout(x32, 0.3).numpy() != 0
    state = paddle.get_rng_state()
    b = dropout(x32, 0.3).numpy() != 0
    paddle.set_rng_state(state)
    b_again = dropout(x64, 0.3).numpy() != 0
    paddle.seed(7)
    a_again = dropout(x32, 0.3).numpy() != 0
    assert np.array_equal(a, a_again) and np.array_equal(b, b_again)
    assert not np.array_equal(a, b)


def test_threshold_and_edge_cases():
    """keep_threshold is p * 2**32 rounded; p = 0 and eval mode return x itself, p = 1 zeros."""
    assert keep_threshold(0.2) == 858993459 and keep_threshold(0.5) == 2 ** 31 and keep_threshold(0.0) == 0
    x = _x([3, 5])
    assert dropout(x, 0.0) is x and dropout(x, 0.7, training=False) is x
    assert np.all(dropout(x, 1.0).numpy() == 0)
    with paddle.no_grad():                                   # the proposal: no gradient, train mode
        y = dropout(x, 0.5)
    assert y.stop_gradient and set(np.unique(np.round(y.numpy() / x.numpy(), 6))) <= {0.0, 2.0}


def test_static_program_uses_paddles_dropout():
    """Inside a traced program numpy cannot run: the program holds Paddle's own dropout op."""

    class Drop(paddle.nn.Layer):
        def forward(self, x):
            return dropout(x, 0.5)

    static = paddle.jit.to_static(Drop(), input_spec=[paddle.static.InputSpec([None, 64], "float32")],
                                  full_graph=True)
    y = static(paddle.ones([4, 64])).numpy()
    assert set(np.unique(y)) == {0.0, 2.0}
    ops = [op.name() for op in static.forward.concrete_program.main_program.global_block().ops]
    assert "pd_op.dropout" in ops


def test_mask_does_not_depend_on_threads(monkeypatch):
    """Large masks are made in two threads, one stream per half: the same bits as made one half after the other,
    and the two halves are not copies of each other."""
    from paddle_coopflow.models.flowpp import dropout as mod

    shape = [2, 3, 300, 301]                       # 541,800 elements, above PARALLEL_MIN, odd halves
    assert np.prod(shape) >= mod.PARALLEL_MIN
    threaded = mod.keep_mask(shape, 0.25, 123)
    monkeypatch.setattr(mod, "PARALLEL_MIN", 10 ** 12)
    serial = mod.keep_mask(shape, 0.25, 123)
    assert np.array_equal(threaded, serial)
    flat = serial.reshape(-1)
    h = (flat.size + 1) // 2
    assert not np.array_equal(flat[:h - 1], flat[h:])


def test_strided_view_input():
    """With Paddle's strided views on, a transposed input is read through its strides (numpy via DLPack): kept
    elements are x / (1 - p) at their own positions and the gradient lands on the right elements."""
    before = paddle.get_flags(["FLAGS_use_stride_kernel"])["FLAGS_use_stride_kernel"]
    paddle.set_flags({"FLAGS_use_stride_kernel": True})
    try:
        base = _x([6, 5, 4])
        x = base.transpose([2, 0, 1])
        assert not x.is_contiguous()
        y = dropout(x, 0.5)
        kept = y.numpy() != 0
        np.testing.assert_array_equal(y.numpy()[kept], x.numpy()[kept] * 2.0)
        w = np.arange(120, dtype="float32").reshape(4, 6, 5)
        (y * paddle.to_tensor(w)).sum().backward()
        np.testing.assert_array_equal(base.grad.numpy().transpose(2, 0, 1), np.where(kept, 2.0 * w, 0.0))
    finally:
        paddle.set_flags({"FLAGS_use_stride_kernel": before})
