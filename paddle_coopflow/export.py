"""Static-graph export for Paddle Inference (PaddleClas / PaddleGAN style).

Five programs, each with a dynamic batch axis and tensor inputs only (noise is an input, never
drawn inside a graph), plus an ``infer_cfg.yml`` that describes them::

    flow_generator     z [N, C, H, W]                       -> x̂ = flow⁻¹(z)  [N, C, H, W] in [-1, 1]
    energy             x [N, C, H, W]                       -> f(x) [N]
    energy_grad        x [N, C, H, W]                       -> (f(x) [N], ∇ₓ Σ f [N, C, H, W])
    coopflow_sampler   z [N, C, H, W] (, noise [T, N, C, H, W]) -> x̃: T Langevin steps (eq. 3) from x̂,
                                                               at the test step size, ∇ₓf inside the program
    langevin_step      x [N, C, H, W] (, shift [N, C, H, W])  -> (x_next [N, C, H, W], f(x) [N]): ONE step of
                                                               eq. (3), grad-free (EBMRes only, see below)

``langevin_step`` computes ∇ₓf of an EBMRes with forward ops only (``EBMRes.energy_and_grad``), so,
unlike the programs with gradient ops, it runs in Paddle Inference with oneDNN on; a deployment loops
it T times in Python (a ``while`` op segfaults under oneDNN) after ``flow_generator``.
``infer_cfg.yml`` marks it ``onednn: true``. Every program reaches eq. (3) through
:func:`~paddle_coopflow.langevin.langevin_update`, as training and generation do.

Facts this relies on (docs/paddle_notes.md):
- A program with ``paddle.grad`` inside exports only when the *outer* layer has training=False, so
  every wrapper is put in eval mode before tracing ("Static programs with paddle.grad: training=False
  on the wrapper").
- The Langevin step clones its input, because the PIR in-place pass would otherwise overwrite the
  caller's tensor ("The in-place pass and detached inputs").
- Paddle 3 writes ``<name>.json`` (PIR) + ``<name>.pdiparams``; older Paddle ``<name>.pdmodel``.
  ``deploy/python/infer.py``'s ``find_model_file`` (the one reader of an export directory) accepts both.
- Running the first four programs in Paddle Inference needs ``config.disable_mkldnn()`` (or deleting
  ``inplace_pass``): with oneDNN on, grad programs fail and the bisection inverse is silently wrong
  ("Paddle Inference: oneDNN, gradient ops and the in-place pass").

The networks handed to :func:`export_all` are deep-copied, so a trainer's nets keep their mode,
their ``stop_gradient`` flags and their dygraph behaviour (``to_static`` converts a layer in place).
"""
from __future__ import annotations

import copy
import datetime
import os
import warnings
from typing import Dict, List, Optional, Sequence, Tuple

import paddle
import paddle.nn as nn
from paddle.static import InputSpec

from .errors import UserError
from .accel.langevin_step import LangevinStepLayer, supports_manual_grad
from .langevin import langevin_flow, langevin_step, noise_std_for
from .version import __version__

__all__ = ["PROGRAMS", "ONEDNN_SAFE", "FlowGenerator", "Energy", "EnergyGrad", "CoopFlowSampler",
           "LangevinStepProgram", "SamplerSettings", "sampler_settings", "export_layer", "export_all", "export_checkpoint",
           "write_infer_cfg"]

PROGRAMS = ("flow_generator", "energy", "energy_grad", "coopflow_sampler", "langevin_step")
# Programs measured (and tested) correct in Paddle Inference with oneDNN on: no gradient ops, no while
# op, no bisection. The others need disable_mkldnn() (see the module docstring).
ONEDNN_SAFE = ("langevin_step",)
MODEL_SUFFIXES = (".json", ".pdmodel")  # PIR (Paddle >= 3) first, then the old program format
INFER_CFG = "infer_cfg.yml"


