"""paddle.hub entry points: one per model configuration in configs/.

    import paddle
    paddle.hub.list("PaddleCoopFlow_dir", source="local")
    model = paddle.hub.load("PaddleCoopFlow_dir", "digits_demo", source="local",
                            ckpt="output/digits_demo/ckpt/latest")
    proposals, samples = model.sample(n=16, seed=0)

Each entry point builds its configuration's networks and returns a
:class:`paddle_coopflow.CoopFlowModel` (``.flow``, ``.ebm``, ``.cfg``, ``sample``, ``revise``,
``energy``): freshly initialised, with the weights of a checkpoint prefix of this package (``ckpt=``),
or with those of an official PyTorch ``.pth.tar`` converted on the fly (``official=``: read without
torch, every key and shape checked against the config).
"""
import os as _os

import paddle_coopflow as _pcf
from paddle_coopflow.errors import UserError as _UserError

dependencies = ["paddle", "numpy", "scipy", "yaml", "PIL"]

_CONFIGS = _os.path.join(_os.path.dirname(_os.path.abspath(__file__)), "configs")
_ARGS_DOC = """
    Args:
        ckpt: a checkpoint prefix of this package (``<prefix>.pdparams``), e.g. written by tools/train.py
            or tools/convert_official.py, trained with this configuration (and `overrides`).
        official: an official CoopFlow ``.pth.tar`` (``'flow_net'`` + ``'ebm_net'``) for a CoopFlow entry
            point, or an official pre-trained Flow++ file (``'net'``) for a ``flow_*`` one.
        overrides: ``-o``-style strings, e.g. ``["Langevin.n_steps=60"]``.
        device: 'cpu', 'gpu' or 'auto'; default the config's Global.device ('auto').
        threads: CPU math threads; default the config's Global.threads (0 = all cores).

    Returns:
        paddle_coopflow.CoopFlowModel: without ckpt/official, freshly initialised networks.
"""


def _documented(entry):
    """Append the arguments every entry point shares to its one-line description (what paddle.hub.help shows)."""
    entry.__doc__ = entry.__doc__.rstrip() + "\n" + _ARGS_DOC
    return entry


def _model(config_file, ckpt, official, overrides, device, threads):
    """The model of configs/`config_file`: fresh, from a checkpoint prefix, or from an official file."""
    config = _os.path.join(_CONFIGS, config_file)
    if ckpt is not None and official is not None:
        raise _UserError("pass ckpt= (a checkpoint prefix of this package) or official= (an official "
                         ".pth.tar), not both")
    if official is not None:
        return _pcf.load_official(official, config, overrides, device, threads)
    if ckpt is not None:
        return _pcf.load(ckpt, config, overrides, device, threads)
    return _pcf.build(config, overrides, device, threads)


@_documented
def coopflow_cifar10(ckpt=None, official=None, overrides=None, device=None, threads=None):
    """CoopFlow(T=30) on CIFAR-10, paper Table 3 (configs/cifar10_t30.yaml); the released ckpt/cifar10.pth.tar."""
    return _model("cifar10_t30.yaml", ckpt, official, overrides, device, threads)


@_documented
def coopflow_cifar10_t200(ckpt=None, official=None, overrides=None, device=None, threads=None):
    """CoopFlow(T=200) on CIFAR-10, paper Table 3 (configs/cifar10_t200.yaml)."""
    return _model("cifar10_t200.yaml", ckpt, official, overrides, device, threads)


@_documented
def coopflow_pre_cifar10(ckpt=None, official=None, overrides=None, device=None, threads=None):
    """CoopFlow(Pre) on CIFAR-10, paper Table 3 (configs/cifar10_pre.yaml)."""
    return _model("cifar10_pre.yaml", ckpt, official, overrides, device, threads)


@_documented
def flow_cifar10(ckpt=None, official=None, overrides=None, device=None, threads=None):
    """Flow++ alone on CIFAR-10, the pre-trained flow of CoopFlow(Pre) and Table 6's "normalizing flow alone"
    (configs/cifar10_flow_pretrain.yaml); the released pretrain_flow_ckpt/cifar10.pth.tar."""
    return _model("cifar10_flow_pretrain.yaml", ckpt, official, overrides, device, threads)


@_documented
def langevin_cifar10(ckpt=None, official=None, overrides=None, device=None, threads=None):
    """The short-run Langevin flow alone on CIFAR-10, Table 6's "Langevin flow alone" (EBM only, no flow;
    configs/cifar10_langevin_only.yaml). No official file exists for it."""
    return _model("cifar10_langevin_only.yaml", ckpt, official, overrides, device, threads)


@_documented
def coopflow_svhn(ckpt=None, official=None, overrides=None, device=None, threads=None):
    """CoopFlow(T=30) on SVHN, paper Table 3 (configs/svhn_t30.yaml); the released ckpt/svhn.pth.tar."""
    return _model("svhn_t30.yaml", ckpt, official, overrides, device, threads)


@_documented
def coopflow_pre_svhn(ckpt=None, official=None, overrides=None, device=None, threads=None):
    """CoopFlow(Pre) on SVHN, paper Table 3 (configs/svhn_pre.yaml)."""
    return _model("svhn_pre.yaml", ckpt, official, overrides, device, threads)


@_documented
def flow_svhn(ckpt=None, official=None, overrides=None, device=None, threads=None):
    """Flow++ alone on SVHN, the pre-trained flow of CoopFlow(Pre) (configs/svhn_flow_pretrain.yaml)."""
    return _model("svhn_flow_pretrain.yaml", ckpt, official, overrides, device, threads)


@_documented
def coopflow_celeba(ckpt=None, official=None, overrides=None, device=None, threads=None):
    """CoopFlow(T=30) on CelebA 32x32, paper Table 3 (configs/celeba_t30.yaml); the released ckpt/celeba.pth.tar."""
    return _model("celeba_t30.yaml", ckpt, official, overrides, device, threads)


@_documented
def coopflow_pre_celeba(ckpt=None, official=None, overrides=None, device=None, threads=None):
    """CoopFlow(Pre) on CelebA 32x32, paper Table 3 (configs/celeba_pre.yaml)."""
    return _model("celeba_pre.yaml", ckpt, official, overrides, device, threads)


@_documented
def flow_celeba(ckpt=None, official=None, overrides=None, device=None, threads=None):
    """Flow++ alone on CelebA 32x32, the pre-trained flow of CoopFlow(Pre) (configs/celeba_flow_pretrain.yaml)."""
    return _model("celeba_flow_pretrain.yaml", ckpt, official, overrides, device, threads)


@_documented
def digits_demo(ckpt=None, official=None, overrides=None, device=None, threads=None):
    """The CPU demo: CoopFlow on scikit-learn's 8x8 digits upsampled to 16x16, 1 channel
    (configs/digits_demo.yaml; train it with tools/train.py -c configs/digits_demo.yaml)."""
    return _model("digits_demo.yaml", ckpt, official, overrides, device, threads)
