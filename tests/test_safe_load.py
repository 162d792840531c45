"""No file the package reads can run code, and the last bad inputs end in one line.

Each reader gets a file whose pickle would create a marker file when unpickled (the control test shows
that plain `pickle` does run it): the marker must stay absent, the error must be one line naming the
file and what was refused, tools must exit 2 and write nothing. A real file of each kind still loads.
Tools run in-process through `run_cli` (what their `__main__` calls), and as subprocesses where the
exit status of the real process matters (the issue's headline cases and the deploy script's hang).
"""
import errno
import importlib.util
import io
import os
import pickle
import shlex
import shutil
import subprocess
import sys
import time
import zipfile

import numpy as np
import paddle
import pytest

from conftest import ROOT
from test_fid import _Storage, _Tensor, write_torch_file
from tiny_run import run_tiny, states, tiny_cfg

from paddle_coopflow import official
from paddle_coopflow.checkpoint import load_checkpoint
from paddle_coopflow.cli import run_cli
from paddle_coopflow.errors import CheckpointError, UserError
from paddle_coopflow.utils.pth_reader import load_pth

LEGACY_MAGIC, LEGACY_PROTOCOL = 0x1950A86A20F9469CFC6C, 1001
REFUSED = "refusing to load global posix.system"


class Payload:
    """Unpickling this runs `touch MARKER` (os.system: the global posix.system)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(self.marker)}",)


@pytest.fixture
def marker(tmp_path):
    return tmp_path / "payload_ran"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny CoopFlow run of 2 iterations (checkpoints iter_0000001, iter_0000002, latest) and its config."""
    run = tmp_path_factory.mktemp("trained") / "run"
    run_tiny(run, "Train.max_iters=2", "Global.sample_interval=0", "Global.save_interval=1")
    yaml_path = run.parent / "tiny.yaml"
    yaml_path.write_text(tiny_cfg(run, "Global.sample_interval=0").dump())
    return run, str(yaml_path)


def checkpoint_with(trained, tmp_path, suffix, obj):
    """A copy of the run's `latest` triple whose `suffix` file is the pickle of `obj`; returns its prefix."""
    dst = tmp_path / "ck"
    dst.mkdir(exist_ok=True)
    for s in (".pdparams", ".pdopt", ".pdstates"):
        shutil.copyfile(trained[0] / "ckpt" / f"latest{s}", dst / f"m{s}")
    (dst / f"m{suffix}").write_bytes(pickle.dumps(obj, protocol=2))
    return str(dst / "m")


def one_line(err: str, *words) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip() and "warn" not in ln.lower()]
    assert "Traceback" not in err and len(lines) == 1, err
    for w in words:
        assert str(w) in lines[0], (w, lines[0])
    return lines[0]


def raises_one_line(exc_type, fn, *words) -> str:
    with pytest.raises(exc_type) as e:
        fn()
    assert isinstance(e.value, UserError)
    return one_line(str(e.value), *words)


