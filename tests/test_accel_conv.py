"""Flow++'s training convolutions as oneDNN programs (paddle_coopflow/accel/conv.py).

References: paddle's own conv2d and its autograd gradients, in float64 for the formulas and in float32
(to rounding) for the programs; the flow's loss and parameter gradients with dygraph convolutions.
"""
import copy
import logging

import numpy as np
import paddle
import paddle.nn.functional as F
import pytest

from paddle_coopflow.accel.conv import TrainConvs, conv_forward, make_train_convs
from paddle_coopflow.models.conv_grads import conv_input_grad, conv_weight_grad
from paddle_coopflow.models.flowpp import FlowPlusPlus
from paddle_coopflow.models.flowpp.weight_norm import WeightNormConv2D
from paddle_coopflow.utils.env import onednn_cpu


@pytest.mark.parametrize("k,padding", [(3, 1), (3, 0), (1, 0), (4, 0), (4, 1)])
def test_gradient_formulas_equal_paddle_grad_in_float64(k, padding):
    """Both gradients of a stride-1 conv as forward convs: against paddle.grad, float64."""
    rng = np.random.RandomState(0)
    x = paddle.to_tensor(rng.normal(size=(3, 5, 7, 6)))
    w = paddle.to_tensor(rng.normal(size=(4, 5, k, k)))
    x.stop_gradient = w.stop_gradient = False
    y = F.conv2d(x, w, padding=padding)
    g = paddle.to_tensor(rng.normal(size=y.shape))
    dx, dw = paddle.grad([y], [x, w], [g])
    np.testing.assert_allclose(conv_forward(x, w, padding).numpy(), y.numpy(), rtol=1e-12)
    np.testing.assert_allclose(conv_input_grad(g, w, padding).numpy(), dx.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(conv_weight_grad(x, g, padding).numpy(), dw.numpy(), rtol=1e-10, atol=1e-12)


def test_programs_equal_paddle_conv_to_float32_rounding():
    """TrainConvs in the autograd graph: output, ∂x and ∂w against F.conv2d's, and which programs ran."""
    rng = np.random.RandomState(1)
    x = paddle.to_tensor(rng.normal(size=(4, 6, 8, 8)).astype("float32"))
    w = paddle.to_tensor(rng.normal(size=(5, 6, 3, 3)).astype("float32"))
    g = paddle.to_tensor(rng.normal(size=(4, 5, 8, 8)).astype("float32"))
    convs = TrainConvs(strict=True)
    results = []
    for conv in (lambda a, b: F.conv2d(a, b, padding=1), lambda a, b: convs(a, b, 1)):
        a, b = x.clone(), w.clone()
        a.stop_gradient = b.stop_gradient = False
        y = conv(a, b)
        y.backward(g)
        results.append([y.numpy(), a.grad.numpy(), b.grad.numpy()])
    for ref, got in zip(*results):
        assert float(np.abs(got - ref).max()) < 1e-5 * float(np.abs(ref).max())
    assert sorted(k[0] for k in convs.chosen()) == ["forward", "input_grad", "weight_grad"]
    assert convs.n_compiled == 3 and convs.cache.n_fallback_calls == 0
    # a frozen input gets no input-gradient program
    frozen = TrainConvs(strict=True)
    b = w.clone()
    b.stop_gradient = False
    frozen(x, b, 1).sum().backward()
    assert sorted(k[0] for k in frozen.chosen()) == ["forward", "weight_grad"]


def _flow():
    paddle.seed(0)
    return FlowPlusPlus((3, 8, 8), ((0, 2), (2, 1)), mid_channels=8, num_blocks=1, num_components=4,
                        num_dequant_blocks=1, use_attn=True, drop_prob=0.0)


def test_flow_training_pass_with_program_convolutions():
    """The flow's NLL and every parameter gradient with the 3×3 convolutions as programs against dygraph;
    eval mode and 1×1 convolutions keep F.conv2d; a deep copy gets its own empty runner."""
    flow = _flow()
    rng = np.random.RandomState(2)
    x = paddle.to_tensor(rng.uniform(-1, 1, (4, 3, 8, 8)).astype("float32"))
    noise = paddle.to_tensor(rng.normal(size=(4, 3, 8, 8)).astype("float32"))
    flow.train()
    with paddle.no_grad():
        flow.nll(x, noise)   # ActNorm initialisation

    def loss_and_grads():
        flow.clear_gradients()
        loss = flow.nll(x, noise).mean()
        loss.backward()
        return float(loss), [p.grad.numpy() for p in flow.parameters()]

    ref_loss, ref = loss_and_grads()
    flow.set_update_engine("static")
    loss, got = loss_and_grads()
    scale = max(float(np.abs(g).max()) for g in ref)
    assert abs(loss - ref_loss) < 1e-5 * abs(ref_loss)
    assert max(float(np.abs(a - b).max()) for a, b in zip(got, ref)) < 1e-4 * scale
    layers = [m for m in flow.sublayers() if isinstance(m, WeightNormConv2D)]
    runners = {id(m.train_convs) for m in layers if m.train_convs is not None}
    assert len(runners) == 1 and all((m.train_convs is None) == (m.weight_v.shape[2] == 1) for m in layers)
    runner = next(m.train_convs for m in layers if m.train_convs is not None)
    n = runner.n_compiled
    flow.eval()
    with paddle.no_grad():
        flow.nll(x, noise)
    assert runner.n_compiled == n                       # eval mode: F.conv2d
    twin = copy.deepcopy(flow)
    twin_runner = next(m.train_convs for m in twin.sublayers() if isinstance(m, WeightNormConv2D) and m.train_convs)
    assert twin_runner is not runner and twin_runner.n_compiled == 0
    flow.set_update_engine("dygraph")
    assert all(m.train_convs is None for m in layers) and flow.update_engine == "dygraph"


def test_choice_and_fallback(monkeypatch, caplog):
    assert make_train_convs("dygraph") is None
    assert isinstance(make_train_convs("auto"), TrainConvs) == onednn_cpu()
    with pytest.raises(ValueError, match="update_engine"):
        make_train_convs("fast")
    # a program whose first run disagrees with dygraph is dropped for that key: one line, dygraph values
    import paddle_coopflow.accel.conv as conv_mod

    convs = TrainConvs()
    real = conv_mod.KINDS["forward"]
    x, w = paddle.ones([2, 3, 4, 4]), paddle.ones([2, 3, 3, 3])
    monkeypatch.setattr(conv_mod, "KINDS", {**conv_mod.KINDS, "forward": lambda a, b, p: real(a, b, p) * (
        1.5 if not paddle.in_dynamic_mode() else 1.0)})
    with caplog.at_level(logging.WARNING, logger="paddle_coopflow.accel.conv"):
        y = convs(x, w, 1)
    assert "using dygraph" in caplog.text
    np.testing.assert_array_equal(y.numpy(), F.conv2d(x, w, padding=1).numpy())
    assert list(convs.chosen().values()) == ["dygraph"]
