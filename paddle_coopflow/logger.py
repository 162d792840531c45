"""Run logging: zoo-format text lines, ``stats.jsonl`` and VisualDL (rank 0 only)."""
from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import Dict

import numpy as np


def format_eta(seconds: float) -> str:
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    seconds = int(seconds)
    d, rem = divmod(seconds, 86400)
    h, rem = divmod(rem, 3600)
    m, s = divmod(rem, 60)
    return (f"{d}d " if d else "") + f"{h:02d}:{m:02d}:{s:02d}"


class RunLogger:
    """Writes log lines to stdout + ``train.log``, records to ``stats.jsonl``, scalars/images to VisualDL.

    Args:
        run_dir: the run directory.
        enabled: False on ranks other than 0 (nothing is written).
        use_visualdl: create a ``LogWriter`` with a fixed file name, so curves continue after resume.
    """

    VDL_FILE = "vdlrecords.coopflow.log"

    def __init__(self, run_dir: str, enabled: bool = True, use_visualdl: bool = True):
        self.run_dir = run_dir
        self.enabled = enabled
        self.vdl = None
        if not enabled:
            return
        os.makedirs(run_dir, exist_ok=True)
        self._log = open(os.path.join(run_dir, "train.log"), "a")
        self._stats = open(os.path.join(run_dir, "stats.jsonl"), "a")
        if use_visualdl:
            try:
                from visualdl import LogWriter

                self.vdl = LogWriter(logdir=os.path.join(run_dir, "vdl"), file_name=self.VDL_FILE)
            except Exception as err:  # VisualDL is a convenience, never a reason to stop training
                self.info(f"VisualDL disabled ({type(err).__name__}: {err})")

    def info(self, msg: str) -> None:
        if not self.enabled:
            return
        line = f"[{time.strftime('%Y-%m-%d %H:%M:%S')}] {msg}"
        print(line, flush=True)
        self._log.write(line + "\n")
        self._log.flush()

    def record(self, step: int, stats: Dict[str, float]) -> None:
        """Append one JSON line and the VisualDL scalars (keys are slash-grouped tags)."""
        if not self.enabled:
            return
        clean = {k: (float(v) if isinstance(v, (int, float, np.floating, np.integer)) else v)
                 for k, v in stats.items()}
        self._stats.write(json.dumps(dict(clean, step=step), allow_nan=True) + "\n")
        self._stats.flush()
        if self.vdl is not None:
            for tag, v in clean.items():
                if "/" in tag and isinstance(v, float) and math.isfinite(v):
                    self.vdl.add_scalar(tag=tag, step=step, value=v)

    def image(self, tag: str, img_hwc_uint8: np.ndarray, step: int) -> None:
        if self.enabled and self.vdl is not None:
            self.vdl.add_image(tag=tag, img=img_hwc_uint8, step=step)

    def close(self) -> None:
        if not self.enabled:
            return
        if self.vdl is not None:
            self.vdl.close()
        self._log.close()
        self._stats.close()


def log_line(phase: str, epoch: int, epochs: int, it: int, iters: int, stats: Dict[str, float],
             batch_cost: float, ips: float, eta: float) -> str:
    """`[coop] epoch 3/100 iter 1200/178600 ebm_loss ... batch_cost 1.23s ips 22.7 img/s eta 2d 13:04:11`."""
    parts = [f"[{phase}] epoch {epoch + 1}/{epochs} iter {it}/{iters}"]
    for k, v in stats.items():
        name = k.split("/")[-1]
        if isinstance(v, float):
            parts.append(f"{name} {v:.4g}")
        elif isinstance(v, (int, np.integer)) and not isinstance(v, bool):
            parts.append(f"{name} {v}")
    parts.append(f"batch_cost {batch_cost:.3f}s ips {ips:.1f} img/s eta {format_eta(eta)}")
    return " ".join(parts)


def to_uint8_grid(images: np.ndarray, nrow: int = 0, pad: int = 2) -> np.ndarray:
    """[N, C, H, W] in [-1, 1] → HWC uint8 grid (PNG writer rounding: x*255 + 0.5, clipped)."""
    x = np.asarray(images, dtype=np.float32)
    n, c, h, w = x.shape
    nrow = nrow or int(math.ceil(math.sqrt(n)))
    ncol = int(math.ceil(n / nrow))
    grid = np.ones((c, ncol * (h + pad) + pad, nrow * (w + pad) + pad), np.float32)
    for i in range(n):
        r, q = divmod(i, nrow)
        grid[:, pad + r * (h + pad): pad + r * (h + pad) + h, pad + q * (w + pad): pad + q * (w + pad) + w] = \
            (x[i] + 1) / 2
    out = np.clip(grid * 255 + 0.5, 0, 255).astype(np.uint8).transpose(1, 2, 0)
    return np.repeat(out, 3, axis=2) if c == 1 else out


def save_png(img_hwc_uint8: np.ndarray, path: str) -> None:
    from PIL import Image

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    Image.fromarray(img_hwc_uint8).save(path)


def stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)
