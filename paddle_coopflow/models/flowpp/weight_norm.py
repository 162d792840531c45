"""Weight-normalised Conv2D / Linear with PyTorch's `weight_norm(dim=0)` semantics.

w = g * v / ||v||, with one gain g per OUTPUT unit and the norm taken over everything
else, as the official Flow++ code's weight-normed layers. At construction g = ||v||, so the effective weight equals the
(PyTorch-default) initial v.

Paddle trap (docs/paddle_notes.md, "Linear weight layout and weight norm"): a Paddle Linear weight is [in, out], so the per-output
norm runs over axis 0, not axis 1 as in PyTorch's [out, in]. We implement the
reparametrisation by hand (no `paddle.nn.utils.weight_norm`) so the axis is explicit.

Parameter layout (for a checkpoint converter from the official PyTorch model):
  conv:   weight_g [out,1,1,1], weight_v [out,in,kh,kw], bias [out]      (same as torch)
  linear: weight_g [1,out],     weight_v [in,out],       bias [out]      (torch: g [out,1], v [out,in] -> transpose)
"""
from __future__ import annotations

import math
from typing import Sequence

import paddle
import paddle.nn as nn
import paddle.nn.functional as F


def torch_default_attr(fan_in: int) -> paddle.ParamAttr:
    """U(-1/sqrt(fan_in), 1/sqrt(fan_in)): PyTorch's default for conv/linear weights and biases.

    (kaiming_uniform with a=sqrt(5) reduces to exactly this bound.)
    """
    bound = 1.0 / math.sqrt(fan_in)
    return paddle.ParamAttr(initializer=nn.initializer.Uniform(-bound, bound))


def weight_norm_weight(g: paddle.Tensor, v: paddle.Tensor, norm_axes: Sequence[int]) -> paddle.Tensor:
    """g * v / ||v||, the norm over `norm_axes` (all axes except the output axis). No epsilon, as in torch."""
    norm = paddle.sqrt(paddle.sum(v * v, axis=list(norm_axes), keepdim=True))
    return v * (g / norm)


def _init_gain(g: paddle.Tensor, v: paddle.Tensor, norm_axes: Sequence[int]) -> None:
    """Set g = ||v|| (per output unit), so w == v at initialisation."""
    with paddle.no_grad():
        g.set_value(paddle.sqrt(paddle.sum(v * v, axis=list(norm_axes), keepdim=True)))


class WeightNormConv2D(nn.Layer):
    """Conv2D with weight norm per output filter.

    Args:
        in_channels, out_channels, kernel_size, padding: as nn.Conv2D (stride 1).
        bias: add a bias (PyTorch-default init).
    Shapes: x [N, in, H, W] -> [N, out, H', W'].
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, padding: int = 0,
                 bias: bool = True):
        super().__init__()
        self.padding = padding
        fan_in = in_channels * kernel_size * kernel_size
        self.weight_v = self.create_parameter([out_channels, in_channels, kernel_size, kernel_size],
                                              attr=torch_default_attr(fan_in))
        self.weight_g = self.create_parameter([out_channels, 1, 1, 1])
        _init_gain(self.weight_g, self.weight_v, (1, 2, 3))
        self.bias = (self.create_parameter([out_channels], attr=torch_default_attr(fan_in), is_bias=True)
                     if bias else None)
        # The convolution runner in training mode (FlowPlusPlus.set_update_engine: the oneDNN programs of
        # paddle_coopflow/accel/conv.py), or None for F.conv2d; a plain attribute, not a sublayer.
        self.train_convs = None

    @property
    def weight(self) -> paddle.Tensor:
        """Effective weight [out, in, kh, kw]."""
        return weight_norm_weight(self.weight_g, self.weight_v, (1, 2, 3))

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        if self.train_convs is not None and self.training and paddle.in_dynamic_mode():
            out = self.train_convs(x, self.weight, self.padding)
        else:
            out = F.conv2d(x, self.weight, padding=self.padding)
        # The bias as [C, 1, 1]: F.conv2d adds it as [1, C, 1, 1], which Paddle broadcasts (forward and
        # gradient) ~10x slower (docs/paddle_notes.md, "Slow broadcasts and reductions along inner axes").
        return out if self.bias is None else out + self.bias.reshape([-1, 1, 1])


class WeightNormLinear(nn.Layer):
    """Linear layer with weight norm per OUTPUT unit (Paddle weight layout [in, out]).

    Shapes: x [..., in] -> [..., out].
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__()
        self.weight_v = self.create_parameter([in_features, out_features], attr=torch_default_attr(in_features))
        self.weight_g = self.create_parameter([1, out_features])
        _init_gain(self.weight_g, self.weight_v, (0,))
        self.bias = (self.create_parameter([out_features], attr=torch_default_attr(in_features), is_bias=True)
                     if bias else None)

    @property
    def weight(self) -> paddle.Tensor:
        """Effective weight [in, out]; column j is g_j * v[:, j] / ||v[:, j]||."""
        return weight_norm_weight(self.weight_g, self.weight_v, (0,))

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        return F.linear(x, self.weight, self.bias)
