"""Process set-up helpers (utils/env.py)."""
import sys

import pytest

from paddle_coopflow.utils import env


def test_cpu_threads_default_and_split():
    assert env.cpu_threads(3) == 3
    assert env.cpu_threads(0, world_size=10 ** 6) == 1          # never below one thread


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt is Linux-only")
def test_keep_freed_memory_is_opt_in(monkeypatch):
    monkeypatch.delenv(env.MALLOC_ENV, raising=False)
    assert env.keep_freed_memory() is False      # default: glibc untouched (it OOMed paper-size training)
    monkeypatch.setenv(env.MALLOC_ENV, "keep")
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        pytest.skip("not glibc")
    assert env.keep_freed_memory() is True
