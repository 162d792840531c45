"""Static-graph (oneDNN) copies of the coupling networks, for sampling on CPU.

Sampling Flow++ spends most of its time in the nine coupling networks (convolutions and attention
over every pixel), which Paddle's dygraph runs with its own CPU kernels. The same network as a
`paddle.jit.to_static` program run with `FLAGS_use_onednn` gets oneDNN's kernels and was measured
2.5-3.4x faster at the paper size (docs/speed.md). Only generation uses it: eval mode, no gradient,
dynamic mode (`Coupling` checks this); training keeps the dygraph network (a static program with
weight gradients segfaults under oneDNN, PADDLE_NOTES §6).

What it takes care of, as `langevin_fast.FastLangevin` does for the Langevin step:
- one program per (input shape without batch, dtype); the batch is dynamic; the program reads the
  network's parameters by reference (optimizer steps are seen), and a replaced parameter object
  triggers a rebuild;
- `FLAGS_use_onednn` is set only around the static call (it is read when a program's executor is
  built) and restored;
- the first run of every program is checked against the dygraph network; an exception or a mismatch
  logs one line and falls back to dygraph (mode 'auto') or raises (mode 'on').
A oneDNN trap found on the way: the sinusoidal positional encoding computed inside the program
(arange/sin/cos/concat) comes out wrong under oneDNN; `GatedAttn` therefore keeps it as a
non-persistable buffer registered by this module, which its programs read like a parameter.

The outputs agree with dygraph to float32 rounding (different kernels), not bit for bit: about 1e-6
on the networks' outputs at the paper size. The flow amplifies such differences when sampling (a one-ulp
change of every coupling output moves images by ~5e-5, docs/speed.md), so sampled images differ at
that level between the two engines; neither is more accurate.
"""
from __future__ import annotations

import logging
import time
from typing import Dict, Optional, Tuple

import numpy as np
import paddle
import paddle.nn as nn

__all__ = ["MODES", "StaticNN", "available"]

MODES = ("auto", "on", "off")
CPU_FLAGS = {"FLAGS_use_onednn": True}
VERIFY_RTOL = 1e-4    # first-run check: max |static - dygraph| <= VERIFY_RTOL * (1 + max |dygraph|), per output
_log = logging.getLogger("paddle_coopflow.fast_nn")
_logged = set()
# Every program ever built stays referenced until the process ends, also those not kept (dygraph was
# faster, or the check failed). Added against an intermittent segfault before its cause was known (an
# output op replaced by the oneDNN rewrite, see _NNProgram.forward); kept as in langevin_fast._KEEP_ALIVE.
_KEEP_ALIVE: list = []


def available() -> bool:
    """True on a CPU place of a build with oneDNN (where it was measured). GPU places use dygraph (cuDNN)."""
    from ...utils.env import onednn_cpu

    return onednn_cpu()


def _warn_once(msg: str) -> None:
    if msg not in _logged:
        _logged.add(msg)
        _log.warning(msg)


class _NNProgram(nn.Layer):
    """Wrapper converted by to_static, so the network itself stays a dygraph layer."""

    def __init__(self, net: nn.Layer):
        super().__init__()
        self.net = net

    def forward(self, x):
        # Every output ends in .detach() (pd_op.share_data_): under oneDNN, Paddle 3.3.1 replaces the
        # program's pd_ops by onednn_ops in place on the first run, and an output produced by a replaced op
        # is read from freed memory (segfault now and then; see langevin_fast._StepProgram._step).
        return tuple(o.detach() for o in self.net(x))


