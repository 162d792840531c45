"""PyTorch eager twin of paddle_coopflow's Flow++ (paddle_coopflow/models/flowpp), for benchmarks only.

Never imported by the package (which must not depend on torch): bench/bench_train_torch.py and
tests/test_bench_torch_twin.py use it to time the same CoopFlow work in both frameworks.

What it is: the same network as ``paddle_coopflow.builder.build_flow(cfg.Flow)`` — variational (or
uniform) dequantization, the 0.9-bounded logit, the multi-scale recursion of ActNorm → InvConv →
logistic-mixture coupling → Flip steps, the coupling networks (weight-normed convs, gated convs,
gated multi-head attention, LayerNorm) — written as a plain eager PyTorch model, the way the
official CoopFlow PyTorch code writes it: ``torch.nn.utils.weight_norm`` on nn.Conv2d / nn.Linear /
Rescale, matmul + softmax attention, no fused kernels, no compilation.

Same parameter names as the Paddle model (which keeps the official state-dict keys), so
:func:`copy_from_paddle` copies a Paddle flow by name; the only layout difference is nn.Linear:
Paddle stores weight_v [in, out] and weight_g [1, out], torch [out, in] and [out, 1] — both are
transposed. Same arithmetic, in the same order, as the Paddle code, so ``nll(x, noise)`` (nats per
image, a given ε for the dequantization flow), its parameter gradients and ``inverse(z)`` agree to
float rounding (:func:`cross_check`). Where the Paddle code's arithmetic departs from the official code
(torch.where instead of 0/1-mask blends in the bisection, queries scaled before the head split, the
sign of the reverse coupling's log-det), the twin follows Paddle, so both frameworks do the same
work. The mixture-CDF inverse is the Paddle flow's own choice,
``inverse_method`` 'newton' (the config default) or 'bisection' (the official code's), ported line
by line from paddle_coopflow/models/flowpp/mixture.py.

Not mirrored: Paddle's optional static-graph coupling networks (Flow.coupling_engine 'auto' /
'static'), an engine choice and not a different computation.
"""
from __future__ import annotations

import math
import warnings
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as tnn
import torch.nn.functional as tF

INV_CDF_METHODS = ("bisection", "newton")
NEWTON_MAX_ITERS = {torch.float32: 32, torch.float64: 48}
_NEWTON_TOL_EPS = 4.0

Pair = Tuple[torch.Tensor, torch.Tensor]


