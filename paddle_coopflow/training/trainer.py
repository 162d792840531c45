"""The training loop; one :class:`Trainer` runs every setting of the paper, in the phases of phases.py.

The flow's pre-training has its own optimizer. At the switch to the frozen-flow phase the cooperative learner
starts with fresh optimizers for both nets (new Adam moments, the LR warm-up from sample 0), as the
official scripts do when they load a pre-trained flow into a new job.

Stopping: SIGTERM/SIGINT finish the current iteration, save ``latest`` at that boundary and raise
:class:`~paddle_coopflow.training.signals.TrainingStopped`; a corrupt image met mid-run saves ``latest``
and stops with a one-line error; a streak of non-finite steps, or a finite blow-up found by the health
check (:mod:`~paddle_coopflow.training.health`), never saves and names the last checkpoint written before it.
"""
from __future__ import annotations

import math
import os
import time
from typing import Dict, Optional

import numpy as np

from .. import checkpoint as ckpt
from ..accel import engine_in_use
from ..builder import build_ebm, build_flow, count_params
from ..config import Config
from ..errors import UserError
from ..utils.env import resolve_device, seed_everything, setup_threads
from . import distributed as ddp
from . import outputs
from .checkpointing import (checkpoint_label, iter_prefix_name, load_training_checkpoint, prune,
                            save_training_checkpoint)
from . import health
from .phases import Phases
from .rundir import holds_run, open_run_dir, refuse_existing
from .signals import StopOnSignal, TrainingStopped

__all__ = ["Trainer"]


