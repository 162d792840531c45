"""The random draws of one training iteration, for one process or one rank of a data-parallel run.

A training iteration draws three kinds of noise per sample: the flow's latent code z (the proposal),
the Langevin noise ε (when Langevin.noise_mode is on) and the dequantization noise of the flow's
likelihood. With data parallelism every rank seeds the same stream, draws each of them for the
whole global batch and keeps its own rows. Rank r then uses exactly the numbers a single process
running the global batch would use for those rows, so W ranks × B images reproduce 1 process × W·B
images up to the order of floating-point sums (tests/test_distributed.py checks it).

Dropout masks are the exception: they are drawn inside the networks for the local batch. Ranks
stay in step with each other, but a run with dropout differs from the single-process run of the
same global batch.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import paddle

__all__ = ["Shard", "draw"]


@dataclass(frozen=True)
class Shard:
    """Where this process's samples sit in the global batch.

    Args:
        sizes: per-rank batch sizes of the current global batch (one entry per rank, in rank order).
        rank: this process's rank.
    """
    sizes: Sequence[int] = (0,)
    rank: int = 0

    @classmethod
    def single(cls, n: int) -> "Shard":
        """One process holding the whole batch of n."""
        return cls((int(n),), 0)

    def rows(self, n: int):
        """(start, total): this rank's n draws are rows [start, start + n) of a draw of `total` rows.

        When n is this rank's batch size the global batch is the concatenation of the ranks'
        batches; any other n (e.g. a fixed number of proposals per rank) is taken as n per rank.
        """
        if n == self.sizes[self.rank]:
            return sum(self.sizes[:self.rank]), sum(self.sizes)
        return self.rank * n, len(self.sizes) * n


def draw(kind: str, shape: Sequence[int], shard: Shard, axis: int = 0) -> paddle.Tensor:
    """`shape`-shaped noise: 'normal' N(0, 1), 'uniform01' U(0, 1) or 'uniform' U(-1, 1).

    The draw covers the global batch along `axis` and returns this rank's rows; with one process
    it is the plain ``paddle.randn(shape)`` / ``paddle.rand(shape)`` / ``paddle.uniform(shape)``.
    """
    shape = [int(s) for s in shape]
    start, total = shard.rows(shape[axis])
    full = list(shape)
    full[axis] = total
    if kind == "normal":
        out = paddle.randn(full, dtype="float32")
    elif kind == "uniform01":
        out = paddle.rand(full, dtype="float32")
    elif kind == "uniform":
        out = paddle.uniform(full, min=-1.0, max=1.0)
    else:
        raise ValueError(f"noise kind {kind!r}: expected 'normal', 'uniform01' or 'uniform'")
    if total == shape[axis]:
        return out
    return paddle.slice(out, axes=[axis], starts=[start], ends=[start + shape[axis]])
