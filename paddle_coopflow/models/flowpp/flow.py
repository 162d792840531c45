"""Flow++ (Ho et al. 2019) as used by CoopFlow: multi-scale recursion and the full model.

The layout and the pre-processing follow the official CoopFlow code's Flow++ (its state-dict keys are ours).

forward:  x in [-1,1] -> (x+1)/2 -> dequantize -> logit with 0.9 bound -> main flow -> z, sldj
inverse:  z -> main flow^-1 -> l -> 2 sigmoid(l) - 1   (reference shrink; `undo_bound` inverts the bound)
"""
from __future__ import annotations

import math
from typing import Any, Optional, Sequence, Tuple

import numpy as np
import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from .act_norm import ActNorm
from .coupling import Coupling, Flip, run_step
from .dequant import Dequantization, uniform_dequantize
from .inv_conv import InvConv
from .mixture import check_inverse_method
from .splits import channelwise, channelwise_inverse, checkerboard, checkerboard_inverse, squeeze, unsqueeze
from .weight_norm import WeightNormConv2D


def _step(channels: int, coupling_kwargs: dict) -> list:
    """One coupling step: ActNorm -> InvConv -> Coupling -> Flip, on halves of `channels` channels."""
    return [ActNorm(channels), InvConv(channels), Coupling(channels, **coupling_kwargs), Flip()]


