"""Benchmark Flow++ sampling with each mixture-CDF inverse: speed and agreement of the images.

For every method in --methods it times `flow.inverse(z)` end to end and, separately, the time
spent inside the mixture-CDF inversions (the rest is the coupling networks, ActNorm, InvConv).
A method is an inverse ("bisection", the official code's, or "newton"), optionally with "+static": the
coupling networks then run as static-graph oneDNN programs (Flow.coupling_engine, paddle_coopflow/accel/coupling.py)
instead of dygraph. With --truth (default) it also samples once with every mixture inverse solved in
float64 (the "newton" method in float64, accurate to ~1e-14, then cast back), i.e. the exact inverse of
each float32 dygraph coupling, and, with --truth64, once with the whole flow in float64 (the exact
sampler of these weights, for every engine); it reports each method's max |image - truth|.
It also samples once with every "newton" coupling output moved by one float32 ulp (random
direction): how far images move under the smallest possible change of the inverses, i.e. the
float32 noise floor of this flow's sampler, below which no comparison of methods is meaningful.

Defaults are the paper configuration (FlowPlusPlus() defaults, random init plus one data-init
pass on random images, eval mode) with 28 samples: several minutes on 2 cores. On a shared
machine check it first with a tiny size, e.g.
    python bench/bench_flow_sampling.py --size 8 --mid-channels 8 --num-blocks 1 --num-components 4 --samples 2
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import paddle_coopflow  # noqa: E402,F401  (quiet paddle start-up)
from paddle_coopflow.utils.env import seed_everything, setup_threads  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--samples", type=int, default=28, help="images per flow.inverse call")
    p.add_argument("--init-batch", type=int, default=8, help="random images for the data-init pass")
    p.add_argument("--channels", type=int, default=3)
    p.add_argument("--size", type=int, default=32, help="image height = width")
    p.add_argument("--mid-channels", type=int, default=96)
    p.add_argument("--num-blocks", type=int, default=10)
    p.add_argument("--num-components", type=int, default=32)
    p.add_argument("--no-attn", action="store_true")
    p.add_argument("--methods", nargs="+", default=["bisection", "newton", "newton+static"])
    p.add_argument("--truth64", action="store_true", help="also sample with the whole flow in float64")
    p.add_argument("--no-truth", dest="truth", action="store_false", help="skip the float64-inverse reference run")
    p.add_argument("--repeats", type=int, default=1, help="timed calls per method (after a 1-image warm-up)")
    p.add_argument("--threads", type=int, default=0, help="math threads; 0 = all cores")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default="", help="also write the results here")
    return p.parse_args(argv)


class _InverseTimer:
    """Wraps the coupling module's mixture_inv_cdf: accumulates its wall time, optionally in float64."""

    def __init__(self, coupling_module):
        self.module = coupling_module
        self.inner = coupling_module.mixture_inv_cdf
        self.seconds = 0.0
        self.float64 = False
        self.nudge = None  # a numpy Generator: move each output by one ulp in a random direction

    def __call__(self, y, logits, means, log_scales, method="bisection"):
        import numpy as np
        import paddle

        t = time.perf_counter()
        if self.float64:
            x = self.inner(*(a.astype("float64") for a in (y, logits, means, log_scales)), method="newton")
            x = x.astype(y.dtype)
        else:
            x = self.inner(y, logits, means, log_scales, method=method)
        if self.nudge is not None:
            v = x.numpy()
            x = paddle.to_tensor(np.nextafter(v, np.where(self.nudge.random(v.shape) < 0.5, -np.inf, np.inf)
                                              .astype(v.dtype)))
        x.numpy()  # count the work here, not in whatever op touches x next
        self.seconds += time.perf_counter() - t
        return x

    def __enter__(self):
        self.module.mixture_inv_cdf = self
        return self

    def __exit__(self, *exc):
        self.module.mixture_inv_cdf = self.inner


def _set_method(flow, method: str) -> None:
    from paddle_coopflow.models.flowpp.coupling import Coupling

    for m in flow.sublayers():
        if isinstance(m, Coupling):
            m.inverse_method = method


def _time_inverse(flow, z, timer: _InverseTimer, repeats: int):
    """-> (images as numpy, mean end-to-end seconds, mean seconds inside the mixture inverses)."""
    flow.inverse(z[:1]).numpy()  # warm-up: kernel selection, allocations
    total, inner = 0.0, 0.0
    for _ in range(repeats):
        timer.seconds = 0.0
        t = time.perf_counter()
        img = flow.inverse(z).numpy()
        total += time.perf_counter() - t
        inner += timer.seconds
    return img, total / repeats, inner / repeats


def _float64_flow_samples(flow, z):
    """The whole flow in float64 with the Newton inverse: the exact sampler of these weights."""
    import copy

    flow64 = copy.deepcopy(flow)
    flow64.to(dtype="float64")
    _set_method(flow64, "newton")
    return flow64.inverse(z.astype("float64")).numpy()


def _diff(a, b) -> dict:
    import numpy as np

    d = np.abs(a - b)
    return {"max": float(d.max()), "p99.9": float(np.percentile(d, 99.9)), "mean": float(d.mean())}


