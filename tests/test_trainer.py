"""Training engine contracts: logs, the Langevin engine record, run-dir safety, NaN streaks, data errors, CLI."""
import glob
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from paddle_coopflow.checkpoint import load_checkpoint, save_checkpoint
from paddle_coopflow.errors import CheckpointError, UserError

from conftest import ROOT
from tiny_run import run_tiny, states, stats_records, tiny_cfg


def _log(run):
    return open(os.path.join(run, "train.log")).read()


def test_logs_samples_stats_and_langevin_engine(tmp_path):
    run = tmp_path / "run"
    run_tiny(run, "Train.max_iters=3")
    assert [r["step"] for r in stats_records(run)] == [1, 2, 3]
    for key in ("train/ebm_loss", "train/flow_bpd", "lr/flow", "langevin/mse_change", "time/ips"):
        assert key in stats_records(run)[-1]
    assert (run / "samples" / "iter_0000003.png").exists() and (run / "config.yaml").exists()
    engine = states(run / "ckpt" / "latest")["langevin_engine"]
    assert engine["config"] == "auto" and engine["in_use"] in ("static", "dygraph")
    assert f"Langevin step: {engine['in_use']} (Langevin.engine=auto" in _log(run)
    # resuming with another engine: the config decides and the log says the numbers will differ
    run_tiny(run, "Train.max_iters=4", "Langevin.engine=dygraph", resume=str(run / "ckpt" / "latest"))
    assert states(run / "ckpt" / "latest")["langevin_engine"] == {"config": "dygraph", "in_use": "dygraph"}
    if engine["in_use"] == "static":
        assert "trained with the static Langevin step; this run takes the dygraph step" in _log(run)


def test_refusal_suggests_resume_only_when_latest_exists(tmp_path):
    run = tmp_path / "run"
    run_tiny(run, "Train.max_iters=1")
    with pytest.raises(UserError, match=r"--resume .*ckpt/latest.*overwrite=true"):
        tiny_cfg_trainer(run)
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "train.log").write_text("old\n")
    with pytest.raises(UserError, match="overwrite=true") as err:
        tiny_cfg_trainer(bare)
    assert "--resume" not in str(err.value)


def tiny_cfg_trainer(run, *extra):
    from paddle_coopflow.training import Trainer

    return Trainer(tiny_cfg(run, "Train.max_iters=1", *extra))


def test_overwrite_moves_the_old_run_aside(tmp_path):
    run = tmp_path / "run"
    run_tiny(run, "Train.max_iters=2", "Global.save_interval=1")
    run_tiny(run, "Train.max_iters=1", "Global.overwrite=true")
    old = glob.glob(str(tmp_path / "run.old-*"))
    assert len(old) == 1
    assert os.path.isfile(os.path.join(old[0], "ckpt", "iter_0000002.pdparams"))
    assert sorted(os.listdir(run / "ckpt")) == sorted(f"{p}.{s}" for p in ("iter_0000001", "latest")
                                                      for s in ("pdparams", "pdopt", "pdstates"))
    assert [r["step"] for r in stats_records(run)] == [1]
    assert _log(run).count("rank 0/1") == 1 and f"was moved to {old[0]}" in _log(run)


def test_failed_start_leaves_nothing(tmp_path):
    from paddle_coopflow.data import DatasetError
    from paddle_coopflow.training import Trainer

    with pytest.raises((UserError, DatasetError)):
        Trainer(tiny_cfg(tmp_path / "a", "Data.name=folder", f"Data.root={tmp_path / 'no_such_folder'}"))
    with pytest.raises(CheckpointError):
        Trainer(tiny_cfg(tmp_path / "b"), resume=str(tmp_path / "nope"))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_batch_larger_than_the_data_is_refused_before_the_run_dir(tmp_path):
    from PIL import Image

    from paddle_coopflow.data import DatasetError
    from paddle_coopflow.training import Trainer

    with pytest.raises(DatasetError, match=r"Train.batch_size=100000 is larger than the 297 images of digits "
                                           r"\(split test\); set -o Train.batch_size=297 or less"):
        Trainer(tiny_cfg(tmp_path / "a", "Train.batch_size=100000", "Train.data_init_batches=0"))
    one = tmp_path / "one"
    one.mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(one / "x.png")
    with pytest.raises(DatasetError, match=r"Train.batch_size=32 is larger than the 1 images of folder"):
        Trainer(tiny_cfg(tmp_path / "b", "Data.name=folder", f"Data.root={one}", "Data.split=all",
                         "Train.batch_size=32"))
    # 297 images = 5 batches of 64: ActNorm's init may take 4 of them, not 5
    with pytest.raises(DatasetError, match=r"Train.data_init_batches=5 would use every batch of epoch 1: .* 297 "
                                           r"images, 5 batch\(es\) of Train.batch_size=64; set -o Train.batch_size=59 "
                                           r"or less, or -o Train.data_init_batches=4"):
        Trainer(tiny_cfg(tmp_path / "c", "Train.data_init_batches=5"))
    assert not any((tmp_path / d).exists() for d in "abc")
    Trainer(tiny_cfg(tmp_path / "d", "Train.data_init_batches=5", "Train.batch_size=59"))  # the fix it names works


