"""Explicit construction of the two networks from their config sections (no registries)."""
from __future__ import annotations

from typing import Dict


def build_flow(flow_cfg):
    """Flow++ for images, or the 2-D flow of the toy experiment."""
    if flow_cfg.arch == "flow2d":
        from .models.flow2d import Flow2D

        return Flow2D(hidden=flow_cfg.hidden, num_layers=flow_cfg.num_layers)
    from .models.flowpp import FlowPlusPlus

    return FlowPlusPlus.from_config(flow_cfg)


def build_ebm(ebm_cfg):
    from .models.ebm import build_ebm as _build

    return _build(ebm_cfg)


def count_params(layer) -> int:
    """Trainable parameters (buffers such as ActNorm's init flag excluded)."""
    return int(sum(int(p.size) for p in layer.parameters() if not p.stop_gradient))


def param_counts(cfg) -> Dict[str, int]:
    """Parameter count of each network the config builds (what `--dry-run` prints)."""
    counts = {}
    if cfg.Train.mode != "langevin_only":
        counts["flow"] = count_params(build_flow(cfg.Flow))
    if cfg.Train.mode != "flow_only":
        counts["ebm"] = count_params(build_ebm(cfg.EBM))
    return counts


def load_trained(cfg, prefix: str, eval_mode: bool = True):
    """(flow or None, ebm or None) built from `cfg` with the weights of checkpoint `prefix`.

    Only ``<prefix>.pdparams`` is needed. A checkpoint/config mismatch (e.g. another width)
    raises a one-line :class:`~paddle_coopflow.errors.CheckpointError`.
    """
    from .checkpoint import load_checkpoint, load_params_into
    from .errors import CheckpointError

    params = load_checkpoint(prefix, need=(".pdparams",))["params"]
    nets = []
    for key, section, builder in (("flow", cfg.Flow, build_flow), ("ebm", cfg.EBM, build_ebm)):
        if key not in params:
            nets.append(None)
            continue
        net = builder(section)
        load_params_into(net, params[key], key)
        if eval_mode:
            net.eval()
        nets.append(net)
    if all(n is None for n in nets):
        raise CheckpointError(f"{prefix}.pdparams holds neither a flow nor an EBM")
    return nets[0], nets[1]
