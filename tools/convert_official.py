"""Convert an official PyTorch CoopFlow or pre-trained Flow++ checkpoint into a checkpoint prefix.

    python tools/convert_official.py --src ckpt/cifar10.pth.tar --dst pretrained/cifar10 \\
        -c configs/cifar10_t30.yaml
    python tools/convert_official.py --src flow_ckpt/cifar10.pth.tar --dst pretrained/cifar10_flow \\
        -c configs/cifar10_pre.yaml --flow-only

The file (torch zip or legacy serialisation, keys with or without 'module.') is read without torch,
with an allow-list unpickler: a file that names anything but tensors and plain data is refused and
nothing in it runs.
Every key and shape is checked against the networks the config builds; a mismatch is one line naming
the first differing key, both shapes and the config values the file was trained with. Nothing is
written unless everything fits.

Writes PREFIX.pdparams / .pdopt / .pdstates. The tools take PREFIX with --ckpt (sample.py, eval.py,
reconstruct.py, inpaint.py, interpolate.py, export_model.py); the resolved config is stored in
PREFIX.pdstates, so the tools that accept it may omit -c. A --flow-only file gives a flow checkpoint
for `tools/train.py -o Train.init_flow=PREFIX`. No optimizer state is imported, so the prefix cannot
be used with --resume.
"""
import argparse
import sys
import time

import _bootstrap  # noqa: F401  (repo root on sys.path)

import paddle_coopflow  # noqa: F401  (quietens paddle before it is imported)
from paddle_coopflow.cli import add_config_args, run_cli
from paddle_coopflow.config import load_config


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--src", required=True, metavar="FILE",
                        help="official checkpoint, e.g. ckpt/cifar10.pth.tar or flow_ckpt/cifar10.pth.tar")
    parser.add_argument("--dst", required=True, metavar="PREFIX", help="checkpoint prefix to write")
    add_config_args(parser)
    parser.add_argument("--flow-only", action="store_true",
                        help="the file is a pre-trained Flow++ ({'net': ...}); write a flow checkpoint")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing PREFIX")
    args = parser.parse_args(argv)
    cfg = load_config(args.config, args.override)

    from paddle_coopflow import official

    t0 = time.time()
    official.check_destination(args.dst, args.overwrite)  # fail before reading a large file
    ckpt = official.read_official(args.src)  # file-level errors come before paddle is even imported
    official.check_layout(ckpt, args.flow_only)
    import paddle

    paddle.set_device("cpu")  # converting never needs a GPU
    converted = official.convert(ckpt, cfg, flow_only=args.flow_only)
    prefix = official.save_converted(args.dst, cfg, converted, overwrite=args.overwrite)
    src = converted.source
    nets = "flow + EBM" if converted.ebm is not None else "flow"
    epoch = f", epoch {src.epoch}" if src.epoch is not None else ""
    print(f"converted {args.src} ({src.layout} layout{epoch}: {nets}) to {prefix}.pdparams/.pdopt/.pdstates "
          f"in {time.time() - t0:.1f}s")
    if converted.ebm is not None:
        print(f"next: python tools/sample.py --ckpt {prefix} --num 64 --out out/{src.layout}_samples")
    else:
        print(f"next: python tools/train.py -c {args.config} -o Train.pretrain_epochs=0 "
              f"-o Train.init_flow={prefix}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
