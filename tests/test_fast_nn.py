"""Runs tests/fast_nn_cases.py (static oneDNN coupling networks) in a fresh interpreter.

In-process, after other test modules have built and run static programs (test_export's
predictors, fast-Langevin programs), building more to_static programs segfaulted now and then
(Paddle 3.3.1; docs/speed.md). The cases pass on their own, which is how Flow.fast_nn is used: one
model per sampling process. A crash or failure in the subprocess fails this test.
"""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_fast_nn_cases_in_a_fresh_process():
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-o", "addopts=", "-p", "no:cacheprovider",
                        os.path.join(ROOT, "tests", "fast_nn_cases.py")],
                       capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert " passed" in r.stdout and "5 passed" in r.stdout, r.stdout[-1000:]
