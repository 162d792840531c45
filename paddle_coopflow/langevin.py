"""The Langevin flow of CoopFlow: T steps of eq. (3) of the paper on f_θ (the negative energy).

Depends on Paddle alone. Training, generation, FID, reconstruction and export all reach eq. (3)
through :func:`langevin_update`, so they cannot drift apart:

    x ← clip( x + clip(½ s² ∇ₓ Σ_batch f(x), −δ, δ) + σ_noise · s · ε,  lo, hi ),   ε ~ N(0, I)

- f is the *negative* energy, so this is gradient ascent on f.
- δ (delta_clip) clips the gradient term only and the image clip comes after the noise, as the
  official code does (its sampler clips the gradient term to ±0.1 and the image to [-1, 1]). The
  official sampler has σ_noise = 0; eq. (10) decays the noise when it is on.
- Differentiable mode (the paper's image reconstruction and inpainting experiments) keeps the graph of
  every step (create_graph=True) so an outer loss can backpropagate to x₀; it is used with both
  clips off.

:func:`langevin_flow` runs T steps with a *step function*: by default the dygraph
:func:`langevin_step`; `paddle_coopflow.accel.make_langevin_step` builds a static-graph one with the
same signature and results (to float rounding).
"""
from __future__ import annotations

import contextlib
from typing import Callable, Dict, Optional, Tuple, Union

import paddle
import paddle.nn as nn

__all__ = ["langevin_update", "langevin_step", "langevin_flow", "noise_decay_factor", "noise_std_for",
           "NOISE_MODES"]

ImageClip = Optional[Tuple[float, float]]
NOISE_MODES = ("none", "constant", "decay")


def langevin_update(x: paddle.Tensor, grad_term: paddle.Tensor, delta_clip: Optional[float],
                    image_clip: ImageClip, shift: Optional[paddle.Tensor] = None) -> paddle.Tensor:
    """Eq. (3) of the paper: x + clip(½s²∇ₓf, −δ, δ) (+ σ·s·ε), then the image clip.

    The one place the update is written: the dygraph step, the static step program and the exported
    programs call it (inside a static program it traces to the same ops).

    Args:
        x: [N, ...] current state.
        grad_term: [N, ...] ½ s² ∇ₓ Σ_batch f(x).
        delta_clip: δ, element-wise bound on the gradient term; None disables it.
        image_clip: (lo, hi) applied last; None disables it.
        shift: [N, ...] the noise term σ_noise · s · ε, or None (no noise).

    Returns:
        x_next [N, ...] (in the graph of x and grad_term; callers detach when they need to).
    """
    step = grad_term if delta_clip is None else paddle.clip(grad_term, -delta_clip, delta_clip)
    x_next = x + step
    if shift is not None:
        x_next = x_next + shift
    if image_clip is not None:
        x_next = paddle.clip(x_next, image_clip[0], image_clip[1])
    return x_next


def langevin_step(ebm: nn.Layer, x: paddle.Tensor, step_size: float, delta_clip: Optional[float] = 0.1,
                  image_clip: ImageClip = (-1.0, 1.0), noise: Optional[paddle.Tensor] = None,
                  noise_std: float = 0.0, create_graph: bool = False
                  ) -> Tuple[paddle.Tensor, paddle.Tensor, paddle.Tensor]:
    """One Langevin step, eq. (3), in dygraph with `paddle.grad`. Must run with gradients enabled.

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
        (x_next [N, ...], f(x) [N] detached, gradient term ½s²∇f before the δ clip [N, ...] detached).
    """
    if create_graph:
        xg = x
    else:
        # A fresh leaf: the caller's tensor is never touched (clone also matters under to_static:
        # docs/paddle_notes.md, "The in-place pass and detached inputs").
        xg = x.detach().clone()
        xg.stop_gradient = False
    f = ebm(xg)
    # paddle.grad w.r.t. x only: the EBM's parameter .grad is never written.
    grad = paddle.grad([f.sum()], [xg], create_graph=create_graph)[0]
    drift = 0.5 * step_size * step_size * grad
    shift = None
    if noise_std > 0.0:
        eps = paddle.randn(x.shape, dtype=x.dtype) if noise is None else noise
        shift = noise_std * step_size * eps
    x_next = langevin_update(xg if create_graph else xg.detach(), drift, delta_clip, image_clip, shift)
    if not create_graph:
        x_next = x_next.detach()
    return x_next, f.detach(), drift.detach()


