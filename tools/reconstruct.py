"""Reconstruction by the Langevin flow (paper §5.3, appendix A.8, Table 7, Figure 13).

    python tools/reconstruct.py -c CONFIG --ckpt PREFIX --out DIR [--num 1000] [--steps 200] [--lr 0.05]
    python tools/reconstruct.py --ckpt PREFIX --out DIR --langevin-only -o Langevin.n_steps=100   # Table 7 baseline

Gradient descent on x̂ (initialised from the flow) through the differentiable Langevin flow F (T steps,
s = Langevin.step_size, no clips, no noise): x̂ ← clip(x̂ − lr·decayʲ·∇‖x − F(x̂)‖², −1, 1). Reports the
paper's MSE per pixel: Σ over channels of the squared error in [-1, 1] units / (H·W), mean over images.
T and s are set like in every tool: -o Langevin.n_steps=... -o Langevin.step_size=... .
--langevin-only is the short-run EBM baseline (a checkpoint trained with Train.mode=langevin_only):
x̂ from U(-1, 1) unless --init says otherwise; Table 7 runs it with T = 100.

Writes recon_curve.csv + recon_curve.png (error after j updates, j = 0..steps), recon_triples.png
(rows of (x̂*, F(x̂*), x) triples), recon.npz and recon_summary.json.
"""
import argparse
import json
import os
import sys
import time

import _bootstrap  # noqa: F401  (repo root on sys.path)

import paddle_coopflow  # noqa: F401  (quietens paddle before it is imported)
from paddle_coopflow.cli import add_model_args, load_model, run_cli
from paddle_coopflow.errors import UserError


