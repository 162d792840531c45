"""Fast Langevin step: one step of eq. (3) as a static-graph program with oneDNN kernels (CPU).

Paddle's dygraph conv kernels do not use oneDNN, which makes a Langevin step about 3x slower than
PyTorch on CPU (PADDLE_NOTES §6). A `paddle.jit.to_static` program of *one* step (forward + gradient
with respect to x), run with `FLAGS_use_onednn` and with the EBM parameters frozen so that no weight
gradients are computed, is as fast as PyTorch. The loop over T stays in Python (an in-graph
`while_loop` segfaults with oneDNN), and the EBM weight update stays in dygraph (a static program
with weight gradients also segfaults with oneDNN).

:func:`make_langevin_step` returns a drop-in replacement for :func:`langevin.langevin_step`
(same arguments, same results to float rounding) for the non-differentiable chain:

    step = make_langevin_step(ebm)          # cached per EBM
    x, f, drift = step(ebm, x, step_size, delta_clip, image_clip, noise, noise_std)

What it takes care of:
- one program per (sample shape, dtype, step size, clips, noise on/off, EBM train flag); the batch
  dimension is dynamic, so a new batch size does not recompile;
- the program reads the EBM's parameters by reference, so optimizer steps between calls are seen;
- EBM parameters are set to stop_gradient=True only for the duration of each static call and restored
  afterwards; their .grad is never written;
- `FLAGS_use_onednn` and `FLAGS_new_executor_serial_run` are switched on only around the static call
  (both are read when the program's executor is built on its first run) and restored;
- gradients are re-enabled inside, so it works under `paddle.no_grad()`;
- the input tensor is cloned inside the program (the PIR in-place pass would otherwise overwrite the
  caller's tensor, PADDLE_NOTES §8.2);
- the first run of every program is checked against the dygraph step; any exception or mismatch
  logs one line and falls back to the dygraph step for that program (mode 'auto'), or raises (mode 'on').

Noise (σ_noise > 0) is drawn in dygraph with `paddle.randn`, exactly as the dygraph step does, and
passed into the program, so seeded runs give the same chain on both paths.
"""
from __future__ import annotations

import logging
import math
from typing import Callable, Dict, Optional, Tuple

import paddle
import paddle.nn as nn

__all__ = ["MODES", "set_mode", "get_mode", "available", "enabled", "FastLangevin", "make_langevin_step"]

MODES = ("auto", "on", "off")
_state = {"mode": "off"}      # process default; the trainer sets it from Langevin.fast
_logged = set()                # messages already logged (each failure kind is logged once)
_log = logging.getLogger("paddle_coopflow.langevin_fast")
_CACHE_ATTR = "_coopflow_fast_langevin"

# Read when a program's executor is built (its first run), so setting them around our calls is enough
# and leaves every other program and dygraph alone: oneDNN kernels (dygraph ignores the flag anyway),
# and one thread for the executor's op scheduling so that oneDNN's OpenMP team is not duplicated.
CPU_FLAGS = {"FLAGS_use_onednn": True, "FLAGS_new_executor_serial_run": True}

# First-run check against dygraph: x_next is in image units ([-1, 1]); oneDNN reorders sums (≈1e-7).
VERIFY_ATOL = 1e-4


def set_mode(mode: str) -> None:
    """Process-wide default for :func:`enabled`: 'auto' (fast where available), 'on' (always, errors
    raise), 'off' (dygraph). Called once from the config (Langevin.fast)."""
    if mode not in MODES:
        raise ValueError(f"Langevin.fast={mode!r} is invalid; use one of {MODES}")
    _state["mode"] = mode


def get_mode() -> str:
    """The process-wide mode set by :func:`set_mode` ('off' until then)."""
    return _state["mode"]


def available() -> bool:
    """True where the static step is measured faster than dygraph: a CPU place with oneDNN compiled in.

    GPU places take the plain dygraph path (cuDNN); the static step was not measured there.
    """
    try:
        on_cpu = paddle.get_device().startswith("cpu")
        return bool(on_cpu and paddle.base.core.is_compiled_with_mkldnn())
    except Exception:  # exotic builds without these entry points: play safe
        return False


def enabled(mode: Optional[str] = None) -> bool:
    """Whether langevin_flow should use the fast step under `mode` (default: the process mode)."""
    mode = get_mode() if mode is None else mode
    if mode not in MODES:
        raise ValueError(f"Langevin.fast={mode!r} is invalid; use one of {MODES}")
    return mode == "on" or (mode == "auto" and available())


def _warn_once(msg: str) -> None:
    if msg not in _logged:
        _logged.add(msg)
        _log.warning(msg)