def langevin_flow(ebm: nn.Layer, x: paddle.Tensor, n_steps: int, step_size: float,
                  delta_clip: Optional[float] = 0.1, image_clip: ImageClip = (-1.0, 1.0),
                  noise_std: float = 0.0, differentiable: bool = False,
                  noise: Optional[paddle.Tensor] = None, return_stats: bool = False,
                  step: Optional[Callable] = None) -> Union[paddle.Tensor, Tuple[paddle.Tensor, Dict[str, float]]]:
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
        differentiable: keep the whole chain in the graph (reconstruction, inpainting); the result
            then depends differentiably on x. Otherwise the result is detached.
        noise: optional pre-drawn ε of shape [T, N, ...] (reproducible runs, export).
        return_stats: also return a dict of floats (this syncs with the device once):
            mse — mean over elements of (x_T − x_0)²;
            sq_change — Σ over pixels of the batch-mean squared change (the official log value);
            f_start / f_end — mean f at x_0 / x_{T−1} (free: computed by the steps anyway);
            delta_clip_frac — fraction of gradient-term elements beyond ±δ, averaged over steps.
        step: the step function, with :func:`langevin_step`'s signature and results (default: that
            function). If it has a `chain()` context manager (the static step of
            `paddle_coopflow.accel`), the loop runs inside it: the EBM does not change during a chain.

    Returns:
        x̃ [N, ...] (and the stats dict if return_stats).
    """
    _check_inputs(x, n_steps, noise, noise_std)
    if differentiable and x.stop_gradient:
        # Nothing upstream to reach; still build a graph so second-order terms exist.
        x = x.clone()
        x.stop_gradient = False
    step_fn = langevin_step if step is None else step
    chain = step_fn.chain() if hasattr(step_fn, "chain") else contextlib.nullcontext()
    x0, f_first, f_last, clip_count = x, None, None, 0.0
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


def _check_inputs(x: paddle.Tensor, n_steps: int, noise: Optional[paddle.Tensor], noise_std: float) -> None:
    """One-line ValueErrors for a negative T and pre-drawn noise of the wrong shape."""
    if n_steps < 0:
        raise ValueError(f"Langevin n_steps must be >= 0, got {n_steps}")
    if noise is not None and noise_std > 0.0:
        expected = [n_steps] + list(x.shape)
        if list(noise.shape) != expected:
            raise ValueError(f"Langevin noise has shape {list(noise.shape)}, expected [T, *x.shape] = {expected}")


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
    """Eq. (10) of the paper (appendix): r(epoch) = max(1 − epoch/K, 0)^20.

    The paper writes max((1 − epoch/K)^20, 0), which is positive again for epoch > K because the
    power is even; the max is taken *before* the power, so r = 0 for epoch ≥ K.
    """
    if K <= 0:
        raise ValueError(f"noise decay K must be > 0 epochs, got {K}")
    return max(1.0 - float(epoch) / float(K), 0.0) ** 20


def noise_std_for(mode: str, epoch: float, K: float, std: float = 1.0) -> float:
    """σ_noise at `epoch`, the one place the noise mode is decided.

    'none' → 0 (the official sampler), 'constant' → std, 'decay' → std · r(epoch) of eq. (10).
    """
    if mode == "none":
        return 0.0
    if mode == "constant":
        return float(std)
    if mode == "decay":
        return float(std) * noise_decay_factor(epoch, K)
    raise ValueError(f"unknown Langevin noise mode {mode!r}; use one of {NOISE_MODES}")
