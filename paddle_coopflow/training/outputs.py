"""What a run produces besides checkpoints: sample grids, in-training FID, exported programs.

The functions read the :class:`~paddle_coopflow.training.trainer.Trainer` they are given and never set its
attributes (the trainer keeps `best`); they run on rank 0 only.
Sampling for grids and FID restores every RNG state afterwards, so outputs never change the numbers
of the training run.
"""
from __future__ import annotations

import math
import os
import time
from typing import Dict, Optional, Tuple

import numpy as np

from .. import checkpoint as ckpt
from ..logger import log_line, save_png, to_uint8_grid
from .checkpointing import iter_prefix_name

__all__ = ["TAGS", "log_interval", "fixed_noise", "sample_grid", "periodic", "evaluate_fid", "export_final"]

# train_step stats key → VisualDL tag; each is averaged over a log interval
TAGS = {
    "ebm_loss": "train/ebm_loss", "f_data": "train/f_data", "f_revised": "train/f_revised",
    "f_proposal": "train/f_proposal", "flow_nll": "train/flow_nll", "flow_bpd": "train/flow_bpd",
    "flow_grad_norm": "train/flow_grad_norm", "ebm_grad_norm": "train/ebm_grad_norm",
    "lr_flow": "lr/flow", "lr_ebm": "lr/ebm", "langevin_mse": "langevin/mse_change",
    "langevin_delta_clip_frac": "langevin/delta_clip_frac", "noise_std": "langevin/noise_std",
    "ebm_energy_l2": "train/ebm_energy_l2",
}
GRID_MIN_CELL = 64   # saved grid PNGs are upscaled (nearest) until each image is at least this many pixels


def log_interval(trainer, phase: str, agg: Dict, clock: Dict, total_iters: int) -> Dict[str, float]:
    """One zoo-style log line and one stats.jsonl / VisualDL record with the interval's means.

    `clock` holds the time and iteration at which this process started and the interval started (the
    latter is moved to now).

    Besides wall time per iteration, the record holds the process's CPU seconds so far
    (``time/process_cpu_s``), so runs on a shared machine can be compared by CPU time.

    Returns:
        the interval's means, keyed as train_step names them (what the health check reads).
    """
    t = trainer.cfg.Train
    now = time.time()
    cost = (now - clock["interval_start"]) / max(1, trainer.global_iter - clock["interval_start_iter"])
    rate = (now - clock["process_start"]) / max(1, trainer.global_iter - clock["process_start_iter"])
    eta = rate * ((t.max_iters or total_iters) - trainer.global_iter)
    clock.update(interval_start=now, interval_start_iter=trainer.global_iter)
    means = {k: float(np.nanmean(v)) if np.isfinite(v).any() else float("nan") for k, v in agg.items()}
    bs = t.batch_size * trainer.world_size
    shown = {k: v for k, v in means.items() if math.isfinite(v)}
    shown.update({"skip_ebm": trainer.counters["ebm_skipped"], "skip_flow": trainer.counters["flow_skipped"],
                  "nonfinite": trainer.counters["nonfinite"]})
    trainer.log.info(log_line(phase, trainer.epoch, trainer.phases.total_epochs, trainer.global_iter,
                              t.max_iters or total_iters, shown, cost, bs / max(cost, 1e-9), eta))
    rec = {TAGS[k]: v for k, v in means.items()}
    rec.update({"train/skipped_ebm_total": float(trainer.counters["ebm_skipped"]),
                "train/skipped_flow_total": float(trainer.counters["flow_skipped"]),
                "train/nonfinite_total": float(trainer.counters["nonfinite"]),
                "time/batch_cost": cost, "time/ips": bs / max(cost, 1e-9),
                "time/process_cpu_s": time.process_time(), "phase": phase, "epoch": trainer.epoch})
    trainer.log.record(trainer.global_iter, rec)
    return means


def upscale(img: np.ndarray, cell: int) -> np.ndarray:
    """Nearest-neighbour upscale of an HWC grid so that a `cell`-pixel image becomes >= GRID_MIN_CELL pixels."""
    k = max(1, int(math.ceil(GRID_MIN_CELL / max(1, cell))))
    return img if k == 1 else np.repeat(np.repeat(img, k, axis=0), k, axis=1)


