"""Typed, validated YAML configuration shared by every tool.

A config file has CapWords sections (PaddleClas style)::

    _BASE_: base.yaml            # optional, path relative to this file; deep-merged
    Global: {seed: 0, output_dir: output/celeba_t30}
    Langevin: {n_steps: 30, step_size: 0.03, test_step_size: 0.035}

and any key can be overridden on the command line with ``-o Section.key=value`` (the value is
parsed with ``yaml.safe_load``, never ``eval``). Unknown keys, wrong types and out-of-range values
raise :class:`ConfigError` with a one-line message naming the key, the value and where it came
from. Tools catch it and exit with code 2, no traceback (:func:`run_cli`).
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import difflib
import os
import sys
import typing
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import yaml


class ConfigError(ValueError):
    """A user error in a config file or an ``-o`` override. The message is one line."""


def _f(default, *, choices=None, min=None, max=None, help=""):  # noqa: A002 (schema field)
    """A schema field with validation metadata."""
    meta = {"choices": choices, "min": min, "max": max, "help": help}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: copy.deepcopy(d), metadata=meta)
    return field(default=default, metadata=meta)


# --------------------------------------------------------------------------------------------
# Schema. Defaults are the reference code's ([T]) CIFAR-10 CoopFlow(T=30) values (SPEC §1.1, §3, §4).
# --------------------------------------------------------------------------------------------
@dataclass
class GlobalConfig:
    seed: int = _f(0, min=0)
    device: str = _f("auto", choices=("auto", "cpu", "gpu"))
    output_dir: str = _f("output/run")
    overwrite: bool = _f(False, help="allow writing into an existing run directory")
    threads: int = _f(0, min=0, help="CPU math threads; 0 = all cores (split over ranks)")
    log_interval: int = _f(20, min=1)
    sample_interval: int = _f(200, min=0, help="iterations between sample grids; 0 = off")
    save_interval: int = _f(0, min=0, help="iterations between iter_* checkpoints; 0 = epoch ends only")
    save_every_epochs: int = _f(1, min=0)
    keep_checkpoints: int = _f(3, min=1, help="iter_* checkpoints kept on disk")
    max_consecutive_nonfinite: int = _f(20, min=1, help="stop after this many NaN/Inf steps in a row")
    grid_size: int = _f(28, min=1, help="images in the fixed-noise sample grids")
    use_visualdl: bool = _f(True)


@dataclass
class FlowConfig:
    arch: str = _f("flowpp", choices=("flowpp", "flow2d"))
    in_shape: List[int] = _f([3, 32, 32])
    scales: List[List[int]] = _f([[0, 4], [2, 3]])
    mid_channels: int = _f(96, min=1)
    num_blocks: int = _f(10, min=1)
    num_components: int = _f(32, min=1)
    num_dequant_blocks: int = _f(2, min=0, help="0 = uniform dequantization")
    use_attn: bool = _f(True)
    drop_prob: float = _f(0.2, min=0.0, max=1.0)
    undo_bound: bool = _f(False, help="undo the 0.9 logit bound when sampling ([T] keeps it: SPEC §1.9)")
    inverse_method: str = _f("newton", choices=("newton", "bisection"),
                             help="mixture-CDF inverse when sampling: 'newton' (safeguarded Newton, ~50x faster, "
                                  "closer to the exact inverse) or 'bisection' (the official code's constants)")
    coupling_engine: str = _f("dygraph", choices=("auto", "static", "dygraph"),
                              help="coupling networks when sampling in eval mode: 'static' (static-graph oneDNN "
                                   "programs), 'dygraph', or 'auto' (static on CPU builds with oneDNN)")
    # 2-D toy flow (arch: flow2d)
    hidden: int = _f(64, min=1)
    num_layers: int = _f(8, min=1)


@dataclass
class EBMConfig:
    arch: str = _f("res", choices=("res", "plain", "mlp"))
    in_channels: int = _f(3, min=1)
    base_channels: int = _f(128, min=1)
    img_size: int = _f(32, choices=(8, 16, 32, 64))
    # MLP EBM (2-D data)
    in_dim: int = _f(2, min=1)
    hidden: int = _f(128, min=1)
    depth: int = _f(3, min=1)


@dataclass
class LangevinConfig:
    n_steps: int = _f(30, min=0, help="T, eq. (3)")
    step_size: float = _f(0.03, min=0.0, help="training step size s")
    test_step_size: float = _f(0.04, min=0.0, help="step size for sampling / FID (Table 3)")
    delta_clip: Optional[float] = _f(0.1, min=0.0, help="clip of the gradient term; null = off")
    image_clip: Optional[List[float]] = _f([-1.0, 1.0], help="[lo, hi] image range; null = off")
    noise: str = _f("none", choices=("none", "constant", "decay"))
    noise_std: float = _f(1.0, min=0.0, help="noise = noise_std * s * eps (eq. 3)")
    noise_decay_K: float = _f(30.0, min=1e-9, help="eq. (10): max(1 - epoch/K, 0)^20")
    engine: str = _f("auto", choices=("auto", "static", "dygraph"),
                     help="Langevin step: 'static' (static-graph oneDNN program, EBM_res), 'dygraph', or 'auto' "
                          "(static on CPU builds with oneDNN, dygraph elsewhere); never decided by timing")


@dataclass
class OptimizerConfig:
    flow_lr: float = _f(1e-4, min=0.0)
    flow_beta1: float = _f(0.9, min=0.0, max=1.0)
    flow_beta2: float = _f(0.999, min=0.0, max=1.0)
    flow_gain_l2: float = _f(5e-5, min=0.0, help="coupled L2 on weight-norm gains only")
    flow_clip_norm: Optional[float] = _f(1.0, min=0.0)
    flow_clip_mode: str = _f("global", choices=("global", "per_group"))
    flow_skip_norm: Optional[float] = _f(None, min=0.0)
    ebm_lr: float = _f(1e-4, min=0.0)
    ebm_beta1: float = _f(0.5, min=0.0, max=1.0)
    ebm_beta2: float = _f(0.5, min=0.0, max=1.0)
    ebm_clip_norm: Optional[float] = _f(None, min=0.0)
    ebm_skip_norm: Optional[float] = _f(None, min=0.0)
    ebm_skip_in_first_epoch: bool = _f(True, help="apply ebm_skip_norm in epoch 0 too (the Pre scripts do not)")
    warmup_iters: int = _f(200, min=0)
    warmup_first_step_zero: bool = _f(True, help="[T] quirk: LambdaLR gives lr 0 on the first step")


@dataclass
class TrainConfig:
    mode: str = _f("coopflow", choices=("coopflow", "flow_only", "langevin_only"))
    batch_size: int = _f(28, min=1)
    pretrain_epochs: int = _f(0, min=0, help="phase 1: flow maximum likelihood (CoopFlow(Pre))")
    warmup_epochs: int = _f(0, min=0, help="phase 2: flow frozen, EBM trained")
    coop_epochs: int = _f(100, min=0, help="phase 3: cooperative training")
    warmup_off_by_one: bool = _f(False, help="replicate [T]'s extra frozen epoch (SPEC §4.2)")
    n_update_flow: int = _f(1, min=1)
    flow_waits_for_ebm: bool = _f(True, help="step the flow only when the EBM step was taken (false: main_cifar.py)")
    sample_flow_train_mode: bool = _f(True, help="[T] samples the flow in train mode (dropout on)")
    data_init_batches: int = _f(200, min=0, help="batches of epoch 0 used for ActNorm init, not trained on")
    data_init_group: int = _f(20, min=1)
    init_flow: str = _f("", help="checkpoint prefix of a pre-trained flow (skips phase 1)")
    max_iters: int = _f(0, min=0, help="stop after this many training iterations; 0 = run all epochs")


@dataclass
class DataConfig:
    name: str = _f("cifar10", choices=("cifar10", "svhn", "celeba", "folder", "digits",
                                       "spiral", "moons", "rings", "checkerboard", "file"))
    root: str = _f("data/cifar10")
    split: str = _f("train", choices=("train", "test", "all"))
    image_size: int = _f(32, min=4)
    channels: int = _f(3, choices=(1, 3))
    hflip: Optional[bool] = _f(None, help="null = dataset default (on for CIFAR-10 only)")
    num_workers: int = _f(0, min=0)
    use_shared_memory: bool = _f(False)
    # 2-D data
    num_points: int = _f(10000, min=10)
    noise: float = _f(0.05, min=0.0)


@dataclass
class EvalConfig:
    fid_every_epochs: int = _f(0, min=0, help="in-training FID period; 0 = off")
    fid_num_samples: int = _f(5000, min=2)
    fid_batch_size: int = _f(50, min=1)
    inception_weights: str = _f("", help="pt_inception-2015-12-05-6726825d.pth or a .pdparams")
    fid_ref_stats: str = _f("", help=".npz with mu/sigma; computed from Data when empty")
    fid_ref_num: int = _f(50000, min=2)
    num_samples: int = _f(5000, min=1, help="2-D: samples drawn after training")
    sample_batch_size: int = _f(100, min=1)


@dataclass
class ExportConfig:
    on_train_end: bool = _f(True)
    save_dir: str = _f("", help="default: <output_dir>/inference")
    with_sampler: bool = _f(True)


@dataclass
class ToyConfig:
    """The 2-D experiment (paper §5.1, Figure 2): plotting and the sample metric."""
    metric: str = _f("mmd", choices=("mmd", "swd"))
    mmd_bandwidths: List[float] = _f([0.05, 0.1, 0.2, 0.5, 1.0], help="Gaussian-kernel bandwidths (summed)")
    heldout_points: int = _f(5000, min=10)
    metric_points: int = _f(2000, min=10, help="points per set used by the metric")
    plot_range: float = _f(4.0, min=0.1, help="density grid covers [-r, r]^2")
    grid_resolution: int = _f(200, min=10)
    eval_every: int = _f(0, min=0, help="iterations between metric evaluations during training; 0 = end only")


@dataclass
class Config:
    Global: GlobalConfig = field(default_factory=GlobalConfig)
    Flow: FlowConfig = field(default_factory=FlowConfig)
    EBM: EBMConfig = field(default_factory=EBMConfig)
    Langevin: LangevinConfig = field(default_factory=LangevinConfig)
    Optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    Train: TrainConfig = field(default_factory=TrainConfig)
    Data: DataConfig = field(default_factory=DataConfig)
    Eval: EvalConfig = field(default_factory=EvalConfig)
    Export: ExportConfig = field(default_factory=ExportConfig)
    Toy: ToyConfig = field(default_factory=ToyConfig)

    def to_dict(self) -> Dict[str, Dict[str, Any]]:
        return dataclasses.asdict(self)

    def dump(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None)


SECTIONS = {f.name: f.type for f in dataclasses.fields(Config)}

# Keys renamed after what they choose: (section, old key) -> (new key, old value -> new value).
RENAMED_KEYS = {
    ("Langevin", "fast"): ("engine", {"on": "static", "off": "dygraph", True: "static", False: "dygraph"}),
    ("Flow", "fast_nn"): ("coupling_engine", {"on": "static", "off": "dygraph", True: "static", False: "dygraph"}),
    ("Train", "order"): ("flow_waits_for_ebm", {"reference": True, "main_cifar": False}),
    ("Optimizer", "skip_check_first_epoch"): ("ebm_skip_in_first_epoch", {}),
}
RENAMED_VALUES = {("Flow", "inverse_method"): {"fast": "newton"}}
_SECTION_CLASSES = {name: typing.get_type_hints(Config)[name] for name in SECTIONS}


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------
def _suggest(word: str, options) -> str:
    near = difflib.get_close_matches(word, list(options), n=1, cutoff=0.5)
    return f" (did you mean '{near[0]}'?)" if near else f" (valid: {', '.join(sorted(options))})"


def _read_yaml(path: str, seen=()) -> Tuple[dict, dict]:
    """Read a YAML file with `_BASE_` inheritance → (merged dict, per-key source)."""
    path = os.path.abspath(path)
    if path in seen:
        raise ConfigError(f"_BASE_ cycle through {path}")
    if not os.path.isfile(path):
        raise ConfigError(f"config file not found: {path}")
    try:
        with open(path) as fh:
            data = yaml.safe_load(fh) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: invalid YAML: {str(err).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections")
    merged: dict = {}
    sources: dict = {}
    base = data.pop("_BASE_", None)
    bases = [base] if isinstance(base, str) else (base or [])
    for b in bases:
        bd, bs = _read_yaml(os.path.join(os.path.dirname(path), b), seen + (path,))
        _merge(merged, sources, bd, bs)
    own_sources = {}
    for sec, body in data.items():
        if isinstance(body, dict):
            for k in body:
                own_sources[(sec, k)] = path
        else:
            own_sources[(sec, None)] = path
    _merge(merged, sources, data, own_sources)
    return merged, sources


def _merge(dst: dict, dst_src: dict, new: dict, new_src: dict) -> None:
    for sec, body in new.items():
        if isinstance(body, dict) and isinstance(dst.get(sec), dict):
            dst[sec].update(copy.deepcopy(body))
        else:
            dst[sec] = copy.deepcopy(body)
    dst_src.update(new_src)


def _parse_override(text: str) -> Tuple[str, str, Any]:
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like Section.key=value")
    key, raw = text.split("=", 1)
    if key.count(".") != 1:
        raise ConfigError(f"override key '{key}' must look like Section.key (e.g. Global.seed=1)")
    sec, k = key.split(".")
    try:
        value = yaml.safe_load(raw) if raw.strip() != "" else ""
    except yaml.YAMLError:
        value = raw
    return sec.strip(), k.strip(), value


def _type_name(tp) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value, tp, where: str):
    """Check `value` against annotation `tp`; return the (possibly converted) value."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    bad = ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r} ({type(value).__name__})")
    if origin is typing.Union:  # Optional[X]
        if value is None:
            return None
        inner = [a for a in args if a is not type(None)][0]
        return _coerce(value, inner, where)
    if origin in (list, List):
        if isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, list):
            raise bad
        return [_coerce(v, args[0], where) for v in value] if args else value
    if tp is bool:
        if not isinstance(value, bool):
            raise bad
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
        return value
    if tp is float:
        if isinstance(value, bool):
            raise bad
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-4" as a string
            try:
                return float(value)
            except ValueError:
                raise bad from None
        raise bad
    if tp is str:
        if not isinstance(value, str):
            raise bad
        return value
    return value


