"""User-facing errors are one line and exit code 2; 16-bit images scale to the full range.

Every case builds its own tiny broken input under tmp_path; "tool" cases run the real tool as a
subprocess and check its stderr and exit code.
"""
import io
import os
import subprocess
import sys
import tarfile
import types

import numpy as np
import pytest
from PIL import Image

from paddle_coopflow.config import ConfigError, load_config
from paddle_coopflow.data import DatasetError, build_dataloader, build_dataset
from paddle_coopflow.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tool(path, *args, timeout=300):
    env = dict(os.environ, GLOG_minloglevel="2")
    env.pop("OMP_NUM_THREADS", None)
    return subprocess.run([sys.executable, os.path.join(ROOT, path), *map(str, args)], capture_output=True,
                          text=True, env=env, timeout=timeout, cwd=ROOT)


def assert_one_line(r, *words):
    """Exit 2, no traceback, exactly one non-empty stderr line containing every word."""
    lines = [ln for ln in r.stderr.splitlines() if ln.strip() and not ln.lstrip().startswith("warnings.warn")
             and "UserWarning" not in ln]
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and len(lines) == 1, r.stderr
    for w in words:
        assert str(w) in lines[0], (w, lines[0])


def one_line_error(exc_type, fn, *words):
    with pytest.raises(exc_type) as e:
        fn()
    msg = str(e.value)
    assert isinstance(e.value, UserError) and "\n" not in msg, msg
    for w in words:
        assert str(w) in msg, (w, msg)
    return msg


def data_cfg(name, root, **kw):
    return types.SimpleNamespace(name=name, root=str(root), image_size=kw.get("size", 8),
                                 channels=kw.get("channels", 3), hflip=None)


def save_png(path, value=128, size=8):
    Image.fromarray(np.full((size, size, 3), value, np.uint8)).save(path)


# ------------------------------------------------------------------------------------ datasets
def test_dataset_error_is_a_user_error():
    assert issubclass(DatasetError, UserError)


def test_missing_root_and_empty_folder(tmp_path):
    one_line_error(DatasetError, lambda: build_dataset(data_cfg("folder", tmp_path / "nope"), "all"),
                   tmp_path / "nope", "Data.root")
    (tmp_path / "empty").mkdir()
    one_line_error(DatasetError, lambda: build_dataset(data_cfg("folder", tmp_path / "empty"), "all"),
                   "contains no images")
    one_line_error(DatasetError, lambda: build_dataset(data_cfg("cifar10", tmp_path / "nope"), "train"),
                   "CIFAR-10 not found")
    one_line_error(DatasetError, lambda: build_dataset(data_cfg("svhn", tmp_path), "train"), "train_32x32.mat")


@pytest.mark.parametrize("content, words", [(b"", ["is empty (0 bytes)"]),
                                             (b"definitely not a PNG", ["not an image file"]),
                                             (None, ["cannot decode image"])])
