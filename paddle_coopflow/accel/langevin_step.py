"""The Langevin step (eq. 3 of the paper) as a static-graph program with oneDNN kernels (CPU).

Paddle's dygraph convolutions do not use oneDNN; a to_static program of *one* step (f and ∇ₓf, then
:func:`~paddle_coopflow.langevin.langevin_update`) run with `FLAGS_use_onednn` and frozen EBM
parameters does (docs/paddle_notes.md, "oneDNN speed recipe"). The loop over T stays in Python (an
in-graph while loop segfaults with oneDNN) and the EBM's weight update stays in dygraph.

Two program variants (docs/speed.md):
- 'manual' (an EBM with `supports_manual_grad()`, i.e. EBMRes): ∇ₓf from `ebm.energy_and_grad`,
  forward ops only, run with oneDNN. Its weight-only factors (`ebm.adjoint_weights()`) are inputs
  of the program, computed once per chain (:meth:`StaticLangevinStep.chain`).
- 'autograd': ∇ₓf by `paddle.grad` inside the program, for any EBM, run without oneDNN. Opt-in
  only (`variant='autograd'`, used by bench/bench_langevin.py): slower than dygraph on the CPUs
  measured.

:func:`make_langevin_step` is what the rest of the package calls: it turns the config's
`Langevin.engine` into a step function for `langevin.langevin_flow(..., step=...)`, deterministically
(config, device, build; never timing), and logs the choice once.
"""
from __future__ import annotations

import contextlib
import logging
import math
from typing import Callable, List, Optional, Tuple

import numpy as np
import paddle
import paddle.nn as nn

from ..langevin import langevin_step, langevin_update
from ..utils.env import onednn_cpu
from .program import CPU_FLAGS, ENGINES, ProgramCache

__all__ = ["VARIANTS", "CPU_FLAGS", "LangevinStepLayer", "StaticLangevinStep", "make_langevin_step",
           "engine_in_use", "supports_manual_grad"]

VARIANTS = ("manual", "autograd")
VERIFY_ATOL = 1e-4   # first-run check of x_next (image units) and of f (relative) against the dygraph step
_log = logging.getLogger("paddle_coopflow.accel.langevin")


def supports_manual_grad(ebm: nn.Layer) -> bool:
    """True for an EBM that writes its own input gradient with forward ops (EBMRes)."""
    check = getattr(ebm, "supports_manual_grad", None)
    return bool(callable(check) and check())


class LangevinStepLayer(nn.Layer):
    """One Langevin step as a layer to convert with to_static (the EBM inside stays a dygraph layer).

    Constants (step size, clips) are baked in. Call: (x [N, ...], extra) → (x_next [N, ...], f [N],
    drift [N, ...]) where `extra` is a list: [shift [N, ...]] if with_noise (the noise term σ·s·ε),
    followed, for the 'manual' variant, by the EBM's adjoint weights. Used by the static step and by
    the exported `langevin_step` program (paddle_coopflow/export.py).
    """

    def __init__(self, ebm: nn.Layer, step_size: float, delta_clip: Optional[float],
                 image_clip: Optional[Tuple[float, float]], with_noise: bool, variant: str = "manual"):
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"Langevin step variant={variant!r}; use one of {VARIANTS}")
        self.ebm = ebm
        self.coef = 0.5 * float(step_size) * float(step_size)
        self.delta_clip, self.image_clip = delta_clip, image_clip
        self.with_noise, self.manual = with_noise, variant == "manual"

    def forward(self, x, extra):
        shift = extra[0] if self.with_noise else None
        adjoint = list(extra[1:] if self.with_noise else extra)
        xg = x.clone()   # never x.detach(): docs/paddle_notes.md, "The in-place pass and detached inputs"
        if self.manual:
            f, grad = self.ebm.energy_and_grad(xg, adjoint)
        else:
            xg.stop_gradient = False
            f = self.ebm(xg)
            grad = paddle.grad([f.sum()], [xg])[0]
        drift = self.coef * grad
        x_next = langevin_update(xg.detach(), drift, self.delta_clip, self.image_clip, shift)
        return x_next.detach(), f.detach(), drift.detach()


