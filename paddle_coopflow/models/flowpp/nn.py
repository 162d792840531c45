"""Conditioning network of the Flow++ couplings (Ho et al. 2019, Sec. 3.3; the official CoopFlow code's `NN`).

NN(x_id[, aux]) -> (a, b, pi, mu, log_s): in_conv -> num_blocks x ConvAttnBlock -> out_conv,
then a per-element split into 2 + 3K slots. Submodule names mirror the reference PyTorch
model so a checkpoint converter is a rename-free mapping (e.g. `nn.in_conv.conv.weight_g`,
`nn.mid_convs.0.attn.in_proj.weight_v`; only Linear weights need a transpose).
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from .dropout import dropout
from .weight_norm import WeightNormConv2D, WeightNormLinear, weight_norm_weight


def concat_elu(x: paddle.Tensor, axis: int = 1) -> paddle.Tensor:
    """ELU(cat[x, -x]) along `axis`: keeps both signs' information (doubles the channels)."""
    return F.elu(paddle.concat([x, -x], axis=axis))


class WNConv2d(nn.Layer):
    """Weight-normed conv; the inner `conv` level only mirrors the reference key layout."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, padding: int):
        super().__init__()
        self.conv = WeightNormConv2D(in_channels, out_channels, kernel_size, padding=padding)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        return self.conv(x)


class Rescale(nn.Layer):
    """Per-channel scale w * x with w weight-normed: w_c = g_c * v_c / |v_c| = g_c * sign(v_c).

    weight_g, weight_v: [C, 1, 1], both initialised to 1 (g = ||v|| = 1).
    """

    def __init__(self, num_channels: int):
        super().__init__()
        ones = nn.initializer.Constant(1.0)
        self.weight_v = self.create_parameter([num_channels, 1, 1], default_initializer=ones)
        self.weight_g = self.create_parameter([num_channels, 1, 1], default_initializer=ones)

    @property
    def weight(self) -> paddle.Tensor:
        return weight_norm_weight(self.weight_g, self.weight_v, (1, 2))

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        """x: [N, C, H, W] -> [N, C, H, W]."""
        return self.weight * x


class GatedConv(nn.Layer):
    """concat_elu -> WN conv3x3 (+ WN conv1x1 of concat_elu(aux)) -> concat_elu -> Dropout2d -> WN conv1x1 -> GLU.

    No internal residual (it lives in ConvAttnBlock). x: [N, C, H, W], aux: [N, A, H, W] -> [N, C, H, W].
    """

    def __init__(self, num_channels: int, drop_prob: float = 0.0, aux_channels: Optional[int] = None):
        super().__init__()
        self.conv = WNConv2d(2 * num_channels, num_channels, kernel_size=3, padding=1)
        self.drop = nn.Dropout2D(drop_prob)  # drops whole channels
        self.gate = WNConv2d(2 * num_channels, 2 * num_channels, kernel_size=1, padding=0)
        self.aux_conv = (WNConv2d(2 * aux_channels, num_channels, kernel_size=1, padding=0)
                         if aux_channels is not None else None)

    def forward(self, x: paddle.Tensor, aux: Optional[paddle.Tensor] = None) -> paddle.Tensor:
        x = self.conv(concat_elu(x))
        if aux is not None:
            x = x + self.aux_conv(concat_elu(aux))
        x = self.gate(self.drop(concat_elu(x)))
        a, b = paddle.chunk(x, 2, axis=1)
        return a * F.sigmoid(b)


def positional_encoding(seq_len: int, num_channels: int, dtype) -> paddle.Tensor:
    """Sinusoidal encoding [1, L, C]: [sin(p * inv_ts), cos(p * inv_ts)] concatenated, zero-padded if C is odd.

    inv_ts_i = exp(-i * ln(1e4) / (n - 1)), n = C // 2 timescales.
    """
    n = num_channels // 2
    position = paddle.arange(seq_len, dtype=dtype).unsqueeze(1)
    increment = math.log(1e4) / max(n - 1, 1)
    inv_timescales = paddle.exp(paddle.arange(n, dtype=dtype) * -increment).unsqueeze(0)
    scaled = position * inv_timescales
    enc = paddle.concat([paddle.sin(scaled), paddle.cos(scaled)], axis=1)
    if num_channels % 2:
        enc = paddle.concat([enc, paddle.zeros([seq_len, 1], dtype=dtype)], axis=1)
    return enc.unsqueeze(0)


class GatedAttn(nn.Layer):
    """Multi-head self-attention over all pixels, then a WN-Linear GLU gate.

    x: [N, H, W, C] (NHWC) -> [N, H, W, C]. Attention-weight dropout only in training.
    """

    def __init__(self, d_model: int, num_heads: int = 4, drop_prob: float = 0.0):
        super().__init__()
        if d_model % num_heads:
            raise ValueError(f"mid_channels={d_model} must be divisible by the {num_heads} attention heads")
        self.d_model = d_model
        self.num_heads = num_heads
        self.drop_prob = drop_prob
        self.in_proj = WeightNormLinear(d_model, 3 * d_model, bias=False)
        self.gate = WeightNormLinear(d_model, 2 * d_model)

    def _split_heads(self, t: paddle.Tensor) -> paddle.Tensor:
        n, length, c = t.shape
        return t.reshape([n, length, self.num_heads, c // self.num_heads]).transpose([0, 2, 1, 3])

    def register_encoding_buffer(self, length: int, dtype) -> None:
        """Keep positional_encoding(length) as a non-persistable buffer (not in the state_dict), for
        forward(cached_encoding=True): inside a oneDNN static program the computed encoding comes out
        wrong (docs/paddle_notes.md, "Positional encoding inside a oneDNN program")."""
        with paddle.no_grad():
            self.register_buffer(f"pos_enc_{length}", positional_encoding(length, self.d_model, dtype),
                                 persistable=False)

    def _encoding(self, length: int, dtype, cached: bool) -> paddle.Tensor:
        pe = self._buffers.get(f"pos_enc_{length}") if cached else None
        if pe is not None and pe.dtype == dtype:
            return pe
        return positional_encoding(length, self.d_model, dtype)

    def forward(self, x: paddle.Tensor, cached_encoding: bool = False) -> paddle.Tensor:
        """x [N, H, W, C]; cached_encoding: read the positional encoding from register_encoding_buffer's buffer."""
        n, h, w, c = x.shape
        x = x.reshape([n, h * w, c]) + self._encoding(h * w, x.dtype, cached_encoding)
        proj = self.in_proj(x)
        # Reference layout: first 2C outputs are "memory" = (k, v), last C are q.
        k, v, q = paddle.split(proj, [c, c, c], axis=-1)
        q = q * (c // self.num_heads) ** -0.5  # scale before the head split: contiguous, cheaper
        q, k, v = self._split_heads(q), self._split_heads(k), self._split_heads(v)
        weights = F.softmax(paddle.matmul(q, k, transpose_y=True), axis=-1)
        weights = dropout(weights, self.drop_prob, self.training)   # faster masks on CPU (dropout.py)
        out = paddle.matmul(weights, v)                      # [N, heads, L, depth]
        out = out.transpose([0, 2, 1, 3]).reshape([n, h, w, c])
        a, b = paddle.chunk(self.gate(out), 2, axis=-1)
        return a * F.sigmoid(b)


class ConvAttnBlock(nn.Layer):
    """h = LN(GatedConv(h, aux) + h); if attn: h = LN(GatedAttn(h) + h). LayerNorms act over channels (NHWC).

    x: [N, C, H, W] -> [N, C, H, W].
    """

    def __init__(self, num_channels: int, drop_prob: float, use_attn: bool, aux_channels: Optional[int]):
        super().__init__()
        self.conv = GatedConv(num_channels, drop_prob, aux_channels)
        self.norm_1 = nn.LayerNorm(num_channels, epsilon=1e-5)
        if use_attn:
            self.attn = GatedAttn(num_channels, drop_prob=drop_prob)
            self.norm_2 = nn.LayerNorm(num_channels, epsilon=1e-5)
        else:
            self.attn = None

    def forward(self, x: paddle.Tensor, aux: Optional[paddle.Tensor] = None,
                cached_encoding: bool = False) -> paddle.Tensor:
        x = self.conv(x, aux) + x
        x = self.norm_1(x.transpose([0, 2, 3, 1]))
        if self.attn is not None:
            x = self.norm_2(self.attn(x, cached_encoding) + x)
        return x.transpose([0, 3, 1, 2])


class NN(nn.Layer):
    """Coupling conditioner.

    Args:
        in_channels: channels of x_id (= channels of x_change).
        mid_channels: hidden width (96 in the reference).
        num_blocks: ConvAttnBlocks.
        num_components: K logistic components.
        drop_prob: Dropout2d / attention dropout.
        use_attn: attention in every block.
        aux_channels: channels of the aux features (dequant flow), else None.
    Shapes: x [N, C, H, W] -> a, b: [N, C, H, W]; pi, mu, log_s: [N, K, C, H, W].
    """

    def __init__(self, in_channels: int, mid_channels: int, num_blocks: int, num_components: int,
                 drop_prob: float, use_attn: bool = True, aux_channels: Optional[int] = None):
        super().__init__()
        self.k = num_components
        self.in_conv = WNConv2d(in_channels, mid_channels, kernel_size=3, padding=1)
        self.mid_convs = nn.LayerList([ConvAttnBlock(mid_channels, drop_prob, use_attn, aux_channels)
                                       for _ in range(num_blocks)])
        self.out_conv = WNConv2d(mid_channels, in_channels * (2 + 3 * num_components), kernel_size=3, padding=1)
        self.rescale = Rescale(in_channels)

    def register_encoding_buffers(self, length: int, dtype) -> None:
        """GatedAttn.register_encoding_buffer for every attention layer (before tracing a static program)."""
        for m in self.sublayers():
            if isinstance(m, GatedAttn):
                m.register_encoding_buffer(length, dtype)

    def forward(self, x: paddle.Tensor, aux: Optional[paddle.Tensor] = None,
                cached_encoding: bool = False) -> Tuple[paddle.Tensor, ...]:
        """cached_encoding: attention reads its positional encoding from the buffers of
        register_encoding_buffers (the static coupling program, paddle_coopflow/accel/coupling.py)."""
        n, c, h, w = x.shape
        x = self.in_conv(x)
        for block in self.mid_convs:
            x = block(x, aux, cached_encoding)
        x = self.out_conv(x)
        # Component-major channel layout: slot j, input channel c -> j * C + c.
        x = x.reshape([n, 2 + 3 * self.k, c, h, w])
        a, b, pi, mu, log_s = paddle.split(x, [1, 1, self.k, self.k, self.k], axis=1)
        a = self.rescale(paddle.tanh(a.squeeze(1)))
        log_s = paddle.clip(log_s, min=-7.0)  # reference guard; upper side unclamped
        return a, b.squeeze(1), pi, mu, log_s