class FlowScale(nn.Layer):
    """One scale: channel-wise steps, checkerboard steps, then squeeze, keep half, recurse on the rest.

    (The official code calls this class `_FlowStep`; its attribute names, which are the state-dict
    keys `channels`, `checkers`, `next`, are kept.)

    Args:
        scales: remaining ((num_channelwise, num_checkerboard), ...); the first entry is this scale.
        in_shape: (C, H, W) at this scale.
        coupling_kwargs: mid_channels, num_blocks, num_components, drop_prob, use_attn, inverse_method.
    """

    def __init__(self, scales: Sequence[Tuple[int, int]], in_shape: Tuple[int, int, int], coupling_kwargs: dict):
        super().__init__()
        c, h, w = in_shape
        num_channelwise, num_checkerboard = scales[0]
        channels = [m for _ in range(num_channelwise) for m in _step(c // 2, coupling_kwargs)]
        checkers = [m for _ in range(num_checkerboard) for m in _step(c, coupling_kwargs)]
        self.channels = nn.LayerList(channels) if channels else None
        self.checkers = nn.LayerList(checkers) if checkers else None
        self.next = FlowScale(scales[1:], (2 * c, h // 2, w // 2), coupling_kwargs) if len(scales) > 1 else None
        self.recompute = False  # set by FlowPlusPlus.set_recompute

    @staticmethod
    def _steps(layers, x, sldj, reverse: bool):
        for layer in (reversed(list(layers)) if reverse else layers):
            x, sldj = layer(x, sldj, reverse=reverse)
        return x, sldj

    def _run(self, layers: nn.LayerList, x, sldj, reverse: bool):
        if reverse or not self.recompute:
            return self._steps(layers, x, sldj, reverse)
        layers = list(layers)
        for i in range(0, len(layers), 4):  # one coupling step at a time (see coupling.run_step)
            x, sldj = run_step(layers[i:i + 4], x, sldj, recompute=True)
        return x, sldj

    def _recurse(self, x: paddle.Tensor, sldj: paddle.Tensor, reverse: bool):
        x = squeeze(x)
        x, x_split = paddle.chunk(x, 2, axis=1)  # keep the first half; the rest is factored out unchanged
        x, sldj = self.next(x, sldj, reverse)
        return unsqueeze(paddle.concat([x, x_split], axis=1)), sldj

    def forward(self, x: paddle.Tensor, sldj: paddle.Tensor, reverse: bool = False):
        """x: [N, C, H, W]; sldj: [N]. Reverse undoes the steps in exactly the opposite order."""
        if reverse and self.next is not None:
            x, sldj = self._recurse(x, sldj, reverse)
        parts = [(self.channels, channelwise, channelwise_inverse),
                 (self.checkers, checkerboard, checkerboard_inverse)]
        for layers, split, merge in (reversed(parts) if reverse else parts):
            if layers is not None:
                pair, sldj = self._run(layers, split(x), sldj, reverse)
                x = merge(pair)
        if not reverse and self.next is not None:
            x, sldj = self._recurse(x, sldj, reverse)
        return x, sldj


def _validate(in_shape: Tuple[int, ...], scales: Tuple[Tuple[int, int], ...], num_dequant_blocks: int) -> None:
    """Reject shapes the splits cannot handle, with the fix in the message."""
    if len(in_shape) != 3 or min(in_shape) < 1:
        raise ValueError(f"Flow.in_shape must be (C, H, W) with positive sizes, got {in_shape}")
    if not scales or any(len(s) != 2 or min(s) < 0 for s in scales):
        raise ValueError(f"Flow.scales must be a non-empty list of (num_channelwise, num_checkerboard) pairs "
                         f"of non-negative ints, got {scales}")
    c, h, w = in_shape
    if num_dequant_blocks > 0 and w % 2:
        raise ValueError(f"variational dequantization uses a checkerboard split: image width {w} must be even")
    for i, (n_ch, n_ck) in enumerate(scales):
        where = f"scale {i} (shape {c}x{h}x{w})"
        if n_ch > 0 and c % 2:
            raise ValueError(f"{where}: channel-wise couplings need an even channel count; "
                             f"set its num_channelwise to 0 (e.g. scales [(0,4),(2,3)])")
        if n_ck > 0 and w % 2:
            raise ValueError(f"{where}: checkerboard couplings need an even width; use an image size divisible "
                             f"by 2**{len(scales)}")
        if i + 1 < len(scales):
            if h % 2 or w % 2:
                raise ValueError(f"{where}: squeeze needs even height and width; use an image size divisible "
                                 f"by 2**{len(scales)}")
            c, h, w = 2 * c, h // 2, w // 2


class FlowPlusPlus(nn.Layer):
    """Flow++ density model on images in [-1, 1] (CIFAR configuration by default: 28,784,792 parameters).

    Args:
        in_shape: (C, H, W) of the images.
        scales: per scale (num_channelwise, num_checkerboard) coupling steps.
        mid_channels: coupling-NN width.
        num_blocks: ConvAttnBlocks per main-flow coupling NN.
        num_components: logistic mixture components K.
        num_dequant_components: K of the dequantization flow; None = num_components. (The official code
            always gives its dequantization flow 32, whatever the main flow's K.)
        num_dequant_blocks: ConvAttnBlocks per dequant-flow coupling NN; <= 0 selects uniform dequantization.
        use_attn: attention in every block (dequant flow included).
        drop_prob: Dropout2d and attention dropout.
        undo_bound: if True, `inverse` undoes the 0.9 logit bound exactly; else the reference 2 sigmoid(l) - 1.
        inverse_method: mixture-CDF inverse used when sampling: 'newton' (safeguarded Newton; the default,
            as the config's Flow.inverse_method) or 'bisection' (the official code's method). See mixture.py.
        coupling_engine: the coupling networks when sampling (eval mode, no grad): 'auto' = static-graph
            oneDNN programs on CPU builds with oneDNN (checked against dygraph on first use, dygraph
            fallback), 'static' = always (failures raise), 'dygraph'. See paddle_coopflow/accel/coupling.py.
        recompute: activation recomputation in training: the flow keeps only each coupling step's
            inputs for the backward pass and runs the step again there (less memory, more time; the
            same gradients to float32 rounding). See :meth:`set_recompute`.
    """

    def __init__(self, in_shape=(3, 32, 32), scales=((0, 4), (2, 3)), mid_channels: int = 96, num_blocks: int = 10,
                 num_components: int = 32, num_dequant_blocks: int = 2, use_attn: bool = True,
                 drop_prob: float = 0.2, undo_bound: bool = False, inverse_method: str = "newton",
                 coupling_engine: str = "dygraph", num_dequant_components: Optional[int] = None,
                 recompute: bool = False):
        super().__init__()
        in_shape = tuple(int(v) for v in in_shape)
        scales = tuple((int(a), int(b)) for a, b in scales)
        _validate(in_shape, scales, num_dequant_blocks)
        check_inverse_method(inverse_method)
        if not 0.0 <= drop_prob < 1.0:
            raise ValueError(f"Flow.drop_prob must be in [0, 1), got {drop_prob}")
        self.in_shape = in_shape
        self.z_shape = in_shape
        self.undo_bound = bool(undo_bound)
        # Logit pre-processing bound; a buffer (saved, not trained) as in the reference.
        self.register_buffer("bounds", paddle.to_tensor([0.9], dtype="float32"), persistable=True)
        k_dequant = num_components if num_dequant_components is None else int(num_dequant_components)
        self.dequant_flows = (Dequantization(in_shape, mid_channels, num_dequant_blocks, k_dequant, use_attn,
                                             drop_prob, inverse_method=inverse_method)
                              if num_dequant_blocks > 0 else None)
        self.flows = FlowScale(scales, in_shape, dict(
            mid_channels=mid_channels, num_blocks=num_blocks, num_components=num_components,
            drop_prob=drop_prob, use_attn=use_attn, inverse_method=inverse_method))
        self.set_coupling_engine(coupling_engine)
        self.update_engine = "dygraph"   # the training convolutions' engine: set_update_engine
        self.set_recompute(recompute)

    def set_recompute(self, on: bool) -> None:
        """Activation recomputation per coupling step, main and dequantization flows (coupling.run_step)."""
        for m in [self] + list(self.sublayers()):
            if isinstance(m, (FlowScale, Dequantization)):
                m.recompute = bool(on)
        self.recompute = bool(on)

    def set_coupling_engine(self, engine: str) -> None:
        """Engine of the main flow's coupling networks when sampling: 'auto', 'static' or 'dygraph' (class doc)."""
        from ...accel.coupling import make_coupling_nn

        for m in self.flows.sublayers():
            if isinstance(m, Coupling):
                m.static_nn = make_coupling_nn(m.nn, engine)
        self.coupling_engine = engine

    def set_update_engine(self, engine: str) -> None:
        """Engine of the 3×3 convolutions in training mode (Train.update_engine: 'auto', 'static' or 'dygraph';
        paddle_coopflow/accel/conv.py), main and dequantization flows: one runner shared by all of them."""
        from ...accel.conv import make_train_convs

        convs = make_train_convs(engine)
        for m in self.sublayers():
            if isinstance(m, WeightNormConv2D):
                m.train_convs = convs if list(m.weight_v.shape[2:]) == [3, 3] else None
        self.update_engine = engine

    @classmethod
    def from_config(cls, cfg: Any) -> "FlowPlusPlus":
        """Build from any object (dataclass, namespace) or mapping with the constructor's argument names
        (the Flow section of the config uses the same names)."""
        import inspect

        names = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
        get = cfg.get if isinstance(cfg, dict) else (lambda k, d=None: getattr(cfg, k, d))
        return cls(**{k: get(k) for k in names if get(k) is not None})

    @property
    def num_dims(self) -> int:
        return int(np.prod(self.in_shape))

    @property
    def is_initialized(self) -> bool:
        """True when every ActNorm (dequant flow included) has been data-initialised."""
        return all(m.initialized for m in self.sublayers() if isinstance(m, ActNorm))

    # ----------------------------------------------------------------- density path
    def to_logits(self, y: paddle.Tensor, sldj: paddle.Tensor) -> Tuple[paddle.Tensor, paddle.Tensor]:
        """y in (0,1) -> l = logit(0.05 + 0.9 y); adds sum(softplus(l) + softplus(-l) - softplus(log(0.1/0.9)))."""
        b = self.bounds.astype(y.dtype)
        yb = ((2.0 * y - 1.0) * b + 1.0) / 2.0
        l = paddle.log(yb) - paddle.log(1.0 - yb)
        ldj = F.softplus(l) + F.softplus(-l) - F.softplus(paddle.log(1.0 - b) - paddle.log(b))
        return l, sldj + ldj.reshape([y.shape[0], -1]).sum(axis=1)

    def preprocess(self, x: paddle.Tensor, noise: Optional[paddle.Tensor] = None):
        """x [N,C,H,W] in [-1,1] -> (logits l [N,C,H,W], sldj [N]) = dequantize + logit step.

        noise: optional fixed draw (eps ~ N(0,I) for the variational flow, u ~ U(0,1) for uniform).
        """
        if tuple(x.shape[1:]) != self.in_shape:
            raise ValueError(f"Flow++ expects images of shape [N, {', '.join(map(str, self.in_shape))}], "
                             f"got {list(x.shape)}; set Flow.in_shape to the data shape")
        x = (x + 1.0) / 2.0
        sldj = paddle.zeros([x.shape[0]], dtype=x.dtype)
        if self.dequant_flows is not None:
            y, sldj = self.dequant_flows(x, sldj, eps=noise)
        else:
            y = uniform_dequantize(x, noise)
        return self.to_logits(y, sldj)

    def forward(self, x: paddle.Tensor, noise: Optional[paddle.Tensor] = None):
        """x [N,C,H,W] in [-1,1] -> (z [N,C,H,W], sldj [N]); sldj holds every log-det term incl. -log q(u|x)."""
        l, sldj = self.preprocess(x, noise)
        return self.flows(l, sldj)

    @property
    def dequant_noise_kind(self) -> str:
        """The distribution of `noise` in :meth:`nll`: 'normal' (variational) or 'uniform01' (uniform)."""
        return "normal" if self.dequant_flows is not None else "uniform01"

    def nll(self, x: paddle.Tensor, noise: Optional[paddle.Tensor] = None) -> paddle.Tensor:
        """Per-image NLL in nats [N]: -(sum log N(z) - D log 256 + sldj)."""
        z, sldj = self.forward(x, noise)
        prior_ll = (-0.5 * (z ** 2 + math.log(2 * math.pi))).reshape([z.shape[0], -1]).sum(axis=1)
        return -(prior_ll - self.num_dims * math.log(256.0) + sldj)

    def bits_per_dim(self, nll: paddle.Tensor) -> paddle.Tensor:
        """nats per image -> bits per dimension: nll / (D ln 2)."""
        return nll / (self.num_dims * math.log(2.0))

    # ----------------------------------------------------------------- sampling path
    @paddle.no_grad()
    def inverse(self, z: paddle.Tensor) -> paddle.Tensor:
        """z [N,C,H,W] -> image [N,C,H,W] around [-1,1]. No gradient.

        Reference: 2 sigmoid(l) - 1 (0.9 bound not undone: samples shrink by 0.9).
        undo_bound: (2 sigmoid(l) - 1) / 0.9, the exact inverse of the logit step (may leave [-1,1] slightly).
        """
        if tuple(z.shape[1:]) != self.z_shape:
            raise ValueError(f"z must have shape [N, {', '.join(map(str, self.z_shape))}], got {list(z.shape)}")
        l, _ = self.flows(z, paddle.zeros([z.shape[0]], dtype=z.dtype), reverse=True)
        img = 2.0 * F.sigmoid(l) - 1.0
        if self.undo_bound:
            img = img / self.bounds.astype(img.dtype)
        return img

    @paddle.no_grad()
    def sample(self, n: int, z: Optional[paddle.Tensor] = None) -> paddle.Tensor:
        """n images [n,C,H,W]; draws z ~ N(0, I) unless given."""
        if z is None:
            z = paddle.randn([n, *self.z_shape], dtype=self.bounds.dtype)
        return self.inverse(z)

    def data_init(self, x: paddle.Tensor) -> bool:
        """See `data_init`."""
        return data_init(self, x)


def data_init(flow: FlowPlusPlus, x: paddle.Tensor) -> bool:
    """Data-dependent ActNorm init (Flow++ / Glow): one train-mode forward on x under no_grad.

    Each ActNorm initialises on the activations produced by the already-initialised layers
    before it; already-initialised layers are left alone. Restores the previous mode.
    Returns flow.is_initialized.
    """
    was_training = flow.training
    flow.train()
    with paddle.no_grad():
        flow(x)
    if not was_training:
        flow.eval()
    return flow.is_initialized
