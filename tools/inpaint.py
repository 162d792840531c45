"""Inpainting with the Langevin flow (paper §5.3, Figures 5 and 11).

    python tools/inpaint.py -c CONFIG --ckpt PREFIX --out DIR [--num 50] [--n-init 20] [--mask-rect 7,7,16,16]

Reconstruction with the loss on the observed pixels only, L = Σ M ⊙ (x − F(x̂))², from --n-init flow
proposals per image: 201 steps, lr 0.03 × 0.99^j (the official code). Mask: the missing rectangle
--mask-rect TOP,LEFT,HEIGHT,WIDTH (default the official code's 16×16 square at rows/cols 7..22 of a 32×32
image, scaled to the image size), or --mask-image (white = observed, black = missing; resized to the image
size). T and s: -o Langevin.n_steps=... -o Langevin.step_size=... .

Writes step_JJJ.png (F(x̂) at step j; one row per image, one column per initialisation; kept at j < 10 and
every --snapshot-every steps), masked.png, original.png, final_pasted.png (observed pixels pasted back, as
the official code does at the last step), inpaint.npz and inpaint_summary.json with the MSE per pixel on the observed and on
the missing pixels (sum over channels / pixel count, [-1, 1] units).
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


def parse_rect(text):
    """'TOP,LEFT,HEIGHT,WIDTH' → 4 ints (None stays None)."""
    if text is None:
        return None
    try:
        rect = tuple(int(v) for v in text.split(","))
    except ValueError:
        rect = ()
    if len(rect) != 4:
        raise UserError(f"--mask-rect '{text}': expected TOP,LEFT,HEIGHT,WIDTH (four integers)")
    return rect


def load_mask(args, h: int, w: int):
    """[H, W] float32, 1 = observed."""
    import numpy as np

    from paddle_coopflow.evaluation import default_mask

    if args.mask_image:
        from PIL import Image

        if not os.path.isfile(args.mask_image):
            raise UserError(f"--mask-image '{args.mask_image}' does not exist")
        with Image.open(args.mask_image) as im:
            m = np.asarray(im.convert("L").resize((w, h), Image.NEAREST)) >= 128
        if m.all() or not m.any():
            raise UserError(f"--mask-image '{args.mask_image}' must have white (observed) and black (missing) pixels")
        return m.astype(np.float32)
    return default_mask(h, w, parse_rect(args.mask_rect))


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(parser)
    parser.add_argument("--out", required=True)
    parser.add_argument("--split", default="train", help="Data split (the official code: the CelebA set)")
    parser.add_argument("--start", type=int, default=0, help="first image (the official code: 25000, its 501st batch of 50)")
    parser.add_argument("--num", type=int, default=50, help="images (the official code: 50)")
    parser.add_argument("--n-init", type=int, default=20, help="flow initialisations per image (the official code: 20)")
    parser.add_argument("--batch-size", type=int, default=10, help="images per optimisation batch")
    parser.add_argument("--steps", type=int, default=201)
    parser.add_argument("--lr", type=float, default=0.03)
    parser.add_argument("--decay", type=float, default=0.99)
    parser.add_argument("--mask-rect", default=None, metavar="TOP,LEFT,HEIGHT,WIDTH", help="missing rectangle")
    parser.add_argument("--mask-image", default=None, help="mask PNG: white observed, black missing")
    parser.add_argument("--seed", type=int, default=30, help="the official code: 30")
    parser.add_argument("--snapshot-every", type=int, default=20, help="grid every k steps (plus j < 10)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    if args.n_init < 1 or args.steps < 0 or args.batch_size < 1 or args.snapshot_every < 1:
        raise UserError("--n-init, --batch-size and --snapshot-every must be >= 1 and --steps >= 0")
    if args.mask_rect and args.mask_image:
        raise UserError("give --mask-rect or --mask-image, not both")
    parse_rect(args.mask_rect)  # a malformed rectangle is reported before the model loads
    return args


def save_outputs(args, results, x, mask):
    """Snapshot grids, masked / original / pasted grids and inpaint.npz; returns the concatenated results."""
    import numpy as np

    from paddle_coopflow.logger import save_png, to_uint8_grid

    cat = {k: np.concatenate([r[k] for r in results]) for k in ("final", "pasted", "x_masked", "err_observed",
                                                               "err_masked")}
    os.makedirs(args.out, exist_ok=True)
    rows = dict(nrow=args.n_init)
    for j in sorted(results[0]["snapshots"]):
        snap = np.concatenate([r["snapshots"][j] for r in results])
        save_png(to_uint8_grid(np.clip(snap, -1, 1), **rows), os.path.join(args.out, f"step_{j:03d}.png"))
    save_png(to_uint8_grid(np.clip(cat["pasted"], -1, 1), **rows), os.path.join(args.out, "final_pasted.png"))
    save_png(to_uint8_grid(cat["x_masked"], nrow=1), os.path.join(args.out, "masked.png"))
    save_png(to_uint8_grid(x, nrow=1), os.path.join(args.out, "original.png"))
    np.savez(os.path.join(args.out, "inpaint.npz"), mask=mask, x=x, **cat)
    return cat


def main(argv=None):
    args = parse_args(argv)
    from tqdm import tqdm

    from paddle_coopflow.evaluation import inpaint, load_eval_images

    cfg, flow, ebm = load_model(args.config, args.override, args.ckpt)
    if flow is None or ebm is None:
        raise UserError(f"{args.ckpt} must hold a flow and an EBM (a CoopFlow checkpoint)")
    T, s = cfg.Langevin.n_steps, cfg.Langevin.step_size
    x = load_eval_images(cfg, args.split, args.start, args.num)
    mask = load_mask(args, x.shape[2], x.shape[3])
    print(f"inpainting: {args.num} images of {cfg.Data.name}/{args.split} from {args.start}, {int((mask < 0.5).sum())} "
          f"missing pixels, {args.n_init} inits each, T={T} s={s}, {args.steps} steps lr {args.lr} decay {args.decay}")

    keep = lambda j: j < 10 or j % args.snapshot_every == 0  # noqa: E731
    results = []
    t0 = time.time()
    for i in tqdm(range(0, args.num, args.batch_size), unit="batch", desc="inpaint", disable=args.no_progress):
        results.append(inpaint(flow, ebm, x[i:i + args.batch_size], mask, args.n_init, args.steps, args.lr,
                               args.decay, T, s, args.seed + i, keep, progress=not args.no_progress))
    dt = time.time() - t0
    cat = save_outputs(args, results, x, mask)
    summary = {"checkpoint": args.ckpt, "num": args.num, "n_init": args.n_init, "steps": args.steps, "lr": args.lr,
               "decay": args.decay, "langevin_steps": T, "step_size": s, "missing_pixels": int((mask < 0.5).sum()),
               "mse_per_pixel_observed": float(cat["err_observed"].mean()),
               "mse_per_pixel_missing": float(cat["err_masked"].mean()), "seconds": round(dt, 2)}
    with open(os.path.join(args.out, "inpaint_summary.json"), "w") as fh:
        json.dump(summary, fh, indent=1)
    print(f"MSE per pixel of F(x̂*) vs the original (sum over channels / pixels, [-1,1] units): observed "
          f"{summary['mse_per_pixel_observed']:.5f}, missing {summary['mse_per_pixel_missing']:.5f} ({dt:.1f} s); "
          f"outputs in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
