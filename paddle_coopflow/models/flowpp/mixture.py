"""Logistic-mixture CDF / log-pdf and the inverse CDF (Ho et al. 2019, Sec. 3.1).

Parameter tensors put the K mixture components on axis 1:
  logits, means, log_scales: [N, K, C, H, W];  x, y: [N, C, H, W].

The inverse CDF has no closed form. `mixture_inv_cdf` dispatches on `method`:
  "bisection": the official code's method (bracket min/max mu -+ 20 * sum_k s_k, stop at global
      max |dx| <= 1e-10 or 100 iterations); ~45 full mixture evaluations per call.
  "newton": safeguarded Newton in the logit domain (see `_newton_inv_cdf`); typically 4-11
      cheaper evaluations, and accurate to float resolution where the reference is not.
Both trace under `paddle.jit.to_static` (full_graph=True): see `_bisection_static` and
`_newton_inv_cdf`. Eager "bisection" is the official code's arithmetic (its log_softmax is
computed along the last axis, equal to float32 rounding: see `_log_weights`).

Why "newton" does not reproduce "bisection" to 1e-4 in images: the reference decides F(x) > y
with F = exp(logsumexp(...)) in float32, whose absolute error (~2e-7 near F = 1, and dependent
on the tensor layout) moves its upper-tail roots by up to ~0.2 (0.02 s); the Newton method sums
the small side of F directly and lands within a few float32 ulps of the float64 root.
Speed and accuracy of both on the paper configuration: docs/speed.md, "Flow++ sampling".
"""
from __future__ import annotations

from types import MappingProxyType
from typing import Optional

import numpy as np
import paddle
import paddle.nn.functional as F

INV_CDF_METHODS = ("bisection", "newton")

# "newton": iteration cap per dtype. Converged elements freeze, so eager mode stops early when
# all are done and returns exactly what the full count (used when tracing) returns.
# Iterations to freeze, float32, 48k elements per family: Flow++-like mixtures (K=32, log s in
# [-2.5, 2.5]) median 4, max 11; adversarial ones (log s down to the -7 clamp, separated narrow
# components, K = 2..32) median 4-13, max 23. Float64 needs a few more.
NEWTON_MAX_ITERS = MappingProxyType({"float32": 32, "float64": 48})
# Freeze once the Newton step is below this many float epsilons of the attainable resolution.
_NEWTON_TOL_EPS = 4.0


def safe_log(x: paddle.Tensor) -> paddle.Tensor:
    """log(max(x, 1e-22)): the reference guard against log(0)."""
    return paddle.log(paddle.clip(x, min=1e-22))


def _logsumexp_axis1(x: paddle.Tensor) -> paddle.Tensor:
    """logsumexp over axis 1 (the K components) of a [N, K, ...] tensor: m + log Σ_k exp(x_k − m), m = max_k x_k.

    Written with the K slices combined elementwise: Paddle's logsumexp reduces over an inner axis slowly
    (and takes at most 4-D input); the slice form is 3-5x faster forward + backward on the flow's shapes
    (K = 4 and 32; docs/paddle_notes.md, "Slow broadcasts and reductions along inner axes"). m carries no
    gradient: its contribution to the derivative cancels exactly, so the gradient is softmax(x) as for
    logsumexp. Equal to paddle.logsumexp to float32 rounding.
    """
    parts = paddle.unbind(x, axis=1)
    m = parts[0]
    for p in parts[1:]:
        m = paddle.maximum(m, p)
    m = m.detach()
    total = paddle.exp(parts[0] - m)
    for p in parts[1:]:
        total = total + paddle.exp(p - m)
    return m + paddle.log(total)


def _log_pdf_of_z(z: paddle.Tensor, log_scale: paddle.Tensor) -> paddle.Tensor:
    """log of the logistic density at z = (x - mu)/s: z - log s - 2 softplus(z)."""
    return z - log_scale - 2.0 * F.softplus(z)


def _log_weights(logits: paddle.Tensor) -> paddle.Tensor:
    """log_softmax over the K components (axis 1) of [N, K, ...] logits.

    Computed with K moved last: Paddle's log_softmax (and its gradient) along axis 1 of a 5-D tensor
    is ~6x slower than along the last axis plus the two transposes (docs/paddle_notes.md, "Slow
    broadcasts and reductions along inner axes"). Equal to F.log_softmax(logits, axis=1) to float32
    rounding (the kernels sum in another order)."""
    perm = [0] + list(range(2, logits.ndim)) + [1]
    back = [0, logits.ndim - 1] + list(range(1, logits.ndim - 1))
    return F.log_softmax(logits.transpose(perm), axis=-1).transpose(back)


