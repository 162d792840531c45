"""Inpainting with the Langevin flow ([P] §5.3, Figures 5 and 11; SPEC §6 test_impaint).

    python tools/inpaint.py -c CONFIG --ckpt PREFIX --out DIR [--num 50] [--n-init 20] [--mask-rect 7,7,16,16]

Reconstruction with the loss on the observed pixels only, L = Σ M ⊙ (x − F(x̂))², from --n-init flow
proposals per image: 201 steps, lr 0.03 × 0.99^j ([T]). Mask: the missing rectangle --mask-rect
TOP,LEFT,HEIGHT,WIDTH (default [T]'s 16×16 square at rows/cols 7..22 of a 32×32 image, scaled to the image
size), or --mask-image (white = observed, black = missing; resized to the image size).

Writes step_JJJ.png (F(x̂) at step j; one row per image, one column per initialisation; kept at j < 10 and
every --snapshot-every steps), masked.png, original.png, final_pasted.png (observed pixels pasted back, as
[T] does at the last step), inpaint.npz and inpaint_summary.json with the MSE per pixel on the observed and on
the missing pixels (sum over channels / pixel count, [-1, 1] units).
"""
import argparse
import json
import os
import sys
import time

import _bootstrap  # noqa: F401  (repo root on sys.path)

import paddle_coopflow  # noqa: F401  (quietens paddle before it is imported)
from paddle_coopflow.config import add_config_args, run_cli
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


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(parser, required=False)
    parser.add_argument("--ckpt", required=True, metavar="PREFIX")
    parser.add_argument("--out", required=True)
    parser.add_argument("--split", default="train", help="Data split ([T]: the CelebA set)")
    parser.add_argument("--start", type=int, default=0, help="first image ([T]: 25000, the 501st batch of 50)")
    parser.add_argument("--num", type=int, default=50, help="images ([T]: 50)")
    parser.add_argument("--n-init", type=int, default=20, help="flow initialisations per image ([T]: 20)")
    parser.add_argument("--batch-size", type=int, default=10, help="images per optimisation batch")
    parser.add_argument("--steps", type=int, default=201)
    parser.add_argument("--lr", type=float, default=0.03)
    parser.add_argument("--decay", type=float, default=0.99)
    parser.add_argument("--mask-rect", default=None, metavar="TOP,LEFT,HEIGHT,WIDTH", help="missing rectangle")
    parser.add_argument("--mask-image", default=None, help="mask PNG: white observed, black missing")
    parser.add_argument("--langevin-steps", type=int, default=None, help="T (default Langevin.n_steps)")
    parser.add_argument("--langevin-step-size", type=float, default=None, help="s (default Langevin.step_size)")
    parser.add_argument("--seed", type=int, default=30, help="[T] test_impaint: 30")
    parser.add_argument("--snapshot-every", type=int, default=20, help="grid every k steps (plus j < 10)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    if args.n_init < 1 or args.steps < 0 or args.batch_size < 1 or args.snapshot_every < 1:
        raise UserError("--n-init, --batch-size and --snapshot-every must be >= 1 and --steps >= 0")
    if args.mask_rect and args.mask_image:
        raise UserError("give --mask-rect or --mask-image, not both")
    parse_rect(args.mask_rect)  # a malformed rectangle is reported before the model loads

    import numpy as np
    from tqdm import tqdm

    from paddle_coopflow.evaluation import inpaint, load_eval_images, load_for_eval
    from paddle_coopflow.logger import save_png, to_uint8_grid

    cfg, flow, ebm = load_for_eval(args.config, args.override, args.ckpt)
    if flow is None or ebm is None:
        raise UserError(f"{args.ckpt} must hold a flow and an EBM (a CoopFlow checkpoint)")
    T = cfg.Langevin.n_steps if args.langevin_steps is None else args.langevin_steps
    s = cfg.Langevin.step_size if args.langevin_step_size is None else args.langevin_step_size
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
    cat = {k: np.concatenate([r[k] for r in results]) for k in ("final", "pasted", "x_masked", "err_observed",
                                                               "err_masked")}
    os.makedirs(args.out, exist_ok=True)
    rows = dict(nrow=args.n_init)
    for j in sorted(results[0]["snapshots"]):
        snap = np.concatenate([r["snapshots"][j] for r in results])
        save_png(to_uint8_grid(np.clip(snap, -1, 1), **rows), os.path.join(args.out, f"step_{j:03d}.png"))
    save_png(to_uint8_grid(np.clip(cat["pasted"], -1, 1), **rows), os.path.join(args.out, "final_pasted.png"))
    col = dict(nrow=1)
    save_png(to_uint8_grid(cat["x_masked"], **col), os.path.join(args.out, "masked.png"))
    save_png(to_uint8_grid(x, **col), os.path.join(args.out, "original.png"))
    np.savez(os.path.join(args.out, "inpaint.npz"), mask=mask, x=x, **cat)
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
