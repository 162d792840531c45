"""Energy-based models f_θ(x): the official code's EBM_res and EBM, and an MLP for 2-D data.

Every network returns f_θ(x) of shape [N]: the *negative* energy, which training raises on data.
The image EBMs end in a conv to 100 channels at 1×1 and sum those channels, as the official code does.

Porting notes:
- swish is written as x·sigmoid(x) so that double backward exists (the differentiable Langevin chain
  used for reconstruction and inpainting backpropagates through ∇ₓf).
- The output is flattened per sample and summed, never squeezed, so N = 1 gives shape [1].
- Initialisation is PyTorch's default for Conv2d/Linear, U(±1/sqrt(fan_in)) for weight and bias,
  so a freshly built model has the same statistics as the official one.
- Sub-layer names reproduce the official state-dict keys (`f.0.weight`, `f.2.conv1.weight`, ...,
  `f.5.weight`), so official checkpoints convert by name.
"""
from __future__ import annotations

import math
from typing import Any, List, Optional, Sequence, Tuple

import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from .conv_grads import adjoint_kernel, conv_bias_grad, conv_weight_grad

__all__ = ["Swish", "EBMBlock", "EBMRes", "EBMPlain", "EBMMLP", "build_ebm", "swish"]

# The hand-written input gradient of EBM_res (EBMRes.energy_and_grad) runs forward ops only: a static
# program made of them runs fast under oneDNN and has no gradient op (docs/paddle_notes.md, "oneDNN
# speed recipe"). The helpers below are its pieces; each is exact (float64 tests against paddle.grad).


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


def _apply_conv(conv: nn.Conv2D, x: paddle.Tensor) -> paddle.Tensor:
    return F.conv2d(x, conv.weight, conv.bias, stride=1, padding=conv._padding)


def _is_same3x3(conv: nn.Conv2D) -> bool:
    """A stride-1, 'same'-padded, ungrouped 3×3 NCHW conv: the case whose input gradient is a conv."""
    pad = conv._padding if isinstance(conv._padding, (list, tuple)) else [conv._padding] * 2
    return (list(conv.weight.shape[2:]) == [3, 3] and list(conv._stride) == [1, 1] and list(pad) == [1, 1]
            and list(conv._dilation) == [1, 1] and conv._groups == 1 and conv._data_format == "NCHW")


def _conv_input_grad(conv: nn.Conv2D, g: paddle.Tensor, w_adj: paddle.Tensor) -> paddle.Tensor:
    # w_adj: the conv's kernel from adjoint_weights (transposed, flipped, scaled).
    return F.conv2d(g, w_adj, None, stride=1, padding=conv._padding)


def _conv_param_grads(x: paddle.Tensor, g: paddle.Tensor, padding) -> List[paddle.Tensor]:
    """[∂W, ∂b] of Σ⟨g, conv(x)⟩ for a stride-1 conv, forward ops only (models/conv_grads.py)."""
    return [conv_weight_grad(x, g, padding), conv_bias_grad(g)]


def _swish_parts(h: paddle.Tensor) -> Tuple[paddle.Tensor, paddle.Tensor]:
    """swish(h) = h·σ(h) and σ(h), kept for the derivative."""
    s = F.sigmoid(h)
    return h * s, s


def _dswish(a: paddle.Tensor, s: paddle.Tensor) -> paddle.Tensor:
    # d/dh of a = h·σ(h) is σ + h·σ(1 − σ) = a + σ(1 − a): three elementwise ops, from the forward's a and σ.
    return a + s * (1.0 - a)


