"""The paper's Table 6 at CPU scale: final samples, proxy scores, grids and curves of finished runs.

    python bench/quality/table6.py --features ~/.cache/paddle_coopflow/quality/features \\
        --test-dir CIFAR10_TEST --floor-dir CIFAR10_TRAIN --out docs/results_cpu \\
        --run coopflow=output/cifar10_cpu_coopflow --run flow_only=output/cifar10_cpu_flow_only \\
        --run langevin_only=output/cifar10_cpu_langevin_only

For each run (LABEL=RUN_DIR; LABEL names the row, e.g. the mode, `coopflow_pre` or `flow_lr_1e-4`) the
checkpoint RUN_DIR/ckpt/latest draws --num images from --seed the way tools/sample.py does (eval mode, test
step size, no noise) and this writes under --out:
    samples_LABEL.npz   images: uint8 [N, 32, 32, 3] (the run's samples; with a flow and an EBM the Langevin
                        revisions, plus the flow proposals of the same draws under 'proposals'),
                        seed, mode (the checkpoint's Train.mode), checkpoint (inside the run directory),
                        iteration; not written with --no-npz
    grid_LABEL.png      the first 64 as an 8x8 grid, upscaled (coopflow: proposals | revisions)
    real_cifar10.png    64 real training images, the same way
    curve.png           in-training proxy FID (stats.jsonl 'eval/proxy_fid') against iterations
    table6.json         everything in the table below
and prints the Markdown table: proxy FID and KID against the --test-dir images, the floor (1,000 real
training images), iterations, wall time (train.log) and CPU time (stats.jsonl) of each run.

A run that started from another run's checkpoint (CoopFlow(Pre): the flow-alone run's iteration 200, then
cooperative) is given with --pretrained LABEL=RUN_DIR@ITER: its row counts ITER more iterations and that
run's CPU and wall time up to ITER, and its curve starts with that run's points up to ITER.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
from datetime import datetime
from typing import Dict, List

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import paddle_coopflow  # noqa: E402,F401  (quiet paddle start-up)
from bench.quality.score import ProxyScorer, load_folder_images  # noqa: E402
from paddle_coopflow.cli import run_cli  # noqa: E402
from paddle_coopflow.errors import UserError  # noqa: E402

_LABEL = re.compile(r"^[A-Za-z0-9_.+-]+$")
_STAMP = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)\]")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", action="append", required=True, metavar="LABEL=RUN_DIR",
                   help="a finished run and the name of its row (repeat for each)")
    p.add_argument("--features", required=True, metavar="MODEL_PREFIX", help="train_classifier.py's OUT/features")
    p.add_argument("--test-dir", required=True, help="reference (real test) images")
    p.add_argument("--floor-dir", required=True, help="class-per-folder real training images (floor, real grid)")
    p.add_argument("--out", required=True, help="output directory (e.g. docs/results_cpu)")
    p.add_argument("--num", type=int, default=1000, help="samples per run (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="seed of the samples (default 0)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-npz", action="store_true", help="do not write the samples_LABEL.npz files")
    p.add_argument("--pretrained", action="append", default=[], metavar="LABEL=RUN_DIR@ITER",
                   help="run LABEL continued RUN_DIR's checkpoint of iteration ITER (counted in its row)")
    args = p.parse_args(argv)
    args.pre = {}
    for item in args.pretrained:
        label, _, rest = item.partition("=")
        run_dir, _, it = rest.rpartition("@")
        if not it.isdigit() or not os.path.isfile(os.path.join(run_dir, "stats.jsonl")):
            raise UserError(f"--pretrained {item!r}: expected LABEL=RUN_DIR@ITER with RUN_DIR/stats.jsonl")
        args.pre[label] = (run_dir, int(it))
    runs = {}
    for item in args.run:
        label, _, run_dir = item.partition("=")
        if not _LABEL.match(label) or not run_dir or label in runs:
            raise UserError(f"--run {item!r}: expected LABEL=RUN_DIR with a new LABEL of letters, digits and _.+-")
        if not os.path.isfile(os.path.join(run_dir, "ckpt", "latest.pdparams")):
            raise UserError(f"--run {item!r}: no checkpoint {run_dir}/ckpt/latest.pdparams (finish the run first)")
        runs[label] = run_dir
    args.runs = runs
    return args


def draw(run_dir: str, num: int, seed: int):
    """({'images', and for CoopFlow 'proposals'}: uint8 [N, 32, 32, 3], iteration) of RUN_DIR/ckpt/latest."""
    from paddle_coopflow.checkpoint import load_checkpoint
    from paddle_coopflow.cli import load_model
    from paddle_coopflow.evaluation import to_uint8_images
    from paddle_coopflow.evaluation.generate import generate_samples

    prefix = os.path.join(run_dir, "ckpt", "latest")
    cfg, flow, ebm = load_model(None, [], prefix)
    prop, rev = generate_samples(flow, ebm, cfg, num, batch_size=100, seed=seed)
    out = {"images": to_uint8_images(rev if ebm is not None else prop)}
    if flow is not None and ebm is not None:
        out["proposals"] = to_uint8_images(prop)
    it = int(load_checkpoint(prefix, need=(".pdstates",))["states"]["global_iter"])
    return out, it, cfg.Train.mode


def run_times(run_dir: str, until: int = 0) -> Dict[str, float]:
    """Wall seconds (first to last train.log line), process CPU seconds (the last stats.jsonl record of each
    process, summed over resumed processes: the iterations after a process's last log line are not counted)
    and the in-training proxy FID curve [(iteration, FID, KID)]; with `until`, only up to that iteration."""
    stamps, last_line = [], re.compile(rf"\biter {until}/") if until else None
    with open(os.path.join(run_dir, "train.log")) as f:
        for line in f:
            m = _STAMP.match(line)
            if m:
                stamps.append(datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S"))
            if last_line is not None and last_line.search(line):
                break
    done, cpu, curve = 0.0, 0.0, []   # process CPU seconds restart with each resumed process: sum the segments
    with open(os.path.join(run_dir, "stats.jsonl")) as f:
        for line in f:
            rec = json.loads(line)
            if until and int(rec["step"]) > until:
                break
            now = rec.get("time/process_cpu_s")
            if now is not None:
                if now < cpu:
                    done += cpu
                cpu = now
            if "eval/proxy_fid" in rec:
                curve.append((int(rec["step"]), float(rec["eval/proxy_fid"]), float(rec.get("eval/proxy_kid", np.nan))))
    wall = (stamps[-1] - stamps[0]).total_seconds() if len(stamps) > 1 else float("nan")
    return {"wall_s": wall, "cpu_s": done + cpu, "curve": curve}


def with_pretraining(row: Dict, run_dir: str, it: int) -> Dict:
    """A row of a run that continued `run_dir`'s checkpoint of iteration `it`: that part counted in."""
    pre = run_times(run_dir, it)
    row.update({"iterations": row["iterations"] + it, "wall_s": row["wall_s"] + pre["wall_s"],
                "cpu_s": row["cpu_s"] + pre["cpu_s"], "pretrained": f"{run_dir}@{it}",
                "curve": pre["curve"] + [(i + it, f, k) for i, f, k in row["curve"]]})
    return row


def grid_png(images: List[np.ndarray], path: str) -> None:
    """8x8 grids of uint8 NHWC images side by side (white gap), upscaled like the trainer's grids."""
    from paddle_coopflow.training.outputs import upscale
    from paddle_coopflow.logger import save_png, to_uint8_grid

    grids = [to_uint8_grid(x[:64].transpose(0, 3, 1, 2).astype(np.float32) / 127.5 - 1.0, nrow=8) for x in images]
    parts = []
    for g in grids:
        parts += [g, np.full((g.shape[0], 6, 3), 255, np.uint8)]
    save_png(upscale(np.concatenate(parts[:-1], axis=1), 32), path)


def curve_png(curves: Dict[str, list], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=110)
    for mode, pts in curves.items():
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=mode)
    ax.set_xlabel("iteration")
    ax.set_ylabel("proxy FID (1,000 samples)")
    ax.grid(alpha=0.3)
    if any(curves.values()):
        ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv=None) -> int:
    args = parse_args(argv)
    from paddle_coopflow.utils.env import setup_threads

    setup_threads(args.threads)
    os.makedirs(args.out, exist_ok=True)
    test = load_folder_images(args.test_dir)
    floor = load_folder_images(args.floor_dir, 100)
    scorer = ProxyScorer(args.features, test)
    result = {"floor": scorer.score(floor), "seed": args.seed, "num": args.num, "runs": {}}
    grid_png([floor], os.path.join(args.out, "real_cifar10.png"))
    for label, run_dir in args.runs.items():
        arrays, it, mode = draw(run_dir, args.num, args.seed)
        if not args.no_npz:
            np.savez_compressed(os.path.join(args.out, f"samples_{label}.npz"), seed=args.seed, mode=mode,
                                checkpoint=f"ckpt/iter_{it:07d}", iteration=it, **arrays)  # = ckpt/latest
        grid_png([arrays["proposals"], arrays["images"]] if "proposals" in arrays else [arrays["images"]],
                 os.path.join(args.out, f"grid_{label}.png"))
        row = {"mode": mode, "iterations": it, "score": scorer.score(arrays["images"]), **run_times(run_dir)}
        if label in args.pre:
            row = with_pretraining(row, *args.pre[label])
        if "proposals" in arrays:
            row["score_proposals"] = scorer.score(arrays["proposals"])
        result["runs"][label] = row
    curve_png({m: r["curve"] for m, r in result["runs"].items()}, os.path.join(args.out, "curve.png"))
    with open(os.path.join(args.out, "table6.json"), "w") as f:
        json.dump(result, f, indent=1)
    print(format_table(result))
    return 0


def format_table(result: Dict) -> str:
    fl = result["floor"]
    lines = ["| run | proxy FID | KID ×1e3 | floor FID / KID ×1e3 | iterations | wall | CPU time |",
             "|---|---|---|---|---|---|---|"]
    for label, r in result["runs"].items():
        rows = [(label, r["score"])] + ([(f"{label}: its flow proposals", r["score_proposals"])]
                                        if "score_proposals" in r else [])
        for name, s in rows:
            lines.append(f"| {name} | {s['fid']:.3f} | {1e3 * s['kid']:.2f} ± {1e3 * s['kid_std']:.2f} | "
                         f"{fl['fid']:.3f} / {1e3 * fl['kid']:.2f} | {r['iterations']} | "
                         f"{r['wall_s'] / 60:.0f} min | {r['cpu_s'] / 60:.0f} min |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(run_cli(main))
