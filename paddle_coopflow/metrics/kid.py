"""Kernel Inception Distance (Bińkowski et al., 2018, "Demystifying MMD GANs").

KID is the unbiased estimate of the squared maximum mean discrepancy (MMD²) between two
feature sets under the cubic polynomial kernel

    k(x, y) = (xᵀy / d + 1)³,        d = feature dimension,

averaged over random subsets, as in the reference code and the common implementations
(torch-fidelity, clean-fid): each of `n_subsets` subsets draws `m = min(subset_size, N_a,
N_b)` rows of each set without replacement, and the result is the mean and standard
deviation of the per-subset estimates. With m equal to both set sizes every subset is the
whole of both sets (the estimate does not depend on row order), so it is computed once
and the standard deviation is 0.

Unlike FID, the estimate is unbiased in the number of samples, and it can be negative
when the two sets come from the same distribution. Any feature space works (Inception
pool3 for the paper's KID, or the bench's CIFAR-10 classifier for the offline proxy).
Everything is NumPy float64.
"""
from __future__ import annotations

from typing import Tuple

import numpy as np

from paddle_coopflow.errors import UserError


def polynomial_kernel(a: np.ndarray, b: np.ndarray, degree: int = 3, coef0: float = 1.0) -> np.ndarray:
    """k(a_i, b_j) = (a_iᵀ b_j / d + coef0) ** degree.

    Args:
        a: [N, D] features.  b: [M, D] features.
    Returns:
        [N, M] float64 kernel matrix.
    """
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    return (a @ b.T / a.shape[1] + coef0) ** degree


def mmd2_unbiased(a: np.ndarray, b: np.ndarray) -> float:
    """Unbiased MMD² between feature sets a [N, D] and b [M, D] (N, M >= 2), polynomial kernel.

        MMD² = Σ_{i≠j} k(a_i, a_j) / (N(N-1)) + Σ_{i≠j} k(b_i, b_j) / (M(M-1))
               - 2 Σ_{i,j} k(a_i, b_j) / (NM)
    """
    n, m = a.shape[0], b.shape[0]
    k_aa = polynomial_kernel(a, a)
    k_bb = polynomial_kernel(b, b)
    k_ab = polynomial_kernel(a, b)
    same_a = (k_aa.sum() - np.trace(k_aa)) / (n * (n - 1))
    same_b = (k_bb.sum() - np.trace(k_bb)) / (m * (m - 1))
    return float(same_a + same_b - 2.0 * k_ab.sum() / (n * m))


def _check_features(feats_a, feats_b) -> Tuple[np.ndarray, np.ndarray]:
    a = np.asarray(feats_a, np.float64)
    b = np.asarray(feats_b, np.float64)
    if a.ndim != 2 or b.ndim != 2:
        raise UserError(f"KID needs [N, D] feature arrays, got shapes {a.shape} and {b.shape}")
    if a.shape[1] != b.shape[1]:
        raise UserError(f"KID feature dimensions differ: {a.shape[1]} vs {b.shape[1]}")
    if min(a.shape[0], b.shape[0]) < 2:
        raise UserError(f"KID needs at least 2 rows in each set, got {a.shape[0]} and {b.shape[0]}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise UserError("KID features contain NaN or Inf")
    return a, b


def kernel_inception_distance(feats_a: np.ndarray, feats_b: np.ndarray, subset_size: int = 1000,
                              n_subsets: int = 100, seed: int = 0) -> Tuple[float, float]:
    """KID between two feature sets: mean and std of the unbiased MMD² over random subsets.

    Args:
        feats_a: [N_a, D] features (e.g. of generated images).
        feats_b: [N_b, D] features (e.g. of real images).
        subset_size: rows drawn from each set per subset (capped at min(N_a, N_b)).
        n_subsets: number of random subsets.
        seed: seed of the NumPy RandomState that draws the subsets.
    Returns:
        (mean, std) of the per-subset MMD² estimates, floats (std is 0 when every
        subset is the whole of both sets).
    Raises:
        UserError: not [N, D] arrays, dimensions differ, fewer than 2 rows, non-finite
            values, or subset_size / n_subsets < 1 (subset_size 1 is raised to 2).
    """
    a, b = _check_features(feats_a, feats_b)
    if subset_size < 1 or n_subsets < 1:
        raise UserError(f"KID subset_size and n_subsets must be >= 1, got {subset_size}, {n_subsets}")
    m = max(2, min(int(subset_size), a.shape[0], b.shape[0]))
    if m == a.shape[0] == b.shape[0]:
        return mmd2_unbiased(a, b), 0.0
    rng = np.random.RandomState(seed)
    values = np.empty(int(n_subsets))
    for s in range(int(n_subsets)):
        ia = rng.choice(a.shape[0], m, replace=False)
        ib = rng.choice(b.shape[0], m, replace=False)
        values[s] = mmd2_unbiased(a[ia], b[ib])
    return float(values.mean()), float(values.std())