class _StepProgram(nn.Layer):
    """One Langevin step as a layer to convert with to_static (a wrapper: the EBM itself stays dygraph).

    The constants (step size, clips) are baked in; `shift` is the noise term σ_noise·s·ε or absent.
    Call: x [N, ...] (, shift [N, ...]) → (x_next [N, ...], f [N], drift [N, ...]).
    """

    def __init__(self, ebm: nn.Layer, step_size: float, delta_clip: Optional[float],
                 image_clip: Optional[Tuple[float, float]], with_noise: bool):
        super().__init__()
        self.ebm = ebm
        self.coef = 0.5 * float(step_size) * float(step_size)
        self.delta_clip = delta_clip
        self.image_clip = image_clip
        self.with_noise = with_noise

    def forward(self, x, shift=None):
        xg = x.clone()  # never x.detach(): with the in-place pass that overwrites the caller's tensor
        xg.stop_gradient = False
        f = self.ebm(xg)
        grad = paddle.grad([f.sum()], [xg])[0]
        drift = self.coef * grad
        step = drift
        if self.delta_clip is not None:
            step = paddle.clip(drift, -self.delta_clip, self.delta_clip)
        x_next = xg.detach() + step
        if self.with_noise:
            x_next = x_next + shift
        # Always end in a clip: with oneDNN, a program whose output comes straight from an add (or
        # scale) segfaults or fails with "dst_tensor shall be defined" (measured, Paddle 3.3.1).
        # clip(±inf) is the identity, so "no image clip" stays exact.
        lo, hi = self.image_clip if self.image_clip is not None else (-math.inf, math.inf)
        return paddle.clip(x_next, lo, hi), f.detach(), drift.detach()


