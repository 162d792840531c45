"""pytest plugin: every test module runs in a fresh Python interpreter.

Why: Paddle 3.3.1 segfaults now and then (in `CreateOutputTensorsFromValue`, reading a freed IR
type) in processes that have built and run many static programs for many models: the whole suite
in one process crashed in CI at the 197th test while every module passes on its own
(docs/speed.md, "Open problem"). One model per process is how the tools run, so that is how the
tests run: the parent process collects as usual; when it reaches the first selected test of a
module it runs all selected tests of that module in a child `python -m pytest` (one child per test
where the module sets `ISOLATE_EACH_TEST = True`), then reports each
child result under its own test id (outcome, traceback, skip reason, duration). A child killed by a
signal is rerun once for its unfinished tests (the terminal summary lists every rerun); a child that
dies again, or ends abnormally otherwise, fails its unfinished tests with the exit status and the tail
of its output. Test failures are never rerun.

`python -m pytest --in-process` runs everything in one interpreter instead (debugging, pdb).
"""
import json
import os
import subprocess
import sys
import tempfile

import pytest
from _pytest.reports import TestReport

_CHILD_ENV = "PADDLE_COOPFLOW_TEST_CHILD"   # in a child: path of the JSON-lines result file
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_CHILD_TIMEOUT = 1200


def pytest_addoption(parser):
    parser.addoption("--in-process", action="store_true",
                     help="run all test modules in this interpreter (no per-module child process)")


def _isolating(config) -> bool:
    return not (os.environ.get(_CHILD_ENV) or config.getoption("--in-process")
                or config.getoption("usepdb", False))


# ---------------------------------------------------------------------------------- child side
def pytest_runtest_logreport(report):
    path = os.environ.get(_CHILD_ENV)
    if not path:
        return
    longrepr = report.longrepr
    if isinstance(longrepr, tuple):          # a skip: (file, line, reason)
        longrepr = {"skip": list(longrepr)}
    elif longrepr is not None:
        longrepr = str(report.longreprtext)
    rec = {"nodeid": report.nodeid, "when": report.when, "outcome": report.outcome,
           "longrepr": longrepr, "duration": report.duration, "sections": list(report.sections),
           "wasxfail": getattr(report, "wasxfail", None)}
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(rec) + "\n")


# --------------------------------------------------------------------------------- parent side
class _ModuleRunner:
    def __init__(self, config):
        self.config = config
        self.results = {}      # nodeid → list of child records
        self.ran = set()       # module paths already run
        self.crash = {}        # nodeid → message when its child ended abnormally
        self.retried = []      # children rerun after dying from a signal

    def run_module(self, item, items):
        """All selected tests of item's module in one child, or one child per test when the module
        sets ISOLATE_EACH_TEST = True (modules that build many static programs)."""
        path = str(item.path)
        ids = [it.nodeid for it in items if str(it.path) == path]
        groups = [[i] for i in ids] if getattr(item.module, "ISOLATE_EACH_TEST", False) else [ids]
        for group in groups:
            if self._run_child(path, group):
                # Killed by a signal (the Paddle segfault): once more, for the tests it did not finish.
                # Wrong numbers are never retried; a second crash fails them. Listed in the summary.
                todo = [i for i in group if not any(r["when"] == "teardown" for r in self.results.get(i, []))]
                if not todo:       # died after its last test: nothing to rerun (no ids = the whole suite)
                    continue
                for i in todo:
                    self.results.pop(i, None)
                    self.crash.pop(i, None)
                self.retried.append(f"{os.path.basename(path)} ({len(todo)} tests rerun)")
                self._run_child(path, todo)
        self.ran.add(path)

    def _run_child(self, path, ids):
        fd, out_path = tempfile.mkstemp(prefix="coopflow_test_", suffix=".jsonl")
        os.close(fd)
        env = dict(os.environ, **{_CHILD_ENV: out_path})
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=",
               "--rootdir", str(self.config.rootpath)] + ids
        try:
            r = subprocess.run(cmd, cwd=str(self.config.rootpath), env=env, capture_output=True,
                               text=True, timeout=_CHILD_TIMEOUT)
            status, output = r.returncode, r.stdout + r.stderr
        except subprocess.TimeoutExpired as e:   # its stdout/stderr are bytes even with text=True
            status = f"timeout after {_CHILD_TIMEOUT} s"
            output = "".join(b.decode(errors="replace") if isinstance(b, bytes) else (b or "")
                             for b in (e.stdout, e.stderr))
        with open(out_path, encoding="utf-8") as f:
            for line in f:
                rec = json.loads(line)
                self.results.setdefault(rec["nodeid"], []).append(rec)
        os.unlink(out_path)
        if status not in (0, 1):   # 1 = some tests failed, reported per test
            msg = (f"the child interpreter running {os.path.basename(path)} ended with status {status} "
                   f"before this test finished; its output ends:\n{output[-4000:]}")
            for nodeid in ids:
                self.crash[nodeid] = msg
        return isinstance(status, int) and status < 0

    def report(self, item):
        ihook = item.ihook
        ihook.pytest_runtest_logstart(nodeid=item.nodeid, location=item.location)
        recs = self.results.get(item.nodeid, [])
        seen = set()
        for rec in recs:
            seen.add(rec["when"])
            ihook.pytest_runtest_logreport(report=self._report(item, rec))
        if "call" not in seen and not any(r["outcome"] != "passed" for r in recs):
            msg = self.crash.get(item.nodeid, "the child interpreter reported no result for this test")
            ihook.pytest_runtest_logreport(report=self._report(
                item, {"when": "call", "outcome": "failed", "longrepr": msg, "duration": 0.0, "sections": []}))
        ihook.pytest_runtest_logfinish(nodeid=item.nodeid, location=item.location)

    @staticmethod
    def _report(item, rec):
        longrepr = rec["longrepr"]
        if isinstance(longrepr, dict):
            longrepr = tuple(longrepr["skip"])
        rep = TestReport(item.nodeid, item.location, {k: 1 for k in item.keywords}, rec["outcome"],
                         longrepr, rec["when"], [tuple(s) for s in rec.get("sections", [])],
                         rec.get("duration", 0.0), 0.0, 0.0)
        if rec.get("wasxfail") is not None:
            rep.wasxfail = rec["wasxfail"]
        return rep


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_protocol(item, nextitem):
    config = item.config
    if not _isolating(config):
        return None
    runner = config.stash.setdefault(_RUNNER_KEY, _ModuleRunner(config))
    if str(item.path) not in runner.ran:
        runner.run_module(item, item.session.items)
    runner.report(item)
    return True


_RUNNER_KEY = pytest.StashKey()


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    runner = config.stash.get(_RUNNER_KEY, None)
    if runner is not None and runner.retried:
        terminalreporter.write_line("children rerun after a crash (Paddle segfault, docs/speed.md): "
                                    + "; ".join(runner.retried), yellow=True)
