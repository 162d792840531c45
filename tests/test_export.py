"""Static export + Paddle Inference: parity with dygraph, the train → export → infer chain, CLI errors."""
import importlib.util
import os
import subprocess
import sys

import numpy as np
import paddle
import pytest

from paddle_coopflow.cli import run_cli
from paddle_coopflow.config import load_config
from paddle_coopflow.errors import UserError

from conftest import ROOT

TINY = [
    "Data.name=digits", "Data.root=", "Data.image_size=8", "Data.channels=1",
    "Flow.in_shape=[1,8,8]", "Flow.scales=[[0,1],[1,1]]", "Flow.mid_channels=8", "Flow.num_blocks=1",
    "Flow.num_components=3", "Flow.num_dequant_blocks=0", "Flow.use_attn=true", "Flow.drop_prob=0.0",
    "EBM.in_channels=1", "EBM.base_channels=8", "EBM.img_size=8",
    "Langevin.n_steps=3", "Langevin.test_step_size=0.5",
    # The references are the plain dygraph flow (exports trace it anyway); the static coupling programs
    # are compared with dygraph in test_accel_coupling.py.
    "Flow.coupling_engine=dygraph",
]
SHAPE = (1, 8, 8)
TOL = {"flow_generator": 1e-5, "energy": 1e-5, "energy_grad": 1e-4, "coopflow_sampler": 1e-4}