def weight_norm(module: tnn.Module, name: str = "weight") -> tnn.Module:
    """torch.nn.utils.weight_norm(module, dim=0) (as the official code): w = g · v / ‖v‖, one g per output unit.

    Deprecated in favour of parametrizations.weight_norm, whose parameter names differ; the legacy hook keeps
    the official names `weight_g` / `weight_v`.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return tnn.utils.weight_norm(module, name=name, dim=0)


def safe_log(x: torch.Tensor) -> torch.Tensor:
    return torch.log(x.clamp(min=1e-22))


def concat_elu(x: torch.Tensor, dim: int = 1) -> torch.Tensor:
    return tF.elu(torch.cat([x, -x], dim=dim))


# --------------------------------------------------------------------------- splits
def _even_rows(h: int, device) -> torch.Tensor:
    return (torch.arange(h, device=device) % 2 == 0).view(h, 1)


def checkerboard(x: torch.Tensor) -> Pair:
    """[N,C,H,W] -> two halves [N,C,H,W/2]: half_1[i, k] = x[i, 2k + i%2], half_2[i, k] = x[i, 2k + 1 - i%2]."""
    n, c, h, w = x.shape
    cols = x.reshape(n, c, h, w // 2, 2)
    even_cols, odd_cols = cols[..., 0], cols[..., 1]
    rows = _even_rows(h, x.device)
    return torch.where(rows, even_cols, odd_cols), torch.where(rows, odd_cols, even_cols)


def checkerboard_inverse(x: Pair) -> torch.Tensor:
    first, second = x
    n, c, h, half_w = first.shape
    rows = _even_rows(h, first.device)
    even_cols = torch.where(rows, first, second)
    odd_cols = torch.where(rows, second, first)
    return torch.stack([even_cols, odd_cols], dim=-1).reshape(n, c, h, 2 * half_w)


def squeeze(x: torch.Tensor) -> torch.Tensor:
    """[N,C,H,W] -> [N,4C,H/2,W/2], channel 4c + 2·di + dj."""
    n, c, h, w = x.shape
    x = x.reshape(n, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4)
    return x.reshape(n, 4 * c, h // 2, w // 2)


def unsqueeze(x: torch.Tensor) -> torch.Tensor:
    n, c4, h, w = x.shape
    x = x.reshape(n, c4 // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3)
    return x.reshape(n, c4 // 4, 2 * h, 2 * w)


# --------------------------------------------------------------------------- logistic mixtures
def mixture_log_pdf(x, logits, means, log_scales):
    """log Σ_k π_k Logistic(x; μ_k, s_k); x [N,C,H,W], parameters [N,K,C,H,W] -> [N,C,H,W]."""
    z = (x.unsqueeze(1) - means) * torch.exp(-log_scales)
    log_ps = tF.log_softmax(logits, dim=1) + (z - log_scales - 2.0 * tF.softplus(z))
    return torch.logsumexp(log_ps, dim=1)


def mixture_log_cdf(x, logits, means, log_scales):
    """log Σ_k π_k σ((x - μ_k)/s_k)."""
    log_ps = tF.log_softmax(logits, dim=1) + tF.logsigmoid((x.unsqueeze(1) - means) * torch.exp(-log_scales))
    return torch.logsumexp(log_ps, dim=1)


def _bisection_inv_cdf(y, logits, means, log_scales, eps: float = 1e-10, max_iters: int = 100):
    """The official bisection: bracket min/max μ ∓ 20 Σ s, global stop at max |Δx| ≤ eps or max_iters."""
    sum_scales = torch.exp(log_scales).sum(dim=1, keepdim=True)
    lb = (means - 20.0 * sum_scales).amin(dim=1)
    ub = (means + 20.0 * sum_scales).amax(dim=1)
    x = torch.zeros_like(y)
    for _ in range(max_iters):
        gt = torch.exp(mixture_log_cdf(x, logits, means, log_scales)) > y
        new_x = torch.where(gt, (x + lb) / 2.0, (x + ub) / 2.0)
        lb, ub = torch.where(gt, lb, x), torch.where(gt, x, ub)
        diff = (new_x - x).abs().max().item()
        x = new_x
        if diff <= eps:
            break
    return x


def _flat_k_last(t: torch.Tensor) -> torch.Tensor:
    return t.permute(0, 2, 3, 4, 1).reshape(-1, t.shape[1])


def _newton_inv_cdf(y, logits, means, log_scales, max_iters: Optional[int] = None):
    """Safeguarded Newton on logit F(x) = logit y (paddle_coopflow/models/flowpp/mixture.py `_newton_inv_cdf`)."""
    if max_iters is None:
        max_iters = NEWTON_MAX_ITERS[y.dtype]
    eps = float(torch.finfo(y.dtype).eps)
    yf = y.reshape(-1, 1)
    w = torch.softmax(_flat_k_last(logits), dim=-1)
    mu, ls = _flat_k_last(means), _flat_k_last(log_scales)
    t = torch.log(yf) - torch.log(1.0 - yf)
    sign = torch.where(yf > 0.5, torch.full_like(yf, -1.0), torch.full_like(yf, 1.0))
    inv_s = torch.exp(-ls)
    slope = inv_s * sign
    offset = mu * slope
    w_inv_s = w * inv_s
    q = mu + torch.exp(ls) * t
    lb, ub = q.amin(dim=-1, keepdim=True), q.amax(dim=-1, keepdim=True)
    x = (w * q).sum(dim=-1, keepdim=True)
    t_abs1 = t.abs() + 1.0
    dx = dxold = ub - lb
    done = torch.zeros_like(yf, dtype=torch.bool)
    for _ in range(max_iters):
        p = torch.sigmoid(slope * x - offset)
        small = (w * p).sum(dim=-1, keepdim=True)
        pdf = (w_inv_s * (p - p * p)).sum(dim=-1, keepdim=True)
        big = 1.0 - small
        resid = (torch.log(small) - torch.log(big) - t * sign) * sign
        ub = torch.where(resid > 0, x, ub)
        lb = torch.where(resid > 0, lb, x)
        slope_g = pdf / (small * big)
        step = resid / slope_g
        x_newton = x - step
        in_bracket = (x_newton >= lb) & (x_newton <= ub)
        tiny = torch.isfinite(resid) & (resid.abs() <= _NEWTON_TOL_EPS * eps * (x.abs() * slope_g + t_abs1))
        newton_ok = in_bracket & ((2.0 * step.abs() <= dxold.abs()) | tiny)
        x_double = x - 2.0 * step
        double_ok = in_bracket & (x_double >= lb) & (x_double <= ub)
        x_fallback = torch.where(double_ok, x_double, 0.5 * (lb + ub))
        x_new = torch.where(newton_ok, x_newton, torch.where(tiny, x, x_fallback))
        x_new = torch.where(done, x, x_new)
        done = done | tiny
        x, dx, dxold = x_new, x_new - x, dx
        if bool(done.all().item()):
            break
    return x.reshape(y.shape)


def mixture_inv_cdf(y, logits, means, log_scales, method: str = "newton"):
    """x with MixLogCDF(x) = y, y in (0, 1): 'bisection' (official) or 'newton' (config default)."""
    if method not in INV_CDF_METHODS:
        raise ValueError(f"unknown inverse_method {method!r}; choose one of {INV_CDF_METHODS}")
    if bool((y <= 0).any().item()) or bool((y >= 1).any().item()):
        raise ValueError("mixture_inv_cdf needs 0 < y < 1")
    if method == "bisection":
        return _bisection_inv_cdf(y, logits, means, log_scales)
    return _newton_inv_cdf(y, logits, means, log_scales)


# --------------------------------------------------------------------------- coupling network
class WNConv2d(tnn.Module):
    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, padding: int):
        super().__init__()
        self.conv = weight_norm(tnn.Conv2d(in_channels, out_channels, kernel_size, padding=padding))

    def forward(self, x):
        return self.conv(x)


class Rescale(tnn.Module):
    """Per-channel scale (weight-normed by the caller: weight_g, weight_v [C, 1, 1])."""

    def __init__(self, num_channels: int):
        super().__init__()
        self.weight = tnn.Parameter(torch.ones(num_channels, 1, 1))

    def forward(self, x):
        return self.weight * x


class GatedConv(tnn.Module):
    def __init__(self, num_channels: int, drop_prob: float = 0.0, aux_channels: Optional[int] = None):
        super().__init__()
        self.conv = WNConv2d(2 * num_channels, num_channels, 3, 1)
        self.drop = tnn.Dropout2d(drop_prob)
        self.gate = WNConv2d(2 * num_channels, 2 * num_channels, 1, 0)
        self.aux_conv = WNConv2d(2 * aux_channels, num_channels, 1, 0) if aux_channels is not None else None

    def forward(self, x, aux=None):
        x = self.conv(concat_elu(x))
        if aux is not None:
            x = x + self.aux_conv(concat_elu(aux))
        a, b = self.gate(self.drop(concat_elu(x))).chunk(2, dim=1)
        return a * torch.sigmoid(b)


def positional_encoding(seq_len: int, num_channels: int, dtype, device) -> torch.Tensor:
    n = num_channels // 2
    position = torch.arange(seq_len, dtype=dtype, device=device).unsqueeze(1)
    increment = math.log(1e4) / max(n - 1, 1)
    inv_timescales = torch.exp(torch.arange(n, dtype=dtype, device=device) * -increment).unsqueeze(0)
    scaled = position * inv_timescales
    enc = torch.cat([torch.sin(scaled), torch.cos(scaled)], dim=1)
    if num_channels % 2:
        enc = torch.cat([enc, torch.zeros(seq_len, 1, dtype=dtype, device=device)], dim=1)
    return enc.unsqueeze(0)


class GatedAttn(tnn.Module):
    """Multi-head self-attention over all pixels + WN-Linear GLU gate; x [N, H, W, C] -> same."""

    def __init__(self, d_model: int, num_heads: int = 4, drop_prob: float = 0.0):
        super().__init__()
        self.d_model, self.num_heads, self.drop_prob = d_model, num_heads, drop_prob
        self.in_proj = weight_norm(tnn.Linear(d_model, 3 * d_model, bias=False))
        self.gate = weight_norm(tnn.Linear(d_model, 2 * d_model))

    def _split_heads(self, t):
        n, length, c = t.shape
        return t.reshape(n, length, self.num_heads, c // self.num_heads).transpose(1, 2)

    def forward(self, x):
        n, h, w, c = x.shape
        x = x.reshape(n, h * w, c) + positional_encoding(h * w, c, x.dtype, x.device)
        k, v, q = self.in_proj(x).split([c, c, c], dim=-1)   # memory (k, v), then queries
        q = q * (c // self.num_heads) ** -0.5
        q, k, v = self._split_heads(q), self._split_heads(k), self._split_heads(v)
        weights = torch.softmax(torch.matmul(q, k.transpose(-2, -1)), dim=-1)
        weights = tF.dropout(weights, p=self.drop_prob, training=self.training)
        out = torch.matmul(weights, v).transpose(1, 2).reshape(n, h, w, c)
        a, b = self.gate(out).chunk(2, dim=-1)
        return a * torch.sigmoid(b)


class ConvAttnBlock(tnn.Module):
    def __init__(self, num_channels: int, drop_prob: float, use_attn: bool, aux_channels: Optional[int]):
        super().__init__()
        self.conv = GatedConv(num_channels, drop_prob, aux_channels)
        self.norm_1 = tnn.LayerNorm(num_channels, eps=1e-5)
        if use_attn:
            self.attn = GatedAttn(num_channels, drop_prob=drop_prob)
            self.norm_2 = tnn.LayerNorm(num_channels, eps=1e-5)
        else:
            self.attn = None

    def forward(self, x, aux=None):
        x = self.conv(x, aux) + x
        x = self.norm_1(x.permute(0, 2, 3, 1))
        if self.attn is not None:
            x = self.norm_2(self.attn(x) + x)
        return x.permute(0, 3, 1, 2)


class NN(tnn.Module):
    """Coupling conditioner: x_id [N, C, H, W] -> a, b [N, C, H, W]; π, μ, log s [N, K, C, H, W]."""

    def __init__(self, in_channels: int, mid_channels: int, num_blocks: int, num_components: int,
                 drop_prob: float, use_attn: bool = True, aux_channels: Optional[int] = None):
        super().__init__()
        self.k = num_components
        self.in_conv = WNConv2d(in_channels, mid_channels, 3, 1)
        self.mid_convs = tnn.ModuleList([ConvAttnBlock(mid_channels, drop_prob, use_attn, aux_channels)
                                         for _ in range(num_blocks)])
        self.out_conv = WNConv2d(mid_channels, in_channels * (2 + 3 * num_components), 3, 1)
        self.rescale = weight_norm(Rescale(in_channels))

    def forward(self, x, aux=None):
        n, c, h, w = x.shape
        x = self.in_conv(x)
        for block in self.mid_convs:
            x = block(x, aux)
        x = self.out_conv(x).reshape(n, 2 + 3 * self.k, c, h, w)
        a, b, pi, mu, log_s = x.split([1, 1, self.k, self.k, self.k], dim=1)
        a = self.rescale(torch.tanh(a.squeeze(1)))
        return a, b.squeeze(1), pi, mu, log_s.clamp(min=-7.0)


# --------------------------------------------------------------------------- flow layers
def _sum_per_sample(t):
    return t.reshape(t.shape[0], -1).sum(dim=1)


class ActNorm(tnn.Module):
    """y = (x - mean) · inv_std on the concatenated pair; data-initialised on the first train-mode call."""

    def __init__(self, num_channels: int, eps: float = 1e-6):
        super().__init__()
        c = 2 * num_channels
        self.mean = tnn.Parameter(torch.zeros(1, c, 1, 1))
        self.inv_std = tnn.Parameter(torch.zeros(1, c, 1, 1))
        self.register_buffer("is_initialized", torch.zeros(1))
        self.eps = eps

    @torch.no_grad()
    def initialize_parameters(self, x):
        mean = x.mean(dim=(0, 2, 3), keepdim=True)
        var = ((x - mean) ** 2).mean(dim=(0, 2, 3), keepdim=True)
        self.mean.copy_(mean)
        self.inv_std.copy_(1.0 / (var.sqrt() + self.eps))
        self.is_initialized.fill_(1.0)

    def forward(self, x: Pair, sldj, reverse: bool = False):
        h = torch.cat(x, dim=1)
        if self.training and not bool(self.is_initialized.item() > 0):
            self.initialize_parameters(h)
        ldj = torch.log(self.inv_std).sum() * (h.shape[2] * h.shape[3])
        if reverse:
            h = h / self.inv_std + self.mean
            sldj = sldj - ldj
        else:
            h = (h - self.mean) * self.inv_std
            sldj = sldj + ldj
        return h.chunk(2, dim=1), sldj


class InvConv(tnn.Module):
    """Invertible 1×1 conv on the pair; W [2c, 2c], the reverse uses W⁻¹ computed in float64."""

    def __init__(self, num_channels: int):
        super().__init__()
        self.num_channels = c = 2 * num_channels
        self.weight = tnn.Parameter(torch.eye(c) + 1e-3 * torch.randn(c, c))

    def forward(self, x: Pair, sldj, reverse: bool = False):
        h = torch.cat(x, dim=1)
        ldj = torch.linalg.slogdet(self.weight)[1] * (h.shape[2] * h.shape[3])
        if reverse:
            weight = torch.linalg.inv(self.weight.double()).to(h.dtype)
            sldj = sldj - ldj
        else:
            weight = self.weight
            sldj = sldj + ldj
        h = tF.conv2d(h, weight.view(self.num_channels, self.num_channels, 1, 1))
        return h.chunk(2, dim=1), sldj


class Coupling(tnn.Module):
    """Logistic-mixture CDF coupling: out = (logit MixLogCDF(x_change) + b) · exp(a)."""

    def __init__(self, in_channels: int, mid_channels: int, num_blocks: int, num_components: int,
                 drop_prob: float, use_attn: bool = True, aux_channels: Optional[int] = None,
                 inverse_method: str = "newton"):
        super().__init__()
        self.nn = NN(in_channels, mid_channels, num_blocks, num_components, drop_prob, use_attn, aux_channels)
        self.inverse_method = inverse_method

    def forward(self, x: Pair, sldj, reverse: bool = False, aux=None):
        x_change, x_id = x
        a, b, pi, mu, log_s = self.nn(x_id, aux)
        if reverse:
            v = x_change * torch.exp(-a) - b
            y1 = torch.sigmoid(v).clamp(1e-5, 1.0 - 1e-5)
            out = mixture_inv_cdf(y1, pi, mu, log_s, method=self.inverse_method)
            ldj = a + tF.softplus(v) + tF.softplus(-v) + mixture_log_pdf(out, pi, mu, log_s)
            sldj = sldj - _sum_per_sample(ldj)
        else:
            y1 = torch.exp(mixture_log_cdf(x_change, pi, mu, log_s))
            out = (-safe_log(1.0 / y1 - 1.0) + b) * torch.exp(a)
            ldj = mixture_log_pdf(x_change, pi, mu, log_s) - safe_log(y1) - safe_log(1.0 - y1) + a
            sldj = sldj + _sum_per_sample(ldj)
        return (out, x_id), sldj


class Flip(tnn.Module):
    def forward(self, x: Pair, sldj, reverse: bool = False):
        return (x[1], x[0]), sldj


def _step(channels: int, coupling_kwargs: dict) -> list:
    return [ActNorm(channels), InvConv(channels), Coupling(channels, **coupling_kwargs), Flip()]


class FlowScale(tnn.Module):
    """One scale: channel-wise steps, checkerboard steps, squeeze, keep half, recurse (official `_FlowStep`)."""

    def __init__(self, scales: Sequence[Tuple[int, int]], in_shape: Tuple[int, int, int], coupling_kwargs: dict):
        super().__init__()
        c, h, w = in_shape
        num_channelwise, num_checkerboard = scales[0]
        channels = [m for _ in range(num_channelwise) for m in _step(c // 2, coupling_kwargs)]
        checkers = [m for _ in range(num_checkerboard) for m in _step(c, coupling_kwargs)]
        self.channels = tnn.ModuleList(channels) if channels else None
        self.checkers = tnn.ModuleList(checkers) if checkers else None
        self.next = FlowScale(scales[1:], (2 * c, h // 2, w // 2), coupling_kwargs) if len(scales) > 1 else None

    @staticmethod
    def _run(layers, x, sldj, reverse: bool):
        for layer in (reversed(layers) if reverse else layers):
            x, sldj = layer(x, sldj, reverse=reverse)
        return x, sldj

    def _recurse(self, x, sldj, reverse: bool):
        x, x_split = squeeze(x).chunk(2, dim=1)
        x, sldj = self.next(x, sldj, reverse)
        return unsqueeze(torch.cat([x, x_split], dim=1)), sldj

    def forward(self, x, sldj, reverse: bool = False):
        if reverse and self.next is not None:
            x, sldj = self._recurse(x, sldj, reverse)
        parts = [(self.channels, lambda t: t.chunk(2, dim=1), lambda p: torch.cat(p, dim=1)),
                 (self.checkers, checkerboard, checkerboard_inverse)]
        for layers, split, merge in (reversed(parts) if reverse else parts):
            if layers is not None:
                pair, sldj = self._run(layers, split(x), sldj, reverse)
                x = merge(pair)
        if not reverse and self.next is not None:
            x, sldj = self._recurse(x, sldj, reverse)
        return x, sldj


class Dequantization(tnn.Module):
    """Variational dequantization: ε ~ N(0, I) through a 4-step conditional flow, u = σ(h)."""

    def __init__(self, in_shape, mid_channels: int, num_blocks: int, num_components: int, use_attn: bool,
                 drop_prob: float, num_flows: int = 4, aux_channels: int = 32, inverse_method: str = "newton"):
        super().__init__()
        c = in_shape[0]
        self.aux_conv = tnn.Sequential(tnn.Conv2d(2 * c, aux_channels, 3, padding=1),
                                       *[GatedConv(aux_channels, drop_prob) for _ in range(3)])
        flows = []
        for _ in range(num_flows):
            flows += [ActNorm(c), InvConv(c),
                      Coupling(c, mid_channels, num_blocks, num_components, drop_prob, use_attn=use_attn,
                               aux_channels=aux_channels, inverse_method=inverse_method),
                      Flip()]
        self.flows = tnn.ModuleList(flows)

    def forward(self, x, sldj, eps=None):
        if eps is None:
            eps = torch.randn_like(x)
        eps_nll = 0.5 * (eps ** 2 + math.log(2 * math.pi))
        aux = self.aux_conv(torch.cat(checkerboard(x - 0.5), dim=1))
        h = checkerboard(eps)
        for flow in self.flows:
            if isinstance(flow, Coupling):
                h, sldj = flow(h, sldj, aux=aux)
            else:
                h, sldj = flow(h, sldj)
        u = torch.sigmoid(checkerboard_inverse(h))
        sigmoid_ldj = safe_log(u) + safe_log(1.0 - u)
        sldj = sldj + _sum_per_sample(eps_nll + sigmoid_ldj)
        return (x * 255.0 + u) / 256.0, sldj


class TorchFlowPlusPlus(tnn.Module):
    """Flow++ on images in [-1, 1]; arguments and defaults as paddle_coopflow.models.FlowPlusPlus (no coupling_engine).

    Like FlowPlusPlus and the config's Flow.inverse_method, the default inverse_method is 'newton'.

    nll(x, noise) -> [N] nats; inverse(z) -> images (no grad); data_init(x) initialises the ActNorms.
    """

    def __init__(self, in_shape=(3, 32, 32), scales=((0, 4), (2, 3)), mid_channels: int = 96, num_blocks: int = 10,
                 num_components: int = 32, num_dequant_blocks: int = 2, use_attn: bool = True,
                 drop_prob: float = 0.2, undo_bound: bool = False, inverse_method: str = "newton",
                 num_dequant_components: Optional[int] = None):
        super().__init__()
        if inverse_method not in INV_CDF_METHODS:
            raise ValueError(f"unknown inverse_method {inverse_method!r}; choose one of {INV_CDF_METHODS}")
        self.in_shape = self.z_shape = tuple(int(v) for v in in_shape)
        scales = tuple((int(a), int(b)) for a, b in scales)
        self.undo_bound = bool(undo_bound)
        self.register_buffer("bounds", torch.tensor([0.9]))
        k_dequant = num_components if num_dequant_components is None else int(num_dequant_components)
        self.dequant_flows = (Dequantization(self.in_shape, mid_channels, num_dequant_blocks, k_dequant, use_attn,
                                             drop_prob, inverse_method=inverse_method)
                              if num_dequant_blocks > 0 else None)
        self.flows = FlowScale(scales, self.in_shape, dict(
            mid_channels=mid_channels, num_blocks=num_blocks, num_components=num_components,
            drop_prob=drop_prob, use_attn=use_attn, inverse_method=inverse_method))

    @classmethod
    def from_config(cls, cfg: Any) -> "TorchFlowPlusPlus":
        """From the config's Flow section (or a dict); the same field names as the Paddle flow."""
        import inspect

        names = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
        get = cfg.get if isinstance(cfg, dict) else (lambda k, d=None: getattr(cfg, k, d))
        return cls(**{k: get(k) for k in names if get(k) is not None})

    @property
    def num_dims(self) -> int:
        return int(np.prod(self.in_shape))

    def preprocess(self, x, noise=None):
        """x in [-1, 1] -> (logits l, sldj): dequantize, then l = logit(0.05 + 0.9 y) with its log-det."""
        x = (x + 1.0) / 2.0
        sldj = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        if self.dequant_flows is not None:
            y, sldj = self.dequant_flows(x, sldj, eps=noise)
        else:
            u = torch.rand_like(x) if noise is None else noise
            y = (x * 255.0 + u) / 256.0
        b = self.bounds.to(y.dtype)
        yb = ((2.0 * y - 1.0) * b + 1.0) / 2.0
        l = torch.log(yb) - torch.log(1.0 - yb)
        ldj = tF.softplus(l) + tF.softplus(-l) - tF.softplus(torch.log(1.0 - b) - torch.log(b))
        return l, sldj + _sum_per_sample(ldj)

    def forward(self, x, noise=None):
        l, sldj = self.preprocess(x, noise)
        return self.flows(l, sldj)

    def nll(self, x, noise=None):
        """Per-image NLL in nats [N]: -(Σ log N(z) - D log 256 + sldj)."""
        z, sldj = self.forward(x, noise)
        prior_ll = _sum_per_sample(-0.5 * (z ** 2 + math.log(2 * math.pi)))
        return -(prior_ll - self.num_dims * math.log(256.0) + sldj)

    @torch.no_grad()
    def inverse(self, z):
        """z [N, C, H, W] -> 2 σ(l) - 1 (÷ 0.9 with undo_bound)."""
        l, _ = self.flows(z, torch.zeros(z.shape[0], dtype=z.dtype, device=z.device), reverse=True)
        img = 2.0 * torch.sigmoid(l) - 1.0
        return img / self.bounds.to(img.dtype) if self.undo_bound else img

    def data_init(self, x) -> None:
        """ActNorm data init: one train-mode forward under no_grad (mode restored)."""
        was = self.training
        self.train()
        with torch.no_grad():
            self(x)
        self.train(was)


