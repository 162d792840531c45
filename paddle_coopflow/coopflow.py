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
from dataclasses import dataclass, field, fields
from typing import Callable, Dict, Optional, Tuple

import numpy as np
import paddle
import paddle.nn as nn

from .langevin import langevin_flow, noise_std_for
from .noise import Shard, draw
from .optim import OptimBundle, clip_grad_norm, clip_grad_norm_groups
from .sampling import nets_in_mode, propose
from .sampling import sample as sample_coopflow

__all__ = ["MODES", "CoopFlowOptions", "CoopFlow", "ebm_ml_loss", "ebm_energy_l2_penalty", "flow_ml_loss"]

MODES = ("coopflow", "flow_only", "langevin_only")


def _key(section: str):
    return field(metadata={"section": section})


@dataclass(frozen=True)
class CoopFlowOptions:
    """What one training iteration reads from the config: each field is the config key of the same name.

    Built only by :meth:`from_config`; the config schema has validated every value. Per-script values of
    the official code (configs/*.yaml): main_cifar uses flow_clip_mode 'per_group' and flow_waits_for_ebm
    false; main_svhn/celeba skip the flow step at norm 1e6 and clip the EBM's gradient at 1.0; the Pre
    scripts never skip the EBM step in epoch 0.
    """
    mode: str = _key("Train")                       # see MODES; the pre-training phase passes 'flow_only'
    n_update_flow: int = _key("Train")              # flow updates on iterations with it % n == 0
    sample_flow_train_mode: bool = _key("Train")    # propose with the flow in train mode (official: dropout on)
    update_engine: str = _key("Train")              # the updates' engine (accel.make_ebm_loss, make_train_convs)
    flow_waits_for_ebm: bool = _key("Train")        # step the flow only if the EBM stepped (false: main_cifar)
    n_steps: int = _key("Langevin")                 # T
    step_size: float = _key("Langevin")             # s during training
    test_step_size: float = _key("Langevin")        # s for generation / FID
    delta_clip: Optional[float] = _key("Langevin")  # δ clip on ½s²∇f
    image_clip: Optional[Tuple[float, float]] = _key("Langevin")
    noise_mode: str = _key("Langevin")              # 'none' | 'constant' | 'decay' (eq. 10)
    noise_std: float = _key("Langevin")
    noise_decay_K: float = _key("Langevin")         # decay horizon in epochs
    engine: str = _key("Langevin")                  # the Langevin step's engine (accel.make_langevin_step)
    flow_clip_norm: Optional[float] = _key("Optimizer")
    flow_clip_mode: str = _key("Optimizer")         # 'global' | 'per_group' (main_cifar)
    flow_skip_norm: Optional[float] = _key("Optimizer")   # skip the flow step if the pre-clip norm ≥ this
    ebm_clip_norm: Optional[float] = _key("Optimizer")
    ebm_skip_norm: Optional[float] = _key("Optimizer")
    ebm_skip_in_first_epoch: bool = _key("Optimizer")
    ebm_energy_l2: float = _key("Optimizer")        # α of the energy-scale guard (not in the paper); 0 = off

    @classmethod
    def from_config(cls, cfg, mode: Optional[str] = None) -> "CoopFlowOptions":
        """The options of a resolved :class:`~paddle_coopflow.config.Config`.

        Args:
            cfg: the config.
            mode: overrides ``cfg.Train.mode`` (the trainer's flow pre-training phase uses 'flow_only').
        """
        values = {f.name: getattr(getattr(cfg, f.metadata["section"]), f.name) for f in fields(cls)}
        if values["image_clip"] is not None:
            values["image_clip"] = (float(values["image_clip"][0]), float(values["image_clip"][1]))
        if mode is not None:
            values["mode"] = mode
        return cls(**values)


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
        options: :meth:`CoopFlowOptions.from_config`.
        samples_seen: training samples seen so far (restore it on resume); the LR schedulers step with it.
    """

    def __init__(self, flow: Optional[nn.Layer], ebm: Optional[nn.Layer], flow_optim: Optional[OptimBundle],
                 ebm_optim: Optional[OptimBundle], options: CoopFlowOptions, samples_seen: int = 0):
        self.opts = options
        if options.mode not in MODES:
            raise ValueError(f"mode {options.mode!r}; use one of {MODES}")
        if options.mode != "langevin_only" and (flow is None or flow_optim is None):
            raise ValueError(f"mode {options.mode!r} needs a flow and its optimizer")
        if options.mode != "flow_only" and (ebm is None or ebm_optim is None):
            raise ValueError(f"mode {options.mode!r} needs an EBM and its optimizer")
        self.flow, self.ebm = flow, ebm
        self.flow_optim, self.ebm_optim = flow_optim, ebm_optim
        self.samples_seen = int(samples_seen)
        # Data-parallel training sets these to paddle.DataParallel wrappers (forward = flow.nll / ebm):
        # the loss forward passes then go through the reducer, so gradients are all-reduced across ranks.
        # Sampling always uses the raw nets (no parameter gradients are involved there).
        self.loss_flow: Optional[nn.Layer] = None
        self.loss_ebm: Optional[nn.Layer] = None
        # One Langevin step of eq. (3) in the engine Langevin.engine chooses (config, device and build
        # decide; never timing): this learner's own, no process-wide state.
        self.langevin_step: Optional[Callable] = None
        if ebm is not None:
            from .accel import make_langevin_step

            self.langevin_step = make_langevin_step(ebm, options.engine)
        # The flow's training convolutions (eq. 6) and eq. (2)'s loss and parameter gradients in the engine
        # Train.update_engine chooses (the same way).
        if flow is not None and hasattr(flow, "set_update_engine"):
            flow.set_update_engine(options.update_engine)
        self.ebm_loss: Callable = ebm_ml_loss
        if ebm is not None:
            from .accel import make_ebm_loss

            self.ebm_loss = make_ebm_loss(ebm, ebm_ml_loss, options.update_engine,
                                          energy_grad=options.ebm_energy_l2 > 0)

    # ----------------------------------------------------------------------------------- sampling
    @paddle.no_grad()
    def propose(self, n: int, z: Optional[paddle.Tensor] = None, shape=None) -> paddle.Tensor:
        """x̂ [n, ...]: flow inverse of z ~ N(0, I) (or U(-1, 1) for 'langevin_only', needs `shape`)."""
        if self.opts.mode == "langevin_only" and shape is None and z is None:
            raise ValueError("langevin_only proposals need the sample shape (pass shape=x.shape[1:])")
        return propose(self.flow if self.opts.mode != "langevin_only" else None, n, z, shape)

    def revise(self, x_prop: paddle.Tensor, noise_std: float = 0.0, shard: Optional[Shard] = None,
               step_size: Optional[float] = None, n_steps: Optional[int] = None):
        """x̃ = Langevin flow of f_θ from x̂ (eq. 3), detached: (x̃ [n, ...], stats of langevin_flow).

        Args:
            x_prop: [n, ...] proposals x̂.
            noise_std: σ_noise of this iteration (0: the official deterministic sampler).
            shard: where x_prop sits in a data-parallel global batch (the noise is drawn for all of it).
            step_size / n_steps: default to the training s and T.
        """
        T = self.opts.n_steps if n_steps is None else n_steps
        noise = None
        if noise_std > 0.0 and T > 0:
            n = int(x_prop.shape[0])
            noise = draw("normal", [T] + list(x_prop.shape), shard or Shard.single(n), axis=1)
        return langevin_flow(self.ebm, x_prop, T, step_size or self.opts.step_size, self.opts.delta_clip,
                             self.opts.image_clip, noise_std=noise_std, noise=noise, return_stats=True,
                             step=self.langevin_step)

    def sample(self, n: int, z: Optional[paddle.Tensor] = None, step_size: Optional[float] = None,
               n_steps: Optional[int] = None, shape=None) -> Tuple[paddle.Tensor, paddle.Tensor]:
        """Generation: (flow proposals x̂, revised x̃), both [n, ...]; nets in eval mode, modes restored.

        step_size defaults to test_step_size; no noise.
        """
        o = self.opts
        if o.mode == "langevin_only" and z is None and shape is None:
            raise ValueError("langevin_only samples need the sample shape (pass shape=x.shape[1:])")
        return sample_coopflow(self.flow, self.ebm, n, z, shape, n_steps=o.n_steps if n_steps is None else n_steps,
                               step_size=step_size or o.test_step_size, delta_clip=o.delta_clip,
                               image_clip=o.image_clip, langevin_step=self.langevin_step)

    # ----------------------------------------------------------------------------------- training
    def train_step(self, x_data: paddle.Tensor, epoch: int, it: int, frozen_flow: bool = False,
                   shard: Optional[Shard] = None) -> Dict[str, float]:
        """One iteration of Algorithm 1 (or of the baseline named by the mode).

        Args:
            x_data: [B, C, H, W] real images in [-1, 1].
            epoch: current epoch (noise decay, first-epoch skip rule).
            it: iteration within the epoch (n_update_flow gating, like the official `counter`).
            frozen_flow: the flow proposes but is not updated (CoopFlow(Pre)'s frozen-flow epochs).
            shard: where x_data sits in the global batch of a data-parallel run (None: one process);
                every random draw is made for the global batch and sliced (paddle_coopflow.noise).

        Returns:
            dict of floats/bools: ebm_loss (eq. 2, without the guard), ebm_energy_l2 (the guard's
            penalty, when on), f_data, f_revised, f_proposal, flow_nll, flow_bpd,
            flow_grad_norm (+ per group), ebm_grad_norm, lr_flow, lr_ebm, langevin_mse,
            langevin_sq_change, langevin_delta_clip_frac, noise_std, ebm_stepped, flow_stepped,
            ebm_skipped, flow_skipped, flow_updating, nonfinite, samples_seen. NaN marks a quantity not
            computed.
        """
        o = self.opts
        batch = int(x_data.shape[0])
        shard = shard or Shard.single(batch)
        if o.mode == "flow_only":
            return self._flow_only_step(x_data, shard)
        noise_std = noise_std_for(o.noise_mode, epoch, o.noise_decay_K, o.noise_std)
        update_flow = o.mode == "coopflow" and not frozen_flow and it % o.n_update_flow == 0
        self._start_iteration()
        # Algorithm 1, line 3: propose x̂ = g_α(z), z ~ N(0, I) (U(-1, 1) images without a flow)
        x_prop = self._propose_for_training(batch, x_data.shape[1:], shard)
        # line 4: revise x̃ = T Langevin steps of eq. (3) on f_θ from x̂
        x_rev, langevin = self.revise(x_prop, noise_std, shard)
        # line 5: flow: maximum likelihood on the revisions, eq. (6) (gradient only: the step is gated below)
        flow = self._flow_backward(x_rev, update_flow, shard) if o.mode == "coopflow" else _NO_FLOW
        # line 6: EBM: raise f on the data, lower it on the revisions, eq. (2)
        ebm = self._ebm_backward(x_data, x_rev)
        # take the steps each net's own finite values (and skip norms) allow
        ebm_ok = ebm["finite"] and math.isfinite(langevin["mse"])
        ebm_go, flow_go = self._steps_allowed(ebm_ok, ebm["grad_norm"], flow, update_flow, epoch)
        lr_flow, lr_ebm = (self.flow_optim.lr() if self.flow_optim else float("nan")), self.ebm_optim.lr()
        self._take_steps(ebm_go, flow_go, batch)
        stats = {k: v for k, v in flow.items() if k != "finite"}
        stats.update({k: v for k, v in ebm.items() if k not in ("grad_norm", "finite")})
        stats.update({"f_proposal": langevin["f_start"], "ebm_grad_norm": ebm["grad_norm"], "lr_flow": lr_flow,
                      "lr_ebm": lr_ebm, "noise_std": noise_std, "langevin_mse": langevin["mse"],
                      "langevin_sq_change": langevin["sq_change"],
                      "langevin_delta_clip_frac": langevin["delta_clip_frac"],
                      "ebm_stepped": ebm_go, "flow_stepped": flow_go, "ebm_skipped": not ebm_go,
                      "flow_skipped": update_flow and not flow_go, "flow_updating": update_flow,
                      "nonfinite": not (ebm_ok and flow["finite"]), "samples_seen": self.samples_seen})
        return stats

    def _start_iteration(self) -> None:
        """Both nets in train mode, no gradients left over."""
        for m in (self.flow, self.ebm):
            if m is not None:
                m.train()
        self._clear_grads()

    def _propose_for_training(self, n: int, sample_shape, shard: Shard) -> paddle.Tensor:
        """x̂ [n, ...] from latents drawn for the global batch; the flow in train mode unless
        Train.sample_flow_train_mode is false (the official code proposes with dropout on)."""
        if self.opts.mode == "langevin_only":
            return self.propose(n, z=draw("uniform", [n] + list(sample_shape), shard))
        z = draw("normal", [n] + list(self.flow.z_shape), shard)
        if self.opts.sample_flow_train_mode:
            return self.propose(n, z=z)
        with nets_in_mode([self.flow], training=False):
            return self.propose(n, z=z)

    def _steps_allowed(self, ebm_ok: bool, ebm_norm: float, flow: Dict, update_flow: bool, epoch: int):
        """(EBM steps, flow steps): each net is vetoed by its own non-finite values or skip norm only;
        with Train.flow_waits_for_ebm the flow also waits for the EBM's step."""
        o = self.opts
        ebm_go = ebm_ok and (o.ebm_skip_norm is None or ebm_norm < o.ebm_skip_norm
                             or (not o.ebm_skip_in_first_epoch and epoch == 0))
        flow_go = (update_flow and flow["finite"]
                   and (o.flow_skip_norm is None or flow["flow_grad_norm"] < o.flow_skip_norm)
                   and (ebm_go or not o.flow_waits_for_ebm))
        return ebm_go, flow_go

    def _take_steps(self, ebm_go: bool, flow_go: bool, batch: int) -> None:
        if ebm_go:
            self.ebm_optim.step(self.samples_seen)
        if flow_go:
            self.flow_optim.step(self.samples_seen)
        self._clear_grads()
        self.samples_seen += batch

    def _ebm_backward(self, x_data: paddle.Tensor, x_rev: paddle.Tensor) -> Dict:
        """EBM loss of eq. (2), plus the energy guard when on; backprop and clip.

        Returns {ebm_loss (eq. 2), f_data, f_revised (means), grad_norm (pre-clip), finite, and
        ebm_energy_l2 (the guard's penalty) when the guard is on}.
        """
        loss, f_data, f_rev = self.ebm_loss(self.loss_ebm or self.ebm, x_data, x_rev)
        total, out = loss, {}
        if self.opts.ebm_energy_l2 > 0:
            penalty = ebm_energy_l2_penalty(f_data, f_rev, self.opts.ebm_energy_l2)
            out["ebm_energy_l2"] = float(penalty.item())
            total = loss + penalty
        total.backward()
        norm = clip_grad_norm(self.ebm_optim.parameters, self.opts.ebm_clip_norm)
        out.update({"ebm_loss": float(loss.item()), "f_data": float(f_data.mean().item()),
                    "f_revised": float(f_rev.mean().item()), "grad_norm": norm})
        out["finite"] = _finite(out["ebm_loss"], out["f_data"], out["f_revised"], norm,
                                out.get("ebm_energy_l2", 0.0))
        return out

    def _flow_backward(self, x: paddle.Tensor, update: bool, shard: Shard) -> Dict:
        """Flow NLL on x (eq. 6); with `update`, backprop and clip.

        Returns {flow_nll, flow_bpd, flow_grad_norm (pre-clip; NaN without update), flow_grad_norm/<group>,
        finite}. A frozen flow's NLL is only logged, so only an updating flow can be non-finite.
        """
        d = float(np.prod(x.shape[1:]))
        net = (self.loss_flow or self.flow.nll) if update else self.flow.nll
        kind = getattr(self.flow, "dequant_noise_kind", None)  # flows without dequantization draw nothing
        if kind is not None:
            noise = draw(kind, x.shape, shard)
            nll = lambda v: net(v, noise)  # noqa: E731
        else:
            nll = net
        out = {}
        if update:
            loss = flow_ml_loss(nll, x)
            loss.backward()
            norm, per = clip_grad_norm_groups(self.flow_optim.groups, self.opts.flow_clip_norm,
                                              self.opts.flow_clip_mode)
            out.update({f"flow_grad_norm/{name}": v for name, v in zip(self.flow_optim.group_names, per)})
        else:
            with paddle.no_grad():
                loss = flow_ml_loss(nll, x)
            norm = float("nan")
        value = float(loss.item())
        out.update({"flow_nll": value, "flow_bpd": value / (d * math.log(2.0)), "flow_grad_norm": norm,
                    "finite": _finite(value, norm) if update else True})
        return out

    def _flow_only_step(self, x_data: paddle.Tensor, shard: Shard) -> Dict[str, float]:
        """Baseline: Flow++ maximum likelihood on the data (clip/skip as for the flow in CoopFlow)."""
        self.flow.train()
        self._clear_grads()
        stats = {"lr_flow": self.flow_optim.lr(), **self._flow_backward(x_data, True, shard)}
        ok = stats.pop("finite")
        go = ok and (self.opts.flow_skip_norm is None or stats["flow_grad_norm"] < self.opts.flow_skip_norm)
        self._take_steps(False, go, int(x_data.shape[0]))
        stats.update({"flow_stepped": go, "flow_skipped": not go, "nonfinite": not ok,
                      "samples_seen": self.samples_seen})
        return stats

    def _clear_grads(self) -> None:
        for b in (self.flow_optim, self.ebm_optim):
            if b is not None:
                b.clear_grad()


# The flow's part of the stats when no flow is trained (langevin_only).
_NO_FLOW = {"flow_nll": float("nan"), "flow_bpd": float("nan"), "flow_grad_norm": float("nan"), "finite": True}
