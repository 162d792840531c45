"""The finite blow-up check (training/health.py): the rule on synthetic stats, its replay, a run that blows up."""
import glob
import json
import math
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from paddle_coopflow.config import load_config
from paddle_coopflow.training.health import HealthCheck, read_stats, replay
from paddle_coopflow.errors import UserError

from conftest import ROOT
from tiny_run import run_tiny, states


def _health(*extra):
    return load_config(None, [f"Health.{kv}" for kv in extra]).Health


def _stats(f=1.0, mse=0.1, clip=0.0):
    return {"f_data": f, "f_revised": 0.9 * f, "f_proposal": 0.5 * f, "langevin_mse": mse, "flow_bpd": 3.0,
            "langevin_delta_clip_frac": clip}


def _first_alarm(check, seq, phase=""):
    for step, st in enumerate(seq, 1):
        msg = check.update(step, st, phase)
        if msg:
            return step, msg
    return None, None


def test_noisy_healthy_stats_and_slow_growth_never_fire():
    rng = np.random.default_rng(0)
    noisy = [_stats(f=20 * math.exp(rng.normal(0, 0.5)), mse=0.13 * math.exp(rng.normal(0, 0.4)))
             for _ in range(3000)]
    assert _first_alarm(HealthCheck(_health()), noisy) == (None, None)
    # f growing 1.4x per check for 50 checks, from 0.4 to 6e6 (the digits demo: 0.4 -> 6,000 in 28 records)
    growth = [_stats(f=0.4 * 1.4 ** k) for k in range(50)]
    assert _first_alarm(HealthCheck(_health()), growth) == (None, None)


def test_sudden_runaway_fires_after_patience_checks_naming_iteration_and_quantity():
    calm = [_stats(f=10.0)] * 30
    seq = calm + [_stats(f=10.0 * 1e5)] * 5
    step, msg = _first_alarm(HealthCheck(_health()), seq)
    assert step == 33  # out of range at 31, 32, 33: patience 3
    assert re.fullmatch(r"finite blow-up at iteration 33: max \|f\| on data/revisions/proposals = 1e\+06 above "
                        r"1e\+05 \(Health.energy_factor=10000 x .*\) for 3 checks in a row", msg), msg
    # the displacement of the chains, the share of clipped Langevin gradient terms
    step, msg = _first_alarm(HealthCheck(_health()), [_stats(mse=0.1)] * 30 + [_stats(mse=9.0)] * 5
                             + [_stats(mse=30.0)] * 3)
    assert step == 38 and "langevin_mse" in msg and "= 30 above 10 " in msg  # 9 is within 100 x 0.1
    step, msg = _first_alarm(HealthCheck(_health()), [_stats(clip=0.04)] * 3 + [_stats(clip=0.1)] * 3)
    assert step == 6 and "langevin_delta_clip_frac" in msg and "= 0.1 above 0.05 (Health.clip_frac=0.05)" in msg


def test_spikes_floors_reference_and_phases():
    # single spikes (one far-out proposal) are ignored; an out-of-range streak needs `patience` in a row
    spiky = [_stats(mse=1e3 if k % 3 == 0 else 0.1) for k in range(1, 200)]
    assert _first_alarm(HealthCheck(_health()), spiky) == (None, None)
    # tiny values early on: the floor, not the median (1e-9), sets the limit
    chk = HealthCheck(_health())
    _first_alarm(chk, [_stats(f=1e-3, mse=1e-9)] * 25)
    assert chk.limit("energy") == 1e4 and chk.limit("langevin") == pytest.approx(5.0)
    # out-of-range checks never enter the reference: a slow second streak is still measured against the calm
    chk = HealthCheck(_health("patience=1000"))
    _first_alarm(chk, [_stats(f=10.0)] * 30 + [_stats(f=1e6)] * 100)
    assert chk.limit("energy") == 1e5 and chk.suspect == "energy"
    # a new phase restarts the references (no limit until `warmup` calm checks of the phase)
    chk.update(200, _stats(f=1e6), "coop")
    assert chk.limit("energy") is None and chk.suspect is None
    off = HealthCheck(_health("check=false"))
    assert _first_alarm(off, [_stats(f=10.0)] * 30 + [_stats(f=1e9)] * 9) == (None, None)
    # quantities a record lacks (the flow-only phase has no energies) are skipped
    assert HealthCheck(_health()).update(1, {"flow_bpd": 3.0, "f_data": float("nan")}) is None


