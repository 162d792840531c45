"""Unpickling that accepts data only: how this package reads every pickle it did not just write.

Python's `pickle` rebuilds an object by calling whatever function the file names, so a plain
``pickle.load`` (and ``paddle.load``, which is one) runs any code a file carries. This reader
resolves a name only when it is on an allow-list, by its exact ``module.name``, and every name
resolves to a stand-in that checks its arguments instead of the real callable. What it accepts:

* None, bool, int, float, complex, str, bytes, lists, tuples, dicts and OrderedDicts of these,
  and sets where the pickle protocol has opcodes for them (4+): pickle builds all of these without
  calling anything named in the file;
* NumPy arrays and scalars of bool, integer, float, complex and fixed-width string dtypes, as
  NumPy pickles them (``_reconstruct`` + ``ndarray`` + ``dtype``, protocol 5's ``_frombuffer``,
  protocol 2's ``_codecs.encode`` of latin-1 text and ``bytes()``). The array is rebuilt here from its declared
  shape, dtype and bytes, after checking that they agree; object, structured and datetime dtypes
  are refused;
* per format, a few more names a caller passes in: :data:`PADDLE_GLOBALS` for files of
  ``paddle.save`` (a tensor is ``tuple((name, ndarray))``) and Paddle's RNG state objects
  (``GeneratorState``, rebuilt from checked integers), or torch's tensor rebuild functions
  (:mod:`paddle_coopflow.utils.pth_reader`).

Any other name is refused with :class:`PickleRefused` ("refusing to load global posix.system ...")
before anything from the file is called. :func:`load_paddle` reads a ``paddle.save`` file this way
and returns what ``paddle.load`` would.
"""
from __future__ import annotations

import collections
import io
import pickle
import re
import types
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

import numpy as np

__all__ = ["PickleRefused", "refuse", "Stub", "Call", "Unpickler", "materialise", "load", "loads", "load_paddle",
           "DATA_GLOBALS", "PADDLE_GLOBALS"]

_ACCEPTED = "forbidden: a data file may hold only arrays, numbers, strings and lists/tuples/dicts of them"


class PickleRefused(pickle.UnpicklingError):
    """The pickle names something that is not data, or data that does not check out."""


def refuse(what: str) -> PickleRefused:
    """The error for a refused item: `what` is named, then what is accepted."""
    return PickleRefused(f"{what} ({_ACCEPTED})")


class Stub:
    """A value recorded while unpickling and built by :func:`materialise` afterwards.

    Pickle applies an object's state (``__setstate__``) after creating it, and a torch storage's
    bytes may come after the whole pickle, so values are built once the pickle is complete.
    """

    __slots__ = ()

    def __setstate__(self, state) -> None:
        # Pickle's BUILD would otherwise set attributes that __init__ checked; on the class itself the
        # call fails (an unbound method), so no file can change a stand-in class either.
        raise refuse(f"refusing state for a {type(self).__name__.lstrip('_')}")

    def build(self) -> Any:
        raise NotImplementedError


class Call:
    """An allow-listed function as pickle sees it: callable, and no state a file could set."""

    __slots__ = ("fn",)

    def __init__(self, fn: Callable):
        self.fn = fn

    def __call__(self, *args):
        return self.fn(*args)

    def __setstate__(self, state) -> None:
        raise refuse(f"refusing state for {self.fn.__name__}")


# ------------------------------------------------------------------------------------------ numpy
_DTYPE_SPEC = re.compile(r"[biufc]\d+|[SU]\d+")


class _Dtype(Stub):
    """``numpy.dtype(spec, align, copy)`` followed by ``__setstate__((version, byteorder, ...))``."""

    __slots__ = ("spec", "byteorder")

    def __init__(self, spec=None, align=False, copy=True):
        if not isinstance(spec, str) or not _DTYPE_SPEC.fullmatch(spec):
            raise refuse(f"refusing numpy dtype {spec!r:.40}")
        self.spec, self.byteorder = spec, "="

    def __setstate__(self, state) -> None:
        if not isinstance(state, tuple) or len(state) < 5 or state[1] not in ("<", ">", "|", "="):
            raise refuse(f"refusing numpy dtype state {state!r:.80}")
        if any(x is not None for x in state[2:5]):  # subarray, names, fields
            raise refuse("refusing a structured numpy dtype")
        self.byteorder = state[1]

    def build(self) -> np.dtype:
        dt = np.dtype(self.spec)
        return dt.newbyteorder(self.byteorder) if self.byteorder in "<>" else dt


