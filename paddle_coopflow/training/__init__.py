"""The training engine.

- :mod:`.trainer`        the loop and its phases (:class:`Trainer`)
- :mod:`.checkpointing`  what a training checkpoint holds; save, resume, pruning, optimizer-state names
- :mod:`.rundir`         run directory: refusal, overwrite, stale temp files, stats after a resume
- :mod:`.signals`        SIGTERM/SIGINT → stop at an iteration boundary
- :mod:`.distributed`    data-parallel helpers
- :mod:`.outputs`        sample grids, in-training FID and `best`, export at the end
"""
from .signals import TrainingStopped
from .trainer import Trainer

__all__ = ["Trainer", "TrainingStopped"]
