"""Seconds per CoopFlow training iteration, PyTorch eager vs Paddle, same weights, one process (by hand, never in CI).

    python bench/bench_train_torch.py -c configs/cifar10_t30.yaml --batch 4 8 28 --iters 3 --threads 2
    python bench/bench_train_torch.py -c configs/digits_demo.yaml --batch 2 --iters 1 --threads 1   # smoke run

Paddle runs the package's `CoopFlow.train_step` (as bench/bench_train.py); PyTorch runs the same iteration
written with the eager twins bench/torch_flowpp.py and bench/torch_ebm.py (torch is a benchmark-only
dependency, checked with torch 2.13.0 CPU):
  propose  x̂ = flow.inverse(z), z ~ N(0, I), torch.no_grad, flow in train mode (Train.sample_flow_train_mode)
  revise   T Langevin steps x ← clamp(x + clip(½s²∇f, ±δ) (+ σ s ε), -1, 1)    (Langevin.*)
  updates  flow: Adam on mean nll(x̃) (gains with coupled L2), grad-norm clip (Optimizer.flow_clip_*);
           EBM: Adam(β Optimizer.ebm_beta*) on mean f(x̃) - mean f(x) (+ Optimizer.ebm_clip_norm); warm-up LR
Both start from the same weights (the Paddle nets, data-initialised on the first batch, copied into the
twins) and see the same random data batches in [-1, 1]. Per batch size: one warm-up iteration of each,
then --iters timed ones, the two frameworks alternating which goes first; medians are printed as a
markdown table (ratio = Paddle s / PyTorch s: above 1 means Paddle is slower). The load average is
printed with it: run on a quiet machine.
"""
from __future__ import annotations

import argparse
import math
import os
import resource
import statistics
import sys
import time
from typing import Dict, List

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "bench"))

import paddle_coopflow  # noqa: E402,F401  (quiet paddle start-up)
from paddle_coopflow.cli import run_cli  # noqa: E402
from paddle_coopflow.config import load_config  # noqa: E402
from paddle_coopflow.errors import UserError  # noqa: E402
from bench_train import time_parts  # noqa: E402  (bench/ is on sys.path)

PARTS = ("propose", "revise", "updates", "total")


