"""Seconds per training iteration (Algorithm 1) for a config, by hand (never in CI).

    python bench/bench_train.py -c configs/cifar10_t30.yaml --iters 2          # paper config, B = 28, T = 30
    python bench/bench_train.py -c configs/digits_demo.yaml --iters 20
    python bench/bench_train.py -c configs/digits_demo.yaml --wall              # full demo run, wall time

Data are random images in [-1, 1] of the config's shape (the paper datasets need not be present);
timing starts after one warm-up iteration (ActNorm init, static-graph compilation).
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import paddle_coopflow  # noqa: E402,F401
from paddle_coopflow.config import load_config  # noqa: E402


def time_parts(learner) -> dict:
    """Wrap the learner's propose/revise so each call adds its seconds to the returned {'propose', 'revise'}
    dict (reset it between iterations). Dygraph on CPU is synchronous: wall time around a call is its work."""
    parts = {"propose": 0.0, "revise": 0.0}

    def timed(name, fn):
        def run(*a, **k):
            t = time.perf_counter()
            out = fn(*a, **k)
            parts[name] += time.perf_counter() - t
            return out
        return run

    learner.propose, learner.revise = timed("propose", learner.propose), timed("revise", learner.revise)
    return parts


def build_learner(cfg, batch_size: int, seed: int = 0):
    """The package's CoopFlow learner for `cfg` at `batch_size`, networks built after seeding with `seed`.

    Returns (learner, flow, ebm); the flow is not data-initialised yet (call ``flow.data_init(x)``).
    """
    from paddle_coopflow.builder import build_ebm, build_flow
    from paddle_coopflow.coopflow import CoopFlow, CoopFlowOptions
    from paddle_coopflow.optim import build_optimizers
    from paddle_coopflow.utils.env import seed_everything

    seed_everything(seed)
    flow, ebm = build_flow(cfg.Flow), build_ebm(cfg.EBM)
    learner = CoopFlow(flow, ebm, *build_optimizers(cfg, flow, ebm, batch_size=batch_size),
                       CoopFlowOptions.from_config(cfg))
    return learner, flow, ebm


def timed_step(learner):
    """A function step(x, it) that runs ``learner.train_step(x, 0, it)`` and returns its seconds per part:
    {'propose', 'revise', 'updates' (the rest: both losses, backward passes, clipping, optimizer steps), 'total'}."""
    parts = time_parts(learner)

    def step(x, it: int) -> dict:
        parts.update(propose=0.0, revise=0.0)
        t0 = time.perf_counter()
        learner.train_step(x, 0, it)
        total = time.perf_counter() - t0
        return dict(parts, updates=total - parts["propose"] - parts["revise"], total=total)

    return step


def per_iteration(cfg, iters: int) -> dict:
    import paddle

    from paddle_coopflow.utils.env import setup_threads

    threads = setup_threads(cfg.Global.threads)
    b = cfg.Train.batch_size
    learner, flow, _ = build_learner(cfg, b)
    shape = [b] + list(cfg.Flow.in_shape)
    lg = cfg.Langevin
    x = paddle.uniform(shape, min=-1, max=1)
    flow.data_init(x)
    step = timed_step(learner)
    warm = step(x, 0)["total"]
    runs = [step(paddle.uniform(shape, min=-1, max=1), i + 1) for i in range(iters)]
    mean = {p: sum(r[p] for r in runs) / iters for p in ("propose", "revise", "updates", "total")}
    return {"batch": b, "T": lg.n_steps, "threads": threads, "langevin_engine": lg.engine,
            "inverse_method": cfg.Flow.inverse_method, "coupling_engine": cfg.Flow.coupling_engine,
            "flow_proposes_in_train_mode": cfg.Train.sample_flow_train_mode,
            "warmup_iter_s": round(warm, 3), "s_per_iter": round(mean["total"], 3),
            "flow_proposal_s": round(mean["propose"], 3), "langevin_s": round(mean["revise"], 3),
            "updates_s": round(mean["updates"], 3),
            "iters": iters, "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def wall(config: str, overrides) -> dict:
    out = tempfile.mkdtemp(prefix="bench_train_")
    cmd = [sys.executable, "tools/train.py", "-c", config, "-o", f"Global.output_dir={out}/run",
           "-o", "Export.on_train_end=false"] + [a for o in overrides for a in ("-o", o)]
    t0 = time.time()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL,
                   cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return {"config": config, "wall_s": round(time.time() - t0, 1), "run_dir": f"{out}/run"}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-c", "--config", required=True)
    ap.add_argument("-o", "--override", action="append", default=[])
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--wall", action="store_true", help="time a whole tools/train.py run instead")
    args = ap.parse_args()
    if args.wall:
        res = wall(args.config, args.override)
    else:
        res = dict(config=args.config, **per_iteration(load_config(args.config, args.override), args.iters))
    res["load_avg_1m"] = round(os.getloadavg()[0], 2)
    print(json.dumps(res))


if __name__ == "__main__":
    main()