class Trainer:
    """Build everything from a :class:`Config` and run it.

    Nothing is written before the config, the data and the checkpoint to resume from have loaded.

    Args:
        cfg: the resolved config.
        resume: checkpoint prefix to resume from (restores everything), or None.
    """

    def __init__(self, cfg: Config, resume: Optional[str] = None):
        import paddle

        from ..evaluation import InTrainingFID

        self.cfg = cfg
        g, t = cfg.Global, cfg.Train
        self.rank, self.world_size = ddp.dist_info()
        self.run_dir = g.output_dir
        self.ckpt_dir = os.path.join(self.run_dir, "ckpt")
        if self.rank == 0 and not resume and not g.overwrite and holds_run(self.run_dir):
            refuse_existing(self.run_dir)
        self.fid = InTrainingFID(cfg)   # built once; its network loads on first use
        self.fid.check()
        ddp.init_parallel(self.world_size)
        self.device = resolve_device(g.device)
        self.threads = setup_threads(g.threads, self.world_size) if self.device == "cpu" else 0
        self._notes = [f"rank {self.rank}/{self.world_size} device {self.device} threads {self.threads} "
                       f"paddle {paddle.__version__}"]

        self._build_nets_and_data(resume)
        self.phases = Phases.from_config(t)
        if t.mode == "coopflow" and t.init_flow and t.pretrain_epochs:
            self._notes.append(f"Train.init_flow is set: the {t.pretrain_epochs} pre-training epochs are skipped")
        self._build_learners()
        self.langevin_engine = {"config": cfg.Langevin.engine,
                                "in_use": engine_in_use(self.learner.langevin_step)}
        self._notes.append(f"Langevin step: {self.langevin_engine['in_use']} (Langevin.engine={cfg.Langevin.engine}; "
                           "recorded in every checkpoint)")

        self.epoch, self.batch_pos, self.global_iter = 0, 0, 0
        self.counters = {"ebm_skipped": 0, "flow_skipped": 0, "nonfinite": 0}
        self.nonfinite = health.NonfiniteStreak(g.max_consecutive_nonfinite)
        self.health = health.HealthCheck(cfg.Health)
        self.best = {"metric": None, "value": math.inf, "epoch": -1}
        self.last_saved: Optional[str] = None
        self._epoch_bpd: list = []
        self._in_step = False
        if resume:
            self._resume(resume)
        elif t.init_flow and self.flow is not None:
            state = ckpt.load_checkpoint(t.init_flow, need=(".pdparams",))["params"]
            ckpt.load_params_into(self.flow, state["flow"], "flow")
            self._notes.append(f"flow initialised from {t.init_flow} (pre-trained; ActNorm already initialised)")
        if not resume:
            # One stream on every rank: each draw covers the global batch and a rank keeps its rows
            # (paddle_coopflow/noise.py), so W ranks reproduce one process of the same global batch.
            seed_everything(g.seed)
        self._boundary_rng = ckpt.rng_state()
        self.fixed_noise = outputs.fixed_noise(cfg, self.flow, self.dataset)
        self.loss_nets = None
        self.log = open_run_dir(cfg, self.run_dir, self.rank, self.global_iter, resume, self._notes)

    # ------------------------------------------------------------------------------------------ set-up
    def _build_nets_and_data(self, resume: Optional[str]) -> None:
        """The networks (seeded identically on every rank), the dataset and the iterations per epoch."""
        from ..data import build_dataloader, build_dataset
        from ..data.build import batches_per_epoch

        cfg, t = self.cfg, self.cfg.Train
        seed_everything(cfg.Global.seed)
        self.flow = build_flow(cfg.Flow) if t.mode != "langevin_only" else None
        self.ebm = build_ebm(cfg.EBM) if t.mode != "flow_only" else None
        for name, net in (("flow", self.flow), ("ebm", self.ebm)):
            if net is not None:
                self._notes.append(f"{name}: {type(net).__name__} with {count_params(net):,} parameters")
        self._build_loader = build_dataloader
        self.dataset = build_dataset(cfg.Data, cfg.Data.split)
        init = t.data_init_batches if self.flow is not None and not resume and not t.init_flow else 0
        self.iters_per_epoch = batches_per_epoch(len(self.dataset), t.batch_size, self.world_size,
                                                 f"{cfg.Data.name} (split {cfg.Data.split})", init)

    def _build_learners(self) -> None:
        """The learner of the run's mode, and one with its own flow optimizer for the pre-training phase."""
        from ..coopflow import CoopFlow, CoopFlowOptions
        from ..optim import build_optimizers

        flow_optim, ebm_optim = build_optimizers(self.cfg, self.flow, self.ebm)
        self.optims = {name: (optim, net) for name, optim, net in
                       (("flow", flow_optim, self.flow), ("ebm", ebm_optim, self.ebm)) if optim}
        self.learner = CoopFlow(self.flow, self.ebm, flow_optim, ebm_optim, CoopFlowOptions.from_config(self.cfg))
        self.pre_learner = None
        if self.phases.n_pretrain > 0:
            pre_flow_optim, _ = build_optimizers(self.cfg, self.flow, None)
            self.optims["pre_flow"] = (pre_flow_optim, self.flow)
            self.pre_learner = CoopFlow(self.flow, None, pre_flow_optim, None,
                                        CoopFlowOptions.from_config(self.cfg, "flow_only"))

    def _loader(self, epoch: int, start_batch: int):
        d, t = self.cfg.Data, self.cfg.Train
        return self._build_loader(self.dataset, t.batch_size, shuffle=True, seed=self.cfg.Global.seed,
                                  epoch=epoch, start_batch=start_batch, num_workers=d.num_workers,
                                  use_shared_memory=d.use_shared_memory, rank=self.rank,
                                  world_size=self.world_size)

    def _learner_for(self, phase: str):
        if phase == "pretrain":
            return self.pre_learner
        if self.pre_learner is not None:  # the flow's pre-training is over: its optimizer goes
            self.pre_learner = None
            self.optims.pop("pre_flow", None)
            self.log.info(f"epoch {self.epoch + 1}: flow pre-training done; phase '{phase}' starts with fresh "
                          "optimizers for both nets (new Adam moments, LR warm-up from sample 0)")
        return self.learner

    # ------------------------------------------------------------------------------------------ state
    def _state(self) -> Dict:
        """Progress at the last completed iteration boundary (what a checkpoint records)."""
        return {"epoch": self.epoch, "batch_pos": self.batch_pos, "global_iter": self.global_iter,
                "samples_seen": self.learner.samples_seen,
                "pre_samples_seen": self.pre_learner.samples_seen if self.pre_learner else None,
                "phase": self.phases.of(min(self.epoch, self.phases.total_epochs - 1)),
                "counters": dict(self.counters),
                "best": dict(self.best), "epoch_bpd": list(self._epoch_bpd), "rng": self._boundary_rng,
                "langevin_engine": dict(self.langevin_engine), "config": self.cfg.to_dict()}

    def save(self, name: str, link_latest: bool = True) -> Optional[str]:
        """Write checkpoint ``ckpt/<name>`` (rank 0) and point ``latest`` at it; never inside a NaN streak
        nor while the health check has a quantity out of range.

        Returns:
            the prefix written, or None (other rank, or skipped as above).
        """
        if self.rank != 0:
            return None
        if self.nonfinite.count or self.health.suspect:
            why = (f"{self.nonfinite.count} non-finite steps in a row" if self.nonfinite.count
                   else f"the health check's {self.health.suspect} is out of range")
            self.log.info(f"not saving {name}: {why} (last checkpoint before: {self.last_saved or 'none'})")
            return None
        prefix = os.path.join(self.ckpt_dir, name)
        nets = {"flow": self.flow, "ebm": self.ebm}
        save_training_checkpoint(prefix, nets, self.optims, self._state())
        if link_latest and name != "latest":
            ckpt.link_checkpoint(prefix, os.path.join(self.ckpt_dir, "latest"))
        if name.startswith("iter_"):
            prune(self.ckpt_dir, self.cfg.Global.keep_checkpoints)
        self.last_saved = prefix if name.startswith("iter_") else os.path.join(self.ckpt_dir, "latest")
        return prefix

    def _resume(self, prefix: str) -> None:
        def optims_for(states: Dict) -> Dict:
            if self.pre_learner is not None and states["epoch"] >= self.phases.n_pretrain:  # pre-training is over
                self.pre_learner = None
                self.optims.pop("pre_flow", None)
            return self.optims

        s = load_training_checkpoint(prefix, {"flow": self.flow, "ebm": self.ebm}, optims_for)
        self.epoch, self.batch_pos, self.global_iter = s["epoch"], s["batch_pos"], s["global_iter"]
        self.learner.samples_seen = s["samples_seen"]
        if self.pre_learner is not None:
            self.pre_learner.samples_seen = s.get("pre_samples_seen") or 0
        self.counters.update(s["counters"])
        self.last_saved = prefix        # good: it just loaded; named if the run fails before its next save
        self.best = s["best"]
        self._epoch_bpd = list(s.get("epoch_bpd", []))
        ckpt.set_rng_state(s["rng"])
        self._notes.append(f"resumed from {prefix}: {checkpoint_label(s)}")
        old = (s.get("langevin_engine") or {}).get("in_use")
        if old and old != self.langevin_engine["in_use"]:
            self._notes.append(f"the checkpoint was trained with the {old} Langevin step; this run takes the "
                               f"{self.langevin_engine['in_use']} step as Langevin.engine="
                               f"{self.cfg.Langevin.engine} decides here (numbers differ at float rounding)")

    # ------------------------------------------------------------------------------------------ loop
    def _data_init(self) -> bool:
        """ActNorm data-dependent init on the first `data_init_group` batches; True if it ran.

        The official code sends several groups of batches through the flow but only the first has an
        effect (ActNorm initialises once); we send that one. Training then starts at batch
        `data_init_batches` of epoch 0, as there.
        """
        import paddle

        t = self.cfg.Train
        if self.flow is None or self.flow.is_initialized:
            return False
        batches = []
        for i, (x, _) in enumerate(self._loader(0, 0)):
            if i >= max(1, min(t.data_init_group, t.data_init_batches)):
                break
            batches.append(x)
        if self.world_size > 1:  # the global batches, as one process of the same global batch sees them
            batches = [ddp.gather_batch(b) for b in batches]
        self.flow.train()
        with paddle.no_grad():
            self.flow.nll(paddle.concat(batches))
        if self.world_size > 1:  # same data and noise on every rank; rank 0's values guard against drift
            ddp.broadcast_state(self.flow)
        self.log.info(f"ActNorm data-dependent init on {sum(len(b) for b in batches)} images; "
                      f"training starts at batch {t.data_init_batches} of epoch 1")
        return True

    def train(self) -> Dict:
        """Run to the end (or Train.max_iters). Returns {"global_iter", "counters", "best"}.

        Raises:
            TrainingStopped: SIGTERM/SIGINT; ``latest`` was saved at the iteration boundary.
            UserError: a streak of non-finite steps, a finite blow-up (training/health.py), or a corrupt
                image met mid-run (``latest`` saved).
        """
        try:
            return self._train()
        finally:
            self.log.close()

    def _train(self) -> Dict:
        from ..data import DatasetError

        t = self.cfg.Train
        if self.global_iter == 0 and self.epoch == 0 and self.batch_pos == 0 and self._data_init():
            self.batch_pos = t.data_init_batches
        if self.world_size > 1 and self.loss_nets is None:
            self.loss_nets = ddp.make_loss_nets(self.flow, self.ebm)
            for lr in (self.learner, self.pre_learner):
                if lr is not None:
                    lr.loss_flow, lr.loss_ebm = self.loss_nets
        self._boundary_rng = ckpt.rng_state()
        self.log.info(f"{self.phases.total_epochs} epochs x {self.iters_per_epoch} iterations "
                      f"(batch {t.batch_size} x {self.world_size} ranks); run dir {self.run_dir}")
        with StopOnSignal() as stop:
            try:
                self._run_epochs(stop)
            except KeyboardInterrupt:
                self._interrupted()
                raise
            except DatasetError as err:
                where = self._save_at_boundary()
                raise UserError(f"stopped at iter {self.global_iter}: {err} ({where})") from None
        if stop.requested:
            where = self._save_at_boundary()
            self.log.info(f"{stop.name}: stopped at epoch {self.epoch + 1} batch {self.batch_pos} "
                          f"iter {self.global_iter}; {where}")
            raise TrainingStopped(stop.signum, f"{stop.name} received; {where}")
        return self._finish()

    def _run_epochs(self, stop: StopOnSignal) -> None:
        t, g = self.cfg.Train, self.cfg.Global
        total_iters = self.phases.total_epochs * self.iters_per_epoch
        agg: Dict[str, list] = {}
        now = time.time()
        clock = {"process_start": now, "process_start_iter": self.global_iter,
                 "interval_start": now, "interval_start_iter": self.global_iter}
        while self.epoch < self.phases.total_epochs:
            phase = self.phases.of(self.epoch)
            learner = self._learner_for(phase)
            for x, _ in self._loader(self.epoch, self.batch_pos):
                if stop.requested or (t.max_iters and self.global_iter >= t.max_iters):
                    return
                self._in_step = True
                stats = learner.train_step(x, self.epoch - self.phases.n_pretrain, self.batch_pos,
                                           frozen_flow=phase == "frozen_flow",
                                           shard=ddp.shard_of(x, self.rank, self.world_size))
                self.batch_pos += 1
                self.global_iter += 1
                self._boundary_rng = ckpt.rng_state()
                self._in_step = False
                self._account(stats, agg)
                if self.global_iter % g.log_interval == 0:
                    means = outputs.log_interval(self, phase, agg, clock, total_iters)
                    health.stop_on_blowup(self.health, means, phase, self.global_iter, self.world_size,
                                          self.last_saved, self.log)
                    agg = {}
                outputs.periodic(self, phase)
            self.epoch += 1
            self.batch_pos = 0
            self._end_of_epoch(phase, fid=not stop.requested)

    def _save_at_boundary(self) -> str:
        """Save ``latest`` at the last completed iteration; returns a phrase saying where it is."""
        if self.rank != 0:
            return "rank 0 saves"
        prefix = self.save("latest", link_latest=False)
        if prefix is None:
            return (f"latest not updated (a non-finite streak or a suspected blow-up); last good checkpoint: "
                    f"{self.last_saved}")
        return f"resume with --resume {prefix} ({checkpoint_label(self._state())})"

    def _interrupted(self) -> None:
        if self._in_step:
            self.log.info(f"interrupted inside iter {self.global_iter + 1}: abandoned; nothing saved "
                          f"(last checkpoint: {self.last_saved or 'none'})")
        else:
            self.log.info(f"interrupted: {self._save_at_boundary()}")

    def _finish(self) -> Dict:
        g = self.cfg.Global
        self.save(iter_prefix_name(self.global_iter))
        if g.sample_interval:
            outputs.sample_grid(self)
        self.log.info(f"done: {self.global_iter} iterations; checkpoints in {self.ckpt_dir}; "
                      f"samples in {os.path.join(self.run_dir, 'samples')}")
        if self.world_size > 1:
            same, msg = ddp.check_ranks_agree((self.flow, self.ebm), self.world_size)
            print(f"[rank {self.rank}] {msg}", flush=True)
            self.log.info(msg)
        outputs.export_final(self)
        return {"global_iter": self.global_iter, "counters": dict(self.counters), "best": dict(self.best)}

    def _account(self, stats: Dict, agg: Dict) -> None:
        for k in ("ebm_skipped", "flow_skipped"):
            self.counters[k] += int(bool(stats.get(k, False)))
        nonfinite = bool(stats.get("nonfinite"))
        self.counters["nonfinite"] += int(nonfinite)
        self.nonfinite.update(nonfinite, self.global_iter, self.counters["nonfinite"], self.last_saved, self.log)
        for k, v in stats.items():
            if k in outputs.TAGS and isinstance(v, float):
                agg.setdefault(k, []).append(v)
        if self.cfg.Train.mode == "flow_only" and math.isfinite(stats.get("flow_bpd", math.nan)):
            self._epoch_bpd.append(stats["flow_bpd"])

    def _end_of_epoch(self, phase: str, fid: bool = True) -> None:
        """Epoch checkpoint, then FID (never while the flow pre-trains), then `best` by bits/dim."""
        g, e = self.cfg.Global, self.cfg.Eval
        fid_due = fid and e.fid_every_epochs and self.epoch % e.fid_every_epochs == 0 and phase != "pretrain"
        if fid_due or (g.save_every_epochs and self.epoch % g.save_every_epochs == 0):
            self.save(iter_prefix_name(self.global_iter))
        if fid_due:
            self.evaluate_fid()
        if self._epoch_bpd and not (e.fid_every_epochs or e.fid_every_iters):
            # Without FID, a flow-only run keeps as `best` the epoch with the lowest mean training bits/dim
            # (the EBM loss is no quality measure, so other modes have no `best` until FID is on).
            bpd = float(np.mean(self._epoch_bpd))
            self._epoch_bpd = []
            self.log.record(self.global_iter, {"train/epoch_bpd": bpd, "epoch": self.epoch})
            self._keep_if_best("train_bpd", bpd)

    # ------------------------------------------------------------------------------------------ outputs
    def sample_grid(self) -> Optional[str]:
        """Fixed-noise grid of proposals | revisions (see :func:`outputs.sample_grid`)."""
        return outputs.sample_grid(self)

    def evaluate_fid(self) -> Optional[float]:
        """In-training FID (rank 0) of the current nets; a new lowest value makes this checkpoint `best`.

        Called after the checkpoint of this iteration is saved, so a failing FID never loses it.
        """
        if self.rank != 0:
            return None
        metric, value = outputs.evaluate_fid(self.fid, self.flow, self.ebm, self.run_dir, self.log, self.global_iter)
        self._keep_if_best(metric, value)
        return value

    def _keep_if_best(self, metric: str, value: float) -> None:
        """Record a new lowest `metric` and point ``ckpt/best`` at a checkpoint of this iteration."""
        if not value < self.best["value"]:
            return
        self.best = {"metric": metric, "value": value, "epoch": self.epoch, "iter": self.global_iter}
        prefix = self.save(iter_prefix_name(self.global_iter))
        if prefix:
            ckpt.link_checkpoint(prefix, os.path.join(self.ckpt_dir, "best"))
            self.log.info(f"best {metric} = {value:.4f}: {prefix} -> best")
