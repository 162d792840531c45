"""Paddle's CPU kernels behind the flow's training pass: the facts docs/speed.md's "What limits the flow's
training pass" rests on, measured on this machine.

Run by hand, never in CI:
    python bench/bench_kernels.py                  # all three parts, ~1 min on a 2-core machine
    python bench/bench_kernels.py --parts grads    # one part

Parts:
  kernels  elementwise kernels (exp, softmax, ELU, add) at 1 and 2 threads: Paddle dygraph, the same op as a
           static oneDNN program, PyTorch eager (if installed); milliseconds, medians.
  grads    gradient ops inside a static program run with oneDNN (`paddle.grad` in to_static, inputs only, no
           parameters): each small function in its own process (some abort), its gradients against dygraph
           (relative max error; "abort" when the process died).
  conv     a 3×3 conv's backward: the swapped-conv weight gradient the package uses (models/conv_grads.py) vs
           Paddle's conv2d_grad (oneDNN backward-weights primitive) in a program; time and whether the
           weight gradient is the same bits at 1 and 2 threads.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import paddle_coopflow  # noqa: E402,F401  (quiet paddle start-up)

GRAD_CASES = ("conv3x3", "conv1x1", "elu", "layer_norm", "weight_norm", "glu", "tanh", "clip", "split")


def _median_ms(fn, n: int = 10) -> float:
    import numpy as np

    for _ in range(3):
        fn()
    ts = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return float(np.median(ts)) * 1e3


def _program(fn, shapes):
    """fn(a, b, c) (three tensors of `shapes`) as a static program run with oneDNN (the package's CPU_FLAGS),
    outputs detached."""
    import paddle
    import paddle.nn as nn

    from paddle_coopflow.accel.program import CPU_FLAGS, detached

    class Wrap(nn.Layer):
        def forward(self, a, b, c):
            return detached(fn(a, b, c))

    layer = Wrap()
    layer.training = False
    static = paddle.jit.to_static(layer, input_spec=[paddle.static.InputSpec(s) for s in shapes], full_graph=True)

    def run(*inputs):
        old = paddle.get_flags(list(CPU_FLAGS))
        paddle.set_flags(dict(CPU_FLAGS))
        try:
            return static(*inputs)
        finally:
            paddle.set_flags(old)
    return run


def _input_grads(fn):
    """(a, b, c) → (∂/∂a, ∂/∂b) of ⟨c, fn(a, b)⟩ by paddle.grad (in dygraph or traced into a program)."""
    import paddle

    def grads(a, b, c):
        a, b = a.detach(), b.detach()
        a.stop_gradient = b.stop_gradient = False
        return tuple(paddle.grad([fn(a, b)], [a, b], grad_outputs=[c]))
    return grads


def part_kernels(shape) -> None:
    import paddle
    import paddle.nn.functional as F

    from paddle_coopflow.utils.env import setup_threads

    try:
        import torch
    except ImportError:
        torch = None
    ops = {"exp": paddle.exp, "softmax": lambda a: F.softmax(a, -1), "elu": F.elu, "add": lambda a: a + a}
    tops = {} if torch is None else {"exp": torch.exp, "softmax": lambda a: torch.softmax(a, -1),
                                     "elu": torch.nn.functional.elu, "add": lambda a: a + a}
    x = paddle.randn(shape)
    print(f"\n## kernels on {shape} (ms, medians of 10): Paddle dygraph / oneDNN program / PyTorch eager")
    print("| threads | " + " | ".join(ops) + " |\n|---|" + "---|" * len(ops))
    for n in (1, 2):
        setup_threads(n)   # new programs: oneDNN primitives keep the thread count of a program's first run
        progs = {name: _program(lambda a, b, c, f=f: (f(a),), [shape] * 3) for name, f in ops.items()}
        if torch is not None:
            torch.set_num_threads(n)
        tx = None if torch is None else torch.from_numpy(x.numpy())
        cells = []
        for name, f in ops.items():
            d, p = _median_ms(lambda: f(x)), _median_ms(lambda: progs[name](x, x, x))
            t = _median_ms(lambda: tops[name](tx)) if torch is not None else float("nan")
            cells.append(f"{d:.1f} / {p:.1f} / {t:.1f}")
        print(f"| {n} | " + " | ".join(cells) + " |")


def _grad_case_fn(case: str):
    import paddle
    import paddle.nn.functional as F

    def fn(x, w):
        if case == "conv3x3":
            return F.conv2d(x, w[:16 * 16 * 9].reshape([16, 16, 3, 3]), padding=1)
        if case == "conv1x1":
            return F.conv2d(x, w[:256].reshape([16, 16, 1, 1]))
        if case == "elu":
            return F.elu(paddle.concat([x, -x], 1)) * w.mean()
        if case == "layer_norm":
            return F.layer_norm(x.transpose([0, 2, 3, 1]), [16], weight=w[:16], bias=w[16:32], epsilon=1e-5)
        if case == "weight_norm":
            v, g = w[:256].reshape([16, 16, 1, 1]), w[256:272].reshape([16, 1, 1, 1])
            return F.conv2d(x, v * (g / paddle.sqrt(paddle.sum(v * v, axis=[1, 2, 3], keepdim=True))))
        if case == "glu":
            a, b = paddle.chunk(x, 2, axis=1)
            return a * F.sigmoid(b) * w.mean()
        if case == "tanh":
            return paddle.tanh(x) * w.mean()
        if case == "clip":
            return paddle.clip(x * w.mean(), min=-0.5)
        a, b = paddle.split(x.reshape([8, 2, 8, 16, 16]), [1, 1], axis=1)   # split
        return a.squeeze(1) * b.squeeze(1) * w.mean()
    return fn


def grad_case(case: str) -> None:
    """One case of part 'grads' (in its own process): prints the two relative errors (∂x, ∂w)."""
    import paddle

    fn = _grad_case_fn(case)
    paddle.seed(0)
    x, w = paddle.randn([8, 16, 16, 16]), paddle.rand([16 * 16 * 9]) + 0.5
    with paddle.no_grad():
        g = paddle.randn(fn(x, w).shape)

    grads = _input_grads(fn)
    got = _program(grads, [x.shape, w.shape, g.shape])(x, w, g)
    ref = grads(x, w, g)
    errs = [float((o - r).abs().max()) / float(r.abs().max()) for o, r in zip(got, ref)]
    print("RESULT %.1e %.1e" % tuple(errs))


def part_grads() -> None:
    print("\n## gradient ops in a static oneDNN program against dygraph (relative max error of ∂x, ∂w)")
    print("| function | ∂x | ∂w |\n|---|---|---|")
    for case in GRAD_CASES:
        p = subprocess.run([sys.executable, __file__, "--grad-case", case], capture_output=True, text=True)
        line = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
        if p.returncode == 0 and line:
            cells = line[0].split()[1:]
        else:   # a negative code is the signal that killed the process
            cells = [f"abort (signal {-p.returncode})" if p.returncode < 0 else f"error (exit {p.returncode})"] * 2
        print(f"| {case} | {cells[0]} | {cells[1]} |")


def part_conv(shape, c_out: int) -> None:
    import numpy as np
    import paddle

    from paddle_coopflow.models.conv_grads import conv_input_grad, conv_weight_grad
    from paddle_coopflow.utils.env import setup_threads

    n, c_in, h, w_ = shape
    rng = np.random.RandomState(0)
    x = paddle.to_tensor(rng.randn(*shape).astype("float32"))
    w = paddle.to_tensor(rng.randn(c_out, c_in, 3, 3).astype("float32") * 0.1)
    g = paddle.to_tensor(rng.randn(n, c_out, h, w_).astype("float32"))
    shapes = [list(x.shape), list(w.shape), list(g.shape)]

    conv2d_grad = _input_grads(lambda a, b: paddle.nn.functional.conv2d(a, b, padding=1))

    print(f"\n## backward of a 3×3 conv {shape} → {c_out} channels (ms, medians of 10)")
    print("| threads | flipped + swapped convs (the package) | conv2d_grad program |\n|---|---|---|")
    dw = {}
    for k in (1, 2):
        setup_threads(k)   # before building (as above)
        ours = _program(lambda a, b, c: (conv_input_grad(c, b, 1), conv_weight_grad(a, c, 1)), shapes)
        theirs = _program(conv2d_grad, shapes)
        dw[k] = (ours(x, w, g)[1].numpy(), theirs(x, w, g)[1].numpy())
        print(f"| {k} | {_median_ms(lambda: ours(x, w, g)):.2f} | {_median_ms(lambda: theirs(x, w, g)):.2f} |")
    same = [bool(np.array_equal(dw[1][i], dw[2][i])) for i in (0, 1)]
    print(f"weight gradient identical at 1 and 2 threads: package {same[0]}, conv2d_grad {same[1]}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", nargs="+", default=["kernels", "grads", "conv"], choices=["kernels", "grads", "conv"])
    ap.add_argument("--shape", type=int, nargs=4, default=[4, 4, 1024, 1024], help="tensor of part 'kernels'")
    ap.add_argument("--conv-shape", type=int, nargs=4, default=[32, 16, 32, 16], help="conv input of part 'conv'")
    ap.add_argument("--conv-out", type=int, default=42)
    ap.add_argument("--grad-case", choices=GRAD_CASES, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.grad_case:
        grad_case(args.grad_case)
        return 0
    from paddle_coopflow.utils.env import cpuinfo

    print(f"# {cpuinfo('model name')}, {os.cpu_count()} logical cores; load average {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    if "kernels" in args.parts:
        part_kernels(args.shape)
    if "grads" in args.parts:
        part_grads()
    if "conv" in args.parts:
        part_conv(args.conv_shape, args.conv_out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
