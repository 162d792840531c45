"""Draw N images from a trained CoopFlow: flow proposals and their Langevin revisions (paper §3.4).

    python tools/sample.py -c configs/digits_demo.yaml --ckpt output/digits_demo/ckpt/latest \\
        --num 1000 --out out/samples

Writes, under --out:
    coopflow/000000.png ...   one PNG per CoopFlow sample (an FID folder)
    flow/000000.png ...       one PNG per flow proposal
    grid_coopflow.png, grid_flow.png      the first --grid images
    samples.npz               'flow' and 'coopflow': float32 [N, C, H, W] in [-1, 1]
    sample_info.json          checkpoint, N, T, step size, seed, throughput
T is Langevin.n_steps and s the *test* step size Langevin.test_step_size: change them with
-o Langevin.n_steps=... -o Langevin.test_step_size=... . -c is optional: the config stored in the
checkpoint is used when it is omitted.
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


def _old_pngs(path: str, overwrite: bool) -> list:
    """PNGs another run left in `path` (to be replaced with --overwrite; an error without it)."""
    old = [n for n in os.listdir(path) if n.endswith(".png")] if os.path.isdir(path) else []
    if old and not overwrite:
        raise UserError(f"{path} already holds PNG files (an FID folder must not mix runs); "
                        "pass --overwrite or choose another --out")
    return old


def _prepare_dir(path: str, overwrite: bool) -> None:
    for n in _old_pngs(path, overwrite):
        os.remove(os.path.join(path, n))
    os.makedirs(path, exist_ok=True)


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(parser)
    parser.add_argument("--num", type=int, default=50000, help="number of images (default 50,000, as for FID)")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--batch-size", type=int, default=0, help="default: Eval.sample_batch_size")
    parser.add_argument("--seed", type=int, default=None, help="default: Global.seed")
    parser.add_argument("--grid", type=int, default=100, help="images in the grid PNGs")
    parser.add_argument("--no-png", action="store_true", help="skip the per-image PNGs")
    parser.add_argument("--no-npz", action="store_true", help="skip samples.npz (2 x N x C x H x W float32)")
    parser.add_argument("--overwrite", action="store_true", help="replace PNGs left in --out by another run")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    if args.num < 1:
        raise UserError(f"--num must be >= 1, got {args.num}")
    return args


class Writer:
    """Collects batches into the PNG folders, the grids and samples.npz."""

    def __init__(self, args):
        self.args, self.i, self.store = args, 0, {}
        self.dirs = {k: os.path.join(args.out, k) for k in ("coopflow", "flow")}
        self.grids = {"flow": [], "coopflow": []}

    def add(self, xf, xc) -> None:
        import numpy as np

        from paddle_coopflow.evaluation import to_uint8_images
        from paddle_coopflow.logger import save_png

        a = self.args
        if not self.store and not a.no_npz:
            shape = (a.num,) + xf.shape[1:]
            self.store = {"flow": np.empty(shape, np.float32), "coopflow": np.empty(shape, np.float32)}
        for key, x in (("flow", xf), ("coopflow", xc)):
            if self.store:
                self.store[key][self.i:self.i + len(x)] = x
            if sum(len(g) for g in self.grids[key]) < a.grid:
                self.grids[key].append(x[: a.grid])
            if not a.no_png:
                for k, img in enumerate(to_uint8_images(x)):
                    save_png(img[..., 0] if img.shape[-1] == 1 else img,
                             os.path.join(self.dirs[key], f"{self.i + k:06d}.png"))
        self.i += len(xf)

    def close(self) -> None:
        import numpy as np

        from paddle_coopflow.logger import save_png, to_uint8_grid

        for key, parts in self.grids.items():
            g = np.concatenate(parts)[: self.args.grid]
            save_png(to_uint8_grid(g, nrow=int(np.ceil(np.sqrt(len(g))))),
                     os.path.join(self.args.out, f"grid_{key}.png"))
        if self.store:
            np.savez(os.path.join(self.args.out, "samples.npz"), **self.store)


def main(argv=None):
    args = parse_args(argv)
    from paddle_coopflow.evaluation import iter_samples

    writer = Writer(args)
    if not args.no_png:
        for d in writer.dirs.values():
            _old_pngs(d, args.overwrite)
    # The checkpoint is read and checked before anything is created or removed under --out.
    cfg, flow, ebm = load_model(args.config, args.override, args.ckpt)
    if not args.no_png:
        for d in writer.dirs.values():
            _prepare_dir(d, args.overwrite)
    os.makedirs(args.out, exist_ok=True)
    bs = args.batch_size or cfg.Eval.sample_batch_size
    seed = cfg.Global.seed if args.seed is None else args.seed
    T, s = cfg.Langevin.n_steps, cfg.Langevin.test_step_size
    kind = ("CoopFlow" if flow is not None and ebm is not None else
            "flow only (no EBM in the checkpoint: coopflow = flow)" if ebm is None else
            "Langevin flow alone (no flow in the checkpoint: 'flow' holds the U(-1,1) starts)")
    print(f"sampling {args.num} images from {args.ckpt} [{kind}]: T={T} s={s} seed={seed} batch={bs}")
    t0, t_gen, cpu_gen = time.time(), 0.0, 0.0
    gen = iter_samples(flow, ebm, cfg, args.num, bs, seed, not args.no_progress)
    while True:
        t1, c1 = time.time(), time.process_time()
        batch = next(gen, None)
        t_gen, cpu_gen = t_gen + time.time() - t1, cpu_gen + time.process_time() - c1
        if batch is None:
            break
        writer.add(*batch)
    writer.close()
    dt = time.time() - t0
    info = {"checkpoint": args.ckpt, "num": args.num, "kind": kind, "langevin_steps": T, "step_size": s,
            "delta_clip": cfg.Langevin.delta_clip, "image_clip": cfg.Langevin.image_clip, "seed": seed,
            "batch_size": bs, "seconds_total": round(dt, 3), "seconds_sampling": round(t_gen, 3),
            "cpu_seconds_sampling": round(cpu_gen, 3), "threads": cfg.Global.threads or os.cpu_count(),
            "images_per_second": round(args.num / t_gen, 3)}
    with open(os.path.join(args.out, "sample_info.json"), "w") as fh:
        json.dump(info, fh, indent=1)
    print(f"sampling throughput: {args.num / t_gen:.2f} img/s ({t_gen:.1f} s wall / {cpu_gen:.1f} s CPU for "
          f"{args.num} images, flow + {T} Langevin steps); wrote them to {args.out} in {dt:.1f} s total")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
