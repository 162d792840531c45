import os

from setuptools import find_packages, setup

here = os.path.dirname(os.path.abspath(__file__))
version = {}
with open(os.path.join(here, "paddle_coopflow", "version.py")) as f:
    exec(f.read(), version)

setup(
    name="paddle_coopflow",
    version=version["__version__"],
    description="CoopFlow (ICLR 2022): cooperative Langevin flow and Flow++ in PaddlePaddle",
    packages=find_packages(include=["paddle_coopflow", "paddle_coopflow.*"]),
    python_requires=">=3.8",
    # Paddle itself is NOT listed: `paddlepaddle` (CPU) or `paddlepaddle-gpu` is installed per the
    # README, so a GPU user never gets a CPU build clobbering theirs. Supported: PaddlePaddle >= 3.2
    # (README, "Supported Paddle versions"; CI tests 3.2.0 and the newest release). An older Paddle is a
    # one-line error at first use (paddle_coopflow.utils.env.check_paddle).
    classifiers=[
        "Programming Language :: Python :: 3",
        "Operating System :: POSIX :: Linux",
        "Intended Audience :: Science/Research",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
    install_requires=[
        "numpy>=1.21,<2.4",  # numpy 2.4 breaks float() on shape-[1] tensors (docs/paddle_notes.md)
        "pyyaml>=5.1",
        "scipy>=1.5",
        "pillow>=8.0",
        "tqdm>=4.0",
        "visualdl>=2.4",
        "scikit-learn>=1.0",
    ],
)