def _check_range(value, meta: dict, where: str) -> None:
    choices, lo, hi = meta.get("choices"), meta.get("min"), meta.get("max")
    if choices is not None and value not in choices:
        raise ConfigError(f"{where}: {value!r} is not one of {list(choices)}" + (
            _suggest(str(value), [str(c) for c in choices]) if isinstance(value, str) else ""))
    for v in (value if isinstance(value, list) else [value]):
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            if lo is not None and v < lo:
                raise ConfigError(f"{where}: {value!r} is below the minimum {lo}")
            if hi is not None and v > hi:
                raise ConfigError(f"{where}: {value!r} is above the maximum {hi}")


def _renamed(sec: str, key: str, value, src: str, migrate: bool):
    """Old key/value names: an error naming the new ones, or (migrate, configs stored in checkpoints) the translation."""
    if (sec, key) in RENAMED_KEYS:
        new, table = RENAMED_KEYS[(sec, key)]
        hashable = isinstance(value, (str, bool, int, float)) or value is None
        new_value = table.get(value, value) if hashable else value
        if not migrate:
            raise ConfigError(f"'{sec}.{key}' (in {src}) is now '{sec}.{new}'; write {sec}.{new}={new_value!r}")
        return new, new_value
    old_values = RENAMED_VALUES.get((sec, key), {})
    if isinstance(value, str) and value in old_values:
        if not migrate:
            raise ConfigError(f"{sec}.{key}={value!r} (in {src}) is now {sec}.{key}={old_values[value]!r}")
        return key, old_values[value]
    return key, value


