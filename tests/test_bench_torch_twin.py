"""The PyTorch twins of bench/ (torch_flowpp.py, torch_ebm.py) compute what the Paddle models compute.

torch is a benchmark-only dependency: skipped when it is not installed. Tiny shapes, one thread.
"""
import os
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import paddle  # noqa: E402

from paddle_coopflow.models import FlowPlusPlus  # noqa: E402
from paddle_coopflow.models.ebm import EBMRes  # noqa: E402
from paddle_coopflow.models.flowpp import data_init  # noqa: E402
from paddle_coopflow.utils.env import setup_threads  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))

import torch_ebm  # noqa: E402
import torch_flowpp  # noqa: E402

REL = 1e-4   # float32 rounding, accumulated through a few dozen layers

# Variational dequantization with attention, and uniform dequantization without (both splits, two scales).
CASES = {
    "variational_attn": dict(in_shape=(3, 8, 8), scales=((0, 2), (2, 2)), mid_channels=8, num_blocks=1,
                             num_components=3, num_dequant_blocks=1, drop_prob=0.2),
    "uniform_no_attn": dict(in_shape=(1, 8, 8), scales=((0, 2), (2, 2)), mid_channels=4, num_blocks=1,
                            num_components=2, num_dequant_blocks=0, use_attn=False, drop_prob=0.0),
}


@pytest.fixture(autouse=True)
def _one_thread():
    setup_threads(1)
    torch.set_num_threads(1)


def _pair(kw, method, seed=0):
    """A data-initialised Paddle flow and its twin holding the same weights."""
    paddle.seed(seed)
    torch.manual_seed(seed)
    pflow = FlowPlusPlus(**kw, inverse_method=method)
    assert data_init(pflow, paddle.uniform([4, *kw["in_shape"]], min=-1.0, max=1.0))
    tflow = torch_flowpp.TorchFlowPlusPlus(**kw, inverse_method=method)
    return pflow, torch_flowpp.copy_from_paddle(pflow, tflow)


def _inputs(kw, seed=1):
    rng = np.random.default_rng(seed)
    shape = (2, *kw["in_shape"])
    x = rng.uniform(-1, 1, shape).astype("float32")
    noise = (rng.standard_normal(shape) if kw["num_dequant_blocks"] > 0 else rng.uniform(0, 1, shape))
    return x, noise.astype("float32"), rng.standard_normal(shape).astype("float32")


@pytest.mark.parametrize("method", ["newton", "bisection"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_flow_twin_matches(case, method):
    kw = CASES[case]
    pflow, tflow = _pair(kw, method)
    pflow.eval()      # tflow stays in train mode: cross_check compares in eval mode and restores both
    d = torch_flowpp.cross_check(pflow, tflow, *_inputs(kw))
    assert d["nll_rel"] < REL, d
    assert d["grad_rel"] < REL, d       # every parameter's gradient, worst one
    assert d["n_grads"] == len(list(pflow.parameters())), d
    # Images lie in [-0.9, 0.9]. Newton converges to float resolution in both frameworks; the official
    # bisection's float32 exp(logsumexp) comparison moves tail roots by rounding-level CDF differences.
    assert d["inverse_abs"] < (1e-4 if method == "newton" else 2e-3), d
    assert not pflow.training and tflow.training   # modes restored


def test_twin_data_init_matches():
    """A fresh twin initialises its ActNorms from data as the Paddle flow does (train-mode forward)."""
    kw = dict(CASES["variational_attn"], drop_prob=0.0)
    paddle.seed(0)
    pflow = FlowPlusPlus(**kw)
    tflow = torch_flowpp.copy_from_paddle(pflow, torch_flowpp.TorchFlowPlusPlus(**kw))
    x, noise, _ = _inputs(kw)
    pflow.train()
    tflow.train()
    with paddle.no_grad():
        pflow(paddle.to_tensor(x), paddle.to_tensor(noise))
    with torch.no_grad():
        tflow(torch.from_numpy(x), torch.from_numpy(noise))
    ps, ts = pflow.state_dict(), tflow.state_dict()
    keys = [k for k in ts if k.endswith(("mean", "inv_std", "is_initialized"))]
    assert len(keys) == 3 * 10   # 4 dequant-flow ActNorms + 2 (scale 0) + 4 (scale 1), 3 keys each
    for k in keys:
        p, t = ps[k].numpy(), ts[k].numpy()
        assert np.abs(p - t).max() <= REL * (np.abs(t).max() + 1e-6), k
    assert all(float(ts[k]) == 1.0 for k in keys if k.endswith("is_initialized"))


def test_copy_rejects_mismatch():
    kw = CASES["uniform_no_attn"]
    pflow = FlowPlusPlus(**kw)
    with pytest.raises(ValueError, match="shape"):
        torch_flowpp.copy_from_paddle(pflow, torch_flowpp.TorchFlowPlusPlus(**dict(kw, num_components=3)))
    with pytest.raises(ValueError, match="names differ"):
        torch_flowpp.copy_from_paddle(pflow, torch_flowpp.TorchFlowPlusPlus(**dict(kw, num_blocks=2)))
    with pytest.raises(TypeError, match="Paddle model first"):
        torch_flowpp.copy_from_paddle(torch_flowpp.TorchFlowPlusPlus(**kw), pflow)


def test_ebm_twin_matches():
    paddle.seed(0)
    pebm = EBMRes(in_channels=3, base_channels=4, img_size=8)
    tebm = torch_ebm.copy_from_paddle(torch_ebm.TorchEBMRes(3, 4, 8), pebm)
    x = np.random.default_rng(2).uniform(-1, 1, (2, 3, 8, 8)).astype("float32")
    d = torch_ebm.cross_check(pebm, tebm, x)
    assert d["f_rel"] < REL and d["grad_rel"] < REL, d


def test_package_never_imports_torch():
    code = ("import sys; import paddle_coopflow.builder, paddle_coopflow.coopflow, paddle_coopflow.models; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True,
                         env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert out.stdout.strip().splitlines()[-1] == "False"


def test_bench_train_torch_smoke(capsys):
    """bench/bench_train_torch.py runs both iterations end to end on a tiny config (2 Langevin steps)."""
    import bench_train_torch

    tiny = ["Langevin.n_steps=2", "Langevin.engine=dygraph", "Flow.mid_channels=4", "Flow.num_components=2",
            "EBM.base_channels=4"]
    argv = ["-c", os.path.join(ROOT, "configs", "digits_demo.yaml"), "--batch", "2", "--iters", "1", "--threads", "1"]
    assert bench_train_torch.main(argv + [a for o in tiny for a in ("-o", o)]) == 0
    out = capsys.readouterr().out
    assert "| revise (2 Langevin steps) |" in out and "| total |" in out and "load average" in out
