"""One epoch of (x, y) batches, identical with or without worker processes."""
from __future__ import annotations

from typing import Iterator, Sequence, Tuple

import numpy as np
import paddle

from .base import ImageDataset
from .sampler import EpochBatchSampler


def collate(items: Sequence[Tuple[np.ndarray, np.int64]]) -> Tuple[np.ndarray, np.ndarray]:
    """[(x [C,H,W], y)] → (float32 [B, C, H, W], int64 [B])."""
    x = np.stack([it[0] for it in items]).astype(np.float32, copy=False)
    y = np.asarray([it[1] for it in items], dtype=np.int64)
    return x, y


def _as_tensor(a) -> paddle.Tensor:
    return a if isinstance(a, paddle.Tensor) else paddle.to_tensor(a)


class EpochLoader:
    """Iterable over one epoch's batches for one rank.

    Yields (x float32 [B, C, H, W] in [-1, 1], y int64 [B]) paddle tensors. With
    num_workers > 0 the same batch sampler drives a paddle.io.DataLoader, so the
    batches are bit-identical to the single-process path.

    Attributes:
        sampler: the EpochBatchSampler (num_batches, start_batch, ...).
    """

    def __init__(self, dataset: ImageDataset, sampler: EpochBatchSampler, num_workers: int = 0,
                 use_shared_memory: bool = False):
        self.dataset = dataset
        self.sampler = sampler
        self.num_workers = int(num_workers)
        self.use_shared_memory = bool(use_shared_memory)

    def __len__(self) -> int:
        """Remaining batches in this epoch on this rank."""
        return len(self.sampler)

    def __iter__(self) -> Iterator[Tuple[paddle.Tensor, paddle.Tensor]]:
        if len(self.sampler) == 0:
            return
        if self.num_workers <= 0:
            for keys in self.sampler:
                x, y = collate([self.dataset[k] for k in keys])
                yield paddle.to_tensor(x), paddle.to_tensor(y)
            return
        dl = paddle.io.DataLoader(self.dataset, batch_sampler=self.sampler, collate_fn=collate,
                                  num_workers=self.num_workers,
                                  use_shared_memory=self.use_shared_memory, return_list=True)
        for x, y in dl:
            yield _as_tensor(x), _as_tensor(y)


def build_dataloader(dataset: ImageDataset, batch_size: int, shuffle: bool, seed: int, epoch: int,
                     start_batch: int = 0, num_workers: int = 0, use_shared_memory: bool = False,
                     drop_last: bool = False, rank: int = 0, world_size: int = 1) -> EpochLoader:
    """Loader for epoch `epoch`, starting at this rank's batch `start_batch`.

    Order and flips are a pure function of (seed, epoch) (see sampler.py); flips are
    drawn only when `dataset.hflip` (train split with flipping enabled).

    Args:
        dataset: a dataset from build_dataset.
        batch_size: per-rank batch size.
        shuffle: permute samples (training) or keep dataset order (evaluation).
        seed, epoch: determine order and flips.
        start_batch: resume point (batches already consumed on this rank).
        num_workers: worker processes (0 = in the calling process; same output).
        use_shared_memory: paddle DataLoader option (off by default: containers often
            have a small /dev/shm).
        drop_last: drop the final partial global batch.
        rank, world_size: data-parallel shard (disjoint per rank, same batch count).

    Returns:
        EpochLoader yielding (x [B, C, H, W] float32, y [B] int64) paddle tensors.
    """
    sampler = EpochBatchSampler(len(dataset), batch_size, shuffle, seed, epoch,
                                start_batch=start_batch, drop_last=drop_last, rank=rank,
                                world_size=world_size, hflip=getattr(dataset, "hflip", False))
    return EpochLoader(dataset, sampler, num_workers=num_workers,
                       use_shared_memory=use_shared_memory)
