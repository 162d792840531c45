"""The config schema: one dataclass per CapWords section, with defaults and validation metadata.

Defaults are the official CoopFlow code's CIFAR-10 CoopFlow(T=30) settings (the paper's Table 3 model).
Each field carries its checks in ``metadata``: ``choices``, an inclusive ``min`` / ``max``, or an exclusive
``gt`` (a step size must be > 0). Every float must also be finite; :mod:`.loader` enforces all of it.
"""
from __future__ import annotations

import copy
import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import yaml

from ..accel.program import ENGINES
from ..coopflow import MODES
from ..errors import UserError
from ..langevin import NOISE_MODES


class ConfigError(UserError, ValueError):
    """A user error in a config file or an ``-o`` override. The message is one line."""


def _f(default, *, choices=None, min=None, max=None, gt=None, help=""):  # noqa: A002 (schema field)
    """A schema field with validation metadata (``gt``: exclusive minimum)."""
    meta = {"choices": choices, "min": min, "max": max, "gt": gt, "help": help}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: copy.deepcopy(d), metadata=meta)
    return field(default=default, metadata=meta)


# --------------------------------------------------------------------------------------------
# Sections
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
    num_dequant_components: Optional[int] = _f(None, min=1, help="mixture components of the dequantization "
                                               "flow; null = num_components (the official code always uses 32)")
    use_attn: bool = _f(True)
    drop_prob: float = _f(0.2, min=0.0, max=1.0)
    undo_bound: bool = _f(False, help="undo the 0.9 logit bound when sampling (the official code keeps it)")
    inverse_method: str = _f("newton", choices=("newton", "bisection"),
                             help="mixture-CDF inverse when sampling: 'newton' (safeguarded Newton, ~50x faster, "
                                  "closer to the exact inverse) or 'bisection' (the official code's constants)")
    coupling_engine: str = _f("dygraph", choices=ENGINES,
                              help="coupling networks when sampling in eval mode: 'static' (static-graph oneDNN "
                                   "programs), 'dygraph', or 'auto' (static on CPU builds with oneDNN)")
    recompute: bool = _f(False, help="recompute each coupling step's activations in the backward pass: "
                                     "less memory for more time, same gradients (docs/speed.md)")
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
    step_size: float = _f(0.03, gt=0.0, help="training step size s, eq. (3)")
    test_step_size: float = _f(0.04, gt=0.0, help="step size s for sampling / FID (Table 3)")
    delta_clip: Optional[float] = _f(0.1, min=0.0, help="clip of the gradient term; null = off")
    image_clip: Optional[List[float]] = _f([-1.0, 1.0], help="[lo, hi] image range; null = off")
    noise_mode: str = _f("none", choices=NOISE_MODES)
    noise_std: float = _f(1.0, min=0.0, help="noise = noise_std * s * eps (eq. 3)")
    noise_decay_K: float = _f(30.0, min=1e-9, help="eq. (10): max(1 - epoch/K, 0)^20")
    engine: str = _f("auto", choices=ENGINES,
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
    ebm_energy_l2: float = _f(0.0, min=0.0, help="α of the energy-scale guard α·(mean f(x)² + mean f(x̃)²) "
                                                 "added to the EBM loss (Du & Mordatch 2019; not in the paper); "
                                                 "0 = off")
    warmup_iters: int = _f(200, min=0)
    warmup_first_step_zero: bool = _f(True, help="as the official code: its LambdaLR gives lr 0 on the first step")


@dataclass
class TrainConfig:
    mode: str = _f("coopflow", choices=MODES)
    batch_size: int = _f(28, min=1)
    pretrain_epochs: int = _f(0, min=0, help="phase 1: flow maximum likelihood (CoopFlow(Pre))")
    frozen_flow_epochs: int = _f(0, min=0, help="phase 2: flow frozen, EBM trained")
    coop_epochs: int = _f(100, min=0, help="phase 3: cooperative training")
    frozen_flow_off_by_one: bool = _f(False, help="replicate the official Pre scripts' extra epoch with the flow frozen")
    n_update_flow: int = _f(1, min=1)
    flow_waits_for_ebm: bool = _f(True, help="step the flow only when the EBM step was taken (false: main_cifar.py)")
    sample_flow_train_mode: bool = _f(True, help="sample the flow in train mode (dropout on), as the official code")
    data_init_batches: int = _f(200, min=0, help="batches of epoch 0 used for ActNorm init, not trained on")
    data_init_group: int = _f(20, min=1)
    init_flow: str = _f("", help="checkpoint prefix of a pre-trained flow (skips phase 1)")
    max_iters: int = _f(0, min=0, help="stop after this many training iterations; 0 = run all epochs")
    update_engine: str = _f("auto", choices=ENGINES,
                            help="the updates: EBM update (eq. 2) as one static-graph oneDNN program for f and the "
                                 "parameter gradients (EBM_res), and Flow++'s 3x3 training convolutions as oneDNN "
                                 "programs: 'static', 'dygraph', or 'auto' (static on CPU builds with oneDNN, "
                                 "dygraph elsewhere and, for the EBM, with the energy guard); never decided by timing")


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
    fid_every_epochs: int = _f(0, min=0, help="in-training FID period in epochs; 0 = off")
    fid_every_iters: int = _f(0, min=0, help="in-training FID period in iterations (for runs shorter than an "
                                             "epoch); 0 = off")
    fid_num_samples: int = _f(5000, min=2)
    fid_batch_size: int = _f(50, min=1)
    inception_weights: str = _f("", help="pt_inception-2015-12-05-6726825d.pth or a .pdparams")
    fid_ref_stats: str = _f("", help=".npz with mu/sigma; computed from the reference images when empty")
    ref_root: str = _f("", help="folder of reference images (e.g. a held-out test set); empty = the Data split")
    ref_num: int = _f(50000, min=2, help="reference images (the first ones, unflipped)")
    feature_model: str = _f("", help="prefix of a paddle.jit.save'd feature extractor ([N,3,H,W] in [-1,1] -> "
                                     "[N,D]); when set, in-training FID and KID use it instead of Inception")
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
class HealthConfig:
    """The finite blow-up check (paddle_coopflow/training/health.py; docs/training.md): thresholds per quantity."""
    check: bool = _f(True, help="stop the run with exit status 2 on a finite blow-up")
    warmup: int = _f(10, min=1, help="calm checks that build a quantity's reference before it is checked")
    window: int = _f(200, min=1, help="the reference is the median of this many latest calm checks")
    patience: int = _f(3, min=1, help="consecutive out-of-range checks of one quantity that make a blow-up")
    clip_frac: float = _f(0.05, gt=0.0, max=1.0, help="share of Langevin gradient terms beyond the delta clip "
                                                     "above which the energy is too steep")
    energy_factor: float = _f(10000.0, gt=1.0, help="max |f| above this x its reference is out of range")
    energy_floor: float = _f(1.0, gt=0.0, help="smallest reference of max |f| (f near 0 early on)")
    langevin_factor: float = _f(100.0, gt=1.0, help="langevin_mse above this x its reference is out of range")
    langevin_floor: float = _f(0.05, gt=0.0, help="smallest reference of langevin_mse (chains that barely move)")


@dataclass
class Config:
    """The whole configuration: one attribute per section."""

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
    Health: HealthConfig = field(default_factory=HealthConfig)

    def to_dict(self) -> Dict[str, Dict[str, Any]]:
        """Nested plain dict (section -> key -> value), as stored in checkpoints."""
        return dataclasses.asdict(self)

    def dump(self) -> str:
        """YAML text that :func:`~paddle_coopflow.config.load_config` reads back to an equal Config."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None)


SECTIONS = {f.name: f.type for f in dataclasses.fields(Config)}

SECTION_CLASSES = {name: typing.get_type_hints(Config)[name] for name in SECTIONS}
