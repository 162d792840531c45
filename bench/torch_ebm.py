"""PyTorch eager twin of paddle_coopflow.models.ebm.EBMRes, for benchmarks only (never imported by the package).

Same layers, same parameter names (`f.0.weight`, `f.2.conv1.weight`, ..., `f.5.weight`) and the same
swish written as x·sigmoid(x), so :func:`copy_from_paddle` copies a Paddle model by name and the two
give the same f(x) and ∇ₓf to float rounding (checked by :func:`cross_check`).
Conv2D weights are [out, in, kh, kw] in both frameworks, so no transposes are needed.
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import numpy as np
import torch
import torch.nn as tnn
import torch.nn.functional as tF


def swish(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(x)


class Swish(tnn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return swish(x)


class EBMBlock(tnn.Module):
    """avgpool2(swish(conv2(swish(conv1 x))) + swish(res x)); [N, n_in, H, W] → [N, n_out, H/2, W/2]."""

    def __init__(self, n_in: int, n_out: int):
        super().__init__()
        self.conv1 = tnn.Conv2d(n_in, n_in, 3, 1, 1)
        self.conv2 = tnn.Conv2d(n_in, n_out, 3, 1, 1)
        self.res = tnn.Conv2d(n_in, n_out, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = swish(self.conv2(swish(self.conv1(x))))
        return tF.avg_pool2d(h + swish(self.res(x)), kernel_size=2, stride=2)


class TorchEBMRes(tnn.Module):
    """EBM_res: conv3×3 + swish → blocks C→2C→4C→8C (32 px; 16 px keeps two, 8 px one) → conv4×4 → sum.

    Call: x [N, in_channels, img_size, img_size] → f(x) [N].
    """

    def __init__(self, in_channels: int = 3, base_channels: int = 128, img_size: int = 32):
        super().__init__()
        if img_size not in (8, 16, 32):
            raise ValueError(f"TorchEBMRes img_size must be 8, 16 or 32, got {img_size}")
        c = base_channels
        n_blocks = {8: 1, 16: 2, 32: 3}[img_size]
        widths = [c, 2 * c, 4 * c, 8 * c][: n_blocks + 1]
        layers = [tnn.Conv2d(in_channels, c, 3, 1, 1), Swish()]
        layers += [EBMBlock(a, b) for a, b in zip(widths[:-1], widths[1:])]
        layers.append(tnn.Conv2d(widths[-1], 100, 4, 1, 0))
        self.f = tnn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.f(x).flatten(1).sum(1)


def copy_from_paddle(tmodel: TorchEBMRes, pmodel) -> TorchEBMRes:
    """Copy every parameter of a Paddle EBMRes into the twin by name; raises on any mismatch."""
    src: Dict[str, np.ndarray] = {k: v.numpy() for k, v in pmodel.state_dict().items()}
    dst = tmodel.state_dict()
    if set(src) != set(dst):
        raise ValueError(f"parameter names differ: only Paddle {sorted(set(src) - set(dst))}, "
                         f"only torch {sorted(set(dst) - set(src))}")
    for k, v in src.items():
        if tuple(dst[k].shape) != v.shape:
            raise ValueError(f"{k}: Paddle shape {v.shape} vs torch {tuple(dst[k].shape)}")
    tmodel.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in src.items()})
    return tmodel


def langevin_step(ebm: tnn.Module, x: torch.Tensor, step_size: float, delta_clip: Optional[float] = 0.1,
                  image_clip: Optional[Tuple[float, float]] = (-1.0, 1.0)) -> Tuple[torch.Tensor, torch.Tensor]:
    """One step of eq. (3) without noise, as the official PyTorch sampler: (x_next, f(x)) detached.

    autograd.grad with respect to x only: PyTorch then skips every weight gradient.
    """
    xg = x.detach().clone().requires_grad_(True)
    f = ebm(xg)
    (g,) = torch.autograd.grad(f.sum(), [xg])
    drift = 0.5 * step_size * step_size * g
    if delta_clip is not None:
        drift = drift.clamp(-delta_clip, delta_clip)
    x_next = xg.detach() + drift
    if image_clip is not None:
        x_next = x_next.clamp(image_clip[0], image_clip[1])
    return x_next, f.detach()


def cross_check(pmodel, tmodel: TorchEBMRes, x: np.ndarray) -> Dict[str, float]:
    """Max relative differences of f(x) and ∇ₓΣf between the Paddle model and its twin."""
    import paddle

    xp = paddle.to_tensor(x)
    xp.stop_gradient = False
    fp = pmodel(xp)
    (gp,) = paddle.grad([fp.sum()], [xp])
    xt = torch.from_numpy(x.copy()).requires_grad_(True)
    ft = tmodel(xt)
    (gt,) = torch.autograd.grad(ft.sum(), [xt])
    fp, gp, ft, gt = fp.numpy(), gp.numpy(), ft.detach().numpy(), gt.numpy()
    return {"f_rel": float(np.abs(fp - ft).max() / (np.abs(ft).max() + 1e-12)),
            "grad_rel": float(np.abs(gp - gt).max() / (np.abs(gt).max() + 1e-12))}
