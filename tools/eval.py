"""FID between any two sources, with the protocol printed (or a proxy FID and KID with Eval.feature_model).

    python tools/eval.py SOURCE_A SOURCE_B [-c CONFIG] [-o ...] [--weights PTH] [--num N]
    python tools/eval.py data:train --save-stats ref_stats.npz -c CONFIG      # reference statistics only
    python tools/eval.py RUN/ckpt/best ref -o Eval.feature_model=PREFIX -o Eval.ref_root=TEST_FOLDER

A source is one of
    DIR                  an image folder (PNG/JPG, recursive), e.g. tools/sample.py's <out>/coopflow
    FILE.npz / .npy      images (key 'coopflow', 'images' or the first array; uint8, or float in [-1, 1])
    FILE.npz             FID statistics (keys mu, sigma; pytorch-fid's --save-stats format)
    PREFIX               a checkpoint (PREFIX.pdparams exists): --num samples are generated (default 50,000)
                         with T = Langevin.n_steps and s = Langevin.test_step_size (set them with -o)
    data[:SPLIT]         the config's dataset (Data section; default split Data.split), --ref-num images
    ref                  the in-training reference set: Eval.ref_root if set, else the Data split; Eval.ref_num
Config: -c CONFIG, else the one stored in a checkpoint source, else the defaults; -o overrides any of them.
Features: the FID Inception-v3 with --weights, else Eval.inception_weights (pytorch-fid's
pt_inception-2015-12-05-6726825d.pth or a converted .pdparams); nothing is downloaded.
With Eval.feature_model=PREFIX (a paddle.jit.save'd extractor) the features are that network's, at the
images' own size, and the tool prints a proxy FID and a KID (not comparable with published FIDs).
--random-init-inception runs the pipeline with random weights, for tests and timing only: the number
printed is then NOT an FID.
"""
import argparse
import os
import sys
import time

import _bootstrap  # noqa: F401  (repo root on sys.path)

import paddle_coopflow  # noqa: F401  (quietens paddle before it is imported)
from paddle_coopflow.cli import add_config_args, config_for, load_model, run_cli, setup_process
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


def measure(ev, images, keep: bool, value_range=None) -> dict:
    """{'mu', 'sigma'} of the images' features, plus 'feats' [N, D] when `keep` (for KID)."""
    from paddle_coopflow.metrics.fid import compute_stats

    if not keep:
        mu, sigma = ev.stats(images, value_range)
        return {"mu": mu, "sigma": sigma}
    feats = ev.features(images, value_range)
    mu, sigma = compute_stats(feats)
    return {"mu": mu, "sigma": sigma, "feats": feats}


def dataset_source(src: str, args, cfg, ev) -> tuple:
    """(result, description, count) of a ``data[:SPLIT]`` or ``ref`` source."""
    from paddle_coopflow.data import load_images
    from paddle_coopflow.evaluation import reference_images

    if src == "ref":
        images = reference_images(cfg)
        where = f"folder {cfg.Eval.ref_root}" if cfg.Eval.ref_root else f"{cfg.Data.name} split '{cfg.Data.split}'"
        desc = f"reference set: {where}, first {len(images)} images, unflipped"
    else:
        split = src.split(":", 1)[1] if ":" in src else cfg.Data.split
        images = load_images(cfg.Data, split, n=args.ref_num or cfg.Eval.ref_num)
        desc = f"dataset {cfg.Data.name} split '{split}', first {len(images)} images, unflipped"
    return measure(ev, images, args.keep), desc, len(images)


