"""Epoch batch sampler whose output is a pure function of (seed, epoch).

Order: `np.random.default_rng([seed, epoch, 0]).permutation(N)` when shuffling, else
0..N-1. Flips: sample i is flipped iff `default_rng([seed, epoch, 1]).random(N)[i] < 0.5`,
independent of rank, world size, batch size and position, so the same (seed, epoch) always
gives the same augmented data. (Seeding with the tuple rather than seed + epoch keeps
(seed 0, epoch 1) and (seed 1, epoch 0) apart.)

Sharding for data-parallel training: the order is cut into *global* batches of
batch_size × world_size consecutive indices, and rank r takes the r-th slice of
batch_size from each. Every rank therefore runs the same number of iterations,
⌈N / (B·W)⌉ (or ⌊·⌋ with drop_last), and the shards are disjoint and cover the epoch.
The final partial global batch (rem = N mod B·W items, kept unless drop_last) is split
into W contiguous near-equal parts (np.array_split), so the last per-rank batches can be
smaller than B and differ by one item. If rem < W, the tail is padded cyclically with the
first items of the epoch's order so every rank gets one sample (W - rem duplicates; the
only case where shards overlap). With world_size 1 this is plain ⌈N/B⌉ batches with a
partial last batch, as in the official code (CIFAR, B = 28: 1,786 batches, the last of 20).

Resume: `start_batch=k` skips this rank's first k batches of the epoch; the remaining
batches are identical to those of an uninterrupted epoch.
"""
from __future__ import annotations

from typing import Iterator, List, Optional, Union

import numpy as np


def epoch_order(n: int, seed: int, epoch: int, shuffle: bool) -> np.ndarray:
    """Index order int64 [n] of an epoch."""
    if not shuffle:
        return np.arange(n, dtype=np.int64)
    return np.random.default_rng([seed, epoch, 0]).permutation(n).astype(np.int64)


def epoch_flips(n: int, seed: int, epoch: int) -> np.ndarray:
    """Flip decision bool [n] per dataset index for an epoch (p = 0.5)."""
    return np.random.default_rng([seed, epoch, 1]).random(n) < 0.5


class EpochBatchSampler:
    """Batches of dataset keys for one epoch on one rank.

    Yields lists of keys: plain int indices, or (index, flip) tuples when `hflip`.

    Args:
        n: dataset size (> 0).
        batch_size: per-rank batch size B.
        shuffle: permute the epoch (otherwise dataset order).
        seed: non-negative data seed.
        epoch: non-negative epoch number.
        start_batch: number of this rank's batches to skip (resume point).
        drop_last: drop the final partial global batch.
        rank, world_size: data-parallel position.
        hflip: attach per-sample flip decisions.
    """

    def __init__(self, n: int, batch_size: int, shuffle: bool, seed: int, epoch: int,
                 start_batch: int = 0, drop_last: bool = False, rank: int = 0,
                 world_size: int = 1, hflip: bool = False):
        if n <= 0:
            raise ValueError(f"cannot sample from an empty dataset (n={n})")
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if seed < 0 or epoch < 0:
            raise ValueError(f"seed and epoch must be >= 0, got seed={seed}, epoch={epoch}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        self.n, self.batch_size = int(n), int(batch_size)
        self.shuffle, self.seed, self.epoch = bool(shuffle), int(seed), int(epoch)
        self.drop_last, self.rank, self.world_size = bool(drop_last), int(rank), int(world_size)
        self.hflip = bool(hflip)
        g = self.batch_size * self.world_size
        self.num_batches = self.n // g + (0 if drop_last or self.n % g == 0 else 1)
        if not 0 <= start_batch <= self.num_batches:
            raise ValueError(f"start_batch {start_batch} outside 0..{self.num_batches} "
                             f"(batches per epoch on this rank)")
        self.start_batch = int(start_batch)

    def __len__(self) -> int:
        """Number of batches still to come (num_batches - start_batch)."""
        return self.num_batches - self.start_batch

    def index_batches(self) -> List[np.ndarray]:
        """This rank's remaining batches as int64 index arrays."""
        order = epoch_order(self.n, self.seed, self.epoch, self.shuffle)
        b, w = self.batch_size, self.world_size
        g = b * w
        full = self.n // g
        out = []
        for k in range(self.start_batch, self.num_batches):
            if k < full:
                start = k * g + self.rank * b
                out.append(order[start:start + b])
            else:  # the final partial global batch
                rem = self.n - full * g
                tail = order[np.arange(full * g, full * g + max(rem, w)) % self.n]
                out.append(np.array_split(tail, w)[self.rank])
        return out

    def __iter__(self) -> Iterator[List[Union[int, tuple]]]:
        flips: Optional[np.ndarray] = epoch_flips(self.n, self.seed, self.epoch) if self.hflip else None
        for idx in self.index_batches():
            if flips is None:
                yield [int(i) for i in idx]
            else:
                yield [(int(i), bool(flips[i])) for i in idx]
