"""Training convolutions of Flow++ as static-graph programs with oneDNN (CPU).

Paddle's dygraph convolutions do not use oneDNN (im2col + GEMM, one image at a time), and a to_static
program with gradient ops segfaults under oneDNN (docs/paddle_notes.md). A stride-1 convolution and both
of its gradients are forward convolutions, though (models/conv_grads.py), so :class:`TrainConvs` runs each as its own small oneDNN program (one per kind and shapes) inside a
:class:`~paddle.autograd.PyLayer`; the rest of the flow's training pass stays in dygraph. Only the 3×3
convolutions of the coupling networks use it (``WeightNormConv2D``; the 1×1 ones are as fast in dygraph).
The results agree with Paddle's dygraph convolution to float32 rounding (other kernels, other summation
order), not bit for bit; each program's first run is checked against the same formula in dygraph.

:func:`make_train_convs` turns the config's `Train.update_engine` into a TrainConvs or None (dygraph),
deterministically (config, device, build; never timing).
"""
from __future__ import annotations

import logging
from types import MappingProxyType
from typing import Optional

import numpy as np
import paddle
import paddle.nn as nn
import paddle.nn.functional as F
from paddle.autograd import PyLayer

from ..models.conv_grads import conv_input_grad, conv_weight_grad
from ..utils.env import onednn_cpu
from .program import CPU_FLAGS, ENGINES, ProgramCache, detached

__all__ = ["KINDS", "TrainConvs", "make_train_convs", "conv_forward"]

VERIFY_RTOL = 1e-4   # first-run check: max |static − dygraph| ≤ VERIFY_RTOL · max |dygraph|
_log = logging.getLogger("paddle_coopflow.accel.conv")


def conv_forward(x: paddle.Tensor, w: paddle.Tensor, padding: int) -> paddle.Tensor:
    """y = conv(x [N, in, H, W], w [out, in, k, k]), stride 1: [N, out, H', W']."""
    return F.conv2d(x, w, None, stride=1, padding=padding)


KINDS = MappingProxyType({"forward": conv_forward, "input_grad": conv_input_grad, "weight_grad": conv_weight_grad})


class _ConvLayer(nn.Layer):
    """What a program traces: one of KINDS at a fixed padding, output detached."""

    def __init__(self, kind: str, padding: int):
        super().__init__()
        self.kind, self.padding = kind, padding

    def forward(self, a, b):
        return detached([KINDS[self.kind](a, b, self.padding)])


class _Conv(PyLayer):
    @staticmethod
    def forward(ctx, x, w, convs, padding):
        ctx.save_for_backward(x, w)
        ctx.convs, ctx.padding = convs, padding
        return convs.run("forward", x, w, padding)

    @staticmethod
    def backward(ctx, g):
        x, w = ctx.saved_tensor()
        dx = None if x.stop_gradient else ctx.convs.run("input_grad", g, w, ctx.padding)
        dw = None if w.stop_gradient else ctx.convs.run("weight_grad", x, g, ctx.padding)
        return dx, dw


class TrainConvs:
    """Stride-1 convolutions whose forward and both gradients run as oneDNN programs (one per kind and shapes).

    Call: (x [N, in, H, W], w [out, in, k, k], padding) → conv(x, w) [N, out, H', W'] in the autograd graph
    of x and w (bias: add it outside). The programs hold no parameters (weights are inputs), so one
    TrainConvs serves every layer of a network; a deep copy is a new, empty one.

    Args:
        strict: raise on failure instead of falling back (engine 'static').
        verify: check the first run of each program against the same formula in dygraph.
    """

    def __init__(self, strict: bool = False, verify: bool = True):
        self.strict, self.verify = strict, verify
        self.cache = ProgramCache(nn.Layer(), "training convolution", "Train.update_engine",
                                  CPU_FLAGS if onednn_cpu() else None, strict=strict, grad=False, logger=_log)

    def __deepcopy__(self, memo):
        return TrainConvs(self.strict, self.verify)

    @property
    def n_compiled(self) -> int:
        return self.cache.n_compiled

    def chosen(self):
        return self.cache.chosen()

    def __call__(self, x: paddle.Tensor, w: paddle.Tensor, padding: int) -> paddle.Tensor:
        return _Conv.apply(x, w, self, int(padding))

    def run(self, kind: str, a: paddle.Tensor, b: paddle.Tensor, padding: int) -> paddle.Tensor:
        """KINDS[kind](a, b, padding) through its program (dygraph after a failure of that key)."""
        key = (kind, tuple(a.shape), tuple(b.shape), padding, a.dtype)
        inputs = [a.detach(), b.detach()]
        if key not in self.cache.programs:
            out = self.cache.build(key, "oneDNN", lambda: self._make(key), inputs,
                                   lambda: (KINDS[kind](*inputs, padding),), self._check if self.verify else None)
        else:
            out = self.cache.call(key, inputs)
        if out is not None:
            return out[0]
        self.cache.n_fallback_calls += 1
        with paddle.no_grad():
            return KINDS[kind](*inputs, padding)

    @staticmethod
    def _make(key: tuple):
        kind, a_shape, b_shape, padding, dtype = key
        spec = [paddle.static.InputSpec(list(a_shape), dtype, "a"), paddle.static.InputSpec(list(b_shape), dtype, "b")]
        return _ConvLayer(kind, padding), spec

    @staticmethod
    def _check(out, ref) -> None:
        a, r = out[0].numpy().astype("float64"), ref[0].numpy().astype("float64")
        if not np.isfinite(r).all():
            return   # NaN inputs: kernels differ in NaN handling, nothing to check
        err = float(np.abs(a - r).max()) if np.isfinite(a).all() else float("inf")
        if not err <= VERIFY_RTOL * float(np.abs(r).max()) + 1e-30:
            raise ValueError(f"first static convolution differs from dygraph (max |diff| {err:.2e})")


def make_train_convs(engine: str = "auto", logger: Optional[logging.Logger] = None) -> Optional[TrainConvs]:
    """Flow++'s training convolutions for Train.update_engine: a TrainConvs ('static'; 'auto' on CPU builds
    with oneDNN) or None (dygraph: 'dygraph', and 'auto' elsewhere, also on GPU where it was not measured)."""
    if engine not in ENGINES:
        raise ValueError(f"Train.update_engine={engine!r} is invalid; use one of {ENGINES}")
    if engine == "dygraph" or (engine == "auto" and not onednn_cpu()):
        (logger or _log).info("Flow training convolutions: dygraph (Train.update_engine=%s)", engine)
        return None
    (logger or _log).info("Flow training convolutions: static oneDNN programs (Train.update_engine=%s)", engine)
    return TrainConvs(strict=engine == "static")
