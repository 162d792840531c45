#!/usr/bin/env python3
"""The 2-D toy experiment of the paper (§5.1, Figure 2): CoopFlow on a 2-D point set.

    python tools/toy2d.py -c configs/toy_spiral_t100.yaml [-o Section.key=value ...] [--dry-run]

Trains q_α (Flow2D) and f_θ (MLP EBM) with paper Algorithm 1 (paddle_coopflow/coopflow.py) and
writes into Global.output_dir:
  figure.png      Figure-2 style panels of the reported model: ground truth, density of q_α, density
                  of p_θ ∝ exp f_θ (normalised numerically on the grid), samples of q_α, samples of
                  π = K_θ q_α; the title names the model's iteration and the final model's metric;
  samples.npz     arrays `flow` and `coopflow` ([Eval.num_samples, 2] each) of the reported model,
                  `heldout`, and `iter` (the reported model's iteration);
  metrics.json    Toy.metric of the reported model and of the final one against held-out data (+ the
                  history when Toy.eval_every > 0, and a data-vs-data reference), also printed and logged;
  flow.pdparams, ebm.pdparams              the reported model's weights;
  flow_final.pdparams, ebm_final.pdparams  the weights at the last iteration trained;
  config.yaml, train.log, stats.jsonl.

The reported model is the best of the evaluations (every Toy.eval_every iterations and at the end),
ranked by the metric of π: a run that degrades late still reports its best state. A kept model is
drawn again after training like the final one and reported only if that draw also beats the final. The health check
(paddle_coopflow/training/health.py, section Health) watches every iteration for a finite blow-up; on
one, training stops, the outputs above are written for the best model evaluated before it, and the
tool exits with status 2 and one line naming the iteration and the quantity.

K_θ at evaluation is the *training* transition (Langevin.step_size, with the training noise), so
the π samples are draws from the distribution the flow was fitted to. Langevin.test_step_size is
not used here.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time

import _bootstrap  # noqa: F401  (repo root on sys.path)

import paddle_coopflow  # noqa: F401  (quietens paddle before it is imported)
from paddle_coopflow.cli import add_config_args, run_cli
from paddle_coopflow.config import Config, load_config
from paddle_coopflow.errors import UserError

import numpy as np


def check_config(cfg: Config) -> None:
    """Reject settings this tool does not implement (one-line UserError)."""
    if cfg.Flow.arch != "flow2d" or cfg.EBM.arch != "mlp" or cfg.EBM.in_dim != 2:
        raise UserError("tools/toy2d.py needs Flow.arch=flow2d, EBM.arch=mlp and EBM.in_dim=2")
    if cfg.Data.name not in ("spiral", "moons", "rings", "checkerboard", "file"):
        raise UserError(f"Data.name={cfg.Data.name!r} is not a 2-D set; use spiral|moons|rings|checkerboard|file")
    if cfg.Train.mode != "coopflow" or cfg.Train.pretrain_epochs or cfg.Train.frozen_flow_epochs:
        raise UserError("tools/toy2d.py supports Train.mode=coopflow with pretrain_epochs=0 and frozen_flow_epochs=0")


def load_data(cfg: Config):
    """(training points [N, 2], held-out points [M, 2]); bad data is a one-line UserError before any file is written."""
    from paddle_coopflow.data import DatasetError
    from paddle_coopflow.data.toy2d import toy_train_heldout

    try:
        return toy_train_heldout(cfg.Data.name, cfg.Data.root, cfg.Data.num_points, cfg.Data.noise,
                                 cfg.Toy.heldout_points, cfg.Global.seed)
    except DatasetError as err:
        raise UserError(str(err)) from None


def prepare_run_dir(cfg: Config) -> str:
    out = os.path.abspath(cfg.Global.output_dir)
    if os.path.isdir(out) and os.listdir(out) and not cfg.Global.overwrite:
        raise UserError(f"output dir {out} exists and is not empty; pass -o Global.overwrite=true or "
                        f"choose another -o Global.output_dir=...")
    os.makedirs(out, exist_ok=True)
    for name in ("train.log", "stats.jsonl"):  # a fresh log when overwriting
        if os.path.exists(os.path.join(out, name)):
            os.remove(os.path.join(out, name))
    return out


def schedule(cfg: Config, n_train: int):
    """(batch size, iterations per epoch, total iterations): Train.max_iters, else coop_epochs epochs."""
    b = min(cfg.Train.batch_size, n_train)
    per_epoch = n_train // b
    return b, per_epoch, cfg.Train.max_iters or cfg.Train.coop_epochs * per_epoch


def build_coopflow(cfg: Config, n_train: int):
    """Flow2D + MLP EBM + their Adam bundles + the Algorithm-1 stepper, from the config."""
    from paddle_coopflow.builder import build_ebm, build_flow
    from paddle_coopflow.coopflow import CoopFlow, CoopFlowOptions
    from paddle_coopflow.optim import build_optimizers

    flow, ebm = build_flow(cfg.Flow), build_ebm(cfg.EBM)
    fopt, eopt = build_optimizers(cfg, flow, ebm, batch_size=schedule(cfg, n_train)[0])
    # The 2-D MLP energy always takes the dygraph Langevin step: the static oneDNN step is built for
    # image EBMs, and with the MLP EBM it crashed Paddle 3.3.1 (matmul_grad).
    opts = dataclasses.replace(CoopFlowOptions.from_config(cfg), engine="dygraph")
    return CoopFlow(flow, ebm, fopt, eopt, opts)


def draw_samples(coop, n: int, batch: int, epoch: float):
    """(flow samples x̂ ~ q_α, CoopFlow samples x̃ ~ π = K_θ q_α), float64 [n, 2] each.

    Nets in eval mode; K_θ = the training transition (training step size *and* the training noise
    of this epoch), so π is the distribution the flow was fitted to.
    """
    from paddle_coopflow.langevin import noise_std_for
    from paddle_coopflow.sampling import sample

    o = coop.opts
    std = noise_std_for(o.noise_mode, epoch, o.noise_decay_K, o.noise_std)
    xs, ys = [], []
    for i in range(0, n, batch):
        x, y = sample(coop.flow, coop.ebm, min(batch, n - i), n_steps=o.n_steps, step_size=o.step_size,
                      delta_clip=o.delta_clip, image_clip=o.image_clip, noise_std=std,
                      langevin_step=coop.langevin_step)
        xs.append(x.numpy())
        ys.append(y.numpy())
    return np.concatenate(xs).astype(np.float64), np.concatenate(ys).astype(np.float64)


def evaluate(coop, heldout: np.ndarray, cfg: Config, epoch: float, n: int, seed: int):
    """Toy.metric of flow and CoopFlow samples (n each) against the held-out points."""
    from paddle_coopflow.metrics.sample_distance import sample_distance

    xf, xc = draw_samples(coop, n, cfg.Eval.sample_batch_size, epoch)
    kw = dict(bandwidths=cfg.Toy.mmd_bandwidths, max_points=cfg.Toy.metric_points, seed=seed)
    res = {"flow": sample_distance(cfg.Toy.metric, xf, heldout, **kw),
           "coopflow": sample_distance(cfg.Toy.metric, xc, heldout, **kw)}
    return res, xf, xc


def density_grids(coop, cfg: Config):
    """q_α = exp(−nll) and p_θ = exp f / Z (Z by the grid's Riemann sum) on a G×G grid. [G, G] each."""
    import paddle

    r, g = cfg.Toy.plot_range, cfg.Toy.grid_resolution
    centers = (np.arange(g) + 0.5) / g * 2 * r - r
    xx, yy = np.meshgrid(centers, centers)  # row index = y, so imshow(origin='lower') is upright
    from paddle_coopflow.sampling import nets_in_mode

    pts = paddle.to_tensor(np.stack([xx.ravel(), yy.ravel()], 1).astype(np.float32))
    with nets_in_mode((coop.flow, coop.ebm), training=False), paddle.no_grad():
        q = np.exp(-coop.flow.nll(pts).numpy().astype(np.float64))
        f = coop.ebm(pts).numpy().astype(np.float64)
    cell = (2 * r / g) ** 2
    p = np.exp(f - f.max())
    p /= p.sum() * cell
    return q.reshape(g, g), p.reshape(g, g), float(q.sum() * cell)


def plot_figure(path: str, heldout, q, p, xf, xc, cfg: Config, metrics: dict) -> None:
    """The Figure-2 style panel row of the reported model, saved as PNG (matplotlib, Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    r = cfg.Toy.plot_range
    ext = (-r, r, -r, r)
    name = cfg.Toy.metric.upper()
    fig, axes = plt.subplots(1, 5, figsize=(20, 4.6))
    panels = [("ground truth (held-out)", heldout, None), ("density of q_α", None, q),
              ("density of p_θ ∝ exp f_θ", None, p),
              (f"samples of q_α  ({name} {metrics['flow']:.4g})", xf, None),
              (f"samples of π = K_θ q_α  ({name} {metrics['coopflow']:.4g})", xc, None)]
    for ax, (title, pts, dens) in zip(axes, panels):
        if dens is not None:
            ax.imshow(dens, origin="lower", extent=ext, cmap="viridis", interpolation="nearest")
        else:
            ax.scatter(pts[:, 0], pts[:, 1], s=0.6, alpha=0.5, color="tab:blue", linewidths=0)
        ax.set_xlim(-r, r)
        ax.set_ylim(-r, r)
        ax.set_aspect("equal")
        ax.set_title(title, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    fin = metrics["final"]
    fig.suptitle(f"CoopFlow 2-D ({cfg.Data.name}), T = {cfg.Langevin.n_steps}, s = {cfg.Langevin.step_size}: "
                 f"best model, iteration {metrics['iter']}   (final model, iteration {fin['iter']}: {name} q_α "
                 f"{fin['flow']:.4g}, π {fin['coopflow']:.4g})")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _log_stats(it: int, iters: int, epoch: int, epochs: int, st: dict, t_iter: float, eta: float) -> str:
    from paddle_coopflow.logger import format_eta

    keys = ("ebm_loss", "ebm_energy_l2", "f_data", "f_revised", "f_proposal", "flow_nll", "langevin_mse",
            "noise_std", "lr_ebm", "lr_flow")
    body = " ".join(f"{k} {st[k]:.4g}" for k in keys if k in st)
    return f"[toy] epoch {epoch + 1}/{epochs} iter {it}/{iters} {body} batch_cost {t_iter:.3f}s eta {format_eta(eta)}"


def snapshot(coop) -> dict:
    """Copies of both nets' weights (NumPy), to restore the best model after training."""
    return {name: {k: v.numpy().copy() for k, v in net.state_dict().items()}
            for name, net in (("flow", coop.flow), ("ebm", coop.ebm))}


def restore(coop, snap: dict) -> None:
    import paddle

    for name, net in (("flow", coop.flow), ("ebm", coop.ebm)):
        net.set_state_dict({k: paddle.to_tensor(v) for k, v in snap[name].items()})


def train(cfg: Config, out: str, logger, data) -> dict:
    """Train, evaluate, plot, save. Returns the metrics dict written to metrics.json.

    Raises:
        UserError: the health check found a finite blow-up (outputs of the best model are written first).
    """
    train_pts, heldout = data
    coop = build_coopflow(cfg, len(train_pts))
    t0 = time.time()
    run = train_loop(coop, train_pts, heldout, cfg, logger)
    train_time = time.time() - t0
    res = finish(coop, train_pts, heldout, cfg, out, run)
    res.update(train_seconds=train_time, total_seconds=time.time() - t0)
    with open(os.path.join(out, "metrics.json"), "w") as fh:
        json.dump(res, fh, indent=1)
    logger.record(res["iter"], {"eval/flow": res["flow"], "eval/coopflow": res["coopflow"]})
    sw, fin = res["all_metrics"]["swd"], res["final"]
    logger.info(f"[final] {res['metric']} vs held-out, best model (iteration {res['iter']}): flow (q_α) "
                f"{res['flow']:.5g}  coopflow (π) {res['coopflow']:.5g}  data-vs-data reference "
                f"{res['data_reference']:.5g} | swd flow {sw['flow']:.4g} coopflow {sw['coopflow']:.4g} data "
                f"{sw['data_reference']:.4g} | q_α mass on grid {res['q_mass_on_grid']:.3f} | final model "
                f"(iteration {fin['iter']}): flow {fin['flow']:.5g} coopflow {fin['coopflow']:.5g} | train "
                f"{train_time:.0f}s total {res['total_seconds']:.0f}s")
    if res["blowup"]:
        raise UserError(f"{res['blowup']}; training stopped. {out}/metrics.json reports the best model "
                        f"(iteration {res['iter']}, {res['metric']} π {res['coopflow']:.4g})")
    return res


def train_loop(coop, train_pts: np.ndarray, heldout: np.ndarray, cfg: Config, logger) -> dict:
    """Algorithm-1 iterations over shuffled minibatches, the periodic evaluations and the health check.

    Returns:
        {"history": metric history, "epoch": last epoch, "iters_run": iterations trained,
         "best": the best evaluation with its weights (or None), "blowup": the health message or None}.
    """
    import paddle

    from paddle_coopflow.training.health import HealthCheck
    from paddle_coopflow.training.outputs import TAGS

    seed, ev_every = cfg.Global.seed, cfg.Toy.eval_every
    b, per_epoch, iters = schedule(cfg, len(train_pts))
    epochs = math.ceil(iters / per_epoch)
    logger.info(f"data {cfg.Data.name}: {len(train_pts)} training / {len(heldout)} held-out points; "
                f"{iters} iterations of batch {b} ({per_epoch} per epoch); T={cfg.Langevin.n_steps} "
                f"s={cfg.Langevin.step_size} noise={cfg.Langevin.noise_mode}")
    n_ev = min(cfg.Toy.metric_points, cfg.Eval.num_samples)
    run = {"history": [], "epoch": 0, "iters_run": 0, "best": None, "blowup": None}
    health, bad_run, t0 = HealthCheck(cfg.Health), 0, time.time()
    rng = np.random.default_rng([seed, 7])
    perm, pos = rng.permutation(len(train_pts)), 0
    for it in range(0, iters):
        if ev_every and it % ev_every == 0:
            keep_if_best(run, coop, evaluate(coop, heldout, cfg, run["epoch"], n_ev, seed)[0], it, cfg, logger)
        if pos + b > len(perm):
            perm, pos = rng.permutation(len(train_pts)), 0
        x = paddle.to_tensor(train_pts[perm[pos:pos + b]])
        pos += b
        run["epoch"] = epoch = it // per_epoch
        t_it = time.time()
        st = coop.train_step(x, epoch, it % per_epoch)
        run["iters_run"] = it + 1
        bad_run = bad_run + 1 if st["nonfinite"] else 0
        if bad_run >= cfg.Global.max_consecutive_nonfinite:
            raise UserError(f"{bad_run} non-finite steps in a row at iteration {it + 1}; lower the learning "
                            f"rates or Langevin.step_size")
        run["blowup"] = health.update(it + 1, st)
        if (it + 1) % cfg.Global.log_interval == 0 or it + 1 == iters or run["blowup"]:
            eta = (time.time() - t0) / (it + 1) * (iters - it - 1)
            logger.info(_log_stats(it + 1, iters, epoch, epochs, st, time.time() - t_it, eta))
            logger.record(it + 1, {TAGS.get(k, f"train/{k}"): v for k, v in st.items() if isinstance(v, float)})
        if run["blowup"]:
            logger.info(run["blowup"])
            break
    return run


def keep_if_best(run: dict, coop, m: dict, it: int, cfg: Config, logger) -> None:
    """Log one evaluation, add it to the history, and keep the nets' weights when π's metric is the best so far."""
    run["history"].append(dict(iter=it, **m))
    logger.info(f"[eval] iter {it} {cfg.Toy.metric} flow {m['flow']:.5g} coopflow {m['coopflow']:.5g}")
    logger.record(it, {"eval/flow": m["flow"], "eval/coopflow": m["coopflow"]})
    if run["best"] is None or m["coopflow"] < run["best"]["coopflow"]:
        run["best"] = dict(iter=it, epoch=run["epoch"], **m, weights=snapshot(coop))


def finish(coop, train_pts: np.ndarray, heldout: np.ndarray, cfg: Config, out: str, run: dict) -> dict:
    """Final evaluation, then the best model's samples, metrics (both kinds), densities, figure and weights."""
    import paddle

    from paddle_coopflow.metrics.sample_distance import sample_distance

    seed, n, last = cfg.Global.seed, cfg.Eval.num_samples, run["iters_run"]
    final, xf, xc = evaluate(coop, heldout, cfg, run["epoch"], n, seed)
    if cfg.Toy.eval_every:
        run["history"].append(dict(iter=last, **final))
    paddle.save(coop.flow.state_dict(), os.path.join(out, "flow_final.pdparams"))
    paddle.save(coop.ebm.state_dict(), os.path.join(out, "ebm_final.pdparams"))
    best, rep = run["best"], dict(iter=last, **final)
    if best is not None and best["coopflow"] < final["coopflow"]:
        # drawn again like the final model; kept only if that draw confirms it (the metric is noisy)
        final_weights = snapshot(coop)
        restore(coop, best["weights"])
        m, bf, bc = evaluate(coop, heldout, cfg, best["epoch"], n, seed)
        if m["coopflow"] < final["coopflow"]:
            rep, xf, xc = dict(iter=best["iter"], **m), bf, bc
        else:
            restore(coop, final_weights)
    kw = dict(bandwidths=cfg.Toy.mmd_bandwidths, max_points=cfg.Toy.metric_points, seed=seed)
    both = {m: {"flow": sample_distance(m, xf, heldout, **kw), "coopflow": sample_distance(m, xc, heldout, **kw),
                "data_reference": sample_distance(m, train_pts, heldout, **kw)} for m in ("mmd", "swd")}
    q, p, q_mass = density_grids(coop, cfg)
    res = {"metric": cfg.Toy.metric, "model": "best", "iter": rep["iter"], "flow": rep["flow"],
           "coopflow": rep["coopflow"], "final": dict(iter=last, **final),
           "data_reference": both[cfg.Toy.metric]["data_reference"], "iterations": schedule(cfg, len(train_pts))[2],
           "iterations_run": last, "blowup": run["blowup"], "n_steps": cfg.Langevin.n_steps, "num_samples": n,
           "metric_points": cfg.Toy.metric_points, "all_metrics": both, "q_mass_on_grid": q_mass,
           "history": run["history"]}
    plot_figure(os.path.join(out, "figure.png"), heldout, q, p, xf, xc, cfg, res)
    np.savez(os.path.join(out, "samples.npz"), flow=xf.astype(np.float32), coopflow=xc.astype(np.float32),
             heldout=heldout, iter=np.int64(rep["iter"]))
    paddle.save(coop.flow.state_dict(), os.path.join(out, "flow.pdparams"))
    paddle.save(coop.ebm.state_dict(), os.path.join(out, "ebm.pdparams"))
    return res


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_config_args(parser)
    parser.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    args = parser.parse_args(argv)
    cfg = load_config(args.config, args.override)
    check_config(cfg)
    if args.dry_run:
        print(cfg.dump())
        return 0
    from paddle_coopflow.logger import RunLogger
    from paddle_coopflow.utils.env import resolve_device, seed_everything, setup_threads

    data = load_data(cfg)
    out = prepare_run_dir(cfg)
    threads = setup_threads(cfg.Global.threads)
    device = resolve_device(cfg.Global.device)
    seed_everything(cfg.Global.seed)
    with open(os.path.join(out, "config.yaml"), "w") as fh:
        fh.write(cfg.dump())
    logger = RunLogger(out, use_visualdl=cfg.Global.use_visualdl)
    try:
        logger.info(f"toy2d: config {args.config} -> {out} (device {device}, {threads} threads, "
                    f"load average {os.getloadavg()[0]:.2f})")
        if cfg.Langevin.engine == "static":
            logger.info(f"Langevin.engine={cfg.Langevin.engine} ignored: the 2-D tool uses the dygraph step "
                        f"(the static step crashes with the MLP EBM)")
        train(cfg, out, logger, data)
    finally:
        logger.close()
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
