"""Two CPU processes (`paddle.distributed.launch`, gloo): the run completes, both ranks hold identical
parameters, rank 0's checkpoint records the global progress, the ranks read disjoint halves of each
global batch, and 2 ranks × B images follow 1 process × 2B images tensor by tensor.
"""
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT
from tiny_run import checkpoint_tensors, run_tiny, states, tiny_cfg


# No dropout (its masks are drawn per rank, noise.py) and no LR warm-up (whose first steps have lr 0):
# every iteration moves every tensor. Langevin noise on, so its global draw is sliced too.
SAME = ["Train.max_iters=3", "Global.sample_interval=0", "Flow.drop_prob=0.0", "Optimizer.warmup_iters=0",
        "Langevin.noise_mode=constant", "Langevin.noise_std=0.5"]


@pytest.mark.skipif(sys.platform != "linux", reason="gloo CPU launch tested on Linux")
def test_two_ranks_follow_one_process_of_the_same_global_batch(tmp_path):
    run = tmp_path / "ddp"
    cfg_path = tmp_path / "tiny.yaml"
    cfg_path.write_text(tiny_cfg(run, "Train.batch_size=32", *SAME).dump())
    env = dict(os.environ, GLOG_minloglevel="2")
    r = subprocess.run([sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", "2",
                        "--log_dir", str(tmp_path / "log"), "tools/train.py", "-c", str(cfg_path)],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    logs = {f: open(tmp_path / "log" / f).read() for f in os.listdir(tmp_path / "log")}
    text = "".join(logs.values())
    assert r.returncode == 0, text[-3000:]
    assert text.count("parameters identical on all 2 ranks") >= 2, text[-3000:]  # printed by each rank
    st = states(run / "ckpt" / "latest")
    assert st["global_iter"] == 3 and "rank 0/2" in (run / "train.log").read_text()

    run_tiny(tmp_path / "one", "Train.batch_size=64", *SAME)
    two, one = checkpoint_tensors(run / "ckpt" / "latest"), checkpoint_tensors(tmp_path / "one" / "ckpt" / "latest")
    assert sorted(two) == sorted(one)
    params = [k for k in one if k.startswith("params/")]
    assert len(params) > 50
    worst = max(float(np.abs(two[k] - one[k]).max()) for k in params)
    assert worst < 1e-6, worst  # float32 sums in another order (measured 1.3e-7; per-rank streams: 6e-3)
    # Other draws (here: a one-process run under another Langevin noise level) move the same tensors by
    # far more than that tolerance, so the comparison can tell a wrong slice from rounding.
    run_tiny(tmp_path / "other", "Train.batch_size=64", *SAME, "Langevin.noise_std=0.6")
    other = checkpoint_tensors(tmp_path / "other" / "ckpt" / "latest")
    assert max(float(np.abs(other[k] - one[k]).max()) for k in params) > 100 * 1e-6


def test_rank_shards_are_the_halves_of_the_global_batch():
    """What makes 2 ranks × B the same data as 1 process × 2B: rank r reads slice r of each global batch."""
    from paddle_coopflow.data.sampler import EpochBatchSampler

    one = list(EpochBatchSampler(297, 64, True, 0, 3))
    two = [list(EpochBatchSampler(297, 32, True, 0, 3, rank=r, world_size=2)) for r in (0, 1)]
    for g, (a, b) in enumerate(zip(*two)):
        np.testing.assert_array_equal(np.concatenate([a, b]), one[g])


def test_noise_draws_are_the_rows_of_one_global_draw():
    """paddle_coopflow.noise: rank r's draw is rows [start, start + n) of the whole global batch's draw."""
    import paddle

    from paddle_coopflow.noise import Shard, draw

    plain = {"normal": lambda s: paddle.randn(s), "uniform01": lambda s: paddle.rand(s),
             "uniform": lambda s: paddle.uniform(s, min=-1.0, max=1.0)}
    sizes = (4, 3)                                   # an uneven last batch
    for kind, fn in plain.items():
        paddle.seed(3)
        whole = fn([7, 2, 3]).numpy()
        parts = []
        for r in (0, 1):
            paddle.seed(3)
            parts.append(draw(kind, [sizes[r], 2, 3], Shard(sizes, r)).numpy())
        np.testing.assert_array_equal(np.concatenate(parts), whole)
        paddle.seed(3)                               # one process: the plain call
        np.testing.assert_array_equal(draw(kind, [7, 2, 3], Shard.single(7)).numpy(), whole)
    paddle.seed(5)
    steps = paddle.randn([2, 7, 3]).numpy()          # Langevin noise [T, n, ...]: rows along axis 1
    paddle.seed(5)
    np.testing.assert_array_equal(draw("normal", [2, 3, 3], Shard(sizes, 1), axis=1).numpy(), steps[:, 4:])
    assert Shard((4, 4), 1).rows(5) == (5, 10)       # a fixed count per rank (not the batch size)
