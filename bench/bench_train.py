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


def per_iteration(cfg, iters: int) -> dict:
    import paddle

    from paddle_coopflow.builder import build_ebm, build_flow
    from paddle_coopflow.coopflow import CoopFlow, CoopFlowOptions
    from paddle_coopflow.optim import build_optimizers
    from paddle_coopflow.utils.env import seed_everything, setup_threads

    threads = setup_threads(cfg.Global.threads)
    seed_everything(0)
    flow, ebm = build_flow(cfg.Flow), build_ebm(cfg.EBM)
    b = cfg.Train.batch_size
    shape = [b] + list(cfg.Flow.in_shape)
    lg = cfg.Langevin
    learner = CoopFlow(flow, ebm, *build_optimizers(cfg, flow, ebm), CoopFlowOptions.from_config(cfg))
    x = paddle.uniform(shape, min=-1, max=1)
    flow.data_init(x)
    parts = time_parts(learner)
    t0 = time.time()
    learner.train_step(x, 0, 0)
    warm = time.time() - t0
    parts.update(propose=0.0, revise=0.0)
    times = []
    for i in range(iters):
        t0 = time.time()
        learner.train_step(paddle.uniform(shape, min=-1, max=1), 0, i + 1)
        times.append(time.time() - t0)
    per = sum(times) / len(times)
    return {"batch": b, "T": lg.n_steps, "threads": threads, "langevin_engine": lg.engine,
            "inverse_method": cfg.Flow.inverse_method, "coupling_engine": cfg.Flow.coupling_engine,
            "flow_proposes_in_train_mode": cfg.Train.sample_flow_train_mode,
            "warmup_iter_s": round(warm, 3), "s_per_iter": round(per, 3),
            "flow_proposal_s": round(parts["propose"] / iters, 3), "langevin_s": round(parts["revise"] / iters, 3),
            "updates_s": round(per - (parts["propose"] + parts["revise"]) / iters, 3),
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
