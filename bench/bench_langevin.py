"""Benchmark one Langevin step of EBM_res: Paddle dygraph vs Paddle static (+ oneDNN) vs PyTorch eager.

Run by hand, never in CI. The defaults are the paper EBM (nf = 128, 32×32) at batch 8 and 28 with
2 threads; the three variants are timed interleaved (one call of each per round) so that a change of
machine load hits all of them alike. Also checks, on the same model, that the fast chain equals the
dygraph chain after T steps before and after an optimizer step changes the weights, that the PyTorch
twin computes the same f and ∇ₓf, and reports peak RSS and the load average.

Check that it runs with a tiny size first:
    python bench/bench_langevin.py --nf 8 --batches 2 --repeats 1 --check-steps 2
Full run (~5 min on a quiet 2-core machine):
    python bench/bench_langevin.py
PyTorch is optional (`pip install torch==2.13.0`, a benchmark-only dependency).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import paddle_coopflow  # noqa: E402,F401  (quiet paddle start-up)
from paddle_coopflow.utils.env import cpuinfo, seed_everything, setup_threads  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nf", type=int, default=128, help="EBM base channels (paper: 128)")
    p.add_argument("--img", type=int, default=32, choices=(8, 16, 32))
    p.add_argument("--batches", type=int, nargs="+", default=[8, 28])
    p.add_argument("--threads", type=int, default=2, help="math threads for both frameworks; 0 = all cores")
    p.add_argument("--repeats", type=int, default=5, help="timed rounds per batch (after one warm-up)")
    p.add_argument("--step-size", type=float, default=0.03)
    p.add_argument("--chain-T", type=int, default=30,
                   help="T over which the manual variant's once-per-chain cost is spread in the table (paper: 30)")
    p.add_argument("--check-steps", type=int, default=30, help="T of the fast-vs-dygraph chain check; 0 = skip")
    p.add_argument("--check-batch", type=int, default=8)
    p.add_argument("--check-step-size", type=float, default=10.0,
                   help="s of the chain check: a freshly initialised EBM has tiny gradients (|½s²∇f| ~ 3e-5 at "
                        "s = 1 for nf = 128), so a larger s makes the chain move; much larger s makes the map chaotic "
                        "(float32 rounding then grows step by step in any two implementations)")
    p.add_argument("--no-torch", action="store_true", help="skip PyTorch even if installed")
    p.add_argument("--json", default="", help="also write the results to this file")
    return p.parse_args(argv)


VARIANTS = ("manual", "autograd")
COLS = ("paddle_dygraph", "paddle_manual", "paddle_autograd", "torch_eager")


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _cpu_model() -> str:
    return cpuinfo("model name") or platform.processor() or "?"


def _timed(fn):
    w, c = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w, time.process_time() - c


def _median(v):
    v = sorted(v)
    n = len(v)
    return v[n // 2] if n % 2 else 0.5 * (v[n // 2 - 1] + v[n // 2])


def _import_torch(skip: bool):
    if skip:
        return None
    try:
        import torch
    except ImportError:
        print("PyTorch not installed: torch columns skipped (pip install torch==2.13.0 to compare)")
        return None
    return torch


def chain_check(ebm, args, np, paddle) -> dict:
    """max |static − dygraph| after T steps for both program variants, before and after an Adam step."""
    from paddle_coopflow.accel import StaticLangevinStep
    from paddle_coopflow.langevin import langevin_step

    T, s = args.check_steps, args.check_step_size
    fasts = {v: StaticLangevinStep(ebm, v, strict=True) for v in VARIANTS}
    x0 = paddle.to_tensor(np.random.RandomState(1).uniform(-1, 1, (args.check_batch, 3, args.img, args.img))
                          .astype("float32"))
    out = {}
    opt = paddle.optimizer.Adam(1e-4, parameters=ebm.parameters())
    for tag in ("before_update", "after_update"):
        t0 = time.perf_counter()
        xd = x0
        for _ in range(T):
            xd = langevin_step(ebm, xd, s, 0.1, (-1.0, 1.0))[0]
        _, _, drift = langevin_step(ebm, x0, s, 0.1, (-1.0, 1.0))
        row = {"dygraph_s": round(time.perf_counter() - t0, 1),
               "moved": float(np.abs(xd.numpy() - x0.numpy()).max()),
               "delta_clip_frac_step1": float((drift.abs() > 0.1).astype("float32").mean()),
               "image_clip_frac_end": float((xd.abs() == 1.0).astype("float32").mean())}
        for v, fast in fasts.items():
            t0 = time.perf_counter()
            xf = x0
            with fast.chain():   # as langevin_flow runs it
                for _ in range(T):
                    xf = fast(fast.ebm, xf, s, 0.1, (-1.0, 1.0))[0]
            row[f"{v}_s"] = round(time.perf_counter() - t0, 1)
            row[f"{v}_max_abs_diff"] = float(np.abs(xf.numpy() - xd.numpy()).max())
        out[tag] = row
        print(f"chain T={T} B={args.check_batch} {tag}: " + json.dumps(row))
        if tag == "before_update":   # a real dygraph training update between the two sampling calls
            loss = ebm(xd).mean() - ebm(x0).mean()
            loss.backward()
            opt.step()
            opt.clear_grad()
    return out


def bench_batch(B, args, ebm, fasts, tebm, torch) -> dict:
    """One row of the table: every variant timed interleaved at batch B."""
    import numpy as np
    import paddle

    from paddle_coopflow.langevin import langevin_step

    s = args.step_size
    x = paddle.to_tensor(np.random.RandomState(B).uniform(-1, 1, (B, 3, args.img, args.img)).astype("float32"))
    runs = {"paddle_dygraph": lambda: langevin_step(ebm, x, s, 0.1, (-1.0, 1.0))[0].numpy()}
    for v, fast in fasts.items():
        runs[f"paddle_{v}"] = (lambda f: lambda: f(f.ebm, x, s, 0.1, (-1.0, 1.0))[0].numpy())(fast)
    if tebm is not None:
        from torch_ebm import langevin_step as torch_step

        xt = torch.from_numpy(x.numpy())
        runs["torch_eager"] = lambda: torch_step(tebm, xt, s, 0.1, (-1.0, 1.0))[0].numpy()
    # The steps run as inside langevin_flow: in a chain scope (fixed weights), where the manual variant
    # computes its weight-only factors once; that once-per-chain cost is timed separately below and
    # added to the manual column spread over --chain-T steps.
    with fasts["manual"].chain():
        # first call: dygraph warm-up; static: trace + compile + first-run check
        warm = {k: _timed(fn)[0] for k, fn in runs.items()}
        rss_after_warmup = _rss_mb()
        wall = {k: [] for k in runs}
        cpu = {k: [] for k in runs}
        for _ in range(args.repeats):
            for k, fn in runs.items():
                w, c = _timed(fn)
                wall[k].append(w)
                cpu[k].append(c)
    adj = [_timed(lambda: ebm.adjoint_weights()[-1].numpy()) for _ in range(3)]
    adj_wall, adj_cpu = _median([a for a, _ in adj]), _median([c for _, c in adj])
    wall["paddle_manual"] = [v + adj_wall / args.chain_T for v in wall["paddle_manual"]]
    cpu["paddle_manual"] = [v + adj_cpu / args.chain_T for v in cpu["paddle_manual"]]
    row = {"batch": B, "first_call_s": {k: round(v, 2) for k, v in warm.items()},
           "wall_s": {k: round(_median(v), 3) for k, v in wall.items()},
           "cpu_s": {k: round(_median(v), 3) for k, v in cpu.items()},
           "manual_per_chain_s": round(adj_wall, 3),
           "load_avg_1min": round(os.getloadavg()[0], 2), "peak_rss_mb": round(rss_after_warmup)}
    w = row["wall_s"]
    row["best_paddle"] = min((k for k in w if k.startswith("paddle")), key=w.get)
    if tebm is not None:
        for k in ("wall_s", "cpu_s"):
            row[k.replace("_s", "_over_torch")] = {c: round(row[k][c] / row[k]["torch_eager"], 2)
                                                   for c in row[k] if c != "torch_eager"}
    return row


def main(argv=None) -> dict:
    args = parse_args(argv)
    threads = setup_threads(args.threads)
    import numpy as np
    import paddle

    from paddle_coopflow.accel import StaticLangevinStep
    from paddle_coopflow.models.ebm import EBMRes
    from paddle_coopflow.utils.env import onednn_cpu

    torch = _import_torch(args.no_torch)
    load0 = os.getloadavg()
    seed_everything(0)
    ebm = EBMRes(3, args.nf, args.img)
    n_params = sum(int(np.prod(p.shape)) for p in ebm.parameters())
    fasts = {v: StaticLangevinStep(ebm, v, strict=True) for v in VARIANTS}
    tebm = None
    info = {"machine": f"{_cpu_model()}, {os.cpu_count()} logical cores", "python": platform.python_version(),
            "paddle": paddle.__version__, "torch": torch.__version__ if torch else None, "threads": threads,
            "nf": args.nf, "img": args.img, "params": n_params, "fast_available": onednn_cpu(),
            "load_avg_start": [round(v, 2) for v in load0]}
    if torch is not None:
        from torch_ebm import TorchEBMRes, copy_from_paddle, cross_check

        torch.set_num_threads(threads)
        tebm = copy_from_paddle(TorchEBMRes(3, args.nf, args.img), ebm)
        xc = np.random.RandomState(2).uniform(-1, 1, (2, 3, args.img, args.img)).astype("float32")
        info["twin_check"] = cross_check(ebm, tebm, xc)
        print(f"torch twin vs Paddle: {info['twin_check']}")
    print(json.dumps(info))

    rows = []
    for B in args.batches:
        row = bench_batch(B, args, ebm, fasts, tebm, torch)
        rows.append(row)
        print(json.dumps(row))

    chain = chain_check(ebm, args, np, paddle) if args.check_steps > 0 else None
    result = dict(info, rows=rows, chain=chain, chain_T=args.chain_T, peak_rss_mb=round(_rss_mb()),
                  load_avg_end=[round(v, 2) for v in os.getloadavg()])
    _print_table(result)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=1)
    return result


def _print_table(r: dict) -> None:
    print(f"\n{r['machine']}; Paddle {r['paddle']}, torch {r['torch']}, {r['threads']} threads, "
          f"EBM_res nf={r['nf']} ({r['params']:,} params), {r['img']}x{r['img']}; "
          f"load avg start {r['load_avg_start']}, end {r['load_avg_end']}")
    print("seconds per Langevin step, median wall (process CPU time in brackets); ratio = Paddle / torch wall; "
          f"manual includes its once-per-chain cost / {r.get('chain_T', 30)}")
    print("| batch | " + " | ".join(COLS) + " | best Paddle / torch | first call manual / autograd s | load |")
    print("|---|" + "---|" * (len(COLS) + 3))
    for row in r["rows"]:
        w, c = row["wall_s"], row["cpu_s"]
        cells = [f"{w[k]:.3f} ({c[k]:.2f})" if k in w else "–" for k in COLS]
        ratio = row.get("wall_over_torch", {}).get(row["best_paddle"], "–")
        fc = row["first_call_s"]
        print(f"| {row['batch']} | " + " | ".join(cells) + f" | {ratio} ({row['best_paddle']}) | "
              f"{fc['paddle_manual']} / {fc['paddle_autograd']} | {row['load_avg_1min']} |")
    print(f"peak RSS {r['peak_rss_mb']} MB (both frameworks in one process)")


if __name__ == "__main__":
    main()
