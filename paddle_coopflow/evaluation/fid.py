"""FID during training (the paper's Figure 12 curve) and the reference set it compares against.

:class:`InTrainingFID` is owned by its caller (the trainer, a tool, a test): it builds the feature
network once, on first use, and caches the reference statistics in the run directory. With
``Eval.feature_model`` set it scores a *proxy*: features of that network instead of Inception (no
resize to 299), logged as ``eval/proxy_fid`` together with the KID ``eval/proxy_kid``; otherwise it logs
``eval/fid_<N>``.

The reference set is ``Eval.fid_ref_stats`` when given (Inception only), else the first ``Eval.ref_num``
images, unflipped, of ``Eval.ref_root`` (a folder, e.g. a held-out test set) or of the Data split (as
the official code, which uses the training split).
"""
from __future__ import annotations

import json
import os
from types import SimpleNamespace
from typing import Dict, Optional

import numpy as np

from ..errors import UserError
from .generate import iter_samples

FID_SEED_OFFSET = 7919  # in-training FID samples use seed Global.seed + this, every epoch


def reference_images(cfg) -> np.ndarray:
    """uint8 [N, H, W, C]: the first Eval.ref_num images of Eval.ref_root, else of the Data split."""
    from ..data import load_images

    e, d = cfg.Eval, cfg.Data
    if e.ref_root:
        folder = SimpleNamespace(name="folder", root=e.ref_root, image_size=d.image_size, channels=d.channels,
                                 hflip=False)
        return load_images(folder, "all", n=e.ref_num)
    return load_images(d, d.split, n=e.ref_num)


def _reference_meta(cfg) -> str:
    e, d = cfg.Eval, cfg.Data
    net = (f"jit:{os.path.abspath(e.feature_model)}" if e.feature_model else
           os.path.abspath(e.inception_weights) if e.inception_weights else "")
    src = {"root": os.path.abspath(e.ref_root)} if e.ref_root else {"data": d.name, "root": d.root,
                                                                    "split": d.split}
    return json.dumps({**src, "size": d.image_size, "channels": d.channels, "num": e.ref_num, "net": net},
                      sort_keys=True)


def _cached(path: Optional[str], meta: str, keys) -> Optional[Dict[str, np.ndarray]]:
    if not path or not os.path.isfile(path):
        return None
    with np.load(path) as f:
        if "meta" in f and str(f["meta"]) == meta and all(k in f for k in keys):
            return {k: f[k].astype(np.float64) for k in keys}
    return None


def _store(path: Optional[str], meta: str, arrays: Dict[str, np.ndarray]) -> None:
    if not path:
        return
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + f".tmp{os.getpid()}.npz"
    np.savez(tmp, meta=np.array(meta), **arrays)
    os.replace(tmp, path)


def weights_hint(detail: str) -> str:
    """The one-line message for in-training FID without usable Inception weights."""
    from ..metrics.inception import FID_WEIGHTS_FILE, FID_WEIGHTS_URL

    return (f"in-training FID is on but {detail}: download {FID_WEIGHTS_FILE} from {FID_WEIGHTS_URL} and "
            f"set -o Eval.inception_weights=PATH, or use a proxy feature network with -o Eval.feature_model=PREFIX "
            f"(bench/quality/), or turn in-training FID off with -o Eval.fid_every_epochs=0 -o Eval.fid_every_iters=0")


