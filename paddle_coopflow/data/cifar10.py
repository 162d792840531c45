"""CIFAR-10 from the official python archive (no download, no extraction needed).

Accepted `root`: the archive `cifar-10-python.tar.gz`, the extracted folder
`cifar-10-batches-py/`, or a folder containing either. Splits: 'train' (data_batch_1..5,
50,000 images) and 'test' (test_batch, 10,000 images).
"""
from __future__ import annotations

import os
import pickle
import tarfile
import zlib
from typing import Dict, List, Tuple

import numpy as np

from ..utils import safe_pickle
from ..errors import DatasetError

ARCHIVE = "cifar-10-python.tar.gz"
FOLDER = "cifar-10-batches-py"
URL = "https://www.cs.toronto.edu/~kriz/cifar.html"
SPLIT_FILES = {
    "train": [f"data_batch_{k}" for k in range(1, 6)],
    "test": ["test_batch"],
}


def _one_line(err: Exception) -> str:
    return " ".join(str(err).split())


def _parse_batch(raw: bytes, where: str) -> Tuple[np.ndarray, np.ndarray]:
    """Pickled batch bytes → (uint8 [N, 32, 32, 3], int64 [N])."""
    try:
        # The official files are Python 2 pickles of dicts, lists, byte strings and arrays: the allow-list
        # reader (no code from the file runs), keys as bytes.
        d = safe_pickle.loads(raw, encoding="bytes")
        data = np.asarray(d[b"data"], dtype=np.uint8)
        labels = np.asarray(d[b"labels"], dtype=np.int64)
    except (pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError, AttributeError,
            IndexError) as e:
        raise DatasetError(f"CIFAR-10 batch {where} is corrupt ({type(e).__name__}: {_one_line(e)}); "
                           f"re-download from {URL}") from None
    if data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
        raise DatasetError(f"CIFAR-10 batch {where} has data {data.shape} / {len(labels)} labels, "
                           f"expected [N, 3072] and N labels; re-download from {URL}")
    # Rows are channel-major (1024 R, 1024 G, 1024 B), each plane row-major 32×32.
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


def _read_members_from_tar(path: str, names: List[str]) -> Dict[str, bytes]:
    """Read the wanted batch files from the archive in one sequential pass."""
    out = {}
    try:
        with tarfile.open(path, "r:*") as tf:
            for m in tf:
                base = os.path.basename(m.name)
                if m.isfile() and base in names and base not in out:
                    out[base] = tf.extractfile(m).read()
    except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
        raise DatasetError(f"CIFAR-10 archive {path} is corrupt or unreadable "
                           f"({type(e).__name__}: {_one_line(e)}); re-download {ARCHIVE} from {URL}") from None
    missing = [n for n in names if n not in out]
    if missing:
        raise DatasetError(f"CIFAR-10 archive {path} lacks {', '.join(missing)}; "
                           f"re-download {ARCHIVE} from {URL}")
    return out


def _locate(root: str) -> Tuple[str, str]:
    """('tar' | 'dir', path) for the first layout found under `root`."""
    candidates = [root, os.path.join(root, FOLDER), os.path.join(root, ARCHIVE)]
    for p in candidates:
        if os.path.isfile(p) and p.endswith((".tar.gz", ".tgz", ".tar")):
            return "tar", p
        if os.path.isdir(p) and any(os.path.isfile(os.path.join(p, n))
                                    for n in ("data_batch_1", "test_batch")):
            return "dir", p
    raise DatasetError(f"CIFAR-10 not found at {root}: expected {ARCHIVE} or {FOLDER}/ "
                       f"(the file, the folder, or a folder containing either; download from {URL})")


def load_cifar10(root: str, split: str) -> Tuple[np.ndarray, np.ndarray]:
    """Load a CIFAR-10 split into memory.

    Args:
        root: archive, extracted folder, or their parent folder.
        split: 'train' or 'test'.

    Returns:
        images uint8 [N, 32, 32, 3] and labels int64 [N] (0..9), in file order.
    """
    if split not in SPLIT_FILES:
        raise DatasetError(f"CIFAR-10 split must be 'train' or 'test', got {split!r}")
    kind, path = _locate(root)
    names = SPLIT_FILES[split]
    if kind == "tar":
        raws = _read_members_from_tar(path, names)
        parts = [_parse_batch(raws[n], f"{path}:{n}") for n in names]
    else:
        parts = []
        for n in names:
            f = os.path.join(path, n)
            if not os.path.isfile(f):
                raise DatasetError(f"CIFAR-10 batch {f} is missing; re-download {ARCHIVE} from {URL}")
            with open(f, "rb") as fh:
                parts.append(_parse_batch(fh.read(), f))
    images = np.ascontiguousarray(np.concatenate([p[0] for p in parts]))
    labels = np.concatenate([p[1] for p in parts])
    return images, labels
