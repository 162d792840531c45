"""The Inception-v3 used for FID (pytorch-fid's `fid_inception_v3`, pool3 features).

FID numbers are only comparable with published ones if the feature network is
the one from TensorFlow's FID graph (inception-2015-12-05). pytorch-fid ported
those weights to torch (pt_inception-2015-12-05-6726825d.pth); this module
rebuilds that network in Paddle so the same file can be loaded by a name mapping.

How it differs from a textbook / torchvision Inception-v3 (all as in the TF graph):
  * BasicConv2d = conv without bias -> BatchNorm(eps=1e-3) -> ReLU.
  * The pool branches of Mixed_5b-d (A), Mixed_6b-e (C) and Mixed_7b (E_1)
    average over the valid pixels only (TF's SAME avg-pool; torch
    count_include_pad=False, Paddle exclusive=True).
  * Mixed_7c (E_2) uses a 3x3 *max* pool in its pool branch.
Parameter names mirror pytorch-fid's state-dict keys (`Mixed_5b.branch1x1.conv.weight`,
`Conv2d_1a_3x3.bn.running_mean` <-> Paddle's `bn._mean`, ...); the file's `fc.*`
classifier and BN `num_batches_tracked` entries are not used.

Preprocessing (pytorch-fid `InceptionV3.forward`): bilinear resize to 299x299
with align_corners=False, then inputs in [0, 1] are mapped to [-1, 1] by 2x-1.
"""
from __future__ import annotations

import os
from typing import Dict, Optional

import numpy as np
import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from paddle_coopflow.errors import UserError

FID_WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"
FID_WEIGHTS_URL = ("https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
                   + FID_WEIGHTS_FILE)
INPUT_SIZE = 299
FEATURE_DIM = 2048

# Keys in the pytorch-fid file that this feature extractor does not use.
_IGNORED_PREFIXES = ("fc.", "AuxLogits.")
_IGNORED_SUFFIXES = (".num_batches_tracked",)
# Paddle BatchNorm buffer names <-> torch names.
_BN_RENAMES = ((".bn._mean", ".bn.running_mean"), (".bn._variance", ".bn.running_var"))