def _array_from_bytes(raw, dtype: "_Dtype", shape, fortran: bool) -> np.ndarray:
    """An array that owns a copy of `raw`, after checking it holds exactly shape x itemsize bytes."""
    if not isinstance(dtype, _Dtype):
        raise refuse(f"refusing an array whose dtype is {type(dtype).__name__}")
    if isinstance(raw, str):  # a Python 2 pickle read with encoding latin1, as NumPy reads it
        raw = raw.encode("latin1")
    if not isinstance(raw, (bytes, bytearray)):
        raise refuse(f"refusing an array whose data is {type(raw).__name__}, not bytes")
    if not isinstance(shape, tuple) or not all(type(n) is int and n >= 0 for n in shape):
        raise refuse(f"refusing an array of shape {shape!r:.80}")
    dt = dtype.build()
    numel = 1
    for n in shape:
        numel *= n
    if numel * dt.itemsize != len(raw):
        raise PickleRefused(f"an array of shape {shape} and dtype {dt} needs {numel * dt.itemsize} bytes, "
                            f"the file holds {len(raw)}")
    flat = np.frombuffer(raw, dtype=dt)
    return np.array(flat.reshape(shape, order="F" if fortran else "C"), copy=True)


class _Array(Stub):
    """``numpy.core.multiarray._reconstruct(ndarray, (0,), b'b')`` then ``__setstate__``."""

    __slots__ = ("state",)

    def __init__(self):
        self.state = None

    def __setstate__(self, state) -> None:
        if isinstance(state, tuple) and len(state) == 5 and type(state[0]) is int:
            state = state[1:]  # (version, shape, dtype, is_fortran, data)
        if not isinstance(state, tuple) or len(state) != 4 or not isinstance(state[2], bool):
            raise refuse(f"refusing numpy array state {type(state).__name__}")
        self.state = state

    def build(self) -> np.ndarray:
        if self.state is None:
            raise PickleRefused("a numpy array without its data")
        shape, dtype, fortran, raw = self.state
        return _array_from_bytes(raw, dtype, shape, fortran)


class _BuiltArray(Stub):
    __slots__ = ("args",)

    def __init__(self, *args):
        self.args = args

    def build(self) -> np.ndarray:
        return _array_from_bytes(*self.args)


_NDARRAY = object()  # what the name numpy.ndarray resolves to: only _reconstruct accepts it


def _reconstruct(subtype, shape, typecode) -> _Array:
    if subtype is not _NDARRAY:
        raise refuse("refusing numpy _reconstruct of a type other than numpy.ndarray")
    return _Array()


def _frombuffer(buf, dtype, shape, order) -> _BuiltArray:
    """NumPy's pickle protocol 5 form of an array (the buffer arrives in-band)."""
    if order not in ("C", "F"):
        raise refuse(f"refusing array order {order!r}")
    return _BuiltArray(bytes(buf) if isinstance(buf, bytearray) else buf, dtype, shape, order == "F")


class _Scalar(Stub):
    """``numpy.core.multiarray.scalar(dtype, bytes)``: a NumPy scalar such as np.float64(0.5)."""

    __slots__ = ("dtype", "raw")

    def __init__(self, dtype=None, raw=None):
        self.dtype, self.raw = dtype, raw

    def build(self):
        return _array_from_bytes(self.raw, self.dtype, (), False)[()]


