"""Images per second: dygraph CoopFlow sampling vs the exported programs in Paddle Inference.

Times, at one batch size, (1) dygraph generation as `CoopFlow.sample` does it (flow.inverse in eval
mode + T Langevin steps at the test step size), optionally (`fast`) the same with the in-process
static oneDNN Langevin step of paddle_coopflow.accel, (2) the flow alone in dygraph, (3) the
exported `coopflow_sampler` (the fused sampler of deploy/python/infer.py, oneDNN off, as required),
(4) the stepwise sampler (`flow_generator` with oneDNN off, then the grad-free `langevin_step` looped T
times with oneDNN on; EBMRes only) and (5) `flow_generator` alone in Paddle Inference.
Networks are randomly initialised (flow: one data-init pass on random images), so the bisection
may take a different number of iterations than on a trained flow.

    python bench/bench_inference.py -c configs/digits_demo.yaml --batch 28
    python bench/bench_inference.py -c configs/cifar10_t30.yaml --batch 28      # paper: many minutes
    python bench/bench_inference.py -c configs/digits_demo.yaml --batch 2 -o Langevin.n_steps=2 --repeats 1
    python bench/bench_inference.py -c configs/digits_demo.yaml --batch 28 --parts sampler,stepwise,stepwise_nodnn

Prints one line per measurement and a final JSON line.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "deploy", "python"))  # infer.py, the deployment script

import paddle_coopflow  # noqa: E402,F401  (quiet paddle start-up)
from paddle_coopflow.config import load_config  # noqa: E402
from paddle_coopflow.utils.env import seed_everything, setup_threads  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-c", "--config", required=True)
    p.add_argument("-o", "--override", action="append", default=[], metavar="Section.key=value")
    p.add_argument("--batch", type=int, default=28)
    p.add_argument("--repeats", type=int, default=3, help="timed runs after one warm-up")
    p.add_argument("--warmup_batch", type=int, default=0,
                   help="batch of the untimed warm-up run (0 = --batch); 1 halves the cost of slow configs")
    p.add_argument("--threads", type=int, default=0, help="math threads; 0 = all cores")
    p.add_argument("--parts", default="dygraph,dygraph_flow,sampler,stepwise,flow",
                   help="comma list of: dygraph, fast (flow + the static oneDNN Langevin step of paddle_coopflow.accel), "
                        "dygraph_flow, sampler (fused sampler), stepwise (stepwise sampler, oneDNN on), "
                        "stepwise_nodnn (the same with oneDNN off), flow, "
                        "flow_onednn (flow_generator with oneDNN, inplace_pass off)")
    p.add_argument("--out_dir", default="", help="keep the exported programs here (default: a temp dir)")
    return p.parse_args(argv)


def _median_time(fn, repeats: int, warmup=None) -> float:
    (warmup or fn)()  # first predictor run / first dygraph call build executors and pick kernels
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _onednn_predictor(model_dir: str, name: str, threads: int):
    """oneDNN ON with inplace_pass deleted: measured correct for flow_generator only (grad programs fail
    under oneDNN; oneDNN + inplace_pass corrupts the mixture inverse). For speed comparison only."""
    import paddle.inference as pi

    import infer

    model, params = infer.find_model_file(model_dir, name)
    cfg = pi.Config(model, params)
    cfg.disable_glog_info()
    cfg.enable_mkldnn()
    cfg.delete_pass("inplace_pass")
    cfg.set_cpu_math_library_num_threads(threads)
    return pi.create_predictor(cfg)


class _Reporter:
    def __init__(self, batch: int, res: dict):
        self.batch, self.res = batch, res

    def __call__(self, key: str, seconds: float) -> None:
        self.res[key + "_s"] = seconds
        self.res[key + "_img_per_s"] = self.batch / seconds
        print(f"{key:28s} {seconds:9.3f} s/batch  {self.batch / seconds:9.2f} img/s", flush=True)


def _bench_dygraph(parts, flow, ebm, lg, z, zw, repeats: int, report) -> None:
    from paddle_coopflow.langevin import langevin_flow

    clip = tuple(lg.image_clip) if lg.image_clip else None
    if "dygraph" in parts:
        def dygraph_sample(z0):
            return langevin_flow(ebm, flow.inverse(z0), lg.n_steps, lg.test_step_size, lg.delta_clip, clip).numpy()

        report("dygraph_coopflow", _median_time(lambda: dygraph_sample(z), repeats, lambda: dygraph_sample(zw)))
    if "fast" in parts:  # the in-process static Langevin step with oneDNN (paddle_coopflow.accel)
        from paddle_coopflow.accel import make_langevin_step

        step = make_langevin_step(ebm, "static")

        def fast_sample(z0):
            return langevin_flow(ebm, flow.inverse(z0), lg.n_steps, lg.test_step_size, lg.delta_clip, clip,
                                 step=step).numpy()

        report("dygraph_flow+fast_langevin", _median_time(lambda: fast_sample(z), repeats, lambda: fast_sample(zw)))
    if "dygraph_flow" in parts:
        report("dygraph_flow", _median_time(lambda: flow.inverse(z).numpy(), repeats, lambda: flow.inverse(zw).numpy()))


def _bench_inference(parts, cfg, flow, ebm, z_np, zw_np, args, threads: int, report) -> None:
    import numpy as np

    import infer  # deploy/python/infer.py: the deployment's own predictor settings and samplers
    from paddle_coopflow.export import export_all
    from paddle_coopflow.accel import supports_manual_grad

    stepwise = [p for p in ("stepwise", "stepwise_nodnn") if p in parts]
    if stepwise and not supports_manual_grad(ebm):
        print(f"{'stepwise':28s} skipped: {type(ebm).__name__} has no grad-free langevin_step", flush=True)
        stepwise = []
    programs = [p for p, want in (("coopflow_sampler", "sampler"), ("flow_generator", "flow")) if want in parts]
    if ("flow_onednn" in parts or stepwise) and "flow_generator" not in programs:
        programs.append("flow_generator")
    if stepwise:
        programs.append("langevin_step")
    if not programs:
        return
    out_dir = args.out_dir or tempfile.mkdtemp(prefix="coopflow_export_")
    t0 = time.perf_counter()
    export_all(cfg, flow, ebm, out_dir, programs=programs)
    report.res["export_s"] = time.perf_counter() - t0
    print(f"{'export':28s} {report.res['export_s']:9.3f} s ({', '.join(programs)} -> {out_dir})", flush=True)
    info = infer.read_infer_cfg(out_dir)
    T = cfg.Langevin.n_steps
    noise = bool(info["langevin"]["noise_input"])

    def eps(z0):  # a noise input (Langevin.noise_mode on) gets zeros: the timing is the same
        return np.zeros((T, *z0.shape), np.float32) if noise else None

    # (key, make a callable z -> samples)
    runs = []
    if "coopflow_sampler" in programs:
        runs.append(("coopflow_sampler", lambda: infer.Sampler(out_dir, info, "fused", "cpu", threads)))
    for part in stepwise:
        dnn = "on" if part == "stepwise" else "off"
        runs.append(("stepwise_onednn_" + dnn, lambda dnn=dnn: infer.Sampler(out_dir, info, "stepwise", "cpu",
                                                                               threads, onednn=dnn)))
    if "flow" in parts:
        runs.append(("flow_generator", lambda: _flow_fn(infer.create_predictor(out_dir, "flow_generator", "cpu",
                                                                                 threads))))
    if "flow_onednn" in parts:
        runs.append(("flow_generator_onednn_no_inplace",
                     lambda: _flow_fn(_onednn_predictor(out_dir, "flow_generator", threads))))
    outputs = {}
    for key, make in runs:
        t0 = time.perf_counter()
        fn = make()
        report.res[key + "_create_s"] = time.perf_counter() - t0
        report("inference_" + key, _median_time(lambda: fn(z_np, eps(z_np)), args.repeats,
                                                 lambda: fn(zw_np, eps(zw_np))))
        outputs[key] = fn(z_np, eps(z_np))
    # the samplers must agree (zero noise): a fast wrong sampler is no result
    ref = outputs.get("coopflow_sampler")
    for key in ("stepwise_onednn_on", "stepwise_onednn_off"):
        if ref is not None and key in outputs:
            report.res[key + "_max_abs_diff_vs_fused"] = diff = float(np.abs(outputs[key] - ref).max())
            print(f"{key:28s} max |x - fused| = {diff:.2e}", flush=True)
    if not args.out_dir:
        shutil.rmtree(out_dir, ignore_errors=True)


def _flow_fn(pred):
    import infer

    return lambda z0, eps=None: infer.run_predictor(pred, [z0])[0]


def main(argv=None) -> int:
    args = parse_args(argv)
    import numpy as np
    import paddle

    from paddle_coopflow.builder import build_ebm, build_flow

    cfg = load_config(args.config, args.override)
    threads = setup_threads(args.threads)
    paddle.set_device("cpu")
    seed_everything(0)
    flow, ebm = build_flow(cfg.Flow), build_ebm(cfg.EBM)
    c, h, w = flow.z_shape
    flow.data_init(paddle.uniform([min(64, max(8, args.batch)), c, h, w], min=-1.0, max=1.0))
    flow.eval()
    ebm.eval()
    lg = cfg.Langevin
    z_np = np.random.RandomState(0).standard_normal((args.batch, c, h, w)).astype(np.float32)
    zw_np = z_np[: args.warmup_batch] if args.warmup_batch else z_np
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    res = {"config": args.config, "batch": args.batch, "n_steps": lg.n_steps, "threads": threads,
           "image_shape": [c, h, w], "inverse_method": cfg.Flow.inverse_method, "paddle": paddle.__version__}
    print(f"config {args.config}: batch {args.batch}, T={lg.n_steps}, image {c}x{h}x{w}, threads {threads}, "
          f"inverse {cfg.Flow.inverse_method}", flush=True)
    report = _Reporter(args.batch, res)
    _bench_dygraph(parts, flow, ebm, lg, paddle.to_tensor(z_np), paddle.to_tensor(zw_np), args.repeats, report)
    _bench_inference(parts, cfg, flow, ebm, z_np, zw_np, args, threads, report)
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
