"""The EBM's loss of eq. (2) with its parameter gradients as one static-graph program with oneDNN (CPU).

Paddle's dygraph convolutions do not use oneDNN, and a to_static program with weight-gradient ops
segfaults under oneDNN (docs/paddle_notes.md). `EBMRes.energy_and_param_grads` writes f and every
parameter gradient with forward ops only (the weight gradient of a stride-1 conv is a conv of the
input and output gradient with batch and channels swapped), so one program computes the whole EBM
update pass on data and revisions together, with oneDNN's kernels. The gradients reach the parameters
through a :class:`~paddle.autograd.PyLayer` node, so ``loss.backward()``, clipping and the optimizer
step are the same code as with the dygraph loss.

Results agree with the dygraph loss to float32 rounding (other kernels, other summation order), not
bit for bit; every program's first run is checked against dygraph (:class:`~.program.ProgramCache`).

:func:`make_ebm_loss` turns the config's `Train.update_engine` into the loss function, deterministically
(config, device, build; never timing), and logs the choice once.
"""
from __future__ import annotations

import logging
from typing import Callable, List, Optional, Tuple

import numpy as np
import paddle
import paddle.nn as nn
from paddle.autograd import PyLayer

from ..utils.env import onednn_cpu
from .langevin_step import supports_manual_grad
from .program import CPU_FLAGS, ENGINES, ProgramCache, detached

__all__ = ["EBMLossLayer", "StaticEBMLoss", "make_ebm_loss"]

VERIFY_RTOL = 2e-2   # first-run check: max |static − dygraph| ≤ VERIFY_RTOL · scale (_check); dygraph
# itself is off by up to ~1e-3 of the largest gradient (its bias gradients sum 32k+ terms in float32)
VERIFY_ATOL = 1e-6
_log = logging.getLogger("paddle_coopflow.accel.ebm_update")

Loss = Tuple[paddle.Tensor, paddle.Tensor, paddle.Tensor]


class EBMLossLayer(nn.Layer):
    """What the program traces: (x [N, ...], seed [N], adjoint weights) → (f [N], ∂/∂θ of Σ seed·f ...)."""

    def __init__(self, ebm: nn.Layer):
        super().__init__()
        self.ebm = ebm

    def forward(self, x, seed, adjoint):
        f, grads = self.ebm.energy_and_param_grads(x.clone(), seed, list(adjoint))
        return detached([f] + grads)


class _GradsToParams(PyLayer):
    """The loss value as a graph node whose backward hands `grads` (× the upstream gradient) to `params`."""

    @staticmethod
    def forward(ctx, loss, grads, *params):
        ctx.grads = [None if p.stop_gradient else g for p, g in zip(params, grads)]   # frozen: None
        return loss.clone()

    @staticmethod
    def backward(ctx, upstream):
        # None for the loss value and for the list of gradients (one input to PyLayer; both stop_gradient)
        return (None, None) + tuple(None if g is None else upstream * g for g in ctx.grads)


