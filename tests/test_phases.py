"""The trainer's phases end to end: CoopFlow(Pre) in one job, Train.init_flow, both baselines, noise by
epoch (eq. 10), FID placement and `best` selection."""
import numpy as np
import pytest

from tiny_run import checkpoint_tensors, states, stats_records, tiny_cfg


def _params(prefix, net):
    return {k[len(f"params/{net}/"):]: v for k, v in checkpoint_tensors(prefix).items()
            if k.startswith(f"params/{net}/")}


def _same(a, b):
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def _opt_keys(prefix, name):
    from paddle_coopflow.checkpoint import load_checkpoint

    opt = load_checkpoint(str(prefix), need=(".pdopt",))["opt"]
    return None if name not in opt else [k for k in opt[name] if "moment" in k]


def _trainer_with_fake_weights(cfg):
    """A Trainer whose in-training FID accepts the placeholder weights file (the FID itself is faked)."""
    from paddle_coopflow.training import Trainer
    from paddle_coopflow.metrics import inception

    mp = pytest.MonkeyPatch()
    mp.setattr(inception, "check_weight_file", lambda path: None)
    try:
        return Trainer(cfg)
    finally:
        mp.undo()


@pytest.fixture(scope="module")
def pre_run(tmp_path_factory):
    """Pre-training (epoch 1, iters 1-4) → warm-up, flow frozen (epoch 2, 5-9) → cooperative (epoch 3, 10-14),
    noise decay with K = 2 epochs, fake FID every epoch."""
    from paddle_coopflow.training import Trainer

    tmp = tmp_path_factory.mktemp("pre")
    (tmp / "inception.pth").write_bytes(b"weights")
    cfg = tiny_cfg(tmp / "run", "Train.pretrain_epochs=1", "Train.frozen_flow_epochs=1", "Train.coop_epochs=1",
                   "Global.save_every_epochs=1", "Global.keep_checkpoints=10", "Global.sample_interval=0",
                   "Langevin.noise_mode=decay", "Langevin.noise_decay_K=2", "Eval.fid_every_epochs=1",
                   f"Eval.inception_weights={tmp / 'inception.pth'}")
    tr = _trainer_with_fake_weights(cfg)
    ebm0 = {k: v.numpy().copy() for k, v in tr.ebm.state_dict().items()}
    calls = _train_with_fake_fid(tr, lambda: (tr.epoch, tr.global_iter), lambda: 100.0 - tr.epoch)
    return tmp / "run", ebm0, calls


def _train_with_fake_fid(tr, where, value):
    """Train with InTrainingFID.evaluate replaced: each call records where() + the global_iter of the
    checkpoint on disk for the current iteration, and returns value() as the FID."""
    from paddle_coopflow import evaluation

    calls = []

    def fake_fid(fid, flow, ebm, run_dir=None):
        calls.append((*where(), states(tr.ckpt_dir + f"/iter_{tr.global_iter:07d}")["global_iter"]))
        return {fid.log_key: value()}

    mp = pytest.MonkeyPatch()
    mp.setattr(evaluation.InTrainingFID, "evaluate", fake_fid)
    try:
        tr.train()
    finally:
        mp.undo()
    return calls


def test_pretrain_then_frozen_warmup_then_coop(pre_run):
    run, ebm0, _ = pre_run
    ck = {e: run / "ckpt" / f"iter_{i:07d}" for e, i in ((1, 4), (2, 9), (3, 14))}
    assert [states(p)["phase"] for p in ck.values()] == ["frozen_flow", "coop", "coop"]
    assert _same(_params(ck[1], "ebm"), ebm0)                           # pre-training: EBM untouched
    assert _same(_params(ck[2], "flow"), _params(ck[1], "flow"))        # warm-up: flow frozen
    assert not _same(_params(ck[2], "ebm"), _params(ck[1], "ebm"))      # ... EBM trained
    assert not _same(_params(ck[3], "flow"), _params(ck[2], "flow"))    # coop: both train
    assert not _same(_params(ck[3], "ebm"), _params(ck[2], "ebm"))


def test_fresh_optimizers_and_warmup_after_pretraining(pre_run):
    run, _, _ = pre_run
    ck = {e: run / "ckpt" / f"iter_{i:07d}" for e, i in ((1, 4), (2, 9), (3, 14))}
    assert _opt_keys(ck[1], "pre_flow")                                  # pre-training's own Adam moments
    assert _opt_keys(ck[2], "pre_flow") is None and _opt_keys(ck[2], "flow") == []  # new flow Adam, unused
    assert _opt_keys(ck[3], "flow")                                      # ... stepped in the coop phase
    assert states(ck[2])["samples_seen"] == 4 * 64 + 41                         # the coop learner counts from 0
    lr = {r["step"]: (r.get("lr/flow"), r.get("lr/ebm")) for r in stats_records(run)}
    assert lr[1][0] == 0 and lr[3][0] == pytest.approx(5e-4) and lr[4][0] == pytest.approx(1e-3)
    assert lr[5][1] == 0 and lr[6][1] == 0 and lr[7][1] == pytest.approx(5e-4)  # EBM warm-up from sample 0


