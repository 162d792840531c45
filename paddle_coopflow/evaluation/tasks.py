"""The paper's test-time tasks (§5.3): reconstruction, inpainting and interpolation.

    mse_per_pixel        the "MSE per pixel" of Table 7
    reconstruct          §5.3, appendix A.8, Table 7, Figure 13
    inpaint              §5.3, Figures 5 and 11
    interpolate          §5.3, Figure 6

All three share one inner operation: the *differentiable* Langevin flow F(x̂) — T steps of
x ← x + ½s²∇ₓΣf(x) (eq. 3) with no δ clip, no image clip and no noise — and plain gradient descent on
x̂ through it: x̂ ← clip(x̂ − η·ratioʲ·∇_x̂ L, −1, 1). The flow is never updated. All images are
[N, C, H, W] in [−1, 1]; numpy arrays come back as float32. The defaults (steps, learning rates, decay,
seeds) are those of the official code's test functions.
"""
from __future__ import annotations

from typing import Callable, Dict, Optional, Tuple

import numpy as np

from ..errors import UserError
from ..langevin import langevin_flow
from ..sampling import nets_in_mode

__all__ = ["mse_per_pixel", "recon_loss", "reconstruct", "default_mask", "inpaint", "infer_latent",
           "interpolate_latents", "interpolate"]


def mse_per_pixel(x, y, region: Optional[np.ndarray] = None) -> np.ndarray:
    """The paper's reconstruction error per image (Table 7): [N].

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
    """L = Σ M ⊙ (x − F(x̂))² with F the differentiable Langevin flow (§5.3).

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
    """x̂₀: the flow's proposal g(z) with z ~ N(0, I), or U(−1, 1) / zeros (the short-run EBM baseline)."""
    import paddle

    if init == "flow":
        if flow is None:
            raise UserError("init 'flow' needs a checkpoint with a flow; use --init uniform or zeros")
        with nets_in_mode((flow,), training=False):
            return flow.inverse(paddle.to_tensor(rs.randn(n, *shape).astype("float32"))).detach()
    if init == "uniform":
        return paddle.to_tensor(rs.uniform(-1.0, 1.0, (n,) + tuple(shape)).astype("float32"))
    if init == "zeros":
        return paddle.zeros([n] + list(shape), "float32")
    raise UserError(f"unknown init {init!r}; use flow, uniform or zeros")


def reconstruct(flow, ebm, x: np.ndarray, steps: int = 200, lr: float = 0.05, decay: float = 1.0,
                n_steps: int = 30, step_size: float = 0.03, init: str = "flow", seed: int = 0,
                progress: bool = False) -> Dict:
    """Reconstruction by gradient descent on the initial state x̂ (§5.3, appendix A.8, Table 7).

    min_x̂ ‖x − F(x̂)‖² through the differentiable Langevin flow (T = n_steps, s = step_size, no clips,
    no noise); x̂ starts at a flow proposal (init 'flow'; the Langevin-flow-alone baseline of Table 7 uses
    'uniform' with T = 100). The official code: 200 steps, lr 0.05, no decay.

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
    with nets_in_mode((flow, ebm), training=False):
        x_hat, xk = _descend(ebm, x0, target, steps, lr, decay, n_steps, step_size,
                             on_step=lambda j, xk: curve.append(float(mse_per_pixel(xk, x).mean())),
                             progress=progress)
    xk = xk.numpy()
    return {"x_hat": x_hat.numpy(), "x_rec": xk, "curve": np.array(curve), "errors": mse_per_pixel(xk, x)}


# ------------------------------------------------------------------------------------ inpainting
def default_mask(h: int, w: int, rect: Optional[Tuple[int, int, int, int]] = None) -> np.ndarray:
    """Observed-pixel mask [H, W] float32 (1 observed, 0 missing).

    rect = (top, left, height, width) of the missing rectangle. Default: the official code's 16×16 square,
    rows/cols 7..22 of a 32×32 image, scaled to H×W.
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
    """Inpainting (§5.3, Figures 5 and 11): reconstruction with the loss on observed pixels only,
    L = Σ M ⊙ (x − F(x̂))², from n_init flow proposals per image (official code: 201 steps, lr 0.03, ×0.99).

    Args:
        x: [N, C, H, W] originals in [−1, 1]. mask: [H, W] 1 = observed, 0 = missing.
        snapshot: steps j whose F(x̂) is kept (j = steps is the final pass).
    Returns:
        dict (arrays float32, chains ordered image-major: row i·n_init + k is image i, init k):
        snapshots {j: F(x̂) [N·n_init, C, H, W]}, final = F(x̂*), pasted = final with the observed pixels
        of x pasted in (the official code's last step), x_masked = x·M, err_observed / err_masked = MSE per pixel of
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

    with nets_in_mode((flow, ebm), training=False):
        _, xk = _descend(ebm, x0, paddle.to_tensor(xr * mask), steps, lr, decay, n_steps, step_size, m, keep,
                         progress)
    final = xk.numpy()
    obs = np.asarray(mask) > 0.5
    return {"snapshots": snaps, "final": final, "pasted": np.where(obs, xr, final),
            "x_masked": np.asarray(x, np.float32) * mask,
            "err_observed": mse_per_pixel(final, xr, obs), "err_masked": mse_per_pixel(final, xr, ~obs)}


# ------------------------------------------------------------------------------------ interpolation
def infer_latent(flow, x, deterministic: bool = False, seed: int = 0):
    """z = g⁻¹(x) by the flow's forward (density) pass (§5.3). x: [N, C, H, W] → z [N, C, H, W] tensor.

    The official code dequantizes with fresh random noise; deterministic=True fixes it at its centre:
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
    with nets_in_mode((flow,), training=False), paddle.no_grad():
        z, _ = flow(xt, noise=paddle.to_tensor(noise))
    return z


def interpolate_latents(flow, ebm, z0, z1, n_points: int = 21, n_steps: int = 30, step_size: float = 0.03
                        ) -> Tuple[np.ndarray, np.ndarray]:
    """z_t = z0 + t/(P−1)·(z1 − z0), t = 0..P−1, decoded by the flow and revised by the Langevin flow.

    Args:
        z0, z1: [N, C, H, W] latents (tensors or arrays).
    Returns:
        (decoded g(z_t), revised F(g(z_t))), each float32 [N, P, C, H, W]; Langevin as in reconstruction
        (no clips, no noise).
    """
    import paddle

    a, b = np.asarray(getattr(z0, "numpy", lambda: z0)()), np.asarray(getattr(z1, "numpy", lambda: z1)())
    ts = np.linspace(0.0, 1.0, n_points, dtype=np.float32)
    zs = a[:, None] + ts[None, :, None, None, None] * (b - a)[:, None]  # [N, P, C, H, W]
    flat = paddle.to_tensor(zs.reshape((-1,) + a.shape[1:]).astype(np.float32))
    with nets_in_mode((flow, ebm), training=False):
        dec = flow.inverse(flat)
        rev = langevin_flow(ebm, dec, n_steps, step_size, None, None) if ebm is not None else dec
    return dec.numpy().reshape(zs.shape), rev.numpy().reshape(zs.shape)


def interpolate(flow, ebm, x_a: np.ndarray, x_b: np.ndarray, n_points: int = 21, steps: int = 201,
                lr: float = 0.03, decay: float = 0.99, n_steps: int = 30, step_size: float = 0.03,
                deterministic: bool = False, seed: int = 12, progress: bool = False) -> Dict:
    """Interpolation between two images (§5.3, Figure 6).

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
