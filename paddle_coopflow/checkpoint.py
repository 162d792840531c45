"""Checkpoints as a prefix triple, written atomically.

``<prefix>.pdparams``  network weights  {"flow": state_dict, "ebm": state_dict}
``<prefix>.pdopt``     optimizer + LR scheduler states
``<prefix>.pdstates``  progress, best metric, every RNG state, resolved config, versions

All three files are written to temporary names first and then renamed into place, ``.pdstates``
last; each carries the same id, so a crash between renames leaves a prefix whose ids disagree,
which :func:`load_checkpoint` reports instead of loading a mixed state. A failed write (a full
disk) removes its temporary files and leaves the prefix as it was.

``.pdparams`` and ``.pdopt`` are ``paddle.save`` files and ``.pdstates`` a pickle, so
``paddle.load`` can open them; this package reads all three with the allow-list unpickler of
:mod:`paddle_coopflow.utils.safe_pickle`, so a checkpoint from someone else cannot run code.
"""
from __future__ import annotations

import errno
import glob
import os
import pickle
import random
import re
import shutil
import uuid
from typing import Any, Dict, List, Optional

import numpy as np

from .errors import CheckpointError
from .utils import safe_pickle
from .version import __version__

SUFFIXES = (".pdparams", ".pdopt", ".pdstates")
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def _write_paddle(obj, path: str) -> None:
    import paddle

    paddle.save(obj, path)
    with open(path, "rb+") as fh:  # make the bytes durable before the rename publishes them
        os.fsync(fh.fileno())


def _write_pickle(obj, path: str) -> None:
    with open(path, "wb") as fh:
        pickle.dump(obj, fh)
        fh.flush()
        os.fsync(fh.fileno())


def _nbytes(obj) -> int:
    """Bytes of the arrays and tensors inside `obj` (what a checkpoint file mostly holds)."""
    if isinstance(obj, dict):
        return sum(_nbytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_nbytes(v) for v in obj)
    if isinstance(obj, np.ndarray):
        return obj.nbytes
    if hasattr(obj, "element_size") and hasattr(obj, "size"):  # a paddle Tensor
        return int(obj.size) * int(obj.element_size())
    return 0


def _no_space(directory: str, what: str, need: int) -> CheckpointError:
    free = shutil.disk_usage(directory).free
    latest = os.path.join(directory, "latest")
    resume = f", then resume with --resume {latest}" if checkpoint_exists(latest) else ""
    return CheckpointError(f"no space left in {directory} to save {what}: it needs about {need / 2**20:.1f} MB, "
                           f"{free / 2**20:.1f} MB are free; free space there (or keep fewer checkpoints: "
                           f"Global.keep_checkpoints){resume}; nothing was written, the files already there "
                           "are intact")


def _remove(paths: List[str]) -> None:
    for p in paths:
        if os.path.exists(p):
            os.remove(p)


