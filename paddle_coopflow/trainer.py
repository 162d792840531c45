"""Import path kept for callers of ``paddle_coopflow.trainer.Trainer``; the engine is :mod:`paddle_coopflow.engine`."""
from .engine.signals import TrainingStopped
from .engine.trainer import Trainer

__all__ = ["Trainer", "TrainingStopped"]
