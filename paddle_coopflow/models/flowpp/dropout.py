"""Element-wise dropout with Paddle's semantics and a faster mask on CPU (the attention-weight dropout).

`F.dropout(x, p, training=True)` returns x * m / (1 - p) with m ~ Bernoulli(1 - p) per element. Paddle's CPU
kernel calls its generator once per element: 62 ms for the 4.2M attention weights of one paper-config
GatedAttn at batch 4, about a quarter of a Flow++ training pass (PyTorch's CPU `bernoulli_` is as slow;
docs/speed.md, "Where the flow's time goes"). `dropout` draws the same distribution faster:

* one int64 seed per call from Paddle's generator, so `paddle.seed`, the RNG state a checkpoint stores (exact
  resume) and the RNG replay of `paddle.distributed.fleet.utils.recompute` fix the masks as they fix Paddle's
  own;
* 32 random bits per element from numpy's PCG64 seeded with it (`bit_generator.random_raw`, 12 ms for 4.2M
  elements); an element is kept where its bits are >= round(p * 2**32), i.e. with probability
  1 - round(p * 2**32) / 2**32 (1 - p to 2.3e-10);
* the mask, 0 or 1 / (1 - p) in x's dtype, enters Paddle without a copy (DLPack), and the backward multiplies
  the output gradient by it (`_MaskMultiply`): 11 ms forward + backward against 20 ms for `x * mask` through
  autograd, which also forms the gradient of the mask.

Elsewhere (a GPU tensor; a static program, where numpy cannot run) it is `F.dropout` itself.
"""
from __future__ import annotations

import numpy as np
import paddle
import paddle.nn.functional as F
from paddle.autograd import PyLayer
from paddle.utils.dlpack import from_dlpack


class _MaskMultiply(PyLayer):
    """x * mask, gradient g * mask for x only (the mask is a constant)."""

    @staticmethod
    def forward(ctx, x: paddle.Tensor, mask: paddle.Tensor) -> paddle.Tensor:
        ctx.save_for_backward(mask)
        return x * mask

    @staticmethod
    def backward(ctx, grad: paddle.Tensor) -> paddle.Tensor:
        (mask,) = ctx.saved_tensor()
        return grad * mask


def keep_threshold(p: float) -> int:
    """The 32-bit threshold: an element is kept where its random bits are >= this (probability 1 - t / 2**32)."""
    return int(round(p * 2 ** 32))


def scaled_keep_mask(shape, p: float, seed: int, dtype) -> np.ndarray:
    """Mask of `shape`: 1 / (1 - p) where kept, 0 where dropped, from PCG64(seed), 32 bits per element."""
    n = int(np.prod(shape))
    bits = np.random.PCG64(seed).random_raw((n + 1) // 2).view(np.uint32)[:n]
    keep = bits >= np.uint32(keep_threshold(p))
    return np.multiply(keep, 1.0 / (1.0 - p), dtype=dtype).reshape(shape)


def _draw_seed() -> int:
    """One 62-bit seed from Paddle's generator: two draws in [0, 2**31 - 1) (randint's bounds are int32)."""
    hi, lo = paddle.randint(0, 2 ** 31 - 1, [2], dtype="int64").numpy().tolist()
    return (hi << 31) | lo


def dropout(x: paddle.Tensor, p: float, training: bool = True) -> paddle.Tensor:
    """Dropout of single elements (F.dropout's 'upscale_in_train' semantics): x * m / (1 - p) in training."""
    if not training or p == 0.0:
        return x
    if p >= 1.0:
        return x * 0.0
    if not (paddle.in_dynamic_mode() and x.place.is_cpu_place()):
        return F.dropout(x, p=p, training=True)
    mask = scaled_keep_mask(x.shape, p, _draw_seed(), np.dtype(str(x.dtype).replace("paddle.", "")))
    return _MaskMultiply.apply(x, from_dlpack(mask))
