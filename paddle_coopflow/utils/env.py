"""Process-level Paddle set-up: threads, device, seeds.

Paddle forces one CPU thread (docs/paddle_notes.md, "Threads"); training and sampling want all cores.
"""
from __future__ import annotations

import os
import random
import sys

import numpy as np


def cpu_threads(requested: int = 0, world_size: int = 1) -> int:
    """Number of math threads for this process: `requested`, or cores / ranks when 0."""
    if requested and requested > 0:
        return int(requested)
    return max(1, (os.cpu_count() or 1) // max(1, world_size))


_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4   # glibc mallopt parameters (malloc.h)
MALLOC_ENV = "PADDLE_COOPFLOW_MALLOC"    # "keep" turns keep_freed_memory on; anything else leaves malloc alone


def keep_freed_memory() -> bool:
    """Make glibc malloc keep freed memory for reuse instead of handing it back to the OS.

    Paddle's CPU tensors come from malloc; by default glibc serves blocks above its mmap threshold
    (at most 32 MB) with a fresh mmap and unmaps them on free, so every large activation (a Flow++
    attention matrix at batch 28 is 117 MB) page-faults in anew on each use. Measured on the machine
    of docs/speed.md: allocating and filling 117 MB 89 ms → 19 ms, softmax over it 253 → 135 ms.
    OPT-IN (PADDLE_COOPFLOW_MALLOC=keep): the process then keeps its peak heap, and its effect on peak
    memory was not measured (paper-size Flow++ forward+backward at batch 28 exceeded 23 GiB and was
    OOM-killed with and without it). Linux/glibc only. Returns True if applied.
    """
    if os.environ.get(MALLOC_ENV, "").lower() != "keep" or not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, 2 ** 30))
    except (OSError, AttributeError):   # musl, macOS, ...: nothing to tune
        return False


def setup_threads(requested: int = 0, world_size: int = 1) -> int:
    """Set Paddle's CPU math-library threads (default: all cores, split over ranks); applies
    :func:`keep_freed_memory` when PADDLE_COOPFLOW_MALLOC=keep."""
    import paddle

    keep_freed_memory()
    n = cpu_threads(requested, world_size)
    os.environ["OMP_NUM_THREADS"] = str(n)
    try:
        paddle.base.core.set_num_threads(n)
    except AttributeError:  # older Paddle layouts
        paddle.fluid.core.set_num_threads(n)  # pragma: no cover
    return n


def onednn_cpu() -> bool:
    """True on a CPU place of a Paddle build with oneDNN: where the static oneDNN programs were measured
    (paddle_coopflow/accel); engine 'auto' uses them only there."""
    import paddle

    try:
        return bool(paddle.get_device().startswith("cpu") and paddle.base.core.is_compiled_with_mkldnn())
    except Exception:  # exotic builds without these entry points: play safe
        return False


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
