"""Dequantization: variational (Flow++, Ho et al. 2019, Sec. 3.2) or uniform.

Variational: eps ~ N(0, I) is pushed through a small conditional flow h = f(eps; x) and
u = sigmoid(h) in (0,1)^D. The returned sldj term is -log q(u|x) = -log N(eps) + log|dh/deps|
+ sum log sigma'(h), so that the flow likelihood bounds log P(x) (variational dequantization).
Output y = (255 x + u) / 256 for x in [0, 1].
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from .act_norm import ActNorm
from .coupling import Coupling, Flip, run_step
from .inv_conv import InvConv
from .mixture import safe_log
from .nn import GatedConv
from .splits import checkerboard, checkerboard_inverse
from .weight_norm import torch_default_attr


def uniform_dequantize(x: paddle.Tensor, noise: Optional[paddle.Tensor] = None) -> paddle.Tensor:
    """y = (255 x + u) / 256, u ~ U(0,1) (or `noise`); no sldj term. x: [N,C,H,W] in [0,1]."""
    u = paddle.rand(x.shape, dtype=x.dtype) if noise is None else noise
    return (x * 255.0 + u) / 256.0


class Dequantization(nn.Layer):
    """Variational dequantization flow: num_flows x [ActNorm, InvConv, Coupling(aux), Flip].

    Args:
        in_shape: (C, H, W) of the image.
        mid_channels, num_blocks, num_components, use_attn, drop_prob: coupling NN settings.
        num_flows: coupling steps (reference: 4, hard-coded).
        aux_channels: width of the conditioning features (reference: 32, hard-coded).
    """

    def __init__(self, in_shape: Tuple[int, int, int], mid_channels: int, num_blocks: int, num_components: int,
                 use_attn: bool, drop_prob: float, num_flows: int = 4, aux_channels: int = 32,
                 inverse_method: str = "newton"):
        super().__init__()
        in_channels = in_shape[0]
        fan_in = 2 * in_channels * 9
        self.aux_conv = nn.Sequential(
            nn.Conv2D(2 * in_channels, aux_channels, 3, padding=1,
                      weight_attr=torch_default_attr(fan_in), bias_attr=torch_default_attr(fan_in)),
            *[GatedConv(aux_channels, drop_prob) for _ in range(3)])  # in sequence, no residuals
        flows = []
        for _ in range(num_flows):
            flows += [ActNorm(in_channels), InvConv(in_channels),
                      Coupling(in_channels, mid_channels, num_blocks, num_components, drop_prob,
                               use_attn=use_attn, aux_channels=aux_channels, inverse_method=inverse_method),
                      Flip()]
        self.flows = nn.LayerList(flows)
        self.recompute = False  # set by FlowPlusPlus.set_recompute

    def forward(self, x: paddle.Tensor, sldj: paddle.Tensor,
                eps: Optional[paddle.Tensor] = None) -> Tuple[paddle.Tensor, paddle.Tensor]:
        """x: [N,C,H,W] in [0,1]; sldj: [N]; eps: optional fixed N(0,I) draw (for tests).

        Returns y = (255 x + u)/256 and sldj + (-log q(u|x)) summed per image.
        """
        if eps is None:
            eps = paddle.randn(x.shape, dtype=x.dtype)
        eps_nll = 0.5 * (eps ** 2 + math.log(2 * math.pi))

        aux = self.aux_conv(paddle.concat(checkerboard(x - 0.5), axis=1))
        h = checkerboard(eps)
        layers = list(self.flows)
        for i in range(0, len(layers), 4):
            h, sldj = run_step(layers[i:i + 4], h, sldj, aux=aux, recompute=self.recompute)
        u = F.sigmoid(checkerboard_inverse(h))

        sigmoid_ldj = safe_log(u) + safe_log(1.0 - u)
        sldj = sldj + (eps_nll + sigmoid_ldj).reshape([x.shape[0], -1]).sum(axis=1)
        return (x * 255.0 + u) / 256.0, sldj
