"""Convert pytorch-fid's FID Inception weights (.pth) to a Paddle .pdparams.

    python tools/convert_inception.py pt_inception-2015-12-05-6726825d.pth \
        -o inception_fid.pdparams

torch is not needed (paddle_coopflow.utils.pth_reader parses the file with an
allow-list unpickler: a file naming anything but tensors is refused, nothing in it
runs). The result is checked by loading it into the network; pass either file to
-o Eval.inception_weights=PATH. Converting is optional: the .pth loads directly.
"""
from __future__ import annotations

import argparse
import os
import sys

import _bootstrap  # noqa: F401  (repo root on sys.path)

import paddle_coopflow  # noqa: F401  (quietens paddle before it is imported)
from paddle_coopflow.cli import run_cli
from paddle_coopflow.errors import UserError


def convert(src: str, dst: str) -> int:
    """Load `src` strictly into the FID network and save its state dict to `dst`.

    Returns the number of tensors written (Paddle names, e.g. `Conv2d_1a_3x3.bn._mean`).
    """
    import paddle

    from paddle_coopflow.metrics.inception import build_fid_inception

    net = build_fid_inception(weights=src)
    state = net.state_dict()
    os.makedirs(os.path.dirname(os.path.abspath(dst)), exist_ok=True)
    tmp = dst + ".tmp"
    try:
        paddle.save(state, tmp)
    except BaseException as err:  # a full disk or an interrupt: no half-written file stays behind
        if os.path.exists(tmp):
            os.remove(tmp)
        if isinstance(err, OSError):
            raise UserError(f"cannot write {dst} ({err.strerror or err}); nothing was written") from None
        raise
    os.replace(tmp, dst)  # never leave a half-written file under the final name
    return len(state)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("src", help="pt_inception-2015-12-05-6726825d.pth")
    ap.add_argument("-o", "--out", default="", help="output .pdparams (default: next to src)")
    args = ap.parse_args(argv)
    dst = args.out or os.path.splitext(args.src)[0] + ".pdparams"
    if not dst.endswith(".pdparams"):
        raise UserError(f"the output name must end with .pdparams, got '{dst}'")
    n = convert(args.src, dst)
    print(f"wrote {n} tensors to {dst}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