def _latin1(text, encoding="utf-8") -> bytes:
    """``_codecs.encode(text, 'latin1')``: how protocol 2 pickles bytes under Python 3."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise refuse(f"refusing _codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


def _bytes(data=b"") -> bytes:
    """``bytes()``: protocol 2 writes an empty bytes object as a call without arguments."""
    if not isinstance(data, (bytes, bytearray)):
        raise refuse(f"refusing bytes() of a {type(data).__name__}")
    return bytes(data)


# ------------------------------------------------------------------------------------------ paddle
def _tuple(items=()) -> tuple:
    """``builtins.tuple``: paddle.save writes a tensor as ``tuple((name, ndarray))``."""
    if not isinstance(items, (list, tuple)):
        raise refuse(f"refusing tuple() of a {type(items).__name__}")
    return tuple(items)


class _GeneratorState(Stub):
    """Paddle's RNG state object: ``GeneratorState.__new__`` then ``__setstate__`` of integers."""

    __slots__ = ("state",)

    def __init__(self):
        self.state = None

    def __setstate__(self, state) -> None:
        def plain(v):
            return type(v) is int or (type(v) is list and all(type(b) is int and 0 <= b < 256 for b in v))

        if not isinstance(state, tuple) or not all(plain(v) for v in state):
            raise refuse("refusing a Paddle GeneratorState whose state is not integers")
        self.state = state

    def build(self):
        from paddle.base.libpaddle import GeneratorState

        if self.state is None:
            raise PickleRefused("a Paddle GeneratorState without its state")
        out = GeneratorState.__new__(GeneratorState)
        try:
            out.__setstate__(self.state)
        except (TypeError, ValueError, RuntimeError) as err:
            raise PickleRefused(f"a Paddle GeneratorState Paddle cannot restore ({err})") from None
        return out


# (module, name) -> what the name means here; NumPy 1 and NumPy 2 spell the module differently.
DATA_GLOBALS: Mapping[Tuple[str, str], Any] = types.MappingProxyType({
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("_codecs", "encode"): Call(_latin1),
    **{(builtins, "bytes"): Call(_bytes) for builtins in ("builtins", "__builtin__")},  # Python 3 and 2 names
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy", "dtype"): _Dtype,
    **{(f"{core}.multiarray", "_reconstruct"): Call(_reconstruct) for core in ("numpy.core", "numpy._core")},
    **{(f"{core}.multiarray", "scalar"): _Scalar for core in ("numpy.core", "numpy._core")},
    **{(f"{core}.numeric", "_frombuffer"): Call(_frombuffer) for core in ("numpy.core", "numpy._core")},
})

PADDLE_GLOBALS: Mapping[Tuple[str, str], Any] = types.MappingProxyType({
    **{(builtins, "tuple"): Call(_tuple) for builtins in ("builtins", "__builtin__")},
    ("paddle.base.libpaddle", "GeneratorState"): _GeneratorState,
})


# ------------------------------------------------------------------------------------------ reading
class Unpickler(pickle.Unpickler):
    """A pickle reader that resolves only allow-listed globals.

    Args:
        fh: binary file object positioned at a pickle.
        extra: more (module, name) -> stand-in entries for a format (e.g. :data:`PADDLE_GLOBALS`).
        persistent_load: resolves persistent ids (torch storages); without it they are refused.
        encoding: how Python 2 text is read: "latin1" (as paddle.load and torch) or "bytes".
    """

    def __init__(self, fh, extra: Optional[Mapping[Tuple[str, str], Any]] = None,
                 persistent_load: Optional[Callable[[Any], Any]] = None, encoding: str = "latin1"):
        super().__init__(fh, encoding=encoding)
        self._globals = {**DATA_GLOBALS, **(extra or {})}
        self._persistent = persistent_load

    def find_class(self, module: str, name: str):
        if (module, name) in self._globals:
            return self._globals[(module, name)]
        raise refuse(f"refusing to load global {module}.{name}")

    def persistent_load(self, pid):
        if self._persistent is None:
            raise refuse(f"refusing persistent id {pid!r:.80}")
        return self._persistent(pid)