class StaticNN:
    """Runs a coupling `NN` (x [N, C, H, W] → (a, b, pi, mu, log_s)) as a oneDNN static program.

    Args:
        net: the coupling network (models.flowpp.nn.NN) without aux input.
        mode: 'auto' (the static program where it works and was measured faster than dygraph on the first
            call of its shape, else dygraph) or 'on' (always the static program; failures raise).
        verify: check the first run of each program against the dygraph network.
    """

    def __init__(self, net: nn.Layer, mode: str = "auto", verify: bool = True):
        if mode not in ("auto", "on"):
            raise ValueError(f"StaticNN mode={mode!r}; use 'auto' or 'on' ('off' means: do not build one)")
        self.net, self.strict, self.verify = net, mode == "on", verify
        self.flags = dict(CPU_FLAGS) if available() else {}
        self._programs: Dict[tuple, Optional[object]] = {}   # key → static layer, or None = dygraph
        self._param_ids: Tuple[int, ...] = ()
        self.n_compiled = 0
        self.timings: Dict[tuple, Dict[str, float]] = {}   # key → seconds per call, measured in 'auto'

    def __deepcopy__(self, memo):
        return None  # a deep-copied network builds its own programs

    def chosen(self) -> Dict[tuple, str]:
        return {k: ("dygraph" if v is None else "static") for k, v in self._programs.items()}

    def __call__(self, x: paddle.Tensor) -> tuple:
        ids = tuple(id(p) for p in self.net.parameters())
        if ids != self._param_ids:
            self._programs.clear()
            self._param_ids = ids
        key = (tuple(x.shape[1:]), x.dtype)
        if key not in self._programs:
            return self._build(key, x)
        prog = self._programs[key]
        if prog is not None:
            try:
                return self._run(prog, x)
            except Exception as err:  # noqa: BLE001 — any failure means "use dygraph", by design
                self._programs[key] = None
                self._fail(key, err)
        return self.net(x)

    def _build(self, key, x):
        t0 = time.perf_counter()
        ref = self.net(x)
        t_dygraph = time.perf_counter() - t0
        from .nn import GatedAttn

        for m in self.net.sublayers():   # attention runs at the input's H x W (the convs keep the size)
            if isinstance(m, GatedAttn):
                m.use_encoding_buffer(int(x.shape[2]) * int(x.shape[3]), x.dtype)
        try:
            layer = _NNProgram(self.net)
            layer.training = False   # no backward appended to the program
            prog = paddle.jit.to_static(layer, input_spec=[paddle.static.InputSpec([None] + list(key[0]),
                                                                                   key[1], "x")], full_graph=True)
            _KEEP_ALIVE.append(prog)
            from . import nn as nn_module

            nn_module._PE_BUFFER_IN_PROGRAMS[0] = True   # the first run traces the program
            try:
                out = self._run(prog, x)
            finally:
                nn_module._PE_BUFFER_IN_PROGRAMS[0] = False
            if self.verify:
                self._check(out, ref)
            self.n_compiled += 1
            if not self.strict:   # 'auto': keep the program only if it is faster (small networks: often not)
                t0 = time.perf_counter()
                self._run(prog, x)[0].numpy()
                self.timings[key] = {"static": time.perf_counter() - t0, "dygraph": t_dygraph}
                if self.timings[key]["static"] >= t_dygraph:
                    self._programs[key] = None
                    return ref
            self._programs[key] = prog
        except Exception as err:  # noqa: BLE001
            self._programs[key] = None
            self._fail(key, err)
        return ref

    def _run(self, prog, x):
        params = self.net.parameters()
        saved = [p.stop_gradient for p in params]
        old = paddle.get_flags(list(self.flags)) if self.flags else {}
        try:
            for p in params:
                p.stop_gradient = True
            if self.flags:
                paddle.set_flags(self.flags)
            out = prog(x)
        finally:
            if old:
                paddle.set_flags(old)
            for p, s in zip(params, saved):
                p.stop_gradient = s
        return tuple(out)

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

    def _fail(self, key, err) -> None:
        text = str(err).strip().splitlines()[0] if str(err).strip() else ""
        msg = f"static coupling network unavailable for {key[0]}: {type(err).__name__}: {text}"
        if self.strict:
            raise RuntimeError(msg + " (set Flow.fast_nn=auto to fall back, or off)") from err
        _warn_once(msg + "; using dygraph")