def test_cli_batch_larger_than_the_data_leaves_nothing(tmp_path):
    r = subprocess.run([sys.executable, "tools/train.py", "-c", "configs/digits_demo.yaml", "-o",
                        f"Global.output_dir={tmp_path}/x", "-o", "Train.batch_size=100000"],
                       cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "Train.batch_size=100000 is larger than the" in r.stderr and "Traceback" not in r.stderr
    assert not os.path.exists(tmp_path / "x")


def test_resume_cleans_temp_files_and_stats_have_no_repeated_steps(tmp_path):
    run = tmp_path / "run"
    run_tiny(run, "Train.max_iters=4", "Global.save_interval=2")
    stale = run / "ckpt" / "iter_0000004.pdparams.tmp4242"
    stale.write_bytes(b"partial")
    run_tiny(run, "Train.max_iters=5", resume=str(run / "ckpt" / "iter_0000002"))
    assert not stale.exists() and f"removed {stale}" in _log(run)
    assert [r["step"] for r in stats_records(run)] == [1, 2, 3, 4, 5]
    assert "stats.jsonl: dropped 2 records after iter 2" in _log(run)


def test_nonfinite_streak_never_saves_and_names_the_checkpoint_before_it(tmp_path):
    run = tmp_path / "run"
    with pytest.raises(UserError, match="consecutive non-finite steps") as err:
        run_tiny(run, "Optimizer.ebm_lr=1e6", "Global.max_consecutive_nonfinite=3", "Global.save_interval=1",
                 "Global.keep_checkpoints=2", "Train.max_iters=40")
    named = str(err.value).split("before the streak): ")[1].split(" (")[0]
    good = states(named)
    saved = sorted(int(re.search(r"iter_(\d+)\.pdparams$", p).group(1))
                   for p in glob.glob(str(run / "ckpt" / "iter_*.pdparams")))
    assert saved[-1] == good["global_iter"] and named.endswith(f"iter_{good['global_iter']:07d}")
    assert states(run / "ckpt" / "latest")["global_iter"] == good["global_iter"]
    assert good["counters"]["nonfinite"] == 0 and "consecutive_nonfinite" not in good
    assert "not saving iter_" in _log(run)
    # a resume runs on: no streak counter is stored, so 2 more non-finite steps (< 3) do not stop it
    out = run_tiny(run, "Train.max_iters=%d" % (good["global_iter"] + 2), resume=named)
    assert out["global_iter"] == good["global_iter"] + 2


def test_nonfinite_streak_after_resume_names_the_checkpoint_resumed_from(tmp_path):
    run = tmp_path / "run"
    run_tiny(run, "Train.max_iters=1")  # writes iter_0000001 and latest
    with pytest.raises(UserError, match="consecutive non-finite steps") as err:
        run_tiny(run, "Optimizer.ebm_lr=1e6", "Global.max_consecutive_nonfinite=3", "Global.save_every_epochs=0",
                 "Train.max_iters=40", resume=str(run / "ckpt" / "latest"))
    assert f"before the streak): {run / 'ckpt' / 'latest'} (" in str(err.value)
    assert states(run / "ckpt" / "latest")["global_iter"] == 1


def test_corrupt_image_mid_run_saves_latest_and_stops_with_one_line(tmp_path):
    from paddle_coopflow.data import DatasetError
    from paddle_coopflow.training import Trainer

    tr = Trainer(tiny_cfg(tmp_path / "run", "Train.max_iters=6"))
    cls = type(tr.dataset)
    orig = cls.__getitem__

    def failing(self, i):
        if tr.global_iter == 2:
            raise DatasetError("cannot decode image /data/digits/bad_017.png (OSError: truncated)")
        return orig(self, i)

    cls.__getitem__ = failing
    try:
        with pytest.raises(UserError, match=r"stopped at iter 2: cannot decode image /data/digits/bad_017.png") as e:
            tr.train()
    finally:
        cls.__getitem__ = orig
    assert "\n" not in str(e.value)
    assert states(tmp_path / "run" / "ckpt" / "latest")["global_iter"] == 2


def test_checkpoint_errors(tmp_path):
    prefix = str(tmp_path / "ck")
    save_checkpoint(prefix, {"a": 1}, {"b": 2}, {"c": 3})
    os.remove(prefix + ".pdopt")
    with pytest.raises(CheckpointError, match=r"missing .*ck\.pdopt.*expected"):
        load_checkpoint(prefix)
    # a prefix whose files come from two different saves (interrupted write) is refused
    params, opt, st = {"flow": {"w": np.zeros(2, np.float32)}}, {"flow": {}}, {"global_iter": 0}
    save_checkpoint(prefix, params, opt, st)
    save_checkpoint(str(tmp_path / "other"), params, opt, st)
    os.replace(str(tmp_path / "other") + ".pdopt", prefix + ".pdopt")
    with pytest.raises(CheckpointError, match="different saves"):
        load_checkpoint(prefix)


def test_cli_dry_run_paper_param_counts():
    r = subprocess.run([sys.executable, "tools/train.py", "-c", "configs/celeba_t30.yaml", "--dry-run"],
                       cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "params/flow: 28,784,792" in r.stdout and "params/ebm: 17,129,444" in r.stdout


def test_cli_resume_missing_file_is_one_line(tmp_path):
    r = subprocess.run([sys.executable, "tools/train.py", "-c", "configs/digits_demo.yaml",
                        "-o", f"Global.output_dir={tmp_path}/x", "--resume", str(tmp_path / "nope")],
                       cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 2
    assert "nope.pdparams" in r.stderr and "Traceback" not in r.stderr
    assert not os.path.exists(tmp_path / "x")
