"""Gradients of a stride-1 convolution written as forward convolutions (no gradient ops).

A static program made of forward ops runs on oneDNN's fast kernels, while one with gradient ops does not
(docs/paddle_notes.md). For y = conv(x, W, padding p), k×k kernel, stride 1:

- input gradient:   ∂x = conv(∂y, W transposed [in, out] and flipped, padding k − 1 − p)
- weight gradient:  ∂W = conv(xᵀ, ∂yᵀ, padding p)ᵀ, batch and channels swapped (ᵀ: axes 0 ↔ 1)
- bias gradient:    ∂b = Σ over batch and pixels of ∂y

Used by EBM_res's hand-written gradients (models/ebm.py) and by Flow++'s training convolutions
(accel/conv.py); each equals paddle.grad in float64 (tests/test_accel_conv.py, tests/test_ebm.py).
"""
from __future__ import annotations

import paddle
import paddle.nn.functional as F

__all__ = ["adjoint_kernel", "conv_input_grad", "conv_weight_grad", "conv_bias_grad"]


def _swap(t: paddle.Tensor) -> paddle.Tensor:
    return t.transpose([1, 0, 2, 3])


def adjoint_kernel(weight: paddle.Tensor, scale: float = 1.0) -> paddle.Tensor:
    """The input-gradient kernel of `weight` [out, in, k, k]: transposed and flipped, [in, out, k, k], times `scale`."""
    # reversed slices, not paddle.flip: the same values; Paddle's flip kernel is the slower one on CPU
    # (docs/speed.md, "Per-chain weight factors")
    w = _swap(weight)[:, :, ::-1, ::-1]
    return w if scale == 1.0 else w * scale


def conv_input_grad(g: paddle.Tensor, w: paddle.Tensor, padding: int) -> paddle.Tensor:
    """∂⟨g, conv(x, w)⟩/∂x from g [N, out, H', W']: a conv with :func:`adjoint_kernel`, padding k − 1 − p."""
    k = int(w.shape[2])
    return F.conv2d(g, adjoint_kernel(w), None, stride=1, padding=k - 1 - padding)


def conv_weight_grad(x: paddle.Tensor, g: paddle.Tensor, padding: int) -> paddle.Tensor:
    """∂⟨g, conv(x, w)⟩/∂w [out, in, k, k]: xᵀ [in, N, H, W] convolved with gᵀ [out, N, H', W'] as kernel."""
    return _swap(F.conv2d(_swap(x), _swap(g), None, stride=1, padding=padding))


def conv_bias_grad(g: paddle.Tensor) -> paddle.Tensor:
    """∂⟨g, conv(x, w) + b⟩/∂b [out]: g summed over batch and pixels (channels first, then one reduction)."""
    return _swap(g).reshape([0, -1]).sum(axis=1)
