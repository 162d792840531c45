"""The Langevin flow: T steps of eq. (3) of the paper, the one sampler used everywhere.

Training, generation, FID, reconstruction and export all call :func:`langevin_flow`, so they
cannot drift apart. One step (:func:`langevin_step`) is kept separate so a static-graph version
can replace it later.

Update (eq. 3, with the official code's two clips, SPEC §3.1 and §3.4):

    x ← clip( x + clip(½ s² ∇ₓ Σ_batch f(x), −δ, δ) + σ_noise · s · ε,  lo, hi ),   ε ~ N(0, I)

- f is the *negative* energy, so this is gradient ascent on f.
- δ (delta_clip) clips the gradient term only; the image clip comes after the noise (SPEC §3.4,
  inferred). The official sampler has σ_noise = 0.
- Differentiable mode (SPEC §3.3, reconstruction / inpainting) keeps the graph of every step
  (create_graph=True) so an outer loss can backprop to x₀; it is used with both clips off.
"""
from __future__ import annotations

import contextlib
from typing import Dict, Optional, Tuple, Union

import paddle
import paddle.nn as nn

__all__ = ["langevin_step", "langevin_flow", "noise_decay_factor", "noise_std_for"]

ImageClip = Optional[Tuple[float, float]]


def langevin_step(ebm: nn.Layer, x: paddle.Tensor, step_size: float, delta_clip: Optional[float] = 0.1,
                  image_clip: ImageClip = (-1.0, 1.0), noise: Optional[paddle.Tensor] = None,
                  noise_std: float = 0.0, create_graph: bool = False
                  ) -> Tuple[paddle.Tensor, paddle.Tensor, paddle.Tensor]:
    """One Langevin step, eq. (3). Must run with gradients enabled.

    Args:
        ebm: f_θ, maps [N, ...] → [N].
        x: [N, ...] current state. In differentiable mode it must be part of the graph
            (stop_gradient=False); otherwise it is copied and never modified.
        step_size: s.
        delta_clip: δ, element-wise bound on ½s²∇f; None disables it.
        image_clip: (lo, hi) applied after the noise; None disables it.
        noise: ε with x's shape, used when noise_std > 0 (drawn here if None).
        noise_std: σ_noise, multiplies s·ε.
        create_graph: keep the graph of ∇f (differentiable chain).

    Returns:
        (x_next [N, ...], f(x) [N] detached, gradient term before the δ clip, detached).
    """
    if create_graph:
        xg = x
    else:
        # A fresh leaf: the caller's tensor is never touched (clone also matters under to_static,
        # where the in-place pass can overwrite a detached input — PADDLE_NOTES §8.2).
        xg = x.detach().clone()
        xg.stop_gradient = False
    f = ebm(xg)
    # paddle.grad w.r.t. x only: the EBM's parameter .grad is never written.
    grad = paddle.grad([f.sum()], [xg], create_graph=create_graph)[0]
    drift = 0.5 * step_size * step_size * grad
    step = drift if delta_clip is None else paddle.clip(drift, -delta_clip, delta_clip)
    base = xg if create_graph else xg.detach()
    x_next = base + step
    if noise_std > 0.0:
        eps = paddle.randn(x.shape, dtype=x.dtype) if noise is None else noise
        x_next = x_next + noise_std * step_size * eps
    if image_clip is not None:
        x_next = paddle.clip(x_next, image_clip[0], image_clip[1])
    if not create_graph:
        x_next = x_next.detach()
    return x_next, f.detach(), drift.detach()


