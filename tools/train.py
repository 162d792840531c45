"""Train CoopFlow (or a baseline) from a YAML config.

    python tools/train.py -c configs/celeba_t30.yaml [-o Section.key=value ...] [--resume PREFIX] [--dry-run]
    python -m paddle.distributed.launch --nproc_per_node 2 tools/train.py -c configs/digits_demo.yaml

Exit status: 0 done; 2 a user error (one line); 143 / 130 stopped by SIGTERM / SIGINT after saving
ckpt/latest at the last iteration boundary (docs/training.md).
"""
import argparse
import sys

import _bootstrap  # noqa: F401  (repo root on sys.path)

import paddle_coopflow  # noqa: F401  (quietens paddle before it is imported)
from paddle_coopflow.config import add_config_args, load_config, run_cli


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(parser)
    parser.add_argument("--resume", default=None, metavar="PREFIX",
                        help="checkpoint prefix, e.g. output/run/ckpt/latest (restores everything)")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the resolved config and the parameter count of each network, then exit")
    args = parser.parse_args(argv)
    cfg = load_config(args.config, args.override)
    if args.dry_run:
        from paddle_coopflow.builder import param_counts

        print(cfg.dump())
        for name, n in param_counts(cfg).items():
            print(f"params/{name}: {n:,}")
        return 0
    from paddle_coopflow.engine import Trainer, TrainingStopped

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
