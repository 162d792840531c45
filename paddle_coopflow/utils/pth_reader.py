"""Read PyTorch `.pth` checkpoints into NumPy arrays without importing torch.

Why: the FID Inception weights are published only as a torch file
(pt_inception-2015-12-05-6726825d.pth) and torch is not a dependency.

Two layouts written by `torch.save` are understood:

* zip (torch >= 1.6): `<archive>/data.pkl` is a pickle whose tensors refer to
  storages by persistent id `('storage', storage_type, key, location, numel)`;
  the raw little-endian bytes of storage `key` are in `<archive>/data/<key>`.
* legacy (torch 0.4 - 1.5): five pickles in a row (magic number, protocol
  version, sys info, the object with persistent ids
  `('storage', storage_type, key, location, numel, view_metadata)`, the list of
  storage keys), then each storage as an int64 element count and its raw bytes.

In both, a tensor is `torch._utils._rebuild_tensor_v2(storage, offset, size,
stride, ...)`: a strided view (offsets and strides in elements) into a
storage that several tensors may share.

Every pickle in both layouts (the five of the legacy one included) is read with
:mod:`paddle_coopflow.utils.safe_pickle`'s allow-list, extended here by torch's tensor rebuild
functions and storage types only; any other global is refused, so loading an untrusted file cannot
run code. Every size read from the file is checked against the file's size before it is used.
"""
from __future__ import annotations

import collections
import io
import os
import struct
import zipfile
from typing import Any, Callable, Dict

import numpy as np

from . import safe_pickle
from .safe_pickle import Call, PickleRefused, Stub, refuse

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001

# torch storage class name -> numpy dtype (little-endian; byte order fixed below).
_STORAGE_DTYPES = {
    "DoubleStorage": np.float64,
    "FloatStorage": np.float32,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
    "UntypedStorage": np.uint8,
}


class PthReadError(ValueError):
    """The file is not a torch checkpoint this reader understands."""


class _StorageType:
    """Stand-in for a `torch.<X>Storage` class: only its dtype matters."""

    __slots__ = ("name", "dtype")

    def __init__(self, name: str):
        self.name = name
        self.dtype = np.dtype(_STORAGE_DTYPES[name])

    def __setstate__(self, state) -> None:
        raise refuse(f"refusing state for torch.{self.name}")


class _Storage:
    """A flat storage whose bytes may arrive after unpickling (legacy layout)."""

    def __init__(self, dtype: np.dtype, numel: int):
        self.dtype = dtype
        self.numel = int(numel)
        self.data: np.ndarray | None = None


def _ints(x, what: str) -> tuple:
    if not isinstance(x, (tuple, list)) or not all(type(v) is int for v in x):
        raise refuse(f"refusing a torch tensor whose {what} is not a tuple of integers")
    return tuple(x)


class _LazyTensor(Stub):
    """A tensor recorded during unpickling, built by safe_pickle.materialise once storages are read."""

    __slots__ = ("storage", "offset", "size", "stride")

    def __init__(self, storage: _Storage, offset: int, size, stride):
        if not isinstance(storage, _Storage) or type(offset) is not int:
            raise refuse("refusing a torch tensor that is not (storage, offset, size, stride)")
        self.storage = storage
        self.offset = offset
        self.size = _ints(size, "size")
        self.stride = _ints(stride, "stride")
        if len(self.size) != len(self.stride):
            raise PthReadError(f"tensor size {self.size} and stride {self.stride} differ in length")

    def build(self) -> np.ndarray:
        base = self.storage.data
        if base is None:
            raise PthReadError("tensor refers to a storage whose data is missing")
        if any(s == 0 for s in self.size):
            return np.zeros(self.size, dtype=base.dtype)
        last = self.offset + sum((n - 1) * st for n, st in zip(self.size, self.stride))
        if self.offset < 0 or min(self.stride, default=0) < 0 or last >= base.size:
            raise PthReadError(f"tensor view (offset {self.offset}, size {self.size}, stride "
                               f"{self.stride}) exceeds its storage of {base.size} elements")
        item = base.dtype.itemsize
        view = np.lib.stride_tricks.as_strided(
            base[self.offset:], shape=self.size, strides=[s * item for s in self.stride])
        # Copy: a contiguous array that owns its memory, independent of shared storages.
        return np.array(view, copy=True)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None):
    return _LazyTensor(storage, storage_offset, size, stride)


def _rebuild_tensor(storage, storage_offset, size, stride):
    return _LazyTensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, state=None):
    return data  # nn.Parameter wraps a tensor; the tensor is all we keep


_TORCH_GLOBALS: Dict[tuple, Any] = {
    ("torch._utils", "_rebuild_tensor_v2"): Call(_rebuild_tensor_v2),
    ("torch._utils", "_rebuild_tensor"): Call(_rebuild_tensor),
    ("torch._utils", "_rebuild_parameter"): Call(_rebuild_parameter),
    ("torch._utils", "_rebuild_parameter_with_state"): Call(_rebuild_parameter),
    **{("torch", name): _StorageType(name) for name in _STORAGE_DTYPES},
}


def _unpickler(fh, load_storage: Callable[[tuple], _Storage]) -> safe_pickle.Unpickler:
    """The allow-list unpickler with torch's names; storages (persistent ids) via `load_storage`."""

    def persistent_load(pid):
        if not isinstance(pid, tuple) or len(pid) < 5 or _text(pid[0]) != "storage":
            raise refuse(f"refusing persistent id {pid!r:.80}")
        return load_storage(pid)

    return safe_pickle.Unpickler(fh, _TORCH_GLOBALS, persistent_load)


