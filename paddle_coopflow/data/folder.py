"""Any folder of images (ImageFolder layout or a flat folder).

Files with extension jpg/jpeg/png/bmp/webp (any case) are found recursively, hidden
files and folders skipped, and ordered by their relative path (deterministic on every
file system). When the root has sub-folders that contain images, the label is the index
of the image's top-level folder among those folders sorted by name (torchvision
ImageFolder), and images lying directly in the root are ignored with a warning.
Otherwise every label is 0. A folder has no split: 'all' and 'train' give every image;
'test' is rejected so that nobody reports a "test" metric measured on training data.
"""
from __future__ import annotations

import os
import warnings
from typing import List, Tuple

import numpy as np
from PIL import Image

from ..errors import DatasetError
from .base import ImageDataset

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
NO_TEST_SPLIT = ("all", "train")


def is_image_name(name: str) -> bool:
    base = os.path.basename(name)
    return not base.startswith(".") and base.lower().endswith(IMAGE_EXTENSIONS)


def list_images(root: str) -> List[str]:
    """Relative paths ('/'-separated) of all images under `root`, sorted."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        rel_dir = os.path.relpath(dirpath, root)
        for f in filenames:
            if is_image_name(f):
                rel = f if rel_dir == "." else os.path.join(rel_dir, f)
                found.append(rel.replace(os.sep, "/"))
    return sorted(found)


def assign_labels(rel_paths: List[str], where: str) -> Tuple[List[str], np.ndarray, List[str]]:
    """Apply the class-folder rule to sorted relative paths.

    Returns:
        kept paths, int64 labels [N], class names (empty when there are no class folders).
    """
    classes = sorted({p.split("/", 1)[0] for p in rel_paths if "/" in p})
    if not classes:
        return rel_paths, np.zeros(len(rel_paths), np.int64), []
    loose = [p for p in rel_paths if "/" not in p]
    if loose:
        warnings.warn(f"{where}: ignoring {len(loose)} image(s) directly in the root because it "
                      f"has class folders {classes[:3]}...", stacklevel=3)
    index = {c: k for k, c in enumerate(classes)}
    kept = [p for p in rel_paths if "/" in p]
    labels = np.array([index[p.split("/", 1)[0]] for p in kept], np.int64)
    return kept, labels, classes


def check_split(split: str, what: str) -> None:
    if split not in NO_TEST_SPLIT:
        raise DatasetError(f"{what} has no {split!r} split: use split 'all' (or 'train', the same "
                           f"images)")


def open_image(fileobj, where: str) -> Image.Image:
    """Decode an image fully, so that a corrupt file fails here with a DatasetError naming it."""
    try:
        img = Image.open(fileobj)
        img.load()
        return img
    except Image.UnidentifiedImageError:
        empty = fileobj.seek(0, os.SEEK_END) == 0 if hasattr(fileobj, "seek") else False
        what = "is empty (0 bytes)" if empty else "is not an image file Pillow can read"
        raise DatasetError(f"image {where} {what}; replace or delete the file") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        detail = " ".join(str(e).split())
        raise DatasetError(f"cannot decode image {where} ({type(e).__name__}: {detail}); "
                           f"replace or delete the file") from None


class FolderDataset(ImageDataset):
    """Images read lazily from files under `root`, labels by the class-folder rule."""

    def __init__(self, root: str, split: str, image_size: int, channels: int, hflip: bool,
                 name: str = "folder"):
        super().__init__(name, split, image_size, channels, hflip)
        check_split(split, f"image folder {root}")
        if not os.path.isdir(root):
            raise DatasetError(f"image folder not found at {root}: set Data.root to a folder of "
                               f"{'/'.join(e[1:] for e in IMAGE_EXTENSIONS)} images")
        rel = list_images(root)
        if not rel:
            raise DatasetError(f"image folder {root} contains no images "
                               f"({', '.join(IMAGE_EXTENSIONS)}, searched recursively)")
        self.root = root
        self.files, self.labels, self.classes = assign_labels(rel, root)

    def __len__(self) -> int:
        return len(self.files)

    def _raw(self, i: int) -> Image.Image:
        path = os.path.join(self.root, self.files[i])
        with open(path, "rb") as fh:
            return open_image(fh, path)

    def _label(self, i: int) -> int:
        return self.labels[i]