# --------------------------------------------------------------------------- Paddle <-> torch
def _linear_keys(tflow: tnn.Module) -> set:
    """State-dict keys of nn.Linear weights (stored transposed in Paddle)."""
    return {f"{name}.{p}" for name, m in tflow.named_modules() if isinstance(m, tnn.Linear)
            for p in ("weight", "weight_g", "weight_v")}


def _check_pair(paddle_flow, torch_flow) -> None:
    if isinstance(paddle_flow, tnn.Module) or not isinstance(torch_flow, tnn.Module):
        raise TypeError("expected (paddle_flow, torch_flow), Paddle model first")


def copy_from_paddle(paddle_flow, torch_flow: TorchFlowPlusPlus) -> TorchFlowPlusPlus:
    """Copy every parameter and persistable buffer of a Paddle FlowPlusPlus into the twin by name.

    Linear weight_g / weight_v are transposed ([in, out] -> [out, in]); raises on any name or shape mismatch.
    """
    _check_pair(paddle_flow, torch_flow)
    src: Dict[str, np.ndarray] = {k: v.numpy() for k, v in paddle_flow.state_dict().items()}
    dst = torch_flow.state_dict()
    if set(src) != set(dst):
        raise ValueError(f"parameter names differ: only Paddle {sorted(set(src) - set(dst))}, "
                         f"only torch {sorted(set(dst) - set(src))}")
    linear = _linear_keys(torch_flow)
    out = {}
    for k, v in src.items():
        v = v.T if k in linear else v
        if tuple(dst[k].shape) != v.shape:
            raise ValueError(f"{k}: Paddle shape {v.shape} (as torch layout) vs torch {tuple(dst[k].shape)}")
        out[k] = torch.from_numpy(np.ascontiguousarray(v)).to(dst[k].dtype)
    torch_flow.load_state_dict(out)
    return torch_flow


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / (np.abs(b).max() + 1e-12))


