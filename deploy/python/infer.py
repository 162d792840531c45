"""Generate images with an exported CoopFlow model, using Paddle Inference only.

    python deploy/python/infer.py --model_dir output/run/inference --num 64 --out samples/
        [--batch_size 16] [--seed 0] [--device cpu|gpu] [--threads 2] [--flow_only] [--noise_std S]

Standalone on purpose: it needs Paddle, NumPy and Pillow (PyYAML if installed) and nothing from the
training package, so a deployment ships only this file and the exported directory.

Writes OUT/000000.png …, OUT/grid.png and OUT/samples.npz (``images`` uint8 [N, H, W, C] and
``samples`` float32 [N, C, H, W] in [-1, 1], plus the ``z`` that produced them).

Correctness: the exported programs contain gradient ops and a bisection; with oneDNN on, Paddle
Inference fails on the former and silently corrupts the latter (oneDNN + inplace_pass), so oneDNN is
always disabled here. The CPU math library defaults to one thread; --threads sets it.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time
import warnings

os.environ.setdefault("GLOG_minloglevel", "2")
warnings.filterwarnings("ignore", message="No ccache found")

import numpy as np  # noqa: E402

MODEL_SUFFIXES = (".json", ".pdmodel")  # PIR (Paddle >= 3) first, then the old program format


class DeployError(Exception):
    """A user error: printed as one line, exit code 2."""


# ----------------------------------------------------------------------------------- files
def find_model_file(model_dir: str, name: str):
    """(program file, params file) of `name`: ``.json`` (Paddle 3 PIR) or ``.pdmodel`` (older).

    Same rule as paddle_coopflow.export.find_model_file (duplicated: no training imports here).
    """
    params = os.path.join(model_dir, name + ".pdiparams")
    for suf in MODEL_SUFFIXES:
        path = os.path.join(model_dir, name + suf)
        if os.path.isfile(path) and os.path.isfile(params):
            return path, params
    raise DeployError(f"no exported program '{name}' in {model_dir}: expected {name}.json or {name}.pdmodel "
                      f"plus {name}.pdiparams (run tools/export_model.py)")


def _scalar(text: str):
    t = text.strip()
    if len(t) >= 2 and t[0] == t[-1] and t[0] in "'\"":
        return t[1:-1].replace("''", "'") if t[0] == "'" else t[1:-1]
    low = t.lower()
    if low in ("null", "~", ""):
        return None
    if low in ("true", "false"):
        return low == "true"
    for conv in (int, float):
        try:
            return conv(t)
        except ValueError:
            pass
    return t


def parse_simple_yaml(text: str) -> dict:
    """Read the YAML subset infer_cfg.yml uses: block mappings, scalars, inline lists of scalars."""
    root: dict = {}
    stack = [(-1, root)]
    for raw in text.splitlines():
        if not raw.strip() or raw.lstrip().startswith("#"):
            continue
        indent = len(raw) - len(raw.lstrip(" "))
        key, _, value = raw.strip().partition(":")
        while indent <= stack[-1][0]:
            stack.pop()
        parent = stack[-1][1]
        value = value.strip()
        if not value:
            parent[key] = {}
            stack.append((indent, parent[key]))
        elif value.startswith("["):
            inner = value.strip("[]").strip()
            parent[key] = [_scalar(v) for v in inner.split(",")] if inner else []
        else:
            parent[key] = _scalar(value)
    return root


def read_infer_cfg(model_dir: str) -> dict:
    path = os.path.join(model_dir, "infer_cfg.yml")
    if not os.path.isfile(path):
        raise DeployError(f"{path} not found: --model_dir must be an export directory (tools/export_model.py)")
    with open(path) as fh:
        text = fh.read()
    try:
        import yaml
    except ImportError:  # PyYAML is optional for a deployment
        return parse_simple_yaml(text)
    return yaml.safe_load(text)


# ----------------------------------------------------------------------------------- predictor
def create_predictor(model_dir: str, name: str, device: str = "cpu", threads: int = 0):
    """A Paddle Inference predictor for program `name`, configured for correct results.

    A Config serves one predictor only, so a fresh one is built on every call.
    """
    import paddle.inference as pi

    model, params = find_model_file(model_dir, name)
    cfg = pi.Config(model, params)
    cfg.disable_glog_info()
    if device == "gpu":
        import paddle

        if not paddle.is_compiled_with_cuda():
            raise DeployError("--device gpu needs paddlepaddle-gpu; this Paddle build is CPU-only (use --device cpu)")
        cfg.enable_use_gpu(256, 0)
    else:
        cfg.disable_gpu()
        # REQUIRED: grad ops fail under oneDNN and the bisection is silently wrong with oneDNN + inplace_pass
        cfg.disable_mkldnn()
        cfg.set_cpu_math_library_num_threads(threads or os.cpu_count() or 1)
    return pi.create_predictor(cfg)


def run_predictor(predictor, feeds):
    """feeds: list of float32 arrays in input order → list of output arrays."""
    for name, arr in zip(predictor.get_input_names(), feeds):
        h = predictor.get_input_handle(name)
        h.reshape(list(arr.shape))
        h.copy_from_cpu(np.ascontiguousarray(arr, dtype=np.float32))
    predictor.run()
    return [predictor.get_output_handle(n).copy_to_cpu() for n in predictor.get_output_names()]


# ----------------------------------------------------------------------------------- images
def to_uint8(x: np.ndarray) -> np.ndarray:
    """[N, C, H, W] in [-1, 1] → [N, H, W, C] uint8."""
    return np.clip((x + 1.0) * 127.5 + 0.5, 0, 255).astype(np.uint8).transpose(0, 2, 3, 1)


def make_grid(images: np.ndarray, pad: int = 2) -> np.ndarray:
    """[N, H, W, C] uint8 → one [H', W', C] uint8 grid, ceil(sqrt(N)) per row, white padding."""
    n, h, w, c = images.shape
    ncol = int(math.ceil(math.sqrt(n)))
    nrow = int(math.ceil(n / ncol))
    grid = np.full((nrow * (h + pad) + pad, ncol * (w + pad) + pad, c), 255, np.uint8)
    for i in range(n):
        r, q = divmod(i, ncol)
        grid[pad + r * (h + pad): pad + r * (h + pad) + h, pad + q * (w + pad): pad + q * (w + pad) + w] = images[i]
    return grid


def save_image(arr: np.ndarray, path: str) -> None:
    from PIL import Image

    Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr).save(path)


# ----------------------------------------------------------------------------------- main
def _check_version(info: dict) -> None:
    import paddle

    exported = str(info.get("paddle_version", "?"))
    if exported != paddle.__version__:
        print(f"warning: model exported with Paddle {exported}, running with Paddle {paddle.__version__}; "
              "if results look wrong, re-export with this version", file=sys.stderr)


def generate(model_dir: str, num: int, batch_size: int, seed: int, device: str = "cpu", threads: int = 0,
             flow_only: bool = False, noise_std=None):
    """Draw z (and Langevin noise) with NumPy and run the sampler → (samples [N,C,H,W], z, seconds)."""
    info = read_infer_cfg(model_dir)
    _check_version(info)
    name = "flow_generator" if flow_only else "coopflow_sampler"
    programs = info.get("programs") or {}
    if name not in programs:
        hint = "; use --flow_only" if "flow_generator" in programs else "; export it with tools/export_model.py"
        raise DeployError(f"{model_dir} has no '{name}' program (exported: {sorted(programs)}){hint}")
    pred = create_predictor(model_dir, name, device, threads)
    c, h, w = [int(v) for v in info["image_shape"]]
    lg = info.get("langevin") or {}
    use_noise = (not flow_only) and bool(lg.get("noise_input"))
    std = float(lg.get("noise_std") or 0.0) if noise_std is None else float(noise_std)
    rng = np.random.RandomState(seed)
    outs, zs, seconds = [], [], 0.0
    for start in range(0, num, batch_size):
        b = min(batch_size, num - start)
        z = rng.standard_normal((b, c, h, w)).astype(np.float32)
        feeds = [z]
        if use_noise:
            feeds.append((std * rng.standard_normal((int(lg["n_steps"]), b, c, h, w))).astype(np.float32))
        t0 = time.perf_counter()
        outs.append(run_predictor(pred, feeds)[0])
        seconds += time.perf_counter() - t0
        zs.append(z)
    return np.concatenate(outs), np.concatenate(zs), seconds


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model_dir", required=True, help="export directory (holds infer_cfg.yml)")
    p.add_argument("--num", type=int, default=64, help="images to generate")
    p.add_argument("--out", required=True, help="output directory for PNGs, grid.png and samples.npz")
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    p.add_argument("--threads", type=int, default=0, help="CPU math threads (0 = all cores)")
    p.add_argument("--flow_only", action="store_true", help="run flow_generator only (no Langevin revision)")
    p.add_argument("--noise_std", type=float, default=None,
                   help="Langevin noise σ for samplers exported with a noise input (default: infer_cfg.yml)")
    args = p.parse_args(argv)
    if args.num < 1 or args.batch_size < 1:
        raise DeployError("--num and --batch_size must be >= 1")
    samples, z, seconds = generate(args.model_dir, args.num, args.batch_size, args.seed, args.device,
                                   args.threads, args.flow_only, args.noise_std)
    images = to_uint8(samples)
    os.makedirs(args.out, exist_ok=True)
    for i, img in enumerate(images):
        save_image(img, os.path.join(args.out, f"{i:06d}.png"))
    save_image(make_grid(images), os.path.join(args.out, "grid.png"))
    np.savez(os.path.join(args.out, "samples.npz"), images=images, samples=samples.astype(np.float32), z=z)
    prog = "flow_generator" if args.flow_only else "coopflow_sampler"
    print(f"{prog}: {len(images)} images in {seconds:.2f}s ({len(images) / max(seconds, 1e-9):.2f} img/s) "
          f"-> {args.out}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except DeployError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
