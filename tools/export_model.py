"""Export a trained CoopFlow checkpoint to static programs for Paddle Inference.

    python tools/export_model.py -c configs/cifar10_t30.yaml --ckpt output/cifar10_t30/ckpt/best \\
        [-o Export.save_dir=inference/cifar10_t30] [-o Langevin.n_steps=30 ...]

Writes flow_generator, energy, energy_grad, coopflow_sampler and, for EBM_res, the grad-free
langevin_step (each `<name>.json` + `<name>.pdiparams` under Paddle 3) and infer_cfg.yml into
Export.save_dir (default: <Global.output_dir>/inference).
Run them with deploy/python/infer.py. -c is optional: the config stored in the checkpoint is used
when it is omitted. The config must describe the checkpoint's networks; a mismatch (e.g. another width)
is reported in one line.
"""
import argparse
import os
import sys
import time

import _bootstrap  # noqa: F401  (repo root on sys.path)

import paddle_coopflow  # noqa: F401  (quietens paddle before it is imported)
from paddle_coopflow.cli import add_config_args, config_for, run_cli


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(parser, required=False)
    parser.add_argument("--ckpt", required=True, metavar="PREFIX",
                        help="checkpoint prefix, e.g. output/run/ckpt/latest (PREFIX.pdparams; PREFIX.pdstates "
                             "too when -c is omitted)")
    parser.add_argument("--programs", nargs="+", default=None, metavar="NAME",
                        help="subset of: flow_generator energy energy_grad coopflow_sampler langevin_step (default: all)")
    args = parser.parse_args(argv)
    cfg = config_for(args.config, args.override, args.ckpt)

    import paddle

    from paddle_coopflow.export import PROGRAMS, export_checkpoint

    paddle.set_device("cpu")  # exporting never needs a GPU; the programs run on either
    out_dir = cfg.Export.save_dir or os.path.join(cfg.Global.output_dir, "inference")
    t0 = time.time()
    paths = export_checkpoint(cfg, args.ckpt, out_dir, programs=args.programs or PROGRAMS)
    for name, path in paths.items():
        print(f"{name}: {path}")
    print(f"exported {len(paths) - 1} program(s) to {out_dir} in {time.time() - t0:.1f}s; run them with "
          f"python deploy/python/infer.py --model_dir {out_dir} --num 64 --out {os.path.join(out_dir, 'samples')}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
