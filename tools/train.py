"""Train CoopFlow (or a baseline) from a YAML config.

    python tools/train.py -c configs/celeba_t30.yaml [-o Section.key=value ...] [--resume PREFIX] [--dry-run]
    python -m paddle.distributed.launch --nproc_per_node 2 tools/train.py -c configs/digits_demo.yaml
    python tools/train.py --check-health RUN/stats.jsonl [-c CONFIG] [-o Health.key=value ...]

Exit status: 0 done; 2 a user error (one line) or a finite blow-up (one line; docs/training.md);
143 / 130 stopped by SIGTERM / SIGINT after saving ckpt/latest at the last iteration boundary.
--check-health replays the blow-up check over logged runs instead of training (exit status 1 when it
finds a blow-up).
"""
import argparse
import sys

import _bootstrap  # noqa: F401  (repo root on sys.path)

import paddle_coopflow  # noqa: F401  (quietens paddle before it is imported)
from paddle_coopflow.cli import add_config_args, run_cli
from paddle_coopflow.config import load_config


def check_health(paths, cfg) -> int:
    """Print the first blow-up the Health rule finds in each stats.jsonl (or 'no blow-up'); 1 if any."""
    import os

    from paddle_coopflow.training.health import replay
    from paddle_coopflow.errors import UserError

    found = 0
    for path in paths:
        if not os.path.isfile(path):
            raise UserError(f"--check-health: {path} not found; pass the stats.jsonl of a run directory")
        msg = replay(path, cfg.Health)
        found += msg is not None
        print(f"{path}: {msg or 'no blow-up'}")
    return 1 if found else 0


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(parser, required=False)
    parser.add_argument("--check-health", nargs="+", metavar="STATS", default=None,
                        help="replay the finite blow-up check over these stats.jsonl files and exit")
    parser.add_argument("--resume", default=None, metavar="PREFIX",
                        help="checkpoint prefix, e.g. output/run/ckpt/latest (restores everything)")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the resolved config and the parameter count of each network, then exit")
    args = parser.parse_args(argv)
    if args.check_health:
        return check_health(args.check_health, load_config(args.config, args.override))
    if not args.config:
        parser.error("the following arguments are required: -c/--config")
    cfg = load_config(args.config, args.override)
    if args.dry_run:
        from paddle_coopflow.builder import param_counts

        print(cfg.dump())
        for name, n in param_counts(cfg).items():
            print(f"params/{name}: {n:,}")
        return 0
    from paddle_coopflow.training import Trainer, TrainingStopped

    try:
        Trainer(cfg, resume=args.resume).train()
    except TrainingStopped as stopped:  # SIGTERM / SIGINT: latest saved at the iteration boundary
        print(f"stopped: {stopped}", file=sys.stderr)
        return stopped.exit_code
    except KeyboardInterrupt:  # a second signal abandoned the iteration in progress
        print("interrupted; latest is the last checkpoint written at an iteration boundary", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