def _text(x) -> str:
    return x.decode("ascii") if isinstance(x, bytes) else str(x)


def _storage_dtype(storage_type, byteorder: str) -> np.dtype:
    if not isinstance(storage_type, _StorageType):
        raise refuse(f"refusing storage type {storage_type!r:.80}")
    return storage_type.dtype.newbyteorder("<" if byteorder == "little" else ">")


def _load_zip(path: str):
    size = os.path.getsize(path)
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        pkl = [n for n in names if n == "data.pkl" or n.endswith("/data.pkl")]
        if len(pkl) != 1:
            raise PthReadError("zip file has no single '<archive>/data.pkl'; not a torch.save file")
        big = [i for i in zf.infolist() if i.file_size > size]
        if big:  # torch stores its entries uncompressed: none can be larger than the archive
            raise PthReadError(f"zip entry '{big[0].filename}' claims {big[0].file_size} bytes in a "
                               f"{size}-byte file; not a torch.save file")
        prefix = pkl[0][: -len("data.pkl")]
        byteorder = "little"
        if prefix + "byteorder" in names:
            byteorder = zf.read(prefix + "byteorder").decode("ascii", "replace").strip()
            if byteorder not in ("little", "big"):
                raise PthReadError(f"unknown byte order {byteorder[:20]!r}")
        storages: Dict[str, _Storage] = {}

        def load_storage(pid):
            _, storage_type, key, _location, numel = pid[:5]
            key = _text(key)
            if key not in storages:
                dtype = _storage_dtype(storage_type, byteorder)
                try:
                    raw = zf.read(f"{prefix}data/{key}")
                except KeyError:
                    raise PthReadError(f"storage {key} is missing from the archive") from None
                st = _Storage(dtype, len(raw) // dtype.itemsize)
                st.data = np.frombuffer(raw, dtype=dtype, count=st.numel).astype(dtype.newbyteorder("="))
                if type(numel) is not int or st.numel < numel:
                    raise PthReadError(f"storage {key} has {st.numel} elements, expected {numel!r:.40}")
                storages[key] = st
            return storages[key]

        obj = _unpickler(io.BytesIO(zf.read(pkl[0])), load_storage).load()
    return safe_pickle.materialise(obj)


def _legacy_header(fh) -> str:
    """Check the magic number and protocol pickles; return the byte order of the sys-info pickle."""
    try:
        magic = safe_pickle.load(fh)
    except PickleRefused:
        raise
    except Exception as e:  # not a pickle at all
        raise PthReadError(f"neither a zip nor a legacy torch file ({type(e).__name__}: {e})") from None
    if type(magic) is not int or magic != _LEGACY_MAGIC:
        raise PthReadError("not a torch.save file (bad magic number)")
    if safe_pickle.load(fh) != _LEGACY_PROTOCOL:
        raise PthReadError("unsupported legacy torch protocol version")
    sys_info = safe_pickle.load(fh)
    if isinstance(sys_info, dict) and sys_info.get("little_endian", True) is False:
        return "big"
    return "little"


def _load_legacy(path: str):
    size = os.path.getsize(path)
    with open(path, "rb") as fh:
        byteorder = _legacy_header(fh)
        storages: Dict[str, _Storage] = {}

        def load_storage(pid):
            _, storage_type, key, _location, numel, view = (pid + (None,))[:6]
            key = _text(key)
            if key not in storages:
                storages[key] = _Storage(_storage_dtype(storage_type, byteorder), 0)
            if view is not None:
                raise PthReadError("legacy storage views are not supported; re-save the file "
                                   "with a recent torch")
            return storages[key]

        obj = _unpickler(fh, load_storage).load()
        keys = safe_pickle.load(fh)
        if not isinstance(keys, list):
            raise PthReadError(f"the storage key list is a {type(keys).__name__}")
        for key in keys:
            st = storages.get(_text(key))
            if st is None:
                raise PthReadError(f"storage {_text(key)[:40]!r} is listed but no tensor uses it")
            (numel,) = struct.unpack("<q" if byteorder == "little" else ">q", fh.read(8).ljust(8, b"\0"))
            nbytes = numel * st.dtype.itemsize
            if numel < 0 or nbytes > size - fh.tell():
                raise PthReadError(f"storage {_text(key)[:40]} claims {numel} elements, more than the "
                                   f"{size}-byte file holds (truncated?)")
            st.data = np.frombuffer(fh.read(nbytes), dtype=st.dtype).astype(st.dtype.newbyteorder("="))
            st.numel = numel
    return safe_pickle.materialise(obj)


def load_pth(path: str) -> Any:
    """Load a `torch.save` file; every tensor becomes a NumPy array.

    Args:
        path: a `.pth`/`.pt` file in torch's zip layout or its legacy layout.

    Returns:
        The saved object (usually an OrderedDict state dict) with tensors as
        contiguous `np.ndarray`s of the stored dtype and shape.

    Raises:
        PthReadError: the file is not a torch checkpoint of a supported kind.
        safe_pickle.PickleRefused: a pickle in it names something other than data
            (e.g. "refusing to load global posix.system"); nothing from it was called.
    """
    if zipfile.is_zipfile(path):
        return _load_zip(path)
    return _load_legacy(path)


def load_state_dict(path: str) -> "collections.OrderedDict[str, np.ndarray]":
    """`load_pth` for state dicts: unwraps {'state_dict': ...} and checks the result."""
    obj = load_pth(path)
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise PthReadError(f"expected a state dict, found {type(obj).__name__}")
    out = collections.OrderedDict()
    for k, v in obj.items():
        if isinstance(v, np.ndarray):
            out[_text(k)] = v
    return out
