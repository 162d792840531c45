"""Generate images with an exported CoopFlow model, using Paddle Inference only.

    python deploy/python/infer.py --model_dir output/run/inference --num 64 --out samples/
        [--batch_size 16] [--seed 0] [--device cpu|gpu] [--threads 2] [--flow_only] [--noise_std S]
        [--sampler auto|fused|stepwise] [--onednn auto|on|off]

Standalone on purpose: it needs Paddle, NumPy and Pillow (PyYAML if installed) and nothing from the
training package, so a deployment ships only this file and the exported directory.

Writes OUT/000000.png …, OUT/grid.png and OUT/samples.npz (``images`` uint8 [N, H, W, C] and
``samples`` float32 [N, C, H, W] in [-1, 1], plus the ``z`` that produced them).

Two samplers give the same samples for the same seed:
- fused: the single ``coopflow_sampler`` program (flow⁻¹ + T steps in a while op, ∇ₓf by gradient ops).
- stepwise: ``flow_generator``, then the grad-free ``langevin_step`` program looped T times in Python,
  fed the noise of each step. Exported for EBMRes only; with oneDNN it is the fast CPU sampler.
--sampler auto (default) takes stepwise when ``langevin_step`` was exported and the device is CPU.

oneDNN: the programs with gradient ops fail under it, and oneDNN + inplace_pass silently corrupts the
flow inverse (both the bisection and the fast Newton inverse: errors up to 2), so every program runs
with oneDNN off except those infer_cfg.yml marks ``onednn: true`` (``langevin_step``), which run with
oneDNN on unless --onednn off. The CPU math library defaults to one thread; --threads sets it.
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
    """(program file, params file) of `name`: ``.json`` (Paddle 3 PIR) or ``.pdmodel`` (older)."""
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


# ----------------------------------------------------------------------------------- params check
# Bytes per element of Paddle's VarType data types (framework.proto) that exported programs hold.
_DTYPE_BYTES = {0: 1, 1: 2, 2: 4, 3: 8, 4: 2, 5: 4, 6: 8, 20: 1, 21: 1, 22: 2, 23: 8, 24: 16, 32: 1, 33: 1}


def _varint(buf: bytes, i: int):
    out, shift = 0, 0
    while True:
        b = buf[i]  # IndexError past the end: the caller reports a corrupt file
        out, i, shift = out | (b & 0x7F) << shift, i + 1, shift + 7
        if not b & 0x80:
            return out, i


def _tensor_bytes(desc: bytes) -> int:
    """Data bytes of a serialized VarType.TensorDesc (field 1 data type, field 2 dims)."""
    dtype, numel, i = None, 1, 0
    while i < len(desc):
        key, i = _varint(desc, i)
        if key & 7 == 0:  # varint: the data type, or one unpacked dim
            v, i = _varint(desc, i)
            dtype, numel = (v, numel) if key >> 3 == 1 else (dtype, numel * v if key >> 3 == 2 else numel)
        elif key & 7 == 2:  # length-delimited: packed dims, or a field not needed here
            n, i = _varint(desc, i)
            j, i = i, i + n
            while key >> 3 == 2 and j < i:
                v, j = _varint(desc, j)
                numel *= v
        else:
            raise ValueError(f"unexpected protobuf wire type {key & 7}")
    if dtype not in _DTYPE_BYTES:
        raise ValueError(f"a tensor of unknown data type {dtype}")
    return numel * _DTYPE_BYTES[dtype]


def _uint(buf: bytes, i: int, n: int, what: str) -> int:
    """The little-endian unsigned integer of `n` bytes at `i`; ValueError when the file ends first."""
    if i + n > len(buf):
        raise ValueError(f"the file ends inside a tensor's {what}")
    return int.from_bytes(buf[i:i + n], "little")


def _next_tensor(buf: bytes, i: int) -> int:
    """Offset after the tensor at `i`: every count read from the file is bounded by the file's size.

    Layout: uint32 version 0, uint64 LoD levels, per level uint64 byte size + offsets, uint32
    version 0, int32 TensorDesc size, the TensorDesc, the raw data.
    """
    if _uint(buf, i, 4, "version") != 0:
        raise ValueError(f"byte {i}: tensor version {_uint(buf, i, 4, 'version')} (Paddle writes 0)")
    levels, i = _uint(buf, i + 4, 8, "LoD level count"), i + 12
    if levels > (len(buf) - i) // 8:
        raise ValueError(f"a LoD level count of {levels} at byte {i - 8} exceeds what the file can hold")
    for _ in range(levels):
        size, i = _uint(buf, i, 8, "LoD size"), i + 8
        if size > len(buf) - i:
            raise ValueError(f"a LoD of {size} bytes at byte {i - 8} runs past the end of the file")
        i += size
    if _uint(buf, i, 4, "version") != 0:
        raise ValueError(f"byte {i}: tensor data version {_uint(buf, i, 4, 'version')} (Paddle writes 0)")
    size = _uint(buf, i + 4, 4, "header size")
    if size > len(buf) - i - 8:
        raise ValueError("a tensor header runs past the end of the file")
    data = _tensor_bytes(buf[i + 8:i + 8 + size])
    if data > len(buf) - i - 8 - size:
        raise ValueError(f"a tensor of {data} bytes at byte {i + 8 + size} runs past the end of the file")
    return i + 8 + size + data


def check_params_file(path: str) -> None:
    """Raise DeployError when a .pdiparams is truncated or corrupt.

    Paddle Inference does not check that a tensor's data is all there: a file cut inside a tensor loads,
    runs and gives wrong numbers, and a count read from damaged bytes can make it loop for hours. The
    file is a sequence of tensors (:func:`_next_tensor`); every one must lie inside the file and together
    they must fill it exactly.
    """
    with open(path, "rb") as fh:
        buf = fh.read()
    i, fix = 0, "export the model again (tools/export_model.py)"
    if not buf:
        raise DeployError(f"{path} is empty; {fix}")
    try:
        while i < len(buf):
            i = _next_tensor(buf, i)
    except (ValueError, IndexError) as err:
        raise DeployError(f"{path} is truncated or corrupt ({err}); {fix}") from None


# ----------------------------------------------------------------------------------- predictor
def create_predictor(model_dir: str, name: str, device: str = "cpu", threads: int = 0, onednn: bool = False):
    """A Paddle Inference predictor for program `name`, configured for correct results.

    A Config serves one predictor only, so a fresh one is built on every call. `onednn` (CPU only) is
    for programs infer_cfg.yml marks ``onednn: true``; every other program must run with it off.
    """
    import paddle.inference as pi

    model, params = find_model_file(model_dir, name)
    check_params_file(params)
    cfg = pi.Config(model, params)
    cfg.disable_glog_info()
    if device == "gpu":
        import paddle

        if not paddle.is_compiled_with_cuda():
            raise DeployError("--device gpu needs paddlepaddle-gpu; this Paddle build is CPU-only (use --device cpu)")
        cfg.enable_use_gpu(256, 0)
    else:
        cfg.disable_gpu()
        if onednn:
            cfg.enable_mkldnn()
        else:
            # REQUIRED for all but langevin_step: grad ops fail under oneDNN, and the flow inverse is
            # silently wrong with oneDNN + inplace_pass
            cfg.disable_mkldnn()
        cfg.set_cpu_math_library_num_threads(threads or os.cpu_count() or 1)
    try:
        return pi.create_predictor(cfg)
    except (RuntimeError, ValueError, OSError) as err:  # Paddle's C++ errors arrive as RuntimeError
        detail = " ".join(str(err).split())[:300]
        raise DeployError(f"cannot load program '{name}' from {model_dir} ({type(err).__name__}: {detail}); "
                          "export the model again (tools/export_model.py)") from None


def run_predictor(predictor, feeds, names=None):
    """feeds: list of float32 arrays in input order (or in the order of `names`) → list of output arrays."""
    for name, arr in zip(names or predictor.get_input_names(), feeds):
        h = predictor.get_input_handle(name)
        h.reshape(list(arr.shape))
        h.copy_from_cpu(np.ascontiguousarray(arr, dtype=np.float32))
    predictor.run()
    return [predictor.get_output_handle(n).copy_to_cpu() for n in predictor.get_output_names()]


# ----------------------------------------------------------------------------------- samplers
SAMPLERS = ("auto", "fused", "stepwise")
ONEDNN_CHOICES = ("auto", "on", "off")


def choose_sampler(info: dict, sampler: str = "auto", device: str = "cpu") -> str:
    """'fused' or 'stepwise' for `sampler`.

    auto → stepwise iff flow_generator and langevin_step were exported and the device is CPU, else fused.

    Raises:
        DeployError: the sampler's programs are not in the export (one line, with the fix).
    """
    programs = info.get("programs") or {}
    if sampler not in SAMPLERS:
        raise DeployError(f"--sampler {sampler!r} is invalid; use one of {SAMPLERS}")
    stepwise_ok = "flow_generator" in programs and "langevin_step" in programs
    chosen = sampler if sampler != "auto" else ("stepwise" if stepwise_ok and device == "cpu" else "fused")
    need = ["coopflow_sampler"] if chosen == "fused" else ["flow_generator", "langevin_step"]
    missing = [n for n in need if n not in programs]
    if missing:
        if chosen == "stepwise":
            hint = "langevin_step is exported for EBM.arch res only; use --sampler fused"
        elif stepwise_ok:
            hint = "use --sampler stepwise"
        else:
            hint = "use --flow_only" if "flow_generator" in programs else "export it with tools/export_model.py"
        raise DeployError(f"the export has no {' / '.join(missing)} program for "
                          f"the {chosen} sampler (exported: {sorted(programs)}); {hint}")
    return chosen


def step_uses_onednn(info: dict, onednn: str = "auto", device: str = "cpu") -> bool:
    """Whether the langevin_step predictor runs with oneDNN: auto → as infer_cfg.yml marks it (CPU only)."""
    if onednn not in ONEDNN_CHOICES:
        raise DeployError(f"--onednn {onednn!r} is invalid; use one of {ONEDNN_CHOICES}")
    if device != "cpu" or onednn == "off":
        return False
    marked = bool(((info.get("programs") or {}).get("langevin_step") or {}).get("onednn"))
    return onednn == "on" or marked


class Sampler:
    """The CoopFlow sampler of an export directory: the fused program or the stepwise loop.

    Call: z [N, C, H, W] (, eps [T, N, C, H, W] = σ·N(0, I), only if the export has a noise input)
    → x̃ [N, C, H, W]. Both samplers give the same result for the same (z, eps).

    Args:
        model_dir: export directory.
        info: its infer_cfg.yml (read_infer_cfg).
        sampler: 'auto', 'fused' or 'stepwise' (see choose_sampler).
        device, threads: as create_predictor.
        onednn: 'auto', 'on' or 'off' for the langevin_step predictor (see step_uses_onednn).
    """

    def __init__(self, model_dir: str, info: dict, sampler: str = "auto", device: str = "cpu", threads: int = 0,
                 onednn: str = "auto"):
        self.kind = choose_sampler(info, sampler, device)
        lg = info.get("langevin") or {}
        self.n_steps = int(lg.get("n_steps") or 0)
        self.step_size = float(lg.get("step_size") or 0.0)
        self.noise_input = bool(lg.get("noise_input"))
        self.onednn = False
        if self.kind == "fused":
            self.sampler = create_predictor(model_dir, "coopflow_sampler", device, threads)
        else:
            self.flow = create_predictor(model_dir, "flow_generator", device, threads)
            self.onednn = step_uses_onednn(info, onednn, device)
            self.step = create_predictor(model_dir, "langevin_step", device, threads, onednn=self.onednn)

    def __call__(self, z: np.ndarray, eps=None) -> np.ndarray:
        if self.noise_input and eps is None:
            raise DeployError("this export has a Langevin noise input: pass eps [T, N, C, H, W] (zeros for none)")
        if self.kind == "fused":
            return run_predictor(self.sampler, [z] + ([eps] if self.noise_input else []))[0]
        x = run_predictor(self.flow, [z])[0]
        for k in range(self.n_steps):
            # shift = s·ε, the noise term the fused program adds (ε already scaled by σ)
            feeds = [x] + ([self.step_size * eps[k]] if self.noise_input else [])
            x = run_predictor(self.step, feeds, ["x", "shift"][: len(feeds)])[0]
        return x


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
             flow_only: bool = False, noise_std=None, sampler: str = "auto", onednn: str = "auto", info_out=None):
    """Draw z (and Langevin noise) with NumPy and run the sampler → (samples [N,C,H,W], z, seconds).

    The draws do not depend on the sampler (z, then the [T, b, C, H, W] noise, per batch), so both samplers
    give the same samples for one seed. `info_out`, a dict, receives the sampler and oneDNN use.
    """
    info = read_infer_cfg(model_dir)
    _check_version(info)
    programs = info.get("programs") or {}
    if flow_only:
        if "flow_generator" not in programs:
            raise DeployError(f"{model_dir} has no 'flow_generator' program (exported: {sorted(programs)}); "
                              "export it with tools/export_model.py")
        pred = create_predictor(model_dir, "flow_generator", device, threads)
        run, used = (lambda z, eps: run_predictor(pred, [z])[0]), {"sampler": "flow_only", "onednn": False}
    else:
        run = Sampler(model_dir, info, sampler, device, threads, onednn)
        used = {"sampler": run.kind, "onednn": run.onednn}
    if info_out is not None:
        info_out.update(used)
    c, h, w = [int(v) for v in info["image_shape"]]
    lg = info.get("langevin") or {}
    use_noise = (not flow_only) and bool(lg.get("noise_input"))
    std = float(lg.get("noise_std") or 0.0) if noise_std is None else float(noise_std)
    rng = np.random.RandomState(seed)
    outs, zs, seconds = [], [], 0.0
    for start in range(0, num, batch_size):
        b = min(batch_size, num - start)
        z = rng.standard_normal((b, c, h, w)).astype(np.float32)
        eps = None
        if use_noise:
            eps = (std * rng.standard_normal((int(lg["n_steps"]), b, c, h, w))).astype(np.float32)
        t0 = time.perf_counter()
        outs.append(run(z, eps))
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
    p.add_argument("--sampler", choices=SAMPLERS, default="auto",
                   help="fused: the coopflow_sampler program; stepwise: flow_generator + langevin_step looped T "
                        "times (oneDNN); auto: stepwise if langevin_step was exported and --device cpu")
    p.add_argument("--onednn", choices=ONEDNN_CHOICES, default="auto",
                   help="oneDNN for the stepwise langevin_step predictor (auto: as infer_cfg.yml marks it); "
                        "all other programs always run with oneDNN off")
    args = p.parse_args(argv)
    if args.num < 1 or args.batch_size < 1:
        raise DeployError("--num and --batch_size must be >= 1")
    used: dict = {}
    samples, z, seconds = generate(args.model_dir, args.num, args.batch_size, args.seed, args.device,
                                   args.threads, args.flow_only, args.noise_std, args.sampler, args.onednn, used)
    images = to_uint8(samples)
    os.makedirs(args.out, exist_ok=True)
    for i, img in enumerate(images):
        save_image(img, os.path.join(args.out, f"{i:06d}.png"))
    save_image(make_grid(images), os.path.join(args.out, "grid.png"))
    np.savez(os.path.join(args.out, "samples.npz"), images=images, samples=samples.astype(np.float32), z=z)
    prog = {"flow_only": "flow_generator", "fused": "coopflow_sampler (fused)",
            "stepwise": "flow_generator + langevin_step (stepwise, oneDNN " + ("on)" if used["onednn"] else "off)")
            }[used["sampler"]]
    print(f"{prog}: {len(images)} images in {seconds:.2f}s ({len(images) / max(seconds, 1e-9):.2f} img/s) "
          f"-> {args.out}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except DeployError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
