"""Fast Langevin step: one step of eq. (3) as a static-graph program with oneDNN kernels (CPU).

Paddle's dygraph conv kernels do not use oneDNN. A `paddle.jit.to_static` program of *one* step
(forward + gradient with respect to x), run with `FLAGS_use_onednn` and with the EBM parameters
frozen (no weight gradients), can be faster (PADDLE_NOTES §6). The loop over T stays in Python (an
in-graph `while_loop` segfaults with oneDNN) and the EBM weight update stays in dygraph (a static
program with weight gradients segfaults with oneDNN).

Two program variants (docs/speed.md):
- 'manual' (EBMRes only): ∇ₓf written out with forward ops only (a 3×3 conv's input gradient is a
  3×3 conv with the transposed, flipped kernel; avg-pool's is a 2× repeat / 4), run with oneDNN. On
  CPUs where oneDNN picks NHWC brgemm kernels for forward convs and blocked kernels for backward ones
  (the Intel Xeon with AMX this was measured on), a program with backward convs multiplies tensors of
  mixed layouts and oneDNN falls back to its slow reference kernels; the manual program avoids this
  (1.8x faster there than 'autograd' with oneDNN).
- 'autograd': ∇ₓf by `paddle.grad` inside the program; works for any EBM. **Opt-in only**
  (`FastLangevin(..., variant='autograd')`, bench/bench_langevin.py): a program with `paddle.grad`
  inside crashed the process now and then (Paddle 3.3.1, SIGSEGV; the cause, shared with 'manual', was
  an output op replaced by the oneDNN rewrite and is fixed in `_StepProgram._step`). It runs without
  oneDNN, and on this CPU it was slower than dygraph, so 'auto' does not build it.
In modes 'auto' and 'on' the first call of each program key builds 'manual' (EBM_res; any other EBM
uses the dygraph step, or raises in 'on'); 'auto' times it against the dygraph step and keeps the
faster (one log line), so the fast path is never slower.

:func:`make_langevin_step` returns a drop-in for `langevin.langevin_step` (same arguments, same
results to float rounding) for the non-differentiable chain. What it takes care of:
- one program per (sample shape, dtype, step size, clips, noise on/off, EBM train flag); the batch
  dimension is dynamic; programs read the EBM's parameters by reference (optimizer steps are seen);
- EBM parameters get stop_gradient=True only during each static call and are restored; .grad untouched;
- `FLAGS_use_onednn` / `FLAGS_new_executor_serial_run` are set only around the static call (both are
  read when a program's executor is built, on its first run; dygraph ignores them) and restored;
- gradients are re-enabled inside, so it works under `paddle.no_grad()`; the input is cloned inside
  the program (the PIR in-place pass would otherwise overwrite the caller's tensor, PADDLE_NOTES §8.2);
- the first run of every program is checked against the dygraph step; an exception or a mismatch logs
  one line and falls back to dygraph (mode 'auto') or raises (mode 'on').
Noise (σ_noise > 0) is drawn in dygraph with `paddle.randn`, as the dygraph step does, and passed in,
so seeded runs give the same chain on both paths.
"""
from __future__ import annotations

import contextlib
import logging
import math
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import paddle
import paddle.nn as nn
import paddle.nn.functional as F

__all__ = ["MODES", "VARIANTS", "set_mode", "get_mode", "available", "enabled", "FastLangevin",
           "make_langevin_step", "res_energy_and_grad", "res_adjoint_weights", "supports_manual"]

MODES = ("auto", "on", "off")
VARIANTS = ("auto", "manual", "autograd")
_state = {"mode": "off"}      # process default; the trainer sets it from Langevin.engine
_logged = set()                # messages already logged (each one once per process)
_log = logging.getLogger("paddle_coopflow.langevin_fast")
_CACHE_ATTR = "_coopflow_fast_langevin"
# Every program ever built stays referenced until the process ends (also candidates 'auto' did not keep).
# Added against an intermittent segfault before its cause was known (an output op replaced by the oneDNN
# rewrite, see _StepProgram._step); kept as a precaution: a collected program's executor-cache entries
# (keyed by id()s) stay behind in Paddle. Costs the memory of the EBMs they reference.
_KEEP_ALIVE: list = []

