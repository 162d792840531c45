"""Class-per-folder image sets as uint8 arrays, with an optional .npz cache of the decoded pixels.

Files are found and labelled by the package's folder rule (paddle_coopflow/data/folder.py):
recursive, sorted by relative path, label = index of the top-level folder among the sorted
class folders. Every image must be 32x32 (it is converted to RGB).
"""
from __future__ import annotations

import hashlib
import os
from typing import List, Optional, Tuple

import numpy as np
from PIL import Image

from paddle_coopflow.errors import UserError

IMAGE_HW = (32, 32)
ImageSet = Tuple[np.ndarray, np.ndarray, List[str]]


def list_class_folder(root: str, per_class: Optional[int] = None) -> Tuple[List[str], np.ndarray, List[str]]:
    """Relative image paths, labels and class names of a class-per-folder directory.

    Args:
        root: directory with one sub-folder of images per class.
        per_class: keep only the first `per_class` files (sorted) of each class.
    Returns:
        paths [N] ('/'-separated, relative to root), int64 labels [N], class names [K].
    Raises:
        UserError: missing directory, no images, or no class folders.
    """
    from paddle_coopflow.data.folder import assign_labels, list_images

    if not os.path.isdir(root):
        raise UserError(f"image directory '{root}' does not exist")
    paths, labels, classes = assign_labels(list_images(root), root)
    if not paths:
        raise UserError(f"image directory '{root}' holds no images in class folders "
                        "(expected ROOT/<class>/<image>.jpg|png)")
    if per_class is not None:
        keep = np.concatenate([np.flatnonzero(labels == k)[:per_class] for k in range(len(classes))])
        paths, labels = [paths[i] for i in keep], labels[keep]
    return paths, labels, classes


def decode_images(root: str, paths: List[str]) -> np.ndarray:
    """Decode `root/path` for each path -> uint8 [N, 32, 32, 3] (RGB)."""
    out = np.empty((len(paths), *IMAGE_HW, 3), np.uint8)
    for i, rel in enumerate(paths):
        full = os.path.join(root, rel)
        try:
            with Image.open(full) as im:
                arr = np.asarray(im.convert("RGB"))
        except (OSError, ValueError) as e:
            raise UserError(f"cannot decode image '{full}': {e}") from None
        if arr.shape[:2] != IMAGE_HW:
            raise UserError(f"image '{full}' is {arr.shape[1]}x{arr.shape[0]}; the proxy measure "
                            f"needs {IMAGE_HW[1]}x{IMAGE_HW[0]} images (CIFAR-10 size)")
        out[i] = arr
    return out


def _cache_path(cache_dir: str, root: str, paths: List[str]) -> str:
    key = hashlib.sha1("\n".join([os.path.abspath(root), *paths]).encode()).hexdigest()[:12]
    name = os.path.basename(os.path.normpath(os.path.abspath(root))) or "images"
    return os.path.join(cache_dir, f"images_{name}_{key}.npz")


def load_class_folder(root: str, per_class: Optional[int] = None,
                      cache_dir: Optional[str] = None) -> ImageSet:
    """Images, labels and class names of a class-per-folder directory.

    Args:
        root: directory with one sub-folder per class.
        per_class: keep only the first `per_class` files of each class.
        cache_dir: if given, the decoded arrays are kept in an .npz there, keyed by the
            directory's absolute path and file list, and reused on the next call.
    Returns:
        uint8 images [N, 32, 32, 3], int64 labels [N], class names [K].
    """
    paths, labels, classes = list_class_folder(root, per_class)
    cache = _cache_path(cache_dir, root, paths) if cache_dir else None
    if cache and os.path.isfile(cache):
        with np.load(cache) as f:
            if f["images"].shape[0] == len(paths):
                return f["images"], f["labels"], [str(c) for c in f["classes"]]
    images = decode_images(root, paths)
    if cache:
        os.makedirs(cache_dir, exist_ok=True)
        tmp = cache + ".tmp.npz"
        np.savez(tmp, images=images, labels=labels, classes=np.array(classes))
        os.replace(tmp, cache)
    return images, labels, classes


def relabel(labels: np.ndarray, classes: List[str], ref_classes: List[str], where: str) -> np.ndarray:
    """Map `labels` (indices into `classes`) onto the indices of the same names in `ref_classes`.

    Raises:
        UserError: a class of `classes` is not in `ref_classes`.
    """
    index = {c: k for k, c in enumerate(ref_classes)}
    missing = [c for c in classes if c not in index]
    if missing:
        raise UserError(f"{where}: class folder(s) {missing[:3]} are not among the training classes "
                        f"{ref_classes[:10]}")
    lut = np.array([index[c] for c in classes], np.int64)
    return lut[labels]


def to_model_input(images_u8: np.ndarray) -> np.ndarray:
    """uint8 [N, H, W, 3] -> float32 [N, 3, H, W] in [-1, 1] (x / 127.5 - 1)."""
    return (images_u8.transpose(0, 3, 1, 2).astype(np.float32) / 127.5 - 1.0)
