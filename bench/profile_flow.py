"""Op-by-op profile of the Flow++ training pass (mean NLL forward + backward), Paddle and the PyTorch twin.

    python bench/profile_flow.py -c configs/cifar10_t30.yaml --batch 4
    python bench/profile_flow.py -c configs/cifar10_t30.yaml --batch 4 --only paddle --rows 60

The config's Flow++ (train mode, dropout on, its 3×3 convolutions on the engine of `Train.update_engine` as in
training: `-o Train.update_engine=dygraph` for dygraph convolutions), ActNorm initialised on one batch, copied
into the PyTorch twin (bench/torch_flowpp.py); the same images in [-1, 1] and dequantization noise for both. Each framework: one
warm-up pass, one timed pass without the profiler, one pass under its profiler (paddle.profiler,
torch.profiler; CPU), whose per-operator table is printed (Paddle: forward ops as "<op> dygraph", their
gradients as "Global_<Op>GradNode"; PyTorch: aten ops, self time). Used for the op table of docs/speed.md,
"Where the flow's time goes". Torch is a benchmark-only dependency; never run in CI.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "bench"))

from paddle_coopflow.cli import run_cli  # noqa: E402
from paddle_coopflow.config import load_config  # noqa: E402
from paddle_coopflow.errors import UserError  # noqa: E402


def _passes(cfg, batch: int, only: str):
    """{framework: one forward+backward pass (a callable)} on the same weights and inputs."""
    import numpy as np
    import paddle

    from paddle_coopflow.builder import build_flow
    from paddle_coopflow.utils.env import seed_everything

    seed_everything(0)
    rng = np.random.default_rng(0)
    shape = [batch] + list(cfg.Flow.in_shape)
    x = rng.uniform(-1.0, 1.0, shape).astype("float32")
    noise = rng.standard_normal(shape).astype("float32")
    pflow = build_flow(cfg.Flow)
    pflow.train()
    pflow.data_init(paddle.to_tensor(x))
    pflow.set_update_engine(cfg.Train.update_engine)   # the training convolutions as in training

    def paddle_pass():
        pflow.nll(paddle.to_tensor(x), paddle.to_tensor(noise)).mean().backward()
        pflow.clear_gradients()

    passes = {"paddle": paddle_pass}
    if only in ("both", "torch"):
        import torch
        import torch_flowpp

        tflow = torch_flowpp.copy_from_paddle(pflow, torch_flowpp.TorchFlowPlusPlus.from_config(cfg.Flow))
        tflow.train()

        def torch_pass():
            tflow.nll(torch.from_numpy(x), torch.from_numpy(noise)).mean().backward()
            tflow.zero_grad()

        passes["torch"] = torch_pass
    return {k: v for k, v in passes.items() if only in ("both", k)}


def profile(name: str, one_pass, rows: int) -> None:
    one_pass()
    t = time.perf_counter()
    one_pass()
    print(f"\n## {name}: {time.perf_counter() - t:.2f} s per pass without the profiler", flush=True)
    if name == "paddle":
        import paddle.profiler as pp

        # on_trace_ready: without it Paddle writes a chrome trace into ./profiler_log/
        prof = pp.Profiler(targets=[pp.ProfilerTarget.CPU], on_trace_ready=lambda _: None)
        prof.start()
        one_pass()
        prof.stop()
        prof.summary(sorted_by=pp.SortedKeys.CPUTotal, op_detail=False, thread_sep=False, time_unit="ms")
    else:
        from torch.profiler import ProfilerActivity, profile as torch_profile

        with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
            one_pass()
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-c", "--config", required=True)
    ap.add_argument("-o", "--override", action="append", default=[], help="KEY=VALUE, as in the tools")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2, help="math threads of both frameworks")
    ap.add_argument("--only", choices=("both", "paddle", "torch"), default="both")
    ap.add_argument("--rows", type=int, default=40, help="rows of the PyTorch table")
    args = ap.parse_args(argv)
    if args.batch < 1 or args.threads < 1:
        raise UserError("--batch and --threads must be >= 1")
    cfg = load_config(args.config, args.override)
    if cfg.Flow.arch != "flowpp":
        raise UserError(f"{args.config}: Flow.arch must be flowpp (the twin is Flow++), got {cfg.Flow.arch}")
    from paddle_coopflow.utils.env import setup_threads

    setup_threads(args.threads)
    if args.only != "paddle":
        try:
            import torch
        except ImportError as err:
            raise UserError(f"--only {args.only} needs PyTorch (pip install torch), or use --only paddle: {err}")
        torch.set_num_threads(args.threads)
    print(f"# Flow++ mean-NLL forward+backward, batch {args.batch}, {args.threads} thread(s): {args.config}; "
          f"load average {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    for name, one_pass in _passes(cfg, args.batch, args.only).items():
        profile(name, one_pass, args.rows)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
