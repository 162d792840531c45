"""Logistic-mixture CDF / log-pdf and the inverse CDF (SPEC §1.6, §1.9).

Parameter tensors put the K mixture components on axis 1:
  logits, means, log_scales: [N, K, C, H, W];  x, y: [N, C, H, W].

The inverse CDF has no closed form. `mixture_inv_cdf` dispatches on `method`; "bisection"
reproduces the reference exactly (bracket min/max mu -+ 20 * sum_k s_k, stop at global
max |dx| <= 1e-10 or 100 iterations). A faster method can be added as another private
function plus one dispatch entry.
"""
from __future__ import annotations

import paddle
import paddle.nn.functional as F

INV_CDF_METHODS = ("bisection",)


def safe_log(x: paddle.Tensor) -> paddle.Tensor:
    """log(max(x, 1e-22)): the reference guard against log(0)."""
    return paddle.log(paddle.clip(x, min=1e-22))


def _logsumexp_axis1(x: paddle.Tensor) -> paddle.Tensor:
    """logsumexp over axis 1 of a [N, K, ...] tensor.

    Paddle's logsumexp accepts at most 4-D input, so fold the trailing axes first.
    """
    shape = x.shape
    out = paddle.logsumexp(x.reshape([shape[0], shape[1], -1]), axis=1)
    return out.reshape([shape[0]] + list(shape[2:]))


def logistic_log_pdf(x: paddle.Tensor, mean: paddle.Tensor, log_scale: paddle.Tensor) -> paddle.Tensor:
    """log of the logistic density: z - log s - 2 softplus(z), z = (x - mu)/s."""
    z = (x - mean) * paddle.exp(-log_scale)
    return z - log_scale - 2.0 * F.softplus(z)


def logistic_log_cdf(x: paddle.Tensor, mean: paddle.Tensor, log_scale: paddle.Tensor) -> paddle.Tensor:
    """log sigmoid((x - mu)/s)."""
    return F.log_sigmoid((x - mean) * paddle.exp(-log_scale))


def mixture_log_pdf(x: paddle.Tensor, logits: paddle.Tensor, means: paddle.Tensor,
                    log_scales: paddle.Tensor) -> paddle.Tensor:
    """log sum_k pi_k Logistic(x; mu_k, s_k). x [N,C,H,W], params [N,K,C,H,W] -> [N,C,H,W]."""
    log_ps = F.log_softmax(logits, axis=1) + logistic_log_pdf(x.unsqueeze(1), means, log_scales)
    return _logsumexp_axis1(log_ps)


def mixture_log_cdf(x: paddle.Tensor, logits: paddle.Tensor, means: paddle.Tensor,
                    log_scales: paddle.Tensor) -> paddle.Tensor:
    """log sum_k pi_k sigmoid((x - mu_k)/s_k), computed in log space. Shapes as mixture_log_pdf."""
    log_ps = F.log_softmax(logits, axis=1) + logistic_log_cdf(x.unsqueeze(1), means, log_scales)
    return _logsumexp_axis1(log_ps)


def _bisection_inv_cdf(y: paddle.Tensor, logits: paddle.Tensor, means: paddle.Tensor,
                       log_scales: paddle.Tensor, eps: float = 1e-10, max_iters: int = 100) -> paddle.Tensor:
    """Reference bisection. Every element keeps its own bracket; the stopping rule is global."""
    sum_scales = paddle.exp(log_scales).sum(axis=1, keepdim=True)
    lb = (means - 20.0 * sum_scales).min(axis=1)
    ub = (means + 20.0 * sum_scales).max(axis=1)
    x = paddle.zeros_like(y)
    for _ in range(max_iters):
        cur_y = paddle.exp(mixture_log_cdf(x, logits, means, log_scales))
        gt = cur_y > y
        # F(x) > y: root is left of x (x becomes the upper bound); else right of x.
        new_x = paddle.where(gt, (x + lb) / 2.0, (x + ub) / 2.0)
        lb = paddle.where(gt, lb, x)
        ub = paddle.where(gt, x, ub)
        diff = (new_x - x).abs().max().item()
        x = new_x
        if diff <= eps:
            break
    return x


def mixture_inv_cdf(y: paddle.Tensor, logits: paddle.Tensor, means: paddle.Tensor, log_scales: paddle.Tensor,
                    method: str = "bisection") -> paddle.Tensor:
    """x with MixLogCDF(x) = y, element-wise.

    Args:
        y: [N, C, H, W], strictly inside (0, 1).
        logits, means, log_scales: [N, K, C, H, W].
        method: one of INV_CDF_METHODS.
    Returns:
        x: [N, C, H, W]. No gradient is meant to flow through this (sampling runs under no_grad).
    """
    # Written so that NaN passes (as in the reference); only real out-of-range values raise.
    if bool((y <= 0).any().item()) or bool((y >= 1).any().item()):
        raise ValueError("mixture_inv_cdf needs 0 < y < 1; clamp y first (the coupling clamps to [1e-5, 1-1e-5])")
    if method == "bisection":
        return _bisection_inv_cdf(y, logits, means, log_scales)
    raise ValueError(f"unknown inverse_method {method!r}; choose one of {INV_CDF_METHODS}")
