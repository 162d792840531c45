"""Interpolation in the flow's latent space, revised by the Langevin flow (paper §5.3, Figure 6).

    python tools/interpolate.py -c CONFIG --ckpt PREFIX --out DIR [--pairs 10] [--points 21] [--deterministic-dequant]

Images start .. start+2·pairs−1 of the Data split: the first half is paired with the second half (as the
official code).
Both ends are reconstructed (x̂*, 201 steps, lr 0.03 × 0.99^j), z = g⁻¹(x̂*) comes from the flow's forward pass
(random dequantization noise as the official code; --deterministic-dequant fixes it at ε = 0 / u = ½), the segment z_a → z_b
is cut into --points points, decoded by the flow and revised by the Langevin flow. --random-pairs more rows
interpolate between random z ~ N(0, I). T and s: -o Langevin.n_steps=... -o Langevin.step_size=... .

Writes interp_coopflow.png (columns: x_a, the revised points, x_b), interp_flow.png (the decoded points
before revision), random_coopflow.png / random_flow.png, and interp.npz.
Note: with Flow.undo_bound=false (the official code) g(g⁻¹(x)) ≈ 0.9·x, so the end points come out slightly
faded.
"""
import argparse
import os
import sys

import _bootstrap  # noqa: F401  (repo root on sys.path)

import paddle_coopflow  # noqa: F401  (quietens paddle before it is imported)
from paddle_coopflow.cli import add_model_args, load_model, run_cli
from paddle_coopflow.errors import UserError


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(parser)
    parser.add_argument("--out", required=True)
    parser.add_argument("--split", default="train")
    parser.add_argument("--start", type=int, default=0, help="first image (the official code: 120, its 7th batch of 20)")
    parser.add_argument("--pairs", type=int, default=10, help="image pairs (the official code: 10)")
    parser.add_argument("--points", type=int, default=21, help="points on each segment, ends included")
    parser.add_argument("--random-pairs", type=int, default=10, help="rows between random latents (0 = none)")
    parser.add_argument("--steps", type=int, default=201, help="reconstruction steps")
    parser.add_argument("--lr", type=float, default=0.03)
    parser.add_argument("--decay", type=float, default=0.99)
    parser.add_argument("--deterministic-dequant", action="store_true",
                        help="infer z with the dequantization noise at its centre instead of a random draw")
    parser.add_argument("--seed", type=int, default=12, help="the official code: 12")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    if args.pairs < 1 or args.points < 2 or args.steps < 0 or args.random_pairs < 0:
        raise UserError("--pairs >= 1, --points >= 2, --steps >= 0 and --random-pairs >= 0 are required")
    return args


def main(argv=None):
    args = parse_args(argv)

    import numpy as np

    from paddle_coopflow.evaluation import interpolate, interpolate_latents, load_eval_images
    from paddle_coopflow.logger import save_png, to_uint8_grid

    cfg, flow, ebm = load_model(args.config, args.override, args.ckpt)
    if flow is None or ebm is None:
        raise UserError(f"{args.ckpt} must hold a flow and an EBM (a CoopFlow checkpoint)")
    T, s = cfg.Langevin.n_steps, cfg.Langevin.step_size
    x = load_eval_images(cfg, args.split, args.start, 2 * args.pairs)
    xa, xb = x[: args.pairs], x[args.pairs:]
    dq = "deterministic (eps=0 / u=1/2)" if args.deterministic_dequant else "random (as the official code)"
    print(f"interpolation: {args.pairs} pairs of {cfg.Data.name}/{args.split}, {args.points} points, dequantization "
          f"{dq}, T={T} s={s}, reconstruction {args.steps} steps lr {args.lr} decay {args.decay}")
    r = interpolate(flow, ebm, xa, xb, args.points, args.steps, args.lr, args.decay, T, s,
                    args.deterministic_dequant, args.seed, progress=not args.no_progress)
    os.makedirs(args.out, exist_ok=True)
    row = args.points + 2

    def grid(points, name, ends=True):
        pts = np.clip(points, -1, 1)
        if ends:
            pts = np.concatenate([xa[:, None], pts, xb[:, None]], axis=1)
        n = pts.shape[1]
        save_png(to_uint8_grid(pts.reshape((-1,) + pts.shape[2:]), nrow=n), os.path.join(args.out, name))

    grid(r["revised"], "interp_coopflow.png")
    grid(r["decoded"], "interp_flow.png")
    out = {k: v for k, v in r.items()}
    if args.random_pairs:
        rs = np.random.RandomState(args.seed + 1)
        shape = (args.random_pairs,) + tuple(flow.z_shape)
        z0, z1 = rs.randn(*shape).astype("float32"), rs.randn(*shape).astype("float32")
        dec, rev = interpolate_latents(flow, ebm, z0, z1, args.points, T, s)
        grid(rev, "random_coopflow.png", ends=False)
        grid(dec, "random_flow.png", ends=False)
        out.update(random_decoded=dec, random_revised=rev)
    np.savez(os.path.join(args.out, "interp.npz"), x_a=xa, x_b=xb, **out)
    end_err = float(np.abs(r["decoded"][:, 0] - r["x_hat_a"]).mean())
    print(f"wrote {args.pairs} x {row} grids to {args.out}; mean |g(g^-1(x_hat_a)) - x_hat_a| = {end_err:.4f}"
          + (" (0.9 logit bound not undone, Flow.undo_bound=false)" if not cfg.Flow.undo_bound else ""))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