def _z(x: paddle.Tensor, means: paddle.Tensor, log_scales: paddle.Tensor) -> paddle.Tensor:
    """z_k = (x - mu_k) / s_k for x [N, C, H, W] and [N, K, C, H, W] parameters.

    x is tiled over K explicitly: Paddle's implicit broadcast of [N, 1, ...] against [N, K, ...]
    (and its gradient) is ~5x slower than a tile and a same-shape subtraction (docs/paddle_notes.md)."""
    x_k = x.unsqueeze(1).tile([1, means.shape[1]] + [1] * (x.ndim - 1))
    return (x_k - means) * paddle.exp(-log_scales)


def mixture_log_pdf(x: paddle.Tensor, logits: paddle.Tensor, means: paddle.Tensor,
                    log_scales: paddle.Tensor) -> paddle.Tensor:
    """log sum_k pi_k Logistic(x; mu_k, s_k). x [N,C,H,W], params [N,K,C,H,W] -> [N,C,H,W]."""
    return _logsumexp_axis1(_log_weights(logits) + _log_pdf_of_z(_z(x, means, log_scales), log_scales))


def mixture_log_cdf(x: paddle.Tensor, logits: paddle.Tensor, means: paddle.Tensor,
                    log_scales: paddle.Tensor) -> paddle.Tensor:
    """log sum_k pi_k sigmoid((x - mu_k)/s_k), computed in log space. Shapes as mixture_log_pdf."""
    return _logsumexp_axis1(_log_weights(logits) + F.log_sigmoid(_z(x, means, log_scales)))


def mixture_log_pdf_and_cdf(x: paddle.Tensor, logits: paddle.Tensor, means: paddle.Tensor,
                            log_scales: paddle.Tensor):
    """(mixture_log_pdf, mixture_log_cdf) of the same x, sharing log pi_k and z_k (the coupling's forward
    needs both: Ho et al. 2019, Sec. 3.1, the CDF and its log-det). Shapes as mixture_log_pdf."""
    log_w, z = _log_weights(logits), _z(x, means, log_scales)
    return (_logsumexp_axis1(log_w + _log_pdf_of_z(z, log_scales)),
            _logsumexp_axis1(log_w + F.log_sigmoid(z)))


def _bisection_bracket(logits, means, log_scales):
    sum_scales = paddle.exp(log_scales).sum(axis=1, keepdim=True)
    return (means - 20.0 * sum_scales).min(axis=1), (means + 20.0 * sum_scales).max(axis=1)


def _bisection_step(x, lb, ub, y, logits, means, log_scales):
    """One reference step. F(x) > y: root is left of x (x becomes the upper bound); else right of x."""
    cur_y = paddle.exp(mixture_log_cdf(x, logits, means, log_scales))
    gt = cur_y > y
    new_x = paddle.where(gt, (x + lb) / 2.0, (x + ub) / 2.0)
    return new_x, paddle.where(gt, lb, x), paddle.where(gt, x, ub)


def _bisection_inv_cdf(y: paddle.Tensor, logits: paddle.Tensor, means: paddle.Tensor,
                       log_scales: paddle.Tensor, eps: float = 1e-10, max_iters: int = 100) -> paddle.Tensor:
    """Reference bisection. Every element keeps its own bracket; the stopping rule is global."""
    lb, ub = _bisection_bracket(logits, means, log_scales)
    x = paddle.zeros_like(y)
    if not paddle.in_dynamic_mode():
        return _bisection_static(x, lb, ub, y, logits, means, log_scales, eps, max_iters)
    for _ in range(max_iters):
        new_x, lb, ub = _bisection_step(x, lb, ub, y, logits, means, log_scales)
        diff = (new_x - x).abs().max().item()
        x = new_x
        if diff <= eps:
            break
    return x


