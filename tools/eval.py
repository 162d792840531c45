"""FID between any two sources (SPEC §4.6-4.7), with the protocol printed.

    python tools/eval.py SOURCE_A SOURCE_B [-c CONFIG] [-o ...] [--weights PTH] [--num N]
    python tools/eval.py data:train --save-stats ref_stats.npz -c CONFIG      # reference statistics only

A source is one of
    DIR                  an image folder (PNG/JPG, recursive), e.g. tools/sample.py's <out>/coopflow
    FILE.npz / .npy      images (key 'coopflow', 'images' or the first array; uint8, or float in [-1, 1])
    FILE.npz             FID statistics (keys mu, sigma; pytorch-fid's --save-stats format)
    PREFIX               a checkpoint (PREFIX.pdparams exists): --num samples are generated (default 50,000)
    data[:SPLIT]         the config's dataset (Data section; default split Data.split), --ref-num images
Inception weights: --weights, else Eval.inception_weights (pytorch-fid's pt_inception-2015-12-05-6726825d.pth
or a converted .pdparams); nothing is downloaded. --random-init-inception runs the pipeline with random
weights, for tests and timing only: the number printed is then NOT an FID.
"""
import argparse
import os
import sys
import time

import _bootstrap  # noqa: F401  (repo root on sys.path)

import paddle_coopflow  # noqa: F401  (quietens paddle before it is imported)
from paddle_coopflow.config import add_config_args, load_config, run_cli
from paddle_coopflow.errors import UserError

RANDOM_LABEL = "RANDOM-INIT Inception (NOT an FID: pipeline check / timing only)"


def clock():
    """(wall seconds, CPU seconds of this process): on a shared machine the CPU time is the stable number."""
    return (time.time(), time.process_time())


def since(t0, t1=None):
    t1 = t1 or clock()
    return (t1[0] - t0[0], t1[1] - t0[1])


def fmt(t) -> str:
    return f"{t[0]:.1f} s wall / {t[1]:.1f} s CPU"


class Timed:
    """Wrap an iterator; count the (wall, CPU) seconds spent producing its items (sample generation)."""

    def __init__(self, it):
        self.it, self.seconds = iter(it), (0.0, 0.0)

    def __iter__(self):
        return self

    def __next__(self):
        t = clock()
        try:
            return next(self.it)
        finally:
            d = since(t)
            self.seconds = (self.seconds[0] + d[0], self.seconds[1] + d[1])


def _is_checkpoint(src: str) -> bool:
    return src.endswith(".pdparams") or (not os.path.exists(src) and os.path.isfile(src + ".pdparams"))


def _is_stats_file(src: str) -> bool:
    if not (src.endswith(".npz") and os.path.isfile(src)):
        return False
    import numpy as np

    with np.load(src) as f:
        return "mu" in f and "sigma" in f


def _config(args, ckpt=None):
    """-c config, else the config stored in a checkpoint source."""
    if args.config:
        return load_config(args.config, args.override)
    if ckpt:
        from paddle_coopflow.evaluation import load_for_eval

        return load_for_eval(None, args.override, ckpt)[0]
    raise UserError("a data: source needs the config: pass -c CONFIG")


