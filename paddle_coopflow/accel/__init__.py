"""Static-graph acceleration on CPU: compiled programs for the Langevin step, the EBM update and Flow++'s
coupling networks.

The engine is chosen by the config (`Langevin.engine`, `Flow.coupling_engine`, `Train.update_engine`:
auto | static | dygraph) through the objects that use it, deterministically from config, device and
build; nothing here keeps process-wide state.

- program.py: :class:`ProgramCache`, the scaffolding both share (per-key programs owned by one object,
  frozen parameters and oneDNN flags only during a call, detached outputs, first-run check, fallback).
- langevin_step.py: the Langevin step program and :func:`make_langevin_step` (Langevin.engine).
- coupling.py: the coupling-network programs used when sampling Flow++ (Flow.coupling_engine).
- ebm_update.py: the EBM's loss of eq. (2) with its parameter gradients as one program and
  :func:`make_ebm_loss` (Train.update_engine).
"""
from .ebm_update import StaticEBMLoss, make_ebm_loss
from .langevin_step import (LangevinStepLayer, StaticLangevinStep, engine_in_use, make_langevin_step,
                            supports_manual_grad)

__all__ = ["make_ebm_loss", "StaticEBMLoss", "make_langevin_step", "engine_in_use", "StaticLangevinStep",
           "LangevinStepLayer", "supports_manual_grad"]
