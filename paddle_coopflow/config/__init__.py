"""Typed, validated YAML configuration shared by every tool.

    schema.py   the sections, their defaults and checks (:class:`Config`)
    loader.py   YAML files with ``_BASE_`` inheritance, ``-o Section.key=value`` overrides, validation

Every problem is a :class:`ConfigError` (a :class:`~paddle_coopflow.errors.UserError`) with a one-line
message; tools print it and exit with code 2 (:func:`~paddle_coopflow.cli.run_cli`).
"""
from .loader import StrictLoader, apply_overrides, build_config, config_from_dict, load_config, parse_yaml
from .schema import (SECTIONS, Config, ConfigError, DataConfig, EBMConfig,
                     EvalConfig, ExportConfig, FlowConfig, GlobalConfig, LangevinConfig, OptimizerConfig,
                     ToyConfig, TrainConfig)

__all__ = ["Config", "ConfigError", "DataConfig", "EBMConfig", "EvalConfig", "ExportConfig", "FlowConfig",
           "GlobalConfig", "LangevinConfig", "OptimizerConfig", "SECTIONS",
           "StrictLoader", "ToyConfig", "TrainConfig", "apply_overrides", "build_config", "config_from_dict",
           "load_config", "parse_yaml"]
