"""A small CIFAR-10 CNN whose penultimate layer is the feature space of the proxy FID/KID.

Five 3x3 conv layers (BatchNorm + ReLU) with 2x2 max-pools after the 1st, 2nd and 4th
(32 -> 16 -> 8 -> 4), global average pooling to a D-dim feature, and a linear head over 10
classes. Most layers run at 16x16 or less, because dygraph convolution on one CPU thread
is slow (about 110 training images/s at the defaults) and the classifier is trained in
minutes. Images are float32 [N, 3, 32, 32] in
[-1, 1], the package's image range.

`export_features` writes the feature extractor with `paddle.jit.save` (input
`InputSpec([None, 3, 32, 32], 'float32')`, output [N, D], eval mode), so it loads with
`paddle.jit.load(prefix)` without this file.
"""
from __future__ import annotations

import os
from typing import Tuple

import paddle
import paddle.nn as nn
from paddle.static import InputSpec

IMAGE_SHAPE = (3, 32, 32)


def _conv_bn_relu(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2D(c_in, c_out, 3, padding=1, bias_attr=False),
                         nn.BatchNorm2D(c_out), nn.ReLU())


class SmallCNN(nn.Layer):
    """CIFAR-10 classifier with a `features` method (the penultimate layer).

    Args:
        width: channels of the first conv (then 2x, 4x, 4x).
        feat_dim: D, the dimension of the penultimate (pooled) feature.
        num_classes: outputs of the linear head.
    """

    def __init__(self, width: int = 32, feat_dim: int = 256, num_classes: int = 10):
        super().__init__()
        w = int(width)
        self.feat_dim = int(feat_dim)
        self.body = nn.Sequential(
            _conv_bn_relu(3, w), nn.MaxPool2D(2),                                     # 32 -> 16
            _conv_bn_relu(w, 2 * w), nn.MaxPool2D(2),                                 # 16 -> 8
            _conv_bn_relu(2 * w, 4 * w), _conv_bn_relu(4 * w, 4 * w), nn.MaxPool2D(2),  # 8 -> 4
            _conv_bn_relu(4 * w, self.feat_dim),
            nn.AdaptiveAvgPool2D(1), nn.Flatten())
        self.head = nn.Linear(self.feat_dim, num_classes)

    def features(self, x: paddle.Tensor) -> paddle.Tensor:
        """x: [N, 3, 32, 32] float32 in [-1, 1] -> [N, D] penultimate features."""
        return self.body(x)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        """x: [N, 3, 32, 32] float32 in [-1, 1] -> [N, num_classes] logits."""
        return self.head(self.features(x))


class FeatureExtractor(nn.Layer):
    """Wraps a SmallCNN so that `forward` is `features` (the layer that gets jit-saved)."""

    def __init__(self, net: SmallCNN):
        super().__init__()
        self.net = net

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        """x: [N, 3, 32, 32] float32 in [-1, 1] -> [N, D] features."""
        # .detach() ends the program in share_data_, which oneDNN's first run never replaces
        # (docs/paddle_notes.md, "The oneDNN first-run rewrite").
        return self.net.features(x).detach()


def export_features(net: SmallCNN, prefix: str) -> Tuple[str, str]:
    """jit-save the feature extractor of `net` (switched to eval mode) at `prefix`.

    Args:
        net: a (trained) SmallCNN; it is left in eval mode.
        prefix: output path prefix; writes `prefix.json` (PIR program) + `prefix.pdiparams`.
    Returns:
        (model file, params file) paths.
    """
    os.makedirs(os.path.dirname(os.path.abspath(prefix)), exist_ok=True)
    net.eval()
    layer = FeatureExtractor(net)
    layer.eval()
    static = paddle.jit.to_static(layer, input_spec=[InputSpec([None, *IMAGE_SHAPE], "float32", "x")],
                                  full_graph=True)
    paddle.jit.save(static, prefix)
    model = prefix + ".json" if os.path.isfile(prefix + ".json") else prefix + ".pdmodel"
    return model, prefix + ".pdiparams"