def test_corrupt_image_met_mid_run_names_the_file(tmp_path, content, words):
    """The folder opens fine; reading the bad file (as a training epoch does) raises a DatasetError naming it."""
    save_png(tmp_path / "a.png")
    bad = tmp_path / "b.png"
    if content is None:  # a real PNG cut in the middle of its data
        buf = io.BytesIO()
        Image.fromarray(np.random.RandomState(0).randint(0, 255, (64, 64, 3), np.uint8)).save(buf, "PNG")
        content = buf.getvalue()[: len(buf.getvalue()) // 2]
    bad.write_bytes(content)
    ds = build_dataset(data_cfg("folder", tmp_path), "all")
    assert ds[0][0].shape == (3, 8, 8)
    one_line_error(DatasetError, lambda: ds[1], str(bad), *words)
    loader = build_dataloader(ds, batch_size=2, shuffle=False, seed=0, epoch=0)
    one_line_error(DatasetError, lambda: list(loader), str(bad))


def _tar_gz(members):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_corrupt_cifar_tarball(tmp_path):
    arc = tmp_path / "cifar-10-python.tar.gz"
    names = [f"cifar-10-batches-py/data_batch_{k}" for k in range(1, 6)]
    good = _tar_gz({n: os.urandom(2000) for n in names})  # a valid archive of garbage batches
    for content, words in ((os.urandom(600), ["corrupt or unreadable"]),
                           (good[: len(good) // 2], ["corrupt or unreadable"]),
                           (good, ["data_batch_1", "is corrupt"])):
        arc.write_bytes(content)
        one_line_error(DatasetError, lambda: build_dataset(data_cfg("cifar10", arc), "train"), "cifar", *words)


def test_corrupt_svhn_mat(tmp_path):
    import scipy.io

    mat = tmp_path / "train_32x32.mat"
    scipy.io.savemat(mat, {"X": np.zeros((32, 32, 3, 4), np.uint8), "y": np.ones((4, 1))})
    good = mat.read_bytes()
    for content in (good[: len(good) // 2], os.urandom(300), b""):
        mat.write_bytes(content)
        one_line_error(DatasetError, lambda: build_dataset(data_cfg("svhn", tmp_path), "train"), str(mat),
                       "corrupt")


def test_train_tool_with_missing_data_is_one_line(tmp_path):
    r = tool("tools/train.py", "-c", "configs/digits_demo.yaml", "-o", "Data.name=folder",
             "-o", f"Data.root={tmp_path / 'no_such_folder'}", "-o", f"Global.output_dir={tmp_path / 'run'}")
    assert_one_line(r, "DatasetError", "no_such_folder")


def test_eval_tool_on_folder_with_corrupt_image(tmp_path):
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "a_bad.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    save_png(tmp_path / "imgs" / "b.png")
    np.savez(tmp_path / "x.npz", images=np.zeros((2, 8, 8, 3), np.uint8))
    r = tool("tools/eval.py", tmp_path / "imgs", tmp_path / "x.npz", "--random-init-inception", "--no-progress")
    assert_one_line(r, "a_bad.png")


# ------------------------------------------------------------------------------------ 16-bit images
def test_16bit_grey_png_scales_to_full_range(tmp_path):
    v16 = np.linspace(0, 65535, 64).reshape(8, 8).astype(np.uint16)  # a known gradient, black to white
    Image.fromarray(v16).save(tmp_path / "g.png")
    with Image.open(tmp_path / "g.png") as im:
        assert im.mode in ("I;16", "I")  # Pillow opens it as 16-bit grey
    want = np.rint(v16 / 257.0).astype(np.uint8)
    assert want.min() == 0 and want.max() == 255 and len(np.unique(want)) > 50
    for channels in (1, 3):
        ds = build_dataset(data_cfg("folder", tmp_path, channels=channels), "all")
        u8 = ds.image(0)
        for c in range(channels):
            np.testing.assert_array_equal(u8[..., c], want)
        x = ds[0][0]
        np.testing.assert_allclose(x[0], want / 127.5 - 1.0, atol=1e-6)
        assert x.min() == -1.0 and x.max() == 1.0
    from paddle_coopflow.metrics.fid import iter_image_folder

    batch = next(iter_image_folder(str(tmp_path)))
    np.testing.assert_array_equal(batch[0, ..., 1], want)


# ------------------------------------------------------------------------------------ config
def write(tmp_path, name, data):
    p = tmp_path / name
    (p.write_bytes if isinstance(data, bytes) else p.write_text)(data)
    return str(p)


def test_non_utf8_config(tmp_path):
    f = write(tmp_path, "latin1.yaml", "Global: {output_dir: 'caf\xe9'}\n".encode("latin-1"))
    one_line_error(ConfigError, lambda: load_config(f), f, "not UTF-8", "line 1")
    assert_one_line(tool("tools/train.py", "-c", f, "--dry-run"), "not UTF-8", f)


def test_yaml_syntax_error_keeps_line_and_column(tmp_path):
    f = write(tmp_path, "bad.yaml", "Global: {seed: 1}\nLangevin:\n  n_steps: 3\n   step_size: 0.1\n")
    one_line_error(ConfigError, lambda: load_config(f), f"{f}:4:", "invalid YAML")
    g = write(tmp_path, "bad2.yaml", "Global: {seed: 1\n")
    one_line_error(ConfigError, lambda: load_config(g), f"{g}:2:1", "invalid YAML")


@pytest.mark.parametrize("text", ["", "# only a comment\n", "\n\n"])
def test_empty_config_is_an_error(tmp_path, text):
    f = write(tmp_path, "empty.yaml", text)
    one_line_error(ConfigError, lambda: load_config(f), f, "is empty", "pass no -c")


@pytest.mark.parametrize("text, kind", [("- Global\n- Flow\n", "list"), ("just a string\n", "str"),
                                        ("42\n", "int")])
def test_non_mapping_config(tmp_path, text, kind):
    f = write(tmp_path, "list.yaml", text)
    one_line_error(ConfigError, lambda: load_config(f), f, "must be a mapping", kind)


def test_duplicate_keys_name_the_key_and_line(tmp_path):
    f = write(tmp_path, "dup.yaml", "Global:\n  seed: 1\n  output_dir: a\n  seed: 2\n")
    one_line_error(ConfigError, lambda: load_config(f), f"{f}:4:", "duplicate key 'seed'", "first on line 2")
    g = write(tmp_path, "dup2.yaml", "Global: {seed: 1}\nLangevin: {n_steps: 3}\nGlobal: {seed: 2}\n")
    one_line_error(ConfigError, lambda: load_config(g), f"{g}:3:", "duplicate key 'Global'", "first on line 1")
    base = write(tmp_path, "base.yaml", "Global: {seed: 1}\n")  # a child overriding its base is fine
    child = write(tmp_path, "child.yaml", "_BASE_: base.yaml\nGlobal: {seed: 2}\n")
    assert load_config(child).Global.seed == 2 and load_config(base).Global.seed == 1


@pytest.mark.parametrize("override", ["Langevin.step_size=.nan", "Langevin.step_size=0", "Langevin.step_size=-0.1",
                                      "Langevin.test_step_size=.nan", "Langevin.test_step_size=0",
                                      "Langevin.test_step_size=.inf", "Langevin.step_size=nan"])
def test_step_sizes_must_be_positive_and_finite(override):
    one_line_error(ConfigError, lambda: load_config(None, [override]), override.split("=")[0])


@pytest.mark.parametrize("override", ["Optimizer.flow_lr=.inf", "Langevin.noise_std=.nan", "Eval.fid_batch_size=.inf",
                                      "Toy.mmd_bandwidths=[0.1, .nan]", "Langevin.delta_clip=-.inf"])
def test_non_finite_numbers_anywhere_are_errors(override):
    one_line_error(ConfigError, lambda: load_config(None, [override]), override.split("=")[0])


def test_non_finite_in_a_file_names_the_file(tmp_path):
    f = write(tmp_path, "nan.yaml", "Langevin: {step_size: .nan}\n")
    one_line_error(ConfigError, lambda: load_config(f), "Langevin.step_size", f, "finite")


def test_config_error_in_a_model_tool_is_one_line(tmp_path):
    f = write(tmp_path, "ok.yaml", "Global: {seed: 1}\n")
    r = tool("tools/sample.py", "-c", f, "-o", "Langevin.test_step_size=0", "--ckpt", tmp_path / "none",
             "--out", tmp_path / "out")
    assert_one_line(r, "ConfigError", "Langevin.test_step_size", "greater than 0")


# ------------------------------------------------------------------------------------ deploy
def _export_dir(tmp_path):
    import paddle

    paddle.seed(0)
    net = paddle.nn.Sequential(paddle.nn.Conv2D(3, 8, 3, padding=1), paddle.nn.Tanh(),
                               paddle.nn.Conv2D(8, 3, 3, padding=1), paddle.nn.Tanh())
    out = tmp_path / "export"
    paddle.jit.save(net, str(out / "flow_generator"),
                    input_spec=[paddle.static.InputSpec([None, 3, 8, 8], "float32", "z")])
    (out / "infer_cfg.yml").write_text(f"paddle_version: '{paddle.__version__}'\nimage_shape: [3, 8, 8]\n"
                                       "programs:\n  flow_generator: {}\n")
    return out


def test_deploy_truncated_params_is_one_line(tmp_path):
    out = _export_dir(tmp_path)
    args = ("deploy/python/infer.py", "--model_dir", out, "--num", 2, "--flow_only", "--threads", 1)
    r = tool(*args, "--out", tmp_path / "ok")
    assert r.returncode == 0, r.stderr  # the intact export runs
    params = out / "flow_generator.pdiparams"
    full = params.read_bytes()
    for cut in (len(full) - 7, len(full) // 2, 0):
        params.write_bytes(full[:cut])
        assert_one_line(tool(*args, "--out", tmp_path / "bad"), "flow_generator.pdiparams", "export the model again")


# ------------------------------------------------------------------------------------ FID set-up
@pytest.mark.parametrize("name", ["cifar10_pre", "svhn_pre", "cifar10_pre_noise_decay", "svhn_pre_noise_decay"])
def test_shipped_fid_configs_say_how_to_fix_at_start(name):
    from paddle_coopflow.evaluation import InTrainingFID

    cfg = load_config(os.path.join(ROOT, "configs", f"{name}.yaml"))
    assert cfg.Eval.fid_every_epochs > 0  # FID stays on
    one_line_error(UserError, InTrainingFID(cfg).check, "-o Eval.inception_weights=PATH",
                   "-o Eval.fid_every_epochs=0", "pt_inception-2015-12-05-6726825d.pth")


@pytest.mark.parametrize("mode", ["coopflow", "flow_only", "langevin_only"])
def test_cpu_cifar_configs_name_the_proxy_feature_network_at_start(mode):
    from paddle_coopflow.evaluation import InTrainingFID

    cfg = load_config(os.path.join(ROOT, "configs", f"cifar10_cpu_{mode}.yaml"))
    assert cfg.Eval.fid_every_iters > 0 and not cfg.Eval.feature_model  # the proxy curve is on, its path is the user's
    one_line_error(UserError, InTrainingFID(cfg).check, "-o Eval.feature_model=PREFIX", "-o Eval.fid_every_iters=0")