def checkpoint_source(src: str, args, ev) -> tuple:
    """(result, description, count, generation seconds) of a checkpoint source."""
    from paddle_coopflow.evaluation import iter_samples

    prefix = src[: -len(".pdparams")] if src.endswith(".pdparams") else src
    cfg, flow, ebm = load_model(args.config, args.override, prefix)
    n, lg = args.num, cfg.Langevin
    seed = cfg.Global.seed if args.seed is None else args.seed
    idx = 0 if args.samples == "flow" else 1
    bs = args.sample_batch_size or cfg.Eval.sample_batch_size
    gen = Timed(b[idx] for b in iter_samples(flow, ebm, cfg, n, bs, seed, not args.no_progress))
    res = measure(ev, gen, args.keep)
    what = "flow proposals" if idx == 0 else f"CoopFlow samples (T={lg.n_steps}, s={lg.test_step_size}, no noise)"
    return res, f"checkpoint {prefix}: {n} {what}, seed {seed}, float (not PNG-quantised)", n, gen.seconds


def file_source(src: str, args, ev) -> tuple:
    """(result, description, count) of an image folder, an image array or a statistics file."""
    from paddle_coopflow.metrics.fid import iter_image_folder, list_image_files, load_image_array, load_stats

    if not os.path.exists(src):
        raise UserError(f"FID source '{src}' does not exist (folder, .npz/.npy, checkpoint prefix, data[:split] "
                        "or ref)")
    if _is_stats_file(src):
        if args.keep:
            raise UserError(f"'{src}' holds statistics only; the proxy FID/KID needs images (Eval.feature_model)")
        mu, sigma = load_stats(src)
        return {"mu": mu, "sigma": sigma}, f"statistics file {src} ({len(mu)}-d)", None
    num = args.num_images
    if os.path.isdir(src):
        files = list_image_files(src)
        count = len(files) if num is None else num
        res = measure(ev(), iter_image_folder(src, ev().batch_size, num), args.keep)
        return res, f"image folder {src} ({count} images)", count
    if not src.endswith((".npz", ".npy")):
        raise UserError(f"FID source '{src}': unsupported file type (use a folder, .npz or .npy)")
    x, value_range = load_image_array(src)
    if num is not None and num > len(x):
        raise UserError(f"asked for {num} images but '{src}' has only {len(x)}")
    x = x if num is None else x[:num]
    desc = f"image array {src} ({len(x)} images, {x.dtype}, shape {list(x.shape[1:])})"
    return measure(ev(), x, args.keep, value_range), desc, len(x)


def source_stats(src: str, args, cfg, ev) -> tuple:
    """(result dict, description, image count or None, (wall, CPU) seconds generating)."""
    if src == "ref" or src == "data" or src.startswith("data:"):
        if cfg is None:
            raise UserError(f"source '{src}' needs the config: pass -c CONFIG")
        return dataset_source(src, args, cfg, ev()) + ((0.0, 0.0),)
    if _is_checkpoint(src):
        return checkpoint_source(src, args, ev())
    return file_source(src, args, ev) + ((0.0, 0.0),)


def parse_args(argv):
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
    parser.add_argument("--ref-num", type=int, default=0, help="images of a data: source (default Eval.ref_num)")
    parser.add_argument("--batch-size", type=int, default=0, help="feature batch (default Eval.fid_batch_size)")
    parser.add_argument("--sample-batch-size", type=int, default=0, help="default Eval.sample_batch_size")
    parser.add_argument("--seed", type=int, default=None, help="sampling seed (default Global.seed)")
    parser.add_argument("--save-stats", default=None, metavar="PATH", help="write the first source's mu/sigma")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    if len(args.sources) > 2 or (len(args.sources) == 1 and not args.save_stats):
        raise UserError("give two sources (or one source with --save-stats PATH)")
    return args


def tool_config(args):
    """-c CONFIG, else the config stored in a checkpoint source, else the defaults when -o is given."""
    if args.config:
        return config_for(args.config, args.override)
    ckpt = next((s for s in args.sources if _is_checkpoint(s)), None)
    if ckpt:
        return config_for(None, args.override, ckpt[: -len(".pdparams")] if ckpt.endswith(".pdparams") else ckpt)
    return config_for(None, args.override, None) if args.override else None


