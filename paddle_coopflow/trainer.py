"""The training engine: phases, data, checkpoints/resume, logs, sample grids, FID, faults, DDP.

One :class:`Trainer` runs every setting of the paper through :class:`~paddle_coopflow.coopflow.CoopFlow`:

    epochs [0, P)          phase 'pretrain'  flow maximum likelihood           (CoopFlow(Pre) phase 1)
    epochs [P, P + W)      phase 'warmup'    flow frozen, EBM trained          (CoopFlow(Pre) phase 2)
    epochs [P + W, end)    phase 'coop'      Algorithm 1                       (all settings)

with P = Train.pretrain_epochs, W = Train.warmup_epochs (+1 with Train.warmup_off_by_one, the [T] gate).
`Train.mode: flow_only | langevin_only` runs the two baselines instead (phase 'flow' / 'ebm').

Exact resume: the data order is a pure function of (seed, epoch), every RNG state and the position in
the epoch are checkpointed, and sampling for grids / FID restores the RNG afterwards, so a run killed
at any moment and resumed from its last checkpoint reaches the parameters of an uninterrupted run.
"""
from __future__ import annotations

import math
import os
import time
from typing import Dict, Optional

import numpy as np

from . import checkpoint as ckpt
from .builder import build_ebm, build_flow, count_params
from .config import Config, ConfigError
from .errors import UserError
from .logger import RunLogger, log_line, save_png, to_uint8_grid
from .utils.env import resolve_device, seed_everything, setup_threads

# stats key → (VisualDL tag, how it is aggregated over a log interval)
_TAGS = {
    "ebm_loss": "train/ebm_loss", "f_data": "train/f_data", "f_revised": "train/f_revised",
    "f_proposal": "train/f_proposal", "flow_nll": "train/flow_nll", "flow_bpd": "train/flow_bpd",
    "flow_grad_norm": "train/flow_grad_norm", "ebm_grad_norm": "train/ebm_grad_norm",
    "lr_flow": "lr/flow", "lr_ebm": "lr/ebm", "langevin_mse": "langevin/mse_change",
    "langevin_delta_clip_frac": "langevin/delta_clip_frac", "noise_std": "langevin/noise_std",
}


def _portable_opt_state(state: Dict, net, to_portable: bool) -> Dict:
    """Rename optimizer accumulators between Paddle's per-process parameter names (``conv2d_19.w_0``,
    which depend on creation order) and the network's structural names (``f.0.weight``), so an
    optimizer state can be restored into nets built in another order or process."""
    pairs = [(p.name, "@" + k) for k, p in net.named_parameters()]
    if not to_portable:
        pairs = [(b, a) for a, b in pairs]
    pairs.sort(key=lambda ab: -len(ab[0]))
    out = {}
    for key, val in state.items():
        for src, dst in pairs:
            if key.startswith(src + "_"):
                key = dst + key[len(src):]
                break
        out[key] = val
    return out


def dist_info():
    """(rank, world_size) from the variables `paddle.distributed.launch` sets."""
    return int(os.environ.get("PADDLE_TRAINER_ID", 0)), int(os.environ.get("PADDLE_TRAINERS_NUM", 1))


def _make_loss_nets(flow, ebm):
    """DataParallel wrappers for the loss computations; sampling keeps using the raw nets."""
    import paddle
    import paddle.nn as nn

    class FlowNLL(nn.Layer):
        def __init__(self, f):
            super().__init__()
            self.f = f

        def forward(self, x):
            return self.f.nll(x)

    flow_dp = paddle.DataParallel(FlowNLL(flow)) if flow is not None else None
    ebm_dp = paddle.DataParallel(ebm) if ebm is not None else None
    return flow_dp, ebm_dp


