"""The Python API: load a CoopFlow model, draw samples, compute energies, run the Langevin flow.

    import paddle_coopflow as pcf

    model = pcf.load("output/digits_demo/ckpt/latest")     # config read from the checkpoint
    proposals, samples = model.sample(n=36, seed=0)         # float32 [36, 1, 16, 16] in [-1, 1]
    pcf.save_grid(samples, "samples.png")
    f = model.energy(samples)                               # f_θ(x) [36]
    model.flow, model.ebm                                   # the paddle.nn.Layers, e.g. for fine-tuning

Everything here calls the functions the tools use: configs come from :mod:`paddle_coopflow.cli`
(``-c`` file or the config stored in the checkpoint, ``-o``-style overrides), weights from
:func:`paddle_coopflow.builder.load_trained` or :func:`paddle_coopflow.official.convert`, samples from
:func:`paddle_coopflow.evaluation.generate_samples` and the Langevin flow from
:func:`paddle_coopflow.sampling.sample`. Images are float32 ``[N, C, H, W]`` in [-1, 1] (numpy arrays or
Paddle tensors in, numpy arrays out). Every mistake a caller can fix raises a one-line
:class:`~paddle_coopflow.errors.UserError`. Importing this module does not import paddle.
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING, Optional, Sequence, Tuple, Union

import numpy as np

from .errors import UserError

if TYPE_CHECKING:  # the config package is imported where it is used
    from .config import Config

__all__ = ["CoopFlowModel", "load", "build", "load_official", "save_grid"]

ConfigLike = Union[str, "os.PathLike[str]", "Config", None]


class CoopFlowModel:
    """The flow q_α and the EBM f_θ of a CoopFlow model, with its config and the sampling operations.

    Made by :func:`load`, :func:`build` or :func:`load_official` (or ``paddle.hub.load``). A flow-only
    model has ``ebm=None`` (its samples are the flow's proposals); a Langevin-only model has ``flow=None``
    (its proposals are U(-1, 1) noise). The nets are left in eval mode; :meth:`sample`, :meth:`revise`
    and :meth:`energy` run them in eval mode and restore the mode they found.

    Attributes:
        cfg: the resolved :class:`~paddle_coopflow.config.Config`.
        flow: the Flow++ (a ``paddle.nn.Layer`` with ``inverse(z)`` and ``z_shape``) or None.
        ebm: the EBM, [N, C, H, W] → f_θ(x) [N], or None.
    """

    def __init__(self, cfg, flow, ebm):
        self.cfg, self.flow, self.ebm = cfg, flow, ebm

    def __repr__(self) -> str:
        nets = ", ".join(f"{name}={type(net).__name__}" for name, net in (("flow", self.flow), ("ebm", self.ebm))
                         if net is not None)
        return f"CoopFlowModel({nets}, image_shape={self.image_shape})"

    @property
    def image_shape(self) -> Tuple[int, ...]:
        """(C, H, W) of one image (the flow's latent shape, or the EBM's input without a flow)."""
        from .evaluation.generate import image_shape

        return tuple(image_shape(self.flow, self.cfg))

    def sample(self, n: int, seed: Optional[int] = None, n_steps: Optional[int] = None,
               step_size: Optional[float] = None, batch_size: Optional[int] = None
               ) -> Tuple[np.ndarray, np.ndarray]:
        """Draw n CoopFlow samples: flow proposals x̂ = g_α(z) and their Langevin revisions x̃ (Algorithm 1).

        Args:
            n: number of images (>= 1).
            seed: seeds z ~ N(0, I) (``np.random.RandomState(seed)``, so the images do not depend on
                batch_size); default Global.seed.
            n_steps: T, Langevin steps of eq. (3); default Langevin.n_steps.
            step_size: s; default Langevin.test_step_size (the sampling step size of Table 3).
            batch_size: images per forward pass; default Eval.sample_batch_size.

        Returns:
            (proposals, samples): float32 [n, C, H, W] each, in [-1, 1]. Without an EBM the samples equal
            the proposals.
        """
        from .evaluation import generate_samples

        if int(n) < 1:
            raise UserError(f"sample(n={n}): n must be >= 1")
        cfg = self._with_langevin(n_steps, step_size)
        seed = cfg.Global.seed if seed is None else int(seed)
        return generate_samples(self.flow, self.ebm, cfg, int(n), self._batch_size(batch_size), seed)

    def revise(self, x, n_steps: Optional[int] = None, step_size: Optional[float] = None,
               batch_size: Optional[int] = None) -> np.ndarray:
        """Run the Langevin flow of eq. (3) from given images (no noise, the configured δ and image clips).

        Args:
            x: [N, C, H, W] starting images in [-1, 1] (numpy array or Paddle tensor); never modified.
            n_steps: T; default Langevin.n_steps.
            step_size: s; default Langevin.test_step_size.
            batch_size: images per pass; default Eval.sample_batch_size.

        Returns:
            float32 [N, C, H, W]: x after T steps.
        """
        import paddle

        from .evaluation.generate import langevin_step_for
        from .sampling import sample

        ebm = self._need_ebm("revise")
        batches = self._batches(x, batch_size, "revise")
        cfg = self._with_langevin(n_steps, step_size)
        lg = cfg.Langevin
        step = langevin_step_for(ebm, cfg)
        clip = tuple(lg.image_clip) if lg.image_clip else None
        out = []
        for xb in batches:
            _, rev = sample(None, ebm, z=paddle.to_tensor(xb), n_steps=lg.n_steps, step_size=lg.test_step_size,
                            delta_clip=lg.delta_clip, image_clip=clip, langevin_step=step)
            out.append(rev.numpy().astype(np.float32))
        return np.concatenate(out)

    def energy(self, x, batch_size: Optional[int] = None) -> np.ndarray:
        """f_θ(x), the EBM's output, in eval mode and without gradients (for gradients call ``model.ebm``).

        f_θ is the negative energy: p_θ(x) ∝ exp(f_θ(x)), higher is more probable (the ``energy`` program
        of the exported model computes the same).

        Args:
            x: [N, C, H, W] images in [-1, 1] (numpy array or Paddle tensor).
            batch_size: images per pass; default Eval.sample_batch_size.

        Returns:
            float32 [N].
        """
        import paddle

        from .sampling import nets_in_mode

        ebm = self._need_ebm("energy")
        out = []
        with nets_in_mode([ebm], training=False), paddle.no_grad():
            for xb in self._batches(x, batch_size, "energy"):
                out.append(ebm(paddle.to_tensor(xb)).numpy().astype(np.float32))
        return np.concatenate(out)

    # ------------------------------------------------------------------------------------ helpers
    def _need_ebm(self, what: str):
        if self.ebm is None:
            raise UserError(f"{what}() needs an EBM but this model has none (a flow-only model, "
                            f"Train.mode={self.cfg.Train.mode}); load a CoopFlow or Langevin-only checkpoint")
        return self.ebm

    def _with_langevin(self, n_steps: Optional[int], step_size: Optional[float]):
        """self.cfg, or a copy whose Langevin section has T / the sampling step size replaced."""
        import dataclasses
        import math

        if n_steps is None and step_size is None:
            return self.cfg
        lg = self.cfg.Langevin
        if n_steps is not None and (int(n_steps) != n_steps or n_steps < 0):
            raise UserError(f"n_steps={n_steps}: the number of Langevin steps T must be an integer >= 0")
        if step_size is not None and not (math.isfinite(step_size) and step_size > 0):
            raise UserError(f"step_size={step_size}: the Langevin step size s must be > 0")
        lg = dataclasses.replace(lg, n_steps=lg.n_steps if n_steps is None else int(n_steps),
                                 test_step_size=lg.test_step_size if step_size is None else float(step_size))
        return dataclasses.replace(self.cfg, Langevin=lg)

    def _batch_size(self, batch_size: Optional[int]) -> int:
        bs = self.cfg.Eval.sample_batch_size if batch_size is None else int(batch_size)
        if bs < 1:
            raise UserError(f"batch_size={batch_size}: must be >= 1")
        return bs

    def _batches(self, x, batch_size: Optional[int], what: str):
        """float32 numpy batches of `x` after checking its shape against the model's image shape."""
        arr = np.asarray(x.numpy() if hasattr(x, "numpy") else x, dtype=np.float32)
        want = self.image_shape
        if arr.ndim != len(want) + 1 or tuple(arr.shape[1:]) != want or len(arr) == 0:
            raise UserError(f"{what}(): images of shape {list(arr.shape)} given, the model takes [N, "
                            f"{', '.join(map(str, want))}] with N >= 1")
        bs = self._batch_size(batch_size)
        return (arr[i:i + bs] for i in range(0, len(arr), bs))


# ------------------------------------------------------------------------------------ constructors
def _resolve_config(config: ConfigLike, overrides: Optional[Sequence[str]], prefix: Optional[str],
                    device: Optional[str], threads: Optional[int]):
    """A Config from a path, a Config or (None) the one stored in `prefix`, with overrides, device, threads."""
    from .cli import config_for
    from .config import Config, config_from_dict, load_config

    if isinstance(overrides, str):
        raise UserError(f"overrides={overrides!r}: pass a list of 'Section.key=value' strings")
    over = list(overrides or [])
    if device is not None:
        over.append(f"Global.device={device}")
    if threads is not None:
        over.append(f"Global.threads={threads}")
    if isinstance(config, Config):
        return config_from_dict(config.to_dict(), over, where="the given Config")
    if config is not None and not isinstance(config, (str, os.PathLike)):
        raise UserError(f"config={config!r}: pass a YAML path, a paddle_coopflow.config.Config or None")
    if config is None and prefix is None:
        return load_config(None, over)  # the built-in defaults
    return config_for(os.fspath(config) if config is not None else None, over, prefix)


def _set_up(config: ConfigLike, overrides, prefix, device, threads):
    """Check Paddle's version, resolve the config, set device, CPU threads and seeds (as the tools do)."""
    from .cli import setup_process
    from .utils.env import check_paddle

    check_paddle()
    cfg = _resolve_config(config, overrides, prefix, device, threads)
    setup_process(cfg)
    return cfg


def load(prefix: str, config: ConfigLike = None, overrides: Optional[Sequence[str]] = None,
         device: Optional[str] = None, threads: Optional[int] = None) -> CoopFlowModel:
    """A trained model from checkpoint `prefix` (``<prefix>.pdparams``; ``.pdstates`` for its config).

    Args:
        prefix: e.g. ``output/digits_demo/ckpt/latest`` or a prefix written by ``tools/convert_official.py``.
        config: a YAML path or a :class:`~paddle_coopflow.config.Config`; None takes the config the
            trainer stored in ``<prefix>.pdstates``.
        overrides: ``-o``-style strings, e.g. ``["Langevin.n_steps=60", "Flow.inverse_method=bisection"]``.
        device: 'cpu', 'gpu' or 'auto'; default Global.device.
        threads: CPU math threads (0 = all cores); default Global.threads.

    Returns:
        The model, nets in eval mode. Like the tools, this sets Paddle's device, its CPU threads and
        the seeds of Python, NumPy and Paddle (Global.seed).

    Raises:
        UserError: an unsupported Paddle, a missing or mismatched checkpoint, a bad config or override.
    """
    from .builder import load_trained

    cfg = _set_up(config, overrides, os.fspath(prefix), device, threads)
    flow, ebm = load_trained(cfg, os.fspath(prefix))
    return CoopFlowModel(cfg, flow, ebm)


def build(config: ConfigLike = None, overrides: Optional[Sequence[str]] = None, device: Optional[str] = None,
          threads: Optional[int] = None) -> CoopFlowModel:
    """A freshly initialised model: the networks Train.mode needs, as the trainer builds them.

    Args:
        config: a YAML path or a Config; None = the built-in defaults (CIFAR-10 CoopFlow(T=30)).
        overrides, device, threads: as for :func:`load`.

    Returns:
        The model (flow None for Train.mode=langevin_only, ebm None for flow_only), nets in eval mode.
        Flow++'s ActNorm layers are not yet initialised from data (training does that first).
    """
    from .builder import build_ebm, build_flow

    cfg = _set_up(config, overrides, None, device, threads)
    flow = build_flow(cfg.Flow) if cfg.Train.mode != "langevin_only" else None
    ebm = build_ebm(cfg.EBM) if cfg.Train.mode != "flow_only" else None
    for net in (flow, ebm):
        if net is not None:
            net.eval()
    return CoopFlowModel(cfg, flow, ebm)


def load_official(path: str, config: ConfigLike, overrides: Optional[Sequence[str]] = None,
                  device: Optional[str] = None, threads: Optional[int] = None) -> CoopFlowModel:
    """A model with the weights of an official PyTorch ``.pth.tar`` (read without torch, never executed).

    A CoopFlow file (``'flow_net'`` + ``'ebm_net'``) needs a config with Train.mode=coopflow, a pre-trained
    Flow++ file (``'net'``) one with Train.mode=flow_only; every key and shape is checked against the
    networks the config builds (:func:`paddle_coopflow.official.convert`).

    Args:
        path: the official checkpoint file.
        config: a YAML path or a Config describing the file's networks (e.g. ``configs/cifar10_t30.yaml``).
        overrides, device, threads: as for :func:`load`.

    Returns:
        The model, nets in eval mode.
    """
    from . import official

    cfg = _set_up(config, overrides, None, device, threads)
    ckpt = official.read_official(os.fspath(path))
    want = {"coopflow": official.COOPFLOW, "flow_only": official.FLOW_ONLY}.get(cfg.Train.mode)
    if ckpt.layout != want:
        kind = "a CoopFlow file (flow and EBM)" if ckpt.layout == official.COOPFLOW else "a pre-trained Flow++ file"
        mode = "coopflow" if ckpt.layout == official.COOPFLOW else "flow_only"
        raise UserError(f"{path} is {kind} but the config has Train.mode={cfg.Train.mode}; use a config with "
                        f"Train.mode={mode}")
    converted = official.convert(ckpt, cfg, flow_only=want == official.FLOW_ONLY)
    return CoopFlowModel(cfg, converted.flow, converted.ebm)


def save_grid(images, path: str, nrow: int = 0) -> str:
    """Write images as one PNG grid.

    Args:
        images: [N, C, H, W] in [-1, 1] (numpy array or Paddle tensor), C = 1 or 3.
        path: the PNG file; missing directories are created.
        nrow: images per row; 0 = a square grid (ceil(sqrt(N))).

    Returns:
        The path written.
    """
    from .logger import save_png, to_uint8_grid

    arr = np.asarray(images.numpy() if hasattr(images, "numpy") else images, dtype=np.float32)
    if arr.ndim != 4 or arr.shape[1] not in (1, 3) or len(arr) == 0:
        raise UserError(f"save_grid(): images of shape {list(arr.shape)} given; pass [N, C, H, W] with C = 1 or 3")
    save_png(to_uint8_grid(arr, nrow=int(nrow)), os.fspath(path))
    return os.fspath(path)