# Read when a program's executor is built (its first run). serial_run is kept from the PADDLE_NOTES
# recipe; it made no measurable difference on the machine of docs/speed.md.
CPU_FLAGS = {"FLAGS_use_onednn": True, "FLAGS_new_executor_serial_run": True}
VERIFY_ATOL = 1e-4   # first-run check of x_next (image units) against the dygraph step


def set_mode(mode: str) -> None:
    """Process-wide default for :func:`enabled`: 'auto' (fast where measured faster), 'on' (always a
    static program, errors raise), 'off' (dygraph). Called once from the config (Langevin.engine, see mode_for_engine)."""
    if mode not in MODES:
        raise ValueError(f"Langevin.engine mode {mode!r} is invalid; use one of {MODES}")
    _state["mode"] = mode


def mode_for_engine(engine: str) -> str:
    """This module's mode for a config value of Langevin.engine ('auto' | 'static' | 'dygraph')."""
    return {"static": "on", "dygraph": "off"}.get(engine, engine)


def get_mode() -> str:
    """The process-wide mode set by :func:`set_mode` ('off' until then)."""
    return _state["mode"]


def available() -> bool:
    """True on a CPU place of a build with oneDNN (the case measured). GPU places take the dygraph
    path (cuDNN) in mode 'auto': the static step was not measured there."""
    from .utils.env import onednn_cpu

    return onednn_cpu()


def enabled(mode: Optional[str] = None) -> bool:
    """Whether langevin_flow should use the fast step under `mode` (default: the process mode).

    Always False while a static program is being traced (the exported sampler calls langevin_flow
    inside to_static): the dygraph step is then what gets traced.
    """
    mode = get_mode() if mode is None else mode
    if mode not in MODES:
        raise ValueError(f"Langevin.engine mode {mode!r} is invalid; use one of {MODES}")
    if not paddle.in_dynamic_mode():
        return False
    return mode == "on" or (mode == "auto" and available())


def _warn_once(msg: str, level: int = logging.WARNING) -> None:
    if msg not in _logged:
        _logged.add(msg)
        _log.log(level, msg)


# ------------------------------------------------------------------------ manual ∇ₓf of EBMRes
def _same3x3(conv) -> bool:
    pad = conv._padding if isinstance(conv._padding, (list, tuple)) else [conv._padding] * 2
    return (list(conv.weight.shape[2:]) == [3, 3] and list(conv._stride) == [1, 1] and list(pad) == [1, 1]
            and list(conv._dilation) == [1, 1] and conv._groups == 1 and conv._data_format == "NCHW")


def supports_manual(ebm: nn.Layer) -> bool:
    """True for an EBMRes whose convs are the 3×3 'same' ones :func:`res_energy_and_grad` assumes."""
    from .models.ebm import EBMBlock, EBMRes

    if not isinstance(ebm, EBMRes):
        return False
    layers = list(ebm.f)
    blocks = layers[2:-1]
    return (_same3x3(layers[0]) and all(isinstance(b, EBMBlock) for b in blocks) and len(blocks) >= 1
            and all(_same3x3(c) for b in blocks for c in (b.conv1, b.conv2, b.res))
            and list(layers[-1]._stride) == [1, 1] and layers[-1]._groups == 1)


def _conv(conv, x):
    return F.conv2d(x, conv.weight, conv.bias, stride=1, padding=conv._padding)


def _adjoint_kernel(weight, scale: float = 1.0):
    # ∂/∂x of a stride-1 'same' 3×3 conv is a conv with the kernel transposed and flipped: [in, out, 3, 3].
    w = paddle.flip(weight.transpose([1, 0, 2, 3]), [2, 3])
    return w if scale == 1.0 else w * scale


def _conv_input_grad(conv, g, w_adj):
    # w_adj: the conv's kernel from res_adjoint_weights (transposed, flipped, scaled).
    return F.conv2d(g, w_adj, None, stride=1, padding=conv._padding)