def _bisection_static(x, lb, ub, y, logits, means, log_scales, eps: float, max_iters: int) -> paddle.Tensor:
    """The reference loop as one static while op (same arithmetic, same global stopping rule).

    Runs only while tracing (paddle.jit.to_static); the data-dependent stop becomes the loop
    condition, so the program returns bit-for-bit what eager mode returns.
    """
    def cond(i, x, lb, ub, diff):
        # Compare in float64 as eager mode does (a Python float against eps).
        return paddle.logical_and(i < max_iters, diff.astype("float64") > eps)

    def body(i, x, lb, ub, diff):
        new_x, lb, ub = _bisection_step(x, lb, ub, y, logits, means, log_scales)
        return i + 1, new_x, lb, ub, (new_x - x).abs().max()

    i = paddle.zeros([], dtype="int64")
    diff = paddle.full([], float("inf"), dtype=x.dtype)
    _, x, _, _, _ = paddle.static.nn.while_loop(cond, body, [i, x, lb, ub, diff])
    return x


def _flat_k_last(t: paddle.Tensor) -> paddle.Tensor:
    """[N, K, C, H, W] -> [N*C*H*W, K]: per-element rows, so [E, 1] operands broadcast cheaply."""
    return t.transpose([0, 2, 3, 4, 1]).reshape([-1, t.shape[1]])


def _newton_inv_cdf(y: paddle.Tensor, logits: paddle.Tensor, means: paddle.Tensor, log_scales: paddle.Tensor,
                  max_iters: Optional[int] = None) -> paddle.Tensor:
    """Safeguarded Newton on logit F(x) = logit y, inside a bracket that shrinks every step.

    - Bracket: the root lies between the smallest and largest component y-quantiles
      q_k = mu_k + s_k logit(y) (F is a convex combination of the component CDFs).
      Start at sum_k pi_k q_k.
    - Logit domain: exact in one step for a single logistic, near-linear in both tails.
    - Orientation: where y > 1/2 the iteration works with 1 - F = sum_k pi_k sigmoid(-z_k)
      (sign folded into the precomputed slopes), so the small side of F is always a sum of
      positive terms: no cancellation in the tails, unlike the reference's exp(log F).
    - Safeguard (rtsafe): take the bisection midpoint when the Newton step is not finite or
      leaves the bracket. When it stays inside but is not at least twice as short as the
      step before last (Newton creeping from one side), take a double step if that stays
      inside too (it overshoots, making the bracket two-sided and tight), else bisect.
    - Stop: an element freezes once its residual r = logit F(x) - logit y is at rounding level,
      |r| <= 4 eps (|x| d(logit F)/dx + 1 + |logit y|), i.e. its Newton step is below the
      resolution float arithmetic allows there; that last step is taken if inside the bracket.
      Eager mode stops when all are frozen; a traced program runs exactly max_iters steps (a
      fixed-count while op, no reads of tensor values) and returns the same values, because
      frozen elements never change.
    Shapes as `mixture_inv_cdf`.
    """
    dtype = "float64" if y.dtype == paddle.float64 else "float32"
    if max_iters is None:
        max_iters = NEWTON_MAX_ITERS[dtype]
    eps = float(np.finfo(dtype).eps)
    yf = y.reshape([-1, 1])
    w = F.softmax(_flat_k_last(logits), axis=-1)
    mu = _flat_k_last(means)
    log_s = _flat_k_last(log_scales)
    t = paddle.log(yf) - paddle.log(1.0 - yf)                # logit(y); 1 - y is exact for y >= 1/2
    sign = paddle.where(yf > 0.5, paddle.full_like(yf, -1.0), paddle.full_like(yf, 1.0))
    inv_s = paddle.exp(-log_s)
    slope = inv_s * sign                                       # z = slope * x - offset = sign (x - mu)/s
    offset = mu * slope
    w_inv_s = w * inv_s
    q = mu + paddle.exp(log_s) * t
    lb, ub = q.min(axis=-1, keepdim=True), q.max(axis=-1, keepdim=True)
    x = (w * q).sum(axis=-1, keepdim=True)
    t_abs1 = t.abs() + 1.0
    state = (x, lb, ub, ub - lb, ub - lb, paddle.zeros_like(yf, dtype="bool"))
    rows = (w, w_inv_s, slope, offset, t, sign, t_abs1, eps)
    if paddle.in_dynamic_mode():
        for _ in range(max_iters):
            state = _newton_step(state, *rows)
            if bool(state[-1].all().item()):
                break
    else:
        # A fixed-count while op: compact (an unrolled loop makes tracing ~10x slower) and
        # data-independent (no tensor-valued loop condition).
        def body(i, *st):
            return (i + 1, *_newton_step(st, *rows))

        i = paddle.zeros([], dtype="int64")
        state = paddle.static.nn.while_loop(lambda i, *st: i < max_iters, body, [i, *state])[1:]
    return state[0].reshape([-1] + list(y.shape[1:]))


