"""Run-time detection of a *finite* blow-up of cooperative training (section ``Health`` of the config).

A non-finite step is caught where it happens (:mod:`paddle_coopflow.coopflow`). A runaway EBM stays
finite: the ML loss of eq. (2) is invariant to a constant shift of f, so the scale of f can drift, and
when it runs away the Langevin chains are dragged far from where the flow put them and the flow,
trained on those revisions, follows. :class:`HealthCheck` watches what the trainer already logs:

    clip     langevin_delta_clip_frac                    share of gradient terms ½s²∇f beyond the δ clip
    energy   max(|f_data|, |f_revised|, |f_proposal|)   the scale of f
    langevin langevin_mse                                the chains' mean squared displacement

The flow's NLL on the revisions is not watched: it is a batch mean dominated by a few points far out,
and runs of it thousands of times above its median also come and go in runs that do not run away.

The rule, per quantity q, at every check t (one logged record of the image trainer, one iteration of
tools/toy2d.py):

    ref_t  = median of q over the last ``Health.window`` *calm* checks (checks not out of range)
    out_t  = q_t > Health.clip_frac                 clip (a fixed share: healthy runs clip almost nothing)
             q_t > factor · max(ref_t, floor)      energy:   Health.energy_factor,   Health.energy_floor
                                                    langevin: Health.langevin_factor, Health.langevin_floor

and a blow-up is ``Health.patience`` consecutive out-of-range checks of one quantity, once
``Health.warmup`` calm checks have built its reference (the clip share needs none; it is 0 when
Langevin.delta_clip is null). Out-of-range checks never enter the
reference, so a runaway is measured against the state before it; the floors keep tiny early values
(f ≈ 0, chains that barely move) from counting as growth; the patience ignores single spikes (one
batch with a far-out proposal). The reference restarts when the training phase changes (the flow's
pre-training, the frozen-flow and the cooperative phases see different quantities) and when a run is resumed.

:func:`replay` runs the rule over a ``stats.jsonl`` to check a run after the fact::

    python tools/train.py --check-health RUN/stats.jsonl [-c CONFIG] [-o Health.key=value ...]
"""
from __future__ import annotations

import json
import math
from collections import deque
from typing import Deque, Dict, List, Mapping, Optional, Tuple

import numpy as np

from ..errors import UserError

__all__ = ["HealthCheck", "QUANTITIES", "NonfiniteStreak", "stop_on_blowup", "read_stats", "replay"]

# the watched quantities, and the train_step key of those that are one logged value
QUANTITIES = ("clip", "energy", "langevin")
_KEYS = {"clip": "langevin_delta_clip_frac", "langevin": "langevin_mse"}
# stats.jsonl tag → train_step key, for the quantities the rule reads
_TAG_KEYS = {"train/f_data": "f_data", "train/f_revised": "f_revised", "train/f_proposal": "f_proposal",
             "langevin/mse_change": "langevin_mse", "langevin/delta_clip_frac": "langevin_delta_clip_frac"}


def _value(name: str, stats: Mapping[str, float]) -> Optional[float]:
    if name == "energy":
        fs = [abs(stats[k]) for k in ("f_data", "f_revised", "f_proposal") if _finite(stats.get(k))]
        return max(fs) if fs else None
    v = stats.get(_KEYS[name])
    return float(v) if _finite(v) else None


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


