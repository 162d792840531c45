"""The run directory: refusing to mix runs, overwriting cleanly, cleaning after a killed process.

A run directory is created (or changed) only after the config, the data and any checkpoint to
resume from have loaded, so a failed start leaves nothing behind. ``Global.overwrite=true`` moves the
previous run's files into ``<run>.old-<timestamp>/`` (nothing is deleted) and says so in one log line.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from typing import List, Optional

from ..errors import UserError
from ..logger import RunLogger
from .checkpointing import stale_temp_files

__all__ = ["RUN_ENTRIES", "holds_run", "refuse_existing", "move_aside", "truncate_stats", "open_run_dir"]

# What a training run writes into its directory (export goes to Export.save_dir when that is set).
RUN_ENTRIES = ("ckpt", "samples", "vdl", "train.log", "stats.jsonl", "config.yaml", "inference",
               "inference_best", "fid_ref_stats.npz", "proxy_ref_features.npz")


def holds_run(run_dir: str) -> bool:
    """True when `run_dir` already holds checkpoints, stats or a training log."""
    return os.path.isdir(run_dir) and any(os.path.exists(os.path.join(run_dir, n))
                                          for n in ("ckpt", "stats.jsonl", "train.log"))


def refuse_existing(run_dir: str) -> None:
    """Raise the one-line refusal for a new run pointed at an existing one.

    Suggests ``--resume <run>/ckpt/latest`` only when that checkpoint exists.
    """
    from ..checkpoint import checkpoint_exists

    latest = os.path.join(run_dir, "ckpt", "latest")
    resume = f"resume it with --resume {latest}, " if checkpoint_exists(latest) else ""
    raise UserError(f"run directory {run_dir} already holds a run; {resume}pick another "
                    "-o Global.output_dir=..., or pass -o Global.overwrite=true (moves the old run aside)")


def move_aside(run_dir: str, stamp: Optional[str] = None) -> Optional[str]:
    """Move the previous run's entries (:data:`RUN_ENTRIES`) into ``<run_dir>.old-<stamp>/``.

    Returns:
        the directory they went to, or None when there was nothing to move.
    """
    present: List[str] = [n for n in RUN_ENTRIES if os.path.exists(os.path.join(run_dir, n))]
    if not present:
        return None
    base = f"{os.path.normpath(run_dir)}.old-{stamp or time.strftime('%Y%m%d-%H%M%S')}"
    dest, k = base, 1
    while os.path.exists(dest):
        dest, k = f"{base}-{k}", k + 1
    os.makedirs(dest)
    for n in present:
        shutil.move(os.path.join(run_dir, n), os.path.join(dest, n))
    return dest


def truncate_stats(path: str, last_step: int) -> int:
    """Drop the records of ``stats.jsonl`` with step > `last_step` (written after the resumed checkpoint).

    Returns:
        the number of records removed (unreadable trailing lines of a killed write included).
    """
    if not os.path.isfile(path):
        return 0
    keep, dropped = [], 0
    with open(path) as fh:
        for line in fh:
            try:
                ok = int(json.loads(line)["step"]) <= last_step
            except (ValueError, KeyError, TypeError):
                ok = False
            if ok:
                keep.append(line if line.endswith("\n") else line + "\n")
            else:
                dropped += 1
    if dropped:
        tmp = f"{path}.tmp{os.getpid()}"
        with open(tmp, "w") as fh:
            fh.writelines(keep)
        os.replace(tmp, path)
    return dropped


def open_run_dir(cfg, run_dir: str, rank: int, global_iter: int, resume: Optional[str],
                 notes: List[str]) -> RunLogger:
    """Create or tidy the run directory (rank 0), open its logs and write `notes` and what this did.

    Called only after the config, the data and any checkpoint to resume from have loaded; `global_iter`
    is the iteration resumed from (stats.jsonl records after it are dropped).
    """
    notes = list(notes)
    ckpt_dir = os.path.join(run_dir, "ckpt")
    if rank == 0:
        if not resume and cfg.Global.overwrite and holds_run(run_dir):
            notes.append(f"Global.overwrite: the previous run in {run_dir} was moved to {move_aside(run_dir)}")
        os.makedirs(ckpt_dir, exist_ok=True)
        for f in stale_temp_files(ckpt_dir):
            os.remove(f)
            notes.append(f"removed {f} (left by a save that was killed)")
        if resume:
            n = truncate_stats(os.path.join(run_dir, "stats.jsonl"), global_iter)
            if n:
                notes.append(f"stats.jsonl: dropped {n} records after iter {global_iter}")
    log = RunLogger(run_dir, enabled=rank == 0, use_visualdl=cfg.Global.use_visualdl)
    for line in notes:
        log.info(line)
    if rank == 0:
        with open(os.path.join(run_dir, "config.yaml"), "w") as fh:
            fh.write(cfg.dump())
        log.info("resolved config:\n" + cfg.dump())
    return log