class TorchCoopFlow:
    """The CoopFlow iteration in eager PyTorch on the twins (no skip rules: both nets step when finite)."""

    def __init__(self, cfg, flow, ebm, batch_size: int):
        import torch

        from paddle_coopflow.langevin import noise_std_for
        from paddle_coopflow.optim import WarmupLambda

        self.torch, self.flow, self.ebm = torch, flow, ebm
        o, lg = cfg.Optimizer, cfg.Langevin
        named = [(n, p) for n, p in flow.named_parameters() if p.requires_grad]
        gains = [p for n, p in named if n.endswith("weight_g")]
        rest = [p for n, p in named if not n.endswith("weight_g")]
        self.flow_groups = [g for g in (gains, rest) if g]
        self.flow_opt = torch.optim.Adam([{"params": gains, "weight_decay": o.flow_gain_l2},
                                          {"params": rest, "weight_decay": 0.0}],
                                         lr=o.flow_lr, betas=(o.flow_beta1, o.flow_beta2), eps=1e-8)
        self.ebm_opt = torch.optim.Adam(ebm.parameters(), lr=o.ebm_lr, betas=(o.ebm_beta1, o.ebm_beta2), eps=1e-8)
        self.base_lr = (o.flow_lr, o.ebm_lr)
        self.warmup = WarmupLambda(o.warmup_iters, batch_size, o.warmup_first_step_zero)
        self.flow_clip, self.flow_clip_mode, self.ebm_clip = o.flow_clip_norm, o.flow_clip_mode, o.ebm_clip_norm
        self.T, self.s, self.delta = lg.n_steps, lg.step_size, lg.delta_clip
        self.image_clip = tuple(lg.image_clip) if lg.image_clip else None
        self.noise_std = noise_std_for(lg.noise_mode, 0, lg.noise_decay_K, lg.noise_std)
        self.propose_in_train = cfg.Train.sample_flow_train_mode
        self.samples_seen = 0

    def _clip(self, groups, max_norm) -> float:
        clip = self.torch.nn.utils.clip_grad_norm_
        if not max_norm:
            return float(clip([p for g in groups for p in g], float("inf")))
        if self.flow_clip_mode == "per_group" and len(groups) > 1:
            return math.sqrt(sum(float(clip(g, max_norm)) ** 2 for g in groups))
        return float(clip([p for g in groups for p in g], max_norm))

    def train_step(self, x_data, parts: Dict[str, float]) -> Dict[str, float]:
        from torch_ebm import langevin_step

        torch, flow, ebm = self.torch, self.flow, self.ebm
        flow.train()
        ebm.train()
        self.flow_opt.zero_grad()
        self.ebm_opt.zero_grad()
        z = torch.randn(x_data.shape[0], *flow.z_shape)
        t0 = time.perf_counter()
        if not self.propose_in_train:
            flow.eval()
        with torch.no_grad():
            x = flow.inverse(z)
        flow.train()
        t1 = time.perf_counter()
        for _ in range(self.T):
            if self.noise_std > 0:
                x, _ = langevin_step(ebm, x, self.s, self.delta, None)
                x = x + self.noise_std * self.s * torch.randn_like(x)
                x = x.clamp(*self.image_clip) if self.image_clip else x
            else:
                x, _ = langevin_step(ebm, x, self.s, self.delta, self.image_clip)
        t2 = time.perf_counter()
        parts["propose"] += t1 - t0
        parts["revise"] += t2 - t1

        noise = torch.randn_like(x) if flow.dequant_flows is not None else torch.rand_like(x)
        flow_loss = flow.nll(x, noise).mean()
        flow_loss.backward()
        flow_norm = self._clip(self.flow_groups, self.flow_clip)
        ebm_loss = ebm(x).mean() - ebm(x_data).mean()
        ebm_loss.backward()
        ebm_norm = self._clip([list(ebm.parameters())], self.ebm_clip)
        nll, el = float(flow_loss.item()), float(ebm_loss.item())
        lam = self.warmup(self.samples_seen)
        for opt, base_lr in ((self.flow_opt, self.base_lr[0]), (self.ebm_opt, self.base_lr[1])):
            for g in opt.param_groups:
                g["lr"] = base_lr * lam
        if all(math.isfinite(v) for v in (el, ebm_norm)):
            self.ebm_opt.step()
            if all(math.isfinite(v) for v in (nll, flow_norm)):
                self.flow_opt.step()
        self.flow_opt.zero_grad()
        self.ebm_opt.zero_grad()
        self.samples_seen += int(x_data.shape[0])
        return {"flow_nll": nll, "ebm_loss": el}


def _setup(cfg, batch: int, seed: int = 0):
    """Paddle learner and torch iteration on the same weights; returns (paddle step, torch step, info)."""
    import numpy as np
    import paddle
    import torch

    import torch_ebm
    import torch_flowpp
    from paddle_coopflow.builder import build_ebm, build_flow
    from paddle_coopflow.coopflow import CoopFlow, CoopFlowOptions
    from paddle_coopflow.optim import build_optimizers
    from paddle_coopflow.utils.env import seed_everything

    seed_everything(seed)
    torch.manual_seed(seed)
    pflow, pebm = build_flow(cfg.Flow), build_ebm(cfg.EBM)
    learner = CoopFlow(pflow, pebm, *build_optimizers(cfg, pflow, pebm, batch_size=batch),
                       CoopFlowOptions.from_config(cfg))
    rng = np.random.default_rng(seed)
    shape = [batch] + list(cfg.Flow.in_shape)
    data = lambda: rng.uniform(-1.0, 1.0, shape).astype("float32")  # noqa: E731
    pflow.data_init(paddle.to_tensor(data()))
    tflow = torch_flowpp.copy_from_paddle(pflow, torch_flowpp.TorchFlowPlusPlus.from_config(cfg.Flow))
    tebm = torch_ebm.copy_from_paddle(torch_ebm.TorchEBMRes(cfg.EBM.in_channels, cfg.EBM.base_channels,
                                                            cfg.EBM.img_size), pebm)
    titer = TorchCoopFlow(cfg, tflow, tebm, batch)

    p_parts = time_parts(learner)

    def paddle_step(x, it):
        p_parts.update(propose=0.0, revise=0.0)
        t0 = time.perf_counter()
        learner.train_step(paddle.to_tensor(x), 0, it)
        total = time.perf_counter() - t0
        return dict(p_parts, updates=total - p_parts["propose"] - p_parts["revise"], total=total)

    def torch_step(x, it):
        parts = {"propose": 0.0, "revise": 0.0}
        t0 = time.perf_counter()
        titer.train_step(torch.from_numpy(x), parts)
        total = time.perf_counter() - t0
        return dict(parts, updates=total - parts["propose"] - parts["revise"], total=total)

    engine = "static" if hasattr(learner.langevin_step, "static") else "dygraph"
    return paddle_step, torch_step, data, {"langevin_engine": engine}


