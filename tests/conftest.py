import os
import sys

os.environ.setdefault("GLOG_minloglevel", "2")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import paddle_coopflow  # noqa: E402,F401  (quietens paddle before it is imported)

SHARED_DATA = os.path.join(ROOT, "..", "shared", "data")
