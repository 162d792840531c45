"""bench/bench_official.py against the official PyTorch code, on tiny widths.

The comparisons need torch (pip install torch==2.13.0) and a checkout of the official CoopFlow code named by
COOPFLOW_OFFICIAL_DIR; they are skipped with the reason otherwise. Every run is a subprocess, so the official
top-level `models` and `util` modules never enter the test process.
"""
import importlib.util
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "bench", "bench_official.py")
CONFIG = os.path.join(ROOT, "configs", "cifar10_cpu_coopflow.yaml")
# Attention on (its projections are the weights stored transposed), dropout on in the timed iterations.
TINY = ["Flow.mid_channels=8", "Flow.num_blocks=1", "Flow.num_components=2", "Flow.use_attn=true",
        "Flow.drop_prob=0.2", "EBM.base_channels=4", "Langevin.n_steps=2"]
OFFICIAL = os.environ.get("COOPFLOW_OFFICIAL_DIR", "")


def _missing() -> str:
    if importlib.util.find_spec("torch") is None:
        return "torch is not installed (pip install torch==2.13.0)"
    if not OFFICIAL:
        return "COOPFLOW_OFFICIAL_DIR is not set (a checkout of github.com/AlvinZhuyx/CoopFlow)"
    if not os.path.isfile(os.path.join(OFFICIAL, "main_cifar.py")):
        return f"COOPFLOW_OFFICIAL_DIR={OFFICIAL} holds no main_cifar.py"
    return ""


needs_official = pytest.mark.skipif(bool(_missing()), reason=_missing())


def _run(*extra, overrides=(), env=None, official=OFFICIAL):
    cmd = [sys.executable, SCRIPT, "-c", CONFIG, "--batch", "2", "--threads", "1"]
    cmd += [a for o in [*TINY, *overrides] for a in ("-o", o)]
    cmd += (["--official-dir", official] if official is not None else []) + list(extra)
    env = dict(os.environ if env is None else env, OMP_NUM_THREADS="1", GLOG_minloglevel="2")
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900, env=env)


def test_without_the_official_code_one_line_exit_2(tmp_path):
    bare = {k: v for k, v in os.environ.items() if k != "COOPFLOW_OFFICIAL_DIR"}
    out = _run(official=None, env=bare)
    assert out.returncode == 2 and out.stderr.strip().count("\n") == 0, out.stderr
    assert "--official-dir" in out.stderr and "COOPFLOW_OFFICIAL_DIR" in out.stderr
    out = _run(official=str(tmp_path), env=bare)
    assert out.returncode == 2 and out.stderr.strip().count("\n") == 0, out.stderr
    assert "not a checkout of the official CoopFlow code: no main_cifar.py" in out.stderr


def test_config_the_official_loop_cannot_run_is_refused(tmp_path):
    out = _run("--check", overrides=["Langevin.noise_mode=constant"], official=str(tmp_path))
    assert out.returncode == 2 and "Langevin.noise_mode=none" in out.stderr, out.stderr


@needs_official
def test_check_agrees_with_the_official_code():
    """Same weights and inputs: proposal, one Langevin step and both losses within the printed tolerances."""
    out = _run("--check")
    assert out.returncode == 0, out.stdout + out.stderr
    rows = re.findall(r"^\| ([^|]+) \| ([0-9.e+-]+) \| ([0-9.e+-]+) \|$", out.stdout, flags=re.M)
    names = [r[0] for r in rows]
    assert len(rows) == 6 and any("proposal" in n for n in names) and any("flow loss" in n for n in names), out.stdout
    for name, diff, tol in rows:
        assert float(diff) <= float(tol), (name, diff, tol)
    assert "check passed" in out.stdout


@needs_official
def test_timing_table_side_by_side():
    """The two workers run, alternate and report a table with every part, the peak RSS and the load."""
    out = _run("--iters", "1", overrides=["Langevin.engine=dygraph"])
    assert out.returncode == 0, out.stdout + out.stderr
    for label in ("flow proposal", "Langevin flow, 2 steps", "flow + EBM updates", "**whole iteration**"):
        row = re.search(rf"^\| {re.escape(label)} \| ([0-9.]+) s \| ([0-9.]+) s \| ([0-9.]+) \|$", out.stdout, re.M)
        assert row and float(row.group(1)) > 0 and float(row.group(2)) > 0, (label, out.stdout)
    rss = re.search(r"^\| peak RSS \| (\d+) MB \| (\d+) MB \|", out.stdout, re.M)
    assert rss and int(rss.group(1)) > 100 and int(rss.group(2)) > 100, out.stdout
    assert "load average before" in out.stdout and "load average (1 min) after the timed iterations" in out.stdout