# ------------------------------------------------------------------------------------ wrappers
class FlowGenerator(nn.Layer):
    """z [N, C, H, W] ~ N(0, I) → flow proposal x̂ = flow⁻¹(z) [N, C, H, W] in [-1, 1]."""

    def __init__(self, flow: nn.Layer):
        super().__init__()
        self.flow = flow

    def forward(self, z: paddle.Tensor) -> paddle.Tensor:
        return self.flow.inverse(z)


class Energy(nn.Layer):
    """x [N, C, H, W] → f(x) [N] (negative energy)."""

    def __init__(self, ebm: nn.Layer):
        super().__init__()
        self.ebm = ebm

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        return self.ebm(x)


class EnergyGrad(nn.Layer):
    """x [N, C, H, W] → (f(x) [N], ∇ₓ Σ_batch f(x) [N, C, H, W]); the input is never modified."""

    def __init__(self, ebm: nn.Layer):
        super().__init__()
        self.ebm = ebm

    def forward(self, x: paddle.Tensor) -> Tuple[paddle.Tensor, paddle.Tensor]:
        # clone, not detach: under PIR the in-place pass would write into the feed (docs/paddle_notes.md,
        # "The in-place pass and detached inputs")
        xg = x.clone()
        xg.stop_gradient = False
        with paddle.set_grad_enabled(True):
            f = self.ebm(xg)
            grad = paddle.grad([f.sum()], [xg])[0]
        return f, grad


class SamplerSettings:
    """What the sampler bakes in: T, step size s, δ clip, image clip, and whether noise is an input.

    Args:
        n_steps: T.
        step_size: s (the config's test step size).
        delta_clip: δ, or None.
        image_clip: (lo, hi), or None.
        noise_std: σ a deployment should scale N(0, I) noise by; noise is an input iff σ > 0.
    """

    def __init__(self, n_steps: int, step_size: float, delta_clip: Optional[float],
                 image_clip: Optional[Sequence[float]], noise_std: float = 0.0):
        self.n_steps = int(n_steps)
        self.step_size = float(step_size)
        self.delta_clip = None if delta_clip is None else float(delta_clip)
        self.image_clip = None if image_clip is None else (float(image_clip[0]), float(image_clip[1]))
        self.noise_std = float(noise_std)

    @property
    def noise_input(self) -> bool:
        return self.noise_std > 0.0

    def to_dict(self) -> Dict:
        return {"n_steps": self.n_steps, "step_size": self.step_size, "delta_clip": self.delta_clip,
                "image_clip": list(self.image_clip) if self.image_clip else None,
                "noise_input": self.noise_input, "noise_std": self.noise_std}


def sampler_settings(cfg) -> SamplerSettings:
    """Sampler settings from a Config: T = Langevin.n_steps at Langevin.test_step_size.

    Noise follows Langevin.noise_mode through :func:`~paddle_coopflow.langevin.noise_std_for` at the end of
    the run (epoch = Train.coop_epochs): 'none' → no noise input (the official sampler); 'constant' → σ =
    noise_std; 'decay' → noise_std·r(coop_epochs) of eq. (10) (0, hence no noise input, once
    coop_epochs ≥ K).
    """
    lg = cfg.Langevin
    std = noise_std_for(lg.noise_mode, cfg.Train.coop_epochs, lg.noise_decay_K, lg.noise_std)
    return SamplerSettings(lg.n_steps, lg.test_step_size, lg.delta_clip, lg.image_clip, std)