def _load_infer():
    spec = importlib.util.spec_from_file_location("deploy_infer", os.path.join(ROOT, "deploy", "python", "infer.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


infer = _load_infer()


def _run(model_dir, name, *feeds):
    return infer.run_predictor(infer.create_predictor(model_dir, name, "cpu", 2), list(feeds))


def _nets(cfg, seed=0):
    """Random tiny nets; the flow's ActNorms are data-initialised on random images (else 1/0)."""
    from paddle_coopflow.builder import build_ebm, build_flow

    paddle.seed(seed)
    flow, ebm = build_flow(cfg.Flow), build_ebm(cfg.EBM)
    flow.data_init(paddle.uniform([32, *SHAPE], min=-1.0, max=1.0))
    flow.eval()
    ebm.eval()
    return flow, ebm


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from paddle_coopflow.export import export_all

    cfg = load_config(None, TINY)
    flow, ebm = _nets(cfg)
    out = str(tmp_path_factory.mktemp("export"))
    paths = export_all(cfg, flow, ebm, out)
    return cfg, flow, ebm, out, paths


def _reference(name, cfg, flow, ebm, inp):
    """Dygraph outputs of the program `name` on numpy input `inp`."""
    from paddle_coopflow.langevin import langevin_flow

    x = paddle.to_tensor(inp)
    if name == "flow_generator":
        return [flow.inverse(x).numpy()]
    if name == "energy":
        return [ebm(x).numpy()]
    if name == "energy_grad":
        x.stop_gradient = False
        f = ebm(x)
        return [f.numpy(), paddle.grad([f.sum()], [x])[0].numpy()]
    lg = cfg.Langevin
    return [langevin_flow(ebm, flow.inverse(x), lg.n_steps, lg.test_step_size, lg.delta_clip,
                          tuple(lg.image_clip)).numpy()]


@pytest.mark.parametrize("batch", [1, 7])
@pytest.mark.parametrize("name", ["flow_generator", "energy", "energy_grad", "coopflow_sampler"])
def test_inference_matches_dygraph(exported, name, batch):
    cfg, flow, ebm, out, paths = exported
    rng = np.random.RandomState(batch)
    inp = (rng.standard_normal((batch, *SHAPE)) if name in ("flow_generator", "coopflow_sampler")
           else rng.uniform(-1, 1, (batch, *SHAPE))).astype(np.float32)
    got = _run(out, name, inp)
    want = _reference(name, cfg, flow, ebm, inp)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.shape == w.shape
        err = float(np.abs(g - w).max())
        assert err <= TOL[name], f"{name} batch {batch}: max abs diff {err:.3g} > {TOL[name]}"
    if name == "coopflow_sampler":  # the Langevin steps really ran inside the program
        assert np.abs(got[0] - _reference("flow_generator", cfg, flow, ebm, inp)[0]).max() > 1e-3
    if name == "flow_generator":
        assert np.abs(got[0]).max() <= 1.0


def test_energy_grad_against_finite_differences(exported):
    """Independent truth for the exported gradient: float64 central differences of the EBM."""
    import copy

    cfg, flow, ebm, out, paths = exported
    x = np.random.RandomState(3).uniform(-1, 1, (2, *SHAPE)).astype(np.float32)
    f, g = _run(out, "energy_grad", x)
    e64 = copy.deepcopy(ebm).to(dtype="float64")
    h = 1e-4
    for idx in [(0, 0, 1, 2), (1, 0, 7, 7), (0, 0, 4, 0)]:
        xp, xm = x.astype(np.float64), x.astype(np.float64)
        xp[idx] += h
        xm[idx] -= h
        fd = (e64(paddle.to_tensor(xp)).sum() - e64(paddle.to_tensor(xm)).sum()).item() / (2 * h)
        assert abs(g[idx] - fd) <= 1e-4 + 1e-3 * abs(fd), (idx, g[idx], fd)
    np.testing.assert_allclose(f, e64(paddle.to_tensor(x.astype(np.float64))).numpy(), atol=1e-5)


def test_flow_generator_bisection_inverse(tmp_path):
    """The reference bisection inverse (a while loop in the program) exports too; the default
    safeguarded Newton inverse is covered above."""
    from paddle_coopflow.export import export_all

    cfg = load_config(None, TINY + ["Flow.inverse_method=bisection"])
    flow, ebm = _nets(cfg, seed=2)
    export_all(cfg, flow, None, str(tmp_path), programs=("flow_generator",))
    for batch in (1, 7):
        z = np.random.RandomState(batch).standard_normal((batch, *SHAPE)).astype(np.float32)
        got = _run(str(tmp_path), "flow_generator", z)[0]
        err = float(np.abs(got - flow.inverse(paddle.to_tensor(z)).numpy()).max())
        assert err <= TOL["flow_generator"], f"batch {batch}: {err:.3g}"


def test_sampler_with_noise_input(tmp_path):
    """Langevin.noise_mode on → the sampler takes ε [T, N, C, H, W] and adds s·ε per step, as dygraph does."""
    from paddle_coopflow.export import export_all
    from paddle_coopflow.langevin import langevin_flow

    cfg = load_config(None, TINY + ["Langevin.noise_mode=constant", "Langevin.noise_std=0.5"])
    flow, ebm = _nets(cfg, seed=1)
    paths = export_all(cfg, flow, ebm, str(tmp_path), programs=("coopflow_sampler",))
    info = infer.read_infer_cfg(str(tmp_path))
    assert info["langevin"]["noise_input"] is True and info["langevin"]["noise_std"] == 0.5
    assert info["programs"]["coopflow_sampler"]["inputs"]["noise"] == [3, -1, *SHAPE]
    rng = np.random.RandomState(0)
    z = rng.standard_normal((5, *SHAPE)).astype(np.float32)
    eps = (0.5 * rng.standard_normal((3, 5, *SHAPE))).astype(np.float32)
    got = _run(str(tmp_path), "coopflow_sampler", z, eps)[0]
    lg = cfg.Langevin
    x0 = flow.inverse(paddle.to_tensor(z))
    want = langevin_flow(ebm, x0, 3, lg.test_step_size, lg.delta_clip, tuple(lg.image_clip), noise_std=1.0,
                         noise=paddle.to_tensor(eps)).numpy()
    assert np.abs(got - want).max() <= 1e-4
    quiet = langevin_flow(ebm, x0, 3, lg.test_step_size, lg.delta_clip, tuple(lg.image_clip)).numpy()
    assert np.abs(got - quiet).max() > 1e-2  # the noise input is used
    assert set(paths) == {"coopflow_sampler", "infer_cfg"}


def test_infer_cfg_contents_and_fallback_reader(exported):
    import yaml

    cfg, flow, ebm, out, paths = exported
    text = open(paths["infer_cfg"]).read()
    doc = yaml.safe_load(text)
    assert infer.parse_simple_yaml(text) == doc  # deployments without PyYAML read the same thing
    assert doc["image_shape"] == list(SHAPE) and doc["paddle_version"] == paddle.__version__
    assert doc["langevin"]["n_steps"] == 3 and doc["langevin"]["step_size"] == 0.5
    assert doc["langevin"]["delta_clip"] == 0.1 and doc["langevin"]["image_clip"] == [-1.0, 1.0]
    assert doc["langevin"]["noise_input"] is False
    from paddle_coopflow.version import __version__

    assert doc["package_version"] == __version__
    for name in ("flow_generator", "energy", "energy_grad", "coopflow_sampler", "langevin_step"):
        prog = doc["programs"][name]
        assert os.path.isfile(os.path.join(out, prog["model"])) and os.path.isfile(os.path.join(out, prog["params"]))
        assert paths[name].endswith(prog["model"])
        assert prog["onednn"] is (name == "langevin_step")  # the only grad-free program
    assert doc["programs"]["langevin_step"]["inputs"] == {"x": [-1, *SHAPE]}  # no noise input here
    assert doc["inference"] == {"disable_mkldnn": True, "onednn_programs": ["langevin_step"]}


# ------------------------------------------------------------------------ stepwise sampler (oneDNN)
def _dygraph_sample(cfg, flow, ebm, z, eps=None):
    """The dygraph CoopFlow sample: langevin_flow (dygraph step) from the flow proposal flow⁻¹(z)."""
    from paddle_coopflow.langevin import langevin_flow

    lg = cfg.Langevin
    return langevin_flow(ebm, flow.inverse(paddle.to_tensor(z)), lg.n_steps, lg.test_step_size, lg.delta_clip,
                         tuple(lg.image_clip), noise_std=0.0 if eps is None else 1.0,
                         noise=None if eps is None else paddle.to_tensor(eps)).numpy()


@pytest.mark.parametrize("batch", [1, 7])
def test_stepwise_onednn_matches_dygraph(exported, batch):
    """flow_generator (oneDNN off) + langevin_step looped T times with oneDNN ON = the dygraph sample."""
    cfg, flow, ebm, out, paths = exported
    info = infer.read_infer_cfg(out)
    sampler = infer.Sampler(out, info, "auto", "cpu", threads=1)
    assert sampler.kind == "stepwise" and sampler.onednn  # auto picks it on CPU, with oneDNN
    z = np.random.RandomState(10 + batch).standard_normal((batch, *SHAPE)).astype(np.float32)
    got = sampler(z)
    want = _dygraph_sample(cfg, flow, ebm, z)
    err = float(np.abs(got - want).max())
    assert err <= 1e-4, f"stepwise batch {batch}: max abs diff {err:.3g}"
    assert np.abs(got - flow.inverse(paddle.to_tensor(z)).numpy()).max() > 1e-3  # the steps really moved x
    fused = infer.Sampler(out, info, "fused", "cpu", threads=1)
    assert fused.kind == "fused" and not fused.onednn
    assert np.abs(fused(z) - got).max() <= 1e-4
    off = infer.Sampler(out, info, "stepwise", "cpu", threads=1, onednn="off")
    assert off.kind == "stepwise" and not off.onednn
    assert np.abs(off(z) - want).max() <= 1e-4


def test_stepwise_with_noise_input(tmp_path):
    """With Langevin noise the step takes shift = s·ε; stepwise + oneDNN = dygraph with the same ε."""
    from paddle_coopflow.export import export_all

    cfg = load_config(None, TINY + ["Langevin.noise_mode=constant", "Langevin.noise_std=0.5"])
    flow, ebm = _nets(cfg, seed=4)
    paths = export_all(cfg, flow, ebm, str(tmp_path), programs=("flow_generator", "langevin_step"))
    assert set(paths) == {"flow_generator", "langevin_step", "infer_cfg"}
    info = infer.read_infer_cfg(str(tmp_path))
    assert info["programs"]["langevin_step"]["inputs"] == {"x": [-1, *SHAPE], "shift": [-1, *SHAPE]}
    sampler = infer.Sampler(str(tmp_path), info, "auto", "cpu", threads=1)
    assert sampler.kind == "stepwise" and sampler.onednn and sampler.noise_input
    with pytest.raises(infer.DeployError, match="noise input"):
        sampler(np.zeros((1, *SHAPE), np.float32))
    for batch in (1, 7):
        rng = np.random.RandomState(batch)
        z = rng.standard_normal((batch, *SHAPE)).astype(np.float32)
        eps = (0.5 * rng.standard_normal((3, batch, *SHAPE))).astype(np.float32)
        got = sampler(z, eps)
        err = float(np.abs(got - _dygraph_sample(cfg, flow, ebm, z, eps)).max())
        assert err <= 1e-4, f"noisy stepwise batch {batch}: max abs diff {err:.3g}"
        assert np.abs(got - _dygraph_sample(cfg, flow, ebm, z)).max() > 1e-2  # the noise input is used
    with pytest.raises(infer.DeployError, match="coopflow_sampler.*use --sampler stepwise"):
        infer.Sampler(str(tmp_path), info, "fused", "cpu", threads=1)


def test_plain_ebm_has_no_step_and_falls_back_to_fused(tmp_path):
    """EBMPlain has no grad-free step: no langevin_step in the export, and infer.py uses the fused sampler."""
    from paddle_coopflow.builder import build_ebm, build_flow
    from paddle_coopflow.export import export_all

    # EBMPlain takes 32x32 images only (three stride-2 convs, then a 4x4 head)
    cfg = load_config(None, TINY + ["EBM.arch=plain", "Data.image_size=32", "Flow.in_shape=[1,32,32]",
                                    "EBM.base_channels=4", "EBM.img_size=32"])
    paddle.seed(5)
    flow, ebm = build_flow(cfg.Flow), build_ebm(cfg.EBM)
    flow.data_init(paddle.uniform([8, 1, 32, 32], min=-1.0, max=1.0))
    flow.eval()
    ebm.eval()
    paths = export_all(cfg, flow, ebm, str(tmp_path), programs=("coopflow_sampler", "langevin_step"))
    assert set(paths) == {"coopflow_sampler", "infer_cfg"}
    info = infer.read_infer_cfg(str(tmp_path))
    assert "langevin_step" not in info["programs"] and info["inference"]["onednn_programs"] == []
    assert infer.choose_sampler(info, "auto", "cpu") == "fused"
    with pytest.raises(infer.DeployError, match="langevin_step.*use --sampler fused"):
        infer.choose_sampler(info, "stepwise", "cpu")
    used = {}
    got, z, _ = infer.generate(str(tmp_path), 3, 3, seed=1, threads=1, info_out=used)
    assert used == {"sampler": "fused", "onednn": False}
    assert np.abs(got - _dygraph_sample(cfg, flow, ebm, z)).max() <= 1e-4


def test_sampler_choice_rules():
    progs = {"programs": {"flow_generator": {}, "coopflow_sampler": {}, "langevin_step": {"onednn": True}}}
    assert infer.choose_sampler(progs, "auto", "cpu") == "stepwise"
    assert infer.choose_sampler(progs, "auto", "gpu") == "fused"
    assert infer.step_uses_onednn(progs, "auto", "cpu") and not infer.step_uses_onednn(progs, "auto", "gpu")
    assert not infer.step_uses_onednn(progs, "off", "cpu")
    unmarked = {"programs": {"langevin_step": {"onednn": False}}}
    assert not infer.step_uses_onednn(unmarked, "auto", "cpu") and infer.step_uses_onednn(unmarked, "on", "cpu")
    with pytest.raises(infer.DeployError, match="--sampler 'x' is invalid"):
        infer.choose_sampler(progs, "x")


def test_find_model_file_accepts_json_and_pdmodel(tmp_path):
    for suffix in (".pdmodel", ".json"):
        (tmp_path / f"m{suffix}").write_text("x")
    (tmp_path / "m.pdiparams").write_text("x")
    assert infer.find_model_file(str(tmp_path), "m")[0].endswith("m.json")  # PIR preferred
    os.remove(tmp_path / "m.json")
    assert infer.find_model_file(str(tmp_path), "m") == (str(tmp_path / "m.pdmodel"), str(tmp_path / "m.pdiparams"))
    with pytest.raises(infer.DeployError, match=r"no exported program 'gen'.*gen\.json or gen\.pdmodel"):
        infer.find_model_file(str(tmp_path), "gen")


# ------------------------------------------------------------------------ train → export → infer
CHAIN = TINY + ["Train.batch_size=64", "Train.max_iters=2", "Train.data_init_batches=1",
                "Train.data_init_group=1", "Global.sample_interval=0", "Global.use_visualdl=false",
                "Global.log_interval=1", "Optimizer.warmup_iters=1", "Langevin.n_steps=2",
                "Langevin.test_step_size=0.04", "Export.on_train_end=true"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from paddle_coopflow.training import Trainer

    run = tmp_path_factory.mktemp("run")
    overrides = CHAIN + [f"Global.output_dir={run}", "Global.overwrite=true"]
    Trainer(load_config(None, overrides)).train()
    return run, overrides


def test_train_export_infer_chain(trained, tmp_path):
    run, _ = trained
    model_dir = run / "inference"
    assert (model_dir / "infer_cfg.yml").is_file() and (model_dir / "coopflow_sampler.pdiparams").is_file()
    out = tmp_path / "samples"
    # Standalone: the training package is made unimportable; the repo is not on sys.path either.
    script = os.path.join(ROOT, "deploy", "python", "infer.py")
    code = ("import sys, runpy; sys.modules['paddle_coopflow'] = None; "
            f"sys.argv = [{script!r}] + sys.argv[1:]; runpy.run_path({script!r}, run_name='__main__')")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", code, "--model_dir", str(model_dir), "--num", "5",
                           "--batch_size", "3", "--out", str(out), "--threads", "2", "--seed", "7"],
                          cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "img/s" in proc.stdout and "warning" not in proc.stderr
    assert "stepwise, oneDNN on" in proc.stdout  # auto on CPU: the grad-free step with oneDNN
    pngs = sorted(p.name for p in out.iterdir() if p.suffix == ".png")
    assert pngs == [f"{i:06d}.png" for i in range(5)] + ["grid.png"]
    data = np.load(out / "samples.npz")
    assert data["images"].shape == (5, 8, 8, 1) and data["images"].dtype == np.uint8
    assert data["samples"].shape == (5, *SHAPE) and np.abs(data["samples"]).max() <= 1.0
    # the same seed gives the same z and the same images; --flow_only runs the generator alone
    s2, z2, _ = infer.generate(str(model_dir), 5, 5, seed=7, threads=2)
    np.testing.assert_array_equal(z2, data["z"])
    assert np.abs(s2 - data["samples"]).max() <= 1e-5
    used = {}
    s3, z3, _ = infer.generate(str(model_dir), 5, 5, seed=7, threads=2, sampler="fused", info_out=used)
    np.testing.assert_array_equal(z3, z2)
    assert used["sampler"] == "fused" and np.abs(s3 - s2).max() <= 1e-4
    prop, _, _ = infer.generate(str(model_dir), 5, 5, seed=7, threads=2, flow_only=True)
    assert prop.shape == (5, *SHAPE) and np.abs(prop - s2).max() > 0


def _export_cli():
    sys.path.insert(0, os.path.join(ROOT, "tools"))
    spec = importlib.util.spec_from_file_location("export_model_cli", os.path.join(ROOT, "tools", "export_model.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_export_cli_from_checkpoint(trained, tmp_path, capsys):
    run, overrides = trained
    argv = ["--ckpt", str(run / "ckpt" / "latest"), "--programs", "energy", "energy_grad"]
    for o in overrides + [f"Export.save_dir={tmp_path / 'inf'}"]:
        argv += ["-o", o]
    assert run_cli(_export_cli().main, ["-c", os.path.join(ROOT, "configs", "digits_demo.yaml")] + argv) == 0
    assert sorted(os.listdir(tmp_path / "inf")) == sorted(
        ["energy.json", "energy.pdiparams", "energy_grad.json", "energy_grad.pdiparams", "infer_cfg.yml"])
    # the trainer's export and the CLI export hold the same energy
    x = np.random.RandomState(0).uniform(-1, 1, (4, *SHAPE)).astype(np.float32)
    a = _run(str(tmp_path / "inf"), "energy", x)[0]
    b = _run(str(run / "inference"), "energy", x)[0]
    assert np.abs(a - b).max() <= 1e-6


def test_export_cli_mismatch_is_one_line(trained, tmp_path, capsys):
    run, overrides = trained
    argv = ["-c", os.path.join(ROOT, "configs", "digits_demo.yaml"), "--ckpt", str(run / "ckpt" / "latest")]
    for o in overrides + ["EBM.base_channels=16", f"Export.save_dir={tmp_path / 'inf'}"]:
        argv += ["-o", o]
    assert run_cli(_export_cli().main, argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "does not match the config" in err
    assert not (tmp_path / "inf").exists()


def test_export_rejects_toy_models():
    from paddle_coopflow.export import export_all

    cfg = load_config(None, ["Flow.arch=flow2d", "EBM.arch=mlp"])
    with pytest.raises(UserError, match="image models only"):
        export_all(cfg, None, None, "unused")
