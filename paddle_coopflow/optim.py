"""Optimizers, the warm-up schedule and gradient-norm clipping of the official scripts.

- Flow: Adam(β 0.9/0.999, eps 1e-8) with two groups: 'weight_norm_gains' (names ending in `weight_g`)
  get a *coupled* L2 term `Optimizer.flow_gain_l2` (added to the gradient, as torch Adam's weight_decay;
  Paddle's Adam with a float/L2Decay weight_decay does the same — tested), 'other_params' none. (The
  official util.get_param_groups calls the two groups 'normalized' and 'unnormalized'.)
- EBM: Adam(β 0.5/0.5), no decay.
- LR: base · λ(samples_seen) with λ(n) = min(1, n / (warmup·B)); the scheduler is stepped with the
  number of training samples seen right after each optimizer step, so the ramp spans `warmup` iterations.
  Quirk kept by default (warmup_first_step_zero=True): λ(0) = 0 and the caller steps the scheduler
  with the count *before* it adds this batch, so the first two optimizer steps use lr 0 (exactly as
  the official code). With False the ramp is shifted by one batch: λ(n) = min(1, (n + B)/(warmup·B)).
- Norm helpers return the total L2 norm *before* clipping (what torch's clip_grad_norm_ returns and
  what the skip thresholds compare against).

The optimizer's `state_dict()` includes the scheduler state ('LR_Scheduler'); saving it is enough.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, List, Optional, Sequence, Tuple

import paddle
import paddle.nn as nn

__all__ = ["WarmupLambda", "OptimBundle", "build_warmup_scheduler", "build_flow_optimizer", "build_ebm_optimizer",
           "build_optimizers", "build_adam", "grad_global_norm", "clip_grad_norm", "clip_grad_norm_groups"]


class WarmupLambda:
    """λ(samples_seen) = min(1, (samples_seen + shift) / (warmup_iters · batch_size)); a class so it pickles.

    Args:
        warmup_iters: iterations of the linear ramp (official 200). 0 disables the warm-up.
        batch_size: B (the ramp counts samples).
        first_step_zero: True → shift 0 (λ(0) = 0, official quirk); False → shift B.
    """

    def __init__(self, warmup_iters: int, batch_size: int, first_step_zero: bool = True):
        if warmup_iters < 0 or batch_size <= 0:
            raise ValueError(f"warm-up needs warmup_iters >= 0 and batch_size > 0, got {warmup_iters}, {batch_size}")
        self.total = float(warmup_iters * batch_size)
        self.shift = 0.0 if first_step_zero else float(batch_size)

    def __call__(self, samples_seen: int) -> float:
        if self.total == 0:
            return 1.0
        return min(1.0, (float(samples_seen) + self.shift) / self.total)


def build_warmup_scheduler(base_lr: float, warmup_iters: int = 200, batch_size: int = 28,
                           first_step_zero: bool = True) -> paddle.optimizer.lr.LambdaDecay:
    """LambdaDecay(base_lr, WarmupLambda); call `.step(samples_seen)` after each optimizer step."""
    return paddle.optimizer.lr.LambdaDecay(base_lr, WarmupLambda(warmup_iters, batch_size, first_step_zero))


@dataclass
class OptimBundle:
    """An optimizer, its LR scheduler and its parameter groups (for per-group clipping).

    Attributes:
        optimizer: paddle Adam.
        scheduler: LR scheduler given to the optimizer (stepped by :meth:`step`).
        groups: parameter lists, one per group, in the optimizer's order.
        group_names: e.g. ['weight_norm_gains', 'other_params'].
    """
    optimizer: paddle.optimizer.Optimizer
    scheduler: paddle.optimizer.lr.LRScheduler
    groups: List[List[paddle.Tensor]]
    group_names: List[str]

    @property
    def parameters(self) -> List[paddle.Tensor]:
        return [p for g in self.groups for p in g]

    def lr(self) -> float:
        """The learning rate the next optimizer step will use."""
        return float(self.optimizer.get_lr())

    def step(self, samples_seen: int) -> None:
        """Optimizer step, then scheduler step at `samples_seen` (training samples before this batch)."""
        self.optimizer.step()
        self.scheduler.step(samples_seen)

    def clear_grad(self) -> None:
        self.optimizer.clear_grad(set_to_zero=False)


def build_adam(groups: Sequence[Tuple[str, List[paddle.Tensor], float]], lr: float, betas=(0.9, 0.999),
               eps: float = 1e-8, warmup_iters: int = 200, batch_size: int = 28,
               warmup_first_step_zero: bool = True) -> OptimBundle:
    """Adam over named groups (name, params, coupled L2 coefficient); empty groups are dropped."""
    groups = [g for g in groups if len(g[1]) > 0]
    if not groups:
        raise ValueError("optimizer has no trainable parameters")
    sched = build_warmup_scheduler(lr, warmup_iters, batch_size, warmup_first_step_zero)
    # A float weight_decay in a Paddle param group becomes L2Decay: coupled, added to the gradient.
    pgroups = [{"params": ps, "weight_decay": float(wd)} for _, ps, wd in groups]
    opt = paddle.optimizer.Adam(learning_rate=sched, beta1=betas[0], beta2=betas[1], epsilon=eps,
                                parameters=pgroups)
    return OptimBundle(opt, sched, [list(ps) for _, ps, _ in groups], [n for n, _, _ in groups])


def _trainable(layer: nn.Layer):
    return [(n, p) for n, p in layer.named_parameters() if not p.stop_gradient]


def build_flow_optimizer(flow: nn.Layer, lr: float = 1e-4, gain_l2: float = 5e-5,
                         gain_suffixes: Sequence[str] = ("weight_g",), betas=(0.9, 0.999), eps: float = 1e-8,
                         warmup_iters: int = 200, batch_size: int = 28,
                         warmup_first_step_zero: bool = True) -> OptimBundle:
    """Flow Adam: group 'weight_norm_gains' (names ending in a gain suffix, coupled L2 `gain_l2`) + 'other_params'."""
    named = _trainable(flow)
    gains = [p for n, p in named if n.endswith(tuple(gain_suffixes))]
    others = [p for n, p in named if not n.endswith(tuple(gain_suffixes))]
    return build_adam([("weight_norm_gains", gains, gain_l2), ("other_params", others, 0.0)], lr, betas, eps,
                      warmup_iters, batch_size, warmup_first_step_zero)


def build_ebm_optimizer(ebm: nn.Layer, lr: float = 1e-4, betas=(0.5, 0.5), eps: float = 1e-8,
                        warmup_iters: int = 200, batch_size: int = 28,
                        warmup_first_step_zero: bool = True) -> OptimBundle:
    """EBM Adam(β 0.5/0.5), no weight decay, same warm-up."""
    return build_adam([("all", [p for _, p in _trainable(ebm)], 0.0)], lr, betas, eps,
                      warmup_iters, batch_size, warmup_first_step_zero)


def build_optimizers(cfg, flow: Optional[nn.Layer], ebm: Optional[nn.Layer], batch_size: Optional[int] = None
                     ) -> Tuple[Optional[OptimBundle], Optional[OptimBundle]]:
    """(flow bundle, EBM bundle) from the config's Optimizer section; None for a missing net.

    Every caller (trainer, 2-D tool, benches) builds its optimizers here, so the config means the same
    thing everywhere.

    Args:
        cfg: resolved config (Optimizer and Train sections are read).
        flow, ebm: the networks (either may be None).
        batch_size: B of the warm-up ramp (it counts samples); default ``cfg.Train.batch_size``.
    """
    opt_cfg = cfg.Optimizer
    ramp = dict(warmup_iters=opt_cfg.warmup_iters, batch_size=int(batch_size or cfg.Train.batch_size),
                warmup_first_step_zero=opt_cfg.warmup_first_step_zero)
    flow_optim = None if flow is None else build_flow_optimizer(
        flow, opt_cfg.flow_lr, opt_cfg.flow_gain_l2, betas=(opt_cfg.flow_beta1, opt_cfg.flow_beta2), **ramp)
    ebm_optim = None if ebm is None else build_ebm_optimizer(
        ebm, opt_cfg.ebm_lr, betas=(opt_cfg.ebm_beta1, opt_cfg.ebm_beta2), **ramp)
    return flow_optim, ebm_optim


def _grads(params: Iterable[paddle.Tensor]) -> List[paddle.Tensor]:
    return [p.grad for p in params if p.grad is not None]


@paddle.no_grad()
def grad_global_norm(params: Iterable[paddle.Tensor]) -> float:
    """Total L2 norm of all gradients, as one vector (0.0 if none; NaN/Inf propagate)."""
    grads = _grads(params)
    if not grads:
        return 0.0
    # paddle.square, not ** 2: Paddle's CPU pow kernel is far slower for the same float32 value (both are the
    # correctly rounded g·g); docs/speed.md, "Where the flow's time goes".
    sq = paddle.add_n([paddle.square(g.astype("float32")).sum() for g in grads])
    return math.sqrt(float(sq.item()))


@paddle.no_grad()
def _scale_grads(params: Iterable[paddle.Tensor], coef: float) -> None:
    for p in params:
        if p.grad is not None:
            p.grad.detach().scale_(coef)  # detach(): in-place on a leaf's grad is refused otherwise


def clip_grad_norm(params: Iterable[paddle.Tensor], max_norm: Optional[float]) -> float:
    """Clip the gradients to total norm `max_norm` (torch rule: ×max/(norm+1e-6) if that is < 1).

    max_norm None or ≤ 0 only measures. Non-finite norms are returned without touching the grads
    (the caller skips the step). Returns the pre-clip norm.
    """
    params = list(params)
    norm = grad_global_norm(params)
    if max_norm is not None and max_norm > 0 and math.isfinite(norm):
        coef = max_norm / (norm + 1e-6)
        if coef < 1.0:
            _scale_grads(params, coef)
    return norm


def clip_grad_norm_groups(groups: Sequence[Sequence[paddle.Tensor]], max_norm: Optional[float],
                          mode: str = "global") -> Tuple[float, List[float]]:
    """Clip globally (all groups as one vector) or per group (each group to max_norm; main_cifar).

    Returns:
        (total pre-clip norm over all groups, list of per-group pre-clip norms).
    """
    if mode not in ("global", "per_group"):
        raise ValueError(f"unknown flow clip mode {mode!r}; use 'global' or 'per_group'")
    per = [grad_global_norm(g) for g in groups]
    total = math.sqrt(sum(n * n for n in per))
    if mode == "global":
        if max_norm is not None and max_norm > 0 and math.isfinite(total) and max_norm / (total + 1e-6) < 1.0:
            _scale_grads([p for g in groups for p in g], max_norm / (total + 1e-6))
        return total, per
    for g, n in zip(groups, per):
        if max_norm is not None and max_norm > 0 and math.isfinite(n) and max_norm / (n + 1e-6) < 1.0:
            _scale_grads(g, max_norm / (n + 1e-6))
    return total, per
