import os
import sys

import pytest

os.environ.setdefault("GLOG_minloglevel", "2")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import paddle_coopflow  # noqa: E402,F401  (quietens paddle before it is imported)

# Real data sets stay out of the repository: the tests that need them skip when this folder is absent.
SHARED_DATA = os.path.join(ROOT, "..", "shared", "data")
CIFAR_SAMPLE = os.path.join(SHARED_DATA, "cifar10_sample")
NO_CIFAR_SAMPLE = "needs the CIFAR-10 sample images in ../shared/data/cifar10_sample (not in the repository)"
# The official code's tiny checkpoints, outputs and key lists (tests/fixtures/README.md).
FIXTURES = os.path.join(ROOT, "tests", "fixtures")
OFFICIAL_TINY = os.path.join(FIXTURES, "official_tiny")
OFFICIAL_FLOWPP_KEYS = os.path.join(FIXTURES, "official_torch_flowpp_keys.tsv")
OFFICIAL_EBM_KEYS = os.path.join(FIXTURES, "official_torch_ebm_keys.tsv")


@pytest.fixture
def rgb_image_folder(tmp_path):
    """A folder of 16 random 32x32 RGB PNGs in two class folders: an image-folder data set for short runs."""
    import numpy as np
    from PIL import Image

    rs = np.random.RandomState(0)
    for i in range(16):
        path = tmp_path / "images" / f"class{i % 2}" / f"{i:02d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rs.randint(0, 256, (32, 32, 3), dtype=np.uint8)).save(path)
    return str(tmp_path / "images")


# The digits demo (configs/digits_demo.yaml) shortened to 2 iterations: its checkpoint stands in for the demo's.
DIGITS_DEMO = os.path.join(ROOT, "configs", "digits_demo.yaml")
DIGITS_DEMO_SHORT = ["Train.max_iters=2", "Train.data_init_batches=1", "Train.data_init_group=1",
                     "Langevin.n_steps=4", "Export.on_train_end=false", "Global.use_visualdl=false",
                     "Global.sample_interval=0", "Global.threads=1", "Global.grid_size=4", "Eval.sample_batch_size=8"]


@pytest.fixture(scope="session")
def digits_demo_run(tmp_path_factory):
    """The output directory of the shortened digits demo run (trained once per test session)."""
    from paddle_coopflow.config import load_config
    from paddle_coopflow.training import Trainer

    out = tmp_path_factory.mktemp("digits_demo")
    Trainer(load_config(DIGITS_DEMO, DIGITS_DEMO_SHORT + [f"Global.output_dir={out}"])).train()
    return str(out)