class CoopFlowSampler(nn.Layer):
    """z [N, C, H, W] (, noise ε [T, N, C, H, W]) → x̃ [N, C, H, W]: the CoopFlow sample.

    x̂ = flow⁻¹(z), then T steps of eq. (3) with :func:`~paddle_coopflow.langevin.langevin_step`, as
    :func:`~paddle_coopflow.langevin.langevin_flow` does for generation (the tests check they agree).
    With a noise input the program adds s·ε per step, so the deployment passes ε = σ·N(0, I)
    (σ from infer_cfg.yml), or zeros to switch the noise off.
    """

    def __init__(self, flow: nn.Layer, ebm: nn.Layer, settings: SamplerSettings):
        super().__init__()
        self.flow = flow
        self.ebm = ebm
        self.s = settings

    def forward(self, z: paddle.Tensor, noise: Optional[paddle.Tensor] = None) -> paddle.Tensor:
        x = self.flow.inverse(z)
        s = self.s
        if paddle.in_dynamic_mode():   # called as a dygraph layer: exactly langevin_flow (ε pre-scaled by σ)
            return langevin_flow(self.ebm, x, s.n_steps, s.step_size, s.delta_clip, s.image_clip,
                                 noise_std=0.0 if noise is None else 1.0, noise=noise)
        with paddle.set_grad_enabled(True):
            # Traced: one while op around one step. Unrolling T steps made the paper-size program ~30x
            # larger, its export ~15x slower and predictor creation ~35x slower, for the same numbers.
            def body(k, x):
                eps = None if noise is None else paddle.gather(noise, k, axis=0).squeeze(0)
                return [k + 1, self._step(x, eps)]

            k = paddle.zeros([1], dtype="int64")
            n_steps = paddle.full([1], self.s.n_steps, dtype="int64")
            _, x = paddle.static.nn.while_loop(lambda k, x: k < n_steps, body, [k, x])
        return x

    def _step(self, x: paddle.Tensor, eps: Optional[paddle.Tensor]) -> paddle.Tensor:
        """One step of eq. (3) (langevin_step, as langevin_flow runs it; ε already scaled by σ)."""
        s = self.s
        return langevin_step(self.ebm, x, s.step_size, s.delta_clip, s.image_clip, eps,
                             0.0 if eps is None else 1.0)[0]


class LangevinStepProgram(nn.Layer):
    """x [N, C, H, W] (, shift [N, C, H, W]) → (x_next [N, C, H, W], f(x) [N]): one grad-free step of eq. (3).

    The step of :class:`CoopFlowSampler` (test step size, δ clip, image clip baked in), built from
    :class:`~paddle_coopflow.accel.LangevinStepLayer` (the in-process static step) in its 'manual'
    variant: ∇ₓf of the EBMRes is written with forward ops only, so the program holds no gradient op
    and Paddle Inference can run it with oneDNN. ``shift`` is the
    noise term s·ε with ε = σ·N(0, I) (present iff the sampler has a noise input); the program adds it
    before the image clip, as the sampler does. Looping it T times from flow⁻¹(z) gives the sampler's
    output (the tests check this).

    The weight-only factors of ∇ₓf (``EBMRes.adjoint_weights``: flipped, transposed 3×3
    kernels and the summed head) are computed once here and saved as extra frozen parameters, so the
    program does not redo them on every run: 13% faster per step under oneDNN at nf = 128 (batch 4,
    1 thread), for a parameter file about twice the EBM's size.

    Args:
        ebm: an EBMRes for which ``supports_manual_grad()`` holds (frozen, eval mode).
        settings: the sampler's settings.
    """

    def __init__(self, ebm: nn.Layer, settings: SamplerSettings):
        super().__init__()
        if not supports_manual_grad(ebm):
            raise UserError(f"langevin_step needs an EBMRes with 3x3 'same' convs; {type(ebm).__name__} "
                            "has no grad-free step (export coopflow_sampler instead)")
        self.step = LangevinStepLayer(ebm, settings.step_size, settings.delta_clip, settings.image_clip,
                                      settings.noise_input, "manual")
        self.adjoint = nn.ParameterList()
        for w in ebm.adjoint_weights():
            p = self.create_parameter(w.shape, dtype=w.dtype, default_initializer=nn.initializer.Assign(w))
            p.stop_gradient = True
            self.adjoint.append(p)

    def forward(self, x: paddle.Tensor, shift: Optional[paddle.Tensor] = None) -> Tuple[paddle.Tensor, paddle.Tensor]:
        # the step's outputs end in .detach() (docs/paddle_notes.md, "The oneDNN first-run rewrite")
        x_next, f, _ = self.step(x, ([shift] if shift is not None else []) + [w for w in self.adjoint])
        return x_next, f


