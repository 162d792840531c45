"""Glow-style ActNorm acting on a (x_change, x_id) pair (Glow; as in the official Flow++ code).

The pair is concatenated on channels, so ActNorm(c) has 2c channels. Parameters `mean`
and `inv_std` ([1, 2c, 1, 1]) start at zero and are set from data on the first call in
train mode (§1.10); `inv_std` is used raw (no log-parametrisation), as in the reference.
The persistable buffer `is_initialized` travels in the state_dict, so a loaded checkpoint
is never re-initialised.
"""
from __future__ import annotations

from typing import Tuple

import paddle
import paddle.nn as nn

Pair = Tuple[paddle.Tensor, paddle.Tensor]


class ActNorm(nn.Layer):
    """Per-channel affine normalisation y = (x - mean) * inv_std.

    Args:
        num_channels: channels of ONE half of the pair (the layer acts on 2x that).
        eps: added to the biased std at init (reference: 1e-6).
    """

    def __init__(self, num_channels: int, eps: float = 1e-6):
        super().__init__()
        c = 2 * num_channels
        zeros = nn.initializer.Constant(0.0)
        self.mean = self.create_parameter([1, c, 1, 1], default_initializer=zeros)
        self.inv_std = self.create_parameter([1, c, 1, 1], default_initializer=zeros)
        self.register_buffer("is_initialized", paddle.zeros([1]), persistable=True)
        self.eps = eps

    @property
    def initialized(self) -> bool:
        return bool(self.is_initialized.item() > 0)

    @paddle.no_grad()
    def initialize_parameters(self, x: paddle.Tensor) -> None:
        """Data init from x [N, 2c, H, W]: mean and 1/(biased std + eps) per channel."""
        mean = x.mean(axis=[0, 2, 3], keepdim=True)
        var = ((x - mean) ** 2).mean(axis=[0, 2, 3], keepdim=True)
        self.mean.set_value(mean.astype(self.mean.dtype))
        self.inv_std.set_value((1.0 / (var.sqrt() + self.eps)).astype(self.inv_std.dtype))
        self.is_initialized.set_value(paddle.ones_like(self.is_initialized))

    def forward(self, x: Pair, sldj: paddle.Tensor, reverse: bool = False) -> Tuple[Pair, paddle.Tensor]:
        """x: pair of [N, c, H, W]; sldj: [N]. Returns the transformed pair and updated sldj."""
        h = paddle.concat(x, axis=1)
        # Reference behaviour: initialise on the first train-mode call, in either direction.
        if self.training and not self.initialized:
            self.initialize_parameters(h)
        ldj = paddle.log(self.inv_std).sum() * (h.shape[2] * h.shape[3])
        # [C, 1, 1] operands: Paddle broadcasts [1, C, 1, 1] ~10x slower (docs/paddle_notes.md,
        # "Slow broadcasts and reductions along inner axes").
        mean, inv_std = self.mean.reshape([-1, 1, 1]), self.inv_std.reshape([-1, 1, 1])
        if reverse:
            h = h / inv_std + mean
            sldj = sldj - ldj
        else:
            h = (h - mean) * inv_std
            sldj = sldj + ldj
        return tuple(paddle.chunk(h, 2, axis=1)), sldj