def test_noise_std_by_epoch_is_eq_10(pre_run):
    run, _, _ = pre_run
    recs = [r for r in stats_records(run) if "langevin/noise_std" in r]
    assert sorted(r["step"] for r in recs) == list(range(5, 15))         # no Langevin while pre-training
    for r in recs:
        e = r["epoch"] - 1                                               # epochs count from the warm-up
        assert r["langevin/noise_std"] == pytest.approx(max(1 - e / 2, 0) ** 20, rel=1e-12), r


def test_fid_after_the_epoch_save_never_in_pretraining_and_best(pre_run):
    run, _, calls = pre_run
    assert [(e, i) for e, i, _ in calls] == [(2, 9), (3, 14)]            # not after the pre-training epoch
    assert all(saved == i for _, i, saved in calls)                      # the epoch's checkpoint was on disk
    best = states(run / "ckpt" / "best")
    assert best["best"] == {"metric": "fid_5000", "value": 97.0, "epoch": 3, "iter": 14} and best["global_iter"] == 14


def test_fid_every_iters_after_the_save_and_never_in_pretraining(tmp_path):
    """Eval.fid_every_iters (runs shorter than an epoch): at iterations 6 and 8, not 2 and 4 (pre-training)."""
    from paddle_coopflow.training import Trainer

    (tmp_path / "inception.pth").write_bytes(b"weights")
    tr = _trainer_with_fake_weights(tiny_cfg(
        tmp_path / "run", "Train.pretrain_epochs=1", "Train.coop_epochs=1", "Train.max_iters=8",
        "Global.sample_interval=0", "Global.keep_checkpoints=10", "Eval.fid_every_iters=2",
        f"Eval.inception_weights={tmp_path / 'inception.pth'}"))
    calls = _train_with_fake_fid(tr, lambda: (tr.global_iter,), lambda: 100.0 - tr.global_iter)
    assert calls == [(6, 6), (8, 8)]
    assert [r["step"] for r in stats_records(tmp_path / "run") if "eval/fid_5000" in r] == [6, 8]
    assert states(tmp_path / "run" / "ckpt" / "best")["best"]["iter"] == 8


def test_init_flow_skips_pretraining_and_keeps_the_flow_frozen_in_warmup(pre_run, tmp_path):
    from paddle_coopflow.training import Trainer

    src = pre_run[0] / "ckpt" / "iter_0000004"
    tr = Trainer(tiny_cfg(tmp_path / "run", f"Train.init_flow={src}", "Train.pretrain_epochs=1",
                          "Train.frozen_flow_epochs=1", "Train.coop_epochs=0", "Global.sample_interval=0"))
    ebm0 = {k: v.numpy().copy() for k, v in tr.ebm.state_dict().items()}
    out = tr.train()
    assert out["global_iter"] == 5                                       # one warm-up epoch, no ActNorm init batch
    latest = tmp_path / "run" / "ckpt" / "latest"
    assert _same(_params(latest, "flow"), _params(src, "flow"))
    assert not _same(_params(latest, "ebm"), ebm0)
    log = (tmp_path / "run" / "train.log").read_text()
    assert "pre-training epochs are skipped" in log and "ActNorm data-dependent init" not in log


def test_flow_only_baseline_and_best_by_bits_per_dim(tmp_path):
    from paddle_coopflow.training import Trainer

    run = tmp_path / "run"
    Trainer(tiny_cfg(run, "Train.mode=flow_only", "Train.coop_epochs=2", "Global.sample_interval=9")).train()
    assert set(k.split("/")[1] for k in checkpoint_tensors(run / "ckpt" / "latest") if k.startswith("params/")) \
        == {"flow"}
    bpd = {r["epoch"]: r["train/epoch_bpd"] for r in stats_records(run) if "train/epoch_bpd" in r}
    assert sorted(bpd) == [1, 2]
    best = states(run / "ckpt" / "best")["best"]
    assert best["metric"] == "train_bpd" and best["value"] == pytest.approx(min(bpd.values()))
    assert best["epoch"] == min(bpd, key=bpd.get)
    assert (run / "samples" / "iter_0000009.png").exists()


def test_langevin_only_baseline(tmp_path):
    from paddle_coopflow.training import Trainer

    run = tmp_path / "run"
    tr = Trainer(tiny_cfg(run, "Train.mode=langevin_only", "Train.max_iters=3"))
    ebm0 = {k: v.numpy().copy() for k, v in tr.ebm.state_dict().items()}
    tr.train()
    p = checkpoint_tensors(run / "ckpt" / "latest")
    assert set(k.split("/")[1] for k in p if k.startswith("params/")) == {"ebm"}
    assert not _same(_params(run / "ckpt" / "latest", "ebm"), ebm0)
    assert (run / "samples" / "iter_0000003.png").exists()