def tool(name, argv, capsys, monkeypatch):
    """tools/<name>.py run in-process as its __main__ does: (exit status, stderr)."""
    monkeypatch.syspath_prepend(os.path.join(ROOT, "tools"))
    spec = importlib.util.spec_from_file_location(f"_tool_{name}", os.path.join(ROOT, "tools", f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    capsys.readouterr()
    rc = run_cli(mod.main, [str(a) for a in argv])
    return rc, capsys.readouterr().err


def subprocess_tool(path, *args, timeout=120):
    env = dict(os.environ, GLOG_minloglevel="2")
    return subprocess.run([sys.executable, os.path.join(ROOT, path), *map(str, args)], capture_output=True,
                          text=True, env=env, timeout=timeout, cwd=ROOT)


def test_the_payload_runs_under_plain_pickle(marker):
    """Control: the payload is live, so an absent marker below means the reader refused it."""
    pickle.loads(pickle.dumps(Payload(marker)))
    assert marker.exists()


# ------------------------------------------------------------------------------------ torch files
def legacy_file(path, evil_at=None, evil=None):
    """torch's legacy layout (magic, protocol, sys info, object, storage keys) with no tensors;
    the pickle at `evil_at` replaced by `evil`."""
    parts = {"magic": LEGACY_MAGIC, "protocol": LEGACY_PROTOCOL, "sys_info": {"little_endian": True},
             "object": {"net": {}, "epoch": 1}, "storage_keys": []}
    if evil_at:
        parts[evil_at] = evil
    with open(path, "wb") as fh:
        for obj in parts.values():
            pickle.dump(obj, fh, protocol=2)
    return str(path)


@pytest.mark.parametrize("where", ["plain", "plain_dict", "magic", "protocol", "sys_info", "object",
                                   "storage_keys", "zip"])
def test_torch_reader_refuses_every_pickle(tmp_path, marker, where):
    path = tmp_path / "evil.pth.tar"
    if where == "plain":
        path.write_bytes(pickle.dumps(Payload(marker)))
    elif where == "plain_dict":
        path.write_bytes(pickle.dumps({"flow_net": {"w": Payload(marker)}}))
    elif where == "zip":
        with zipfile.ZipFile(path, "w") as zf:
            zf.writestr("archive/data.pkl", pickle.dumps({"net": Payload(marker)}, protocol=2))
    else:
        legacy_file(path, where, {"x": Payload(marker)} if where == "object" else Payload(marker))
    raises_one_line(UserError, lambda: official.read_official(str(path)), path, REFUSED, "nothing in it was run")
    assert not marker.exists()


def test_torch_files_still_load(tmp_path):
    w = np.arange(6, dtype=np.float32).reshape(2, 3)
    for legacy in (False, True):
        path = str(tmp_path / f"ok_{legacy}.pth")
        write_torch_file(path, {"net": {"module.w": _Tensor(_Storage("0", w), 0, (2, 3), (3, 1))}, "epoch": 7},
                         legacy=legacy)
        out = load_pth(path)
        assert out["epoch"] == 7 and np.array_equal(out["net"]["module.w"], w)
    assert load_pth(legacy_file(tmp_path / "bare.pth")) == {"net": {}, "epoch": 1}


def test_legacy_storage_count_is_bounded_by_the_file(tmp_path):
    """A storage whose element count (read from the file) exceeds the file: one line, no huge read."""
    path = str(tmp_path / "big.pth")
    write_torch_file(path, {"w": _Tensor(_Storage("0", np.ones(4, np.float32)), 0, (4,), (1,))}, legacy=True)
    raw = bytearray(open(path, "rb").read())
    raw[-16 - 8:-16] = (2 ** 60).to_bytes(8, "little")  # the int64 count before the 16 data bytes
    open(path, "wb").write(bytes(raw))
    raises_one_line(UserError, lambda: official.read_official(path), "claims 1152921504606846976 elements")


def test_convert_official_tool_refuses_a_plain_pickle(trained, tmp_path, marker):
    src = tmp_path / "model.pth.tar"
    src.write_bytes(pickle.dumps({"flow_net": Payload(marker), "ebm_net": {}}))
    r = subprocess_tool("tools/convert_official.py", "--src", src, "--dst", tmp_path / "out" / "m", "-c", trained[1])
    assert r.returncode == 2, r.stderr
    one_line(r.stderr, src, REFUSED)
    assert not marker.exists() and not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------ checkpoints
@pytest.mark.parametrize("suffix", [".pdparams", ".pdopt", ".pdstates"])
def test_checkpoint_parts_are_refused(trained, tmp_path, marker, suffix):
    prefix = checkpoint_with(trained, tmp_path, suffix, {"flow": Payload(marker)})
    raises_one_line(CheckpointError, lambda: load_checkpoint(prefix), prefix + suffix, REFUSED)
    assert not marker.exists()


def test_real_checkpoint_loads_as_paddle_load_gives_it(trained):
    prefix = str(trained[0] / "ckpt" / "latest")
    ours = load_checkpoint(prefix)
    theirs = paddle.load(prefix + ".pdparams")
    assert set(ours["params"]) == {"flow", "ebm", "_ckpt_id"}
    for net in ("flow", "ebm"):
        assert list(ours["params"][net]) == list(theirs[net])
        for k, v in theirs[net].items():
            mine = ours["params"][net][k]
            assert isinstance(mine, paddle.Tensor) and mine.name == v.name and np.array_equal(mine.numpy(), v.numpy())
    from paddle.base.libpaddle import GeneratorState

    assert ours["states"]["global_iter"] == 2 and isinstance(ours["states"]["rng"]["paddle"][0], GeneratorState)


def test_pdparams_holding_an_int_is_one_line(trained, tmp_path):
    from paddle_coopflow.builder import load_trained

    prefix = checkpoint_with(trained, tmp_path, ".pdparams", 0)
    cfg = tiny_cfg(tmp_path / "unused")
    raises_one_line(CheckpointError, lambda: load_trained(cfg, prefix), prefix + ".pdparams", "holds int")


def test_sample_tool_refuses_pdparams_and_creates_nothing(trained, tmp_path, marker, capsys, monkeypatch):
    """The issue's headline: tools/sample.py --ckpt on a replaced .pdparams (config from the .pdstates)."""
    prefix = checkpoint_with(trained, tmp_path, ".pdparams", {"flow": Payload(marker)})
    out = tmp_path / "out"
    r = subprocess_tool("tools/sample.py", "--ckpt", prefix, "--num", 2, "--out", out, "--no-progress")
    assert r.returncode == 2, r.stderr
    one_line(r.stderr, prefix + ".pdparams", REFUSED)
    assert not marker.exists() and not out.exists()
    # with -c, and a .pdparams that unpickles to an int: no OUT/coopflow, OUT/flow left behind either
    prefix = checkpoint_with(trained, tmp_path, ".pdparams", 0)
    rc, err = tool("sample", ["-c", trained[1], "--ckpt", prefix, "--num", 2, "--out", out], capsys, monkeypatch)
    assert rc == 2 and not out.exists()
    one_line(err, prefix + ".pdparams", "holds int")


def test_train_resume_refuses_pdopt(trained, tmp_path, marker, capsys, monkeypatch):
    prefix = checkpoint_with(trained, tmp_path, ".pdopt", {"flow": Payload(marker)})
    before = sorted(os.listdir(trained[0]))
    rc, err = tool("train", ["-c", trained[1], "--resume", prefix], capsys, monkeypatch)
    assert rc == 2 and not marker.exists()
    one_line(err, prefix + ".pdopt", REFUSED)
    assert sorted(os.listdir(trained[0])) == before


def test_export_tool_refuses_pdstates(trained, tmp_path, marker, capsys, monkeypatch):
    prefix = checkpoint_with(trained, tmp_path, ".pdstates", {"config": Payload(marker)})
    rc, err = tool("export_model", ["--ckpt", prefix], capsys, monkeypatch)
    assert rc == 2 and not marker.exists()
    one_line(err, prefix + ".pdstates", REFUSED)


def test_eval_tool_refuses_a_checkpoint_source(trained, tmp_path, marker, capsys, monkeypatch):
    prefix = checkpoint_with(trained, tmp_path, ".pdparams", {"ebm": Payload(marker)})
    stats = tmp_path / "stats.npz"
    rc, err = tool("eval", [prefix, "--save-stats", stats, "--random-init-inception", "--num", 2,
                            "--no-progress"], capsys, monkeypatch)
    assert rc == 2 and not marker.exists() and not stats.exists()
    one_line(err, prefix + ".pdparams", REFUSED)


# ------------------------------------------------------------------------------------ FID weights
@pytest.fixture(scope="module")
def inception_pdparams(tmp_path_factory):
    """A valid (random) FID Inception state dict, saved by paddle.save as tools/convert_inception.py does."""
    from paddle_coopflow.metrics.inception import FIDInceptionV3

    path = tmp_path_factory.mktemp("fid") / "inception.pdparams"
    paddle.save(FIDInceptionV3().state_dict(), str(path))
    return path


def fid_cfg(tmp_path, weights):
    return tiny_cfg(tmp_path / "run", "Eval.fid_every_epochs=1", f"Eval.inception_weights={weights}")


@pytest.mark.parametrize("name", ["w.pdparams", "w.pth"])
def test_inception_weights_are_refused_at_start(tmp_path, marker, name):
    from paddle_coopflow.evaluation import InTrainingFID

    path = tmp_path / name
    path.write_bytes(pickle.dumps({"Conv2d_1a_3x3.conv.weight": Payload(marker)}))
    raises_one_line(UserError, InTrainingFID(fid_cfg(tmp_path, path)).check, path, REFUSED,
                    "-o Eval.fid_every_epochs=0")
    assert not marker.exists()


def test_corrupt_inception_weights_stop_the_trainer_before_the_run_dir(tmp_path, inception_pdparams):
    from paddle_coopflow.training import Trainer
    from paddle_coopflow.evaluation import InTrainingFID

    InTrainingFID(fid_cfg(tmp_path, inception_pdparams)).check()  # the real file passes
    cut = tmp_path / "cut.pdparams"
    cut.write_bytes(inception_pdparams.read_bytes()[:1_000_000])
    raises_one_line(UserError, lambda: Trainer(fid_cfg(tmp_path, cut)), cut, "cannot be used", "truncated")
    assert not (tmp_path / "run").exists()


def test_eval_tool_refuses_inception_weights(trained, tmp_path, marker, capsys, monkeypatch):
    weights = tmp_path / "w.pdparams"
    weights.write_bytes(pickle.dumps({"x": Payload(marker)}))
    rc, err = tool("eval", [tmp_path / "a.npz", tmp_path / "b.npz", "--weights", weights, "-c", trained[1]],
                   capsys, monkeypatch)
    assert rc == 2 and not marker.exists()
    one_line(err, weights, REFUSED)


def test_feature_model_info_file_is_refused(tmp_path, marker):
    from paddle_coopflow.metrics.fid import load_feature_model

    net = paddle.nn.Linear(4, 2)
    prefix = str(tmp_path / "feat")
    paddle.jit.save(net, prefix, input_spec=[paddle.static.InputSpec([None, 4], "float32")])
    with open(prefix + ".pdiparams.info", "wb") as fh:  # what paddle.jit.save writes there for a Layer
        pickle.dump({p.name: {"structured_name": k, "stop_gradient": False, "trainable": True}
                     for k, p in net.named_parameters()}, fh, protocol=2)
    load_feature_model(prefix)  # the real files load
    with open(prefix + ".pdiparams.info", "wb") as fh:
        pickle.dump({"linear_0.w_0": Payload(marker)}, fh, protocol=2)
    raises_one_line(UserError, lambda: load_feature_model(prefix), prefix + ".pdiparams.info", REFUSED)
    assert not marker.exists()


# ------------------------------------------------------------------------------------ deploy
def _infer_module():
    spec = importlib.util.spec_from_file_location("_deploy_infer", os.path.join(ROOT, "deploy", "python", "infer.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_deploy_params_counts_are_bounded_by_the_file(tmp_path):
    """Random bytes of a real .pdiparams' size (also with a valid version so the LoD count is read)
    are refused at once; the real file passes; the deploy script exits 2 on it in a subprocess."""
    infer = _infer_module()
    model = str(tmp_path / "export" / "coopflow_sampler")
    paddle.jit.save(paddle.nn.Sequential(paddle.nn.Conv2D(1, 2, 3), paddle.nn.BatchNorm2D(2)), model,
                    input_spec=[paddle.static.InputSpec([None, 1, 8, 8], "float32")])
    real = open(model + ".pdiparams", "rb").read()
    infer.check_params_file(model + ".pdiparams")
    rng = np.random.default_rng(0)
    for k in range(20):
        junk = (b"\0\0\0\0" if k % 2 else b"") + rng.bytes(len(real) - (4 if k % 2 else 0))
        (tmp_path / "junk.pdiparams").write_bytes(junk)
        t0 = time.time()
        with pytest.raises(infer.DeployError, match="corrupt"):
            infer.check_params_file(str(tmp_path / "junk.pdiparams"))
        assert time.time() - t0 < 1.0
    open(model + ".pdiparams", "wb").write(junk)
    (tmp_path / "export" / "infer_cfg.yml").write_text(
        f"paddle_version: {paddle.__version__}\nimage_shape: [1, 8, 8]\nprograms:\n  coopflow_sampler:\n"
        "    onednn: false\nlangevin:\n  n_steps: 1\n  step_size: 0.1\n")
    r = subprocess_tool("deploy/python/infer.py", "--model_dir", tmp_path / "export", "--num", 1, "--out",
                        tmp_path / "out", timeout=60)
    assert r.returncode == 2, r.stderr
    one_line(r.stderr, "coopflow_sampler.pdiparams", "export the model again")
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------ full disk
def test_disk_full_during_a_save_leaves_latest_and_no_orphans(tmp_path, capsys, monkeypatch):
    """ENOSPC part-way through iteration 3's .pdopt: one line naming the directory and the space needed,
    exit 2, no iter_0000003.* or temporary file, latest still iteration 2 byte for byte."""
    run = tmp_path / "run"
    yaml_path = tmp_path / "tiny.yaml"
    yaml_path.write_text(tiny_cfg(run, "Train.max_iters=3", "Global.save_interval=1",
                                  "Global.sample_interval=0").dump())
    real_save = paddle.save
    seen = {}

    def full_disk(obj, path, *a, **k):
        if "iter_0000003.pdopt" in str(path):
            buf = io.BytesIO()
            real_save(obj, buf)
            with open(path, "wb") as fh:
                fh.write(buf.getvalue()[: len(buf.getvalue()) // 2])
            seen["latest"] = {s: (run / "ckpt" / f"latest{s}").read_bytes() for s in (".pdparams", ".pdopt", ".pdstates")}
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real_save(obj, path, *a, **k)

    monkeypatch.setattr(paddle, "save", full_disk)
    rc, err = tool("train", ["-c", yaml_path], capsys, monkeypatch)
    assert rc == 2, err
    one_line(err, f"no space left in {run / 'ckpt'}", "MB are free", "it needs about", "--resume")
    ckpt = run / "ckpt"
    assert sorted(os.listdir(ckpt)) == sorted(f"{p}{s}" for p in ("iter_0000001", "iter_0000002", "latest")
                                              for s in (".pdparams", ".pdopt", ".pdstates"))
    assert states(ckpt / "latest")["global_iter"] == 2
    assert all((ckpt / f"latest{s}").read_bytes() == b for s, b in seen["latest"].items())
