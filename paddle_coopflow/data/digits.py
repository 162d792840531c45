"""scikit-learn's bundled 8×8 handwritten digits (1,797 images, no download).

Pixel values 0..16 are quantised to uint8 as round(v / 16 * 255), so every dataset goes
through the same uint8 → [-1, 1] path and the flow's 256-level dequantisation holds.
Images are then resized 8×8 → size×size with PIL bilinear (via the common short-side
resize, which for squares is a plain resize), as 1 channel or replicated to 3.
Splits: 'train' = the first 1,500 images in sklearn's order, 'test' = the remaining 297,
'all' = all 1,797.
"""
from __future__ import annotations

from typing import Tuple

import numpy as np

from ..errors import DatasetError

N_TRAIN = 1500


def load_digits_uint8(split: str) -> Tuple[np.ndarray, np.ndarray]:
    """Digits split as uint8 [N, 8, 8, 1] (0..255) and int64 labels [N] (0..9)."""
    if split not in ("train", "test", "all"):
        raise DatasetError(f"digits split must be 'train', 'test' or 'all', got {split!r}")
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise DatasetError("the digits dataset needs scikit-learn: pip install scikit-learn") from None
    d = load_digits()
    images = np.rint(d.images / 16.0 * 255.0).clip(0, 255).astype(np.uint8)[:, :, :, None]
    labels = d.target.astype(np.int64)
    sl = {"train": slice(0, N_TRAIN), "test": slice(N_TRAIN, None), "all": slice(None)}[split]
    return np.ascontiguousarray(images[sl]), labels[sl]