def _avgpool_input_grad(g: paddle.Tensor) -> paddle.Tensor:
    # [N, C, H, W] → [N, C, 2H, 2W]: each value repeated 2×2. The factor 1/4 of the 2×2 average is folded
    # into the adjoint kernels of conv2 and res, the only consumers. tile, not expand: under oneDNN an
    # expand becomes a 6-D broadcast add on the slow reference kernel (docs/paddle_notes.md, "oneDNN speed
    # recipe").
    _, c, h, w = g.shape
    return paddle.tile(g.unsqueeze([3, 5]), [1, 1, 1, 2, 1, 2]).reshape([0, c, 2 * h, 2 * w])


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

    def convs(self) -> List[nn.Conv2D]:
        """The block's convs in the order of :meth:`adjoint_weights`: conv1, conv2, res."""
        return [self.conv1, self.conv2, self.res]

    def adjoint_weights(self) -> List[paddle.Tensor]:
        """Input-gradient kernels of conv1, conv2, res ([in, out, 3, 3]); conv2's and res's carry the
        1/4 of the average pool after them (exact: a power of two; see :func:`_avgpool_input_grad`)."""
        return [adjoint_kernel(self.conv1.weight), adjoint_kernel(self.conv2.weight, 0.25),
                adjoint_kernel(self.res.weight, 0.25)]

    def forward_saving(self, x: paddle.Tensor) -> Tuple[paddle.Tensor, tuple]:
        """forward(x) [N, n_out, H/2, W/2] and what :meth:`input_grad` needs (activations and sigmoids)."""
        a1, s1 = _swish_parts(_apply_conv(self.conv1, x))
        ah, sh = _swish_parts(_apply_conv(self.conv2, a1))
        ar, sr = _swish_parts(_apply_conv(self.res, x))
        return F.avg_pool2d(ah + ar, kernel_size=2, stride=2), (a1, s1, ah, sh, ar, sr)

    def input_grad(self, g: paddle.Tensor, saved: tuple, adjoint: Sequence[paddle.Tensor]) -> paddle.Tensor:
        """∂⟨g, forward(x)⟩/∂x [N, n_in, H, W] from g [N, n_out, H/2, W/2], forward ops only.

        adjoint: this block's :meth:`adjoint_weights`.
        """
        return self._backward(g, saved, adjoint)[0]

    def _backward(self, g: paddle.Tensor, saved: tuple, adjoint: Sequence[paddle.Tensor]):
        """(∂/∂x, ∂/∂conv1-output, 4·∂/∂conv2-output, 4·∂/∂res-output): the 1/4 of the pool is in adjoint."""
        a1, s1, ah, sh, ar, sr = saved
        w1, w2, wr = adjoint
        gp = _avgpool_input_grad(g)
        u2, ur = gp * _dswish(ah, sh), gp * _dswish(ar, sr)
        g_c1 = _conv_input_grad(self.conv2, u2, w2) * _dswish(a1, s1)
        return _conv_input_grad(self.conv1, g_c1, w1) + _conv_input_grad(self.res, ur, wr), g_c1, u2, ur

    def param_grads(self, x: paddle.Tensor, g: paddle.Tensor, saved: tuple, adjoint: Sequence[paddle.Tensor]
                    ) -> Tuple[paddle.Tensor, List[paddle.Tensor]]:
        """(∂⟨g, forward(x)⟩/∂x, [∂W, ∂b of conv1, conv2, res]), forward ops only; x is the block's input."""
        g_in, g_c1, u2, ur = self._backward(g, saved, adjoint)
        a1 = saved[0]
        grads = (_conv_param_grads(x, g_c1, self.conv1._padding) + _conv_param_grads(a1, 0.25 * u2, self.conv2._padding)
                 + _conv_param_grads(x, 0.25 * ur, self.res._padding))
        return g_in, grads


def _sum_head(out: paddle.Tensor) -> paddle.Tensor:
    """[N, ...] → [N]: sum over everything but the batch axis (reshape, not squeeze, so N=1 works).

    reshape with 0 ("keep this dim") rather than flatten: flatten_grad has no double-grad op, and
    the differentiable Langevin chain needs one; 0 also keeps a dynamic batch under to_static.
    """
    return paddle.reshape(out, [0, -1]).sum(axis=1)