# Per conv of `_res_convs`: conv1 1, conv2 and res 1/4 (the average pool after them, see _avgpool_input_grad).
def _adjoint_scales(n_blocks: int) -> list:
    return [1.0] + [1.0, 0.25, 0.25] * n_blocks


def _res_convs(ebm: nn.Layer) -> list:
    """The 3×3 convs of an EBMRes in the order of :func:`res_adjoint_weights`: stem, then conv1, conv2, res per block."""
    layers = list(ebm.f)
    return [layers[0]] + [c for b in layers[2:-1] for c in (b.conv1, b.conv2, b.res)]


def res_adjoint_weights(ebm: nn.Layer) -> List[paddle.Tensor]:
    """The weight-only factors of ∇ₓf for :func:`res_energy_and_grad`, computed once per chain.

    Returns [adjoint kernel of each 3×3 conv (order of `_res_convs`)] + [Σ_o W_head[o] as [1, C, k, k]].
    They change only when the weights do, so a Langevin chain (fixed EBM) computes them once instead
    of in every step: the flips alone took ~0.2 s per step at nf = 128 on the machine of docs/speed.md.
    """
    head = list(ebm.f)[-1]
    convs = _res_convs(ebm)
    with paddle.no_grad():
        return ([_adjoint_kernel(c.weight, k) for c, k in zip(convs, _adjoint_scales((len(convs) - 1) // 3))]
                + [head.weight.sum(axis=0, keepdim=True)])


def _swish(h):
    s = F.sigmoid(h)
    return h * s, s


def _dswish(a, s):
    # d/dh of a = h·σ(h) is σ + h·σ(1 − σ) = a + σ(1 − a): three elementwise ops, from the forward's a and σ.
    return a + s * (1.0 - a)


def _avgpool_input_grad(g):
    # [N, C, H, W] → [N, C, 2H, 2W]: each value repeated 2×2. The factor 1/4 of the 2×2 average is folded
    # into the adjoint kernels of conv2 and res, the only consumers (exact: a power of two). (tile, not
    # expand: under oneDNN an expand becomes a broadcast add in 6-D that runs on the slow reference kernel.)
    _, c, h, w = g.shape
    return paddle.tile(g.unsqueeze([3, 5]), [1, 1, 1, 2, 1, 2]).reshape([0, c, 2 * h, 2 * w])


def res_energy_and_grad(ebm: nn.Layer, x: paddle.Tensor,
                        adjoint: Optional[Sequence[paddle.Tensor]] = None) -> Tuple[paddle.Tensor, paddle.Tensor]:
    """f(x) [N] and ∇ₓ Σf [N, C, H, W] of an EBMRes using forward ops only (see supports_manual).

    adjoint: :func:`res_adjoint_weights` of the current weights, or None to derive them here.
    """
    layers = list(ebm.f)
    stem, blocks, head = layers[0], layers[2:-1], layers[-1]
    adj = list(adjoint) if adjoint is not None else res_adjoint_weights(ebm)
    c0 = _conv(stem, x)
    a0, s0 = _swish(c0)
    a = a0
    saved = []
    for b in blocks:
        c1 = _conv(b.conv1, a)
        a1, s1 = _swish(c1)
        h = _conv(b.conv2, a1)
        ah, sh = _swish(h)
        r = _conv(b.res, a)
        ar, sr = _swish(r)
        saved.append((b, a1, s1, ah, sh, ar, sr))
        a = F.avg_pool2d(ah + ar, kernel_size=2, stride=2)
    f = paddle.reshape(_conv(head, a), [0, -1]).sum(axis=1)
    # The head maps [N, C, k, k] to [N, 100, 1, 1] and f sums it: ∂f/∂a = Σ_o W_head[o] for every sample.
    g = paddle.expand_as(adj[-1], a)
    for i in reversed(range(len(saved))):
        b, a1, s1, ah, sh, ar, sr = saved[i]
        w1, w2, wr = adj[1 + 3 * i: 4 + 3 * i]
        gp = _avgpool_input_grad(g)
        g_c1 = _conv_input_grad(b.conv2, gp * _dswish(ah, sh), w2) * _dswish(a1, s1)
        g = _conv_input_grad(b.conv1, g_c1, w1) + _conv_input_grad(b.res, gp * _dswish(ar, sr), wr)
    return f, _conv_input_grad(stem, g * _dswish(a0, s0), adj[0])


class _StepProgram(nn.Layer):
    """One Langevin step as a layer to convert with to_static (a wrapper: the EBM itself stays dygraph).

    Constants (step size, clips) are baked in; `shift` is the noise term σ_noise·s·ε or absent.
    Call: x [N, ...] (, shift [N, ...]) → (x_next [N, ...], f [N], drift [N, ...]).
    The 'manual' variant derives the weight-only factors of ∇ₓf inside; `_AdjointStepProgram` takes them
    as inputs instead (computed once per chain by the caller).
    """

    def __init__(self, ebm: nn.Layer, step_size: float, delta_clip: Optional[float],
                 image_clip: Optional[Tuple[float, float]], with_noise: bool, variant: str):
        super().__init__()
        self.ebm = ebm
        self.coef = 0.5 * float(step_size) * float(step_size)
        self.delta_clip, self.image_clip = delta_clip, image_clip
        self.with_noise, self.manual = with_noise, variant == "manual"

    def forward(self, x, shift=None):
        return self._step(x, shift, None)

    def _step(self, x, shift, adjoint):
        xg = x.clone()  # never x.detach(): with the in-place pass that overwrites the caller's tensor
        if self.manual:
            f, grad = res_energy_and_grad(self.ebm, xg, adjoint)
        else:
            xg.stop_gradient = False
            f = self.ebm(xg)
            grad = paddle.grad([f.sum()], [xg])[0]
        drift = self.coef * grad
        step = drift if self.delta_clip is None else paddle.clip(drift, -self.delta_clip, self.delta_clip)
        x_next = xg.detach() + step
        if self.with_noise:
            x_next = x_next + shift
        # Every output ends in .detach() (pd_op.share_data_). Why: on the first run under oneDNN, Paddle
        # 3.3.1 rewrites the forward program *in place*, replacing each pd_op with an onednn_op, while
        # run_program keeps the original output values to create the output tensors: an output produced
        # by a replaced op (clip, add, scale, sum...) is then read from freed memory (a segfault now and
        # then, or "dst_tensor shall be defined"). share_data_ has no oneDNN kernel and is not replaced
        # (tests/test_langevin_fast.py checks the output ops survive the first run).
        lo, hi = self.image_clip if self.image_clip is not None else (-math.inf, math.inf)
        return paddle.clip(x_next, lo, hi).detach(), f.detach(), drift.detach()


class _AdjointStepProgram(_StepProgram):
    """'manual' _StepProgram with the factors as inputs: call (x, extra) with extra = [shift] + res_adjoint_weights(ebm), or
    the adjoint weights alone without noise (to_static needs a fixed signature; a list input holds them)."""

    def forward(self, x, extra):
        shift = extra[0] if self.with_noise else None
        return self._step(x, shift, extra[1:] if self.with_noise else extra)


class FastLangevin:
    """Static single-step programs for one EBM, built lazily per key, with dygraph fallback.

    Args:
        ebm: f_θ, maps [N, ...] → [N]. Must keep its parameter objects (in-place optimizer updates
            and set_state_dict are fine; replacing a parameter tensor triggers a rebuild).
        strict: never use the dygraph step; raise on failure (mode 'on').
        verify: compare the first run of each program with the dygraph step.
        cpu_flags: set :data:`CPU_FLAGS` around the 'manual' program's calls (None: when available()).
        variant: 'auto' ('manual' for EBM_res, dygraph for other EBMs), 'manual', 'autograd'.
    """

    def __init__(self, ebm: nn.Layer, strict: bool = False, verify: bool = True,
                 cpu_flags: Optional[bool] = None, variant: str = "auto"):
        if variant not in VARIANTS:
            raise ValueError(f"FastLangevin variant={variant!r}; use one of {VARIANTS}")
        self.ebm, self.strict, self.verify, self.variant = ebm, strict, verify, variant
        self.flags = dict(CPU_FLAGS) if (available() if cpu_flags is None else cpu_flags) else {}
        self._programs: Dict[tuple, object] = {}   # key → (variant, static layer), or None = dygraph
        self._param_ids: Tuple[int, ...] = ()
        self.n_compiled = 0
        self.n_fallback_steps = 0
        self._chain_depth = 0
        self._adjoint: Optional[List[paddle.Tensor]] = None  # res_adjoint_weights, kept within a chain

    def __deepcopy__(self, memo):
        return None  # the cache lives on the EBM; a deep-copied EBM must build its own programs

    @contextlib.contextmanager
    def chain(self):
        """Scope in which the EBM weights do not change (one Langevin chain): the weight-only factors
        of the 'manual' gradient are computed on first use and reused by every step inside it.
        Outside a chain every step recomputes them (always correct, slower)."""
        self._chain_depth += 1
        try:
            yield self
        finally:
            self._chain_depth -= 1
            if self._chain_depth == 0:
                self._adjoint = None

    def _adjoint_weights(self) -> List[paddle.Tensor]:
        if self._adjoint is not None:
            return self._adjoint
        adj = res_adjoint_weights(self.ebm)
        if self._chain_depth > 0:
            self._adjoint = adj
        return adj

    def chosen(self) -> Dict[tuple, str]:
        """Which implementation each key uses: 'manual', 'autograd' or 'dygraph'."""
        return {k: ("dygraph" if v is None else v[0]) for k, v in self._programs.items()}

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
        eps = shift = None
        if noise_std > 0.0:
            # Same draw and same arithmetic as the dygraph step: identical chains under one seed.
            eps = paddle.randn(x.shape, dtype=x.dtype) if noise is None else noise
            shift = noise_std * step_size * eps
        clip = None if image_clip is None else (float(image_clip[0]), float(image_clip[1]))
        key = (tuple(x.shape[1:]), x.dtype, float(step_size), None if delta_clip is None else float(delta_clip),
               clip, shift is not None, bool(self.ebm.training))
        args = (x, step_size, delta_clip, clip, eps, noise_std)
        self._check_params()
        if key not in self._programs:
            return self._build(key, shift, args)
        entry = self._programs[key]
        if entry is not None:
            try:
                return self._run(entry, x, shift)
            except Exception as err:  # noqa: BLE001 — any failure means "use dygraph", by design
                self._programs[key] = None
                self._fail(key, entry[0], err)
        self.n_fallback_steps += 1
        return self._dygraph(*args)

    # ---------------------------------------------------------------------------------- internals
    def _build(self, key, shift, args):
        """First call of a key: compile, check, (in 'auto') time; returns the dygraph result."""
        with self.chain():   # the weights are fixed while the candidates are built and timed
            return self._build_in_chain(key, shift, args)

    def _build_in_chain(self, key, shift, args):
        """Compile the program of this key, check its first run against dygraph, and return the
        program's own result: the numbers never depend on which call built the program, so a process
        that starts mid-run (resume) computes exactly what an uninterrupted one does."""
        ref = self._dygraph(*args)
        if self.variant != "auto":
            names = [self.variant]
        else:
            names = ["manual"] if supports_manual(self.ebm) else []
            if not names:   # 'autograd' is opt-in only (module doc): dygraph for every other EBM
                msg = (f"static Langevin step: none for {type(self.ebm).__name__} (only EBM_res has the "
                       f"hand-written gradient; the paddle.grad program is opt-in, variant='autograd')")
                if self.strict:
                    raise RuntimeError(msg + "; set Langevin.engine=auto or dygraph")
                _warn_once(msg + "; using the dygraph step", logging.INFO)
        for name in names:
            try:
                prog = (name, self._compile(key, name))
                out = self._run(prog, args[0], shift)
                if self.verify:
                    self._check(out, ref)
            except Exception as err:  # noqa: BLE001
                self._fail(key, name, err)
                continue
            self._programs[key] = prog
            self.n_compiled += 1
            _warn_once(f"Langevin step for {key[0]}: static program ({name})", logging.INFO)
            return out
        self._programs[key] = None
        self.n_fallback_steps += 1
        return ref

    def _compile(self, key: tuple, variant: str):
        shape, dtype, step_size, delta_clip, clip, with_noise, _ = key
        cls = _AdjointStepProgram if variant == "manual" else _StepProgram
        layer = cls(self.ebm, step_size, delta_clip, clip, with_noise, variant)
        # Only the wrapper's flag matters: training=False keeps to_static from appending a backward over
        # the program (a double grad of swish). .eval() would also flip the EBM, so set it directly.
        layer.training = False
        spec = [paddle.static.InputSpec([None] + list(shape), dtype, "x")]
        if with_noise:
            spec.append(paddle.static.InputSpec([None] + list(shape), dtype, "shift"))
        if variant == "manual":
            spec = [spec[0], spec[1:] + [paddle.static.InputSpec(list(w.shape), w.dtype, f"adjoint_{i}")
                                         for i, w in enumerate(self._adjoint_weights())]]
        prog = paddle.jit.to_static(layer, input_spec=spec, full_graph=True)
        _KEEP_ALIVE.append(prog)
        return prog

    def _run(self, entry, x, shift):
        """entry: (variant, static layer)."""
        variant, prog = entry
        inputs = [x] + ([shift] if shift is not None else [])
        if variant == "manual":
            inputs = [x, inputs[1:] + self._adjoint_weights()]
        params = self.ebm.parameters()
        saved = [p.stop_gradient for p in params]
        flags = self.flags if variant == "manual" else {}   # 'autograd' never with oneDNN (module doc)
        old_flags = paddle.get_flags(list(flags)) if flags else {}
        try:
            for p in params:
                p.stop_gradient = True      # the program then computes no weight gradients
            if flags:
                paddle.set_flags(flags)
            with paddle.set_grad_enabled(True):
                out = prog(*inputs)
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

    @staticmethod
    def _check(out, ref) -> None:
        (a, fa), (r, fr) = [(t[0].numpy().astype("float64"), t[1].numpy().astype("float64")) for t in (out, ref)]
        if not (np.isfinite(r).all() and np.isfinite(fr).all()):
            return  # a diverged chain (NaN data or weights): kernels differ in NaN handling, nothing to check
        dx = float(np.abs(a - r).max()) if np.isfinite(a).all() else math.inf
        df = float((np.abs(fa - fr) / (np.abs(fr) + 1.0)).max()) if np.isfinite(fa).all() else math.inf
        if not (dx <= VERIFY_ATOL and df <= VERIFY_ATOL):
            raise ValueError(f"first static step differs from dygraph (max |dx| {dx:.2e}, rel |df| {df:.2e})")

    def _fail(self, key, variant, err) -> None:
        text = str(err).strip().splitlines()[0] if str(err).strip() else ""
        msg = f"fast Langevin step ({variant}) unavailable for {key[:2]}: {type(err).__name__}: {text}"
        if self.strict:
            raise RuntimeError(msg + " (set Langevin.engine=auto to fall back, or dygraph)") from err
        _warn_once(msg + "; using the dygraph step")

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
        differentiable chain), any other EBM and calls inside a to_static trace go to the dygraph step.
    """
    fast = ebm.__dict__.get(_CACHE_ATTR)
    if not isinstance(fast, FastLangevin) or fast.ebm is not ebm:
        fast = FastLangevin(ebm)
        object.__setattr__(ebm, _CACHE_ATTR, fast)  # plain attribute: not a sublayer, not in state_dict
    fast.strict = (get_mode() == "on") if strict is None else bool(strict)

    def step(ebm_: nn.Layer, x: paddle.Tensor, step_size: float, delta_clip: Optional[float] = 0.1,
             image_clip: Optional[Tuple[float, float]] = (-1.0, 1.0), noise: Optional[paddle.Tensor] = None,
             noise_std: float = 0.0, create_graph: bool = False):
        if create_graph or ebm_ is not ebm or not paddle.in_dynamic_mode():
            from .langevin import langevin_step

            return langevin_step(ebm_, x, step_size, delta_clip, image_clip, noise, noise_std, create_graph)
        return fast.step(x, step_size, delta_clip, image_clip, noise, noise_std)

    step.fast = fast  # for tests and stats
    return step
