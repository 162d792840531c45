"""CoopFlow sampling: the flow proposes, the Langevin flow of the EBM revises (paper Algorithm 1, lines 3-4).

:func:`sample` is the one function that draws x̂ = g_α(z) and x̃ = K_θ x̂ outside a training
step: generation, sample grids, FID, the 2-D toy tool and export all go through it, so they cannot
drift apart. The nets are put in eval mode (no dropout) unless asked otherwise, and their
train/eval modes are restored afterwards, also when sampling raises.

Generation uses the test step size and no noise; passing the training step size and the training
noise σ gives the training transition K_θ instead (what the toy tool evaluates).
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator, Optional, Sequence, Tuple

import paddle
import paddle.nn as nn

from .langevin import langevin_flow

__all__ = ["sample", "propose", "nets_in_mode"]


@contextlib.contextmanager
def nets_in_mode(nets: Sequence[Optional[nn.Layer]], training: bool) -> Iterator[None]:
    """Put every net (None entries skipped) in train (`training=True`) or eval mode; restore on exit.

    Args:
        nets: layers to switch; None entries are ignored.
        training: the mode inside the block.
    """
    nets = [m for m in nets if m is not None]
    was = [m.training for m in nets]
    for m in nets:
        _set_mode(m, training)
    try:
        yield
    finally:
        for m, mode in zip(nets, was):
            _set_mode(m, mode)


def _set_mode(net: nn.Layer, training: bool) -> None:
    """net.train() or net.eval() (Paddle before 3.3 has no ``train(mode)``)."""
    if training:
        net.train()
    else:
        net.eval()


def propose(flow: Optional[nn.Layer], n: Optional[int], z: Optional[paddle.Tensor],
              shape: Optional[Sequence[int]]) -> paddle.Tensor:
    """x̂ [n, ...]: g_α(z) in the flow's current mode, z ~ N(0, I) or given; no flow: z itself or U(-1, 1).

    Args:
        flow: q_α or None (short-run EBM baseline).
        n: number of proposals (may be omitted when z is given).
        z: [n, *flow.z_shape] latent codes; without a flow, the starting points themselves.
        shape: sample shape without batch dimension (no flow and no z only).

    Returns:
        detached [n, ...] proposals.
    """
    if z is not None and n is not None and int(z.shape[0]) != int(n):
        raise ValueError(f"sample(): n={n} but z has {z.shape[0]} rows")
    if flow is None:
        if z is not None:
            return z.detach()
        if n is None or shape is None:
            raise ValueError("sample() without a flow needs n and the sample shape (or starting points z)")
        return paddle.uniform([int(n)] + list(shape), min=-1.0, max=1.0)
    if z is None:
        if n is None:
            raise ValueError("sample() needs n or z")
        z = paddle.randn([int(n)] + list(flow.z_shape))  # paddle.seed controls it
    with paddle.no_grad():
        return flow.inverse(z).detach()


def sample(flow: Optional[nn.Layer], ebm: Optional[nn.Layer], n: Optional[int] = None,
           z: Optional[paddle.Tensor] = None, shape: Optional[Sequence[int]] = None, *, n_steps: int,
           step_size: float, delta_clip: Optional[float] = 0.1,
           image_clip: Optional[Tuple[float, float]] = (-1.0, 1.0), noise_std: float = 0.0,
           langevin_step: Optional[Callable] = None, eval_mode: bool = True
           ) -> Tuple[paddle.Tensor, paddle.Tensor]:
    """Proposal then revision: (x̂, x̃), both [n, ...] detached.

    Args:
        flow: q_α with ``inverse(z)`` and ``z_shape``; None for the short-run EBM baseline, whose
            proposals are U(-1, 1) (or `z`, taken as the starting points).
        ebm: f_θ; None for the flow-only baseline (then x̃ = x̂).
        n: number of samples (may be omitted when `z` is given).
        z: latent codes [n, *flow.z_shape] (fixed-noise grids, reproducible evaluation); drawn with
            ``paddle.randn`` when None. Without a flow: the starting points [n, *shape].
        shape: sample shape without the batch dimension; needed only without a flow and without z.
        n_steps: T, Langevin steps of eq. (3).
        step_size: s (the test step size for generation, the training one for K_θ).
        delta_clip: δ bound on the gradient term; None disables it.
        image_clip: (lo, hi) after each step; None disables it.
        noise_std: σ of the Langevin noise (0 for generation; the training σ for K_θ).
        langevin_step: a callable with ``langevin.langevin_step``'s signature that runs one step of
            eq. (3) (an accelerated engine); None uses the dygraph step.
        eval_mode: run both nets in eval mode (no dropout); False runs them in train mode.

    Returns:
        (x_proposal, x_revised), float32 [n, ...] each.
    """
    with nets_in_mode((flow, ebm), training=not eval_mode):
        x_prop = propose(flow, n, z, shape)
        if ebm is None:
            return x_prop, x_prop.clone()
        kw = {} if langevin_step is None else {"step": langevin_step}
        x_rev = langevin_flow(ebm, x_prop, n_steps, step_size, delta_clip, image_clip, noise_std=noise_std, **kw)
    return x_prop, x_rev
