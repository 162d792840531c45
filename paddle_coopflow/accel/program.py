"""One compiled static-graph program per input key, for a dygraph network: the shared scaffolding.

Both users (the Langevin step, `accel/langevin_step.py`, and the coupling networks,
`accel/coupling.py`) hand :class:`ProgramCache` a wrapper layer to convert and a dygraph reference;
the cache does the rest, the same way for both:

- one program per key (the caller's key: input shape without batch, dtype, constants baked in); the
  batch axis is dynamic; the cache belongs to the object that owns it (dropping the owner drops its
  programs: docs/paddle_notes.md, "Programs can be dropped");
- programs read the network's parameters by reference (optimizer steps are seen); a replaced
  parameter object empties the cache;
- the network's parameters get stop_gradient=True only during each static call (no weight
  gradients in the program; a weight-gradient program segfaults under oneDNN) and are restored;
- the flags (`FLAGS_use_onednn`, `FLAGS_new_executor_serial_run`) are set only during the call and
  restored: both are read when a program's executor is built, on its first run, and dygraph ignores
  them (docs/paddle_notes.md, "oneDNN speed recipe");
- the converted layer ends every output in `.detach()` (:func:`detached`): under oneDNN the first run
  rewrites the program in place, and an output made by a replaced op would be read from freed
  memory (docs/paddle_notes.md, "The oneDNN first-run rewrite");
- the converted layer gets training=False (the attribute only, not .eval(): the network inside keeps
  its mode), so to_static appends no backward over the program (docs/paddle_notes.md, "Static
  programs with paddle.grad: training=False on the wrapper");
- the first run of every program is checked against the dygraph reference, and its own result is
  returned (so numbers never depend on which call built a program); an exception or a mismatch
  logs one line and falls back to dygraph for that key, or raises when the cache is strict.
"""
from __future__ import annotations

import contextlib
import logging
from types import MappingProxyType
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import paddle
import paddle.nn as nn

__all__ = ["CPU_FLAGS", "ENGINES", "ProgramCache", "detached"]

# The values of the config keys that choose a network's engine (Langevin.engine, Flow.coupling_engine).
ENGINES = ("auto", "static", "dygraph")
# The oneDNN recipe of the programs run with forward ops only (the Langevin step, the EBM update, the training
# convolutions): FLAGS_new_executor_serial_run is part of it as measured on the AMD EPYC (no difference on
# the Xeon). The coupling programs for sampling set FLAGS_use_onednn alone.
CPU_FLAGS = MappingProxyType({"FLAGS_use_onednn": True, "FLAGS_new_executor_serial_run": True})


def detached(outputs) -> Tuple[paddle.Tensor, ...]:
    """`.detach()` of each output: pd_op.share_data_, an op the oneDNN rewrite never replaces."""
    return tuple(o.detach() for o in outputs)