def materialise(obj: Any) -> Any:
    """`obj` with every :class:`Stub` inside (Ordered)dicts, lists, tuples and sets built.

    An object reached twice (pickle's memo) is built once and shared, as pickle would share it.
    """
    done: Dict[int, Any] = {}

    def walk(x):
        if isinstance(x, (str, bytes, bytearray, int, float, complex, bool, type(None), np.ndarray, np.generic)):
            return x
        if id(x) in done:
            return done[id(x)]
        if isinstance(x, Stub):
            out = x.build()
        elif type(x) in (dict, collections.OrderedDict):
            out = type(x)()
            done[id(x)] = out
            for k, v in x.items():
                out[walk(k)] = walk(v)
        elif type(x) is list:
            out = []
            done[id(x)] = out
            out.extend(walk(v) for v in x)
        elif type(x) in (tuple, set, frozenset):
            out = type(x)(walk(v) for v in x)
        else:  # OrderedDict's attributes etc.: nothing else can be produced by an allow-listed name
            raise refuse(f"refusing a {type(x).__name__} object")
        done[id(x)] = out
        return out

    return walk(obj)


def load(fh, extra: Optional[Mapping[Tuple[str, str], Any]] = None, encoding: str = "latin1") -> Any:
    """Read one pickle from `fh` with the allow-list (plus `extra`); stubs built.

    Raises:
        PickleRefused: a global off the list, or data that does not check out.
        pickle.UnpicklingError, EOFError, ValueError, MemoryError: not a (complete) pickle.
    """
    return materialise(Unpickler(fh, extra, encoding=encoding).load())


def loads(data: bytes, extra: Optional[Mapping[Tuple[str, str], Any]] = None, encoding: str = "latin1") -> Any:
    """:func:`load` of bytes in memory."""
    return load(io.BytesIO(data), extra, encoding)


def _is_paddle_tensor(obj) -> bool:
    return isinstance(obj, tuple) and len(obj) == 2 and isinstance(obj[0], str) and isinstance(obj[1], np.ndarray)


def _convert(obj, is_tensor: Callable[[Any], bool], to_tensor: Callable[[Any], Any]):
    if is_tensor(obj):
        return to_tensor(obj)
    if type(obj) in (dict, collections.OrderedDict):
        return type(obj)((k, _convert(v, is_tensor, to_tensor)) for k, v in obj.items())
    if type(obj) in (list, tuple):
        return type(obj)(_convert(v, is_tensor, to_tensor) for v in obj)
    return obj


def _contains(obj, test: Callable[[Any], bool]) -> bool:
    if test(obj):
        return True
    if type(obj) in (dict, collections.OrderedDict):
        return any(_contains(v, test) for v in obj.values())
    return type(obj) in (list, tuple) and any(_contains(v, test) for v in obj)


_NAME_TABLE = "StructuredToParameterName@@"  # paddle.save of a flat state dict: arrays + a name table


def load_paddle(path: str, return_numpy: bool = False) -> Any:
    """Read a file written by ``paddle.save`` (a pickle) as ``paddle.load`` would, with the allow-list.

    Tensors come back as Paddle tensors carrying their saved names (or as NumPy arrays with
    `return_numpy`), by paddle.load's rules: a flat state dict is saved as arrays plus a name
    table; otherwise the ``(name, ndarray)`` tuples of paddle.save are tensors, and a file without
    any holds its arrays as tensors.

    Raises:
        PickleRefused / pickle.UnpicklingError / EOFError / ValueError / MemoryError: as :func:`load`.
    """
    with open(path, "rb") as fh:
        obj = load(fh, PADDLE_GLOBALS)
    if isinstance(obj, dict) and isinstance(obj.get(_NAME_TABLE), dict):
        names = obj.pop(_NAME_TABLE)
        obj = type(obj)((k, (str(names[k]), v) if k in names and isinstance(v, np.ndarray) else v)
                        for k, v in obj.items())
    if _contains(obj, _is_paddle_tensor):
        is_tensor, array_of = _is_paddle_tensor, (lambda t: t[1])
    else:
        is_tensor, array_of = (lambda x: isinstance(x, np.ndarray)), (lambda a: a)
    if return_numpy:
        return _convert(obj, is_tensor, array_of)
    import paddle

    def to_tensor(x):
        t = paddle.to_tensor(array_of(x))
        if _is_paddle_tensor(x):
            t.name = x[0]
        return t

    return _convert(obj, is_tensor, to_tensor)
