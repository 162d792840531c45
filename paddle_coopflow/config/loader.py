"""Reading configs: YAML files with ``_BASE_`` inheritance, ``-o`` overrides, validation.

A config file has CapWords sections (PaddleClas style)::

    _BASE_: base.yaml            # optional, path relative to this file; deep-merged
    Global: {seed: 0, output_dir: output/celeba_t30}
    Langevin: {n_steps: 30, step_size: 0.03, test_step_size: 0.035}

and any key can be overridden on the command line with ``-o Section.key=value`` (the value is parsed
as YAML, never ``eval``). Every problem raises :class:`ConfigError` with a one-line message naming the
file (with line and column for YAML errors), the key, the value and where it came from: a file that is
not UTF-8, a YAML syntax error, an empty file or one whose top level is not a mapping, a key written
twice, unknown keys, wrong types, non-finite numbers and out-of-range values.
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import os
import typing
from typing import Any, List, Optional, Tuple

import yaml

from .schema import SECTION_CLASSES, SECTIONS, Config, ConfigError


class StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that rejects a mapping key written twice (YAML would silently keep the last)."""

    def construct_mapping(self, node, deep=False):
        """Build a mapping; raise ConstructorError at the second occurrence of a key."""
        if isinstance(node, yaml.MappingNode):
            first = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=deep)
                try:
                    line = first.setdefault(key, key_node.start_mark.line + 1)
                except TypeError:  # an unhashable key: SafeLoader reports it itself
                    continue
                if line != key_node.start_mark.line + 1:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key!r} (first on line {line})", key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


def parse_yaml(text: str, where: str):
    """Parse YAML text with :class:`StrictLoader`; errors name `where`, the line and the column."""
    try:
        return yaml.load(text, Loader=StrictLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        pos = f":{mark.line + 1}:{mark.column + 1}" if mark is not None else ""
        ctx = f" ({err.context})" if err.context and err.problem else ""
        raise ConfigError(f"{where}{pos}: invalid YAML: {err.problem or err.context}{ctx}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{where}: invalid YAML: {' '.join(str(err).split())}") from None


def _suggest(word: str, options) -> str:
    near = difflib.get_close_matches(word, list(options), n=1, cutoff=0.5)
    return f" (did you mean '{near[0]}'?)" if near else f" (valid: {', '.join(sorted(options))})"


def _load_file(path: str) -> dict:
    """One YAML file as a dict of sections (no ``_BASE_`` handling)."""
    if not os.path.isfile(path):
        raise ConfigError(f"config file not found: {path}")
    with open(path, "rb") as fh:
        raw = fh.read()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw[:err.start].count(b"\n") + 1
        raise ConfigError(f"{path}: not UTF-8 text (byte 0x{raw[err.start]:02x} on line {line}); "
                          "save the config as UTF-8") from None
    data = parse_yaml(text, path)
    if data is None:
        raise ConfigError(f"{path} is empty (no sections); for the built-in defaults pass no -c")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections (Global:, Flow:, ...), "
                          f"got a {type(data).__name__}")
    return data


def _read_yaml(path: str, seen=()) -> Tuple[dict, dict]:
    """Read a YAML file with `_BASE_` inheritance → (merged dict, per-key source)."""
    path = os.path.abspath(path)
    if path in seen:
        raise ConfigError(f"_BASE_ cycle through {path}")
    data = _load_file(path)
    merged: dict = {}
    sources: dict = {}
    base = data.pop("_BASE_", None)
    bases = [base] if isinstance(base, str) else (base or [])
    for b in bases:
        bd, bs = _read_yaml(os.path.join(os.path.dirname(path), b), seen + (path,))
        _merge(merged, sources, bd, bs)
    own_sources = {}
    for sec, body in data.items():
        if isinstance(body, dict):
            for k in body:
                own_sources[(sec, k)] = path
        else:
            own_sources[(sec, None)] = path
    _merge(merged, sources, data, own_sources)
    return merged, sources


def _merge(dst: dict, dst_src: dict, new: dict, new_src: dict) -> None:
    for sec, body in new.items():
        if isinstance(body, dict) and isinstance(dst.get(sec), dict):
            dst[sec].update(copy.deepcopy(body))
        else:
            dst[sec] = copy.deepcopy(body)
    dst_src.update(new_src)


def _parse_override(text: str) -> Tuple[str, str, Any]:
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like Section.key=value")
    key, raw = text.split("=", 1)
    if key.count(".") != 1:
        raise ConfigError(f"override key '{key}' must look like Section.key (e.g. Global.seed=1)")
    sec, k = key.split(".")
    value = parse_yaml(raw, f"-o {text}") if raw.strip() != "" else ""
    return sec.strip(), k.strip(), value