# ------------------------------------------------------------------------------------ files
def export_layer(layer: nn.Layer, input_spec: List[InputSpec], path_prefix: str) -> Tuple[str, str]:
    """Trace `layer` (switched to eval mode) with `input_spec` and save it; returns (model, params)."""
    layer.eval()  # REQUIRED for programs with paddle.grad inside (see the module doc)
    with warnings.catch_warnings():
        # harmless, once per traced op that asks for .place
        warnings.filterwarnings("ignore", message=".*place' interface for pir graph mode")
        static = paddle.jit.to_static(layer, input_spec=input_spec, full_graph=True)
        paddle.jit.save(static, path_prefix)
    params = path_prefix + ".pdiparams"
    model = next(path_prefix + suf for suf in MODEL_SUFFIXES if os.path.isfile(path_prefix + suf))
    return model, params


def _frozen_copy(net: nn.Layer) -> nn.Layer:
    """Deep copy in eval mode with every parameter frozen: the traced backward then needs ∇ₓ only."""
    net = copy.deepcopy(net)
    net.eval()
    for p in net.parameters():
        p.stop_gradient = True
    return net


def _image_shape(cfg, flow: Optional[nn.Layer], ebm: Optional[nn.Layer]) -> List[int]:
    if flow is not None and hasattr(flow, "z_shape"):
        return [int(v) for v in flow.z_shape]
    if cfg.Flow.arch == "flowpp":
        return [int(v) for v in cfg.Flow.in_shape]
    raise UserError("export needs image models (Flow.arch: flowpp, EBM.arch: res or plain); the 2-D toy "
                    "models are not exported")


def export_all(cfg, flow: Optional[nn.Layer], ebm: Optional[nn.Layer], out_dir: str,
               programs: Sequence[str] = PROGRAMS) -> Dict[str, str]:
    """Export every program the nets allow into `out_dir` and write ``infer_cfg.yml``.

    Args:
        cfg: the resolved Config (image shape, Langevin settings, Export.with_sampler).
        flow: trained FlowPlusPlus or None; deep-copied, never modified.
        ebm: trained image EBM or None; deep-copied, never modified.
        out_dir: created if needed; existing files of the same names are replaced.
        programs: subset of PROGRAMS to export (the ones whose net is missing are skipped, and
            langevin_step for an EBM without a grad-free step).

    Returns:
        {program name: model file path, ..., "infer_cfg": path of infer_cfg.yml}.
    """
    if cfg.Flow.arch != "flowpp" or cfg.EBM.arch == "mlp":
        raise UserError("export supports image models only (Flow.arch: flowpp, EBM.arch: res or plain)")
    unknown = [p for p in programs if p not in PROGRAMS]
    if unknown:
        raise UserError(f"unknown program(s) {unknown}; choose from {list(PROGRAMS)}")
    c, h, w = _image_shape(cfg, flow, ebm)
    settings = sampler_settings(cfg)
    img, zspec = InputSpec([None, c, h, w], "float32", "x"), InputSpec([None, c, h, w], "float32", "z")
    fl = _frozen_copy(flow) if flow is not None else None
    eb = _frozen_copy(ebm) if ebm is not None else None

    wanted = []
    if fl is not None and "flow_generator" in programs:
        wanted.append(("flow_generator", FlowGenerator(fl), [zspec], {"z": [-1, c, h, w]}))
    if eb is not None and "energy" in programs:
        wanted.append(("energy", Energy(eb), [img], {"x": [-1, c, h, w]}))
    if eb is not None and "energy_grad" in programs:
        wanted.append(("energy_grad", EnergyGrad(eb), [img], {"x": [-1, c, h, w]}))
    if fl is not None and eb is not None and "coopflow_sampler" in programs and cfg.Export.with_sampler:
        specs, inputs = [zspec], {"z": [-1, c, h, w]}
        if settings.noise_input:
            specs.append(InputSpec([settings.n_steps, None, c, h, w], "float32", "noise"))
            inputs["noise"] = [settings.n_steps, -1, c, h, w]
        wanted.append(("coopflow_sampler", CoopFlowSampler(fl, eb, settings), specs, inputs))
    # The grad-free step exists for EBMRes only; for other EBMs it is skipped (deployments use the sampler).
    if eb is not None and "langevin_step" in programs and cfg.Export.with_sampler and supports_manual_grad(eb):
        specs, inputs = [img], {"x": [-1, c, h, w]}
        if settings.noise_input:
            specs.append(InputSpec([None, c, h, w], "float32", "shift"))
            inputs["shift"] = [-1, c, h, w]
        wanted.append(("langevin_step", LangevinStepProgram(eb, settings), specs, inputs))
    if not wanted:
        raise UserError("nothing to export: the checkpoint/nets hold neither a flow nor an EBM for the "
                        f"requested programs {list(programs)}")

    os.makedirs(out_dir, exist_ok=True)
    out, meta = {}, {}
    for name, layer, spec, inputs in wanted:
        model, params = export_layer(layer, spec, os.path.join(out_dir, name))
        out[name] = model
        meta[name] = {"model": os.path.basename(model), "params": os.path.basename(params), "inputs": inputs,
                      "onednn": name in ONEDNN_SAFE}
    out["infer_cfg"] = write_infer_cfg(out_dir, cfg, [c, h, w], settings, meta)
    return out


