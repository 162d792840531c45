"""Energy-based models f_θ(x) (SPEC §2).

Every network returns f_θ(x) of shape [N]: the *negative* energy, which training raises on data.
The image EBMs end in a conv to 100 channels at 1×1 and sum those channels, as the official code does.

Porting notes:
- swish is written as x·sigmoid(x) so that double backward exists (the differentiable Langevin chain
  of SPEC §3.3 backprops through ∇ₓf).
- The output is flattened per sample and summed, never squeezed, so N = 1 gives shape [1].
- Initialisation is PyTorch's default for Conv2d/Linear, U(±1/sqrt(fan_in)) for weight and bias,
  so a freshly built model has the same statistics as the official one.
- Sub-layer names reproduce the official state-dict keys (`f.0.weight`, `f.2.conv1.weight`, ...,
  `f.5.weight`), so official checkpoints convert by name.
"""
from __future__ import annotations

import math
from typing import Any, List

import paddle
import paddle.nn as nn
import paddle.nn.functional as F

__all__ = ["Swish", "EBMBlock", "EBMRes", "EBMPlain", "EBMMLP", "build_ebm", "swish"]


def swish(x: paddle.Tensor) -> paddle.Tensor:
    """x·sigmoid(x), composed from primitives so second derivatives exist."""
    return x * F.sigmoid(x)


class Swish(nn.Layer):
    """Layer form of :func:`swish` (holds no parameters, so it keeps Sequential indices aligned)."""

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        return swish(x)


def _torch_default_attrs(fan_in: int):
    """Weight/bias ParamAttrs for PyTorch's default init: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).

    (kaiming_uniform with a=sqrt(5) reduces to exactly this bound for the weight.)
    """
    bound = 1.0 / math.sqrt(fan_in)
    init = nn.initializer.Uniform(-bound, bound)
    return paddle.ParamAttr(initializer=init), paddle.ParamAttr(initializer=init)


def _conv(c_in: int, c_out: int, k: int, stride: int = 1, padding: int = 0) -> nn.Conv2D:
    w, b = _torch_default_attrs(c_in * k * k)
    return nn.Conv2D(c_in, c_out, k, stride=stride, padding=padding, weight_attr=w, bias_attr=b)


def _linear(d_in: int, d_out: int) -> nn.Linear:
    w, b = _torch_default_attrs(d_in)
    return nn.Linear(d_in, d_out, weight_attr=w, bias_attr=b)


class EBMBlock(nn.Layer):
    """Residual block of EBM_res: avgpool2(swish(conv2(swish(conv1 x))) + swish(res x)).

    Args:
        n_in: input channels; conv1 keeps n_in, conv2 and the skip conv map to n_out.
        n_out: output channels.

    Shapes: [N, n_in, H, W] → [N, n_out, H/2, W/2].
    """

    def __init__(self, n_in: int, n_out: int):
        super().__init__()
        self.conv1 = _conv(n_in, n_in, 3, 1, 1)
        self.conv2 = _conv(n_in, n_out, 3, 1, 1)
        self.res = _conv(n_in, n_out, 3, 1, 1)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        h = swish(self.conv2(swish(self.conv1(x))))
        return F.avg_pool2d(h + swish(self.res(x)), kernel_size=2, stride=2)


def _sum_head(out: paddle.Tensor) -> paddle.Tensor:
    """[N, ...] → [N]: sum over everything but the batch axis (reshape, not squeeze, so N=1 works).

    reshape with 0 ("keep this dim") rather than flatten: flatten_grad has no double-grad op, and
    the differentiable Langevin chain needs one; 0 also keeps a dynamic batch under to_static.
    """
    return paddle.reshape(out, [0, -1]).sum(axis=1)


