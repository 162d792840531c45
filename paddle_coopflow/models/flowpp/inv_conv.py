"""Invertible 1x1 convolution on a (x_change, x_id) pair (Glow, Kingma & Dhariwal 2018; as in the official Flow++ code).

W is 2c x 2c, initialised to I + 1e-3 N(0,1) (reference `random_init=False`), with no LU
parametrisation. The 1x1 conv mixes the two halves of the pair. The reverse uses W^-1
computed in float64 and cast back, as the reference does, to keep sampling accurate.
"""
from __future__ import annotations

from typing import Tuple

import paddle
import paddle.nn as nn
import paddle.nn.functional as F

Pair = Tuple[paddle.Tensor, paddle.Tensor]


def log_abs_det(weight: paddle.Tensor) -> paddle.Tensor:
    """log |det W| of a square matrix [n, n], as a 0-d tensor.

    slogdet returns [sign, log|det|]; while tracing, Paddle 3.3.1 declares its output with the input's
    shape [n, n] instead of [2] (docs/paddle_notes.md, "slogdet's declared shape while tracing").
    Flattening before indexing picks log|det| under either declared shape, with the eager value's bits.
    """
    return paddle.linalg.slogdet(weight).reshape([-1])[1]


class InvConv(nn.Layer):
    """Args: num_channels: channels of ONE half of the pair (W is 2c x 2c)."""

    def __init__(self, num_channels: int):
        super().__init__()
        self.num_channels = 2 * num_channels
        c = self.num_channels
        self.weight = self.create_parameter([c, c])
        with paddle.no_grad():
            self.weight.set_value(paddle.eye(c) + 1e-3 * paddle.randn([c, c]))

    def forward(self, x: Pair, sldj: paddle.Tensor, reverse: bool = False) -> Tuple[Pair, paddle.Tensor]:
        """x: pair of [N, c, H, W]; sldj: [N]."""
        h = paddle.concat(x, axis=1)
        ldj = log_abs_det(self.weight) * (h.shape[2] * h.shape[3])
        if reverse:
            weight = paddle.linalg.inv(self.weight.astype("float64")).astype(h.dtype)
            sldj = sldj - ldj
        else:
            weight = self.weight
            sldj = sldj + ldj
        h = F.conv2d(h, weight.reshape([self.num_channels, self.num_channels, 1, 1]))
        return tuple(paddle.chunk(h, 2, axis=1)), sldj
