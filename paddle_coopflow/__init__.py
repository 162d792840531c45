"""paddle_coopflow: CoopFlow (Xie, Zhu, Li & Li, ICLR 2022) in PaddlePaddle.

Importing the package quietens Paddle's start-up noise (its glog info lines and the
"No ccache found" warning) *before* anything imports paddle. It does not import
paddle itself, so `import paddle_coopflow` stays cheap.
"""
import os as _os
import warnings as _warnings

_os.environ.setdefault("GLOG_minloglevel", "2")
_warnings.filterwarnings("ignore", message="No ccache found")

from .version import __version__  # noqa: E402

__all__ = ["__version__"]