class Trainer:
    """Build everything from a :class:`Config` and run it.

    Args:
        cfg: the resolved config.
        resume: checkpoint prefix to resume from (restores everything), or None.
    """

    def __init__(self, cfg: Config, resume: Optional[str] = None):
        import paddle

        self.cfg = cfg
        g, t = cfg.Global, cfg.Train
        self.rank, self.world_size = dist_info()
        if self.world_size > 1:
            import paddle.distributed as dist

            dist.init_parallel_env()
        self.device = resolve_device(g.device)
        self.threads = setup_threads(g.threads, self.world_size) if self.device == "cpu" else 0
        from . import langevin_fast

        langevin_fast.set_mode(langevin_fast.mode_for_engine(cfg.Langevin.engine))
        self.run_dir = g.output_dir
        self.ckpt_dir = os.path.join(self.run_dir, "ckpt")
        self._check_run_dir(resume)
        self.log = RunLogger(self.run_dir, enabled=self.rank == 0, use_visualdl=g.use_visualdl)
        self.log.info(f"rank {self.rank}/{self.world_size} device {self.device} threads {self.threads} "
                      f"paddle {paddle.__version__}")
        if self.rank == 0:
            with open(os.path.join(self.run_dir, "config.yaml"), "w") as fh:
                fh.write(cfg.dump())
            self.log.info("resolved config:\n" + cfg.dump())

        # networks: identical initialisation on every rank (same seed)
        seed_everything(g.seed)
        self.flow = build_flow(cfg.Flow) if t.mode != "langevin_only" else None
        self.ebm = build_ebm(cfg.EBM) if t.mode != "flow_only" else None
        for name, net in (("flow", self.flow), ("ebm", self.ebm)):
            if net is not None:
                self.log.info(f"{name}: {type(net).__name__} with {count_params(net):,} parameters")

        from .data import build_dataloader, build_dataset

        self._build_loader = build_dataloader
        self.dataset = build_dataset(cfg.Data, cfg.Data.split)
        self.iters_per_epoch = len(self._loader(0, 0))
        if self.iters_per_epoch == 0:
            raise UserError(f"dataset {cfg.Data.name} at {cfg.Data.root} gives no batch of size {t.batch_size}")

        self.P = t.pretrain_epochs if t.mode == "coopflow" else 0
        self.W = (t.warmup_epochs + (1 if t.warmup_off_by_one and t.warmup_epochs else 0)) \
            if t.mode == "coopflow" else 0
        self.total_epochs = self.P + (t.warmup_epochs if t.mode == "coopflow" else 0) + t.coop_epochs

        self.learner = self._build_learner()
        self.pre_learner = self._build_learner(mode="flow_only") if self.P > 0 else None

        # progress
        self.epoch, self.batch_pos, self.global_iter = 0, 0, 0
        self.counters = {"ebm_skipped": 0, "flow_skipped": 0, "nonfinite": 0}
        self.consecutive_nonfinite = 0
        self.best = {"metric": None, "value": math.inf, "epoch": -1}
        self.last_saved: Optional[str] = None
        self._epoch_bpd: list = []

        if resume:
            self._resume(resume)
        elif t.init_flow and self.flow is not None:
            state = ckpt.load_checkpoint(t.init_flow, need=(".pdparams",))["params"]
            ckpt.load_params_into(self.flow, state["flow"], "flow")
            self.log.info(f"flow initialised from {t.init_flow} (pre-trained; ActNorm already initialised)")

        # per-rank randomness after identical construction
        if not resume:
            seed_everything(g.seed + 1000 * self.rank)
        self.fixed_noise = self._fixed_noise()
        self.loss_nets = None

    # ------------------------------------------------------------------------------------------ set-up
    def _check_run_dir(self, resume: Optional[str]) -> None:
        if self.rank != 0:
            return
        busy = os.path.isdir(self.run_dir) and any(
            n in os.listdir(self.run_dir) for n in ("ckpt", "stats.jsonl", "train.log"))
        if busy and not resume and not self.cfg.Global.overwrite:
            raise UserError(f"run directory {self.run_dir} already holds a run; resume it with "
                            f"--resume {os.path.join(self.run_dir, 'ckpt', 'latest')}, pick another "
                            "-o Global.output_dir=..., or pass -o Global.overwrite=true")
        os.makedirs(self.run_dir, exist_ok=True)

    def _loader(self, epoch: int, start_batch: int):
        d, t = self.cfg.Data, self.cfg.Train
        return self._build_loader(self.dataset, t.batch_size, shuffle=True, seed=self.cfg.Global.seed,
                                  epoch=epoch, start_batch=start_batch, num_workers=d.num_workers,
                                  use_shared_memory=d.use_shared_memory, rank=self.rank,
                                  world_size=self.world_size)

    def _build_learner(self, mode: Optional[str] = None):
        from .coopflow import CoopFlow, CoopFlowOptions
        from .optim import build_ebm_optimizer, build_flow_optimizer

        c, o, lg, t = self.cfg, self.cfg.Optimizer, self.cfg.Langevin, self.cfg.Train
        mode = mode or t.mode
        if not hasattr(self, "_optims"):
            fo = eo = None
            if self.flow is not None:
                fo = build_flow_optimizer(self.flow, o.flow_lr, o.flow_gain_l2, betas=(o.flow_beta1, o.flow_beta2),
                                          warmup_iters=o.warmup_iters, batch_size=t.batch_size,
                                          warmup_first_step_zero=o.warmup_first_step_zero)
            if self.ebm is not None:
                eo = build_ebm_optimizer(self.ebm, o.ebm_lr, betas=(o.ebm_beta1, o.ebm_beta2),
                                         warmup_iters=o.warmup_iters, batch_size=t.batch_size,
                                         warmup_first_step_zero=o.warmup_first_step_zero)
            self._optims = (fo, eo)
        fo, eo = self._optims
        opts = CoopFlowOptions(
            mode=mode, n_steps=lg.n_steps, step_size=lg.step_size, test_step_size=lg.test_step_size,
            delta_clip=lg.delta_clip, image_clip=tuple(lg.image_clip) if lg.image_clip else None,
            noise_mode=lg.noise, noise_std=lg.noise_std, noise_K=lg.noise_decay_K,
            flow_clip_norm=o.flow_clip_norm, flow_clip_mode=o.flow_clip_mode, flow_skip_norm=o.flow_skip_norm,
            ebm_clip_norm=o.ebm_clip_norm, ebm_skip_norm=o.ebm_skip_norm,
            ebm_skip_in_first_epoch=o.ebm_skip_in_first_epoch, n_update_flow=t.n_update_flow,
            sample_flow_in_train_mode=t.sample_flow_train_mode, flow_waits_for_ebm=t.flow_waits_for_ebm)
        return CoopFlow(self.flow if mode != "langevin_only" else None, self.ebm if mode != "flow_only" else None,
                        fo if mode != "langevin_only" else None, eo if mode != "flow_only" else None, opts)

    def _fixed_noise(self):
        """The noise batch behind every sample grid (own RNG: comparable over time, resume-proof)."""
        import paddle

        rs = np.random.RandomState(self.cfg.Global.seed + 12345)
        n = self.cfg.Global.grid_size
        if self.flow is not None:
            return paddle.to_tensor(rs.randn(n, *self.flow.z_shape).astype("float32"))
        shape = self.dataset[0][0].shape
        return paddle.to_tensor(rs.uniform(-1, 1, (n,) + tuple(shape)).astype("float32"))

    def phase_of(self, epoch: int) -> str:
        t = self.cfg.Train
        if t.mode == "flow_only":
            return "flow"
        if t.mode == "langevin_only":
            return "ebm"
        if epoch < self.P:
            return "pretrain"
        return "warmup" if epoch < self.P + self.W else "coop"

    # ------------------------------------------------------------------------------------------ state
    def _state(self) -> Dict:
        return {"epoch": self.epoch, "batch_pos": self.batch_pos, "global_iter": self.global_iter,
                "gstep": self.learner.gstep, "phase": self.phase_of(min(self.epoch, self.total_epochs - 1)),
                "counters": dict(self.counters), "consecutive_nonfinite": self.consecutive_nonfinite,
                "best": dict(self.best), "epoch_bpd": list(self._epoch_bpd), "rng": ckpt.rng_state(), "config": self.cfg.to_dict()}

    def save(self, prefix_name: str, link_latest: bool = True) -> Optional[str]:
        if self.rank != 0:
            return None
        fo, eo = self._optims
        params = {k: v.state_dict() for k, v in (("flow", self.flow), ("ebm", self.ebm)) if v is not None}
        opt = {}
        net_of = {"flow": self.flow, "ebm": self.ebm}
        for k, b in (("flow", fo), ("ebm", eo)):
            if b is not None:
                opt[k] = _portable_opt_state(b.optimizer.state_dict(), net_of[k], True)
                opt[k + "_sched"] = b.scheduler.state_dict()
        prefix = os.path.join(self.ckpt_dir, prefix_name)
        ckpt.save_checkpoint(prefix, params, opt, self._state())
        if link_latest and prefix_name != "latest":
            ckpt.link_checkpoint(prefix, os.path.join(self.ckpt_dir, "latest"))
        if prefix_name.startswith("iter_"):
            ckpt.prune_checkpoints(self.ckpt_dir, self.cfg.Global.keep_checkpoints)
        self.last_saved = os.path.join(self.ckpt_dir, "latest")
        return prefix

    def _resume(self, prefix: str) -> None:
        data = ckpt.load_checkpoint(prefix)
        p, o, s = data["params"], data["opt"], data["states"]
        fo, eo = self._optims
        for k, net, b in (("flow", self.flow, fo), ("ebm", self.ebm, eo)):
            if net is None:
                continue
            if k not in p:
                raise UserError(f"checkpoint {prefix} has no {k} network; was it trained with another Train.mode?")
            ckpt.load_params_into(net, p[k], k)
            b.optimizer.set_state_dict(_portable_opt_state(o[k], net, False))
            b.scheduler.set_state_dict(o[k + "_sched"])
        self.epoch, self.batch_pos, self.global_iter = s["epoch"], s["batch_pos"], s["global_iter"]
        self.learner.gstep = s["gstep"]
        if self.pre_learner is not None:
            self.pre_learner.gstep = s["gstep"]
        self.counters.update(s["counters"])
        self.consecutive_nonfinite = s["consecutive_nonfinite"]
        self.best = s["best"]
        self._epoch_bpd = list(s.get("epoch_bpd", []))
        ckpt.set_rng_state(s["rng"])
        self.log.info(f"resumed from {prefix}: epoch {self.epoch + 1} batch {self.batch_pos} "
                      f"iter {self.global_iter}")

    # ------------------------------------------------------------------------------------------ loop
    def _data_init(self) -> bool:
        """ActNorm data-dependent init on the first `data_init_group` batches (SPEC §1.10).

        [T] sends 10 groups of 20 batches through the flow but only the first has an effect
        (ActNorm initialises once); we send that one. Training then starts at batch
        `data_init_batches` of epoch 0, as in [T]. Returns whether an init happened.
        """
        import paddle

        t = self.cfg.Train
        if self.flow is None or self.flow.is_initialized:
            return False
        if t.data_init_batches >= self.iters_per_epoch:
            raise ConfigError(f"Train.data_init_batches={t.data_init_batches} must be below the "
                              f"{self.iters_per_epoch} batches of an epoch")
        batches = []
        for i, (x, _) in enumerate(self._loader(0, 0)):
            if i >= max(1, min(t.data_init_group, t.data_init_batches)):
                break
            batches.append(x)
        self.flow.train()
        with paddle.no_grad():
            self.flow.nll(paddle.concat(batches))
        if self.world_size > 1:  # every rank takes rank 0's ActNorm statistics
            import paddle.distributed as dist

            for v in self.flow.state_dict().values():
                dist.broadcast(v, src=0)
        self.log.info(f"ActNorm data-dependent init on {sum(len(b) for b in batches)} images; "
                      f"training starts at batch {t.data_init_batches} of epoch 1")
        return True

    def train(self) -> Dict:
        import paddle

        t, g = self.cfg.Train, self.cfg.Global
        if self.global_iter == 0 and self.epoch == 0 and self.batch_pos == 0 and self._data_init():
            self.batch_pos = t.data_init_batches
        if self.world_size > 1 and self.loss_nets is None:
            self.loss_nets = _make_loss_nets(self.flow, self.ebm)
            for lr in (self.learner, self.pre_learner):
                if lr is not None:
                    lr.loss_flow, lr.loss_ebm = self.loss_nets
        total_iters = self.total_epochs * self.iters_per_epoch
        self.log.info(f"{self.total_epochs} epochs x {self.iters_per_epoch} iterations "
                      f"(batch {t.batch_size} x {self.world_size} ranks); run dir {self.run_dir}")
        agg: Dict[str, list] = {}
        t_last, it_last = time.time(), self.global_iter
        t_start, it_start = time.time(), self.global_iter
        try:
            while self.epoch < self.total_epochs:
                phase = self.phase_of(self.epoch)
                learner = self.pre_learner if phase == "pretrain" else self.learner
                if phase != "pretrain" and self.pre_learner is not None:
                    learner.gstep = max(learner.gstep, self.pre_learner.gstep)
                coop_epoch = self.epoch - self.P
                for x, _ in self._loader(self.epoch, self.batch_pos):
                    if t.max_iters and self.global_iter >= t.max_iters:
                        break
                    stats = learner.train_step(x, coop_epoch, self.batch_pos, frozen_flow=(phase == "warmup"))
                    if phase == "pretrain" and self.pre_learner is not None:
                        self.learner.gstep = self.pre_learner.gstep
                    self.batch_pos += 1
                    self.global_iter += 1
                    self._account(stats, agg)
                    if self.global_iter % g.log_interval == 0:
                        now = time.time()
                        cost = (now - t_last) / max(1, self.global_iter - it_last)
                        left = (t.max_iters or total_iters) - self.global_iter
                        rate = (now - t_start) / max(1, self.global_iter - it_start)
                        self._log_interval(phase, agg, cost, rate * left, total_iters)
                        agg, t_last, it_last = {}, now, self.global_iter
                    if g.sample_interval and self.global_iter % g.sample_interval == 0:
                        self.sample_grid()
                    if g.save_interval and self.global_iter % g.save_interval == 0:
                        self.save(f"iter_{self.global_iter:07d}")
                else:  # epoch finished
                    self.epoch += 1
                    self.batch_pos = 0
                    self._end_of_epoch()
                    continue
                break  # max_iters reached
        except KeyboardInterrupt:
            self.log.info("interrupted: saving latest")
            self.save("latest", link_latest=False)
            raise
        self.save(f"iter_{self.global_iter:07d}")
        if g.sample_interval:
            self.sample_grid()
        self.log.info(f"done: {self.global_iter} iterations; checkpoints in {self.ckpt_dir}; "
                      f"samples in {os.path.join(self.run_dir, 'samples')}")
        if self.world_size > 1:
            self._check_ranks_agree()
        self._export()
        self.log.close()
        return {"global_iter": self.global_iter, "counters": dict(self.counters), "best": dict(self.best)}

    def _check_ranks_agree(self) -> None:
        """Compare a digest of every parameter across ranks (they must be bit-identical)."""
        import hashlib

        import paddle
        import paddle.distributed as dist

        h = hashlib.sha256()
        for net in (self.flow, self.ebm):
            if net is not None:
                for v in net.state_dict().values():
                    h.update(np.ascontiguousarray(v.numpy()).tobytes())
        digest = paddle.to_tensor(np.frombuffer(h.digest()[:8], dtype=np.int64).copy())
        gathered = []
        dist.all_gather(gathered, digest)
        same = all(int(g.item()) == int(digest.item()) for g in gathered)
        msg = (f"parameters identical on all {self.world_size} ranks" if same else
               f"WARNING: parameters differ between ranks (digests {[int(g.item()) for g in gathered]})")
        print(f"[rank {self.rank}] {msg}", flush=True)
        self.log.info(msg)

    def _account(self, stats: Dict, agg: Dict) -> None:
        for k in ("ebm_skipped", "flow_skipped"):
            self.counters[k] += int(bool(stats.get(k, False)))
        if stats.get("nonfinite"):
            self.counters["nonfinite"] += 1
            self.consecutive_nonfinite += 1
            self.log.info(f"non-finite loss/energy/gradient at iter {self.global_iter}: step skipped "
                          f"({self.consecutive_nonfinite} in a row, {self.counters['nonfinite']} total)")
            if self.consecutive_nonfinite >= self.cfg.Global.max_consecutive_nonfinite:
                last = self.last_saved or "none saved yet"
                raise UserError(f"{self.consecutive_nonfinite} consecutive non-finite steps at iter "
                                f"{self.global_iter}; stopping. Last good checkpoint: {last} (lower the "
                                "learning rate or step size and resume from it)")
        else:
            self.consecutive_nonfinite = 0
        for k, v in stats.items():
            if k in _TAGS and isinstance(v, float):
                agg.setdefault(k, []).append(v)
        if self.cfg.Train.mode == "flow_only" and math.isfinite(stats.get("flow_bpd", math.nan)):
            self._epoch_bpd.append(stats["flow_bpd"])

    def _log_interval(self, phase: str, agg: Dict, cost: float, eta: float, total_iters: int) -> None:
        means = {k: float(np.nanmean(v)) if np.isfinite(v).any() else float("nan") for k, v in agg.items()}
        bs = self.cfg.Train.batch_size * self.world_size
        shown = {k: v for k, v in means.items() if math.isfinite(v)}
        shown.update({"skip_ebm": self.counters["ebm_skipped"], "skip_flow": self.counters["flow_skipped"],
                      "nonfinite": self.counters["nonfinite"]})
        self.log.info(log_line(phase, self.epoch, self.total_epochs, self.global_iter,
                               self.cfg.Train.max_iters or total_iters, shown, cost, bs / max(cost, 1e-9), eta))
        rec = {_TAGS[k]: v for k, v in means.items()}
        rec.update({"train/skipped_ebm_total": float(self.counters["ebm_skipped"]),
                    "train/skipped_flow_total": float(self.counters["flow_skipped"]),
                    "train/nonfinite_total": float(self.counters["nonfinite"]),
                    "time/batch_cost": cost, "time/ips": bs / max(cost, 1e-9),
                    "phase": phase, "epoch": self.epoch})
        self.log.record(self.global_iter, rec)

    def _end_of_epoch(self) -> None:
        g, e = self.cfg.Global, self.cfg.Eval
        if e.fid_every_epochs and self.epoch % e.fid_every_epochs == 0:
            self.evaluate_fid()
        if g.save_every_epochs and self.epoch % g.save_every_epochs == 0:
            self.save(f"iter_{self.global_iter:07d}")
        if self._epoch_bpd and not e.fid_every_epochs:
            # Without FID, a flow-only run keeps as `best` the epoch with the lowest mean training bits/dim
            # (the EBM loss is no quality measure, so other modes have no `best` until FID is on).
            bpd = float(np.mean(self._epoch_bpd))
            self._epoch_bpd = []
            self.log.record(self.global_iter, {"train/epoch_bpd": bpd})
            if bpd < self.best["value"]:
                self.best = {"metric": "train_bpd", "value": bpd, "epoch": self.epoch}
                self._link_best()

    # ------------------------------------------------------------------------------------------ outputs
    def sample_grid(self) -> Optional[str]:
        """Fixed-noise grid: flow proposals (left) | Langevin revisions (right); RNG left untouched."""
        import paddle

        if self.rank != 0:
            return None
        state = ckpt.rng_state()
        try:
            if self.flow is not None and self.ebm is None:
                was = self.flow.training
                self.flow.eval()
                with paddle.no_grad():
                    prop = self.flow.inverse(self.fixed_noise)
                self.flow.train(was)
                panels = [prop]
            else:
                z = self.fixed_noise if self.flow is not None else None
                prop, rev = (self.learner.sample(len(self.fixed_noise), z=z) if z is not None else
                             self._langevin_only_sample())
                panels = [prop, rev]
        finally:
            ckpt.set_rng_state(state)
        grids = [to_uint8_grid(p.numpy()) for p in panels]
        if len(grids) == 2:
            sep = np.full((grids[0].shape[0], 6, 3), 255, np.uint8)
            img = np.concatenate([grids[0], sep, grids[1]], axis=1)
        else:
            img = grids[0]
        path = os.path.join(self.run_dir, "samples", f"iter_{self.global_iter:07d}.png")
        save_png(img, path)
        self.log.image("samples/flow_vs_coopflow", img, self.global_iter)
        return path

    def _langevin_only_sample(self):
        from .langevin import langevin_flow

        lg = self.cfg.Langevin
        was = self.ebm.training
        self.ebm.eval()
        rev = langevin_flow(self.ebm, self.fixed_noise, lg.n_steps, lg.test_step_size, lg.delta_clip,
                            tuple(lg.image_clip) if lg.image_clip else None)
        self.ebm.train(was)
        return self.fixed_noise, rev

    def evaluate_fid(self) -> Optional[float]:
        """In-training FID (Eval section); selects the `best` checkpoint. Hooked up by the eval module."""
        from .evaluation import in_training_fid

        if self.rank != 0:
            return None
        state = ckpt.rng_state()
        try:
            fid = in_training_fid(self)
        finally:
            ckpt.set_rng_state(state)
        n = self.cfg.Eval.fid_num_samples
        self.log.record(self.global_iter, {f"eval/fid_{n}": fid})
        self.log.info(f"epoch {self.epoch}: FID({n} samples) = {fid:.3f}")
        if fid < self.best["value"]:
            self.best = {"metric": f"fid_{n}", "value": fid, "epoch": self.epoch}
            self._link_best()
        return fid

    def _link_best(self) -> None:
        prefix = self.save(f"iter_{self.global_iter:07d}")
        if prefix:
            ckpt.link_checkpoint(prefix, os.path.join(self.ckpt_dir, "best"))
            self.log.info(f"best {self.best['metric']} = {self.best['value']:.4f}: {prefix} -> best")

    def _export(self) -> None:
        """Deployable programs of the final nets (``inference/``) and of ``best`` (``inference_best/``)."""
        ex = self.cfg.Export
        if not ex.on_train_end or self.rank != 0 or self.ebm is None or self.flow is None:
            return
        from .export import export_all, export_checkpoint

        out = ex.save_dir or os.path.join(self.run_dir, "inference")
        try:
            export_all(self.cfg, self.flow, self.ebm, out)
            self.log.info(f"exported inference programs to {out} (deploy/python/infer.py --model_dir {out})")
            best = os.path.join(self.ckpt_dir, "best")
            if ckpt.checkpoint_exists(best):
                export_checkpoint(self.cfg, best, out.rstrip("/") + "_best")
                self.log.info(f"exported the best checkpoint to {out.rstrip('/')}_best")
        except Exception as err:  # the checkpoints are safe; export can be redone with tools/export_model.py
            self.log.info(f"export failed ({type(err).__name__}: {err}); run tools/export_model.py -c ... "
                          f"--ckpt {os.path.join(self.ckpt_dir, 'latest')} after fixing it")