class StaticEBMLoss:
    """eq. (2) for an EBMRes through one oneDNN program per batch shape; dygraph fallback per shape.

    Call: (energy, x_data [B, ...], x_revised [M, ...]) → (loss, f_data [B], f_revised [M]), as
    :func:`~paddle_coopflow.coopflow.ebm_ml_loss`; f is detached (the loss carries the gradients), so a
    loss that needs ∂/∂f (the energy guard) must use the dygraph loss. Another `energy` than this EBM (a
    data-parallel wrapper) and calls inside a to_static trace take the dygraph loss.

    Args:
        ebm: the EBMRes (supports_manual_grad()).
        dygraph_loss: eq. (2) in dygraph, (energy, x_data, x_revised) → the same triple
            (coopflow.ebm_ml_loss): the fallback.
        strict: raise on failure instead of falling back (engine 'static').
        verify: check the first run of each program against dygraph.
    """

    def __init__(self, ebm: nn.Layer, dygraph_loss: Callable[..., Loss], strict: bool = False, verify: bool = True):
        self.ebm, self.dygraph_loss, self.verify = ebm, dygraph_loss, verify
        self.cache = ProgramCache(ebm, "EBM update", "Train.update_engine", CPU_FLAGS if onednn_cpu() else None,
                                  strict=strict, grad=False, logger=_log)

    @property
    def n_compiled(self) -> int:
        return self.cache.n_compiled

    def chosen(self):
        return self.cache.chosen()

    def __call__(self, energy: Callable, x_data: paddle.Tensor, x_revised: paddle.Tensor) -> Loss:
        if energy is not self.ebm or not paddle.in_dynamic_mode():
            return self.dygraph_loss(energy, x_data, x_revised)
        b, m = int(x_data.shape[0]), int(x_revised.shape[0])
        x = paddle.concat([x_data.detach(), x_revised.detach()])
        seed = paddle.concat([paddle.full([b], -1.0 / b, x.dtype), paddle.full([m], 1.0 / m, x.dtype)])
        key = (tuple(x.shape), x.dtype, b)
        self.cache.check_params()
        inputs = [x, seed, self.ebm.adjoint_weights()]
        if key not in self.cache.programs:
            out = self.cache.build(key, "manual", lambda: self._make(inputs), inputs,
                                   lambda: self._reference(x, seed), self._check if self.verify else None)
        else:
            out = self.cache.call(key, inputs)
        if out is None:
            self.cache.n_fallback_calls += 1
            return self.dygraph_loss(energy, x_data, x_revised)
        f, grads = out[0], list(out[1:])
        f_data, f_rev = f[:b], f[b:]
        loss = _GradsToParams.apply(f_rev.mean() - f_data.mean(), grads, *self.ebm.parameters())
        return loss, f_data, f_rev

    def _make(self, inputs: List):
        x, seed, adjoint = inputs
        spec = [paddle.static.InputSpec(list(x.shape), x.dtype, "x"),
                paddle.static.InputSpec(list(seed.shape), seed.dtype, "seed"),
                [paddle.static.InputSpec(list(w.shape), w.dtype, f"adjoint_{i}") for i, w in enumerate(adjoint)]]
        return EBMLossLayer(self.ebm), spec

    def _reference(self, x: paddle.Tensor, seed: paddle.Tensor) -> tuple:
        with paddle.set_grad_enabled(True):
            f = self.ebm(x)
            grads = paddle.grad([(f * seed).sum()], self.ebm.parameters())
        return tuple([f.detach()] + [g.detach() for g in grads])

    @staticmethod
    def _check(out, ref) -> None:
        out, ref = [[t.numpy().astype("float64") for t in ts] for ts in (out, ref)]
        if not all(np.isfinite(r).all() for r in ref):
            return   # diverged weights or data: kernels differ in NaN handling, nothing to check
        # f against its own scale; every gradient against the largest one (a gradient of eq. 2 is a
        # difference of two means and may cancel far below the rounding of its terms), with a floor for
        # gradients that cancel altogether (data and revisions alike)
        scales = [float(np.abs(ref[0]).max()) + 1.0] + [max(float(np.abs(r).max()) for r in ref[1:])] * len(ref[1:])
        for i, (a, r, scale) in enumerate(zip(out, ref, scales)):
            err = float(np.abs(a - r).max()) if np.isfinite(a).all() else float("inf")
            if not err <= VERIFY_RTOL * scale + VERIFY_ATOL:
                what = "f" if i == 0 else f"gradient {i - 1}"
                raise ValueError(f"first static EBM update differs from dygraph in {what} (max |diff| {err:.2e})")


def make_ebm_loss(ebm: nn.Layer, dygraph_loss: Callable[..., Loss], engine: str = "auto", energy_grad: bool = False,
                  logger: Optional[logging.Logger] = None) -> Callable[..., Loss]:
    """The EBM loss function (energy, x_data, x_revised) → (loss, f_data, f_revised) chosen by Train.update_engine.

    Args:
        ebm: the EBM the loss will be called with.
        dygraph_loss: eq. (2) in dygraph (coopflow.ebm_ml_loss): returned for the dygraph engine, and the
            static loss's fallback.
        engine: 'dygraph' → dygraph autograd; 'auto' → the static program on CPU builds with oneDNN for an
            EBM with supports_manual_grad() (EBMRes), dygraph otherwise (also on GPU, where it was not
            measured); 'static' → the program, failures raise.
        energy_grad: the caller differentiates f itself (Optimizer.ebm_energy_l2 > 0): dygraph under 'auto',
            an error under 'static'.
        logger: where the one line naming the choice goes.

    Raises:
        ValueError: unknown engine, or 'static' where the program cannot serve.
    """
    if engine not in ENGINES:
        raise ValueError(f"Train.update_engine={engine!r} is invalid; use one of {ENGINES}")
    log = logger or _log
    name = type(ebm).__name__
    manual = supports_manual_grad(ebm) and hasattr(ebm, "energy_and_param_grads")
    if engine == "static" and not manual:
        raise ValueError(f"Train.update_engine=static: {name} has no hand-written parameter gradient (only "
                         "EBMRes has); set Train.update_engine=auto or dygraph")
    if engine == "static" and energy_grad:
        raise ValueError("Train.update_engine=static cannot differentiate the energy guard "
                         "(Optimizer.ebm_energy_l2 > 0); set Train.update_engine=auto or dygraph")
    if engine == "dygraph" or not (manual and onednn_cpu()) or energy_grad:
        why = ("configured" if engine == "dygraph" else "energy guard on" if energy_grad and manual and onednn_cpu()
               else "no oneDNN CPU build" if manual else f"{name} has no hand-written parameter gradient")
        log.info("EBM update: dygraph (Train.update_engine=%s, %s)", engine, why)
        return dygraph_loss
    log.info("EBM update: static oneDNN program for %s (Train.update_engine=%s)", name, engine)
    return StaticEBMLoss(ebm, dygraph_loss, strict=engine == "static")