def test_replay_over_stats_jsonl_matches_the_online_rule(tmp_path):
    seq = [_stats(f=10.0)] * 30 + [_stats(f=1e6)] * 5
    path = tmp_path / "stats.jsonl"
    with open(path, "w") as fh:
        for step, st in enumerate(seq, 1):
            rec = {"train/f_data": st["f_data"], "train/f_revised": st["f_revised"], "train/f_proposal":
                   st["f_proposal"], "langevin/mse_change": st["langevin_mse"], "train/flow_bpd": st["flow_bpd"],
                   "phase": "coop", "step": step}
            fh.write(json.dumps(rec) + "\n")
        fh.write('{"eval/fid": 3.0, "step": 35}\n{"train/f_da')  # an eval record and a line cut by a kill
    assert len(read_stats(str(path))) == 35
    online = _first_alarm(HealthCheck(_health()), seq, "coop")[1]
    assert replay(str(path), _health()) == online and "iteration 33" in online
    calm = tmp_path / "calm.jsonl"
    calm.write_text("".join(line for line in open(path) if '"step": 3' not in line))  # steps 3 and 30-35 dropped
    r = subprocess.run([sys.executable, "tools/train.py", "--check-health", str(path), str(calm)], cwd=ROOT,
                       capture_output=True, text=True)
    assert r.returncode == 1 and r.stdout.splitlines() == [f"{path}: {online}", f"{calm}: no blow-up"], r.stdout


def test_a_run_that_blows_up_stops_with_one_line_and_keeps_the_checkpoints_before(tmp_path):
    """EBM learning rate 1: f runs away within a few iterations but stays finite; the run stops at the alarm
    (the Langevin gradient terms hit the δ clip, then f's scale explodes)."""
    run = tmp_path / "run"
    with pytest.raises(UserError) as err:
        run_tiny(run, "Optimizer.ebm_lr=1.0", "Health.warmup=2", "Health.patience=2", "Global.save_interval=1",
                 "Global.keep_checkpoints=50", "Train.max_iters=40")
    msg = str(err.value)
    assert "\n" not in msg and re.match(r"finite blow-up at iteration (\d+): (max \|f\||langevin_delta_clip_frac)",
                                         msg), msg
    alarm = int(re.match(r"finite blow-up at iteration (\d+)", msg).group(1))
    named = msg.split("Last checkpoint before it: ")[1].split(" (")[0]
    saved = sorted(int(re.search(r"iter_(\d+)\.pdparams$", p).group(1))
                   for p in glob.glob(str(run / "ckpt" / "iter_*.pdparams")))
    # nothing was saved from the first out-of-range check (patience 2: alarm - 1) on; the newest is named
    assert saved and saved[-1] == alarm - 2 and states(named)["global_iter"] == alarm - 2
    assert states(run / "ckpt" / "latest")["global_iter"] == alarm - 2
    records = [json.loads(line) for line in open(run / "stats.jsonl")]
    assert all(math.isfinite(r["train/f_data"]) for r in records) and records[-1]["step"] == alarm
    assert "not saving iter_" in open(run / "train.log").read()


def test_energy_guard_is_logged_when_on(tmp_path):
    run = tmp_path / "run"
    run_tiny(run, "Optimizer.ebm_energy_l2=0.1", "Train.max_iters=2")
    rec = [json.loads(line) for line in open(run / "stats.jsonl")][-1]
    assert rec["train/ebm_energy_l2"] == pytest.approx(0.1 * (rec["train/f_data"] ** 2 + rec["train/f_revised"] ** 2),
                                                       rel=0.5)
    assert "train/ebm_energy_l2" not in [json.loads(line) for line in open(_off(tmp_path))][-1]


def _off(tmp_path):
    run_tiny(tmp_path / "off", "Train.max_iters=1")
    return os.path.join(tmp_path / "off", "stats.jsonl")
