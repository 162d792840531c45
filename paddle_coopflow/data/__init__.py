"""Datasets and the deterministic epoch loader.

Every dataset yields `(x, y)`: `x` float32 `[C, H, W]` in [-1, 1] (ToTensor then
Normalize(0.5, 0.5), i.e. `u8 / 255 * 2 - 1` up to float rounding) and `y` int64.
Sample order and horizontal flips for an epoch are a pure function of
`(seed, epoch)` (see `sampler.py`), so a resumed run sees exactly the batches an
uninterrupted run would. Nothing here ever downloads: missing or corrupt files raise
`DatasetError` (a `UserError`: tools print it as one line, exit 2) naming the expected path or
the corrupt file and where to get a good copy. A corrupt image is found when it is read, so it
can surface in the middle of a run; the message names the file.

Public API:
    build_dataset(cfg, split) -> ImageDataset
    build_dataloader(dataset, batch_size, shuffle, seed, epoch, ...) -> EpochLoader
    load_images(cfg, split, n=None, shuffle_seed=None) -> uint8 [N, H, W, C]
"""

from ..errors import DatasetError
from .base import ImageDataset
from .build import build_dataset, load_images
from .loader import EpochLoader, build_dataloader
from .sampler import EpochBatchSampler

__all__ = [
    "DatasetError",
    "ImageDataset",
    "EpochBatchSampler",
    "EpochLoader",
    "build_dataset",
    "build_dataloader",
    "load_images",
]
