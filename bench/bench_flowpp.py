"""Benchmark Flow++: forward+backward (NLL) time and sampling time.

Defaults are the CIFAR configuration at batch 28 (the CoopFlow training batch). On a shared
machine check it first with a tiny size, e.g.
    python bench/bench_flowpp.py --size 8 --mid-channels 8 --num-blocks 1 --num-components 4 --batch 2 --samples 2
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import paddle_coopflow  # noqa: E402,F401  (quiet paddle start-up)
from paddle_coopflow.utils.env import seed_everything, setup_threads  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=28, help="training batch for forward+backward")
    p.add_argument("--samples", type=int, default=28, help="images drawn per sampling call")
    p.add_argument("--channels", type=int, default=3)
    p.add_argument("--size", type=int, default=32, help="image height = width")
    p.add_argument("--mid-channels", type=int, default=96)
    p.add_argument("--num-blocks", type=int, default=10)
    p.add_argument("--num-components", type=int, default=32)
    p.add_argument("--num-dequant-blocks", type=int, default=2)
    p.add_argument("--no-attn", action="store_true")
    p.add_argument("--repeats", type=int, default=3, help="timed repetitions (after one warm-up)")
    p.add_argument("--threads", type=int, default=0, help="math threads; 0 = all cores")
    p.add_argument("--inverse-methods", nargs="+", default=["bisection", "newton"], choices=["bisection", "newton"])
    p.add_argument("--nn-engines", nargs="+", default=["dygraph", "auto"], choices=["dygraph", "auto", "static"],
                   help="Flow.coupling_engine values to sample with (dygraph = dygraph coupling networks)")
    p.add_argument("--sample-mode", choices=["eval", "train"], default="eval",
                   help="eval (generation) or train (as during CoopFlow training: dropout on)")
    return p.parse_args(argv)


def _timeit(fn, repeats: int) -> list:
    fn()  # warm-up (allocations, kernel selection)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return times


def main(argv=None) -> dict:
    args = parse_args(argv)
    threads = setup_threads(args.threads)
    import numpy as np
    import paddle

    from paddle_coopflow.models.flowpp import FlowPlusPlus, data_init

    seed_everything(0)
    flow = FlowPlusPlus(in_shape=(args.channels, args.size, args.size), mid_channels=args.mid_channels,
                        num_blocks=args.num_blocks, num_components=args.num_components,
                        num_dequant_blocks=args.num_dequant_blocks, use_attn=not args.no_attn)
    n_params = sum(int(np.prod(p.shape)) for p in flow.parameters() if not p.stop_gradient)
    x = paddle.rand([args.batch, args.channels, args.size, args.size]) * 2 - 1
    t = time.perf_counter()
    data_init(flow, x)
    init_s = time.perf_counter() - t

    flow.train()
    fwd, bwd = [], []

    def train_step():   # dygraph on CPU is synchronous: the wall time around each call is its work
        flow.clear_gradients()
        t = time.perf_counter()
        loss = flow.nll(x).mean()
        t1 = time.perf_counter()
        loss.backward()
        fwd.append(t1 - t)
        bwd.append(time.perf_counter() - t1)

    fb = _timeit(train_step, args.repeats)
    fwd, bwd = fwd[1:], bwd[1:]   # drop the warm-up

    flow.train() if args.sample_mode == "train" else flow.eval()
    samples = {}
    for method in args.inverse_methods:
        for engine in args.nn_engines:
            for m in flow.sublayers():
                if hasattr(m, "inverse_method"):
                    m.inverse_method = method
            flow.set_coupling_engine(engine)
            smp = _timeit(lambda: flow.sample(args.samples).numpy(), args.repeats)  # .numpy(): completion
            samples[f"{method}/nn:{engine}"] = round(float(np.median(smp)), 3)
    result = dict(threads=threads, params=n_params, batch=args.batch, samples=args.samples,
                  shape=[args.channels, args.size, args.size], data_init_s=round(init_s, 3),
                  fwd_s=round(float(np.median(fwd)), 3), bwd_s=round(float(np.median(bwd)), 3),
                  fwd_bwd_s=round(float(np.median(fb)), 3), fwd_bwd_img_per_s=round(args.batch / np.median(fb), 2),
                  sample_s=samples, sample_mode=args.sample_mode,
                  peak_rss_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
                  load_avg=[round(v, 2) for v in os.getloadavg()])
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