def fixed_noise(cfg, flow, dataset):
    """The noise batch behind every sample grid: z [n, *z_shape] for a flow, else U(-1, 1) starts.

    Drawn from its own NumPy stream (Global.seed + 12345), so grids are comparable over time and
    resume-proof.
    """
    import paddle

    rs = np.random.RandomState(cfg.Global.seed + 12345)
    n = cfg.Global.grid_size
    if flow is not None:
        return paddle.to_tensor(rs.randn(n, *flow.z_shape).astype("float32"))
    shape = dataset[0][0].shape
    return paddle.to_tensor(rs.uniform(-1, 1, (n,) + tuple(shape)).astype("float32"))


def sample_grid(trainer) -> Optional[str]:
    """Fixed-noise grid: flow proposals (left) | Langevin revisions (right); returns the PNG path."""
    from ..sampling import sample

    if trainer.rank != 0:
        return None
    lg = trainer.cfg.Langevin
    state = ckpt.rng_state()
    try:
        prop, rev = sample(trainer.flow, trainer.ebm, z=trainer.fixed_noise, n_steps=lg.n_steps,
                           step_size=lg.test_step_size, delta_clip=lg.delta_clip,
                           image_clip=tuple(lg.image_clip) if lg.image_clip else None,
                           langevin_step=trainer.learner.langevin_step)
    finally:
        ckpt.set_rng_state(state)
    panels = [prop] if trainer.ebm is None else [prop, rev]
    grids = [to_uint8_grid(p.numpy()) for p in panels]
    if len(grids) == 2:
        sep = np.full((grids[0].shape[0], 6, 3), 255, np.uint8)
        img = np.concatenate([grids[0], sep, grids[1]], axis=1)
    else:
        img = grids[0]
    path = os.path.join(trainer.run_dir, "samples", f"iter_{trainer.global_iter:07d}.png")
    save_png(upscale(img, int(prop.shape[-1])), path)
    trainer.log.image("samples/flow_vs_coopflow", img, trainer.global_iter)
    return path


def periodic(trainer, phase: str) -> None:
    """The grid, checkpoint and in-training FID due after iteration `trainer.global_iter` (FID after its save)."""
    g, e, it = trainer.cfg.Global, trainer.cfg.Eval, trainer.global_iter
    if g.sample_interval and it % g.sample_interval == 0:
        sample_grid(trainer)
    fid_due = e.fid_every_iters and it % e.fid_every_iters == 0 and phase != "pretrain"
    if fid_due or (g.save_interval and it % g.save_interval == 0):
        trainer.save(iter_prefix_name(it))
    if fid_due:
        trainer.evaluate_fid()


def evaluate_fid(fid, flow, ebm, run_dir: str, log, step: int) -> Tuple[str, float]:
    """In-training FID (or proxy FID and KID) of the nets at iteration `step`, logged; returns (metric, value).

    The RNG state is restored afterwards, so the evaluation does not change the training that follows.
    """
    state = ckpt.rng_state()
    try:
        values = fid.evaluate(flow, ebm, run_dir)
    finally:
        ckpt.set_rng_state(state)
    log.record(step, values)
    log.info(f"iter {step}: " + ", ".join(f"{k} = {v:.4g}" for k, v in values.items()))
    return fid.log_key.split("/", 1)[1], values[fid.log_key]


def export_final(trainer) -> None:
    """Deployable programs of the final nets (``inference/``) and of ``best`` (``inference_best/``)."""
    ex = trainer.cfg.Export
    if not ex.on_train_end or trainer.rank != 0 or trainer.ebm is None or trainer.flow is None:
        return
    from ..export import export_all, export_checkpoint

    out = ex.save_dir or os.path.join(trainer.run_dir, "inference")
    try:
        export_all(trainer.cfg, trainer.flow, trainer.ebm, out)
        trainer.log.info(f"exported inference programs to {out} (deploy/python/infer.py --model_dir {out})")
        best = os.path.join(trainer.ckpt_dir, "best")
        if ckpt.checkpoint_exists(best):
            export_checkpoint(trainer.cfg, best, out.rstrip("/") + "_best")
            trainer.log.info(f"exported the best checkpoint to {out.rstrip('/')}_best")
    except Exception as err:  # the checkpoints are safe; export can be redone with tools/export_model.py
        trainer.log.info(f"export failed ({type(err).__name__}: {err}); run tools/export_model.py -c ... "
                         f"--ckpt {os.path.join(trainer.ckpt_dir, 'latest')} after fixing it")
