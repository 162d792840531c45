"""paddle_coopflow: CoopFlow (Xie, Zhu, Li & Li, ICLR 2022) in PaddlePaddle.

Importing the package quietens Paddle's start-up noise (its glog info lines and the
"No ccache found" warning) *before* anything imports paddle, and on AMD CPUs gives MKL its AVX2
kernels (`utils.env.mkl_avx2_on_amd`: MKL picks its kernels at its first call, so choosing at import
makes every process that imports the package first compute with the same kernels, whether or not it
calls `setup_threads` before its first matmul). It does not import paddle itself, so
`import paddle_coopflow` stays cheap.

The Python API (:mod:`paddle_coopflow.api`; it imports paddle at first use)::

    import paddle_coopflow as pcf

    model = pcf.load("output/digits_demo/ckpt/latest")    # or pcf.build(...), pcf.load_official(...)
    proposals, samples = model.sample(n=36, seed=0)        # float32 [36, C, H, W] in [-1, 1]
    pcf.save_grid(samples, "samples.png")
"""
import os as _os
import warnings as _warnings

_os.environ.setdefault("GLOG_minloglevel", "2")
_warnings.filterwarnings("ignore", message="No ccache found")

from .utils.env import mkl_avx2_on_amd as _mkl_avx2_on_amd  # noqa: E402
from .version import __version__  # noqa: E402

_mkl_avx2_on_amd()

from .api import CoopFlowModel, build, load, load_official, save_grid  # noqa: E402
from .errors import UserError  # noqa: E402

__all__ = ["__version__", "CoopFlowModel", "UserError", "build", "load", "load_official", "save_grid"]
