"""build_dataset / load_images: from a data config to a dataset or a uint8 array."""
from __future__ import annotations

import os
from typing import Any, Optional

import numpy as np

from ..errors import DatasetError
from .base import ArrayDataset, ImageDataset
from .celeba import CelebADataset
from .cifar10 import load_cifar10
from .digits import load_digits_uint8
from .folder import FolderDataset
from .svhn import load_svhn

NAMES = ("cifar10", "svhn", "celeba", "folder", "digits")
SPLITS = ("train", "test", "all", "extra")
# Horizontal flip is the paper's augmentation for CIFAR-10 only (appendix A.2).
DEFAULT_HFLIP = {"cifar10": True}


def build_dataset(cfg: Any, split: str) -> ImageDataset:
    """Dataset for `split` as described by a data config.

    Args:
        cfg: object with attributes (getattr with defaults): name ('cifar10' | 'svhn' |
            'celeba' | 'folder' | 'digits'), root (file or folder; unused for digits),
            image_size (32), channels (3), hflip (None = dataset default: on for CIFAR-10
            only), digits_size (None = image_size; must equal image_size if set).
        split: 'train' | 'test' | 'all' (CelebA and folders: 'all' or 'train', the same
            images; digits: all three; SVHN also 'extra').

    Returns:
        ImageDataset whose items are (float32 [C, H, W] in [-1, 1], int64). Flips are
        enabled (`dataset.hflip`) only for split 'train'.
    """
    name = str(getattr(cfg, "name", "cifar10")).lower()
    if name not in NAMES:
        raise DatasetError(f"unknown dataset name {name!r}; choose one of {', '.join(NAMES)}")
    if split not in SPLITS:
        raise DatasetError(f"unknown split {split!r}; choose 'train', 'test' or 'all'")
    size = int(getattr(cfg, "image_size", 32) or 32)
    channels = int(getattr(cfg, "channels", 3) or 3)
    hflip_cfg = getattr(cfg, "hflip", None)
    hflip = DEFAULT_HFLIP.get(name, False) if hflip_cfg is None else bool(hflip_cfg)
    hflip = hflip and split == "train"
    args = dict(name=name, split=split, image_size=size, channels=channels, hflip=hflip)

    if name == "digits":
        dsize = getattr(cfg, "digits_size", None)
        if dsize is not None and int(dsize) != size:
            raise DatasetError(f"digits_size={dsize} differs from image_size={size}: the model sees "
                               f"image_size, so set image_size={dsize} (or leave digits_size unset)")
        images, labels = load_digits_uint8(split)
        return ArrayDataset(images, labels, **args)

    root = getattr(cfg, "root", None)
    if not root:
        raise DatasetError(f"Data.root is not set: point it at the {name} file or folder")
    root = os.path.expanduser(str(root))
    if name == "cifar10":
        images, labels = load_cifar10(root, split)
        return ArrayDataset(images, labels, **args)
    if name == "svhn":
        images, labels = load_svhn(root, split)
        return ArrayDataset(images, labels, **args)
    if name == "celeba":
        return CelebADataset(root, split, size, channels, hflip)
    return FolderDataset(root, split, size, channels, hflip)


def batches_per_epoch(n: int, batch_size: int, world_size: int, dataset: str, init_batches: int = 0) -> int:
    """Training batches per epoch of `n` images; a one-line DatasetError when the batch cannot be met.

    A global batch (batch_size × world_size) larger than the data would silently train on smaller
    batches than configured, and ActNorm's data-dependent init must leave a batch of epoch 0 to train
    on. Both are checked before a run directory is created.

    Args:
        n: images in the training split.
        batch_size: Train.batch_size (per rank).
        world_size: data-parallel ranks.
        dataset: the data as messages name it, e.g. "digits (split train)".
        init_batches: Train.data_init_batches spent on ActNorm's init at the start of epoch 0
            (0 when the flow is absent or already initialised).

    Returns:
        ⌈n / (batch_size · world_size)⌉.
    """
    g = batch_size * world_size
    ranks = f" x {world_size} ranks" if world_size > 1 else ""
    if g > n:
        raise DatasetError(f"Train.batch_size={batch_size}{ranks} is larger than the {n} images of {dataset}; "
                           f"set -o Train.batch_size={max(1, n // world_size)} or less, or use more images")
    per_epoch = -(-n // g)
    if init_batches >= per_epoch:
        fits = (n - 1) // (init_batches * world_size)
        fix = f"-o Train.batch_size={fits} or less, or " if fits >= 1 else ""
        raise DatasetError(f"Train.data_init_batches={init_batches} would use every batch of epoch 1: {dataset} has "
                           f"{n} images, {per_epoch} batch(es) of Train.batch_size={batch_size}{ranks}; set {fix}"
                           f"-o Train.data_init_batches={per_epoch - 1}")
    return per_epoch


def load_images(cfg: Any, split: str, n: Optional[int] = None,
                shuffle_seed: Optional[int] = None) -> np.ndarray:
    """Unflipped images for an FID reference set.

    Args:
        cfg: data config (as for build_dataset).
        split: split to read (the official code uses the train split for CIFAR/SVHN, all for CelebA).
        n: number of images (None = all; at most the split size).
        shuffle_seed: None = the first n in dataset order; else the first n of
            np.random.default_rng(shuffle_seed).permutation(N) (a "shuffled" set).

    Returns:
        uint8 [n, H, W, C] (divide by 255 for [0, 1]).
    """
    ds = build_dataset(cfg, split)
    total = len(ds)
    if n is not None and n < 0:
        raise DatasetError(f"n must be >= 0, got {n}")
    count = total if n is None else min(int(n), total)
    order = (np.arange(total) if shuffle_seed is None
             else np.random.default_rng(shuffle_seed).permutation(total))[:count]
    out = np.empty((count, ds.image_size, ds.image_size, ds.channels), np.uint8)
    if isinstance(ds, ArrayDataset) and ds.images.shape[1:] == out.shape[1:]:
        out[:] = ds.images[order]  # no per-image work needed
        return out
    for k, i in enumerate(order):
        out[k] = ds.image(int(i))
    return out