def make_evaluator_fn(args, cfg):
    """(lazy evaluator factory, description of the features, random_init)."""
    from paddle_coopflow.metrics.fid import FIDEvaluator

    e = cfg.Eval if cfg else None
    feature_model = e.feature_model if e else ""
    weights = args.weights if args.weights is not None else (e.inception_weights if e else "")
    random_init = args.random_init_inception and not weights and not feature_model
    if weights and not feature_model and not os.path.isfile(weights):
        raise UserError(f"FID Inception weights '{weights}' do not exist: download "
                        "pt_inception-2015-12-05-6726825d.pth (pytorch-fid release) and pass --weights PATH, "
                        "or --random-init-inception for a pipeline check")
    batch = args.batch_size or (e.fid_batch_size if e else 50)
    box = {}

    def evaluator_fn():
        if "ev" not in box:
            box["ev"] = FIDEvaluator(weights or None, batch, random_init=random_init,
                                     progress=not args.no_progress, feature_model=feature_model)
        return box["ev"]

    net = (f"the feature model {feature_model} (a proxy: NOT comparable with published FIDs)" if feature_model
           else RANDOM_LABEL if random_init else f"pytorch-fid Inception-v3 weights {weights}")
    return evaluator_fn, net, random_init


def report(results, args, random_init: bool, proxy: bool) -> None:
    """Print the distance(s) between the two sources."""
    from paddle_coopflow.metrics.fid import frechet_distance

    t0 = clock()
    a, b = results
    fid = frechet_distance(a["mu"], a["sigma"], b["mu"], b["sigma"])
    print(f"time: Frechet distance {fmt(since(t0))} (sqrtm of a {len(a['mu'])}-d matrix)")
    if proxy:
        from paddle_coopflow.metrics.kid import kernel_inception_distance

        kid, kid_std = kernel_inception_distance(a["feats"], b["feats"])
        print(f"proxy KID: {kid:.6g} (std over subsets {kid_std:.3g})")
        print(f"proxy FID: {fid:.6g}")
        return
    label = f"pseudo-FID with {RANDOM_LABEL}" if random_init else "FID"
    print(f"{label}: {fid:.6g}")


def main(argv=None):
    args = parse_args(argv)
    cfg = tool_config(args)
    if cfg is not None:
        setup_process(cfg)
    else:
        from paddle_coopflow.utils.env import setup_threads

        setup_threads(0)
    evaluator_fn, net, random_init = make_evaluator_fn(args, cfg)
    args.keep = bool(cfg and cfg.Eval.feature_model)
    if not all(_is_stats_file(s) for s in args.sources):
        evaluator_fn()  # a missing / unusable network is reported before any other work
    resize = "at the images' own size" if args.keep else "bilinearly resized to 299x299 (align_corners=False)"
    print(f"FID protocol: features of {net}; images {resize}, 1 channel repeated to 3; float64 mean/covariance "
          "(N-1); Frechet distance as pytorch-fid")
    results, t_feat, n_feat = [], (0.0, 0.0), 0
    for tag, src in zip("AB", args.sources):
        t0 = clock()
        res, desc, count, t_gen = source_stats(src, args, cfg, evaluator_fn)
        dt = since(t0)
        dt = (dt[0] - t_gen[0], dt[1] - t_gen[1])
        if count:
            t_feat, n_feat = (t_feat[0] + dt[0], t_feat[1] + dt[1]), n_feat + count
        gen = f"; generation {fmt(t_gen)}, {count / t_gen[0]:.2f} img/s" if t_gen[0] > 0 else ""
        print(f"  {tag}: {desc}  [features {fmt(dt)}{gen}]")
        results.append(res)
    if args.save_stats:
        from paddle_coopflow.metrics.fid import save_stats

        save_stats(args.save_stats, results[0]["mu"], results[0]["sigma"])
        print(f"saved statistics of {args.sources[0]} to {args.save_stats}")
    if n_feat:
        per = (1000 * t_feat[0] / n_feat, 1000 * t_feat[1] / n_feat)
        print(f"time: features {fmt(t_feat)} for {n_feat} images = {fmt(per)} per 1,000 images")
    if len(results) == 2:
        report(results, args, random_init, args.keep)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
