"""Generation: CoopFlow samples in batches, evaluation images, uint8 conversion.

A CoopFlow sample is the flow's proposal x̂ = g(z), z ~ N(0, I), revised by T Langevin steps of
eq. (3) with the *test* step size, the configured δ and image clips and no noise (the paper's §3.4
sampling, Table 3's step sizes), drawn by :func:`paddle_coopflow.sampling.sample` with the nets in eval
mode. All images are float32 [N, C, H, W] in [−1, 1].
"""
from __future__ import annotations

from typing import Iterator, Tuple

import numpy as np

from ..errors import UserError


def image_shape(flow, cfg) -> Tuple[int, int, int]:
    """(C, H, W) of a sample: the flow's latent shape, or the EBM's input without a flow."""
    if flow is not None:
        return tuple(flow.z_shape)
    return (cfg.EBM.in_channels, cfg.EBM.img_size, cfg.EBM.img_size)


def to_uint8_images(x: np.ndarray) -> np.ndarray:
    """[N, C, H, W] in [−1, 1] → uint8 [N, H, W, C]: (x+1)/2·255 + 0.5, clipped (PNG rounding)."""
    u8 = np.clip((np.asarray(x, np.float32) + 1.0) / 2.0 * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return u8.transpose(0, 2, 3, 1)


def load_eval_images(cfg, split: str, start: int = 0, num: int = 1) -> np.ndarray:
    """Images start..start+num−1 of the Data split, in dataset order and never flipped.

    Returns:
        float32 [num, C, H, W] in [−1, 1].
    Raises:
        UserError: the range does not fit the split (DatasetError for a missing or corrupt data set).
    """
    from ..data import build_dataset

    ds = build_dataset(cfg.Data, split)
    if start < 0 or num < 1 or start + num > len(ds):
        raise UserError(f"images {start}..{start + num - 1} requested but {cfg.Data.name} split '{split}' has "
                        f"{len(ds)}; lower --num / --start")
    return np.stack([ds[i][0] for i in range(start, start + num)]).astype(np.float32)


def langevin_step_for(ebm, cfg):
    """The Langevin step function Langevin.engine selects for `ebm` (None without an EBM)."""
    if ebm is None:
        return None
    from ..accel import make_langevin_step

    try:
        return make_langevin_step(ebm, cfg.Langevin.engine)
    except ValueError as err:  # e.g. engine 'static' for an EBM without a hand-written gradient
        raise UserError(str(err)) from None


def _batch(flow, ebm, cfg, b: int, shape, rs: np.random.RandomState, step):
    """One batch through :func:`paddle_coopflow.sampling.sample`: z (or the U(−1, 1) starts) from `rs`."""
    import paddle

    from ..sampling import sample

    lg = cfg.Langevin
    z = rs.randn(b, *shape) if flow is not None else rs.uniform(-1.0, 1.0, (b,) + tuple(shape))
    x, y = sample(flow, ebm, z=paddle.to_tensor(z.astype("float32")), n_steps=lg.n_steps,
                  step_size=lg.test_step_size, delta_clip=lg.delta_clip,
                  image_clip=tuple(lg.image_clip) if lg.image_clip else None, langevin_step=step)
    return x.numpy().astype(np.float32), y.numpy().astype(np.float32)


def iter_samples(flow, ebm, cfg, n: int, batch_size: int = 100, seed: int = 0, progress: bool = False
                 ) -> Iterator[Tuple[np.ndarray, np.ndarray]]:
    """Yield (flow proposals, CoopFlow samples) batches, float32 [B, C, H, W] in [−1, 1].

    T = Langevin.n_steps and s = Langevin.test_step_size (set them with ``-o``); the step engine is
    Langevin.engine (:func:`paddle_coopflow.accel.make_langevin_step`). z comes from
    ``np.random.RandomState(seed)`` in order, so the n images do not depend on batch_size.
    Baselines: no flow (Train.mode=langevin_only) → x̂ ~ U(−1, 1); no EBM (flow_only) → x̃ = x̂.
    """
    shape = image_shape(flow, cfg)
    rs = np.random.RandomState(seed)
    step = langevin_step_for(ebm, cfg)
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=n, unit="img", desc="sampling")
    done = 0
    while done < n:
        b = min(batch_size, n - done)
        x, y = _batch(flow, ebm, cfg, b, shape, rs, step)
        done += b
        if bar is not None:
            bar.update(b)
        yield x, y
    if bar is not None:
        bar.close()


def generate_samples(flow, ebm, cfg, n: int, batch_size: int = 100, seed: int = 0, progress: bool = False
                     ) -> Tuple[np.ndarray, np.ndarray]:
    """(flow proposals, CoopFlow samples), each float32 [n, C, H, W] in [−1, 1]; see :func:`iter_samples`."""
    shape = (n,) + image_shape(flow, cfg)
    flow_np, coop_np = np.empty(shape, np.float32), np.empty(shape, np.float32)
    i = 0
    for x, y in iter_samples(flow, ebm, cfg, n, batch_size, seed, progress):
        flow_np[i:i + len(x)], coop_np[i:i + len(y)] = x, y
        i += len(x)
    return flow_np, coop_np
