import re
import subprocess
import sys

import pytest

from paddle_coopflow.config import ConfigError, load_config, config_from_dict

from conftest import ROOT


def write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def test_defaults_are_reference_values():
    cfg = load_config(None)
    assert cfg.Flow.mid_channels == 96 and cfg.Flow.scales == [[0, 4], [2, 3]]
    assert cfg.Langevin.delta_clip == 0.1 and cfg.Langevin.image_clip == [-1.0, 1.0]
    assert cfg.Optimizer.ebm_beta1 == 0.5 and cfg.Optimizer.flow_gain_l2 == 5e-5


def test_base_inheritance_and_override(tmp_path):
    write(tmp_path, "base.yaml", "Global: {seed: 3}\nLangevin: {n_steps: 30, step_size: 0.03}\n")
    child = write(tmp_path, "child.yaml", "_BASE_: base.yaml\nLangevin: {n_steps: 200}\n")
    cfg = load_config(child, ["Langevin.step_size=1e-2", "Langevin.delta_clip=null"])
    assert cfg.Global.seed == 3 and cfg.Langevin.n_steps == 200
    assert cfg.Langevin.step_size == pytest.approx(0.01)  # "1e-2" is a YAML string: converted
    assert cfg.Langevin.delta_clip is None


def test_unknown_key_did_you_mean(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown key 'Langevin.step_szie'.*did you mean 'step_size'"):
        load_config(None, ["Langevin.step_szie=0.1"])
    bad = write(tmp_path, "bad.yaml", "Langevn: {n_steps: 3}\n")
    with pytest.raises(ConfigError, match=r"unknown section 'Langevn'.*did you mean 'Langevin'"):
        load_config(bad)


def test_wrong_type_names_key_value_and_source(tmp_path):
    f = write(tmp_path, "t.yaml", "Train: {batch_size: many}\n")
    with pytest.raises(ConfigError) as e:
        load_config(f)
    msg = str(e.value)
    assert "Train.batch_size" in msg and "'many'" in msg and str(f) in msg and "\n" not in msg
    with pytest.raises(ConfigError, match=r"Flow.use_attn.*-o Flow.use_attn=3"):
        load_config(None, ["Flow.use_attn=3"])


def test_out_of_range_and_choices():
    with pytest.raises(ConfigError, match="below the minimum"):
        load_config(None, ["Train.batch_size=0"])
    with pytest.raises(ConfigError, match="not one of"):
        load_config(None, ["Global.device=tpu"])
    with pytest.raises(ConfigError, match="image_clip"):
        load_config(None, ["Langevin.image_clip=[1, -1]"])


def test_engine_switches():
    cfg = load_config(None, ["Langevin.engine=dygraph", "Flow.coupling_engine=static"])
    assert cfg.Langevin.engine == "dygraph" and cfg.Flow.coupling_engine == "static"
    with pytest.raises(ConfigError, match="expected str"):
        load_config(None, ["Flow.inverse_method=off"])   # YAML reads off as a boolean
    with pytest.raises(ConfigError, match="unknown key 'Langevin.fast'"):
        load_config(None, ["Langevin.fast=off"])


def test_roundtrip_dict():
    cfg = load_config(None, ["Global.seed=7"])
    assert config_from_dict(cfg.to_dict()) == cfg


def test_cli_error_is_one_line_exit_2(tmp_path):
    r = subprocess.run([sys.executable, "tools/train.py", "-c", "configs/digits_demo.yaml",
                        "-o", "Langevin.step_szie=0.1", "--dry-run"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 2, r.stderr
    lines = [l for l in r.stderr.strip().splitlines() if l.strip()]
    assert len(lines) == 1 and "did you mean 'step_size'" in lines[0] and "Traceback" not in r.stderr


def test_langevin_steps_zero_refused_where_revisions_are_needed():
    for mode in ("coopflow", "langevin_only"):
        with pytest.raises(ConfigError, match=rf"Langevin.n_steps=0: Train.mode={mode} needs Langevin revisions; "
                                              r"set Langevin.n_steps >= 1"):
            load_config(None, ["Langevin.n_steps=0", f"Train.mode={mode}"])
    assert load_config(None, ["Langevin.n_steps=0", "Train.mode=flow_only"]).Langevin.n_steps == 0


def test_health_section_and_energy_guard_keys():
    cfg = load_config(None)
    assert cfg.Health.check and cfg.Optimizer.ebm_energy_l2 == 0.0  # the guard is off by default
    with pytest.raises(ConfigError, match="Health.energy_factor"):
        load_config(None, ["Health.energy_factor=1"])  # a factor must exceed 1
    with pytest.raises(ConfigError, match="below the minimum"):
        load_config(None, ["Optimizer.ebm_energy_l2=-0.1"])
    stored = load_config(None).to_dict()
    del stored["Health"]  # a checkpoint written before the section existed gets the defaults
    assert config_from_dict(stored).Health == cfg.Health
