"""Import the official PyTorch CoopFlow and Flow++ checkpoints (read without torch).

The official scripts save two kinds of file, usually from ``torch.nn.DataParallel`` (every
state-dict key then starts with ``module.``), in torch's zip or legacy serialisation:

* CoopFlow: ``{'flow_net': flow.state_dict(), 'ebm_net': ebm.state_dict(), 'epoch': e, ...}``
  (layout ``"coopflow"``; the CoopFlow(Pre) scripts add optimizer states and the FID);
* pre-trained Flow++: ``{'net': flow.state_dict(), 'test_loss': ..., 'epoch': ...}`` (layout ``"flow"``).

Our FlowPlusPlus and EBMRes use the official state-dict names. Two things differ and are handled
here: WeightNormLinear (the attention projections) stores ``weight_v``/``weight_g`` as [in, out] /
[1, out] where torch has [out, in] / [out, 1], so they are transposed; and every ActNorm's
``is_initialized`` buffer is set, so a loaded flow is never re-initialised from data. Every key and
shape is checked against the networks the config builds before anything is loaded; a mismatch is a
one-line :class:`~paddle_coopflow.errors.UserError` naming the first differing key, both shapes, and
the config values the file was trained with.

:func:`convert` returns loaded networks, :func:`save_converted` writes them as a checkpoint prefix
of this package (what ``tools/convert_official.py`` does).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
import tempfile
from typing import Any, Dict, Optional, Tuple, Union

import numpy as np

from .errors import UserError

COOPFLOW = "coopflow"
FLOW_ONLY = "flow"
_PREFIX = "module."


@dataclasses.dataclass(frozen=True)
class OfficialCheckpoint:
    """The networks of an official file, keys without ``module.``, arrays in torch layout.

    Attributes:
        path: the file read.
        layout: ``"coopflow"`` (flow and EBM) or ``"flow"`` (a pre-trained Flow++ alone).
        flow: the Flow++ state dict.
        ebm: the EBM_res state dict (None for a flow-only file).
        epoch: the ``epoch`` entry of the file, if any.
    """

    path: str
    layout: str
    flow: Dict[str, np.ndarray]
    ebm: Optional[Dict[str, np.ndarray]]
    epoch: Optional[int]


@dataclasses.dataclass(frozen=True)
class Converted:
    """Networks loaded with an official file's weights (eval mode); ebm is None for a flow-only file."""

    flow: Any
    ebm: Any
    source: OfficialCheckpoint


# ------------------------------------------------------------------------------------- reading
def _clean_state(d: dict, path: str, entry: str) -> Dict[str, np.ndarray]:
    """Strip the DataParallel prefix; keep the arrays."""
    state = {}
    for key, value in d.items():
        if isinstance(value, np.ndarray):
            key = str(key)
            state[key[len(_PREFIX):] if key.startswith(_PREFIX) else key] = value
    if not state:
        raise UserError(f"{path}: entry '{entry}' holds no tensors; not an official checkpoint")
    return state


def read_official(path: str) -> OfficialCheckpoint:
    """Read an official CoopFlow or pre-trained Flow++ file and detect its layout.

    Args:
        path: the ``.pth.tar`` file (zip or legacy torch serialisation).

    Returns:
        The networks' state dicts with ``module.`` stripped.

    Raises:
        UserError: missing, unreadable or truncated file, a file naming anything but tensors and
            plain data (refused by the allow-list, nothing run), or a torch file of another kind.
    """
    from .utils.pth_reader import load_pth
    from .utils.safe_pickle import PickleRefused

    if not os.path.isfile(path):
        raise UserError(f"official checkpoint not found: {path}")
    try:
        obj = load_pth(path)
    except PickleRefused as err:
        raise UserError(f"{path} refused, nothing in it was run: {' '.join(str(err).split())}") from None
    except Exception as err:  # any failure of the reader means the file is not a usable checkpoint
        reason = " ".join(str(err).split()) or type(err).__name__
        raise UserError(f"{path} is not a readable PyTorch checkpoint (truncated download or another "
                        f"format?): {reason}") from None
    if not isinstance(obj, dict):
        raise UserError(f"{path} holds a {type(obj).__name__}, not an official CoopFlow/Flow++ checkpoint")
    epoch = obj.get("epoch") if isinstance(obj.get("epoch"), int) else None
    if isinstance(obj.get("flow_net"), dict) and isinstance(obj.get("ebm_net"), dict):
        return OfficialCheckpoint(path, COOPFLOW, _clean_state(obj["flow_net"], path, "flow_net"),
                                  _clean_state(obj["ebm_net"], path, "ebm_net"), epoch)
    if isinstance(obj.get("net"), dict):
        return OfficialCheckpoint(path, FLOW_ONLY, _clean_state(obj["net"], path, "net"), None, epoch)
    keys = ", ".join(repr(k) for k in list(obj)[:6]) or "none"
    raise UserError(f"{path} is a torch file but not an official CoopFlow/Flow++ checkpoint: top-level keys "
                    f"{keys} (expected 'flow_net' and 'ebm_net', or 'net')")


