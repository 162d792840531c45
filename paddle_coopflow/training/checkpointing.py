"""Training checkpoints: what a resumable state holds, saving, resuming and pruning.

A training checkpoint is the prefix triple of :mod:`paddle_coopflow.checkpoint` (the atomic file
layer) with

- ``.pdparams``: ``{"flow": state_dict, "ebm": state_dict}`` (the nets the mode trains);
- ``.pdopt``: per optimizer (``flow``, ``ebm``, ``pre_flow`` while the flow pre-trains) its Adam
  state under portable names (:func:`portable_opt_state`) and ``<name>_sched``, its LR scheduler;
- ``.pdstates``: the counters, the RNG states and the Langevin engine *of the last completed
  iteration boundary*, the best metric and the resolved config.

Everything a run draws from comes from these RNG states or from (seed, epoch) (the data order), so
resuming from any checkpoint reaches the parameters of an uninterrupted run bit for bit.
"""
from __future__ import annotations

import glob
import os
import re
from typing import Callable, Dict, Mapping, Optional, Tuple

from .. import checkpoint as ckpt
from ..errors import CheckpointError

__all__ = ["portable_opt_state", "save_training_checkpoint", "load_training_checkpoint", "prune",
           "stale_temp_files", "iter_prefix_name"]


def iter_prefix_name(global_iter: int) -> str:
    """``iter_0000042``: the name of the periodic checkpoint at a global iteration."""
    return f"iter_{global_iter:07d}"


def portable_opt_state(state: Dict, net, to_portable: bool) -> Dict:
    """Rename optimizer accumulators between Paddle's per-process parameter names and structural names.

    Paddle keys accumulators by parameter names such as ``conv2d_19.w_0_moment1_0`` that depend on
    creation order in the process; the portable form uses the network's structural names
    (``@f.0.weight_moment1_0``), so an optimizer state can be restored into nets built in another
    order or process.

    Args:
        state: an optimizer ``state_dict()`` (or its portable form).
        net: the network whose parameters the optimizer updates.
        to_portable: True: Paddle names → structural names; False: the reverse.
    """
    pairs = [(p.name, "@" + k) for k, p in net.named_parameters()]
    if not to_portable:
        pairs = [(b, a) for a, b in pairs]
    pairs.sort(key=lambda ab: -len(ab[0]))
    out = {}
    for key, val in state.items():
        for src, dst in pairs:
            if key.startswith(src + "_"):
                key = dst + key[len(src):]
                break
        out[key] = val
    return out


def save_training_checkpoint(prefix: str, nets: Mapping[str, object], optims: Mapping[str, Tuple[object, object]],
                             states: Dict) -> None:
    """Write one training checkpoint.

    Args:
        prefix: path without suffix, e.g. ``run/ckpt/iter_0000042``.
        nets: {"flow": layer, "ebm": layer}; None values are left out.
        optims: {name: (OptimBundle, the net it updates)}.
        states: the progress dict (counters, RNG states, config, ...).
    """
    params = {k: v.state_dict() for k, v in nets.items() if v is not None}
    opt = {}
    for name, (bundle, net) in optims.items():
        opt[name] = portable_opt_state(bundle.optimizer.state_dict(), net, True)
        opt[name + "_sched"] = bundle.scheduler.state_dict()
    ckpt.save_checkpoint(prefix, params, opt, states)


def load_training_checkpoint(prefix: str, nets: Mapping[str, object],
                             optims: Callable[[Dict], Mapping[str, Tuple[object, object]]]) -> Dict:
    """Restore nets and optimizers from `prefix`; return its progress dict.

    Args:
        prefix: checkpoint prefix.
        nets: {"flow": layer, "ebm": layer}; None values are skipped.
        optims: given the checkpoint's progress dict, the optimizers to restore {name: (bundle, net)}
            (which ones depends on the phase the checkpoint was written in).

    Raises:
        CheckpointError: a missing part, a net or optimizer the run needs and the checkpoint lacks,
            or parameters that do not match the config (one line each).
    """
    data = ckpt.load_checkpoint(prefix)
    p, o = data["params"], data["opt"]
    _check_progress(data["states"], prefix)
    optims = optims(data["states"])
    for k, net in nets.items():
        if net is None:
            continue
        if k not in p:
            raise CheckpointError(f"checkpoint {prefix} has no {k} network; was it trained with another "
                                  "Train.mode?")
        ckpt.load_params_into(net, p[k], k)
    for name, (bundle, net) in optims.items():
        if name not in o:
            raise CheckpointError(f"checkpoint {prefix} has no '{name}' optimizer state; it was written in "
                                  "another phase or mode than this config resumes")
        try:
            bundle.optimizer.set_state_dict(portable_opt_state(o[name], net, False))
            bundle.scheduler.set_state_dict(o[name + "_sched"])
        except (KeyError, TypeError, ValueError, AssertionError, RuntimeError) as err:
            raise CheckpointError(f"checkpoint {prefix}: the '{name}' optimizer state does not fit this run's "
                                  f"optimizer ({type(err).__name__}: {' '.join(str(err).split())[:200]})") from None
    return data["states"]


# What the trainer reads from a progress dict, and the type each must have.
_PROGRESS = {"epoch": int, "batch_pos": int, "global_iter": int, "samples_seen": int, "counters": dict, "best": dict,
             "rng": dict}


def _check_progress(states: Dict, prefix: str) -> None:
    """A one-line CheckpointError unless `states` holds the counters and RNG states a resume needs."""
    bad = [k for k, t in _PROGRESS.items() if not isinstance(states.get(k), t) or isinstance(states.get(k), bool)]
    if bad:
        raise CheckpointError(f"{prefix}.pdstates lacks {', '.join(bad)} (or holds another type): it is not the "
                              "progress of a training run, so it cannot be resumed; start a new run, or pass it "
                              "with -o Train.init_flow=PREFIX to start from its flow")


def prune(ckpt_dir: str, keep: int) -> None:
    """Keep the newest `keep` ``iter_*`` checkpoints (``latest``/``best`` are hard links, unaffected)."""
    ckpt.prune_checkpoints(ckpt_dir, keep)


def stale_temp_files(ckpt_dir: str) -> list:
    """Temporary files a killed save left in `ckpt_dir` (``<name>.pd*.tmp<pid>``)."""
    return sorted(f for f in glob.glob(os.path.join(ckpt_dir, "*.tmp*"))
                  if re.search(r"\.pd(params|opt|states)\.tmp\d+$", f))


def checkpoint_label(states: Optional[Dict]) -> str:
    """'epoch E batch B iter I' of a progress dict, for log lines."""
    if not states:
        return "?"
    return f"epoch {states['epoch'] + 1} batch {states['batch_pos']} iter {states['global_iter']}"
