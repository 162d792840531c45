"""Fréchet Inception Distance, computed the way pytorch-fid computes it.

Protocol (pytorch-fid's, which the paper's FIDs follow): pool3 features of the FID
Inception-v3 (metrics/inception.py) for every image, mu = mean, sigma = covariance
(float64, np.cov rowvar=False convention: divides by N-1), and

    FID = |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr(sqrtm(S1 S2)).

`FIDEvaluator(feature_model=PREFIX)` swaps Inception for any `paddle.jit.save`d feature
extractor (a proxy: its numbers are not FIDs and are labelled so by the callers).
The matrix algebra is NumPy/SciPy on purpose: paddle.linalg has no sqrtm and its
eigen-solvers are much slower on CPU (docs/paddle_notes.md, "Slow paddle.linalg eigen-solvers").
Stats files are .npz with keys `mu` and `sigma`, the same as pytorch-fid's
`--save-stats` output, so both tools can read each other's files.
"""
from __future__ import annotations

import os
import warnings
from typing import Iterable, Iterator, Optional, Tuple, Union

import numpy as np
import scipy
import scipy.linalg

from paddle_coopflow.errors import UserError

Stats = Tuple[np.ndarray, np.ndarray]
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
_IMAGE_KEYS = ("coopflow", "images")