class StaticLangevinStep:
    """Static single-step programs for one EBM, built lazily per key, with dygraph fallback.

    Args:
        ebm: f_θ, maps [N, ...] → [N]. Must keep its parameter objects (in-place optimizer updates and
            set_state_dict are fine; replacing a parameter tensor triggers a rebuild).
        variant: 'manual' (needs supports_manual_grad) or 'autograd' (opt-in; never with oneDNN).
        strict: raise on failure instead of falling back to dygraph (engine 'static').
        verify: compare the first run of each program with the dygraph step.
        cpu_flags: set CPU_FLAGS around the 'manual' program's calls (None: on CPU builds with oneDNN).
    """

    def __init__(self, ebm: nn.Layer, variant: str = "manual", strict: bool = False, verify: bool = True,
                 cpu_flags: Optional[bool] = None):
        if variant not in VARIANTS:
            raise ValueError(f"Langevin step variant={variant!r}; use one of {VARIANTS}")
        self.ebm, self.variant, self.verify = ebm, variant, verify
        use_flags = variant == "manual" and (onednn_cpu() if cpu_flags is None else cpu_flags)
        self.cache = ProgramCache(ebm, "Langevin step", "Langevin.engine", CPU_FLAGS if use_flags else None,
                                  strict=strict, grad=True, logger=_log)
        self._chain_depth = 0
        self._adjoint: Optional[List[paddle.Tensor]] = None   # adjoint weights, kept within a chain

    @property
    def n_compiled(self) -> int:
        return self.cache.n_compiled

    @property
    def n_fallback_steps(self) -> int:
        return self.cache.n_fallback_calls

    def chosen(self):
        return self.cache.chosen()

    @contextlib.contextmanager
    def chain(self):
        """Scope in which the EBM weights do not change (one Langevin chain): the weight-only factors of
        the 'manual' gradient are computed on first use and reused by every step inside it. Outside a
        chain every step recomputes them (always correct, slower)."""
        self._chain_depth += 1
        try:
            yield self
        finally:
            self._chain_depth -= 1
            if self._chain_depth == 0:
                self._adjoint = None

    def _adjoint_weights(self) -> List[paddle.Tensor]:
        if self.variant != "manual":
            return []
        if self._adjoint is not None:
            return self._adjoint
        adj = self.ebm.adjoint_weights()
        if self._chain_depth > 0:
            self._adjoint = adj
        return adj

    def __call__(self, ebm: nn.Layer, x: paddle.Tensor, step_size: float, delta_clip: Optional[float] = 0.1,
                 image_clip: Optional[Tuple[float, float]] = (-1.0, 1.0), noise: Optional[paddle.Tensor] = None,
                 noise_std: float = 0.0, create_graph: bool = False
                 ) -> Tuple[paddle.Tensor, paddle.Tensor, paddle.Tensor]:
        """One step of eq. (3) with :func:`langevin.langevin_step`'s signature and results (detached).

        The differentiable chain (create_graph), another EBM than this step's and calls inside a to_static
        trace (the exported sampler traces langevin_flow) take the dygraph step; so does a key whose
        program failed (engine 'auto').
        """
        if create_graph or ebm is not self.ebm or not paddle.in_dynamic_mode():
            return langevin_step(ebm, x, step_size, delta_clip, image_clip, noise, noise_std, create_graph)
        eps = shift = None
        if noise_std > 0.0:
            # Same draw and same arithmetic as the dygraph step: identical chains under one seed.
            eps = paddle.randn(x.shape, dtype=x.dtype) if noise is None else noise
            shift = noise_std * step_size * eps
        clip = None if image_clip is None else (float(image_clip[0]), float(image_clip[1]))
        dclip = None if delta_clip is None else float(delta_clip)
        key = (tuple(x.shape[1:]), x.dtype, float(step_size), dclip, clip, shift is not None, bool(self.ebm.training))
        args = (x, step_size, delta_clip, clip, eps, noise_std)
        self.cache.check_params()
        with self.chain():   # the weights are fixed during one step, too
            adjoint = self._adjoint_weights()
            inputs = [x, ([shift] if shift is not None else []) + adjoint]
            if key not in self.cache.programs:
                out = self.cache.build(key, self.variant, lambda: self._make(key, x.dtype, adjoint), inputs,
                                       lambda: self._dygraph(*args), self._check if self.verify else None)
            else:
                out = self.cache.call(key, inputs)
        if out is not None:
            return out
        self.cache.n_fallback_calls += 1
        return self._dygraph(*args)

    def _make(self, key: tuple, dtype, adjoint: List[paddle.Tensor]):
        shape, _, step_size, delta_clip, clip, with_noise, _ = key
        layer = LangevinStepLayer(self.ebm, step_size, delta_clip, clip, with_noise, self.variant)
        extra = [paddle.static.InputSpec([None] + list(shape), dtype, "shift")] if with_noise else []
        extra += [paddle.static.InputSpec(list(w.shape), w.dtype, f"adjoint_{i}") for i, w in enumerate(adjoint)]
        return layer, [paddle.static.InputSpec([None] + list(shape), dtype, "x"), extra]

    def _dygraph(self, x, step_size, delta_clip, clip, eps, noise_std):
        with paddle.set_grad_enabled(True):
            return langevin_step(self.ebm, x, step_size, delta_clip, clip, eps, noise_std)

    @staticmethod
    def _check(out, ref) -> None:
        (a, fa), (r, fr) = [(t[0].numpy().astype("float64"), t[1].numpy().astype("float64")) for t in (out, ref)]
        if not (np.isfinite(r).all() and np.isfinite(fr).all()):
            return  # a diverged chain (NaN data or weights): kernels differ in NaN handling, nothing to check
        dx = float(np.abs(a - r).max()) if np.isfinite(a).all() else math.inf
        df = float((np.abs(fa - fr) / (np.abs(fr) + 1.0)).max()) if np.isfinite(fa).all() else math.inf
        if not (dx <= VERIFY_ATOL and df <= VERIFY_ATOL):
            raise ValueError(f"first static step differs from dygraph (max |dx| {dx:.2e}, rel |df| {df:.2e})")