def _compare(res: dict, images: dict, truth, truth64) -> None:
    """Speed-ups over bisection and image differences (to bisection and to the truths) into `res`, printed."""
    if "bisection" in images:
        ref = res["methods"]["bisection"]
        for method in images:
            if method == "bisection":
                continue
            new = res["methods"][method]
            res[f"speedup_{method}"] = {"end_to_end": ref["end_to_end_s"] / new["end_to_end_s"],
                                        "mixture_inverse": ref["mixture_inverse_s"] / new["mixture_inverse_s"]}
            res[f"{method}_vs_bisection"] = _diff(images[method], images["bisection"])
            print(f"{method}: speed-up over bisection end-to-end {res[f'speedup_{method}']['end_to_end']:.2f}x, "
                  f"mixture inverse only {res[f'speedup_{method}']['mixture_inverse']:.1f}x; max |{method} - "
                  f"bisection| = {res[f'{method}_vs_bisection']['max']:.2e} "
                  f"(99.9th pct {res[f'{method}_vs_bisection']['p99.9']:.1e})")
    if truth is not None:
        for method, img in images.items():
            res[f"{method}_vs_truth"] = _diff(img, truth)
            print(f"max |{method} - float64-inverse truth| = {res[f'{method}_vs_truth']['max']:.2e} "
                  f"(99.9th pct {res[f'{method}_vs_truth']['p99.9']:.1e})")
    if truth64 is not None:
        for method, img in images.items():
            res[f"{method}_vs_truth64"] = _diff(img, truth64)
            print(f"max |{method} - float64-flow truth| = {res[f'{method}_vs_truth64']['max']:.2e} "
                  f"(99.9th pct {res[f'{method}_vs_truth64']['p99.9']:.1e})")


def main(argv=None) -> dict:
    args = parse_args(argv)
    threads = setup_threads(args.threads)
    import numpy as np
    import paddle

    from paddle_coopflow.models.flowpp import INV_CDF_METHODS, FlowPlusPlus, data_init
    from paddle_coopflow.models.flowpp import coupling as coupling_module

    bad = [m for m in args.methods if m.split("+")[0] not in INV_CDF_METHODS or m.split("+")[1:] not in ([], ["static"])]
    if bad:
        raise SystemExit(f"unknown --methods {bad}; choose from {INV_CDF_METHODS}, each optionally +static")
    seed_everything(args.seed)
    shape = (args.channels, args.size, args.size)
    flow = FlowPlusPlus(in_shape=shape, mid_channels=args.mid_channels, num_blocks=args.num_blocks,
                        num_components=args.num_components, use_attn=not args.no_attn)
    t = time.perf_counter()
    data_init(flow, paddle.rand([args.init_batch, *shape]) * 2 - 1)
    init_s = time.perf_counter() - t
    flow.eval()
    z = paddle.randn([args.samples, *shape])

    res = {"config": vars(args), "threads": threads, "init_s": init_s, "load_avg_start": os.getloadavg(),
           "methods": {}}
    images = {}
    with _InverseTimer(coupling_module) as timer:
        for method in args.methods:
            _set_method(flow, method.split("+")[0])
            flow.set_coupling_engine("static" if method.endswith("+static") else "dygraph")
            if method.endswith("+static"):   # first call: trace + compile + check of each coupling network
                t = time.perf_counter()
                flow.inverse(z[:1]).numpy()
                res.setdefault("static_build_s", time.perf_counter() - t)
            images[method], total, inner = _time_inverse(flow, z, timer, args.repeats)
            res["methods"][method] = {"end_to_end_s": total, "mixture_inverse_s": inner, "rest_s": total - inner}
            print(f"{method:10s} end-to-end {total:8.2f} s | mixture inverse {inner:8.2f} s | "
                  f"rest {total - inner:8.2f} s", flush=True)
        flow.set_coupling_engine("dygraph")
        if args.truth:
            timer.float64 = True
            t = time.perf_counter()
            truth = flow.inverse(z).numpy()
            res["truth_s"] = time.perf_counter() - t
            timer.float64 = False
        if "newton" in images:
            _set_method(flow, "newton")
            timer.nudge = np.random.default_rng(args.seed)
            nudged = flow.inverse(z).numpy()
            timer.nudge = None
    if args.truth64:
        t = time.perf_counter()
        truth64 = _float64_flow_samples(flow, z)
        res["truth64_s"] = time.perf_counter() - t
    res["load_avg_end"] = os.getloadavg()

    _compare(res, images, truth if args.truth else None, truth64 if args.truth64 else None)
    if "newton" in images:
        res["one_ulp_sensitivity"] = _diff(nudged, images["newton"])
        print(f"noise floor: max |image change| when every coupling output moves by 1 ulp = "
              f"{res['one_ulp_sensitivity']['max']:.2e} (99.9th pct {res['one_ulp_sensitivity']['p99.9']:.1e})")
    print(f"load average start {res['load_avg_start']}, end {res['load_avg_end']}; threads {threads}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)
    return res


if __name__ == "__main__":
    main()
