"""Process set-up helpers (utils/env.py)."""
import sys

import pytest

from paddle_coopflow.utils import env


def test_cpu_threads_default_and_split():
    assert env.cpu_threads(3) == 3
    assert env.cpu_threads(0, world_size=10 ** 6) == 1          # never below one thread


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt is Linux-only")
def test_keep_freed_memory_is_default_and_system_opts_out(monkeypatch):
    monkeypatch.setenv(env.MALLOC_ENV, "system")
    assert env.keep_freed_memory() is False      # glibc untouched
    monkeypatch.delenv(env.MALLOC_ENV, raising=False)
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        pytest.skip("not glibc")
    assert env.keep_freed_memory() is True


def test_mkl_avx2_only_on_amd_and_never_over_the_users_value(monkeypatch):
    monkeypatch.delenv(env.MKL_CPU_ENV, raising=False)
    monkeypatch.setattr(env, "cpu_vendor", lambda: "GenuineIntel")
    assert env.mkl_avx2_on_amd() is False and env.MKL_CPU_ENV not in env.os.environ
    monkeypatch.setattr(env, "cpu_vendor", lambda: "AuthenticAMD")
    assert env.mkl_avx2_on_amd() is True and env.os.environ[env.MKL_CPU_ENV] == "5"
    monkeypatch.setenv(env.MKL_CPU_ENV, "2")
    assert env.mkl_avx2_on_amd() is False and env.os.environ[env.MKL_CPU_ENV] == "2"