class BasicConv2d(nn.Layer):
    """conv (no bias) -> BN(eps=1e-3, running statistics only) -> ReLU."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size, stride=1, padding=0):
        super().__init__()
        self.conv = nn.Conv2D(in_ch, out_ch, kernel_size, stride=stride, padding=padding,
                              bias_attr=False)
        # use_global_stats: the FID network is never in training mode, whatever .train() says.
        self.bn = nn.BatchNorm2D(out_ch, epsilon=1e-3, use_global_stats=True)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


def _avg_pool_valid(x):
    # TF-style 3x3/1 SAME average that divides by the number of real (non-pad) pixels.
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, exclusive=True)


class InceptionA(nn.Layer):
    """35x35 block (FIDInceptionA): 1x1 | 5x5 | double 3x3 | avg-pool -> 1x1."""

    def __init__(self, in_ch: int, pool_features: int):
        super().__init__()
        self.branch1x1 = BasicConv2d(in_ch, 64, 1)
        self.branch5x5_1 = BasicConv2d(in_ch, 48, 1)
        self.branch5x5_2 = BasicConv2d(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(in_ch, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=1)
        self.branch_pool = BasicConv2d(in_ch, pool_features, 1)

    def forward(self, x):
        b1 = self.branch1x1(x)
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        bp = self.branch_pool(_avg_pool_valid(x))
        return paddle.concat([b1, b5, b3, bp], axis=1)


class InceptionB(nn.Layer):
    """Grid reduction 35 -> 17 (Mixed_6a)."""

    def __init__(self, in_ch: int):
        super().__init__()
        self.branch3x3 = BasicConv2d(in_ch, 384, 3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(in_ch, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, stride=2)

    def forward(self, x):
        b3 = self.branch3x3(x)
        bd = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        bp = F.max_pool2d(x, kernel_size=3, stride=2)
        return paddle.concat([b3, bd, bp], axis=1)


class InceptionC(nn.Layer):
    """17x17 block with factorised 7x7 convs (FIDInceptionC)."""

    def __init__(self, in_ch: int, channels_7x7: int):
        super().__init__()
        c7 = channels_7x7
        self.branch1x1 = BasicConv2d(in_ch, 192, 1)
        self.branch7x7_1 = BasicConv2d(in_ch, c7, 1)
        self.branch7x7_2 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(in_ch, c7, 1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(in_ch, 192, 1)

    def forward(self, x):
        b1 = self.branch1x1(x)
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        bd = self.branch7x7dbl_1(x)
        for conv in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4,
                     self.branch7x7dbl_5):
            bd = conv(bd)
        bp = self.branch_pool(_avg_pool_valid(x))
        return paddle.concat([b1, b7, bd, bp], axis=1)


class InceptionD(nn.Layer):
    """Grid reduction 17 -> 8 (Mixed_7a)."""

    def __init__(self, in_ch: int):
        super().__init__()
        self.branch3x3_1 = BasicConv2d(in_ch, 192, 1)
        self.branch3x3_2 = BasicConv2d(192, 320, 3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(in_ch, 192, 1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, 3, stride=2)

    def forward(self, x):
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_1(x)
        for conv in (self.branch7x7x3_2, self.branch7x7x3_3, self.branch7x7x3_4):
            b7 = conv(b7)
        bp = F.max_pool2d(x, kernel_size=3, stride=2)
        return paddle.concat([b3, b7, bp], axis=1)


class InceptionE(nn.Layer):
    """8x8 block with split 1x3/3x1 convs: FIDInceptionE_1 (pool='avg') or _2 (pool='max')."""

    def __init__(self, in_ch: int, pool: str):
        super().__init__()
        if pool not in ("avg", "max"):
            raise ValueError(f"pool must be 'avg' or 'max', got {pool!r}")
        self.pool = pool
        self.branch1x1 = BasicConv2d(in_ch, 320, 1)
        self.branch3x3_1 = BasicConv2d(in_ch, 384, 1)
        self.branch3x3_2a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(in_ch, 448, 1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(in_ch, 192, 1)

    def forward(self, x):
        b1 = self.branch1x1(x)
        b3 = self.branch3x3_1(x)
        b3 = paddle.concat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], axis=1)
        bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        bd = paddle.concat([self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd)], axis=1)
        if self.pool == "avg":
            bp = _avg_pool_valid(x)
        else:  # the TF FID graph's Mixed_7c really uses max pooling here
            bp = F.max_pool2d(x, kernel_size=3, stride=1, padding=1)
        bp = self.branch_pool(bp)
        return paddle.concat([b1, b3, bd, bp], axis=1)


def resize_299(x: paddle.Tensor) -> paddle.Tensor:
    """Bilinear resize to 299x299, half-pixel centres (torch align_corners=False).

    Args:
        x: [N, 3, H, W] float32.
    Returns:
        [N, 3, 299, 299].
    """
    return F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear",
                         align_corners=False, align_mode=0)


class FIDInceptionV3(nn.Layer):
    """Inception-v3 up to pool3 as used by FID; outputs [N, 2048] features.

    `forward` takes images in [-1, 1]; `forward_unit` takes images in [0, 1]
    (pytorch-fid's own convention: resize, then 2x-1). Any H, W; 3 channels.
    """

    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, channels_7x7=128)
        self.Mixed_6c = InceptionC(768, channels_7x7=160)
        self.Mixed_6d = InceptionC(768, channels_7x7=160)
        self.Mixed_6e = InceptionC(768, channels_7x7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280, pool="avg")
        self.Mixed_7c = InceptionE(2048, pool="max")
        for p in self.parameters():
            p.stop_gradient = True
        self.eval()

    def pool3(self, x: paddle.Tensor) -> paddle.Tensor:
        """[N, 3, 299, 299] in [-1, 1] -> [N, 2048] (final average pool)."""
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a,
                      self.Mixed_6b, self.Mixed_6c, self.Mixed_6d, self.Mixed_6e,
                      self.Mixed_7a, self.Mixed_7b, self.Mixed_7c):
            x = block(x)
        return x.mean(axis=[2, 3])

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        """x: [N, 3, H, W] in [-1, 1] -> [N, 2048]."""
        return self.pool3(resize_299(x))

    def forward_unit(self, x: paddle.Tensor) -> paddle.Tensor:
        """x: [N, 3, H, W] in [0, 1] -> [N, 2048] (resize, then 2x-1, as pytorch-fid)."""
        return self.pool3(2.0 * resize_299(x) - 1.0)


def paddle_to_torch_key(key: str) -> str:
    """`Mixed_5b.branch1x1.bn._mean` -> `Mixed_5b.branch1x1.bn.running_mean`."""
    for pd_name, pt_name in _BN_RENAMES:
        if key.endswith(pd_name):
            return key[: -len(pd_name)] + pt_name
    return key


def torch_to_paddle_key(key: str) -> str:
    """Inverse of `paddle_to_torch_key`."""
    for pd_name, pt_name in _BN_RENAMES:
        if key.endswith(pt_name):
            return key[: -len(pt_name)] + pd_name
    return key


def weights_missing_message(detail: str = "no file given") -> str:
    """The one-line error shown when the FID weights are not available."""
    return (f"FID Inception weights needed ({detail}): download {FID_WEIGHTS_FILE} from "
            f"{FID_WEIGHTS_URL} (pytorch-fid's release; or a .pdparams made by "
            f"tools/convert_inception.py) and pass it with -o Eval.inception_weights=PATH "
            f"or FIDEvaluator(weights=PATH); nothing is downloaded at run time")


def read_weight_file(path: str) -> Dict[str, np.ndarray]:
    """Read a pytorch-fid `.pth` (no torch needed) or a `.pdparams`; keys in torch naming.

    Both are read with the allow-list unpickler (paddle_coopflow.utils.safe_pickle): a file that
    names anything but tensors and plain data is refused without running it.
    """
    from paddle_coopflow.utils import safe_pickle
    from paddle_coopflow.utils.pth_reader import load_state_dict

    if not path:
        raise UserError(weights_missing_message())
    if not os.path.isfile(path):
        raise UserError(weights_missing_message(f"'{path}' does not exist"))
    try:
        if path.endswith(".pdparams"):
            raw = safe_pickle.load_paddle(path, return_numpy=True)
        else:
            raw = load_state_dict(path)
    except safe_pickle.PickleRefused as e:
        raise UserError(f"FID Inception weights '{path}' refused, nothing in it was run: {e}") from None
    except Exception as e:  # corrupt / truncated / not a checkpoint
        raise UserError(f"cannot read FID Inception weights '{path}': {type(e).__name__}: "
                        f"{' '.join(str(e).split())}") from None
    if not isinstance(raw, dict):
        raise UserError(f"FID Inception weights '{path}' hold a {type(raw).__name__}, not a state dict; "
                        f"expected {FID_WEIGHTS_FILE}")
    return {paddle_to_torch_key(str(k)): np.asarray(v) for k, v in raw.items()}


def _fitted_state(state: Dict[str, np.ndarray], shapes: Dict[str, tuple], path: str) -> Dict[str, np.ndarray]:
    """`state` (torch names) as the network's float32 state dict, every key and shape checked.

    Every network parameter/buffer must be present with the right shape; keys the feature
    extractor does not use (fc.*, num_batches_tracked) are ignored; any other extra key means a
    different network, so it is an error too.
    """
    state = dict(state)
    new_state, missing, bad_shape = {}, [], []
    for pd_key, shape in shapes.items():
        pt_key = paddle_to_torch_key(pd_key)
        if pt_key not in state:
            missing.append(pt_key)
            continue
        value = state.pop(pt_key)
        if tuple(value.shape) != tuple(shape) or value.dtype.kind not in "fiu":
            bad_shape.append(f"{pt_key} {tuple(value.shape)} {value.dtype} vs {tuple(shape)}")
            continue
        new_state[pd_key] = value.astype(np.float32)
    extra = [k for k in state if not (k.startswith(_IGNORED_PREFIXES)
                                      or k.endswith(_IGNORED_SUFFIXES))]
    if missing or bad_shape or extra:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if bad_shape:
            parts.append(f"{len(bad_shape)} wrong shapes (e.g. {bad_shape[0]})")
        if extra:
            parts.append(f"{len(extra)} unexpected (e.g. {extra[0]})")
        raise UserError(f"'{path}' is not the FID Inception state dict: " + "; ".join(parts)
                        + f" — expected {FID_WEIGHTS_FILE}")
    return new_state


def _shapes(net: nn.Layer) -> Dict[str, tuple]:
    return {k: tuple(v.shape) for k, v in net.state_dict().items()}


def load_inception_weights(net: FIDInceptionV3, path: str) -> None:
    """Load pytorch-fid's FID weights (or a converted .pdparams) into `net`, strictly."""
    net.set_state_dict(_fitted_state(read_weight_file(path), _shapes(net), path))


def check_weight_file(path: str) -> None:
    """Raise the one-line UserError :func:`load_inception_weights` would, without keeping a network.

    The file is read and every key and shape is checked against the network's; the network is
    built lazily (no parameter is initialised, the RNG streams are untouched).
    """
    with paddle.LazyGuard():
        shapes = _shapes(FIDInceptionV3())
    _fitted_state(read_weight_file(path), shapes, path)


def random_init_(net: FIDInceptionV3, seed: int = 0) -> None:
    """Deterministic He-normal conv weights, identity BN: for pipeline tests / timing ONLY.

    Uses its own NumPy generator, so the global Paddle/NumPy RNG state is untouched.
    """
    rng = np.random.default_rng(seed)
    for name, p in net.named_parameters():
        if name.endswith("conv.weight"):
            fan_in = int(np.prod(p.shape[1:]))
            w = rng.standard_normal(p.shape, dtype=np.float32) * np.float32(np.sqrt(2.0 / fan_in))
            p.set_value(w)


def build_fid_inception(weights: Optional[str] = None, random_init: bool = False,
                        seed: int = 0) -> FIDInceptionV3:
    """The FID network in eval mode, with pytorch-fid's weights or (explicitly) random ones.

    Args:
        weights: path to pt_inception-2015-12-05-6726825d.pth or a converted .pdparams.
        random_init: use random weights instead (features are NOT FID features; only for
            tests and timing). Ignored when `weights` is given.
        seed: seed of the random weights.
    Raises:
        UserError: no weights and not random_init, or an unusable weights file.
    """
    if not weights and not random_init:
        raise UserError(weights_missing_message())
    net = FIDInceptionV3()
    if weights:
        load_inception_weights(net, weights)
    else:
        random_init_(net, seed)
    net.eval()
    return net