def rng_state() -> Dict[str, Any]:
    import paddle

    state = {"python": random.getstate(), "numpy": np.random.get_state(), "paddle": paddle.get_rng_state()}
    if paddle.is_compiled_with_cuda() and paddle.device.cuda.device_count() > 0:
        state["paddle_cuda"] = paddle.get_cuda_rng_state()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned; a one-line CheckpointError if it is not such a state."""
    import paddle

    try:
        random.setstate(state["python"])
        np.random.set_state(state["numpy"])
        paddle.set_rng_state(state["paddle"])
        if "paddle_cuda" in state and paddle.is_compiled_with_cuda():
            paddle.set_cuda_rng_state(state["paddle_cuda"])
    except (TypeError, ValueError, KeyError, IndexError, RuntimeError) as err:
        raise CheckpointError(f"the checkpoint's RNG states cannot be restored ({type(err).__name__}: {err}); "
                              "it was not written by paddle_coopflow's trainer") from None


def save_checkpoint(prefix: str, params: Dict[str, Any], opt: Dict[str, Any], states: Dict[str, Any]) -> None:
    """Write the triple for `prefix` (directories are created).

    Raises:
        CheckpointError: the disk (or quota) is full; the temporary files are removed and any
            files already at `prefix` are untouched.
    """
    import paddle

    directory = os.path.dirname(os.path.abspath(prefix))
    os.makedirs(directory, exist_ok=True)
    ckpt_id = uuid.uuid4().hex
    states = dict(states, _ckpt_id=ckpt_id, package_version=__version__, paddle_version=paddle.__version__)
    parts = ((".pdparams", dict(params, _ckpt_id=ckpt_id), _write_paddle),
             (".pdopt", dict(opt, _ckpt_id=ckpt_id), _write_paddle),
             (".pdstates", states, _write_pickle))
    tmps = [f"{prefix}{suffix}.tmp{os.getpid()}" for suffix, _, _ in parts]
    try:
        for (_, obj, write), tmp in zip(parts, tmps):
            write(obj, tmp)
    except OSError as err:
        _remove(tmps)
        if err.errno in _NO_SPACE:
            raise _no_space(directory, os.path.basename(prefix), _nbytes([params, opt, states])) from None
        raise
    except BaseException:  # an interrupt mid-write: no temporary file stays behind
        _remove(tmps)
        raise
    for (suffix, _, _), tmp in zip(parts, tmps):  # .pdstates last
        os.replace(tmp, prefix + suffix)


def link_checkpoint(src_prefix: str, dst_prefix: str) -> None:
    """Make `dst_prefix` (e.g. ``latest``) point at the files of `src_prefix`, atomically per file.

    Hard links avoid writing hundreds of MB twice; filesystems without them get a copy.
    """
    for suf in SUFFIXES:
        tmp = f"{dst_prefix}{suf}.tmp{os.getpid()}"
        _remove([tmp])
        try:
            os.link(src_prefix + suf, tmp)
        except OSError:
            try:
                shutil.copyfile(src_prefix + suf, tmp)
            except OSError as err:
                _remove([tmp])
                if err.errno in _NO_SPACE:
                    directory = os.path.dirname(os.path.abspath(dst_prefix))
                    raise _no_space(directory, os.path.basename(dst_prefix),
                                    os.path.getsize(src_prefix + suf)) from None
                raise
        os.replace(tmp, dst_prefix + suf)


def checkpoint_exists(prefix: str) -> bool:
    return all(os.path.isfile(prefix + s) for s in SUFFIXES)


def _strip_suffix(prefix: str) -> str:
    for suf in SUFFIXES:
        if prefix.endswith(suf):
            return prefix[: -len(suf)]
    return prefix


def _is_tensor(v) -> bool:
    import paddle

    return isinstance(v, paddle.Tensor)


def _check_part(suffix: str, obj, path: str) -> None:
    """A one-line CheckpointError unless `obj` has the structure of a `suffix` file of this package."""
    expected = {".pdparams": "{'flow': state_dict, 'ebm': state_dict}",
                ".pdopt": "{name: optimizer state}", ".pdstates": "a dict of progress, RNG states and config"}
    problem = None
    if not isinstance(obj, dict):
        problem = f"holds {type(obj).__name__} {str(obj)[:40]!r}"
    elif not isinstance(obj.get("_ckpt_id", ""), str):
        problem = "has a non-text _ckpt_id"
    elif suffix in (".pdparams", ".pdopt"):
        for name, part in obj.items():
            if name == "_ckpt_id":
                continue
            if not isinstance(part, dict):
                problem = f"holds {type(part).__name__} under '{name}'"
            elif suffix == ".pdparams" and not all(isinstance(k, str) and _is_tensor(v) for k, v in part.items()):
                problem = f"'{name}' is not a state dict of named tensors"
            if problem:
                break
    if problem:
        raise CheckpointError(f"'{path}' {problem}, not {expected[suffix]}: it is not a {suffix} file of "
                              "paddle_coopflow")


def _read_part(suffix: str, path: str):
    """One file of the triple, read with the allow-list unpickler (tensors as paddle.load gives them)."""
    try:
        if suffix == ".pdstates":
            with open(path, "rb") as fh:
                obj = safe_pickle.load(fh, safe_pickle.PADDLE_GLOBALS)
        else:
            obj = safe_pickle.load_paddle(path)
    except safe_pickle.PickleRefused as err:
        raise CheckpointError(f"'{path}' refused, nothing in it was run: {err}") from None
    except Exception as err:  # corrupt / truncated / not a pickle
        raise CheckpointError(f"'{path}' cannot be read ({type(err).__name__}: {err}); it is damaged or not "
                              "a checkpoint file") from None
    _check_part(suffix, obj, path)
    return obj


def load_checkpoint(prefix: str, need=SUFFIXES) -> Dict[str, Any]:
    """Load a prefix triple → {"params", "opt", "states"} (only the parts in `need`).

    Every file is read with the allow-list unpickler (:mod:`paddle_coopflow.utils.safe_pickle`)
    and checked to have the structure this package writes; ``paddle.load`` is never called.

    Raises:
        CheckpointError: a missing file, one refused by the allow-list, a damaged one, one of
            another structure (e.g. a ``.pdparams`` that is not a dict of state dicts), or files
            of different saves (one line each).
    """
    prefix = _strip_suffix(prefix)
    missing = [prefix + s for s in need if not os.path.isfile(prefix + s)]
    if missing:
        raise CheckpointError(f"checkpoint '{prefix}' is incomplete: missing {', '.join(missing)} "
                              f"(expected {', '.join(prefix + s for s in need)})")
    names = {".pdparams": "params", ".pdopt": "opt", ".pdstates": "states"}
    out: Dict[str, Any] = {names[s]: _read_part(s, prefix + s) for s in SUFFIXES if s in need}
    ids = {part["_ckpt_id"] for part in out.values() if "_ckpt_id" in part}
    if len(ids) > 1:
        raise CheckpointError(f"checkpoint '{prefix}' mixes files from different saves (interrupted write?); "
                              "resume from another prefix")
    return out


def load_params_into(layer, state: Dict[str, Any], name: str) -> None:
    """`set_state_dict` with a one-line error on any missing/unexpected key or shape mismatch."""
    own = layer.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [(k, list(own[k].shape), list(state[k].shape)) for k in own
              if k in state and list(own[k].shape) != list(np.shape(state[k]))]
    if missing or unexpected or shapes:
        detail = []
        if shapes:
            k, a, b = shapes[0]
            detail.append(f"{len(shapes)} shape mismatches, e.g. '{k}' is {b} in the checkpoint but {a} in the "
                          "config")
        if missing:
            detail.append(f"{len(missing)} missing keys, e.g. '{missing[0]}'")
        if unexpected:
            detail.append(f"{len(unexpected)} unexpected keys, e.g. '{unexpected[0]}'")
        raise CheckpointError(f"{name} checkpoint does not match the config ({'; '.join(detail)}); "
                              "use the config the checkpoint was trained with")
    layer.set_state_dict(state)


def prune_checkpoints(ckpt_dir: str, keep: int, pattern: str = "iter_") -> None:
    """Keep the newest `keep` ``iter_*`` prefixes (files of ``latest``/``best`` are hard links, unaffected)."""
    prefixes = sorted({_strip_suffix(p) for p in glob.glob(os.path.join(ckpt_dir, pattern + "*"))
                       if re.search(r"\d+\.pd(params|opt|states)$", p)})
    for old in prefixes[:-keep] if keep > 0 else []:
        for suf in SUFFIXES:
            if os.path.exists(old + suf):
                os.remove(old + suf)


def latest_prefix(ckpt_dir: str) -> Optional[str]:
    p = os.path.join(ckpt_dir, "latest")
    return p if checkpoint_exists(p) else None