def _newton_step(state, w, w_inv_s, slope, offset, t, sign, t_abs1, eps: float):
    """One safeguarded logit-Newton step on [E, 1] state with [E, K] oriented mixture rows."""
    x, lb, ub, dx, dxold, done = state
    p = F.sigmoid(slope * x - offset)                          # sigmoid(sign * z_k)
    small = (w * p).sum(axis=-1, keepdim=True)                 # F, or 1 - F where y > 1/2
    pdf = (w_inv_s * (p - p * p)).sum(axis=-1, keepdim=True)
    big = 1.0 - small
    resid = (paddle.log(small) - paddle.log(big) - t * sign) * sign   # logit F(x) - logit y
    # F(x) > y: the root is left of x.
    ub = paddle.where(resid > 0, x, ub)
    lb = paddle.where(resid > 0, lb, x)
    slope_g = pdf / (small * big)                              # d logit F / dx
    step = resid / slope_g
    x_newton = x - step
    in_bracket = paddle.logical_and(x_newton >= lb, x_newton <= ub)   # False for NaN
    # |step| below resolution, tested as |resid| at the rounding level of logit F (no overflow
    # where F is flat and the step huge): x is a root as far as float arithmetic can tell.
    tiny = paddle.logical_and(paddle.isfinite(resid),
                              resid.abs() <= _NEWTON_TOL_EPS * eps * (x.abs() * slope_g + t_abs1))
    newton_ok = paddle.logical_and(in_bracket, paddle.logical_or(2.0 * step.abs() <= dxold.abs(), tiny))
    # Newton creeping towards the root from one side (in the bracket but too slow): try a double
    # step, which either overshoots (making the bracket two-sided and ~|step| wide) or gets on twice
    # as fast; otherwise bisect.
    x_double = x - 2.0 * step
    double_ok = paddle.logical_and(in_bracket, paddle.logical_and(x_double >= lb, x_double <= ub))
    x_fallback = paddle.where(double_ok, x_double, 0.5 * (lb + ub))
    x_new = paddle.where(newton_ok, x_newton, paddle.where(tiny, x, x_fallback))
    x_new = paddle.where(done, x, x_new)                       # frozen elements never move
    done = paddle.logical_or(done, tiny)
    return x_new, lb, ub, x_new - x, dx, done


def mixture_inv_cdf(y: paddle.Tensor, logits: paddle.Tensor, means: paddle.Tensor, log_scales: paddle.Tensor,
                    method: str = "newton") -> paddle.Tensor:
    """x with MixLogCDF(x) = y, element-wise.

    Args:
        y: [N, C, H, W], strictly inside (0, 1).
        logits, means, log_scales: [N, K, C, H, W].
        method: one of INV_CDF_METHODS.
    Returns:
        x: [N, C, H, W]. No gradient is meant to flow through this (sampling runs under no_grad).
    """
    check_inverse_method(method)
    # Written so that NaN passes (as in the reference); only real out-of-range values raise.
    # Skipped while tracing (a static graph cannot read tensor values); the coupling clamps y.
    if paddle.in_dynamic_mode() and (bool((y <= 0).any().item()) or bool((y >= 1).any().item())):
        raise ValueError("mixture_inv_cdf needs 0 < y < 1; clamp y first (the coupling clamps to [1e-5, 1-1e-5])")
    if method == "bisection":
        return _bisection_inv_cdf(y, logits, means, log_scales)
    return _newton_inv_cdf(y, logits, means, log_scales)


def check_inverse_method(method: str) -> None:
    """Raise a one-line ValueError for a name not in INV_CDF_METHODS."""
    if method not in INV_CDF_METHODS:
        raise ValueError(f"unknown Flow.inverse_method {method!r}; choose one of {INV_CDF_METHODS}")
