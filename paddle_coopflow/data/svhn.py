"""SVHN (cropped digits, format 2) from the official .mat files, read with scipy.

Accepted `root`: a folder holding `{split}_32x32.mat`, or a path to one .mat file.
A file named like another split's official name (e.g. `train_32x32.mat` when the split
is 'test') is replaced by its sibling `{split}_32x32.mat`; a file with any other name is
used as given. Splits: 'train' (73,257), 'test' (26,032), 'extra' (531,131).
"""
from __future__ import annotations

import os
from typing import Tuple

import numpy as np

from ..errors import DatasetError

URL = "http://ufldl.stanford.edu/housenumbers/"
SPLITS = ("train", "test", "extra")


def _locate(root: str, split: str) -> str:
    want = f"{split}_32x32.mat"
    if os.path.isfile(root):
        base = os.path.basename(root)
        official = {f"{s}_32x32.mat" for s in SPLITS}
        path = root if base == want or base not in official else os.path.join(os.path.dirname(root), want)
    else:
        path = os.path.join(root, want)
    if not os.path.isfile(path):
        raise DatasetError(f"SVHN not found at {path}: expected {want} "
                           f"(download the 'Format 2' cropped digits from {URL})")
    return path


def load_svhn(root: str, split: str) -> Tuple[np.ndarray, np.ndarray]:
    """Load an SVHN split into memory.

    Args:
        root: folder containing the .mat files, or a .mat file.
        split: 'train', 'test' or 'extra'.

    Returns:
        images uint8 [N, 32, 32, 3] and labels int64 [N] in 0..9 (the file's label 10
        means digit 0, as torchvision maps it).
    """
    if split not in SPLITS:
        raise DatasetError(f"SVHN split must be one of {SPLITS}, got {split!r}")
    path = _locate(root, split)
    import scipy.io
    from scipy.io.matlab import MatReadError

    try:
        mat = scipy.io.loadmat(path, variable_names=["X", "y"])
        x, y = mat["X"], mat["y"]
    except (MatReadError, ValueError, TypeError, KeyError, OSError, NotImplementedError, EOFError) as e:
        detail = " ".join(str(e).split())
        raise DatasetError(f"SVHN file {path} is corrupt or not a MATLAB v5 file "
                           f"({type(e).__name__}: {detail}); re-download from {URL}") from None
    if x.ndim != 4 or x.shape[:3] != (32, 32, 3) or y.size != x.shape[3]:
        raise DatasetError(f"SVHN file {path} has X {x.shape} / y {y.shape}, expected "
                           f"X [32, 32, 3, N] and y [N, 1]; re-download from {URL}")
    images = np.ascontiguousarray(np.asarray(x, dtype=np.uint8).transpose(3, 0, 1, 2))
    labels = np.asarray(y, dtype=np.int64).reshape(-1) % 10
    return images, labels
