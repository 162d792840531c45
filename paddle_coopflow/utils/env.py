"""Process-level Paddle set-up: the supported Paddle versions, threads, MKL's kernels on AMD CPUs, malloc reuse,
device, seeds.

Paddle forces one CPU thread (docs/paddle_notes.md, "Threads"); training and sampling want all cores.
"""
from __future__ import annotations

import os
import random
import re
import sys
from typing import Optional, Tuple

import numpy as np


def cpu_threads(requested: int = 0, world_size: int = 1) -> int:
    """Number of math threads for this process: `requested`, or cores / ranks when 0."""
    if requested and requested > 0:
        return int(requested)
    return max(1, (os.cpu_count() or 1) // max(1, world_size))


_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4   # glibc mallopt parameters (malloc.h)
MALLOC_ENV = "PADDLE_COOPFLOW_MALLOC"    # "system" leaves glibc malloc alone; unset or "keep": keep_freed_memory
MKL_CPU_ENV = "MKL_DEBUG_CPU_TYPE"       # read by the MKL that Paddle's CPU wheels ship (libmklml_intel.so)
STRIDE_FLAG = "FLAGS_use_stride_kernel"  # Paddle's flag (also read from the environment): views for transpose etc.


def keep_freed_memory() -> bool:
    """Make glibc malloc keep freed memory for reuse instead of handing it back to the OS.

    Paddle's CPU tensors come from malloc, and every tensor of a few MB or more arrives as fresh pages that
    fault in one by one. With mmap off and a 1 GiB trim threshold glibc reuses freed blocks instead, which
    makes large elementwise ops and the flow's training pass faster for a somewhat higher peak RSS
    (docs/speed.md, "Memory reuse"). On by default on Linux/glibc; PADDLE_COOPFLOW_MALLOC=system turns it
    off. Returns True if applied.
    """
    if os.environ.get(MALLOC_ENV, "keep").lower() != "keep" or not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, 2 ** 30))
    except (OSError, AttributeError):   # musl, macOS, ...: nothing to tune
        return False


def cpuinfo(field: str) -> str:
    """The first value of `field` in /proc/cpuinfo ('vendor_id', 'model name', ...), '' where unknown."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(field):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def cpu_vendor() -> str:
    """The CPU vendor id ('AuthenticAMD', 'GenuineIntel', ...), '' where unknown."""
    return cpuinfo("vendor_id")


def mkl_avx2_on_amd() -> bool:
    """On an AMD CPU, tell MKL to use its AVX2 kernels (MKL_DEBUG_CPU_TYPE=5) unless the variable is set.

    The MKL in Paddle's CPU wheels dispatches AMD CPUs to its slow generic kernels, and Paddle's CPU
    convolutions and matmuls are MKL GEMMs (docs/paddle_notes.md, "MKL on AMD CPUs"). MKL reads the variable
    at its first call, so this must run before any Paddle math: `import paddle_coopflow` calls it, so every
    process that imports the package before computing uses the same kernels. Intel CPUs are left alone (the
    variable would cap them at AVX2). Returns True if it set the variable.
    """
    if MKL_CPU_ENV in os.environ or cpu_vendor() != "AuthenticAMD":
        return False
    os.environ[MKL_CPU_ENV] = "5"
    return True


def dense_views() -> bool:
    """Let transpose, split, slice, ... return dense tensors (Paddle's FLAGS_use_stride_kernel off), unless the
    user set the flag in the environment. Returns True if it turned the flag off.

    With the flag on (Paddle's default) these ops return strided views, and on CPU the next op that needs
    contiguous memory (matmul, reshape, conv, ...) copies the view element by element, far slower than the
    dense transpose kernel (docs/paddle_notes.md, "Strided views on CPU"; docs/speed.md). The values are the
    same bits; only views lose their aliasing (no code here writes into a view).
    """
    import paddle

    if STRIDE_FLAG in os.environ:
        return False
    paddle.set_flags({STRIDE_FLAG: False})
    return True


def setup_threads(requested: int = 0, world_size: int = 1) -> int:
    """Set Paddle's CPU math-library threads (default: all cores, split over ranks); applies
    :func:`keep_freed_memory` and :func:`dense_views` (the trainer and the tools call it on the CPU device only).
    (MKL's kernels were chosen at `import paddle_coopflow`: :func:`mkl_avx2_on_amd`.)"""
    import paddle

    keep_freed_memory()
    dense_views()
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


# The oldest PaddlePaddle the package runs on (README "Supported Paddle versions"; CI tests it and the newest).
MIN_PADDLE = (3, 2)
_MIN = ".".join(map(str, MIN_PADDLE))
PADDLE_INSTALL_HINT = (f"pip install -U 'paddlepaddle>={_MIN}' (CPU), or paddlepaddle-gpu>={_MIN} from Paddle's index "
                       "for your CUDA version (README, Install)")


def paddle_version_tuple(version: str) -> Tuple[int, ...]:
    """(major, minor, patch) of a Paddle version string ('3.3.1', '3.0.0rc1', '2.6.2'); () if unreadable."""
    m = re.match(r"\s*(\d+)\.(\d+)(?:\.(\d+))?", str(version))
    return tuple(int(g) for g in m.groups(default="0")) if m else ()


def paddle_version_problem(version: str) -> Optional[str]:
    """The one-line error for Paddle `version`, or None when it is supported.

    Development builds report '0.0.0' and are taken as the newest.
    """
    parsed = paddle_version_tuple(version)
    if parsed == (0, 0, 0) or (parsed and parsed[:2] >= MIN_PADDLE):
        return None
    return (f"PaddlePaddle {version} is installed but paddle_coopflow needs PaddlePaddle >= {_MIN}; "
            f"{PADDLE_INSTALL_HINT}")


def check_paddle() -> str:
    """Import Paddle and check its version: the installed version, or a one-line UserError naming the fix."""
    from ..errors import UserError

    try:
        import paddle
    except ImportError as err:
        raise UserError(f"PaddlePaddle is not installed ({err}); {PADDLE_INSTALL_HINT}") from None
    problem = paddle_version_problem(paddle.__version__)
    if problem:
        raise UserError(problem)
    return paddle.__version__
