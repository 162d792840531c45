"""Distances between two point sets (2-D toy experiment): MMD² and sliced Wasserstein. float64 NumPy.

MMD² (Gretton et al. 2012, unbiased estimator, their eq. 3) with the kernel

    k(x, y) = Σ_b exp(−‖x − y‖² / (2 b²)),   b ∈ bandwidths

(a sum of Gaussian kernels, so one number covers several length scales):

    MMD²_u = 1/(n(n−1)) Σ_{i≠j} k(x_i, x_j) + 1/(m(m−1)) Σ_{i≠j} k(y_i, y_j) − 2/(nm) Σ_{i,j} k(x_i, y_j).

Unbiased means it can be slightly negative when the two sets come from the same distribution.

Sliced Wasserstein-2 (Rabin et al. 2011):

    SW₂(X, Y) = sqrt( mean_ℓ W₂²(⟨θ_ℓ, X⟩, ⟨θ_ℓ, Y⟩) ),   θ_ℓ uniform on the unit sphere,

where the 1-D W₂² between two empirical measures is the mean squared difference of their
quantile functions, evaluated at the midpoints (i + ½)/q of q = max(n, m) levels (exact sorted
matching when n = m). For a pure shift Y = X + v in d dimensions, SW₂² → ‖v‖²/d.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

__all__ = ["mmd2_unbiased", "sliced_wasserstein", "sample_distance"]


def _as_points(a, name: str) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    if a.ndim == 1:
        a = a[:, None]
    if a.ndim != 2 or a.shape[0] < 2:
        raise ValueError(f"{name} must be [N, D] with N >= 2, got shape {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError(f"{name} contains NaN or Inf")
    return a


def _sq_dists(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """‖a_i − b_j‖² [n, m], clipped at 0 (the expanded form can round slightly negative)."""
    d = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
    return np.maximum(d, 0.0)


def _kernel_sum(d2: np.ndarray, bandwidths: Sequence[float]) -> np.ndarray:
    out = np.zeros_like(d2)
    for b in bandwidths:
        out += np.exp(-d2 / (2.0 * float(b) ** 2))
    return out


def mmd2_unbiased(x, y, bandwidths: Sequence[float] = (0.05, 0.1, 0.2, 0.5, 1.0)) -> float:
    """Unbiased MMD² between point sets x [n, D] and y [m, D] with the summed Gaussian kernel.

    Memory is O(n² + m² + nm) float64: 2,000 points per set take ~100 MB peak.
    """
    x, y = _as_points(x, "x"), _as_points(y, "y")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"x and y have different dimensions: {x.shape[1]} vs {y.shape[1]}")
    if not bandwidths or any(float(b) <= 0 for b in bandwidths):
        raise ValueError(f"MMD bandwidths must be a non-empty list of positive numbers, got {list(bandwidths)}")
    n, m = x.shape[0], y.shape[0]
    kxx = _kernel_sum(_sq_dists(x, x), bandwidths)
    kyy = _kernel_sum(_sq_dists(y, y), bandwidths)
    kxy = _kernel_sum(_sq_dists(x, y), bandwidths)
    sxx = (kxx.sum() - np.trace(kxx)) / (n * (n - 1))
    syy = (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
    return float(sxx + syy - 2.0 * kxy.mean())


def _quantiles(sorted_proj: np.ndarray, q: int) -> np.ndarray:
    """Empirical quantile function of each column at the midpoints (i + ½)/q. [n, L] → [q, L]."""
    n = sorted_proj.shape[0]
    idx = np.floor((np.arange(q) + 0.5) / q * n).astype(np.int64)
    return sorted_proj[np.minimum(idx, n - 1)]


def sliced_wasserstein(x, y, n_projections: int = 256, seed: int = 0,
                       directions: Optional[np.ndarray] = None) -> float:
    """SW₂ between point sets x [n, D] and y [m, D] (see module docstring).

    Args:
        n_projections: number of random directions (ignored when `directions` is given).
        seed: seed of the direction draw, so repeated calls compare like with like.
        directions: optional [L, D] directions (normalised here).
    """
    x, y = _as_points(x, "x"), _as_points(y, "y")
    d = x.shape[1]
    if d != y.shape[1]:
        raise ValueError(f"x and y have different dimensions: {d} vs {y.shape[1]}")
    if directions is None:
        if n_projections < 1:
            raise ValueError(f"n_projections must be >= 1, got {n_projections}")
        directions = np.random.default_rng(seed).standard_normal((n_projections, d))
    theta = np.asarray(directions, dtype=np.float64).reshape(-1, d)
    theta = theta / np.linalg.norm(theta, axis=1, keepdims=True)
    q = max(x.shape[0], y.shape[0])
    px = _quantiles(np.sort(x @ theta.T, axis=0), q)
    py = _quantiles(np.sort(y @ theta.T, axis=0), q)
    return float(np.sqrt(((px - py) ** 2).mean()))


def sample_distance(metric: str, x, y, bandwidths: Sequence[float] = (0.05, 0.1, 0.2, 0.5, 1.0),
                    max_points: Optional[int] = None, seed: int = 0) -> float:
    """Toy.metric dispatcher: 'mmd' → MMD²_u, 'swd' → SW₂; lower is closer.

    Args:
        max_points: if given, each set is subsampled (without replacement, seeded) to this size.
    """
    x, y = _as_points(x, "x"), _as_points(y, "y")
    if max_points is not None:
        rng = np.random.default_rng(seed)
        if x.shape[0] > max_points:
            x = x[rng.choice(x.shape[0], max_points, replace=False)]
        if y.shape[0] > max_points:
            y = y[rng.choice(y.shape[0], max_points, replace=False)]
    if metric == "mmd":
        return mmd2_unbiased(x, y, bandwidths)
    if metric == "swd":
        return sliced_wasserstein(x, y, seed=seed)
    raise ValueError(f"unknown sample metric {metric!r}; use 'mmd' or 'swd'")
