"""Evaluation: generation, FID during training, and the paper's test-time tasks.

    iter_samples / generate_samples   SPEC §4.7   flow proposal x̂ = g(z), then T Langevin steps (test step size)
    in_training_fid                   SPEC §4.6   FID every k epochs, [P] Figure 12 (Trainer.evaluate_fid)
    mse_per_pixel                     SPEC §6     the "MSE per pixel" of [P] Table 7
    reconstruct                       [P] §5.3, A.8, Table 7, Figure 13   (SPEC §6, test_recons)
    inpaint                           [P] §5.3, Figures 5 and 11           (SPEC §6, test_impaint)
    interpolate                       [P] §5.3, Figure 6                   (SPEC §6, test_interp)

Reconstruction, inpainting and interpolation share one inner operation (SPEC §3.3, §6): the
*differentiable* Langevin flow F(x̂) — T steps of x ← x + ½s²∇ₓΣf(x) with no δ clip, no image clip and
no noise — and plain gradient descent on x̂ through it: x̂ ← clip(x̂ − η·ratioʲ·∇_x̂ L, −1, 1). The flow
is never updated. All images are [N, C, H, W] in [−1, 1]; numpy arrays come back as float32.
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from typing import Callable, Dict, Iterator, Optional, Tuple

import numpy as np

from .errors import UserError
from .langevin import langevin_flow

__all__ = ["load_for_eval", "load_eval_images", "iter_samples", "generate_samples", "check_fid_setup",
           "reference_stats", "in_training_fid", "mse_per_pixel", "recon_loss", "reconstruct", "default_mask",
           "inpaint", "infer_latent", "interpolate_latents", "interpolate", "to_uint8_images"]


# ------------------------------------------------------------------------------------ set-up
def load_for_eval(config: Optional[str], overrides, prefix: str):
    """(cfg, flow or None, ebm or None) for a tool: config from -c, else the one stored in the checkpoint.

    Also sets the device, the CPU threads (Global.threads), the fast-Langevin mode (Langevin.fast) and the
    seeds (Global.seed).
    """
    from .builder import load_trained
    from .checkpoint import load_checkpoint
    from .config import load_config
    from .utils.env import resolve_device, seed_everything, setup_threads

    if config:
        cfg = load_config(config, overrides)
    else:  # the resolved config the trainer stored in <prefix>.pdstates
        import yaml

        states = load_checkpoint(prefix, need=(".pdstates",))["states"]
        if "config" not in states:
            raise UserError(f"{prefix}.pdstates holds no config; pass the training config with -c")
        with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as fh:
            yaml.safe_dump(states["config"], fh)
        try:
            cfg = load_config(fh.name, overrides)
        finally:
            os.remove(fh.name)
    device = resolve_device(cfg.Global.device)
    if device == "cpu":
        setup_threads(cfg.Global.threads)
    from . import langevin_fast

    langevin_fast.set_mode(langevin_fast.mode_for_engine(cfg.Langevin.engine))  # static-graph Langevin step where faster (as the Trainer)
    seed_everything(cfg.Global.seed)
    flow, ebm = load_trained(cfg, prefix)
    return cfg, flow, ebm


def load_eval_images(cfg, split: str, start: int = 0, num: int = 1) -> np.ndarray:
    """Images start..start+num−1 of the Data split, in dataset order and never flipped.

    Returns float32 [num, C, H, W] in [−1, 1].
    """
    from .data import DatasetError, build_dataset

    try:
        ds = build_dataset(cfg.Data, split)
    except DatasetError as err:
        raise UserError(str(err)) from None
    if start < 0 or num < 1 or start + num > len(ds):
        raise UserError(f"images {start}..{start + num - 1} requested but {cfg.Data.name} split '{split}' has "
                        f"{len(ds)}; lower --num / --start")
    return np.stack([ds[i][0] for i in range(start, start + num)]).astype(np.float32)


@contextlib.contextmanager
def _eval_mode(*nets):
    """Put the nets in eval mode (no dropout) and restore their modes afterwards."""
    nets = [n for n in nets if n is not None]
    was = [n.training for n in nets]
    for n in nets:
        n.eval()
    try:
        yield
    finally:
        for n, t in zip(nets, was):
            n.train(t)


def _image_shape(flow, ebm, cfg) -> Tuple[int, int, int]:
    if flow is not None:
        return tuple(flow.z_shape)
    return (cfg.EBM.in_channels, cfg.EBM.img_size, cfg.EBM.img_size)


def to_uint8_images(x: np.ndarray) -> np.ndarray:
    """[N, C, H, W] in [−1, 1] → uint8 [N, H, W, C], the reference PNG rounding (x+1)/2·255 + 0.5, clipped."""
    u8 = np.clip((np.asarray(x, np.float32) + 1.0) / 2.0 * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return u8.transpose(0, 2, 3, 1)


# ------------------------------------------------------------------------------------ generation
def iter_samples(flow, ebm, cfg, n: int, batch_size: int = 100, seed: int = 0, progress: bool = False,
                 step_size: Optional[float] = None, n_steps: Optional[int] = None
                 ) -> Iterator[Tuple[np.ndarray, np.ndarray]]:
    """Yield (flow proposals, CoopFlow samples) batches, float32 [B, C, H, W] in [−1, 1] (SPEC §4.7).

    x̂ = g(z) with z ~ N(0, I) (flow in eval mode), then x̃ = T Langevin steps of eq. (3) with the *test*
    step size, the configured δ and image clips and no noise — what CoopFlow.sample computes. z comes from
    np.random.RandomState(seed) in order, so the n images do not depend on batch_size.
    Baselines: no flow (Train.mode=langevin_only) → x̂ ~ U(−1, 1); no EBM (flow_only) → x̃ = x̂.
    """
    import paddle

    lg = cfg.Langevin
    s = lg.test_step_size if step_size is None else float(step_size)
    T = lg.n_steps if n_steps is None else int(n_steps)
    clip = tuple(lg.image_clip) if lg.image_clip else None
    shape = _image_shape(flow, ebm, cfg)
    rs = np.random.RandomState(seed)
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=n, unit="img", desc="sampling")
    done = 0
    while done < n:
        b = min(batch_size, n - done)
        with _eval_mode(flow, ebm), paddle.no_grad():
            if flow is not None:
                x = flow.inverse(paddle.to_tensor(rs.randn(b, *shape).astype("float32")))
            else:
                x = paddle.to_tensor(rs.uniform(-1.0, 1.0, (b,) + shape).astype("float32"))
            y = langevin_flow(ebm, x, T, s, lg.delta_clip, clip) if ebm is not None else x
        done += b
        if bar is not None:
            bar.update(b)
        yield x.numpy().astype(np.float32), y.numpy().astype(np.float32)
    if bar is not None:
        bar.close()


def generate_samples(flow, ebm, cfg, n: int, batch_size: int = 100, seed: int = 0, progress: bool = False,
                     step_size: Optional[float] = None, n_steps: Optional[int] = None
                     ) -> Tuple[np.ndarray, np.ndarray]:
    """(flow proposals, CoopFlow samples), each float32 [n, C, H, W] in [−1, 1]; see :func:`iter_samples`."""
    shape = (n,) + _image_shape(flow, ebm, cfg)
    flow_np, coop_np = np.empty(shape, np.float32), np.empty(shape, np.float32)
    i = 0
    for x, y in iter_samples(flow, ebm, cfg, n, batch_size, seed, progress, step_size, n_steps):
        flow_np[i:i + len(x)], coop_np[i:i + len(y)] = x, y
        i += len(x)
    return flow_np, coop_np


# ------------------------------------------------------------------------------------ FID
_EVALUATORS: Dict[Tuple[str, int], object] = {}
FID_SEED_OFFSET = 7919  # in-training FID samples use seed Global.seed + this, every epoch


def _evaluator(weights: str, batch_size: int):
    """One FIDEvaluator per (weights, batch) per process: building Inception-v3 takes seconds."""
    from .metrics.fid import FIDEvaluator

    key = (os.path.abspath(weights) if weights else "", int(batch_size))
    if key not in _EVALUATORS:
        _EVALUATORS[key] = FIDEvaluator(weights or None, batch_size)  # no weights → one-line UserError
    return _EVALUATORS[key]


def check_fid_setup(cfg) -> None:
    """Fail fast with a one-line UserError when in-training FID is on but could not run (call before training)."""
    from .metrics.inception import weights_missing_message

    e = cfg.Eval
    if not e.fid_every_epochs:
        return
    if not e.inception_weights or not os.path.isfile(e.inception_weights):
        raise UserError(weights_missing_message(f"'{e.inception_weights}' does not exist" if e.inception_weights
                                                else "Eval.fid_every_epochs > 0 but no file given"))
    if e.fid_ref_stats and not os.path.isfile(e.fid_ref_stats):
        raise UserError(f"Eval.fid_ref_stats '{e.fid_ref_stats}' does not exist; make it with tools/eval.py "
                        "data:train --save-stats PATH -c CONFIG, or leave it empty to compute it from Data")


def reference_stats(cfg, evaluator, cache_dir: Optional[str] = None, progress: bool = False
                    ) -> Tuple[np.ndarray, np.ndarray]:
    """(mu, sigma) of the FID reference set: Eval.fid_ref_stats, else the first Eval.fid_ref_num images
    of the Data split, unflipped ([T] uses the training split, SPEC §4.6), cached as
    <cache_dir>/fid_ref_stats.npz together with what they were computed from.
    """
    from .data import DatasetError, load_images
    from .metrics.fid import load_stats

    e, d = cfg.Eval, cfg.Data
    if e.fid_ref_stats:
        return load_stats(e.fid_ref_stats)
    meta = json.dumps({"data": d.name, "root": d.root, "split": d.split, "size": d.image_size,
                       "channels": d.channels, "num": e.fid_ref_num,
                       "weights": os.path.abspath(e.inception_weights) if e.inception_weights else ""})
    path = os.path.join(cache_dir, "fid_ref_stats.npz") if cache_dir else None
    if path and os.path.isfile(path):
        with np.load(path) as f:
            if "meta" in f and str(f["meta"]) == meta:
                return f["mu"].astype(np.float64), f["sigma"].astype(np.float64)
    try:
        images = load_images(d, d.split, n=e.fid_ref_num)  # uint8 [N, H, W, C]
    except DatasetError as err:
        raise UserError(f"FID reference set: {err}") from None
    was = evaluator.progress
    evaluator.progress = progress
    try:
        mu, sigma = evaluator.stats(images)
    finally:
        evaluator.progress = was
    if path:
        os.makedirs(cache_dir, exist_ok=True)
        tmp = path + f".tmp{os.getpid()}.npz"
        np.savez(tmp, mu=mu, sigma=sigma, meta=np.array(meta))
        os.replace(tmp, path)
    return mu, sigma


def in_training_fid(trainer) -> float:
    """FID of Eval.fid_num_samples CoopFlow samples against the reference set (SPEC §4.6, [P] Fig. 12).

    Uses trainer.flow / trainer.ebm / trainer.cfg / trainer.run_dir. Samples are drawn exactly as
    CoopFlow.sample draws them (eval mode, test step size, no noise) from a fixed seed, so the curve over
    epochs compares like with like; Trainer.evaluate_fid restores the RNG afterwards.
    Raises UserError (one line) when Eval.inception_weights is not set or unusable.
    """
    from .metrics.fid import frechet_distance

    cfg = trainer.cfg
    e = cfg.Eval
    ev = _evaluator(e.inception_weights, e.fid_batch_size)
    mu_r, s_r = reference_stats(cfg, ev, trainer.run_dir)
    batches = (coop for _, coop in iter_samples(trainer.flow, trainer.ebm, cfg, e.fid_num_samples,
                                                e.sample_batch_size, seed=cfg.Global.seed + FID_SEED_OFFSET))
    mu_g, s_g = ev.stats(batches)
    return frechet_distance(mu_g, s_g, mu_r, s_r)


# ------------------------------------------------------------------------------------ metric
def mse_per_pixel(x, y, region: Optional[np.ndarray] = None) -> np.ndarray:
    """The paper's reconstruction error per image (SPEC §6, [P] Table 7): [N].

    e_i = Σ_{c, (h,w) ∈ region} (x − y)² / |region|, in [−1, 1] units, *summed* over channels and divided
    by the number of pixels only (region None = all H·W pixels). The paper reports the mean over images.

    Args:
        x, y: [N, C, H, W] arrays (or tensors).
        region: optional bool [H, W] pixel set (e.g. observed / masked pixels for inpainting).
    """
    a = np.asarray(getattr(x, "numpy", lambda: x)(), np.float64)
    b = np.asarray(getattr(y, "numpy", lambda: y)(), np.float64)
    sq = ((a - b) ** 2).sum(axis=1)  # [N, H, W], summed over channels
    if region is None:
        return sq.reshape(len(sq), -1).mean(axis=1)
    region = np.asarray(region, bool)
    if not region.any():
        return np.full(len(sq), np.nan)
    return sq[:, region].mean(axis=1)


# ------------------------------------------------------------------------------------ reconstruction
def recon_loss(ebm, x_hat, target, n_steps: int, step_size: float, mask=None):
    """L = Σ M ⊙ (x − F(x̂))² with F the differentiable Langevin flow (SPEC §3.3, §6).

    Args:
        ebm: f_θ. x_hat: [N, C, H, W] leaf with stop_gradient=False. target: x, same shape.
        mask: optional [1 or N, C or 1, H, W] of 0/1 (1 = observed); None = all pixels.
    Returns:
        (L scalar tensor, F(x̂) [N, C, H, W] in the graph).
    """
    xk = langevin_flow(ebm, x_hat, n_steps, step_size, delta_clip=None, image_clip=None, differentiable=True)
    sq = (target - xk) ** 2
    return (sq if mask is None else sq * mask).sum(), xk


def _descend(ebm, x_hat, target, steps: int, lr: float, decay: float, n_steps: int, step_size: float,
             mask=None, on_step: Optional[Callable] = None, progress: bool = False):
    """x̂ ← clip(x̂ − lr·decayʲ·∇L, −1, 1) for j < steps, then one more Langevin pass. Returns (x̂*, F(x̂*))."""
    import paddle

    from tqdm import tqdm

    x = x_hat.detach()
    for j in tqdm(range(steps), unit="step", desc="gradient steps", leave=False, disable=not progress):
        x.stop_gradient = False
        loss, xk = recon_loss(ebm, x, target, n_steps, step_size, mask)
        g = paddle.grad([loss], [x])[0]
        if on_step is not None:
            on_step(j, xk.detach())
        x = paddle.clip(x.detach() - lr * decay ** j * g.detach(), -1.0, 1.0)
    with paddle.no_grad():
        xk = langevin_flow(ebm, x, n_steps, step_size, delta_clip=None, image_clip=None)
    if on_step is not None:
        on_step(steps, xk)
    return x.detach(), xk


def _init_x_hat(flow, n: int, shape, init: str, rs: np.random.RandomState):
    """x̂₀: flow proposal 2σ(g(z)) − 1 with z ~ N(0, I) (SPEC §6), or U(−1, 1) / zeros (short-run EBM)."""
    import paddle

    if init == "flow":
        if flow is None:
            raise UserError("init 'flow' needs a checkpoint with a flow; use --init uniform or zeros")
        with _eval_mode(flow):
            return flow.inverse(paddle.to_tensor(rs.randn(n, *shape).astype("float32"))).detach()
    if init == "uniform":
        return paddle.to_tensor(rs.uniform(-1.0, 1.0, (n,) + tuple(shape)).astype("float32"))
    if init == "zeros":
        return paddle.zeros([n] + list(shape), "float32")
    raise UserError(f"unknown init {init!r}; use flow, uniform or zeros")


def reconstruct(flow, ebm, x: np.ndarray, steps: int = 200, lr: float = 0.05, decay: float = 1.0,
                n_steps: int = 30, step_size: float = 0.03, init: str = "flow", seed: int = 0,
                progress: bool = False) -> Dict:
    """Reconstruction by gradient descent on the initial state x̂ ([P] §5.3, A.8, Table 7).

    min_x̂ ‖x − F(x̂)‖² through the differentiable Langevin flow (T = n_steps, s = step_size, no clips,
    no noise); x̂ starts at a flow proposal (init 'flow'; the Langevin-flow-alone baseline of Table 7 uses
    'uniform' with T = 100). [T] test_recons: 200 steps, lr 0.05, no decay.

    Args:
        x: [N, C, H, W] targets in [−1, 1].
    Returns:
        dict: x_hat = x̂* and x_rec = F(x̂*) (float32 [N, C, H, W]); curve = mean MSE per pixel after
        j = 0..steps updates ([steps + 1], Figure 13); errors = final per-image MSE per pixel [N].
    """
    import paddle

    target = paddle.to_tensor(np.asarray(x, np.float32))
    x0 = _init_x_hat(flow, len(x), tuple(x.shape[1:]), init, np.random.RandomState(seed))
    curve = []
    with _eval_mode(flow, ebm):
        x_hat, xk = _descend(ebm, x0, target, steps, lr, decay, n_steps, step_size,
                             on_step=lambda j, xk: curve.append(float(mse_per_pixel(xk, x).mean())),
                             progress=progress)
    xk = xk.numpy()
    return {"x_hat": x_hat.numpy(), "x_rec": xk, "curve": np.array(curve), "errors": mse_per_pixel(xk, x)}


# ------------------------------------------------------------------------------------ inpainting
def default_mask(h: int, w: int, rect: Optional[Tuple[int, int, int, int]] = None) -> np.ndarray:
    """Observed-pixel mask [H, W] float32 (1 observed, 0 missing).

    rect = (top, left, height, width) of the missing rectangle. Default: [T]'s square rows/cols 7..22 of a
    32×32 image (16×16, SPEC §6), scaled to H×W.
    """
    if rect is None:
        rect = (7 * h // 32, 7 * w // 32, h // 2, w // 2)
    top, left, rh, rw = (int(v) for v in rect)
    if rh < 1 or rw < 1 or top < 0 or left < 0 or top + rh > h or left + rw > w:
        raise UserError(f"mask rectangle top={top} left={left} height={rh} width={rw} does not fit a "
                        f"{h}x{w} image")
    m = np.ones((h, w), np.float32)
    m[top:top + rh, left:left + rw] = 0.0
    return m


def inpaint(flow, ebm, x: np.ndarray, mask: np.ndarray, n_init: int = 20, steps: int = 201, lr: float = 0.03,
            decay: float = 0.99, n_steps: int = 30, step_size: float = 0.03, seed: int = 30,
            snapshot: Callable[[int], bool] = lambda j: j < 10 or j % 20 == 0, progress: bool = False) -> Dict:
    """Inpainting ([P] §5.3, Figures 5 and 11; [T] test_impaint): reconstruction with the loss on observed
    pixels only, L = Σ M ⊙ (x − F(x̂))², from n_init flow proposals per image (201 steps, lr 0.03, ×0.99).

    Args:
        x: [N, C, H, W] originals in [−1, 1]. mask: [H, W] 1 = observed, 0 = missing.
        snapshot: steps j whose F(x̂) is kept (j = steps is the final pass).
    Returns:
        dict (arrays float32, chains ordered image-major: row i·n_init + k is image i, init k):
        snapshots {j: F(x̂) [N·n_init, C, H, W]}, final = F(x̂*), pasted = final with the observed pixels
        of x pasted in ([T]'s last step), x_masked = x·M, err_observed / err_masked = MSE per pixel of
        `final` vs x on the observed / missing pixels [N·n_init].
    """
    import paddle

    xr = np.repeat(np.asarray(x, np.float32), n_init, axis=0)
    m = paddle.to_tensor(np.asarray(mask, np.float32)[None, None])
    x0 = _init_x_hat(flow, len(xr), tuple(x.shape[1:]), "flow", np.random.RandomState(seed))
    snaps: Dict[int, np.ndarray] = {}

    def keep(j, xk):
        if snapshot(j) or j == steps:
            snaps[j] = xk.numpy()

    with _eval_mode(flow, ebm):
        _, xk = _descend(ebm, x0, paddle.to_tensor(xr * mask), steps, lr, decay, n_steps, step_size, m, keep,
                         progress)
    final = xk.numpy()
    obs = np.asarray(mask) > 0.5
    return {"snapshots": snaps, "final": final, "pasted": np.where(obs, xr, final),
            "x_masked": np.asarray(x, np.float32) * mask,
            "err_observed": mse_per_pixel(final, xr, obs), "err_masked": mse_per_pixel(final, xr, ~obs)}


# ------------------------------------------------------------------------------------ interpolation
def infer_latent(flow, x, deterministic: bool = False, seed: int = 0):
    """z = g⁻¹(x) by the flow's forward (density) pass ([P] §5.3). x: [N, C, H, W] → z [N, C, H, W] tensor.

    [T] dequantizes with fresh random noise (SPEC §6, §8.3.7); deterministic=True fixes it at its centre:
    ε = 0 for the variational dequantization flow, u = ½ for uniform dequantization.
    """
    import paddle

    xt = paddle.to_tensor(np.asarray(x, np.float32))
    rs = np.random.RandomState(seed)
    uniform = getattr(flow, "dequant_flows", None) is None
    if deterministic:
        noise = np.full(xt.shape, 0.5 if uniform else 0.0, np.float32)
    else:
        noise = (rs.uniform(size=xt.shape) if uniform else rs.randn(*xt.shape)).astype(np.float32)
    with _eval_mode(flow), paddle.no_grad():
        z, _ = flow(xt, noise=paddle.to_tensor(noise))
    return z


def interpolate_latents(flow, ebm, z0, z1, n_points: int = 21, n_steps: int = 30, step_size: float = 0.03
                        ) -> Tuple[np.ndarray, np.ndarray]:
    """z_t = z0 + t/(P−1)·(z1 − z0), t = 0..P−1, decoded by the flow and revised by the Langevin flow.

    Args:
        z0, z1: [N, C, H, W] latents (tensors or arrays).
    Returns:
        (decoded g(z_t), revised F(g(z_t))), each float32 [N, P, C, H, W]; Langevin as in reconstruction
        (SPEC §3.3: no clips, no noise).
    """
    import paddle

    a, b = np.asarray(getattr(z0, "numpy", lambda: z0)()), np.asarray(getattr(z1, "numpy", lambda: z1)())
    ts = np.linspace(0.0, 1.0, n_points, dtype=np.float32)
    zs = a[:, None] + ts[None, :, None, None, None] * (b - a)[:, None]  # [N, P, C, H, W]
    flat = paddle.to_tensor(zs.reshape((-1,) + a.shape[1:]).astype(np.float32))
    with _eval_mode(flow, ebm):
        dec = flow.inverse(flat)
        rev = langevin_flow(ebm, dec, n_steps, step_size, None, None) if ebm is not None else dec
    return dec.numpy().reshape(zs.shape), rev.numpy().reshape(zs.shape)


def interpolate(flow, ebm, x_a: np.ndarray, x_b: np.ndarray, n_points: int = 21, steps: int = 201,
                lr: float = 0.03, decay: float = 0.99, n_steps: int = 30, step_size: float = 0.03,
                deterministic: bool = False, seed: int = 12, progress: bool = False) -> Dict:
    """Interpolation between two images ([P] §5.3, Figure 6; [T] test_interp).

    Reconstruct both ends (x̂* by :func:`reconstruct`, 201 steps, lr 0.03, ×0.99), infer z = g⁻¹(x̂*), then
    decode and revise the 21 points of the segment z_a → z_b.

    Returns:
        dict: x_hat_a, x_hat_b [N, C, H, W]; z_a, z_b; decoded, revised [N, P, C, H, W].
    """
    both = np.concatenate([x_a, x_b]).astype(np.float32)
    rec = reconstruct(flow, ebm, both, steps, lr, decay, n_steps, step_size, "flow", seed, progress)
    z = infer_latent(flow, rec["x_hat"], deterministic, seed).numpy()
    n = len(x_a)
    dec, rev = interpolate_latents(flow, ebm, z[:n], z[n:], n_points, n_steps, step_size)
    return {"x_hat_a": rec["x_hat"][:n], "x_hat_b": rec["x_hat"][n:], "z_a": z[:n], "z_b": z[n:],
            "decoded": dec, "revised": rev}