def plot_curve(values, path: str, title: str) -> None:
    """A small line plot with PIL (no plotting dependency): y = values[j] against j."""
    import numpy as np
    from PIL import Image, ImageDraw

    from paddle_coopflow.logger import save_png

    w, h, m = 640, 400, 60
    img = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(img)
    v = np.asarray(values, float)
    lo, hi = 0.0, float(np.nanmax(v)) * 1.05 or 1.0
    xs = m + (w - 2 * m) * np.arange(len(v)) / max(1, len(v) - 1)
    ys = h - m - (h - 2 * m) * (v - lo) / (hi - lo)
    d.rectangle([m, m, w - m, h - m], outline="black")
    for k in range(5):  # y ticks
        val = lo + (hi - lo) * k / 4
        y = h - m - (h - 2 * m) * k / 4
        d.line([m - 4, y, m, y], fill="black")
        d.text((4, y - 6), f"{val:.4f}", fill="black")
    for k in range(5):  # x ticks
        x = m + (w - 2 * m) * k / 4
        d.line([x, h - m, x, h - m + 4], fill="black")
        d.text((x - 10, h - m + 8), f"{(len(v) - 1) * k / 4:.0f}", fill="black")
    d.line(list(zip(xs.tolist(), ys.tolist())), fill=(200, 30, 30), width=2)
    d.text((m, 20), title, fill="black")
    d.text((w // 2 - 40, h - 24), "gradient step j", fill="black")
    save_png(np.asarray(img), path)


def triples_grid(x_hat, x_rec, x, n: int):
    """uint8 grid with 3 triples (x̂*, F(x̂*), x) per row."""
    import numpy as np

    from paddle_coopflow.logger import to_uint8_grid

    n = min(n, len(x))
    inter = np.stack([x_hat[:n], np.clip(x_rec[:n], -1, 1), x[:n]], axis=1).reshape((3 * n,) + x.shape[1:])
    return to_uint8_grid(inter, nrow=3 * min(3, n))


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(parser)
    parser.add_argument("--out", required=True)
    parser.add_argument("--split", default="test", help="Data split (the official code: the CIFAR-10 test split)")
    parser.add_argument("--start", type=int, default=0, help="first image index")
    parser.add_argument("--num", type=int, default=1000, help="images (the official code: the first 1,000)")
    parser.add_argument("--batch-size", type=int, default=40, help="the official code: 25 batches of 40")
    parser.add_argument("--steps", type=int, default=200, help="gradient steps J")
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--decay", type=float, default=1.0, help="lr factor per step (ratio^j)")
    parser.add_argument("--init", choices=("flow", "uniform", "zeros"), default=None,
                        help="x̂ initialisation (default flow; uniform with --langevin-only)")
    parser.add_argument("--langevin-only", action="store_true",
                        help="Table 7 baseline: Langevin flow alone (EBM-only checkpoint), U(-1,1) init")
    parser.add_argument("--seed", type=int, default=0, help="the official code: 0")
    parser.add_argument("--triples", type=int, default=27, help="(x̂*, F(x̂*), x) triples in the grid")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    if args.steps < 0 or args.batch_size < 1:
        raise UserError("--steps must be >= 0 and --batch-size >= 1")
    return args


def run_batches(args, flow, ebm, x, init: str, T: int, s: float):
    """Reconstruct x in batches → (x̂*, F(x̂*), per-image errors, mean curve)."""
    import numpy as np
    from tqdm import tqdm

    from paddle_coopflow.evaluation import reconstruct

    parts, curve_sum = [], np.zeros(args.steps + 1)
    for i in tqdm(range(0, args.num, args.batch_size), unit="batch", desc="reconstruct", disable=args.no_progress):
        xb = x[i:i + args.batch_size]
        r = reconstruct(flow, ebm, xb, args.steps, args.lr, args.decay, T, s, init, args.seed + i,
                        progress=not args.no_progress)
        parts.append(r)
        curve_sum += r["curve"] * len(xb)
    cat = [np.concatenate([r[k] for r in parts]) for k in ("x_hat", "x_rec", "errors")]
    return cat[0], cat[1], cat[2], curve_sum / args.num


def main(argv=None):
    args = parse_args(argv)
    import numpy as np

    from paddle_coopflow.evaluation import load_eval_images
    from paddle_coopflow.logger import save_png

    cfg, flow, ebm = load_model(args.config, args.override, args.ckpt)
    if ebm is None:
        raise UserError(f"{args.ckpt} has no EBM: reconstruction runs through the Langevin flow")
    init = args.init or ("uniform" if args.langevin_only else "flow")
    if init == "flow" and flow is None:
        raise UserError(f"{args.ckpt} has no flow (Train.mode=langevin_only?): use --langevin-only")
    T, s = cfg.Langevin.n_steps, cfg.Langevin.step_size
    x = load_eval_images(cfg, args.split, args.start, args.num)
    name = "Langevin flow alone" if args.langevin_only else "CoopFlow"
    print(f"reconstruction [{name}]: {args.num} images of {cfg.Data.name}/{args.split}, init {init}, "
          f"T={T} s={s} (no clips, no noise), {args.steps} steps lr {args.lr} decay {args.decay}")
    t0 = time.time()
    x_hat, x_rec, errors, curve = run_batches(args, flow, ebm, x, init, T, s)
    dt = time.time() - t0

    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "recon_curve.csv"), "w") as fh:
        fh.write("step,mse_per_pixel\n" + "".join(f"{j},{v:.6f}\n" for j, v in enumerate(curve)))
    plot_curve(curve, os.path.join(args.out, "recon_curve.png"),
               f"{name}: reconstruction MSE per pixel (sum over channels / HW, [-1,1] units)")
    save_png(triples_grid(x_hat, x_rec, x, args.triples), os.path.join(args.out, "recon_triples.png"))
    np.savez(os.path.join(args.out, "recon.npz"), x_hat=x_hat, x_rec=x_rec, x=x, errors=errors, curve=curve)
    summary = {"model": name, "checkpoint": args.ckpt, "num": args.num, "split": args.split, "init": init,
               "langevin_steps": T, "step_size": s, "steps": args.steps, "lr": args.lr, "decay": args.decay,
               "mse_per_pixel_step0": float(curve[0]), f"mse_per_pixel_step{args.steps}": float(curve[-1]),
               "mse_per_pixel_final_mean": float(errors.mean()), "seconds": round(dt, 2)}
    with open(os.path.join(args.out, "recon_summary.json"), "w") as fh:
        json.dump(summary, fh, indent=1)
    print(f"MSE per pixel (sum over channels / (H*W), [-1,1] units, mean over {args.num} images): "
          f"step 0 {curve[0]:.5f}, step {args.steps} {curve[-1]:.5f}  ({dt:.1f} s); outputs in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
