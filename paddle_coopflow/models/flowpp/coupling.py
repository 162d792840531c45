"""Logistic-mixture CDF coupling (Ho et al. 2019, Sec. 3.1) and the pair Flip.

Forward on the pair (x_change, x_id), with (a, b, pi, mu, log_s) = NN(x_id[, aux]):
  y1  = MixLogCDF(x_change)
  out = (logit(y1) + b) * exp(a)          # reference order: shift, then scale
  ldj = sum[ log MixLogPDF(x_change) - log y1 - log(1 - y1) + a ]
"""
from __future__ import annotations

from typing import Optional, Tuple

import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from .mixture import mixture_inv_cdf, mixture_log_pdf, mixture_log_pdf_and_cdf, safe_log
from .nn import NN

Pair = Tuple[paddle.Tensor, paddle.Tensor]


def _sum_per_sample(t: paddle.Tensor) -> paddle.Tensor:
    return t.reshape([t.shape[0], -1]).sum(axis=1)


class Coupling(nn.Layer):
    """Args: as NN; `inverse_method` ('newton' | 'bisection') picks the mixture-CDF inverse used in reverse."""

    def __init__(self, in_channels: int, mid_channels: int, num_blocks: int, num_components: int,
                 drop_prob: float, use_attn: bool = True, aux_channels: Optional[int] = None,
                 inverse_method: str = "newton"):
        super().__init__()
        self.nn = NN(in_channels, mid_channels, num_blocks, num_components, drop_prob, use_attn, aux_channels)
        self.inverse_method = inverse_method
        # The network's static program runner used when sampling (FlowPlusPlus.set_coupling_engine:
        # paddle_coopflow/accel/coupling.py), or None; a plain attribute, not a sublayer.
        self.static_nn = None

    def _conditioner(self, reverse: bool, aux):
        """The network to run: its static copy when sampling (reverse, eval, no grad, dygraph, no aux)."""
        if (reverse and self.static_nn is not None and aux is None and not self.training
                and paddle.in_dynamic_mode() and not paddle.is_grad_enabled()):
            return lambda x_id, _aux: self.static_nn(x_id)
        return self.nn

    def forward(self, x: Pair, sldj: paddle.Tensor, reverse: bool = False,
                aux: Optional[paddle.Tensor] = None) -> Tuple[Pair, paddle.Tensor]:
        """x: pair of [N, C, H, W]; sldj: [N]; aux: [N, A, H, W] or None."""
        x_change, x_id = x
        a, b, pi, mu, log_s = self._conditioner(reverse, aux)(x_id, aux)
        if reverse:
            v = x_change * paddle.exp(-a) - b
            y1 = paddle.clip(F.sigmoid(v), 1e-5, 1.0 - 1e-5)
            out = mixture_inv_cdf(y1, pi, mu, log_s, method=self.inverse_method)
            # -log sigma'(v) = softplus(v) + softplus(-v): the forward logit's log-det, subtracted.
            # (The reference subtracts it with the opposite sign; the value is unused when sampling.)
            ldj = a + F.softplus(v) + F.softplus(-v) + mixture_log_pdf(out, pi, mu, log_s)
            sldj = sldj - _sum_per_sample(ldj)
        else:
            log_pdf, log_cdf = mixture_log_pdf_and_cdf(x_change, pi, mu, log_s)
            y1 = paddle.exp(log_cdf)
            out = (-safe_log(1.0 / y1 - 1.0) + b) * paddle.exp(a)
            ldj = log_pdf - safe_log(y1) - safe_log(1.0 - y1) + a
            sldj = sldj + _sum_per_sample(ldj)
        return (out, x_id), sldj


class Flip(nn.Layer):
    """Swap the pair so the next coupling transforms the other half. Log-det 0."""

    def forward(self, x: Pair, sldj: paddle.Tensor, reverse: bool = False) -> Tuple[Pair, paddle.Tensor]:
        return (x[1], x[0]), sldj


def run_step(step, pair: Pair, sldj: paddle.Tensor, aux: Optional[paddle.Tensor] = None,
             recompute: bool = False) -> Tuple[Pair, paddle.Tensor]:
    """One coupling step (ActNorm, InvConv, Coupling, Flip: the layers of `step`) forward on the pair.

    With `recompute` (training only: gradients enabled), activation recomputation: only the step's inputs
    are kept for the backward pass, which runs the step's forward again
    (``paddle.distributed.fleet.utils.recompute``, PyLayer implementation, dropout replayed from the saved
    RNG state). Paddle's hook implementation (``use_reentrant=False``) kept most activations alive here:
    docs/speed.md, "Activation recomputation".
    """
    def fwd(a, b, s, *extra):
        x = (a, b)
        for layer in step:
            kw = {"aux": extra[0]} if extra and isinstance(layer, Coupling) else {}
            x, s = layer(x, s, **kw)
        return x[0], x[1], s

    inputs = [pair[0], pair[1], sldj] + ([aux] if aux is not None else [])
    if recompute and paddle.is_grad_enabled() and not all(t.stop_gradient for t in inputs):
        from paddle.distributed.fleet.utils import recompute as paddle_recompute

        a, b, sldj = paddle_recompute(fwd, *inputs, use_reentrant=True)
    else:  # (Paddle's recompute needs an input that carries a gradient)
        a, b, sldj = fwd(*inputs)
    return (a, b), sldj