def langevin_flow(ebm: nn.Layer, x: paddle.Tensor, n_steps: int, step_size: float,
                  delta_clip: Optional[float] = 0.1, image_clip: ImageClip = (-1.0, 1.0),
                  noise_std: float = 0.0, differentiable: bool = False,
                  noise: Optional[paddle.Tensor] = None, return_stats: bool = False,
                  fast: Optional[bool] = None) -> Union[paddle.Tensor, Tuple[paddle.Tensor, Dict[str, float]]]:
    """Run T = n_steps Langevin steps from x (the flow's proposal), eq. (3).

    Safe to call under `paddle.no_grad()` (gradients are re-enabled inside); never modifies `x`;
    never writes parameter gradients.

    Args:
        ebm: f_θ, maps [N, ...] → [N]. Used in whatever train/eval mode it is in.
        x: [N, C, H, W] (or [N, D]) starting points x̂, e.g. in [-1, 1].
        n_steps: T ≥ 0.
        step_size: s.
        delta_clip: δ bound on the gradient term (official 0.1); None disables.
        image_clip: (lo, hi) image clip after each step (official (-1, 1)); None disables.
        noise_std: σ_noise multiplying s·ε (0 = the official deterministic sampler).
        differentiable: keep the whole chain in the graph (SPEC §3.3); the result then depends
            differentiably on x. Otherwise the result is detached.
        noise: optional pre-drawn ε of shape [T, N, ...] (reproducible runs, export).
        fast: run each step as the static-graph program of langevin_fast.py (same numbers to float
            rounding, ~3x faster on CPU); None = the process default (`Langevin.fast`, set by the
            tools). Differentiable chains always use the dygraph step.
        return_stats: also return a dict of floats (this syncs with the device once):
            mse — mean over elements of (x_T − x_0)²;
            sq_change — Σ over pixels of the batch-mean squared change (the official log value);
            f_start / f_end — mean f at x_0 / x_{T−1} (free: computed by the steps anyway);
            delta_clip_frac — fraction of gradient-term elements beyond ±δ, averaged over steps.

    Returns:
        x̃ [N, ...] (and the stats dict if return_stats).
    """
    if n_steps < 0:
        raise ValueError(f"Langevin n_steps must be >= 0, got {n_steps}")
    if noise is not None and noise_std > 0.0:
        expected = [n_steps] + list(x.shape)
        if list(noise.shape) != expected:
            raise ValueError(f"Langevin noise has shape {list(noise.shape)}, expected [T, *x.shape] = {expected}")
    if differentiable and x.stop_gradient:
        # Nothing upstream to reach; still build a graph so second-order terms exist.
        x = x.clone()
        x.stop_gradient = False

    step_fn = langevin_step
    # The static step is for image EBMs ([N, C, H, W]); oneDNN static programs of small MLP energies
    # (2-D data) gain nothing and were seen to crash the process after other static programs ran.
    if not differentiable and paddle.in_dynamic_mode() and len(x.shape) == 4:
        from . import langevin_fast

        if langevin_fast.enabled() if fast is None else fast:
            step_fn = langevin_fast.make_langevin_step(ebm)
    # A chain never changes the EBM: the fast step computes its weight-only factors once per chain.
    chain = step_fn.fast.chain() if hasattr(step_fn, "fast") else contextlib.nullcontext()
    x0 = x
    f_first = f_last = None
    clip_count = 0.0
    with chain, paddle.set_grad_enabled(True):
        for k in range(n_steps):
            eps = None if (noise is None or noise_std <= 0.0) else noise[k]
            x, f, drift = step_fn(ebm, x, step_size, delta_clip, image_clip, eps, noise_std,
                                        create_graph=differentiable)
            if return_stats:
                f_last = f.mean()
                f_first = f_last if f_first is None else f_first
                if delta_clip is not None:
                    clip_count = clip_count + (drift.abs() > delta_clip).astype("float32").mean()
    if not differentiable:
        x = x.detach()
        if n_steps == 0:
            x = x.clone()  # still hand back a tensor that is not the caller's
    if not return_stats:
        return x
    return x, _flow_stats(x0, x, f_first, f_last, clip_count, n_steps)


def _flow_stats(x0, xt, f_first, f_last, clip_count, n_steps) -> Dict[str, float]:
    with paddle.no_grad():
        sq = (xt.detach() - x0.detach()) ** 2
        mse = float(sq.mean().item())
        sq_change = float(sq.mean(axis=0).sum().item())
    nan = float("nan")
    clip_frac = (float(clip_count.item()) / n_steps) if isinstance(clip_count, paddle.Tensor) else 0.0
    return {"mse": mse, "sq_change": sq_change,
            "f_start": float(f_first.item()) if f_first is not None else nan,
            "f_end": float(f_last.item()) if f_last is not None else nan,
            "delta_clip_frac": clip_frac}


def noise_decay_factor(epoch: float, K: float) -> float:
    """r(epoch) = max(1 − epoch/K, 0)^20 ([P] A.11, eq. 10).

    The paper writes max((1 − epoch/K)^20, 0); that is positive again for epoch > K because the
    power is even (SPEC §3.4), so the max is taken *before* the power: r = 0 for epoch ≥ K.
    """
    if K <= 0:
        raise ValueError(f"noise decay K must be > 0 epochs, got {K}")
    return max(1.0 - float(epoch) / float(K), 0.0) ** 20


def noise_std_for(mode: str, epoch: float, K: float, std: float = 1.0) -> float:
    """σ_noise for this epoch: 'none' → 0 (official), 'constant' → std, 'decay' → std·r(epoch)."""
    if mode == "none":
        return 0.0
    if mode == "constant":
        return float(std)
    if mode == "decay":
        return float(std) * noise_decay_factor(epoch, K)
    raise ValueError(f"unknown Langevin noise mode {mode!r}; use 'none', 'constant' or 'decay'")