class ProgramCache:
    """Compiled programs of one network, built lazily per key, with a dygraph fallback per key.

    Args:
        net: the dygraph network the programs read (parameters frozen during calls).
        what: a short name for log lines ("Langevin step", "coupling network").
        switch: the config key that chooses the engine, named in errors (e.g. "Langevin.engine").
        flags: Paddle flags to set during each static call (empty: none).
        strict: raise instead of falling back (engine 'static').
        grad: run calls with gradients enabled (True: programs with gradients of the input inside),
            or None to leave the caller's grad mode.
        logger: where the one-line messages go (each message once per cache).
    """

    def __init__(self, net: nn.Layer, what: str, switch: str, flags: Optional[Mapping[str, object]] = None,
                 strict: bool = False, grad: Optional[bool] = None, logger: Optional[logging.Logger] = None):
        self.net, self.what, self.switch = net, what, switch
        self.flags = dict(flags or {})
        self.strict, self.grad = strict, grad
        self.log = logger or logging.getLogger("paddle_coopflow.accel")
        self.programs: Dict[tuple, Optional[Tuple[str, object]]] = {}  # key → (label, program) or None
        self.n_compiled = 0
        self.n_fallback_calls = 0
        self._param_ids: Tuple[int, ...] = ()
        self._logged: set = set()   # messages this cache has logged (log-once state of this object)

    def chosen(self) -> Dict[tuple, str]:
        """Which implementation each key uses: the program's label, or 'dygraph'."""
        return {k: ("dygraph" if v is None else v[0]) for k, v in self.programs.items()}

    def log_once(self, msg: str, level: int = logging.WARNING) -> None:
        if msg not in self._logged:
            self._logged.add(msg)
            self.log.log(level, msg)

    def check_params(self) -> None:
        """Empty the cache when a parameter object was replaced (programs hold the old ones)."""
        ids = tuple(id(p) for p in self.net.parameters())
        if ids != self._param_ids:
            self.programs.clear()
            self._param_ids = ids

    def compile(self, layer: nn.Layer, input_spec: List) -> object:
        """to_static of `layer` (whose outputs are detached), with training=False on the layer itself."""
        layer.training = False   # not .eval(): that would flip the network's own mode too
        return paddle.jit.to_static(layer, input_spec=input_spec, full_graph=True)

    def build(self, key: tuple, label: str, make: Callable[[], Tuple[nn.Layer, List]], inputs: Sequence,
              reference: Callable[[], tuple], check: Optional[Callable[[tuple, tuple], None]]) -> Optional[tuple]:
        """First call of `key`: compile, run, check against `reference()`; returns the program's output.

        Args:
            key: the cache key.
            label: the program's name in chosen() and log lines.
            make: () → (layer to convert, input_spec).
            inputs: the program's inputs for this call.
            reference: () → the dygraph result of this call.
            check: (program output, reference) → None, or raises ValueError on a mismatch; None: no check
                (the reference is then not computed).

        Returns:
            The program's output, or None after a (logged) failure: the key then uses dygraph.
        """
        try:
            layer, spec = make()
            self.programs[key] = (label, self.compile(layer, spec))
        except Exception as err:  # noqa: BLE001 — any failure means "use dygraph", by design
            self.fail(key, label, err)
            return None
        # The reference first: its dygraph activations are freed before the program's first run, so the
        # check does not add them to the memory the program holds (a lower peak RSS).
        ref = reference() if check is not None else None
        out = self.call(key, inputs)
        if out is None:
            return None
        try:
            if check is not None:
                check(out, ref)
        except Exception as err:  # noqa: BLE001
            self.fail(key, label, err)
            return None
        self.n_compiled += 1
        self.log_once(f"{self.what} for {key[0]}: {label} program", logging.INFO)
        return out

    def call(self, key: tuple, inputs: Sequence) -> Optional[tuple]:
        """Run the program of `key`: parameters frozen and flags set only during the call.

        Returns the program's (detached) outputs, or None if the key uses dygraph (also after a
        failure of this call, which is logged, or raised when the cache is strict).
        """
        entry = self.programs.get(key)
        if entry is None:
            return None
        params = self.net.parameters()
        saved = [p.stop_gradient for p in params]
        old_flags = paddle.get_flags(list(self.flags)) if self.flags else {}
        try:
            for p in params:
                p.stop_gradient = True
            if self.flags:
                paddle.set_flags(self.flags)
            with paddle.set_grad_enabled(self.grad) if self.grad is not None else contextlib.nullcontext():
                return detached(entry[1](*inputs))
        except Exception as err:  # noqa: BLE001
            self.fail(key, entry[0], err)
            return None
        finally:
            if old_flags:
                paddle.set_flags(old_flags)
            for p, s in zip(params, saved):
                p.stop_gradient = s

    def fail(self, key: tuple, label: str, err: Exception) -> None:
        """`key` uses dygraph from now on: log one line, or raise when the cache is strict."""
        self.programs[key] = None
        text = str(err).strip().splitlines()[0] if str(err).strip() else ""
        msg = f"static {self.what} ({label}) unavailable for {key[:2]}: {type(err).__name__}: {text}"
        if self.strict:
            raise RuntimeError(f"{msg} (set {self.switch}=auto to fall back, or dygraph)") from err
        self.log_once(msg + "; using dygraph")