class EBMRes(nn.Layer):
    """`EBM_res` of the official code (SPEC §2.1); the EBM every CoopFlow experiment uses.

    stem conv3×3 + swish → blocks C→2C→4C→8C (each halves H, W) → conv4×4 valid to 100 channels → sum.
    With img_size=64 one extra block(8C→8C) brings 64×64 down to 4×4 before the head.
    17,129,444 parameters for in_channels=3, base_channels=128, img_size=32.
    Small images for demos and tests (our extension, not in the paper): img_size=16 keeps the first two
    blocks (C→2C→4C) and img_size=8 the first one, so the head always sees 4×4.

    Args:
        in_channels: image channels.
        base_channels: C (n_f in the official code).
        img_size: 8, 16, 32 or 64.

    Call: x [N, in_channels, img_size, img_size] in [-1, 1] → f(x) [N].
    """

    def __init__(self, in_channels: int = 3, base_channels: int = 128, img_size: int = 32):
        super().__init__()
        if img_size not in (8, 16, 32, 64):
            raise ValueError(f"EBMRes img_size must be 8, 16, 32 or 64, got {img_size}; set EBM.img_size to "
                             "the data's image size")
        c = base_channels
        n_blocks = {8: 1, 16: 2, 32: 3, 64: 3}[img_size]
        widths = [c, 2 * c, 4 * c, 8 * c][: n_blocks + 1]
        layers: List[nn.Layer] = [_conv(in_channels, c, 3, 1, 1), Swish()]
        layers += [EBMBlock(a, b) for a, b in zip(widths[:-1], widths[1:])]
        if img_size == 64:
            layers.append(EBMBlock(8 * c, 8 * c))
        layers.append(_conv(widths[-1], 100, 4, 1, 0))
        self.f = nn.Sequential(*layers)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        return _sum_head(self.f(x))


class EBMPlain(nn.Layer):
    """`EBM` of the official code (SPEC §2.2): strided convs, the model the [D] Paddle port trains.

    conv3×3 C + swish → three conv4×4 s2 p1 (C→2C→4C→8C) each + swish → conv4×4 valid to 100 → sum.
    12,653,924 parameters for 3 channels and C = 128. Input must be 32×32.

    Call: x [N, in_channels, 32, 32] → f(x) [N].
    """

    def __init__(self, in_channels: int = 3, base_channels: int = 128):
        super().__init__()
        c = base_channels
        self.f = nn.Sequential(
            _conv(in_channels, c, 3, 1, 1), Swish(),
            _conv(c, 2 * c, 4, 2, 1), Swish(),
            _conv(2 * c, 4 * c, 4, 2, 1), Swish(),
            _conv(4 * c, 8 * c, 4, 2, 1), Swish(),
            _conv(8 * c, 100, 4, 1, 0))

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        return _sum_head(self.f(x))


class EBMMLP(nn.Layer):
    """Swish MLP energy for 2-D toy data ([P] §5.1; no official code).

    `depth` hidden Linear layers of width `hidden`, each followed by swish, then Linear(hidden → 1).

    Call: x [N, in_dim] → f(x) [N].
    """

    def __init__(self, in_dim: int = 2, hidden: int = 128, depth: int = 3):
        super().__init__()
        if depth < 1:
            raise ValueError(f"EBMMLP depth must be >= 1, got {depth}")
        layers: List[nn.Layer] = []
        d = in_dim
        for _ in range(depth):
            layers += [_linear(d, hidden), Swish()]
            d = hidden
        layers.append(_linear(d, 1))
        self.f = nn.Sequential(*layers)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        return _sum_head(self.f(x))


def build_ebm(cfg: Any) -> nn.Layer:
    """Build the EBM named by cfg.arch ('res' | 'plain' | 'mlp').

    Reads (with defaults): arch='res', in_channels=3, base_channels=128, img_size=32, in_dim=2,
    hidden=128, depth=3. cfg may be any object with attributes, or a dict.
    """
    get = (lambda k, d: cfg.get(k, d)) if isinstance(cfg, dict) else (lambda k, d: getattr(cfg, k, d))
    arch = str(get("arch", "res")).lower()
    if arch == "res":
        return EBMRes(int(get("in_channels", 3)), int(get("base_channels", 128)), int(get("img_size", 32)))
    if arch == "plain":
        return EBMPlain(int(get("in_channels", 3)), int(get("base_channels", 128)))
    if arch == "mlp":
        return EBMMLP(int(get("in_dim", 2)), int(get("hidden", 128)), int(get("depth", 3)))
    raise ValueError(f"unknown EBM.arch {arch!r}; use one of 'res', 'plain', 'mlp'")