def bench_batch(cfg, batch: int, iters: int) -> Dict[str, Dict[str, float]]:
    paddle_step, torch_step, data, info = _setup(cfg, batch)
    times: Dict[str, List[Dict[str, float]]] = {"torch": [], "paddle": []}
    for i in range(iters + 1):            # iteration 0 is the warm-up of each framework
        x = data()
        order = [("torch", torch_step), ("paddle", paddle_step)]
        for name, step in (order if i % 2 == 0 else order[::-1]):
            t = step(x, i)
            if i > 0:
                times[name].append(t)
    med = {fw: {p: statistics.median(t[p] for t in ts) for p in PARTS} for fw, ts in times.items()}
    return {**med, **info}


def table(cfg, batch: int, res: Dict, iters: int, threads: int) -> str:
    f = cfg.Flow
    lines = [f"### batch {batch}: T = {cfg.Langevin.n_steps}, {threads} thread(s), medians of {iters} "
             f"iteration(s) after 1 warm-up",
             f"Flow inverse_method {f.inverse_method}, Paddle coupling_engine {f.coupling_engine}, "
             f"Paddle Langevin step {res['langevin_engine']}, "
             f"flow proposes in {'train' if cfg.Train.sample_flow_train_mode else 'eval'} mode",
             "",
             "| part | PyTorch s | Paddle s | ratio (Paddle / PyTorch) |",
             "| --- | ---: | ---: | ---: |"]
    for p in PARTS:
        t, pd = res["torch"][p], res["paddle"][p]
        label = f"revise ({cfg.Langevin.n_steps} Langevin steps)" if p == "revise" else p
        lines.append(f"| {label} | {t:.3f} | {pd:.3f} | {pd / t if t > 0 else float('nan'):.2f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-c", "--config", required=True)
    ap.add_argument("-o", "--override", action="append", default=[], help="KEY=VALUE, as in the tools")
    ap.add_argument("--batch", type=int, nargs="+", default=[4, 8], help="batch sizes to time")
    ap.add_argument("--iters", type=int, default=3, help="timed iterations per batch (after one warm-up)")
    ap.add_argument("--threads", type=int, default=2, help="math threads of both frameworks")
    args = ap.parse_args(argv)
    if args.iters < 1 or min(args.batch) < 1 or args.threads < 1:
        raise UserError("--iters, --batch and --threads must be >= 1")
    cfg = load_config(args.config, args.override)
    if cfg.Train.mode != "coopflow" or cfg.Flow.arch != "flowpp" or cfg.EBM.arch != "res":
        raise UserError(f"{args.config}: the torch twins cover Train.mode coopflow with Flow.arch flowpp and "
                        f"EBM.arch res (got {cfg.Train.mode}, {cfg.Flow.arch}, {cfg.EBM.arch})")
    try:
        import torch
    except ImportError as err:
        raise UserError(f"this benchmark needs PyTorch (pip install torch): {err}") from None

    from paddle_coopflow.utils.env import setup_threads

    setup_threads(args.threads)
    torch.set_num_threads(args.threads)
    print(f"# CoopFlow training iteration, PyTorch {torch.__version__} eager vs Paddle "
          f"{__import__('paddle').__version__}: {args.config} {' '.join('-o ' + o for o in args.override)}".rstrip())
    print(f"load average before (1/5/15 min): {' '.join(f'{v:.2f}' for v in os.getloadavg())}\n")
    for b in args.batch:
        res = bench_batch(cfg, b, args.iters)
        print(table(cfg, b, res, args.iters, args.threads))
        print(f"\nload average (1/5/15 min): {' '.join(f'{v:.2f}' for v in os.getloadavg())}; "
              f"process peak RSS so far {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB "
              f"(both frameworks)\n", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
