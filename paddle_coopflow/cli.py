"""The tools' command line: ``-c/-o``, ``--ckpt PREFIX``, model loading, process set-up, one-line errors.

Every tool builds its config the same way: from ``-c CONFIG`` when given, else from the resolved config
the trainer stored in ``<PREFIX>.pdstates``; ``-o Section.key=value`` overrides either. The Langevin
settings too: T is ``-o Langevin.n_steps=…``, the sampling step size ``-o Langevin.test_step_size=…``
(sample, eval) and the step size of the test-time tasks ``-o Langevin.step_size=…`` (reconstruct,
inpaint, interpolate). :func:`run_cli` checks the installed Paddle's version first
(:func:`~paddle_coopflow.utils.env.check_paddle`) and turns every :class:`~paddle_coopflow.errors.UserError`
(config, dataset and checkpoint errors, an unsupported Paddle) into one line on stderr and exit code 2.

Importing this module does not import paddle.
"""
from __future__ import annotations

import argparse
import sys
from typing import Callable, List, Optional, Tuple

from .errors import UserError


def add_config_args(parser: argparse.ArgumentParser, required: bool = True) -> None:
    """Add ``-c/--config`` and the repeatable ``-o/--override Section.key=value``."""
    parser.add_argument("-c", "--config", required=required,
                        help="YAML config file" + ("" if required else " (default: the one stored in --ckpt)"))
    parser.add_argument("-o", "--override", action="append", default=[], metavar="Section.key=value",
                        help="override a config value (repeatable), e.g. -o Langevin.n_steps=30")


def add_model_args(parser: argparse.ArgumentParser) -> None:
    """``-c/-o`` (config optional) and ``--ckpt PREFIX`` for a tool that loads a trained model."""
    add_config_args(parser, required=False)
    parser.add_argument("--ckpt", required=True, metavar="PREFIX",
                        help="checkpoint prefix, e.g. output/run/ckpt/best (PREFIX.pdparams must exist)")


def stored_config(prefix: str, overrides: Optional[List[str]] = None):
    """The config stored in ``<prefix>.pdstates`` by the trainer, with `overrides` applied."""
    from .checkpoint import load_checkpoint
    from .config import config_from_dict

    states = load_checkpoint(prefix, need=(".pdstates",))["states"]
    if not isinstance(states, dict) or "config" not in states:
        raise UserError(f"{prefix}.pdstates holds no config; pass the training config with -c")
    return config_from_dict(states["config"], overrides, where=f"{prefix}.pdstates")


def config_for(config: Optional[str], overrides: Optional[List[str]], prefix: Optional[str] = None):
    """-c `config` (+ overrides), else the config stored in checkpoint `prefix` (+ overrides)."""
    from .config import load_config

    if config:
        return load_config(config, overrides)
    if prefix:
        return stored_config(prefix, overrides)
    raise UserError("no config: pass -c CONFIG (or a checkpoint that stores one)")


def setup_process(cfg) -> str:
    """Device (Global.device), CPU math threads (Global.threads) and seeds (Global.seed); returns the device."""
    from .utils.env import resolve_device, seed_everything, setup_threads

    try:
        device = resolve_device(cfg.Global.device)
    except RuntimeError as err:  # Global.device=gpu on a CPU build
        raise UserError(str(err)) from None
    if device == "cpu":
        setup_threads(cfg.Global.threads)
    seed_everything(cfg.Global.seed)
    return device


def load_model(config: Optional[str], overrides: Optional[List[str]], prefix: str) -> Tuple:
    """(cfg, flow or None, ebm or None) for a tool: config as :func:`config_for`, process set up, nets in eval mode.

    A network missing from the checkpoint comes back as None (a flow-only or a Langevin-only run).
    """
    from .builder import load_trained

    cfg = config_for(config, overrides, prefix)
    setup_process(cfg)
    flow, ebm = load_trained(cfg, prefix)
    return cfg, flow, ebm


def one_line(err: BaseException) -> str:
    """``Name: message`` on one line."""
    return f"{type(err).__name__}: {' '.join(str(err).split())}"


def run_cli(main: Callable, argv=None) -> int:
    """Check Paddle's version, run ``main(argv)``; a :class:`~paddle_coopflow.errors.UserError` (an
    unsupported Paddle included) prints one line to stderr, exit 2."""
    from .utils.env import check_paddle

    try:
        check_paddle()
        rc = main(argv)
    except UserError as err:
        print(one_line(err), file=sys.stderr)
        return 2
    return int(rc or 0)