class EBMRes(nn.Layer):
    """`EBM_res` of the official code; the EBM every CoopFlow experiment uses.

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
        # Sub-layer names inside `f` are the official keys ("0", "2", ...); which name is which part is
        # recorded here, where the layout is decided, so nothing else depends on list positions.
        self._stem_name, self._head_name = "0", str(len(layers) - 1)
        self._block_names = tuple(str(i) for i, m in enumerate(layers) if isinstance(m, EBMBlock))
        self.f = nn.Sequential(*layers)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        return _sum_head(self.f(x))

    @property
    def stem(self) -> nn.Conv2D:
        return getattr(self.f, self._stem_name)

    @property
    def blocks(self) -> List[EBMBlock]:
        return [getattr(self.f, n) for n in self._block_names]

    @property
    def head(self) -> nn.Conv2D:
        return getattr(self.f, self._head_name)

    def supports_manual_grad(self) -> bool:
        """True when :meth:`energy_and_grad` applies: every conv but the head is a 3×3 'same' conv."""
        return (_is_same3x3(self.stem) and all(_is_same3x3(c) for b in self.blocks for c in b.convs())
                and list(self.head._stride) == [1, 1] and self.head._groups == 1)

    def adjoint_weights(self) -> List[paddle.Tensor]:
        """The weight-only factors of :meth:`energy_and_grad`, computed without gradient.

        Returns [stem kernel, conv1/conv2/res kernels of each block (EBMBlock.adjoint_weights)] as
        [in, out, 3, 3] input-gradient kernels, then Σ_o W_head[o] as [1, C, k, k]. They change only when
        the weights do, so a Langevin chain (fixed EBM) computes them once instead of in every step
        (docs/speed.md, "Per-chain weight factors").
        """
        with paddle.no_grad():
            return ([adjoint_kernel(self.stem.weight)] + [w for b in self.blocks for w in b.adjoint_weights()]
                    + [self.head.weight.sum(axis=0, keepdim=True)])

    def energy_and_grad(self, x: paddle.Tensor, adjoint: Optional[Sequence[paddle.Tensor]] = None
                        ) -> Tuple[paddle.Tensor, paddle.Tensor]:
        """f(x) [N] and ∇ₓ Σ_batch f [N, C, H, W] with forward ops only (needs supports_manual_grad()).

        The input gradient of a 3×3 'same' conv is a 3×3 conv with the kernel transposed and flipped; of
        the 2×2 average pool, a 2×2 repeat / 4; of the head followed by the sum, Σ_o W_head[o] for every
        sample. Equals paddle.grad to float rounding (tests/test_ebm.py, float64).

        Args:
            x: [N, C, H, W].
            adjoint: :meth:`adjoint_weights` of the current weights, or None to derive them here (in the
                graph, so a static program can take them as inputs instead).
        """
        adj = list(adjoint) if adjoint is not None else self.adjoint_weights()
        a0, s0 = _swish_parts(_apply_conv(self.stem, x))
        a, saved = a0, []
        for block in self.blocks:
            a, cache = block.forward_saving(a)
            saved.append(cache)
        f = _sum_head(_apply_conv(self.head, a))
        g = paddle.expand_as(adj[-1], a)
        blocks = self.blocks
        for i in reversed(range(len(blocks))):
            g = blocks[i].input_grad(g, saved[i], adj[1 + 3 * i: 4 + 3 * i])
        return f, _conv_input_grad(self.stem, g * _dswish(a0, s0), adj[0])

    def energy_and_param_grads(self, x: paddle.Tensor, seed: paddle.Tensor,
                               adjoint: Optional[Sequence[paddle.Tensor]] = None
                               ) -> Tuple[paddle.Tensor, List[paddle.Tensor]]:
        """f(x) [N] and ∂(Σ_n seed_n f(x_n))/∂θ for every parameter, in ``self.parameters()`` order, with
        forward ops only (needs supports_manual_grad()). The EBM loss of eq. (2) is this sum with
        seed = −1/B on the data and +1/M on the revisions. Equals paddle.grad to float rounding
        (tests/test_ebm.py, float64).

        Args:
            x: [N, C, H, W]; seed: [N].
            adjoint: :meth:`adjoint_weights`, or None to derive them here.
        """
        adj = list(adjoint) if adjoint is not None else self.adjoint_weights()
        a0, s0 = _swish_parts(_apply_conv(self.stem, x))
        inputs, a, saved = [], a0, []
        for block in self.blocks:
            inputs.append(a)
            a, cache = block.forward_saving(a)
            saved.append(cache)
        head_out = _apply_conv(self.head, a)
        f = _sum_head(head_out)
        s = seed.reshape([-1, 1, 1, 1])
        head = _conv_param_grads(a, paddle.expand_as(s, head_out), self.head._padding)
        g, grads = s * adj[-1], []
        for i in reversed(range(len(self.blocks))):
            g, block_grads = self.blocks[i].param_grads(inputs[i], g, saved[i], adj[1 + 3 * i: 4 + 3 * i])
            grads = block_grads + grads
        return f, _conv_param_grads(x, g * _dswish(a0, s0), self.stem._padding) + grads + head


class EBMPlain(nn.Layer):
    """`EBM` of the official code: strided convs.

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
    """Swish MLP energy for 2-D toy data (the paper's 2-D experiments; no official code).

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