class HealthCheck:
    """The blow-up rule of the module docstring, fed one record of train_step stats at a time.

    Args:
        cfg: the ``Health`` section of the config (check, warmup, window, patience, clip_frac,
            energy_factor, energy_floor, langevin_factor, langevin_floor).
    """

    def __init__(self, cfg):
        self.cfg = cfg
        self.phase: Optional[str] = None
        self.reset()

    def reset(self) -> None:
        """Forget every reference (a new phase, a resumed run)."""
        self.calm: Dict[str, Deque[float]] = {q: deque(maxlen=self.cfg.window) for q in QUANTITIES}
        self.streak: Dict[str, int] = {q: 0 for q in QUANTITIES}

    @property
    def suspect(self) -> Optional[str]:
        """The quantity out of range at the last check (a blow-up may be starting), else None."""
        return next((q for q in QUANTITIES if self.streak[q]), None)

    def limit(self, name: str) -> Optional[float]:
        """The current threshold of a quantity, or None while its reference is still warming up."""
        if name == "clip":
            return self.cfg.clip_frac
        calm = self.calm[name]
        if len(calm) < self.cfg.warmup:
            return None
        ref = float(np.median(calm))
        c = self.cfg
        if name == "energy":
            return c.energy_factor * max(ref, c.energy_floor)
        return c.langevin_factor * max(ref, c.langevin_floor)

    def update(self, step: int, stats: Mapping[str, float], phase: str = "") -> Optional[str]:
        """Take one check; returns the one-line blow-up message, or None while training is healthy.

        Args:
            step: the global iteration the stats belong to.
            stats: train_step stats (or the means of a log interval), keyed as train_step returns them.
            phase: the training phase; a change of phase restarts the references.
        """
        if not self.cfg.check:
            return None
        if phase != self.phase:
            self.phase = phase
            self.reset()
        for name in QUANTITIES:
            v = _value(name, stats)
            if v is None:
                continue
            lim = self.limit(name)
            if lim is None or v <= lim:
                self.calm[name].append(v)
                self.streak[name] = 0
                continue
            self.streak[name] += 1
            if self.streak[name] >= self.cfg.patience:
                return self._message(step, name, v, lim)
        return None

    def _message(self, step: int, name: str, v: float, lim: float) -> str:
        c = self.cfg
        what = {"clip": ("langevin_delta_clip_frac (share of gradient terms beyond the delta clip)",
                         f"Health.clip_frac={c.clip_frac:g}"),
                "energy": ("max |f| on data/revisions/proposals", f"Health.energy_factor={c.energy_factor:g} x "
                           f"the median of the calm checks before (floor Health.energy_floor={c.energy_floor:g})"),
                "langevin": ("langevin_mse (the chains' mean squared displacement)",
                             f"Health.langevin_factor={c.langevin_factor:g} x the median of the calm checks before "
                             f"(floor Health.langevin_floor={c.langevin_floor:g})")}[name]
        return (f"finite blow-up at iteration {step}: {what[0]} = {v:.4g} above {lim:.4g} "
                f"({what[1]}) for {self.streak[name]} checks in a row")


class NonfiniteStreak:
    """Consecutive non-finite (skipped) steps; stops the run after `limit` in a row (Global.max_consecutive_nonfinite).

    A resumed run starts a new streak (a fresh object).
    """

    def __init__(self, limit: int):
        self.limit, self.count = int(limit), 0

    def update(self, nonfinite: bool, step: int, total: int, last_saved: Optional[str], log) -> None:
        """Count (or end) the streak after iteration `step`; `total` is the run's count of non-finite steps.

        Raises:
            UserError: one line naming the last checkpoint written before the streak.
        """
        if not nonfinite:
            self.count = 0
            return
        self.count += 1
        log.info(f"non-finite loss/energy/gradient at iter {step}: step skipped ({self.count} in a row, {total} total)")
        if self.count >= self.limit:
            raise UserError(f"{self.count} consecutive non-finite steps at iter {step}; stopping. Last good checkpoint "
                            f"(written before the streak): {last_saved or 'none saved yet'} (lower the learning rate "
                            "or step size and resume from it)")


def stop_on_blowup(check: HealthCheck, means: Mapping[str, float], phase: str, step: int, world_size: int,
                   last_saved: Optional[str], log) -> None:
    """The finite blow-up check on one log interval's means (iteration `step`).

    Raises:
        UserError: one line naming the iteration, the quantity and the last checkpoint written before
            (nothing is saved while a quantity is out of range: ``Trainer.save`` asks ``check.suspect``).
    """
    msg = check.update(step, means, phase)
    if world_size > 1:  # rank 0's stats decide, so that every rank stops at the same iteration
        import paddle
        import paddle.distributed as dist

        flag = paddle.to_tensor([1 if msg else 0], dtype="int32")
        dist.broadcast(flag, src=0)
        msg = (msg or f"finite blow-up at iteration {step} (found on rank 0)") if int(flag.item()) else None
    if msg:
        log.info(msg)
        raise UserError(f"{msg}; stopped. Last checkpoint before it: {last_saved or 'none saved yet'} (resume "
                        "from it with lower learning rates, docs/training.md)")


def read_stats(path: str) -> List[Tuple[int, Dict[str, float], str]]:
    """(step, train_step-keyed stats, phase) of every training record of a ``stats.jsonl``."""
    out = []
    with open(path) as fh:
        for line in fh:
            try:
                rec = json.loads(line)
            except ValueError:
                continue  # a line cut by a killed write
            stats = {key: rec[tag] for tag, key in _TAG_KEYS.items() if isinstance(rec.get(tag), (int, float))}
            if stats and isinstance(rec.get("step"), int):
                out.append((rec["step"], stats, str(rec.get("phase", ""))))
    return out


def replay(path: str, cfg) -> Optional[str]:
    """Run the rule over a ``stats.jsonl`` as the run would have; the first blow-up message, or None."""
    check = HealthCheck(cfg)
    for step, stats, phase in read_stats(path):
        msg = check.update(step, stats, phase)
        if msg:
            return msg
    return None