def _type_name(tp) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _to_float(value, bad: ConfigError, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise bad
    try:
        out = float(value)  # YAML 1.1 reads "1e-4" as a string
    except ValueError:
        raise bad from None
    if not math.isfinite(out):
        raise ConfigError(f"{where}: must be a finite number")
    return out


def _coerce(value, tp, where: str):
    """Check `value` against annotation `tp`; return the (possibly converted) value."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    bad = ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r} ({type(value).__name__})")
    if origin is typing.Union:  # Optional[X]
        if value is None:
            return None
        inner = [a for a in args if a is not type(None)][0]
        return _coerce(value, inner, where)
    if origin in (list, List):
        if isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, list):
            raise bad
        return [_coerce(v, args[0], where) for v in value] if args else value
    if tp is float:
        return _to_float(value, bad, where)
    if tp is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise bad
    if tp in (bool, str) and not isinstance(value, tp):
        raise bad
    return value


def _check_range(value, meta: dict, where: str) -> None:
    choices, lo, hi, gt = meta.get("choices"), meta.get("min"), meta.get("max"), meta.get("gt")
    if choices is not None and value not in choices:
        raise ConfigError(f"{where}: {value!r} is not one of {list(choices)}" + (
            _suggest(str(value), [str(c) for c in choices]) if isinstance(value, str) else ""))
    for v in (value if isinstance(value, list) else [value]):
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            if lo is not None and v < lo:
                raise ConfigError(f"{where}: {value!r} is below the minimum {lo}")
            if gt is not None and v <= gt:
                raise ConfigError(f"{where}: must be greater than {gt}")
            if hi is not None and v > hi:
                raise ConfigError(f"{where}: {value!r} is above the maximum {hi}")


def _fill_section(section_obj, sec: str, body: dict, sources: dict) -> None:
    cls = SECTION_CLASSES[sec]
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key, value in body.items():
        src = sources.get((sec, key), "?")
        if key not in fields:
            raise ConfigError(f"unknown key '{sec}.{key}' in {src}" + _suggest(str(key), fields))
        where = f"{sec}.{key}={value!r} (from {src})"
        value = _coerce(value, hints[key], where)
        if value is not None:
            _check_range(value, fields[key].metadata, where)
        setattr(section_obj, key, value)


def build_config(data: dict, sources: Optional[dict] = None) -> Config:
    """Validate a nested dict (section → key → value) into a :class:`Config`.

    Args:
        data: section name → mapping of keys.
        sources: (section, key) → where the value came from (file or ``-o``), for messages.
    Raises:
        ConfigError: one line naming the key, the value and its source.
    """
    sources = sources or {}
    cfg = Config()
    for sec, body in data.items():
        if sec not in SECTIONS:
            src = sources.get((sec, None)) or next((s for (a, _), s in sources.items() if a == sec), "?")
            raise ConfigError(f"unknown section '{sec}' in {src}" + _suggest(str(sec), SECTIONS))
        if body is None:
            continue
        if not isinstance(body, dict):
            raise ConfigError(f"section '{sec}' in {sources.get((sec, None), '?')} must be a mapping")
        _fill_section(getattr(cfg, sec), sec, body, sources)
    _cross_check(cfg)
    return cfg


def _cross_check(cfg: Config) -> None:
    """Constraints that involve more than one key."""
    if cfg.Langevin.n_steps == 0 and cfg.Train.mode != "flow_only":
        # T = 0 would make the "revisions" the proposals themselves: CoopFlow would train nothing the paper describes
        raise ConfigError(f"Langevin.n_steps=0: Train.mode={cfg.Train.mode} needs Langevin revisions; set "
                          "Langevin.n_steps >= 1 (or Train.mode=flow_only to train the flow alone)")
    ic = cfg.Langevin.image_clip
    if ic is not None and (len(ic) != 2 or ic[0] >= ic[1]):
        raise ConfigError(f"Langevin.image_clip={ic!r}: must be [lo, hi] with lo < hi, or null")
    if cfg.Flow.arch == "flowpp":
        shp = cfg.Flow.in_shape
        if len(shp) != 3 or shp[0] not in (1, 3) or not (8 <= shp[1] <= 64) or shp[1] != shp[2]:
            raise ConfigError(f"Flow.in_shape={shp!r}: must be [C, H, W] with C in (1, 3) and square 8..64 px")
        if any(len(s) != 2 for s in cfg.Flow.scales):
            raise ConfigError(f"Flow.scales={cfg.Flow.scales!r}: each scale is [n_channelwise, n_checkerboard]")


def apply_overrides(data: dict, sources: dict, overrides: Optional[List[str]]) -> None:
    """Write ``Section.key=value`` overrides into `data` (in place), recording their source."""
    for text in overrides or []:
        sec, key, value = _parse_override(text)
        if sec not in SECTIONS:
            raise ConfigError(f"unknown section '{sec}' in -o {text}" + _suggest(sec, SECTIONS))
        data.setdefault(sec, {})
        if not isinstance(data[sec], dict):
            data[sec] = {}
        data[sec][key] = value
        sources[(sec, key)] = f"-o {text}"


def load_config(path: Optional[str] = None, overrides: Optional[List[str]] = None) -> Config:
    """Load `path` (or the built-in defaults when None) and apply `-o` overrides."""
    data, sources = _read_yaml(path) if path else ({}, {})
    apply_overrides(data, sources, overrides)
    return build_config(data, sources)


def config_from_dict(d: dict, overrides: Optional[List[str]] = None, where: str = "stored config") -> Config:
    """Rebuild a Config from `Config.to_dict()` output (e.g. stored in a checkpoint), then apply overrides."""
    data = build_config(copy.deepcopy(d), {}).to_dict()
    if not overrides:
        return build_config(data, {})
    sources = {(sec, k): where for sec, body in data.items() for k in body}
    apply_overrides(data, sources, overrides)
    return build_config(data, sources)
