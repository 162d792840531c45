"""Process-level Paddle set-up: threads, device, seeds.

Paddle forces one CPU thread (PADDLE_NOTES §6); training and sampling want all cores.
"""
from __future__ import annotations

import os
import random

import numpy as np


def cpu_threads(requested: int = 0, world_size: int = 1) -> int:
    """Number of math threads for this process: `requested`, or cores / ranks when 0."""
    if requested and requested > 0:
        return int(requested)
    return max(1, (os.cpu_count() or 1) // max(1, world_size))


def setup_threads(requested: int = 0, world_size: int = 1) -> int:
    """Set Paddle's CPU math-library threads (default: all cores, split over ranks)."""
    import paddle

    n = cpu_threads(requested, world_size)
    os.environ["OMP_NUM_THREADS"] = str(n)
    try:
        paddle.base.core.set_num_threads(n)
    except AttributeError:  # older Paddle layouts
        paddle.fluid.core.set_num_threads(n)  # pragma: no cover
    return n


def resolve_device(device: str = "auto") -> str:
    """'auto' → 'gpu' when Paddle is compiled with CUDA, else 'cpu'. Sets it."""
    import paddle

    if device == "auto":
        device = "gpu" if paddle.is_compiled_with_cuda() and paddle.device.cuda.device_count() > 0 else "cpu"
    if device == "gpu" and not paddle.is_compiled_with_cuda():
        raise RuntimeError("Global.device=gpu but this Paddle build has no CUDA; "
                           "install paddlepaddle-gpu or use -o Global.device=cpu")
    paddle.set_device(device)
    return device


def seed_everything(seed: int) -> None:
    """The one place that seeds Python, NumPy and Paddle."""
    import paddle

    random.seed(seed)
    np.random.seed(seed)
    paddle.seed(seed)
