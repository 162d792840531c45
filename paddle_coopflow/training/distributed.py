"""Data-parallel helpers (``python -m paddle.distributed.launch``; CPU gloo or GPU NCCL).

Every rank builds identical networks from the same seed, reads its slice of each global batch
(see ``data/sampler.py``) and keeps the same random stream: each draw of an iteration (proposals,
Langevin noise, dequantization noise) is made for the global batch and sliced (``noise.py``), and the
flow's ActNorm statistics come from the gathered global batches. The loss forward passes go through
``paddle.DataParallel`` wrappers, so the gradients are averaged over ranks before clipping and the
optimizer step: every rank applies the same update, the parameters stay identical
(:func:`check_ranks_agree` verifies it at the end), and W ranks × B images follow one process of W·B
images up to the order of floating-point sums (dropout masks excepted: they are drawn per rank).
"""
from __future__ import annotations

import hashlib
import os
from typing import Iterable, Tuple

import numpy as np

__all__ = ["dist_info", "init_parallel", "make_loss_nets", "broadcast_state", "params_digest",
           "check_ranks_agree", "shard_of", "gather_batch"]


def dist_info() -> Tuple[int, int]:
    """(rank, world_size) from the variables `paddle.distributed.launch` sets ((0, 1) otherwise)."""
    return int(os.environ.get("PADDLE_TRAINER_ID", 0)), int(os.environ.get("PADDLE_TRAINERS_NUM", 1))


def init_parallel(world_size: int) -> None:
    """Initialise the process group when more than one rank runs."""
    if world_size > 1:
        import paddle.distributed as dist

        dist.init_parallel_env()


def make_loss_nets(flow, ebm):
    """(flow NLL wrapper, EBM wrapper): ``paddle.DataParallel`` layers for the loss computations.

    Args:
        flow: the flow (``nll(x)`` → [N]) or None.
        ebm: the EBM (``ebm(x)`` → [N]) or None.

    Returns:
        (DataParallel whose forward is ``flow.nll`` or None, DataParallel(ebm) or None). Sampling keeps
        using the raw nets: it involves no parameter gradients.
    """
    import paddle
    import paddle.nn as nn

    class FlowNLL(nn.Layer):
        def __init__(self, f):
            super().__init__()
            self.f = f

        def forward(self, x, noise=None):
            return self.f.nll(x, noise)

    flow_dp = paddle.DataParallel(FlowNLL(flow)) if flow is not None else None
    ebm_dp = paddle.DataParallel(ebm) if ebm is not None else None
    return flow_dp, ebm_dp


def broadcast_state(net) -> None:
    """Every rank takes rank 0's values of all of `net`'s state (parameters and buffers)."""
    import paddle.distributed as dist

    for v in net.state_dict().values():
        dist.broadcast(v, src=0)


def params_digest(nets: Iterable) -> bytes:
    """SHA-256 of every state tensor of the nets (None entries skipped), in state_dict order."""
    h = hashlib.sha256()
    for net in nets:
        if net is not None:
            for v in net.state_dict().values():
                h.update(np.ascontiguousarray(v.numpy()).tobytes())
    return h.digest()


def check_ranks_agree(nets: Iterable, world_size: int) -> Tuple[bool, str]:
    """Compare a digest of every parameter across ranks (they must be bit-identical).

    Returns:
        (same on all ranks, a one-line message for the log).
    """
    import paddle
    import paddle.distributed as dist

    digest = paddle.to_tensor(np.frombuffer(params_digest(nets)[:8], dtype=np.int64).copy())
    gathered: list = []
    dist.all_gather(gathered, digest)
    same = all(int(g.item()) == int(digest.item()) for g in gathered)
    msg = (f"parameters identical on all {world_size} ranks" if same else
           f"WARNING: parameters differ between ranks (digests {[int(g.item()) for g in gathered]})")
    return same, msg


def shard_of(x, rank: int, world_size: int):
    """The :class:`~paddle_coopflow.noise.Shard` of this rank's batch x (None with one process).

    The per-rank sizes are gathered every iteration (one small collective): the last batch of an
    epoch may be split unevenly.
    """
    if world_size == 1:
        return None
    import paddle
    import paddle.distributed as dist

    from ..noise import Shard

    sizes: list = []
    dist.all_gather(sizes, paddle.to_tensor([int(x.shape[0])], dtype="int64"))
    return Shard(tuple(int(t.item()) for t in sizes), rank)


def gather_batch(x):
    """The global batch: every rank's x concatenated in rank order (equal per-rank sizes)."""
    import paddle
    import paddle.distributed as dist

    parts: list = []
    dist.all_gather(parts, x)
    return paddle.concat(parts)