def make_langevin_step(ebm: nn.Layer, engine: str = "auto", logger: Optional[logging.Logger] = None) -> Callable:
    """The step function for `langevin_flow(..., step=...)` chosen by `Langevin.engine`.

    Args:
        ebm: the EBM the step will be called with.
        engine: 'dygraph' → langevin.langevin_step; 'auto' → the static 'manual' program on CPU builds with
            oneDNN for an EBM with supports_manual_grad() (EBMRes), dygraph otherwise (also on GPU, where
            it was not measured); 'static' → the static program, failures raise.
        logger: where the one line naming the choice goes (default: paddle_coopflow.accel.langevin).

    Returns:
        step(ebm, x, step_size, delta_clip, image_clip, noise, noise_std, create_graph) → (x_next, f, drift),
        as langevin_step: the function itself, or a StaticLangevinStep (which also has chain()).

    Raises:
        ValueError: unknown engine, or 'static' for an EBM without a hand-written gradient.
    """
    if engine not in ENGINES:
        raise ValueError(f"Langevin.engine={engine!r} is invalid; use one of {ENGINES}")
    log = logger or _log
    name = type(ebm).__name__
    manual = supports_manual_grad(ebm)
    if engine == "static" and not manual:
        raise ValueError(f"Langevin.engine=static: {name} has no hand-written input gradient (only EBMRes "
                         "has); set Langevin.engine=auto or dygraph")
    if engine == "dygraph" or (engine == "auto" and not (manual and onednn_cpu())):
        why = "configured" if engine == "dygraph" else ("no oneDNN CPU build" if manual else f"{name} has no "
                                                          "hand-written input gradient")
        log.info("Langevin step: dygraph (Langevin.engine=%s, %s)", engine, why)
        return langevin_step
    log.info("Langevin step: static oneDNN program for %s (Langevin.engine=%s)", name, engine)
    return StaticLangevinStep(ebm, "manual", strict=engine == "static")


def engine_in_use(step) -> str:
    """'static' | 'dygraph' | 'none': what a step from :func:`make_langevin_step` runs (None: no EBM).

    The step is chosen by Langevin.engine, the device and the build only (never by timing), so a resumed
    run takes the same step as the run it continues when the config is the same.
    """
    if step is None:
        return "none"
    return "static" if isinstance(step, StaticLangevinStep) else "dygraph"