def check_layout(ckpt: OfficialCheckpoint, flow_only: bool) -> None:
    """Raise a UserError when the file is not of the kind the caller expects.

    Args:
        ckpt: what :func:`read_official` returned.
        flow_only: True when a pre-trained Flow++ file is expected, False for a CoopFlow file.
    """
    if flow_only and ckpt.layout == COOPFLOW:
        raise UserError(f"{ckpt.path} is a CoopFlow checkpoint ('flow_net' + 'ebm_net'), not a pre-trained "
                        "Flow++ one ('net'); drop --flow-only to convert both networks")
    if not flow_only and ckpt.layout == FLOW_ONLY:
        raise UserError(f"{ckpt.path} is a pre-trained Flow++ checkpoint ('net', no EBM), not a CoopFlow one; "
                        "pass --flow-only to write a flow checkpoint for Train.init_flow")


# ------------------------------------------------------------------------------ width inference
def _coupling_widths(state: Dict[str, np.ndarray], prefix: str) -> Dict[str, Any]:
    """mid_channels, num_blocks, mixture components and attention of the coupling NN at `prefix`."""
    blocks = {k[len(prefix):].split(".")[1] for k in state if k.startswith(prefix + "mid_convs.")}
    c = state[prefix + "rescale.weight_g"].shape[0]
    return {"mid_channels": int(state[prefix + "in_conv.conv.weight_v"].shape[0]), "num_blocks": len(blocks),
            "num_components": int((state[prefix + "out_conv.conv.bias"].shape[0] // c - 2) // 3),
            "use_attn": any(k.startswith(prefix + "mid_convs.") and ".attn." in k for k in state)}


def infer_flow_config(state: Dict[str, np.ndarray]) -> Dict[str, Any]:
    """The Flow.* values an official Flow++ state dict was built with (what can be read from shapes).

    Args:
        state: official keys (``module.`` stripped), torch layout.

    Returns:
        Some of: scales, mid_channels, num_blocks, num_components, use_attn, num_dequant_blocks and
        num_dequant_components (the official dequantization flow always has 32).
    """
    out: Dict[str, Any] = {}
    scales, level = [], "flows."
    while any(k.startswith(level + "channels.") or k.startswith(level + "checkers.") for k in state):
        scales.append([sum(1 for k in state if re.fullmatch(re.escape(level + kind) + r"\.\d+\.mean", k))
                       for kind in ("channels", "checkers")])
        level += "next."
    if scales:
        out["scales"] = scales
    main = sorted(k[: -len("in_conv.conv.weight_v")] for k in state
                  if k.startswith("flows.") and k.endswith(".nn.in_conv.conv.weight_v"))
    try:
        if main:
            out.update(_coupling_widths(state, min(main, key=len)))
        dequant = "dequant_flows.flows.2.nn."
        if any(k.startswith(dequant) for k in state):
            widths = _coupling_widths(state, dequant)
            out["num_dequant_blocks"] = widths["num_blocks"]
            out["num_dequant_components"] = widths["num_components"]
        elif main:
            out["num_dequant_blocks"] = 0
    except (KeyError, IndexError):  # an incomplete file: report what could be read
        pass
    return out


def infer_ebm_config(state: Dict[str, np.ndarray]) -> Dict[str, Any]:
    """The EBM.* values (in_channels, base_channels, img_size) of an official EBM_res state dict."""
    if "f.0.weight" not in state or state["f.0.weight"].ndim != 4:
        return {}
    blocks = len({k.split(".")[1] for k in state if re.fullmatch(r"f\.\d+\.conv1\.weight", k)})
    out = {"in_channels": int(state["f.0.weight"].shape[1]), "base_channels": int(state["f.0.weight"].shape[0])}
    if blocks in (1, 2, 3, 4):
        out["img_size"] = {1: 8, 2: 16, 3: 32, 4: 64}[blocks]
    return out


def _yaml(value: Any) -> str:
    return json.dumps(value, separators=(",", ":")) if isinstance(value, (list, bool)) else str(value)


def suggest_config(cfg, ckpt: OfficialCheckpoint) -> str:
    """What to change in the config so that its networks fit the file (one clause, no newline)."""
    from .config import Config

    flow = infer_flow_config(ckpt.flow)
    if flow.get("num_dequant_components") == flow.get("num_components"):
        flow.pop("num_dequant_components")  # implied by num_components; only a difference needs a word
    found = {("Flow", k): v for k, v in flow.items()}
    found.update({("EBM", k): v for k, v in infer_ebm_config(ckpt.ebm or {}).items()})
    has = {key: hasattr(getattr(cfg, key[0]), key[1]) for key in found}
    diff = [f"-o {s}.{k}={_yaml(v)}" for (s, k), v in found.items() if has[(s, k)] and getattr(getattr(cfg, s), k) != v]
    paper = Config()  # the schema defaults are the paper's CIFAR-10 networks
    if len(diff) > 2 and all(getattr(getattr(paper, s), k, v) == v for (s, k), v in found.items()):
        return "the file has the paper's networks: use -c configs/cifar10_t30.yaml (or the svhn/celeba config)"
    note = ""
    k_main, k_dq = found.get(("Flow", "num_components")), found.get(("Flow", "num_dequant_components"))
    if k_dq is not None and k_dq != k_main and not has.get(("Flow", "num_dequant_components")):
        note = (f"its dequantization flow has {k_dq} mixture components and its main flow {k_main}: "
                f"set -o Flow.num_dequant_components={k_dq}")
    if diff:
        return "the file was trained with " + " ".join(diff) + (f"; {note}" if note else "")
    return note or "use the config the file was trained with"


# ------------------------------------------------------------------------------------- mapping
def _special_keys(net) -> Tuple[set, set]:
    """(WeightNormLinear weight keys, ActNorm is_initialized keys) of `net`'s state dict."""
    from .models.flowpp.act_norm import ActNorm
    from .models.flowpp.weight_norm import WeightNormLinear

    linear, flags = set(), set()
    for name, layer in net.named_sublayers():
        if isinstance(layer, WeightNormLinear):
            linear.update({f"{name}.weight_v", f"{name}.weight_g"})
        elif isinstance(layer, ActNorm):
            flags.add(f"{name}.is_initialized")
    return linear, flags


def _first_mismatch(own: Dict[str, Any], state: Dict[str, np.ndarray], linear: set, flags: set) -> Optional[str]:
    """Describe the first key (in the network's order) that the file lacks or holds with another shape."""
    for key, param in own.items():
        want = tuple(param.shape)[::-1] if key in linear else tuple(param.shape)  # torch layout
        if key not in state:
            if key not in flags:
                return f"'{key}' (shape {list(want)} in the config's network) is missing from the file"
        elif tuple(state[key].shape) != want:
            return f"'{key}' is {list(state[key].shape)} in the file but {list(want)} in the config's network"
    extra = [k for k in state if k not in own]
    if extra:
        return f"the file has '{extra[0]}' {list(state[extra[0]].shape)}, which the config's network lacks"
    return None


def map_state(net, state: Dict[str, np.ndarray], what: str, ckpt: OfficialCheckpoint,
              cfg=None) -> Dict[str, np.ndarray]:
    """Map an official state dict onto `net`'s keys and layout, checking every key and shape.

    Args:
        net: our FlowPlusPlus or EBMRes.
        state: the official state dict (``module.`` stripped).
        what: ``"flow"`` or ``"ebm"``, for messages.
        ckpt: the file the state came from, for messages and suggestions.
        cfg: the config `net` was built from (for the suggestion in a mismatch message).

    Returns:
        ``{key: array}`` ready for ``net.set_state_dict``: WN-Linear weights transposed, ActNorm
        ``is_initialized`` set to 1, dtypes those of `net`.

    Raises:
        UserError: a missing, extra or differently shaped key (the first one is named), a never
            initialised ActNorm, or non-finite weights.
    """
    own = net.state_dict()
    linear, flags = _special_keys(net)
    problem = _first_mismatch(own, state, linear, flags)
    if problem:
        hint = f"; {suggest_config(cfg, ckpt)}" if cfg is not None else ""
        raise UserError(f"{what} weights in {ckpt.path} do not fit the config: {problem}{hint}")
    out = {}
    for key, param in own.items():
        dtype = str(param.dtype).replace("paddle.", "")
        if key in flags:
            if key in state and not np.all(state[key] > 0):
                raise UserError(f"{ckpt.path}: ActNorm '{key}' was never data-initialised: the {what} in "
                                "this file is untrained")
            out[key] = np.ones(param.shape, dtype=dtype)
            continue
        value = state[key].T if key in linear else state[key]
        if not np.all(np.isfinite(value)):
            raise UserError(f"{ckpt.path}: {what} weight '{key}' holds NaN or Inf; the file is damaged")
        out[key] = np.ascontiguousarray(value, dtype=dtype)
    return out


def convert(source: Union[str, OfficialCheckpoint], cfg, flow_only: bool = False, flow=None, ebm=None) -> Converted:
    """Load an official file into our networks, after checking every key and shape.

    Args:
        source: a path, or what :func:`read_official` returned.
        cfg: the Config whose Flow (and EBM) sections describe the file's networks.
        flow_only: expect a pre-trained Flow++ file (``'net'``) instead of a CoopFlow file.
        flow, ebm: networks to load into; by default they are built from `cfg`.

    Returns:
        The loaded networks in eval mode.

    Raises:
        UserError: an unreadable file, the other layout than expected, non-official architectures
            in the config, or a key/shape mismatch.
    """
    from .builder import build_ebm, build_flow
    from .checkpoint import load_params_into

    ckpt = read_official(source) if isinstance(source, str) else source
    check_layout(ckpt, flow_only)
    if cfg.Flow.arch != "flowpp" or (ckpt.ebm is not None and cfg.EBM.arch != "res"):
        raise UserError("official checkpoints hold a Flow++ and an EBM_res: the config needs Flow.arch=flowpp "
                        f"and EBM.arch=res (it has {cfg.Flow.arch!r} and {cfg.EBM.arch!r})")
    nets = {}
    if ckpt.ebm is not None:  # the small EBM first: its mismatches are the quickest to read
        nets["ebm"] = ebm if ebm is not None else build_ebm(cfg.EBM)
    nets["flow"] = flow if flow is not None else build_flow(cfg.Flow)
    mapped = {name: map_state(net, ckpt.flow if name == "flow" else ckpt.ebm, name, ckpt, cfg)
              for name, net in nets.items()}
    for name, net in nets.items():
        load_params_into(net, mapped[name], name)
        net.eval()
    return Converted(nets["flow"], nets.get("ebm"), ckpt)


# ------------------------------------------------------------------------------------- writing
def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check_destination(prefix: str, overwrite: bool) -> str:
    """The prefix without a checkpoint suffix; a UserError if its files exist and overwrite is off."""
    from .checkpoint import SUFFIXES

    for suffix in SUFFIXES:
        if prefix.endswith(suffix):
            prefix = prefix[: -len(suffix)]
    existing = [prefix + s for s in SUFFIXES if os.path.exists(prefix + s)]
    if existing and not overwrite:
        raise UserError(f"{existing[0]} already exists; pass --overwrite or choose another --dst")
    if not os.path.basename(prefix):
        raise UserError(f"--dst {prefix!r} names a directory; give a prefix such as DIR/cifar10")
    return prefix


def save_converted(prefix: str, cfg, converted: Converted, overwrite: bool = False) -> str:
    """Write `converted` as a checkpoint prefix of this package (all three files or none).

    ``<prefix>.pdparams`` holds ``{"flow": ...}`` (and ``"ebm"`` for a CoopFlow file), as the Trainer
    writes it; ``.pdopt`` is empty (no optimizer state is imported); ``.pdstates`` holds the resolved
    config (so tools can omit ``-c``) and where the weights came from. The files are written in a
    temporary directory next to the prefix and then renamed into place.

    Args:
        prefix: e.g. ``pretrained/cifar10``; a ``.pdparams``-style suffix is dropped.
        cfg: the Config the networks were built from.
        converted: what :func:`convert` returned.
        overwrite: replace an existing prefix.

    Returns:
        The prefix written.
    """
    from .checkpoint import SUFFIXES, save_checkpoint

    prefix = check_destination(prefix, overwrite)
    src = converted.source
    params = {"flow": converted.flow.state_dict()}
    if converted.ebm is not None:
        params["ebm"] = converted.ebm.state_dict()
    states = {"config": cfg.to_dict(),
              "official": {"file": os.path.basename(src.path), "layout": src.layout, "epoch": src.epoch,
                           "bytes": os.path.getsize(src.path), "sha256": _sha256(src.path)}}
    directory = os.path.dirname(os.path.abspath(prefix))
    os.makedirs(directory, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".convert_official_", dir=directory)
    try:
        staged = os.path.join(tmp, os.path.basename(prefix))
        save_checkpoint(staged, params, {}, states)
        for suffix in SUFFIXES:  # .pdstates last, as save_checkpoint does
            os.replace(staged + suffix, prefix + suffix)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return prefix
