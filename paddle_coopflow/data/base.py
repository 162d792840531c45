"""Common dataset behaviour: model-format images, flip keys, (x, y) items."""
from __future__ import annotations

from typing import Tuple, Union

import numpy as np
import paddle

from ..errors import DatasetError
from .transforms import to_model_image, to_tensor_normalized

Key = Union[int, Tuple[int, bool]]


class ImageDataset(paddle.io.Dataset):
    """A map-style image dataset with CoopFlow's output format.

    Subclasses implement `_raw(i)` (PIL image or uint8 array) and `_label(i)`.
    `dataset[i]` returns the image unflipped; `dataset[(i, True)]` returns it
    horizontally flipped. Flips are decided by `EpochBatchSampler`, not here, so a
    sample's augmentation depends only on `(seed, epoch, i)` and never on worker
    processes or on how far an epoch got before a resume.

    Attributes:
        name: dataset name ('cifar10', 'svhn', ...).
        split: split that was loaded.
        image_size: output side length H = W.
        channels: output channels C (1 or 3).
        hflip: whether the loader should draw random horizontal flips (train only).
    """

    def __init__(self, name: str, split: str, image_size: int, channels: int, hflip: bool):
        super().__init__()
        if channels not in (1, 3):
            raise DatasetError(f"Data.channels must be 1 or 3, got {channels}")
        if int(image_size) < 1:
            raise DatasetError(f"Data.image_size must be positive, got {image_size}")
        self.name = name
        self.split = split
        self.image_size = int(image_size)
        self.channels = int(channels)
        self.hflip = bool(hflip)

    # -- subclass hooks -------------------------------------------------------------
    def __len__(self) -> int:
        raise NotImplementedError

    def _raw(self, i: int):
        raise NotImplementedError

    def _label(self, i: int) -> int:
        raise NotImplementedError

    # -- public ---------------------------------------------------------------------
    def image(self, i: int) -> np.ndarray:
        """Unflipped image `i` as uint8 [H, W, C] (what FID reference sets use)."""
        return to_model_image(self._raw(i), self.image_size, self.channels)

    def label(self, i: int) -> int:
        return int(self._label(i))

    def __getitem__(self, key: Key) -> Tuple[np.ndarray, np.int64]:
        """Item `key` = index or (index, flip).

        Returns:
            x: float32 [C, H, W] in [-1, 1].
            y: int64 scalar label.
        """
        if isinstance(key, tuple):
            i, flip = int(key[0]), bool(key[1])
        else:
            i, flip = int(key), False
        n = len(self)
        if not 0 <= i < n:
            raise IndexError(f"index {i} out of range for {self.name} {self.split} ({n} items)")
        u8 = self.image(i)
        if flip:
            u8 = u8[:, ::-1]
        return to_tensor_normalized(u8), np.int64(self.label(i))

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(name={self.name!r}, split={self.split!r}, n={len(self)}, "
                f"size={self.image_size}, channels={self.channels}, hflip={self.hflip})")


class ArrayDataset(ImageDataset):
    """Images held in memory as uint8 [N, h, w, c] with int labels [N]."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, name: str, split: str,
                 image_size: int, channels: int, hflip: bool):
        super().__init__(name, split, image_size, channels, hflip)
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] not in (1, 3):
            raise ValueError(f"images must be uint8 [N, H, W, 1|3], got {images.dtype} {images.shape}")
        if len(labels) != len(images):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images = images
        self.labels = np.asarray(labels, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.images)

    def _raw(self, i: int) -> np.ndarray:
        return self.images[i]

    def _label(self, i: int) -> int:
        return self.labels[i]
