"""Datasets and the deterministic epoch loader (SPEC §5).

Every dataset yields `(x, y)`: `x` float32 `[C, H, W]` in [-1, 1] (ToTensor then
Normalize(0.5, 0.5), i.e. `u8 / 255 * 2 - 1` up to float rounding) and `y` int64.
Sample order and horizontal flips for an epoch are a pure function of
`(seed, epoch)` (see `sampler.py`), so a resumed run sees exactly the batches an
uninterrupted run would. Nothing here ever downloads: missing or corrupt files raise
`DatasetError` with a one-line message naming the expected path and the file's origin.

Public API:
    build_dataset(cfg, split) -> ImageDataset
    build_dataloader(dataset, batch_size, shuffle, seed, epoch, ...) -> EpochLoader
    load_images(cfg, split, n=None, shuffle_seed=None) -> uint8 [N, H, W, C]
"""


class DatasetError(Exception):
    """Missing, corrupt or misconfigured dataset (one-line message naming the fix)."""


# Submodules import DatasetError from this package, so it is defined first.
from .base import ImageDataset  # noqa: E402
from .build import build_dataset, load_images  # noqa: E402
from .loader import EpochLoader, build_dataloader  # noqa: E402
from .sampler import EpochBatchSampler  # noqa: E402

__all__ = [
    "DatasetError",
    "ImageDataset",
    "EpochBatchSampler",
    "EpochLoader",
    "build_dataset",
    "build_dataloader",
    "load_images",
]
