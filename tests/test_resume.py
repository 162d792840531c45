"""Exact resume under the default Langevin settings (engine auto) at every iteration boundary.

A straight run writes a checkpoint after every iteration; a run resumed from each of them must end
with every parameter and optimizer tensor (and the LR scheduler values) bit-identical to the
straight run. Resuming from `iter_k` is what follows a `kill -9` after the save of iteration k; the
Ctrl-C case below stops a run by a real SIGINT delivered in the middle of an iteration.
"""
import os
import signal

import pytest

from tiny_run import ITERS_PER_EPOCH, checkpoint_tensors, mismatches, run_tiny, states

N = 7  # crosses the epoch boundary (4 trained batches in epoch 1, then 5 per epoch)


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    run = tmp_path_factory.mktemp("straight")
    run_tiny(run, f"Train.max_iters={N}", "Global.save_interval=1", f"Global.keep_checkpoints={N + 1}")
    return run


def test_resume_at_every_iteration_is_bit_identical(straight, tmp_path):
    final = checkpoint_tensors(straight / "ckpt" / "latest")
    assert states(straight / "ckpt" / "latest")["langevin_engine"]["config"] == "auto"
    report = {}
    for k in range(1, N):
        prefix = straight / "ckpt" / f"iter_{k:07d}"
        assert states(prefix)["global_iter"] == k
        run_tiny(tmp_path / f"from_{k}", f"Train.max_iters={N}", resume=str(prefix))
        report[k] = mismatches(final, checkpoint_tensors(tmp_path / f"from_{k}" / "ckpt" / "latest"))
    print(f"resume sweep: {N - 1} resume points x {len(final)} tensors, "
          f"mismatches {sum(len(v) for v in report.values())}")
    assert all(not v for v in report.values()), {k: v[:5] for k, v in report.items() if v}
    # the runs did train: the first checkpoint differs from the last in most tensors
    assert len(mismatches(final, checkpoint_tensors(straight / "ckpt" / "iter_0000001"))) > len(final) // 2


def test_sigint_mid_iteration_saves_the_boundary_and_resumes_exactly(straight, tmp_path):
    """Ctrl-C inside iteration 5 (after its proposals were drawn): the iteration finishes, `latest` holds
    iteration 5 with the RNG state of that boundary, and a resume reaches the straight run exactly."""
    from paddle_coopflow.training import Trainer, TrainingStopped

    from tiny_run import tiny_cfg

    tr = Trainer(tiny_cfg(tmp_path / "int", f"Train.max_iters={N}"))
    revise = tr.learner.revise

    def revise_and_interrupt(*a, **k):
        if tr.global_iter == 4:
            os.kill(os.getpid(), signal.SIGINT)
        return revise(*a, **k)

    tr.learner.revise = revise_and_interrupt
    with pytest.raises(TrainingStopped) as stopped:
        tr.train()
    assert stopped.value.exit_code == 130
    latest = tmp_path / "int" / "ckpt" / "latest"
    st = states(latest)
    assert (st["global_iter"], st["epoch"], st["batch_pos"]) == (5, 1, 1)  # epoch 2 (0-based 1) starts
    assert ITERS_PER_EPOCH == 5
    assert signal.getsignal(signal.SIGINT) is not None and "StopOnSignal" not in repr(signal.getsignal(signal.SIGINT))
    run_tiny(tmp_path / "int", f"Train.max_iters={N}", resume=str(latest))
    bad = mismatches(checkpoint_tensors(straight / "ckpt" / "latest"), checkpoint_tensors(latest))
    assert not bad, bad[:5]