class FastLangevin:
    """Static single-step programs for one EBM, compiled lazily, with dygraph fallback.

    Args:
        ebm: f_θ, maps [N, ...] → [N]. Must keep its parameter objects (in-place optimizer updates
            and set_state_dict are fine; replacing a parameter tensor triggers a recompile).
        strict: raise on any failure instead of falling back (mode 'on').
        verify: compare the first run of each program with the dygraph step.
        cpu_flags: set the CPU flags of :data:`CPU_FLAGS` around the static calls (None: when available()).
    """

    def __init__(self, ebm: nn.Layer, strict: bool = False, verify: bool = True,
                 cpu_flags: Optional[bool] = None):
        self.ebm = ebm
        self.strict = strict
        self.verify = verify
        self.flags = dict(CPU_FLAGS) if (available() if cpu_flags is None else cpu_flags) else {}
        self._programs: Dict[tuple, object] = {}   # key → static layer, or None after a failure
        self._param_ids: Tuple[int, ...] = ()
        self.n_compiled = 0
        self.n_fallback_steps = 0

    def __deepcopy__(self, memo):
        # The cache lives on the EBM; a deep-copied EBM must build its own programs.
        return None

    # ------------------------------------------------------------------------------------ steps
    def step(self, x: paddle.Tensor, step_size: float, delta_clip: Optional[float] = 0.1,
             image_clip: Optional[Tuple[float, float]] = (-1.0, 1.0), noise: Optional[paddle.Tensor] = None,
             noise_std: float = 0.0) -> Tuple[paddle.Tensor, paddle.Tensor, paddle.Tensor]:
        """One step of eq. (3), the non-differentiable form of langevin.langevin_step.

        Args:
            x: [N, ...] current state (never modified).
            step_size, delta_clip, image_clip, noise, noise_std: as langevin.langevin_step.

        Returns:
            (x_next [N, ...], f(x) [N], drift ½s²∇f [N, ...] before the δ clip), all detached.
        """
        with_noise = noise_std > 0.0
        eps = shift = None
        if with_noise:
            # Same draw and same arithmetic as the dygraph step: identical chains under one seed.
            eps = paddle.randn(x.shape, dtype=x.dtype) if noise is None else noise
            shift = noise_std * step_size * eps
        clip = None if image_clip is None else (float(image_clip[0]), float(image_clip[1]))
        key = (tuple(x.shape[1:]), x.dtype, float(step_size),
               None if delta_clip is None else float(delta_clip), clip, with_noise, bool(self.ebm.training))
        self._check_params()
        prog = self._programs.get(key, "new")
        if prog is not None:
            first = isinstance(prog, str)
            try:
                if first:
                    prog = self._compile(key)
                out = self._run(prog, x, shift)
                if first and self.verify:
                    self._verify(out, x, step_size, delta_clip, clip, eps, noise_std)
                if first:
                    self._programs[key] = prog
                    self.n_compiled += 1
                return out
            except Exception as err:  # noqa: BLE001 — any failure means "use dygraph", by design
                self._programs[key] = None
                msg = (f"fast Langevin step unavailable for {key[:2]}: {type(err).__name__}: "
                       f"{str(err).splitlines()[0] if str(err) else ''}")
                if self.strict:
                    raise RuntimeError(msg + " (set Langevin.fast=auto to fall back, or off)") from err
                _warn_once(msg + "; using the dygraph step")
        self.n_fallback_steps += 1
        return self._dygraph(x, step_size, delta_clip, clip, eps, noise_std)

    def _compile(self, key: tuple):
        shape, dtype, step_size, delta_clip, clip, with_noise, _ = key
        layer = _StepProgram(self.ebm, step_size, delta_clip, clip, with_noise)
        # Only the wrapper's flag matters: training=False stops to_static from appending a backward over
        # the whole program (a double grad of swish). .eval() would also flip the EBM, so set it directly.
        layer.training = False
        spec = [paddle.static.InputSpec([None] + list(shape), dtype, "x")]
        if with_noise:
            spec.append(paddle.static.InputSpec([None] + list(shape), dtype, "shift"))
        return paddle.jit.to_static(layer, input_spec=spec, full_graph=True)

    def _run(self, prog, x, shift):
        params = self.ebm.parameters()
        saved = [p.stop_gradient for p in params]
        old_flags = paddle.get_flags(list(self.flags)) if self.flags else {}
        try:
            for p in params:
                p.stop_gradient = True      # the program then computes no weight gradients (3x less work)
            if self.flags:
                paddle.set_flags(self.flags)
            with paddle.set_grad_enabled(True):
                out = prog(x, shift) if shift is not None else prog(x)
        finally:
            if old_flags:
                paddle.set_flags(old_flags)
            for p, s in zip(params, saved):
                p.stop_gradient = s
        return tuple(o.detach() for o in out)

    def _dygraph(self, x, step_size, delta_clip, clip, eps, noise_std):
        from .langevin import langevin_step  # lazy: langevin imports this module

        with paddle.set_grad_enabled(True):
            return langevin_step(self.ebm, x, step_size, delta_clip, clip, eps, noise_std)

    def _verify(self, out, x, step_size, delta_clip, clip, eps, noise_std) -> None:
        ref = self._dygraph(x, step_size, delta_clip, clip, eps, noise_std)
        dx = float((out[0] - ref[0]).abs().max().item())
        df = float(((out[1] - ref[1]).abs() / (ref[1].abs() + 1.0)).max().item())
        if not (dx <= VERIFY_ATOL and df <= VERIFY_ATOL):
            raise ValueError(f"first static step differs from dygraph (max |dx| {dx:.2e}, rel |df| {df:.2e})")

    def _check_params(self) -> None:
        ids = tuple(id(p) for p in self.ebm.parameters())
        if ids != self._param_ids:
            self._programs.clear()  # a parameter object was replaced: programs hold the old ones
            self._param_ids = ids


def make_langevin_step(ebm: nn.Layer, strict: Optional[bool] = None) -> Callable:
    """A drop-in for langevin.langevin_step that runs the static program (cached on `ebm`).

    Args:
        ebm: the EBM the step will be called with.
        strict: raise on failure instead of falling back (default: process mode == 'on').

    Returns:
        step(ebm, x, step_size, delta_clip=0.1, image_clip=(-1, 1), noise=None, noise_std=0.0,
        create_graph=False) → (x_next, f, drift), as langevin_step; create_graph=True (the
        differentiable chain) and any other EBM go to the dygraph step.
    """
    fast = ebm.__dict__.get(_CACHE_ATTR)
    if not isinstance(fast, FastLangevin) or fast.ebm is not ebm:
        fast = FastLangevin(ebm)
        object.__setattr__(ebm, _CACHE_ATTR, fast)  # plain attribute: not a sublayer, not in state_dict
    fast.strict = (get_mode() == "on") if strict is None else bool(strict)

    def step(ebm_: nn.Layer, x: paddle.Tensor, step_size: float, delta_clip: Optional[float] = 0.1,
             image_clip: Optional[Tuple[float, float]] = (-1.0, 1.0), noise: Optional[paddle.Tensor] = None,
             noise_std: float = 0.0, create_graph: bool = False):
        if create_graph or ebm_ is not ebm:
            from .langevin import langevin_step

            return langevin_step(ebm_, x, step_size, delta_clip, image_clip, noise, noise_std, create_graph)
        return fast.step(x, step_size, delta_clip, image_clip, noise, noise_std)

    step.fast = fast  # for tests and stats
    return step
