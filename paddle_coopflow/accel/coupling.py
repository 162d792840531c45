"""Static-graph (oneDNN) programs of Flow++'s coupling networks, for sampling on CPU.

Sampling Flow++ spends most of its time in the coupling networks (convolutions and attention over
every pixel), which dygraph runs with Paddle's own CPU kernels. The same network as a to_static
program run with `FLAGS_use_onednn` gets oneDNN's kernels: 2.5-3.4x faster at the paper size
(docs/speed.md). Only sampling uses it (eval mode, no gradient, dynamic mode: `Coupling` checks
this); training keeps the dygraph network (a weight-gradient program segfaults under oneDNN,
docs/paddle_notes.md, "oneDNN segfaults: while_loop and weight-gradient programs").

The network must offer `register_encoding_buffers(length, dtype)` and accept
`forward(x, cached_encoding=True)`: the positional encoding computed inside a oneDNN program comes
out wrong, so the program reads it from a non-persistable buffer instead (docs/paddle_notes.md,
"Positional encoding inside a oneDNN program").

The outputs agree with dygraph to float32 rounding (different kernels), not bit for bit: about 1e-6
on the networks' outputs at the paper size. The flow amplifies such differences when sampling (a
one-ulp change of every coupling output moves images by ~5e-5, docs/speed.md), so sampled images
differ at that level between the two engines; neither is more accurate.
"""
from __future__ import annotations

import copy
import logging
from types import MappingProxyType
from typing import Dict

import numpy as np
import paddle
import paddle.nn as nn

from ..utils.env import onednn_cpu
from .program import ENGINES, ProgramCache, detached

__all__ = ["StaticCouplingNN", "make_coupling_nn"]

CPU_FLAGS = MappingProxyType({"FLAGS_use_onednn": True})
VERIFY_RTOL = 1e-4    # first-run check: max |static - dygraph| <= VERIFY_RTOL * (1 + max |dygraph|), per output
_log = logging.getLogger("paddle_coopflow.accel.coupling")


class _CachedEncoding(nn.Layer):
    """The network called with cached_encoding=True, outputs detached: what the program traces."""

    def __init__(self, net: nn.Layer):
        super().__init__()
        self.net = net

    def forward(self, x):
        return detached(self.net(x, cached_encoding=True))


class StaticCouplingNN:
    """Runs a coupling network (x [N, C, H, W] → (a, b, pi, mu, log_s)) as a oneDNN static program.

    Args:
        net: the coupling network (models.flowpp.nn.NN) without aux input.
        strict: raise instead of falling back to dygraph (Flow.coupling_engine=static).
        verify: check the first run of each program against the dygraph network.
    """

    def __init__(self, net: nn.Layer, strict: bool = False, verify: bool = True):
        self.net, self.verify = net, verify
        self.cache = ProgramCache(net, "coupling network", "Flow.coupling_engine",
                                  CPU_FLAGS if onednn_cpu() else None, strict=strict, logger=_log)

    def __deepcopy__(self, memo):
        # A deep-copied flow gets its own (empty) program cache over its own copy of the network.
        return StaticCouplingNN(copy.deepcopy(self.net, memo), self.cache.strict, self.verify)

    @property
    def n_compiled(self) -> int:
        return self.cache.n_compiled

    def chosen(self) -> Dict[tuple, str]:
        return self.cache.chosen()

    def __call__(self, x: paddle.Tensor) -> tuple:
        self.cache.check_params()
        key = (tuple(x.shape[1:]), x.dtype)
        if key not in self.cache.programs:
            # attention runs at the input's H × W (the convs keep the size)
            self.net.register_encoding_buffers(int(x.shape[2]) * int(x.shape[3]), x.dtype)
            spec = [paddle.static.InputSpec([None] + list(key[0]), key[1], "x")]
            out = self.cache.build(key, "static", lambda: (_CachedEncoding(self.net), spec), [x],
                                   lambda: self.net(x), self._check if self.verify else (lambda o, r: None))
        else:
            out = self.cache.call(key, [x])
        if out is not None:
            return out
        self.cache.n_fallback_calls += 1
        return self.net(x)

    @staticmethod
    def _check(out, ref) -> None:
        for o, r in zip(out, ref):
            o, r = o.numpy().astype("float64"), r.numpy().astype("float64")
            if not np.isfinite(r).all():
                return  # NaN weights or inputs: kernels differ in NaN handling, nothing to compare
            tol = VERIFY_RTOL * (1.0 + float(np.abs(r).max()))
            d = float(np.abs(o - r).max()) if np.isfinite(o).all() else float("inf")
            if not d <= tol:
                raise ValueError(f"static coupling network differs from dygraph (max |diff| {d:.2e} > {tol:.2e})")


def make_coupling_nn(net: nn.Layer, engine: str):
    """The static program runner for `net` under Flow.coupling_engine, or None for dygraph.

    'dygraph' → None; 'auto' → a StaticCouplingNN on CPU builds with oneDNN (deterministic: never timed),
    else None; 'static' → a strict StaticCouplingNN (failures raise).
    """
    if engine not in ENGINES:
        raise ValueError(f"unknown Flow.coupling_engine {engine!r}; choose one of {ENGINES}")
    if engine == "dygraph" or (engine == "auto" and not onednn_cpu()):
        return None
    return StaticCouplingNN(net, strict=engine == "static")
