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
    # setenv first so that monkeypatch restores the variable's original state (absent or set) after the test:
    # mkl_avx2_on_amd writes os.environ itself, and a leftover value reaches every later subprocess's MKL
    monkeypatch.setenv(env.MKL_CPU_ENV, "")
    monkeypatch.delenv(env.MKL_CPU_ENV)
    monkeypatch.setattr(env, "cpu_vendor", lambda: "GenuineIntel")
    assert env.mkl_avx2_on_amd() is False and env.MKL_CPU_ENV not in env.os.environ
    monkeypatch.setattr(env, "cpu_vendor", lambda: "AuthenticAMD")
    assert env.mkl_avx2_on_amd() is True and env.os.environ[env.MKL_CPU_ENV] == "5"
    monkeypatch.setenv(env.MKL_CPU_ENV, "2")
    assert env.mkl_avx2_on_amd() is False and env.os.environ[env.MKL_CPU_ENV] == "2"


def test_dense_views_same_bits_and_the_users_flag_wins(monkeypatch):
    """A tiny Flow++ training pass (dropout on) gives the same loss and gradient bits with Paddle's strided views
    and with dense outputs; dense_views turns the views off unless the flag is set in the environment."""
    import numpy as np
    import paddle

    from paddle_coopflow.models import FlowPlusPlus
    from paddle_coopflow.models.flowpp import data_init

    def pass_with(views):
        paddle.set_flags({env.STRIDE_FLAG: views})
        paddle.seed(0)
        flow = FlowPlusPlus(in_shape=(3, 8, 8), scales=((0, 2), (2, 2)), mid_channels=8, num_blocks=1,
                            num_components=3, num_dequant_blocks=1, drop_prob=0.2)
        x = paddle.uniform([4, 3, 8, 8], min=-1.0, max=1.0)
        data_init(flow, x)
        loss = flow.nll(x).mean()
        loss.backward()
        return [loss.numpy()] + [p.grad.numpy() for p in flow.parameters()]

    before = paddle.get_flags([env.STRIDE_FLAG])[env.STRIDE_FLAG]
    try:
        strided, dense = pass_with(True), pass_with(False)
        assert len(dense) > 100 and all(np.array_equal(a, b) for a, b in zip(strided, dense))
        monkeypatch.setenv(env.STRIDE_FLAG, "1")
        paddle.set_flags({env.STRIDE_FLAG: True})
        assert env.dense_views() is False and paddle.get_flags([env.STRIDE_FLAG])[env.STRIDE_FLAG] is True
        monkeypatch.delenv(env.STRIDE_FLAG)
        assert env.dense_views() is True and paddle.get_flags([env.STRIDE_FLAG])[env.STRIDE_FLAG] is False
    finally:
        paddle.set_flags({env.STRIDE_FLAG: before})
