"""CoopFlow training step: paper Algorithm 1, plus the two baselines.

One iteration (:meth:`CoopFlow.train_step`):
  1. propose  x̂ = g_α(z), z ~ N(0, I)        flow inverse, no grad, flow in *train* mode (official)
  2. revise   x̃ = Langevin flow from x̂      T steps of eq. (3), detached
  3. flow     α ← α + ∇_α mean log q_α(x̃)   maximum likelihood on the revised samples (eq. 6,
                                             :func:`flow_ml_loss`)
  4. EBM      θ ← θ + ∇_θ [mean f(x) − mean f(x̃)]   (eq. 2, :func:`ebm_ml_loss`; with
                                             Optimizer.ebm_energy_l2 > 0 the guard
                                             :func:`ebm_energy_l2_penalty` is added, not in the paper)
The two networks never backprop through each other: only the detached x̃ passes between them.
Because the EBM loss does not depend on α (and vice versa), both gradients are computed first and
the steps are then taken together; the official "flow step before EBM loss" order (main_cifar) gives
the same numbers. `flow_waits_for_ebm` only decides the gating: True steps the flow only if the EBM
step was taken (every official script but main_cifar), False steps it independently (main_cifar).
Each net's step is vetoed by its own non-finite loss or gradient only: a non-finite flow NLL skips
the flow step but never the EBM step (the official scripts check the EBM's gradient norm alone).

The flow is used only through `flow.inverse(z)` → images [N, C, H, W] in [-1, 1] (for Flow++ this
includes the final 2·sigmoid(l) − 1), `flow.nll(x)` → [N] nats, `flow.z_shape`, train()/eval().
The EBM is any layer with `ebm(x)` → [N].

Baselines in the same code (`CoopFlowOptions.mode`):
  'flow_only'     — Flow++ maximum likelihood on the data (no EBM; `ebm` may be None).
  'langevin_only' — short-run EBM (Nijkamp et al. 2019): x̂ ~ U(-1, 1), no flow (`flow` may be None).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Callable, Dict, Optional, Tuple

import numpy as np
import paddle
import paddle.nn as nn

from .langevin import langevin_flow, noise_std_for
from .noise import Shard, draw
from .optim import OptimBundle, clip_grad_norm, clip_grad_norm_groups
from .sampling import propose
from .sampling import sample as sample_coopflow

__all__ = ["CoopFlowOptions", "CoopFlow", "ebm_ml_loss", "ebm_energy_l2_penalty", "flow_ml_loss"]

_MODES = ("coopflow", "flow_only", "langevin_only")
_ENGINES = ("auto", "static", "dygraph")


@dataclass
class CoopFlowOptions:
    """Knobs of one training iteration; defaults are the official CIFAR-10 T=30 settings.

    Per-script values of the official code: main_cifar uses flow_clip_mode='per_group', flow_waits_for_ebm=False;
    main_svhn/celeba use flow_skip_norm=1e6, ebm_clip_norm=1.0, ebm_skip_norm=5e6; the Pre scripts add
    ebm_skip_in_first_epoch=False and a frozen flow in the first epochs (decided by the caller).
    """
    mode: str = "coopflow"
    n_steps: int = 30                       # T
    step_size: float = 0.03                 # s during training ([P]; the argparse default is the test value)
    test_step_size: float = 0.04            # s for generation / FID
    delta_clip: Optional[float] = 0.1       # δ clip on ½s²∇f
    image_clip: Optional[Tuple[float, float]] = (-1.0, 1.0)
    noise_mode: str = "none"                # 'none' | 'constant' | 'decay' ([P] A.11, eq. 10)
    noise_std: float = 1.0
    noise_K: float = 30.0                   # decay horizon in epochs (CIFAR 30, SVHN 15)
    flow_clip_norm: Optional[float] = 1.0
    flow_clip_mode: str = "global"          # 'global' | 'per_group' (main_cifar)
    flow_skip_norm: Optional[float] = None  # skip the flow step if pre-clip norm ≥ this
    ebm_clip_norm: Optional[float] = None
    ebm_skip_norm: Optional[float] = None
    ebm_skip_in_first_epoch: bool = True    # False (Pre scripts): never skip the EBM step in epoch 0
    ebm_energy_l2: float = 0.0              # α of the energy-scale guard (not in the paper); 0 = off
    frozen_flow: bool = False               # default for train_step(frozen_flow=None)
    n_update_flow: int = 1                  # flow updates on iterations with it % n == 0
    sample_flow_in_train_mode: bool = True  # official: dropout active while proposing
    flow_waits_for_ebm: bool = True         # step the flow only if the EBM stepped (False: main_cifar)
    n_samples: Optional[int] = None         # proposals per iteration; None → data batch size
    langevin_engine: str = "auto"           # 'auto' | 'static' | 'dygraph' (Langevin.engine)

    def validate(self) -> "CoopFlowOptions":
        """Raise a one-line ValueError naming the bad field."""
        checks = [("mode", self.mode in _MODES, f"one of {_MODES}"),
                  ("n_steps", self.n_steps >= 0, ">= 0"),
                  ("step_size", self.step_size > 0, "> 0"),
                  ("test_step_size", self.test_step_size > 0, "> 0"),
                  ("noise_mode", self.noise_mode in ("none", "constant", "decay"), "'none'|'constant'|'decay'"),
                  ("flow_clip_mode", self.flow_clip_mode in ("global", "per_group"), "'global'|'per_group'"),
                  ("n_update_flow", self.n_update_flow >= 1, ">= 1"),
                  ("ebm_energy_l2", self.ebm_energy_l2 >= 0, ">= 0"),
                  ("langevin_engine", self.langevin_engine in _ENGINES, f"one of {_ENGINES}")]
        for name, ok, want in checks:
            if not ok:
                raise ValueError(f"CoopFlowOptions.{name}={getattr(self, name)!r} is invalid; expected {want}")
        return self

    @classmethod
    def from_config(cls, cfg, mode: Optional[str] = None) -> "CoopFlowOptions":
        """The options of a resolved :class:`~paddle_coopflow.config.Config` (Langevin, Optimizer, Train).

        Args:
            cfg: the config.
            mode: overrides ``cfg.Train.mode`` (the trainer's flow pre-training phase uses 'flow_only').
        """
        lg, o, t = cfg.Langevin, cfg.Optimizer, cfg.Train
        return cls(
            mode=mode or t.mode, n_steps=lg.n_steps, step_size=lg.step_size, test_step_size=lg.test_step_size,
            delta_clip=lg.delta_clip, image_clip=tuple(lg.image_clip) if lg.image_clip else None,
            noise_mode=lg.noise, noise_std=lg.noise_std, noise_K=lg.noise_decay_K,
            flow_clip_norm=o.flow_clip_norm, flow_clip_mode=o.flow_clip_mode, flow_skip_norm=o.flow_skip_norm,
            ebm_clip_norm=o.ebm_clip_norm, ebm_skip_norm=o.ebm_skip_norm,
            ebm_skip_in_first_epoch=o.ebm_skip_in_first_epoch, ebm_energy_l2=o.ebm_energy_l2,
            n_update_flow=t.n_update_flow,
            sample_flow_in_train_mode=t.sample_flow_train_mode, flow_waits_for_ebm=t.flow_waits_for_ebm,
            langevin_engine=lg.engine).validate()

    @classmethod
    def from_dict(cls, d: Dict) -> "CoopFlowOptions":
        """Build from a dict, rejecting unknown keys."""
        known = {f.name for f in fields(cls)}
        bad = sorted(set(d) - known)
        if bad:
            raise ValueError(f"unknown CoopFlowOptions key(s) {bad}; known: {sorted(known)}")
        opts = cls(**d)
        if opts.image_clip is not None:
            opts.image_clip = (float(opts.image_clip[0]), float(opts.image_clip[1]))
        return opts.validate()


def _finite(*vals: float) -> bool:
    return all(math.isfinite(v) for v in vals)


def ebm_ml_loss(energy: Callable[[paddle.Tensor], paddle.Tensor], x_data: paddle.Tensor,
                x_revised: paddle.Tensor) -> Tuple[paddle.Tensor, paddle.Tensor, paddle.Tensor]:
    """The EBM's maximum-likelihood loss whose gradient is eq. (2) of the paper.

    ∇_θ L(θ) ≈ mean_i ∇_θ f_θ(x_i) − mean_i ∇_θ f_θ(x̃_i): descending
    loss = mean f(x̃) − mean f(x) raises f on the data and lowers it on the revised samples.

    Args:
        energy: f_θ, [N, ...] → [N] (the EBM or its data-parallel wrapper).
        x_data: [B, ...] observed examples x_i.
        x_revised: [M, ...] detached Langevin revisions x̃_i.

    Returns:
        (loss, f(x) [B], f(x̃) [M]); `loss` is a scalar and all three carry the graph to θ.
    """
    f_data = energy(x_data)
    f_rev = energy(x_revised)
    return f_rev.mean() - f_data.mean(), f_data, f_rev


def ebm_energy_l2_penalty(f_data: paddle.Tensor, f_revised: paddle.Tensor, coeff: float) -> paddle.Tensor:
    """The optional energy-scale guard α·(mean f(x)² + mean f(x̃)²), added to the EBM loss.

    Not in the paper: Du & Mordatch (2019, "Implicit Generation and Generalization in Energy-Based
    Models") add it to keep the energies near 0; eq. (2) alone is invariant to a shift of f.

    Args:
        f_data: [B] f_θ on the observed examples; f_revised: [M] f_θ on the revised samples.
        coeff: α = Optimizer.ebm_energy_l2 (>= 0).

    Returns:
        scalar tensor (in the graph of both energies).
    """
    return coeff * (paddle.square(f_data).mean() + paddle.square(f_revised).mean())


def flow_ml_loss(nll: Callable[[paddle.Tensor], paddle.Tensor], x_revised: paddle.Tensor) -> paddle.Tensor:
    """The flow's maximum-likelihood loss on the revised samples, eq. (6) of the paper.

    α ← α + ∇_α mean_i log q_α(x̃_i); the loss is the mean negative log-likelihood in nats.

    Args:
        nll: x [M, ...] → per-sample −log q_α(x) [M] (the flow's ``nll`` or its data-parallel wrapper).
        x_revised: [M, ...] detached revised samples x̃ (the data, in the flow-only baseline).

    Returns:
        scalar tensor, mean NLL in nats.
    """
    return nll(x_revised).mean()


class CoopFlow:
    """The cooperative learner: flow + EBM + their optimizers + the global sample counter.

    Args:
        flow: normalizing flow (see module docstring); None only for mode 'langevin_only'.
        ebm: energy network; None only for mode 'flow_only'.
        flow_optim / ebm_optim: bundles from paddle_coopflow.optim (None for the unused net).
        options: CoopFlowOptions.
        gstep: samples seen so far (restore it on resume); the LR schedulers are stepped with it.
    """

    def __init__(self, flow: Optional[nn.Layer], ebm: Optional[nn.Layer], flow_optim: Optional[OptimBundle],
                 ebm_optim: Optional[OptimBundle], options: Optional[CoopFlowOptions] = None, gstep: int = 0):
        self.o = (options or CoopFlowOptions()).validate()
        need_flow, need_ebm = self.o.mode != "langevin_only", self.o.mode != "flow_only"
        if need_flow and (flow is None or flow_optim is None):
            raise ValueError(f"mode {self.o.mode!r} needs a flow and its optimizer")
        if need_ebm and (ebm is None or ebm_optim is None):
            raise ValueError(f"mode {self.o.mode!r} needs an EBM and its optimizer")
        self.flow, self.ebm = flow, ebm
        self.flow_optim, self.ebm_optim = flow_optim, ebm_optim
        self.gstep = int(gstep)
        # Data-parallel training sets these to paddle.DataParallel wrappers (forward = flow.nll / ebm):
        # the loss forward passes then go through the reducer, so gradients are all-reduced across ranks.
        # Sampling always uses the raw nets (no parameter gradients are involved there).
        self.loss_flow: Optional[nn.Layer] = None
        self.loss_ebm: Optional[nn.Layer] = None
        # One Langevin step of eq. (3) in the engine `options.langevin_engine` chooses (config, device and
        # build decide; never timing): this learner's own, no process-wide state.
        self.langevin_step: Optional[Callable] = None
        if ebm is not None:
            from .accel import make_langevin_step

            self.langevin_step = make_langevin_step(ebm, self.o.langevin_engine)

    # ----------------------------------------------------------------------------------- sampling
    @paddle.no_grad()
    def propose(self, n: int, z: Optional[paddle.Tensor] = None, shape=None) -> paddle.Tensor:
        """x̂ [n, ...]: flow inverse of z ~ N(0, I) (or U(-1, 1) for 'langevin_only', needs `shape`)."""
        if self.o.mode == "langevin_only" and shape is None and z is None:
            raise ValueError("langevin_only proposals need the sample shape (pass shape=x.shape[1:])")
        return propose(self.flow if self.o.mode != "langevin_only" else None, n, z, shape)

    def revise(self, x_prop: paddle.Tensor, epoch: float = 0, step_size: Optional[float] = None,
               n_steps: Optional[int] = None, train: bool = True, return_stats: bool = False,
               shard: Optional[Shard] = None):
        """x̃ = Langevin flow from x̂ (eq. 3). Training adds the configured noise; generation has none.

        shard: where x_prop sits in a data-parallel global batch (the noise is drawn for all of it).
        """
        std = noise_std_for(self.o.noise_mode, epoch, self.o.noise_K, self.o.noise_std) if train else 0.0
        T = self.o.n_steps if n_steps is None else n_steps
        kw = {} if self.langevin_step is None else {"step": self.langevin_step}
        if std > 0.0 and T > 0:
            n = int(x_prop.shape[0])
            kw["noise"] = draw("normal", [T] + list(x_prop.shape), shard or Shard.single(n), axis=1)
        return langevin_flow(self.ebm, x_prop, T, step_size or (self.o.step_size if train else self.o.test_step_size),
                             self.o.delta_clip, self.o.image_clip, noise_std=std, return_stats=return_stats, **kw)

    def sample(self, n: int, z: Optional[paddle.Tensor] = None, step_size: Optional[float] = None,
               n_steps: Optional[int] = None, shape=None) -> Tuple[paddle.Tensor, paddle.Tensor]:
        """Generation: (flow proposals x̂, revised x̃), both [n, ...]; nets in eval mode, modes restored.

        step_size defaults to test_step_size; no noise.
        """
        if self.o.mode == "langevin_only" and z is None and shape is None:
            raise ValueError("langevin_only samples need the sample shape (pass shape=x.shape[1:])")
        return sample_coopflow(self.flow, self.ebm, n, z, shape, n_steps=self.o.n_steps if n_steps is None else n_steps,
                               step_size=step_size or self.o.test_step_size, delta_clip=self.o.delta_clip,
                               image_clip=self.o.image_clip, langevin_step=self.langevin_step)

    # ----------------------------------------------------------------------------------- training
    def train_step(self, x_data: paddle.Tensor, epoch: int, it: int,
                   frozen_flow: Optional[bool] = None, shard: Optional[Shard] = None) -> Dict[str, float]:
        """One iteration of Algorithm 1 (or of the baseline named by options.mode).

        Args:
            x_data: [B, C, H, W] real images in [-1, 1].
            epoch: current epoch (noise decay, first-epoch skip rule).
            it: iteration within the epoch (n_update_flow gating, like the official `counter`).
            frozen_flow: overrides options.frozen_flow for this iteration.
            shard: where x_data sits in the global batch of a data-parallel run (None: one process);
                every random draw is made for the global batch and sliced (paddle_coopflow.noise).

        Returns:
            dict of floats/bools: ebm_loss (eq. 2, without the guard), ebm_energy_l2 (the guard's
            penalty, when on), f_data, f_revised, f_proposal, flow_nll, flow_bpd,
            flow_grad_norm (+ per group), ebm_grad_norm, lr_flow, lr_ebm, langevin_mse,
            langevin_sq_change, langevin_delta_clip_frac, noise_std, ebm_stepped, flow_stepped,
            ebm_skipped, flow_skipped, nonfinite, gstep. NaN marks a quantity not computed.
        """
        shard = shard or Shard.single(x_data.shape[0])
        if self.o.mode == "flow_only":
            return self._flow_only_step(x_data, shard)
        o = self.o
        frozen = o.frozen_flow if frozen_flow is None else bool(frozen_flow)
        nan = float("nan")
        # 1.-2. propose, then revise with the Langevin flow (detached)
        x_rev, ls, noise_std = self._propose_and_revise(x_data, epoch, shard)

        # 3. flow loss on the revised samples (computed for logging even when not updating)
        stats: Dict[str, float] = {"flow_nll": nan, "flow_bpd": nan, "flow_grad_norm": nan,
                                   "lr_flow": self.flow_optim.lr() if self.flow_optim else nan}
        update_flow = o.mode == "coopflow" and not frozen and it % o.n_update_flow == 0
        flow_norm, flow_ok = float("nan"), True
        if o.mode == "coopflow":
            _, flow_norm, flow_ok = self._flow_backward(x_rev, update_flow, stats, shard)

        # 4. EBM loss (eq. 2): raise f on data, lower it on the revised samples
        el, fd, fr, ebm_norm = self._ebm_backward(x_data, x_rev, stats)

        # 5. decide and step: each net is vetoed by its own non-finite values only
        ebm_ok = _finite(fd, fr, el, ebm_norm, ls["mse"], stats.get("ebm_energy_l2", 0.0))
        nonfinite = not (ebm_ok and flow_ok)
        ebm_go = ebm_ok and (o.ebm_skip_norm is None or ebm_norm < o.ebm_skip_norm
                             or (not o.ebm_skip_in_first_epoch and epoch == 0))
        flow_go = (update_flow and flow_ok
                   and (o.flow_skip_norm is None or flow_norm < o.flow_skip_norm)
                   and (ebm_go or not o.flow_waits_for_ebm))
        lr_ebm = self.ebm_optim.lr()
        if ebm_go:
            self.ebm_optim.step(self.gstep)
        if flow_go:
            self.flow_optim.step(self.gstep)
        self._clear_grads()
        self.gstep += int(x_data.shape[0])

        stats.update({"ebm_loss": el, "f_data": fd, "f_revised": fr, "f_proposal": ls["f_start"],
                      "ebm_grad_norm": ebm_norm, "lr_ebm": lr_ebm, "noise_std": noise_std,
                      "langevin_mse": ls["mse"], "langevin_sq_change": ls["sq_change"],
                      "langevin_delta_clip_frac": ls["delta_clip_frac"],
                      "ebm_stepped": ebm_go, "flow_stepped": flow_go,
                      "ebm_skipped": not ebm_go, "flow_skipped": update_flow and not flow_go,
                      "flow_updating": update_flow, "nonfinite": nonfinite, "gstep": self.gstep})
        return stats

    def _propose_and_revise(self, x_data: paddle.Tensor, epoch: int, shard: Shard):
        """Steps 1-2 of an iteration: (x̃ [n, ...], Langevin stats, σ_noise of this epoch); nets left in train mode.

        The flow proposes in train mode by default (dropout on), as the official code does.
        """
        o = self.o
        for m in (self.flow, self.ebm):
            if m is not None:
                m.train()
        self._clear_grads()
        if self.flow is not None and not o.sample_flow_in_train_mode:
            self.flow.eval()
        n = int(o.n_samples or x_data.shape[0])
        if o.mode == "langevin_only":
            z = draw("uniform", [n] + list(x_data.shape[1:]), shard)
        else:
            z = draw("normal", [n] + list(self.flow.z_shape), shard)
        x_prop = self.propose(n, z=z)
        if self.flow is not None:
            self.flow.train()
        noise_std = noise_std_for(o.noise_mode, epoch, o.noise_K, o.noise_std)
        x_rev, ls = self.revise(x_prop, epoch, train=True, return_stats=True, shard=shard)
        return x_rev, ls, noise_std

    def _ebm_backward(self, x_data: paddle.Tensor, x_rev: paddle.Tensor, stats: Dict[str, float]):
        """EBM loss of eq. (2), plus the energy guard when on; backprop and clip.

        Returns (loss of eq. 2, mean f(x), mean f(x̃), pre-clip gradient norm); the guard's penalty goes to stats.
        """
        loss, f_data, f_rev = ebm_ml_loss(self.loss_ebm or self.ebm, x_data, x_rev)
        total = loss
        if self.o.ebm_energy_l2 > 0:
            penalty = ebm_energy_l2_penalty(f_data, f_rev, self.o.ebm_energy_l2)
            stats["ebm_energy_l2"] = float(penalty.item())
            total = loss + penalty
        total.backward()
        norm = clip_grad_norm(self.ebm_optim.parameters, self.o.ebm_clip_norm)
        return float(loss.item()), float(f_data.mean().item()), float(f_rev.mean().item()), norm

    def _flow_backward(self, x: paddle.Tensor, update: bool, stats: Dict[str, float], shard: Shard):
        """Flow NLL on x (eq. 6); with `update`, backprop and clip. Returns (loss, pre-clip norm, finite)."""
        d = float(np.prod(x.shape[1:]))
        net = (self.loss_flow or self.flow.nll) if update else self.flow.nll
        kind = getattr(self.flow, "dequant_noise_kind", None)  # flows without dequantization draw nothing
        if kind is not None:
            noise = draw(kind, x.shape, shard)
            nll = lambda v: net(v, noise)  # noqa: E731
        else:
            nll = net
        if update:
            loss = flow_ml_loss(nll, x)
            loss.backward()
            norm, per = clip_grad_norm_groups(self.flow_optim.groups, self.o.flow_clip_norm, self.o.flow_clip_mode)
            for name, v in zip(self.flow_optim.group_names, per):
                stats[f"flow_grad_norm/{name}"] = v
        else:
            with paddle.no_grad():
                loss = flow_ml_loss(nll, x)
            norm = float("nan")
        nll = float(loss.item())
        stats.update({"flow_nll": nll, "flow_bpd": nll / (d * math.log(2.0)), "flow_grad_norm": norm})
        # A frozen flow's NLL is only logged, so only an updating flow can veto the step.
        ok = _finite(nll, norm) if update else True
        return loss, norm, ok

    def _flow_only_step(self, x_data: paddle.Tensor, shard: Shard) -> Dict[str, float]:
        """Baseline: Flow++ maximum likelihood on the data (clip/skip as for the flow in CoopFlow)."""
        self.flow.train()
        self._clear_grads()
        stats: Dict[str, float] = {"lr_flow": self.flow_optim.lr()}
        _, norm, ok = self._flow_backward(x_data, True, stats, shard)
        go = ok and (self.o.flow_skip_norm is None or norm < self.o.flow_skip_norm)
        if go:
            self.flow_optim.step(self.gstep)
        self._clear_grads()
        self.gstep += int(x_data.shape[0])
        stats.update({"flow_stepped": go, "flow_skipped": not go, "nonfinite": not ok, "gstep": self.gstep})
        return stats

    def _clear_grads(self) -> None:
        for b in (self.flow_optim, self.ebm_optim):
            if b is not None:
                b.clear_grad()
