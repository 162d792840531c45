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

The unpickler only resolves the globals a state dict needs (tensor rebuild
functions, storage types, OrderedDict); anything else is refused, so loading
an untrusted file cannot run code.
"""
from __future__ import annotations

import collections
import io
import pickle
import struct
import zipfile
from typing import Any, Callable, Dict

import numpy as np

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

    def __init__(self, name: str):
        self.name = name
        self.dtype = np.dtype(_STORAGE_DTYPES[name])


class _Storage:
    """A flat storage whose bytes may arrive after unpickling (legacy layout)."""

    def __init__(self, dtype: np.dtype, numel: int):
        self.dtype = dtype
        self.numel = int(numel)
        self.data: np.ndarray | None = None


class _LazyTensor:
    """A tensor recorded during unpickling, materialised once storages are read."""

    def __init__(self, storage: _Storage, offset: int, size, stride):
        self.storage = storage
        self.offset = int(offset)
        self.size = tuple(int(s) for s in size)
        self.stride = tuple(int(s) for s in stride)

    def materialise(self) -> np.ndarray:
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


_GLOBALS: Dict[tuple, Callable] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
}


class _Unpickler(pickle.Unpickler):
    """Resolves torch globals to the stand-ins above; storages via `load_storage`."""

    def __init__(self, fh, load_storage: Callable[[tuple], _Storage]):
        super().__init__(fh)
        self._load_storage = load_storage

    def find_class(self, module: str, name: str):
        if (module, name) in _GLOBALS:
            return _GLOBALS[(module, name)]
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        raise pickle.UnpicklingError(
            f"refusing to load global {module}.{name}: only tensors, storages and "
            "(Ordered)dicts are supported")

    def persistent_load(self, pid):
        if not isinstance(pid, tuple) or not pid or _text(pid[0]) != "storage":
            raise pickle.UnpicklingError(f"unknown persistent id {pid!r}")
        return self._load_storage(pid)


def _text(x) -> str:
    return x.decode("ascii") if isinstance(x, bytes) else str(x)


def _storage_dtype(storage_type, byteorder: str) -> np.dtype:
    if not isinstance(storage_type, _StorageType):
        raise pickle.UnpicklingError(f"unsupported storage type {storage_type!r}")
    return storage_type.dtype.newbyteorder("<" if byteorder == "little" else ">")


def _materialise(obj):
    """Replace every _LazyTensor inside (Ordered)dicts, lists and tuples by an array."""
    if isinstance(obj, _LazyTensor):
        return obj.materialise()
    if isinstance(obj, dict):
        for k in list(obj.keys()):
            obj[k] = _materialise(obj[k])
        return obj
    if isinstance(obj, list):
        return [_materialise(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_materialise(v) for v in obj)
    return obj


def _load_zip(path: str):
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        pkl = [n for n in names if n == "data.pkl" or n.endswith("/data.pkl")]
        if len(pkl) != 1:
            raise PthReadError("zip file has no single '<archive>/data.pkl'; not a torch.save file")
        prefix = pkl[0][: -len("data.pkl")]
        byteorder = "little"
        if prefix + "byteorder" in names:
            byteorder = zf.read(prefix + "byteorder").decode("ascii").strip()
        storages: Dict[str, _Storage] = {}

        def load_storage(pid):
            _, storage_type, key, _location, numel = pid[:5]
            key = _text(key)
            if key not in storages:
                dtype = _storage_dtype(storage_type, byteorder)
                raw = zf.read(f"{prefix}data/{key}")
                st = _Storage(dtype, len(raw) // dtype.itemsize)
                st.data = np.frombuffer(raw, dtype=dtype).astype(dtype.newbyteorder("="))
                if st.numel < int(numel):
                    raise PthReadError(f"storage {key} has {st.numel} elements, expected {numel}")
                storages[key] = st
            return storages[key]

        obj = _Unpickler(io.BytesIO(zf.read(pkl[0])), load_storage).load()
    return _materialise(obj)


def _load_legacy(path: str):
    with open(path, "rb") as fh:
        try:
            magic = pickle.load(fh)
        except Exception as e:  # not a pickle at all
            raise PthReadError(f"neither a zip nor a legacy torch file ({e})") from None
        if magic != _LEGACY_MAGIC:
            raise PthReadError("not a torch.save file (bad magic number)")
        if pickle.load(fh) != _LEGACY_PROTOCOL:
            raise PthReadError("unsupported legacy torch protocol version")
        sys_info = pickle.load(fh)
        byteorder = "little"
        if isinstance(sys_info, dict) and not sys_info.get("little_endian", True):
            byteorder = "big"
        storages: Dict[str, _Storage] = {}

        def load_storage(pid):
            _, storage_type, key, _location, numel, view = pid[:6]
            key = _text(key)
            if key not in storages:
                storages[key] = _Storage(_storage_dtype(storage_type, byteorder), numel)
            if view is not None:
                raise PthReadError("legacy storage views are not supported; re-save the file "
                                   "with a recent torch")
            return storages[key]

        obj = _Unpickler(fh, load_storage).load()
        keys = pickle.load(fh)
        for key in keys:
            st = storages[_text(key)]
            (numel,) = struct.unpack("<q" if byteorder == "little" else ">q", fh.read(8))
            raw = fh.read(numel * st.dtype.itemsize)
            if len(raw) != numel * st.dtype.itemsize:
                raise PthReadError(f"file truncated while reading storage {key}")
            st.data = np.frombuffer(raw, dtype=st.dtype).astype(st.dtype.newbyteorder("="))
    return _materialise(obj)


def load_pth(path: str) -> Any:
    """Load a `torch.save` file; every tensor becomes a NumPy array.

    Args:
        path: a `.pth`/`.pt` file in torch's zip layout or its legacy layout.

    Returns:
        The saved object (usually an OrderedDict state dict) with tensors as
        contiguous `np.ndarray`s of the stored dtype and shape.

    Raises:
        PthReadError: the file is not a torch checkpoint of a supported kind.
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