def build_config(data: dict, sources: Optional[dict] = None, migrate: bool = False) -> Config:
    """Validate a nested dict (section → key → value) into a :class:`Config`.

    migrate: translate renamed keys (RENAMED_KEYS) instead of rejecting them: for configs stored in
    checkpoints written by earlier versions.
    """
    sources = sources or {}
    cfg = Config()
    for sec, body in data.items():
        if sec not in SECTIONS:
            src = sources.get((sec, None)) or next((s for (a, _), s in sources.items() if a == sec), "?")
            raise ConfigError(f"unknown section '{sec}' in {src}" + _suggest(sec, SECTIONS))
        if body is None:
            continue
        if not isinstance(body, dict):
            raise ConfigError(f"section '{sec}' in {sources.get((sec, None), '?')} must be a mapping")
        cls = _SECTION_CLASSES[sec]
        hints = typing.get_type_hints(cls)
        fields = {f.name: f for f in dataclasses.fields(cls)}
        section_obj = getattr(cfg, sec)
        for key, value in body.items():
            src = sources.get((sec, key), "?")
            key, value = _renamed(sec, key, value, src, migrate)
            if key not in fields:
                raise ConfigError(f"unknown key '{sec}.{key}' in {src}" + _suggest(str(key), fields))
            where = f"{sec}.{key}={value!r} (from {src})"
            value = _coerce(value, hints[key], where)
            if value is not None:
                _check_range(value, fields[key].metadata, where)
            setattr(section_obj, key, value)
    _cross_check(cfg)
    return cfg