# --------------------------------------------------------------------------- distance
def _sqrtm(a: np.ndarray) -> np.ndarray:
    # SciPy >= 1.16 deprecates `disp` (pytorch-fid passes disp=False only to silence
    # printing); the returned root is the same either way.
    major, minor = (int(v) for v in scipy.__version__.split(".")[:2])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
        if (major, minor) >= (1, 16):
            return scipy.linalg.sqrtm(a)
        return scipy.linalg.sqrtm(a, disp=False)[0]


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray,
                     sigma2: np.ndarray, eps: float = 1e-6) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2), as pytorch-fid.

    Args:
        mu1, mu2: [D] means.  sigma1, sigma2: [D, D] covariances.
        eps: diagonal offset used only when sqrtm(S1 S2) is not finite.
    Raises:
        ValueError: shapes differ, or sqrtm has a significant imaginary part.
    """
    mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
    sigma1 = np.atleast_2d(sigma1).astype(np.float64)
    sigma2 = np.atleast_2d(sigma2).astype(np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise ValueError(f"FID statistics have different shapes: mu {mu1.shape} vs "
                         f"{mu2.shape}, sigma {sigma1.shape} vs {sigma2.shape}")
    diff = mu1 - mu2
    covmean = _sqrtm(sigma1.dot(sigma2))
    if not np.isfinite(covmean).all():
        warnings.warn(f"fid: sqrtm(S1 S2) not finite (singular product); adding {eps} "
                      "to the covariance diagonals")
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = _sqrtm((sigma1 + offset).dot(sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"fid: sqrtm has imaginary component {np.max(np.abs(covmean.imag))}")
        covmean = covmean.real
    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


# --------------------------------------------------------------------------- statistics
def compute_stats(features: np.ndarray) -> Stats:
    """features: [N, D] -> (mu [D], sigma [D, D]) in float64 (np.cov, rowvar=False)."""
    feats = np.asarray(features, dtype=np.float64)
    if feats.ndim != 2 or feats.shape[0] < 2:
        raise UserError(f"FID statistics need at least 2 feature rows, got shape {feats.shape}")
    return feats.mean(axis=0), np.cov(feats, rowvar=False)


class StatsAccumulator:
    """Streaming mean/covariance over feature batches (float64).

    Keeps D + D*D sums instead of all N x 2048 features (50k images would need
    800 MB). Sums are taken around a shift (the first batch's mean) so the
    one-pass formula does not lose digits; the result equals np.cov to ~1e-12.
    """

    def __init__(self):
        self.n = 0
        self._shift = self._sum = self._outer = None

    def update(self, feats: np.ndarray) -> None:
        """feats: [B, D]."""
        x = np.asarray(feats, dtype=np.float64)
        if self._shift is None:
            self._shift = x.mean(axis=0)
            self._sum = np.zeros_like(self._shift)
            self._outer = np.zeros((x.shape[1], x.shape[1]))
        x = x - self._shift
        self.n += x.shape[0]
        self._sum += x.sum(axis=0)
        self._outer += x.T @ x

    def stats(self) -> Stats:
        if self.n < 2:
            raise UserError(f"FID statistics need at least 2 images, got {self.n}")
        m = self._sum / self.n
        sigma = (self._outer - self.n * np.outer(m, m)) / (self.n - 1)
        return self._shift + m, (sigma + sigma.T) / 2  # exact symmetry like np.cov


def save_stats(path: str, mu: np.ndarray, sigma: np.ndarray) -> None:
    """Write pytorch-fid compatible stats: .npz with keys `mu` [D] and `sigma` [D, D]."""
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    np.savez_compressed(path, mu=np.asarray(mu, np.float64), sigma=np.asarray(sigma, np.float64))


def load_stats(path: str) -> Stats:
    """Read (mu, sigma) from an .npz with keys `mu` and `sigma` (ours or pytorch-fid's)."""
    if not os.path.isfile(path):
        raise UserError(f"FID stats file '{path}' does not exist")
    with np.load(path) as f:
        if "mu" not in f or "sigma" not in f:
            raise UserError(f"'{path}' has keys {list(f.keys())}; FID stats need 'mu' and 'sigma'")
        return f["mu"][:].astype(np.float64), f["sigma"][:].astype(np.float64)


# --------------------------------------------------------------------------- images
def _batch_to_nchw(images, value_range) -> Tuple[np.ndarray, Tuple[float, float]]:
    """Any supported batch -> float32 [B, 3, H, W] and its value range."""
    if hasattr(images, "numpy") and not isinstance(images, np.ndarray):
        images = images.numpy()  # paddle.Tensor
    x = np.asarray(images)
    if x.ndim == 3:  # [B, H, W] grey
        x = x[:, None] if x.dtype != np.uint8 else x[..., None]
    if x.ndim != 4:
        raise UserError(f"FID images must be [N, C, H, W] or [N, H, W, C], got shape {x.shape}")
    if value_range is None:
        value_range = (0, 255) if x.dtype == np.uint8 else (-1, 1)
    # Documented layouts: uint8 NHWC, float NCHW; the other one is recognised if unambiguous.
    nhwc = x.shape[-1] in (1, 3) and (x.dtype == np.uint8 or x.shape[1] not in (1, 3))
    if nhwc:
        x = x.transpose(0, 3, 1, 2)
    if x.shape[1] not in (1, 3):
        raise UserError(f"FID images need 1 or 3 channels, got shape {x.shape}")
    x = x.astype(np.float32)
    if x.shape[1] == 1:
        x = np.repeat(x, 3, axis=1)
    return x, tuple(value_range)


def load_feature_model(prefix: str):
    """A `paddle.jit.save`d feature extractor from `prefix` (Eval.feature_model), in eval mode."""
    import paddle

    have = [prefix + suf for suf in (".json", ".pdmodel") if os.path.isfile(prefix + suf)]
    if not have or not os.path.isfile(prefix + ".pdiparams"):
        raise UserError(f"feature model '{prefix}' not found: expected {prefix}.json (or .pdmodel) and "
                        f"{prefix}.pdiparams written by paddle.jit.save; set Eval.feature_model=PREFIX")
    info = prefix + ".pdiparams.info"
    if os.path.isfile(info):  # paddle.jit.load unpickles it without restriction: it must pass the allow-list first
        from paddle_coopflow.utils import safe_pickle

        try:
            with open(info, "rb") as fh:
                safe_pickle.load(fh)
        except Exception as err:
            raise UserError(f"feature model file '{info}' refused, nothing in it was run: "
                            f"{' '.join(str(err).split())[:300]}") from None
    try:
        net = paddle.jit.load(prefix)
    except Exception as err:  # a truncated or foreign file: Paddle raises many kinds
        raise UserError(f"cannot load feature model '{prefix}': {type(err).__name__}: "
                        f"{' '.join(str(err).split())[:300]}") from None
    net.eval()
    return net


class FIDEvaluator:
    """Features, statistics and FID for images in memory, on disk or streamed.

    Args:
        weights: pytorch-fid's pt_inception-2015-12-05-6726825d.pth or a converted
            .pdparams (Eval.inception_weights).
        batch_size: images per network forward pass.
        random_init: random Inception weights, for pipeline tests and timing ONLY —
            the resulting numbers are not FIDs.
        progress: show a tqdm bar while extracting features.
        feature_model: prefix of a `paddle.jit.save`d extractor (input float32
            [N, 3, H, W] in [-1, 1], output [N, D]; Eval.feature_model) used instead of
            Inception, at the images' own size (no resize to 299).
    """

    def __init__(self, weights: Optional[str] = None, batch_size: int = 50,
                 random_init: bool = False, progress: bool = False, feature_model: str = ""):
        if batch_size < 1:
            raise UserError(f"FID batch_size must be >= 1, got {batch_size}")
        self.feature_model = feature_model or ""
        if self.feature_model:
            self.net = load_feature_model(self.feature_model)
        else:
            from paddle_coopflow.metrics.inception import build_fid_inception

            self.net = build_fid_inception(weights, random_init=random_init)
        self.batch_size = int(batch_size)
        self.random_init = bool(random_init) and not weights and not self.feature_model
        self.progress = progress
        if self.random_init:
            warnings.warn("FIDEvaluator(random_init=True): random Inception weights, the "
                          "values are NOT FIDs (pipeline tests / timing only)")

    def _forward(self, x: np.ndarray, value_range) -> np.ndarray:
        import paddle

        lo, hi = value_range
        with paddle.no_grad():
            t = paddle.to_tensor(x)
            if self.feature_model:
                out = self.net(t if (lo, hi) == (-1, 1) else (t - lo) * (2.0 / float(hi - lo)) - 1.0)
            elif (lo, hi) == (-1, 1):
                out = self.net(t)
            else:  # to [0, 1], then pytorch-fid's own resize-then-2x-1 path
                out = self.net.forward_unit((t - lo) / float(hi - lo))
        out = out[0] if isinstance(out, (list, tuple)) else out
        if len(out.shape) != 2:
            raise UserError(f"feature model '{self.feature_model}' returned shape {list(out.shape)}; "
                            "expected [N, D]")
        return out.numpy().astype(np.float64)

    def features(self, images, value_range: Optional[Tuple[float, float]] = None) -> np.ndarray:
        """Features of an image array/tensor or of an iterable of batches.

        Args:
            images: numpy array or paddle.Tensor, float [N, C, H, W] in [-1, 1], or uint8
                [N, H, W, C]; C = 1 is repeated to 3. Or an iterable of such batches.
            value_range: override the range, e.g. (0, 1) for float images in [0, 1].
        Returns:
            [N, D] float64 (D = 2048 for Inception).
        """
        if isinstance(images, np.ndarray) or hasattr(images, "numpy"):
            images = [images]
        feats = list(self._iter_features(images, value_range))
        if not feats:
            raise UserError("FIDEvaluator.features: no images given")
        return np.concatenate(feats, axis=0)

    def _iter_features(self, batches: Iterable, value_range) -> Iterator[np.ndarray]:
        bar = None
        if self.progress:
            from tqdm import tqdm
            bar = tqdm(unit="img", desc="FID features")
        for batch in batches:
            if not hasattr(batch, "shape"):
                batch = np.asarray(batch)
            # Convert per chunk: a 50k-image uint8 array stays uint8 until it is used.
            for i in range(0, int(batch.shape[0]), self.batch_size):
                x, vr = _batch_to_nchw(batch[i:i + self.batch_size], value_range)
                yield self._forward(x, vr)
                if bar is not None:
                    bar.update(x.shape[0])
        if bar is not None:
            bar.close()

    def stats(self, images, value_range: Optional[Tuple[float, float]] = None) -> Stats:
        """(mu [2048], sigma [2048, 2048]) of an image array/tensor or an iterable of batches."""
        if isinstance(images, np.ndarray) or hasattr(images, "numpy"):
            images = [images]
        acc = StatsAccumulator()
        for f in self._iter_features(images, value_range):
            acc.update(f)
        return acc.stats()

    def fid(self, stats_a: Union[Stats, str], stats_b: Union[Stats, str]) -> float:
        """FID between two (mu, sigma) pairs or stats .npz paths."""
        a = load_stats(stats_a) if isinstance(stats_a, str) else stats_a
        b = load_stats(stats_b) if isinstance(stats_b, str) else stats_b
        return frechet_distance(a[0], a[1], b[0], b[1])


# --------------------------------------------------------------------------- sources
def list_image_files(folder: str) -> list:
    """Image files under `folder` (recursive, sorted; PNG/JPG/...)."""
    out = []
    for root, _dirs, files in os.walk(folder):
        out += [os.path.join(root, f) for f in files if f.lower().endswith(IMAGE_EXTENSIONS)]
    return sorted(out)


def iter_image_folder(folder: str, batch_size: int = 50, num: Optional[int] = None
                      ) -> Iterator[np.ndarray]:
    """uint8 [B, H, W, 3] batches from an image folder (RGB, like pytorch-fid's loader).

    A batch is cut early when the image size changes, so mixed sizes work. 16-bit grey
    images are scaled to 8 bits; a file that does not decode raises a one-line
    DatasetError naming it.
    """
    from paddle_coopflow.data.folder import open_image
    from paddle_coopflow.data.transforms import to_8bit

    files = _take(list_image_files(folder), num, f"folder '{folder}'")
    batch = []
    for path in files:
        with open(path, "rb") as fh:
            arr = np.asarray(to_8bit(open_image(fh, path)).convert("RGB"))
        if batch and arr.shape != batch[0].shape:
            yield np.stack(batch)
            batch = []
        batch.append(arr)
        if len(batch) == batch_size:
            yield np.stack(batch)
            batch = []
    if batch:
        yield np.stack(batch)


def load_image_array(path: str) -> Tuple[np.ndarray, Tuple[float, float]]:
    """Images from an .npz (key 'coopflow', 'images' or the first array) or .npy.

    Returns the array and its value range: uint8 -> (0, 255); float -> (-1, 1), or
    (0, 1) when no value is negative (ambiguous sets are reported).
    """
    if path.endswith(".npy"):
        x = np.load(path)
    else:
        with np.load(path) as f:
            keys = list(f.keys())
            if not keys:
                raise UserError(f"'{path}' holds no arrays")
            key = next((k for k in _IMAGE_KEYS if k in keys), keys[0])
            x = f[key]
    if x.dtype == np.uint8:
        return x, (0, 255)
    if not np.issubdtype(x.dtype, np.floating):
        raise UserError(f"images in '{path}' have dtype {x.dtype}; expected uint8 or float")
    lo, hi = float(x.min()), float(x.max())
    if lo < -1.05 or hi > 1.05:
        raise UserError(f"float images in '{path}' span [{lo:.3g}, {hi:.3g}]; expected [-1, 1] "
                        "(or [0, 1]); save 0..255 data as uint8")
    if lo >= 0.0:
        warnings.warn(f"images in '{path}' have no negative values: treating them as [0, 1]")
        return x, (0, 1)
    return x, (-1, 1)


def _take(items, num: Optional[int], what: str):
    if num is not None and num > len(items):
        raise UserError(f"asked for {num} images but {what} has only {len(items)}")
    return items if num is None else items[:num]


def stats_from_source(path: str, evaluator: Optional[FIDEvaluator] = None,
                      num: Optional[int] = None) -> Stats:
    """(mu, sigma) from an image folder, an .npz/.npy of images, or a stats .npz.

    Args:
        path: folder (PNG/JPG, recursive) | .npz with 'mu'/'sigma' (read as is; `num`
            and `evaluator` unused) | .npz/.npy of images (uint8 or float [-1, 1]).
        evaluator: needed unless `path` is a stats file.
        num: use only the first `num` images (error if fewer exist).
    """
    if not os.path.exists(path):
        raise UserError(f"FID source '{path}' does not exist (expected an image folder, "
                        "an .npz of images or an .npz with mu/sigma)")
    if os.path.isfile(path) and path.endswith(".npz"):
        with np.load(path) as f:
            is_stats = "mu" in f and "sigma" in f
        if is_stats:
            return load_stats(path)
    if evaluator is None:
        raise UserError(f"'{path}' holds images: an FIDEvaluator (Inception weights) is needed")
    if os.path.isdir(path):
        batches = iter_image_folder(path, evaluator.batch_size, num)
        return evaluator.stats(batches)
    if path.endswith((".npz", ".npy")):
        x, value_range = load_image_array(path)
        return evaluator.stats(_take(x, num, f"'{path}'"), value_range=value_range)
    raise UserError(f"FID source '{path}': unsupported file type (use a folder, .npz or .npy)")
