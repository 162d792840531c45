"""Proxy FID and KID of generated images in the feature space of the bench's CIFAR-10 classifier.

    python bench/quality/score.py --features ~/.cache/paddle_coopflow/quality/features \\
        --test-dir CIFAR10_TEST --samples samples.npz --floor-dir CIFAR10_TRAIN --json-out q.json

Compares each image set with the --test-dir images (all of them, any folder layout of
32x32 images) and prints one row per set:
  samples  the generated images of --samples (.npz), under --key (default 'images'):
           uint8 [N, 32, 32, 3] (RGB, 0..255), or float [N, 3, 32, 32] in [-1, 1] (first
           rounded to uint8 as the package saves PNGs, so both forms give the same numbers)
  floor    real training images: the first --floor-per-class files of each class folder of
           --floor-dir (100 per class: 1,000 CIFAR-10 images); the best a generator can hope for
  noise    uniform noise images (uint8, as many as the test set, seeded): a reference point for
           "nothing like CIFAR-10" (not an upper bound: e.g. flat colours score worse)
FID is the Fréchet distance of the feature means/covariances (paddle_coopflow.metrics.fid);
KID the unbiased polynomial-kernel MMD² (paddle_coopflow.metrics.kid), printed x 1e3.
These are PROXY numbers: they rank models, they are not the paper's Inception FID.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Dict, Optional

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import paddle_coopflow  # noqa: E402,F401  (quiet paddle start-up)
from paddle_coopflow.cli import run_cli  # noqa: E402
from paddle_coopflow.errors import UserError  # noqa: E402

IMAGE_SHAPE_HWC = (32, 32, 3)


def load_feature_model(prefix: str):
    """paddle.jit.load the feature extractor saved at `prefix` (prefix.json/.pdmodel + .pdiparams)."""
    import paddle

    prefix = os.path.expanduser(prefix)
    if not any(os.path.isfile(prefix + s) for s in (".json", ".pdmodel")) or \
            not os.path.isfile(prefix + ".pdiparams"):
        raise UserError(f"no jit-saved feature model at '{prefix}' (expected {prefix}.json + "
                        f"{prefix}.pdiparams; make it with bench/quality/train_classifier.py)")
    model = paddle.jit.load(prefix)
    model.eval()
    return model


def check_uint8_images(images: np.ndarray, what: str) -> np.ndarray:
    """Validate uint8 [N, 32, 32, 3] images (N >= 2); returns them as a NumPy array."""
    x = np.asarray(images)
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[1:] != IMAGE_SHAPE_HWC or x.shape[0] < 2:
        raise UserError(f"{what}: expected uint8 images [N>=2, 32, 32, 3], got {x.dtype} {x.shape}")
    return x


def extract_features(model, images_u8: np.ndarray, batch_size: int = 250) -> np.ndarray:
    """Features of uint8 [N, 32, 32, 3] images -> float64 [N, D] (input x / 127.5 - 1, NCHW)."""
    import paddle

    from bench.quality.data import to_model_input

    out = []
    with paddle.no_grad():
        for i in range(0, len(images_u8), batch_size):
            out.append(model(paddle.to_tensor(to_model_input(images_u8[i:i + batch_size]))).numpy())
    return np.concatenate(out).astype(np.float64)


def compare_features(feats: np.ndarray, ref_feats: np.ndarray, kid_subset_size: int = 1000,
                     kid_subsets: int = 100, seed: int = 0) -> Dict[str, float]:
    """Proxy FID and KID between features [N, D] and reference features [M, D]."""
    from paddle_coopflow.metrics.fid import compute_stats, frechet_distance
    from paddle_coopflow.metrics.kid import kernel_inception_distance

    mu1, s1 = compute_stats(feats)
    mu2, s2 = compute_stats(ref_feats)
    kid, kid_std = kernel_inception_distance(feats, ref_feats, kid_subset_size, kid_subsets, seed)
    return {"fid": frechet_distance(mu1, s1, mu2, s2), "kid": kid, "kid_std": kid_std,
            "n": int(len(feats)), "n_ref": int(len(ref_feats)), "feat_dim": int(feats.shape[1])}


class ProxyScorer:
    """Holds the feature model and the reference features, to score many image sets cheaply.

    Args:
        features_prefix: path prefix of the jit-saved feature extractor.
        ref_images_u8: uint8 [M, 32, 32, 3] reference (real test) images.
        kid_subset_size, kid_subsets, seed: KID subsets (see metrics.kid).
        batch_size: images per feature forward pass.
    """

    def __init__(self, features_prefix: str, ref_images_u8: np.ndarray, kid_subset_size: int = 1000,
                 kid_subsets: int = 100, seed: int = 0, batch_size: int = 250):
        self.model = load_feature_model(features_prefix)
        self.batch_size = int(batch_size)
        self.kid_args = (int(kid_subset_size), int(kid_subsets), int(seed))
        self.ref_feats = self.features(check_uint8_images(ref_images_u8, "reference images"))

    def features(self, images_u8: np.ndarray) -> np.ndarray:
        """uint8 [N, 32, 32, 3] -> float64 [N, D]."""
        return extract_features(self.model, images_u8, self.batch_size)

    def score(self, images_u8: np.ndarray) -> Dict[str, float]:
        """{'fid', 'kid', 'kid_std', 'n', 'n_ref', 'feat_dim'} of uint8 [N, 32, 32, 3] images."""
        feats = self.features(check_uint8_images(images_u8, "images"))
        return compare_features(feats, self.ref_feats, *self.kid_args)


def score_images(features_prefix: str, images_uint8: np.ndarray, ref_images_uint8: np.ndarray,
                 **kwargs) -> Dict[str, float]:
    """Proxy FID/KID of uint8 [N, 32, 32, 3] images against uint8 [M, 32, 32, 3] reference images.

    Keyword arguments go to ProxyScorer (kid_subset_size, kid_subsets, seed, batch_size).
    Returns {'fid', 'kid', 'kid_std', 'n', 'n_ref', 'feat_dim'}.
    """
    return ProxyScorer(features_prefix, ref_images_uint8, **kwargs).score(images_uint8)


def load_samples(path: str, key: str = "images") -> np.ndarray:
    """Generated images of an .npz as uint8 [N, 32, 32, 3] (uint8 NHWC, or float NCHW in [-1, 1])."""
    from paddle_coopflow.evaluation import to_uint8_images

    if not os.path.isfile(path):
        raise UserError(f"samples file '{path}' does not exist")
    try:
        f = np.load(path)
    except (OSError, ValueError, EOFError) as e:
        raise UserError(f"cannot read '{path}' as an .npz: {e}") from None
    if not isinstance(f, np.lib.npyio.NpzFile):
        raise UserError(f"'{path}' is a single array, not an .npz with key '{key}'")
    with f:
        if key not in f:
            raise UserError(f"'{path}' has no key '{key}' (keys: {list(f.keys())}); pass --key")
        x = f[key]
    if x.dtype == np.uint8:
        return check_uint8_images(x, f"'{path}'[{key}]")
    if not np.issubdtype(x.dtype, np.floating) or x.ndim != 4 or x.shape[1:] != (3, 32, 32):
        raise UserError(f"'{path}'[{key}]: expected uint8 [N, 32, 32, 3] or float [N, 3, 32, 32], "
                        f"got {x.dtype} {x.shape}")
    lo, hi = float(np.min(x)), float(np.max(x))
    if not (np.isfinite(lo) and np.isfinite(hi)) or lo < -1.05 or hi > 1.05:
        raise UserError(f"'{path}'[{key}]: float images span [{lo:.3g}, {hi:.3g}], expected [-1, 1]")
    return check_uint8_images(to_uint8_images(x), f"'{path}'[{key}]")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--features", required=True, metavar="MODEL_PREFIX",
                   help="jit-saved feature extractor prefix (train_classifier.py's OUT/features)")
    p.add_argument("--test-dir", required=True, help="reference (real test) images, 32x32, any folder layout")
    p.add_argument("--samples", default="", metavar="FILE.npz",
                   help="generated images: uint8 [N, 32, 32, 3] or float [N, 3, 32, 32] in [-1, 1]")
    p.add_argument("--key", default="images", help="array key in --samples (default: %(default)s)")
    p.add_argument("--floor-dir", default="", metavar="TRAIN_DIR",
                   help="class-per-folder real training images for the floor row")
    p.add_argument("--floor-per-class", type=int, default=100, help="floor images per class (default 100)")
    p.add_argument("--noise-seed", type=int, default=0, help="seed of the uniform-noise row")
    p.add_argument("--kid-subset-size", type=int, default=1000)
    p.add_argument("--kid-subsets", type=int, default=100)
    p.add_argument("--threads", type=int, default=1, help="math threads (default 1)")
    p.add_argument("--json-out", default="", help="also write the rows as JSON here")
    args = p.parse_args(argv)
    if args.floor_per_class < 1 or args.threads < 1:
        raise UserError("--floor-per-class and --threads must be >= 1")
    return args


def load_folder_images(root: str, per_class: Optional[int] = None) -> np.ndarray:
    """uint8 [N, 32, 32, 3] of a folder: per class folder (first `per_class` each) or, when `root`
    has no class folders, all its images."""
    from bench.quality.data import decode_images, list_class_folder
    from paddle_coopflow.data.folder import list_images

    if not os.path.isdir(root):
        raise UserError(f"image directory '{root}' does not exist")
    if per_class is None:
        paths = list_images(root)
        if not paths:
            raise UserError(f"image directory '{root}' holds no images")
    else:
        paths = list_class_folder(root, per_class)[0]
    return decode_images(root, paths)


def score_sets(args: argparse.Namespace) -> Dict[str, Dict[str, float]]:
    """{row name: metrics} for the samples, floor and noise rows that the arguments ask for."""
    test = load_folder_images(args.test_dir)
    sets = {}
    if args.samples:
        sets["samples"] = load_samples(args.samples, args.key)
    if args.floor_dir:
        sets["floor"] = load_folder_images(args.floor_dir, args.floor_per_class)
    rng = np.random.RandomState(args.noise_seed)
    sets["noise"] = rng.randint(0, 256, size=(len(test), *IMAGE_SHAPE_HWC)).astype(np.uint8)
    scorer = ProxyScorer(args.features, test, args.kid_subset_size, args.kid_subsets)
    return {name: scorer.score(images) for name, images in sets.items()}


def format_table(rows: Dict[str, Dict[str, float]]) -> str:
    """Rows as a fixed-width text table (KID x 1e3)."""
    lines = [f"{'set':<8} {'N':>6} {'N_ref':>6} {'proxy FID':>10} {'KID x1e3':>10} {'± std':>8}"]
    for name, r in rows.items():
        lines.append(f"{name:<8} {r['n']:>6} {r['n_ref']:>6} {r['fid']:>10.3f} {1e3 * r['kid']:>10.3f} "
                     f"{1e3 * r['kid_std']:>8.3f}")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    from paddle_coopflow.utils.env import setup_threads

    setup_threads(args.threads)
    rows = score_sets(args)
    print(format_table(rows))
    if args.json_out:
        out = {"features": os.path.abspath(os.path.expanduser(args.features)), "test_dir": args.test_dir,
               "samples": args.samples, "key": args.key, "floor_dir": args.floor_dir,
               "floor_per_class": args.floor_per_class, "noise_seed": args.noise_seed,
               "kid_subset_size": args.kid_subset_size, "kid_subsets": args.kid_subsets, "rows": rows}
        os.makedirs(os.path.dirname(os.path.abspath(args.json_out)), exist_ok=True)
        with open(args.json_out, "w") as f:
            json.dump(out, f, indent=1)
    return 0


def cli(argv=None) -> int:
    """main() with user errors as one line on stderr and exit code 2 (the tools' run_cli)."""
    return run_cli(main, argv)


if __name__ == "__main__":
    sys.exit(cli())
