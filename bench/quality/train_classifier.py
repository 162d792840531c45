"""Train the small CIFAR-10 classifier whose features define the proxy FID/KID (bench/quality).

    python bench/quality/train_classifier.py --train-dir CIFAR10_TRAIN --test-dir CIFAR10_TEST

--train-dir and --test-dir are class-per-folder copies of CIFAR-10 (32x32 images, one
sub-folder per class, the same class names in both). The decoded pixels are cached as an
.npz in --out, so a second run skips JPEG decoding. Training: SGD with Nesterov momentum
(or Adam), a linear warm-up then linear decay of the learning rate, random crop with
4-pixel zero padding and horizontal flips, on ONE math thread by default.

Writes into --out (default ~/.cache/paddle_coopflow/quality/):
  classifier.pdparams              the SmallCNN weights
  features.json + .pdiparams       paddle.jit.save'd feature extractor: input float32
                                   [N, 3, 32, 32] in [-1, 1], output [N, D]; load it with
                                   paddle.jit.load(OUT + '/features')
  classifier_info.json             test accuracy, epochs, D, image counts, seconds
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from typing import Dict, Tuple

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import paddle_coopflow  # noqa: E402,F401  (quiet paddle start-up)
from paddle_coopflow.cli import run_cli  # noqa: E402
from paddle_coopflow.errors import UserError  # noqa: E402

DEFAULT_OUT = os.path.join("~", ".cache", "paddle_coopflow", "quality")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train-dir", required=True, help="class-per-folder training images (32x32)")
    p.add_argument("--test-dir", required=True, help="class-per-folder test images, same class names")
    p.add_argument("--out", default=DEFAULT_OUT, help="output directory (default: %(default)s)")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--threads", type=int, default=1, help="math threads (default 1)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--optimizer", choices=("sgd", "adam"), default="sgd")
    p.add_argument("--lr", type=float, default=0.0, help="peak learning rate (0: 0.1 for sgd, 2e-3 for adam)")
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--width", type=int, default=32, help="channels of the first conv")
    p.add_argument("--feat-dim", type=int, default=256, help="D, the feature dimension")
    p.add_argument("--train-subset", type=int, default=0, help="train on a seeded random subset (0: all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--log-every", type=int, default=50, help="steps between log lines")
    args = p.parse_args(argv)
    if args.epochs < 1 or args.batch_size < 1 or args.threads < 1:
        raise UserError("--epochs, --batch-size and --threads must be >= 1")
    if args.lr <= 0:
        args.lr = 0.1 if args.optimizer == "sgd" else 2e-3
    args.out = os.path.abspath(os.path.expanduser(args.out))
    return args


def augment(images_u8: np.ndarray, rng: np.random.RandomState, pad: int = 4) -> np.ndarray:
    """Random crop with `pad` zero pixels around, then a random horizontal flip.

    Args:
        images_u8: uint8 [B, H, W, 3].
    Returns:
        float32 [B, 3, H, W] in [-1, 1].
    """
    from bench.quality.data import to_model_input

    b, h, w, _ = images_u8.shape
    padded = np.pad(images_u8, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    dy = rng.randint(0, 2 * pad + 1, size=b)
    dx = rng.randint(0, 2 * pad + 1, size=b)
    rows = (dy[:, None] + np.arange(h))[:, :, None]
    cols = (dx[:, None] + np.arange(w))[:, None, :]
    crops = padded[np.arange(b)[:, None, None], rows, cols]
    flip = rng.rand(b) < 0.5
    crops[flip] = crops[flip, :, ::-1]
    return to_model_input(crops)


def lr_at(step: int, total: int, peak: float, warmup: float = 0.15) -> float:
    """Linear warm-up over the first `warmup` fraction of `total` steps, then linear decay to 0."""
    w = max(1, int(total * warmup))
    if step < w:
        return peak * (step + 1) / w
    return peak * max(0.0, (total - step) / max(1, total - w))


def evaluate(net, images_u8: np.ndarray, labels: np.ndarray, batch_size: int = 500) -> float:
    """Top-1 accuracy of `net` (eval mode) on uint8 [N, 32, 32, 3] images with labels [N]."""
    import paddle

    from bench.quality.data import to_model_input

    net.eval()
    correct = 0
    with paddle.no_grad():
        for i in range(0, len(images_u8), batch_size):
            logits = net(paddle.to_tensor(to_model_input(images_u8[i:i + batch_size])))
            correct += int((logits.argmax(axis=1).numpy() == labels[i:i + batch_size]).sum())
    return correct / max(1, len(images_u8))


def train_epoch(net, opt, data: Tuple[np.ndarray, np.ndarray], rng: np.random.RandomState,
                sched: Dict, args: argparse.Namespace, t0: float) -> float:
    """One pass over shuffled `data` (uint8 [N, 32, 32, 3], labels [N]); returns training accuracy.

    `sched` holds the global 'step' (advanced here) and 'total' steps of the run.
    """
    import paddle
    import paddle.nn.functional as F

    images, labels = data
    net.train()
    order = rng.permutation(len(images))
    n_seen = n_correct = 0
    for i in range(0, len(order), args.batch_size):
        idx = order[i:i + args.batch_size]
        x = paddle.to_tensor(augment(images[idx], rng))
        y = paddle.to_tensor(labels[idx])
        opt.set_lr(lr_at(sched["step"], sched["total"], args.lr))
        logits = net(x)
        loss = F.cross_entropy(logits, y)
        loss.backward()
        opt.step()
        opt.clear_grad()
        sched["step"] += 1
        n_seen += len(idx)
        n_correct += int((logits.argmax(axis=1).numpy() == labels[idx]).sum())
        if sched["step"] % args.log_every == 0:
            dt = time.time() - t0
            print(f"step {sched['step']}/{sched['total']}  loss {loss.item():.3f}  train acc "
                  f"{n_correct / n_seen:.3f}  lr {opt.get_lr():.4f}  {dt:.0f}s", flush=True)
    return n_correct / max(1, n_seen)


def load_data(args: argparse.Namespace):
    """(train images, train labels), (test images, test labels), class names; test relabelled by name."""
    from bench.quality.data import list_class_folder, load_class_folder, relabel

    list_class_folder(args.test_dir)  # a bad --test-dir fails before the long decode of --train-dir
    train_x, train_y, classes = load_class_folder(args.train_dir, cache_dir=args.out)
    test_x, test_y, test_classes = load_class_folder(args.test_dir, cache_dir=args.out)
    test_y = relabel(test_y, test_classes, classes, f"--test-dir '{args.test_dir}'")
    if args.train_subset:
        keep = np.random.RandomState(args.seed).permutation(len(train_x))[:args.train_subset]
        train_x, train_y = train_x[keep], train_y[keep]
    return (train_x, train_y), (test_x, test_y), classes


def export_and_check(net, out: str, test_x: np.ndarray) -> Tuple[str, float]:
    """Save weights + the jit feature extractor; returns (prefix, max |jit - dygraph| on 100 test images)."""
    import paddle

    from bench.quality.classifier import export_features
    from bench.quality.data import to_model_input

    paddle.save(net.state_dict(), os.path.join(out, "classifier.pdparams"))
    prefix = os.path.join(out, "features")
    export_features(net, prefix)
    x = paddle.to_tensor(to_model_input(test_x[:100]))
    with paddle.no_grad():
        ref = net.features(x).numpy()
        got = paddle.jit.load(prefix)(x).numpy()
    return prefix, float(np.abs(got - ref).max())


def main(argv=None) -> int:
    args = parse_args(argv)
    import paddle

    from bench.quality.classifier import SmallCNN
    from paddle_coopflow.utils.env import seed_everything, setup_threads

    t_start, cpu_start = time.time(), time.process_time()
    # Paddle warns on every train-mode BatchNorm build that it tracks running statistics: it is meant to.
    warnings.filterwarnings("ignore", message="When training, we now always track global mean")
    setup_threads(args.threads)
    seed_everything(args.seed)
    train, (test_x, test_y), classes = load_data(args)
    os.makedirs(args.out, exist_ok=True)
    t_loaded = time.time()
    print(f"data: {len(train[0])} train, {len(test_x)} test images, {len(classes)} classes "
          f"({t_loaded - t_start:.0f}s to load)", flush=True)
    net = SmallCNN(args.width, args.feat_dim, num_classes=len(classes))
    if args.optimizer == "sgd":
        opt = paddle.optimizer.Momentum(args.lr, momentum=0.9, use_nesterov=True, parameters=net.parameters(),
                                        weight_decay=args.weight_decay)
    else:
        opt = paddle.optimizer.AdamW(args.lr, parameters=net.parameters(), weight_decay=args.weight_decay)
    rng = np.random.RandomState(args.seed)
    sched = {"step": 0, "total": args.epochs * -(-len(train[0]) // args.batch_size)}
    history = []
    for epoch in range(args.epochs):
        train_acc = train_epoch(net, opt, train, rng, sched, args, t_loaded)
        test_acc = evaluate(net, test_x, test_y)
        history.append({"epoch": epoch + 1, "train_accuracy": train_acc, "test_accuracy": test_acc,
                        "seconds": round(time.time() - t_loaded, 1)})
        print(f"epoch {epoch + 1}/{args.epochs}: train acc {train_acc:.4f}  test acc {test_acc:.4f}  "
              f"{time.time() - t_loaded:.0f}s", flush=True)
    t_trained = time.time()
    prefix, diff = export_and_check(net, args.out, test_x)
    info = {"test_accuracy": history[-1]["test_accuracy"], "epochs": args.epochs, "feat_dim": args.feat_dim,
            "width": args.width, "num_classes": len(classes), "classes": classes,
            "train_images": int(len(train[0])), "test_images": int(len(test_x)),
            "train_dir": os.path.abspath(args.train_dir), "test_dir": os.path.abspath(args.test_dir),
            "optimizer": args.optimizer, "lr": args.lr, "batch_size": args.batch_size,
            "weight_decay": args.weight_decay, "seed": args.seed, "threads": args.threads,
            "seconds_load": round(t_loaded - t_start, 1), "seconds_train": round(t_trained - t_loaded, 1),
            "seconds_total": round(time.time() - t_start, 1),
            "cpu_seconds_total": round(time.process_time() - cpu_start, 1), "history": history,
            "features_prefix": prefix, "jit_max_abs_diff": diff, "paddle": paddle.__version__}
    with open(os.path.join(args.out, "classifier_info.json"), "w") as f:
        json.dump(info, f, indent=1)
    print(f"test accuracy {info['test_accuracy']:.4f}; features: {prefix} (D={args.feat_dim}, jit vs dygraph "
          f"max diff {diff:.2e}); {info['seconds_total']:.0f}s wall, {info['cpu_seconds_total']:.0f}s CPU",
          flush=True)
    return 0


def cli(argv=None) -> int:
    """main() with user errors as one line on stderr and exit code 2 (the tools' run_cli)."""
    return run_cli(main, argv)


if __name__ == "__main__":
    sys.exit(cli())