def _cross_check(cfg: Config) -> None:
    """Constraints that involve more than one key."""
    ic = cfg.Langevin.image_clip
    if ic is not None and (len(ic) != 2 or ic[0] >= ic[1]):
        raise ConfigError(f"Langevin.image_clip={ic!r}: must be [lo, hi] with lo < hi, or null")
    if cfg.Flow.arch == "flowpp":
        shp = cfg.Flow.in_shape
        if len(shp) != 3 or shp[0] not in (1, 3) or not (8 <= shp[1] <= 64) or shp[1] != shp[2]:
            raise ConfigError(f"Flow.in_shape={shp!r}: must be [C, H, W] with C in (1, 3) and square 8..64 px")
        if any(len(s) != 2 for s in cfg.Flow.scales):
            raise ConfigError(f"Flow.scales={cfg.Flow.scales!r}: each scale is [n_channelwise, n_checkerboard]")


def load_config(path: Optional[str] = None, overrides: Optional[List[str]] = None) -> Config:
    """Load `path` (or the built-in defaults when None) and apply `-o` overrides."""
    data, sources = _read_yaml(path) if path else ({}, {})
    for text in overrides or []:
        sec, key, value = _parse_override(text)
        if sec not in SECTIONS:
            raise ConfigError(f"unknown section '{sec}' in -o {text}" + _suggest(sec, SECTIONS))
        data.setdefault(sec, {})
        if not isinstance(data[sec], dict):
            data[sec] = {}
        data[sec][key] = value
        sources[(sec, key)] = f"-o {text}"
    return build_config(data, sources)


def config_from_dict(d: dict) -> Config:
    """Rebuild a Config from `Config.to_dict()` output (e.g. stored in a checkpoint)."""
    return build_config(copy.deepcopy(d), {}, migrate=True)


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------
def add_config_args(parser: argparse.ArgumentParser, required: bool = True) -> None:
    parser.add_argument("-c", "--config", required=required, help="YAML config file")
    parser.add_argument("-o", "--override", action="append", default=[], metavar="Section.key=value",
                        help="override a config value (repeatable)")


def run_cli(main, argv=None) -> int:
    """Run `main(argv)`; user errors print one line to stderr and exit 2."""
    from .errors import UserError  # local: avoids a cycle at import time

    try:
        rc = main(argv)
    except (ConfigError, UserError) as err:
        print(f"{type(err).__name__}: {err}", file=sys.stderr)
        return 2
    return int(rc or 0)