def export_checkpoint(cfg, prefix: str, out_dir: Optional[str] = None,
                      programs: Sequence[str] = PROGRAMS) -> Dict[str, str]:
    """Load checkpoint `prefix` into nets built from `cfg` and export them (what tools/export_model.py runs).

    Args:
        cfg: Config describing the checkpoint's networks (a mismatch raises a one-line CheckpointError).
        prefix: checkpoint prefix such as ``output/run/ckpt/best``; only ``<prefix>.pdparams`` is read.
        out_dir: default Export.save_dir, else ``<Global.output_dir>/inference``.
        programs: subset of PROGRAMS.

    Returns:
        As :func:`export_all`.
    """
    from .builder import load_trained

    if cfg.Flow.arch != "flowpp" or cfg.EBM.arch == "mlp":
        raise UserError("export supports image models only (Flow.arch: flowpp, EBM.arch: res or plain)")
    flow, ebm = load_trained(cfg, prefix)
    out_dir = out_dir or cfg.Export.save_dir or os.path.join(cfg.Global.output_dir, "inference")
    return export_all(cfg, flow, ebm, out_dir, programs=programs)


def write_infer_cfg(out_dir: str, cfg, image_shape: Sequence[int], settings: SamplerSettings,
                    programs: Dict[str, Dict]) -> str:
    """Write ``infer_cfg.yml``: everything deploy/python/infer.py needs, without the training package.

    Only block mappings, scalars and inline lists of scalars are written (one item per line), so
    the deployment's YAML-free fallback reader can parse it.
    """
    import yaml

    class _Dumper(yaml.SafeDumper):
        pass

    _Dumper.add_representer(list, lambda d, v: d.represent_sequence("tag:yaml.org,2002:seq", v, flow_style=True))

    doc = {
        "model": "paddle_coopflow CoopFlow",
        "package_version": __version__,
        "paddle_version": paddle.__version__,
        "exported_at": datetime.datetime.now().isoformat(timespec="seconds"),
        "image_shape": [int(v) for v in image_shape],
        "value_range": [-1.0, 1.0],
        "langevin": settings.to_dict(),
        "flow": {"inverse_method": cfg.Flow.inverse_method, "undo_bound": bool(cfg.Flow.undo_bound)},
        # oneDNN breaks the grad programs and, with inplace_pass, silently breaks the bisection; each
        # program's `onednn` flag says whether it is safe under oneDNN (only langevin_step so far)
        "inference": {"disable_mkldnn": True, "onednn_programs": [p for p in programs if p in ONEDNN_SAFE]},
        "programs": programs,
    }
    path = os.path.join(out_dir, INFER_CFG)
    with open(path, "w") as fh:
        fh.write("# Written by paddle_coopflow.export; read by deploy/python/infer.py\n")
        yaml.dump(doc, fh, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=10000)
    return path
