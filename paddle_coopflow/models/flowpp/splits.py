"""Pair splits and squeezing with the official Flow++ code's index conventions.

checkerboard: pixel (i, j) goes to the first half when i % 2 == j % 2, else to the second;
  each half is gathered in raster order and reshaped to [N, C, H, W/2] (rows are collapsed
  horizontally). So half_1[i, k] = x[i, 2k + i%2] and half_2[i, k] = x[i, 2k + 1 - i%2].
channelwise: first C/2 channels | remaining channels.
squeeze: [N,C,H,W] -> [N,4C,H/2,W/2], new channel 4c + 2*di + dj.
"""
from __future__ import annotations

from typing import Tuple

import paddle

Pair = Tuple[paddle.Tensor, paddle.Tensor]


def _even_rows(h: int) -> paddle.Tensor:
    """[H, 1] bool mask, True on even rows (where the first half takes the even columns)."""
    return (paddle.arange(h) % 2 == 0).reshape([h, 1])


def checkerboard(x: paddle.Tensor) -> Pair:
    """[N,C,H,W] -> two halves [N,C,H,W/2]. W must be even."""
    n, c, h, w = x.shape
    if w % 2 != 0:
        raise ValueError(f"checkerboard needs an even width, got {w}; use an even image width")
    cols = x.reshape([n, c, h, w // 2, 2])
    even_cols, odd_cols = cols[..., 0], cols[..., 1]
    rows = _even_rows(h)
    return paddle.where(rows, even_cols, odd_cols), paddle.where(rows, odd_cols, even_cols)


def checkerboard_inverse(x: Pair) -> paddle.Tensor:
    """Two halves [N,C,H,W/2] -> [N,C,H,W]; exact inverse of `checkerboard`."""
    first, second = x
    n, c, h, half_w = first.shape
    rows = _even_rows(h)
    even_cols = paddle.where(rows, first, second)
    odd_cols = paddle.where(rows, second, first)
    return paddle.stack([even_cols, odd_cols], axis=-1).reshape([n, c, h, 2 * half_w])


def channelwise(x: paddle.Tensor) -> Pair:
    """[N,C,H,W] -> ([N,C/2,H,W], [N,C/2,H,W]). C must be even."""
    if x.shape[1] % 2 != 0:
        raise ValueError(f"channel-wise split needs an even channel count, got {x.shape[1]}")
    return tuple(paddle.chunk(x, 2, axis=1))


def channelwise_inverse(x: Pair) -> paddle.Tensor:
    """Exact inverse of `channelwise`."""
    return paddle.concat(x, axis=1)


def squeeze(x: paddle.Tensor) -> paddle.Tensor:
    """Space-to-depth: [N,C,H,W] -> [N,4C,H/2,W/2], channel index 4c + 2*di + dj."""
    n, c, h, w = x.shape
    if h % 2 != 0 or w % 2 != 0:
        raise ValueError(f"squeeze needs even height and width, got {h}x{w}")
    x = x.reshape([n, c, h // 2, 2, w // 2, 2]).transpose([0, 1, 3, 5, 2, 4])
    return x.reshape([n, 4 * c, h // 2, w // 2])


def unsqueeze(x: paddle.Tensor) -> paddle.Tensor:
    """Exact inverse of `squeeze`: [N,4C,H,W] -> [N,C,2H,2W]."""
    n, c4, h, w = x.shape
    c = c4 // 4
    x = x.reshape([n, c, 2, 2, h, w]).transpose([0, 1, 4, 2, 5, 3])
    return x.reshape([n, c, 2 * h, 2 * w])
