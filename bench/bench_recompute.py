"""Peak memory and time of the flow's training step with and without activation recomputation (Flow.recompute).

    python bench/bench_recompute.py -c configs/cifar10_t30.yaml --batch 4 8 --threads 2
    python bench/bench_recompute.py -c configs/cifar10_t30.yaml --batch 28 --only on --iters 0

Each (batch, recompute) point runs in a fresh process (peak RSS is per process): the config's Flow++,
ActNorm initialised on one batch, then --iters timed forward+backward passes of the mean NLL on random
images in [-1, 1] (train mode, as in training) after one untimed pass (--iters 0: the one pass is timed). Reported: seconds per pass,
peak RSS, and the RSS before the first training pass (model and optimizer-free baseline), so the
activations' share is peak - base. Never run in CI.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def one_point(config: str, overrides, batch: int, recompute: bool, iters: int, threads: int) -> dict:
    import paddle

    import paddle_coopflow  # noqa: F401
    from paddle_coopflow.builder import build_flow
    from paddle_coopflow.config import load_config
    from paddle_coopflow.utils.env import seed_everything, setup_threads

    cfg = load_config(config, list(overrides) + [f"Flow.recompute={str(recompute).lower()}"])
    setup_threads(threads)
    seed_everything(0)
    flow = build_flow(cfg.Flow)
    shape = [batch] + list(cfg.Flow.in_shape)
    flow.train()
    with paddle.no_grad():
        flow.nll(paddle.uniform(shape, min=-1, max=1))   # ActNorm data init
    base = rss_mb()
    times = []
    for i in range(iters + 1):
        x = paddle.uniform(shape, min=-1, max=1)
        t = time.perf_counter()
        loss = flow.nll(x).mean()
        loss.backward()
        flow.clear_gradients()
        if i or not iters:   # --iters 0: time the one (first) pass
            times.append(time.perf_counter() - t)
    return {"batch": batch, "recompute": recompute, "threads": threads, "s_per_pass": round(sum(times) / len(times), 2),
            "base_rss_mb": round(base), "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            "loss": float(loss)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-c", "--config", required=True)
    ap.add_argument("-o", "--override", action="append", default=[])
    ap.add_argument("--batch", type=int, nargs="+", default=[4])
    ap.add_argument("--only", choices=("on", "off"), default=None, help="run only recompute on or off")
    ap.add_argument("--iters", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--point", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.point:   # child process: one measurement
        b, rc = args.point.split(",")
        print(json.dumps(one_point(args.config, args.override, int(b), rc == "on", args.iters, args.threads)))
        return
    modes = [args.only] if args.only else ["off", "on"]
    print("| batch | recompute | s / fwd+bwd | peak RSS MB | RSS before training MB |")
    print("|---|---|---|---|---|")
    for b in args.batch:
        for m in modes:
            cmd = [sys.executable, os.path.abspath(__file__), "-c", args.config, "--iters", str(args.iters),
                   "--threads", str(args.threads), "--point", f"{b},{m}"] + [a for o in args.override for a in ("-o", o)]
            r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
            if r.returncode:
                print(f"| {b} | {m} | failed (exit {r.returncode}: {r.stderr.strip().splitlines()[-1:]}) | | |")
                continue
            p = json.loads(r.stdout.strip().splitlines()[-1])
            print(f"| {b} | {m} | {p['s_per_pass']} | {p['peak_rss_mb']} | {p['base_rss_mb']} |", flush=True)
    print(f"load average {os.getloadavg()}")


if __name__ == "__main__":
    main()