def cross_check(paddle_flow, torch_flow: TorchFlowPlusPlus, x: np.ndarray, noise: np.ndarray,
                z: np.ndarray) -> Dict[str, float]:
    """Max abs (and relative) differences between a Paddle flow and its twin, both in eval mode.

    nll(x, noise) per image; the gradient of mean nll per parameter (Linear ones transposed back; `grad_rel`
    is the worst per-parameter max|Δg| / max|g|); inverse(z). Modes are restored and gradients cleared.
    x: [N, C, H, W] in [-1, 1]; noise: the dequantization draw (ε ~ N(0, I), or u ~ U(0, 1) for uniform); z: latents.
    """
    import paddle

    _check_pair(paddle_flow, torch_flow)
    modes = paddle_flow.training, torch_flow.training
    paddle_flow.eval()
    torch_flow.eval()
    try:
        paddle_flow.clear_gradients()
        nll_p = paddle_flow.nll(paddle.to_tensor(x), paddle.to_tensor(noise))
        nll_p.mean().backward()
        grads_p = {n: p.grad.numpy() for n, p in paddle_flow.named_parameters() if p.grad is not None}
        paddle_flow.clear_gradients()
        inv_p = paddle_flow.inverse(paddle.to_tensor(z)).numpy()

        torch_flow.zero_grad(set_to_none=True)
        nll_t = torch_flow.nll(torch.from_numpy(x.copy()), torch.from_numpy(noise.copy()))
        nll_t.mean().backward()
        grads_t = {n: p.grad.numpy() for n, p in torch_flow.named_parameters() if p.grad is not None}
        torch_flow.zero_grad(set_to_none=True)
        inv_t = torch_flow.inverse(torch.from_numpy(z.copy())).numpy()
    finally:
        paddle_flow.train() if modes[0] else paddle_flow.eval()
        torch_flow.train(modes[1])
    if set(grads_p) != set(grads_t):
        raise ValueError(f"gradients for different parameters: {sorted(set(grads_p) ^ set(grads_t))}")
    linear = _linear_keys(torch_flow)
    grads_p = {k: (v.T if k in linear else v) for k, v in grads_p.items()}
    nll_p, nll_t = nll_p.numpy(), nll_t.detach().numpy()
    return {"nll_abs": float(np.abs(nll_p - nll_t).max()), "nll_rel": _rel(nll_p, nll_t),
            "grad_abs": max(float(np.abs(grads_p[k] - grads_t[k]).max()) for k in grads_t),
            "grad_rel": max(_rel(grads_p[k], grads_t[k]) for k in grads_t),
            "n_grads": len(grads_t),
            "inverse_abs": float(np.abs(inv_p - inv_t).max())}
