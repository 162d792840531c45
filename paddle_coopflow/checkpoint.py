"""Checkpoints as a prefix triple, written atomically.

``<prefix>.pdparams``  network weights  {"flow": state_dict, "ebm": state_dict}
``<prefix>.pdopt``     optimizer + LR scheduler states
``<prefix>.pdstates``  progress, best metric, every RNG state, resolved config, versions

Each file is written to a temporary name and renamed into place, and ``.pdstates`` is written
last and carries an id that the other two carry too: a crash between files leaves a prefix
whose ids disagree, which :func:`load_checkpoint` reports instead of loading a mixed state.
"""
from __future__ import annotations

import glob
import os
import pickle
import random
import re
import shutil
import uuid
from typing import Any, Dict, Optional

import numpy as np

from .errors import CheckpointError
from .version import __version__

SUFFIXES = (".pdparams", ".pdopt", ".pdstates")


def _atomic_save(obj, path: str) -> None:
    import paddle

    tmp = f"{path}.tmp{os.getpid()}"
    paddle.save(obj, tmp)
    with open(tmp, "rb+") as fh:  # make the bytes durable before the rename publishes them
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def rng_state() -> Dict[str, Any]:
    import paddle

    state = {"python": random.getstate(), "numpy": np.random.get_state(), "paddle": paddle.get_rng_state()}
    if paddle.is_compiled_with_cuda() and paddle.device.cuda.device_count() > 0:
        state["paddle_cuda"] = paddle.get_cuda_rng_state()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    import paddle

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    paddle.set_rng_state(state["paddle"])
    if "paddle_cuda" in state and paddle.is_compiled_with_cuda():
        paddle.set_cuda_rng_state(state["paddle_cuda"])


def save_checkpoint(prefix: str, params: Dict[str, Any], opt: Dict[str, Any], states: Dict[str, Any]) -> None:
    """Write the triple for `prefix` (directories are created)."""
    import paddle

    os.makedirs(os.path.dirname(os.path.abspath(prefix)), exist_ok=True)
    ckpt_id = uuid.uuid4().hex
    _atomic_save(dict(params, _ckpt_id=ckpt_id), prefix + ".pdparams")
    _atomic_save(dict(opt, _ckpt_id=ckpt_id), prefix + ".pdopt")
    states = dict(states, _ckpt_id=ckpt_id, package_version=__version__, paddle_version=paddle.__version__)
    tmp = f"{prefix}.pdstates.tmp{os.getpid()}"
    with open(tmp, "wb") as fh:
        pickle.dump(states, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, prefix + ".pdstates")


def link_checkpoint(src_prefix: str, dst_prefix: str) -> None:
    """Make `dst_prefix` (e.g. ``latest``) point at the files of `src_prefix`, atomically per file.

    Hard links avoid writing hundreds of MB twice; filesystems without them get a copy.
    """
    for suf in SUFFIXES:
        tmp = f"{dst_prefix}{suf}.tmp{os.getpid()}"
        if os.path.exists(tmp):
            os.remove(tmp)
        try:
            os.link(src_prefix + suf, tmp)
        except OSError:
            shutil.copyfile(src_prefix + suf, tmp)
        os.replace(tmp, dst_prefix + suf)


def checkpoint_exists(prefix: str) -> bool:
    return all(os.path.isfile(prefix + s) for s in SUFFIXES)


def _strip_suffix(prefix: str) -> str:
    for suf in SUFFIXES:
        if prefix.endswith(suf):
            return prefix[: -len(suf)]
    return prefix


def load_checkpoint(prefix: str, need=SUFFIXES) -> Dict[str, Any]:
    """Load a prefix triple → {"params", "opt", "states"} (only the parts in `need`)."""
    import paddle

    prefix = _strip_suffix(prefix)
    missing = [prefix + s for s in need if not os.path.isfile(prefix + s)]
    if missing:
        raise CheckpointError(f"checkpoint '{prefix}' is incomplete: missing {', '.join(missing)} "
                              f"(expected {', '.join(prefix + s for s in need)})")
    out: Dict[str, Any] = {}
    try:
        if ".pdparams" in need:
            out["params"] = paddle.load(prefix + ".pdparams")
        if ".pdopt" in need:
            out["opt"] = paddle.load(prefix + ".pdopt")
        if ".pdstates" in need:
            with open(prefix + ".pdstates", "rb") as fh:
                out["states"] = pickle.load(fh)
    except Exception as err:  # corrupt / truncated file
        raise CheckpointError(f"checkpoint '{prefix}' cannot be read ({type(err).__name__}: {err})") from None
    ids = {part["_ckpt_id"] for part in out.values() if isinstance(part, dict) and "_ckpt_id" in part}
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