def source_stats(src: str, args, evaluator_fn):
    """(mu, sigma, description, image count or None, (wall, CPU) seconds generating)."""
    from paddle_coopflow.data import DatasetError, load_images
    from paddle_coopflow.metrics.fid import load_image_array, list_image_files, stats_from_source

    if src == "data" or src.startswith("data:"):
        cfg = _config(args)
        split = src.split(":", 1)[1] if ":" in src else cfg.Data.split
        n = args.ref_num or cfg.Eval.fid_ref_num
        try:
            images = load_images(cfg.Data, split, n=n)
        except DatasetError as err:
            raise UserError(str(err)) from None
        mu, sigma = evaluator_fn().stats(images)
        return mu, sigma, f"dataset {cfg.Data.name} split '{split}', first {len(images)} images, unflipped", \
            len(images), (0.0, 0.0)
    if _is_checkpoint(src):
        from paddle_coopflow.evaluation import iter_samples, load_for_eval

        prefix = src[: -len(".pdparams")] if src.endswith(".pdparams") else src
        cfg, flow, ebm = load_for_eval(args.config, args.override, prefix)
        n, lg = args.num, cfg.Langevin
        s = lg.test_step_size if args.step_size is None else args.step_size
        seed = cfg.Global.seed if args.seed is None else args.seed
        idx = 0 if args.samples == "flow" else 1
        bs = args.sample_batch_size or cfg.Eval.sample_batch_size
        gen = Timed(b[idx] for b in iter_samples(flow, ebm, cfg, n, bs, seed, not args.no_progress, s))
        ev = evaluator_fn()
        mu, sigma = ev.stats(gen)
        what = "flow proposals" if idx == 0 else f"CoopFlow samples (T={lg.n_steps}, s={s}, no noise)"
        return mu, sigma, f"checkpoint {prefix}: {n} {what}, seed {seed}, float (not PNG-quantised)", n, gen.seconds
    if not os.path.exists(src):
        raise UserError(f"FID source '{src}' does not exist (folder, .npz/.npy, checkpoint prefix or data[:split])")
    if _is_stats_file(src):
        mu, sigma = stats_from_source(src)
        return mu, sigma, f"statistics file {src} ({len(mu)}-d)", None, (0.0, 0.0)
    if os.path.isdir(src):
        count = len(list_image_files(src)) if args.num_images is None else args.num_images
        desc = f"image folder {src} ({count} images)"
    else:
        x, _ = load_image_array(src)
        count = len(x) if args.num_images is None else args.num_images
        desc = f"image array {src} ({count} images, {x.dtype}, shape {list(x.shape[1:])})"
    mu, sigma = stats_from_source(src, evaluator_fn(), args.num_images)
    return mu, sigma, desc, count, (0.0, 0.0)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sources", nargs="+", metavar="SOURCE", help="two sources (one with --save-stats)")
    add_config_args(parser, required=False)
    parser.add_argument("--weights", default=None, help="Inception weights (default: Eval.inception_weights)")
    parser.add_argument("--random-init-inception", action="store_true",
                        help="random Inception weights: pipeline tests / timing only, NOT an FID")
    parser.add_argument("--num", type=int, default=50000, help="samples generated for a checkpoint source")
    parser.add_argument("--samples", choices=("coopflow", "flow"), default="coopflow",
                        help="which samples of a checkpoint source are scored")
    parser.add_argument("--num-images", type=int, default=None, help="use only the first N images of a folder/array")
    parser.add_argument("--ref-num", type=int, default=0, help="images of a data: source (default Eval.fid_ref_num)")
    parser.add_argument("--batch-size", type=int, default=0, help="Inception batch (default Eval.fid_batch_size)")
    parser.add_argument("--sample-batch-size", type=int, default=0, help="default Eval.sample_batch_size")
    parser.add_argument("--step-size", type=float, default=None, help="default Langevin.test_step_size")
    parser.add_argument("--seed", type=int, default=None, help="sampling seed (default Global.seed)")
    parser.add_argument("--save-stats", default=None, metavar="PATH", help="write the first source's mu/sigma")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    if len(args.sources) > 2 or (len(args.sources) == 1 and not args.save_stats):
        raise UserError("give two sources (or one source with --save-stats PATH)")

    from paddle_coopflow.metrics.fid import FIDEvaluator, frechet_distance, save_stats
    from paddle_coopflow.utils.env import setup_threads

    cfg0 = load_config(args.config, args.override) if args.config else None
    setup_threads(cfg0.Global.threads if cfg0 else 0)
    eval_cfg = cfg0.Eval if cfg0 else None
    weights = args.weights if args.weights is not None else (eval_cfg.inception_weights if eval_cfg else "")
    batch = args.batch_size or (eval_cfg.fid_batch_size if eval_cfg else 50)
    random_init = args.random_init_inception and not weights
    if weights and not os.path.isfile(weights):
        raise UserError(f"FID Inception weights '{weights}' do not exist: download "
                        "pt_inception-2015-12-05-6726825d.pth (pytorch-fid release) and pass --weights PATH, "
                        "or --random-init-inception for a pipeline check")
    box = {}

    def evaluator_fn():
        if "ev" not in box:
            box["ev"] = FIDEvaluator(weights or None, batch, random_init=random_init, progress=not args.no_progress)
        return box["ev"]

    if not all(_is_stats_file(s) for s in args.sources):
        evaluator_fn()  # a missing / unusable weights file is reported before any other work

    net = RANDOM_LABEL if random_init else f"pytorch-fid Inception-v3 weights {weights}"
    print(f"FID protocol: pool3 2048-d features of {net}; images bilinearly resized to 299x299 "
          "(align_corners=False), 1 channel repeated to 3; float64 mean/covariance (N-1); "
          "Frechet distance as pytorch-fid")
    results, t_feat, n_feat = [], (0.0, 0.0), 0
    for tag, src in zip("AB", args.sources):
        t0 = clock()
        mu, sigma, desc, count, t_gen = source_stats(src, args, evaluator_fn)
        dt = since(t0)
        dt = (dt[0] - t_gen[0], dt[1] - t_gen[1])
        if count and "ev" in box:
            t_feat, n_feat = (t_feat[0] + dt[0], t_feat[1] + dt[1]), n_feat + count
        gen = f"; generation {fmt(t_gen)}, {count / t_gen[0]:.2f} img/s" if t_gen[0] > 0 else ""
        print(f"  {tag}: {desc}  [features {fmt(dt)}{gen}]")
        results.append((mu, sigma))
    if args.save_stats:
        save_stats(args.save_stats, *results[0])
        print(f"saved statistics of {args.sources[0]} to {args.save_stats}")
    if n_feat:
        per = (1000 * t_feat[0] / n_feat, 1000 * t_feat[1] / n_feat)
        print(f"time: Inception features {fmt(t_feat)} for {n_feat} images = {fmt(per)} per 1,000 images "
              f"(batch {batch})")
    if len(results) == 2:
        t0 = clock()
        fid = frechet_distance(*results[0], *results[1])
        print(f"time: Frechet distance {fmt(since(t0))} (sqrtm of a {len(results[0][0])}-d matrix)")
        label = f"pseudo-FID with {RANDOM_LABEL}" if random_init else "FID"
        print(f"{label}: {fid:.6g}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
