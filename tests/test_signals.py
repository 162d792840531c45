"""A real SIGTERM sent to a real `tools/train.py` process: clean stop at an iteration boundary, exit 143,
and a resume from the saved `latest` that reaches the parameters of a straight run bit for bit; a second
SIGTERM is still a termination (143), with `latest` left at the last boundary."""
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import ROOT
from tiny_run import checkpoint_tensors, mismatches, run_tiny, states, tiny_cfg


def test_sigterm_saves_latest_at_a_boundary_and_exits_143(tmp_path):
    run = tmp_path / "run"
    cfg_path = tmp_path / "tiny.yaml"
    cfg_path.write_text(tiny_cfg(run, "Train.max_iters=500", "Global.sample_interval=0").dump())
    env = dict(os.environ, GLOG_minloglevel="2")
    proc = subprocess.Popen([sys.executable, "tools/train.py", "-c", str(cfg_path)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 240
        while time.time() < deadline:  # wait until an iteration is logged
            log = (run / "train.log").read_text() if (run / "train.log").exists() else ""
            if "[coop] epoch 1/3 iter 1/500" in log:
                break
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, err[-2000:]
    assert "Traceback" not in err and "stopped: SIGTERM received" in err
    st = states(run / "ckpt" / "latest")
    k = st["global_iter"]
    # epoch 1 trains batches 1..4 (batch 0 went to the ActNorm init), later epochs batches 0..4
    assert k >= 1 and (st["epoch"], st["batch_pos"]) == ((0, k + 1) if k < 4 else (1 + (k - 4) // 5, (k - 4) % 5))
    assert f"SIGTERM: stopped at epoch {st['epoch'] + 1} batch {st['batch_pos']} iter {k}" in (run / "train.log").read_text()
    # resume from the signal's checkpoint == a straight run of the same length
    run_tiny(run, f"Train.max_iters={k + 2}", "Global.sample_interval=0", resume=str(run / "ckpt" / "latest"))
    run_tiny(tmp_path / "straight", f"Train.max_iters={k + 2}", "Global.sample_interval=0")
    a = checkpoint_tensors(tmp_path / "straight" / "ckpt" / "latest")
    bad = mismatches(a, checkpoint_tensors(run / "ckpt" / "latest"))
    print(f"SIGTERM at iter {k}: resumed to {k + 2}, {len(a)} tensors compared, {len(bad)} mismatches")
    assert not bad, bad[:5]


def test_second_sigterm_is_still_a_termination(tmp_path):
    """Two SIGTERMs inside iteration 3: the second abandons it at once; the run ends as TrainingStopped with
    exit code 143 (not KeyboardInterrupt's 130), no temporary file is left, `latest` is iteration 2."""
    from paddle_coopflow.training import Trainer, TrainingStopped

    run = tmp_path / "run"
    tr = Trainer(tiny_cfg(run, "Train.max_iters=5", "Global.save_interval=1", "Global.sample_interval=0"))
    revise = tr.learner.revise
    sent = []

    def revise_and_signal_twice(*a, **k):
        if tr.global_iter == 2 and not sent:
            sent.append(1)
            os.kill(os.getpid(), signal.SIGTERM)  # the handler only records it
            time.sleep(0.01)
            os.kill(os.getpid(), signal.SIGTERM)  # the handler raises here
        return revise(*a, **k)

    tr.learner.revise = revise_and_signal_twice
    with pytest.raises(TrainingStopped) as stopped:
        tr.train()
    assert stopped.value.exit_code == 143 and "second signal SIGTERM" in str(stopped.value)
    assert "interrupted inside iter 3: abandoned" in (run / "train.log").read_text()
    assert states(run / "ckpt" / "latest")["global_iter"] == 2
    assert not [f for f in os.listdir(run / "ckpt") if ".tmp" in f]
    assert signal.getsignal(signal.SIGTERM) is not None and "StopOnSignal" not in repr(signal.getsignal(signal.SIGTERM))