class InTrainingFID:
    """FID (or the proxy FID and KID) of Eval.fid_num_samples CoopFlow samples against the reference set.

    Samples are drawn as :func:`~paddle_coopflow.evaluation.generate.iter_samples` draws them (eval mode,
    test step size, no noise) from the fixed seed Global.seed + FID_SEED_OFFSET, so a curve over epochs
    compares like with like. The caller restores its RNG state afterwards if it needs to.

    Args:
        cfg: the run's Config (Eval, Data, Langevin, Global sections).
        progress: show progress bars.
    """

    def __init__(self, cfg, progress: bool = False):
        self.cfg = cfg
        self.progress = progress
        self._evaluator = None

    @property
    def proxy(self) -> bool:
        """True when Eval.feature_model replaces Inception."""
        return bool(self.cfg.Eval.feature_model)

    @property
    def log_key(self) -> str:
        """The log name of the number :meth:`__call__` returns."""
        return "eval/proxy_fid" if self.proxy else f"eval/fid_{self.cfg.Eval.fid_num_samples}"

    def _weights_problem(self) -> Optional[str]:
        e = self.cfg.Eval
        if e.feature_model:
            return None
        if not e.inception_weights:
            return weights_hint("Eval.inception_weights is empty")
        if not os.path.isfile(e.inception_weights):
            return weights_hint(f"the Inception weights file '{e.inception_weights}' does not exist")
        return None

    def check(self) -> None:
        """Fail fast (before training) with a one-line UserError when the evaluation could not run.

        The Inception weights file is read and matched against the network here (a corrupt,
        refused or foreign file fails like a missing one); the network itself is built on first use.
        """
        e = self.cfg.Eval
        if not (e.fid_every_epochs or e.fid_every_iters):
            return
        problem = self._weights_problem()
        if problem:
            raise UserError(problem)
        if e.feature_model:
            if e.fid_ref_stats:
                raise UserError(f"Eval.fid_ref_stats='{e.fid_ref_stats}' holds Inception statistics but "
                                f"Eval.feature_model is set: leave Eval.fid_ref_stats empty")
            from ..metrics.fid import load_feature_model

            load_feature_model(e.feature_model)
        if e.fid_ref_stats and not os.path.isfile(e.fid_ref_stats):
            raise UserError(f"Eval.fid_ref_stats '{e.fid_ref_stats}' does not exist; make it with tools/eval.py "
                            "data:train --save-stats PATH -c CONFIG, or leave it empty to compute it")
        if e.ref_root and not os.path.isdir(e.ref_root):
            raise UserError(f"Eval.ref_root '{e.ref_root}' is not a folder of images")
        if not e.feature_model:  # read and match the weights now, not after the first epoch
            from ..metrics.inception import check_weight_file

            try:
                check_weight_file(e.inception_weights)
            except UserError as err:
                raise UserError(weights_hint(f"its weights file cannot be used ({err})")) from None

    def _build_evaluator(self):
        from ..metrics.fid import FIDEvaluator

        problem = self._weights_problem()
        if problem:
            raise UserError(problem)
        e = self.cfg.Eval
        return FIDEvaluator(e.inception_weights or None, e.fid_batch_size, feature_model=e.feature_model)

    @property
    def evaluator(self):
        """The feature network (a FIDEvaluator), built on first use and kept by this object."""
        if self._evaluator is None:
            self._evaluator = self._build_evaluator()
        return self._evaluator

    def reference(self, cache_dir: Optional[str] = None) -> Dict[str, np.ndarray]:
        """{'mu', 'sigma'} of the reference set (and 'feats' for the proxy), cached in `cache_dir`."""
        e = self.cfg.Eval
        if e.fid_ref_stats and not self.proxy:
            from ..metrics.fid import load_stats

            mu, sigma = load_stats(e.fid_ref_stats)
            return {"mu": mu, "sigma": sigma}
        meta = _reference_meta(self.cfg)
        keys = ("mu", "sigma", "feats") if self.proxy else ("mu", "sigma")
        name = "proxy_ref_features.npz" if self.proxy else "fid_ref_stats.npz"
        path = os.path.join(cache_dir, name) if cache_dir else None
        found = _cached(path, meta, keys)
        if found is not None:
            return found
        images = reference_images(self.cfg)
        out = self._stats(images)
        _store(path, meta, out)
        return out

    def _stats(self, images) -> Dict[str, np.ndarray]:
        ev = self.evaluator
        was, ev.progress = ev.progress, self.progress
        try:
            if not self.proxy:
                mu, sigma = ev.stats(images)
                return {"mu": mu, "sigma": sigma}
            from ..metrics.fid import compute_stats

            feats = ev.features(images)
            mu, sigma = compute_stats(feats)
            return {"mu": mu, "sigma": sigma, "feats": feats}
        finally:
            ev.progress = was

    def evaluate(self, flow, ebm, run_dir: Optional[str] = None) -> Dict[str, float]:
        """All the numbers, keyed by their log names: ``eval/fid_<N>``, or ``eval/proxy_fid`` and ``eval/proxy_kid``."""
        from ..metrics.fid import frechet_distance

        cfg = self.cfg
        ref = self.reference(run_dir)
        batches = (coop for _, coop in iter_samples(flow, ebm, cfg, cfg.Eval.fid_num_samples,
                                                    cfg.Eval.sample_batch_size,
                                                    seed=cfg.Global.seed + FID_SEED_OFFSET))
        gen = self._stats(batches)
        fid = frechet_distance(gen["mu"], gen["sigma"], ref["mu"], ref["sigma"])
        if not self.proxy:
            return {self.log_key: fid}
        from ..metrics.kid import kernel_inception_distance

        kid, _ = kernel_inception_distance(gen["feats"], ref["feats"])
        return {"eval/proxy_fid": fid, "eval/proxy_kid": kid}

    def __call__(self, flow, ebm, run_dir: Optional[str] = None) -> float:
        """The FID (or the proxy FID) of the nets' samples; `run_dir` caches the reference statistics."""
        return self.evaluate(flow, ebm, run_dir)[self.log_key]
