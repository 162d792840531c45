"""Element-wise dropout with Paddle's semantics and a faster mask on CPU (the attention-weight dropout).

`F.dropout(x, p, training=True)` returns x * m / (1 - p) with m ~ Bernoulli(1 - p) per element. Paddle's CPU
kernel calls its generator once per element, which makes the dropout of the paper-config attention weights a
large part of a Flow++ training pass (PyTorch's CPU `bernoulli_` is as slow; docs/speed.md, "Where the flow's
time goes"). `dropout` draws the same distribution faster:

* one int64 seed per call from Paddle's generator, so `paddle.seed`, the RNG state a checkpoint stores (exact
  resume) and the RNG replay of `paddle.distributed.fleet.utils.recompute` fix the masks as they fix Paddle's
  own;
* 32 random bits per element from numpy's PCG64 seeded with it (`bit_generator.random_raw`; each half of the
  elements from its own stream, made in two threads); an element is kept where its bits are
  >= round(p * 2**32), i.e. with probability 1 - round(p * 2**32) / 2**32 (1 - p to 2.3e-10);
* the boolean mask is what the backward keeps (one byte per element, like Paddle's dropout); each direction
  multiplies in numpy on the tensor's buffer, shared with Paddle without a copy (DLPack), in two threads.

Elsewhere (a GPU tensor; a static program, where numpy cannot run; dtypes other than float32/float64) it is
`F.dropout` itself.
"""
from __future__ import annotations

import threading
from typing import Callable

import numpy as np
import paddle
import paddle.nn.functional as F
from paddle.autograd import PyLayer
from paddle.utils.dlpack import from_dlpack


PARALLEL_MIN = 2 ** 18   # elements from which a mask is made in two threads


class _Dropout(PyLayer):
    """x * m / (1 - p) for a numpy keep-mask m; the gradient g * m / (1 - p) for x.

    The context keeps the boolean mask (one byte per element, as Paddle's dropout keeps its mask). Both
    directions multiply in numpy on the tensor's buffer (DLPack, no copy), in two threads: Paddle's CPU
    multiply runs on one.
    """

    @staticmethod
    def forward(ctx, x: paddle.Tensor, keep: np.ndarray, scale: float) -> paddle.Tensor:
        ctx.keep, ctx.scale = keep, scale
        return _masked(x, keep, scale)

    @staticmethod
    def backward(ctx, grad: paddle.Tensor) -> paddle.Tensor:
        return _masked(grad, ctx.keep, ctx.scale)


def _masked(t: paddle.Tensor, keep: np.ndarray, scale: float) -> paddle.Tensor:
    """t * keep * scale (t's dtype) as a Paddle tensor on a numpy buffer: t where kept times scale, 0 elsewhere."""
    src = np.ascontiguousarray(np.from_dlpack(t.detach())).reshape(-1)
    flat_keep, out = keep.reshape(-1), np.empty_like(src)

    def fill(lo: int, hi: int) -> None:
        np.multiply(src[lo:hi], flat_keep[lo:hi], out=out[lo:hi])
        np.multiply(out[lo:hi], scale, out=out[lo:hi])

    _in_halves(fill, src.size)
    return from_dlpack(out.reshape(keep.shape))


def _in_halves(fill: Callable[[int, int], object], n: int) -> None:
    """fill(0, h) and fill(h, n), h = ceil(n / 2); in two threads when n >= PARALLEL_MIN (numpy's random_raw and
    ufuncs release the GIL, so the halves run in parallel). The halves are fixed, so results do not depend on
    whether threads ran."""
    h = (n + 1) // 2
    if n < PARALLEL_MIN:
        fill(0, h)
        fill(h, n)
        return
    worker = threading.Thread(target=fill, args=(h, n))
    worker.start()
    fill(0, h)
    worker.join()


def keep_threshold(p: float) -> int:
    """The 32-bit threshold: an element is kept where its random bits are >= this (probability 1 - t / 2**32)."""
    return int(round(p * 2 ** 32))


def keep_mask(shape, p: float, seed: int) -> np.ndarray:
    """Boolean mask of `shape`, True where kept: 32 random bits per element, the first half of the elements
    from PCG64 with the first child seed of SeedSequence(seed), the second half from the second."""
    n = int(np.prod(shape))
    keep = np.empty(n, dtype=bool)
    streams = [np.random.PCG64(s) for s in np.random.SeedSequence(seed).spawn(2)]
    threshold = np.uint32(keep_threshold(p))

    def fill(lo: int, hi: int) -> None:
        bits = streams[0 if lo == 0 else 1].random_raw((hi - lo + 1) // 2).view(np.uint32)[:hi - lo]
        np.greater_equal(bits, threshold, out=keep[lo:hi])

    _in_halves(fill, n)
    return keep.reshape(shape)


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
    if not (paddle.in_dynamic_mode() and x.place.is_cpu_place() and x.dtype in (paddle.float32, paddle.float64)):
        return F.dropout(x, p=p, training=True)   # numpy has no bfloat16; GPU tensors stay on the GPU
    return _Dropout.apply(x, keep_mask(x.shape, p, _draw_seed()), 1.0 / (1.0 - p))
