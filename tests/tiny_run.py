"""Tiny training runs for the engine tests: digits 8×8 (scikit-learn, no download), 1 channel, tiny nets.

The 'test' split has 297 images: with Train.batch_size=64 an epoch is 5 iterations (the last of
41 images), and with Train.data_init_batches=1 the first epoch trains 4. The Langevin section keeps
its defaults (engine auto, δ clip, image clip, step sizes) except T, shortened to keep tests fast.
"""
import os

import numpy as np

from paddle_coopflow.checkpoint import load_checkpoint
from paddle_coopflow.config import load_config

TINY = [
    "Data.name=digits", "Data.root=", "Data.split=test", "Data.image_size=8", "Data.channels=1",
    "Flow.in_shape=[1,8,8]", "Flow.scales=[[0,2],[1,1]]", "Flow.mid_channels=4", "Flow.num_blocks=1",
    "Flow.num_components=2", "Flow.num_dequant_blocks=1", "Flow.use_attn=false", "Flow.drop_prob=0.1",
    "EBM.in_channels=1", "EBM.base_channels=4", "EBM.img_size=8",
    "Langevin.n_steps=3", "Train.batch_size=64", "Train.coop_epochs=3", "Train.data_init_batches=1",
    "Train.data_init_group=1", "Optimizer.warmup_iters=2", "Optimizer.flow_lr=1e-3", "Optimizer.ebm_lr=1e-3",
    "Global.log_interval=1", "Global.sample_interval=3", "Global.grid_size=4", "Global.use_visualdl=false",
    "Global.threads=1", "Export.on_train_end=false",
]
ITERS_PER_EPOCH = 5


def tiny_overrides(run_dir, *extra):
    return TINY + [f"Global.output_dir={run_dir}"] + list(extra)


def tiny_cfg(run_dir, *extra):
    return load_config(None, tiny_overrides(run_dir, *extra))


def run_tiny(run_dir, *extra, resume=None):
    from paddle_coopflow.training import Trainer

    return Trainer(tiny_cfg(run_dir, *extra), resume=resume).train()


def checkpoint_tensors(prefix):
    """{name: ndarray} of every parameter and optimizer tensor of a checkpoint (LR scheduler values too)."""
    d = load_checkpoint(str(prefix))
    out = {}
    for net, state in d["params"].items():
        if not net.startswith("_"):
            out.update({f"params/{net}/{k}": np.asarray(v) for k, v in state.items()})
    for name, state in d["opt"].items():
        if name.startswith("_"):
            continue
        for k, v in state.items():
            if isinstance(v, dict):
                out.update({f"opt/{name}/{k}/{kk}": np.asarray(vv) for kk, vv in v.items()
                            if isinstance(vv, (int, float, np.ndarray)) or hasattr(vv, "shape")})
            else:
                out[f"opt/{name}/{k}"] = np.asarray(v)
    return out


def mismatches(a, b):
    """Names whose arrays differ in any bit (or exist on one side only)."""
    bad = sorted(set(a) ^ set(b))
    for k in set(a) & set(b):
        x, y = a[k], b[k]
        if x.shape != y.shape or x.dtype != y.dtype or x.tobytes() != y.tobytes():
            bad.append(k)
    return bad


def states(prefix):
    return load_checkpoint(str(prefix), need=(".pdstates",))["states"]


def stats_records(run_dir):
    import json

    with open(os.path.join(run_dir, "stats.jsonl")) as fh:
        return [json.loads(line) for line in fh]
