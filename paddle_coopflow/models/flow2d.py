"""A small normalizing flow q_α for 2-D toy data (the paper's 2-D experiments, Figure 2; the paper gives no architecture).

Our choice (labelled as such in docs/toy2d.md): RealNVP-style **affine coupling** layers that
alternate the transformed coordinate, on a standard normal base N(0, I₂).

Layer k transforms coordinate d = k mod 2 conditioned on the other one, c = 1 − d:

    density direction (x → z):   z_d = x_d · exp(s(x_c)) + t(x_c),   z_c = x_c,   log|det| = s(x_c)
    generator direction (z → x): x_d = (z_d − t(z_c)) · exp(−s(z_c))

s, t come from one MLP conditioner 1 → hidden → hidden → 2 (swish). The log-scale is bounded,
s = S · tanh(raw / S) with S = `scale_bound`, so one layer can scale by at most e^S: without the
bound an early, badly fitted layer can blow exp(s) up and the NLL goes to NaN. The last linear of
every conditioner starts at zero, so a fresh flow is the identity map and q_α starts as N(0, I).

Why affine couplings and not Flow++'s logistic-mixture couplings: the inverse is closed form (no
bisection), the log-det is exact and cheap, and an imperfect q_α is what the experiment studies
(the Langevin flow is meant to correct it).

Densities are continuous (nats), with no dequantization: 2-D data are real-valued.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import paddle
import paddle.nn as nn

__all__ = ["AffineCoupling2D", "Flow2D"]

_LOG_2PI = math.log(2.0 * math.pi)


def _swish(x: paddle.Tensor) -> paddle.Tensor:
    return x * paddle.nn.functional.sigmoid(x)


class AffineCoupling2D(nn.Layer):
    """One affine coupling on 2-D points: transforms coordinate `dim` given the other.

    Args:
        dim: 0 or 1, the coordinate that is transformed.
        hidden: width of the conditioner MLP.
        scale_bound: S, the bound on |log-scale| per layer.
    """

    def __init__(self, dim: int, hidden: int = 64, scale_bound: float = 3.0):
        super().__init__()
        if dim not in (0, 1):
            raise ValueError(f"AffineCoupling2D dim must be 0 or 1, got {dim}")
        self.dim = dim
        self.scale_bound = float(scale_bound)
        self.fc1 = nn.Linear(1, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        zero = paddle.ParamAttr(initializer=nn.initializer.Constant(0.0))
        self.out = nn.Linear(hidden, 2, weight_attr=zero, bias_attr=zero)  # identity at init

    def _scale_shift(self, cond: paddle.Tensor) -> Tuple[paddle.Tensor, paddle.Tensor]:
        """cond [N, 1] → (log-scale s [N, 1], shift t [N, 1])."""
        h = self.out(_swish(self.fc2(_swish(self.fc1(cond)))))
        s = self.scale_bound * paddle.tanh(h[:, 0:1] / self.scale_bound)
        return s, h[:, 1:2]

    def _split(self, x: paddle.Tensor) -> Tuple[paddle.Tensor, paddle.Tensor]:
        """x [N, 2] → (transformed column [N, 1], conditioning column [N, 1])."""
        return x[:, self.dim:self.dim + 1], x[:, 1 - self.dim:2 - self.dim]

    def _join(self, moved: paddle.Tensor, cond: paddle.Tensor) -> paddle.Tensor:
        return paddle.concat([moved, cond] if self.dim == 0 else [cond, moved], axis=1)

    def forward(self, x: paddle.Tensor) -> Tuple[paddle.Tensor, paddle.Tensor]:
        """Density direction. x [N, 2] → (z [N, 2], log|det ∂z/∂x| [N])."""
        xd, xc = self._split(x)
        s, t = self._scale_shift(xc)
        return self._join(xd * paddle.exp(s) + t, xc), s[:, 0]

    def inverse(self, z: paddle.Tensor) -> paddle.Tensor:
        """Generator direction. z [N, 2] → x [N, 2]."""
        zd, zc = self._split(z)
        s, t = self._scale_shift(zc)
        return self._join((zd - t) * paddle.exp(-s), zc)


class Flow2D(nn.Layer):
    """q_α for 2-D points: `num_layers` alternating affine couplings on a N(0, I₂) base.

    Args:
        hidden: conditioner MLP width.
        num_layers: number of coupling layers (even numbers move both coordinates equally often).
        scale_bound: bound S on each layer's log-scale (see module docstring).

    The CoopFlow trainer uses `inverse(z)`, `nll(x)` and `z_shape` (paddle_coopflow/coopflow.py).
    """

    z_shape = (2,)

    def __init__(self, hidden: int = 64, num_layers: int = 8, scale_bound: float = 3.0):
        super().__init__()
        if num_layers < 1 or hidden < 1:
            raise ValueError(f"Flow2D needs hidden >= 1 and num_layers >= 1, got {hidden}, {num_layers}")
        self.layers = nn.LayerList([AffineCoupling2D(k % 2, hidden, scale_bound) for k in range(num_layers)])

    def forward(self, x: paddle.Tensor) -> Tuple[paddle.Tensor, paddle.Tensor]:
        """x [N, 2] → (z [N, 2], log|det ∂z/∂x| [N])."""
        logdet = paddle.zeros([x.shape[0]], dtype=x.dtype)
        z = x
        for layer in self.layers:
            z, ld = layer(z)
            logdet = logdet + ld
        return z, logdet

    def inverse(self, z: paddle.Tensor) -> paddle.Tensor:
        """z [N, 2] → x [N, 2] (the generator g_α)."""
        x = z
        for layer in reversed(self.layers):
            x = layer.inverse(x)
        return x

    def log_prob(self, x: paddle.Tensor) -> paddle.Tensor:
        """log q_α(x) [N] in nats: log N(z; 0, I) + log|det ∂z/∂x|."""
        z, logdet = self.forward(x)
        return -0.5 * (z * z).sum(axis=1) - _LOG_2PI + logdet  # 2-D: (D/2)·log 2π = log 2π

    def nll(self, x: paddle.Tensor) -> paddle.Tensor:
        """−log q_α(x) [N] in nats (continuous density, no dequantization)."""
        return -self.log_prob(x)

    def sample(self, n: int, z: Optional[paddle.Tensor] = None) -> paddle.Tensor:
        """x = g_α(z) [n, 2] with z ~ N(0, I) drawn here (paddle.seed controls it) unless given."""
        if z is None:
            z = paddle.randn([n, 2])
        return self.inverse(z)
