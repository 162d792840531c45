"""The opt-in 'autograd' variant of the fast Langevin step (paddle.grad inside the static program).

Its own module, so its one program runs in a fresh interpreter: programs with paddle.grad inside
crashed Paddle 3.3.1 now and then in processes that had built several (langevin_fast module doc).
"""
import paddle

from paddle_coopflow import langevin_fast as lf
from paddle_coopflow.models.ebm import EBMRes

from test_langevin_fast import CLIPS, _x, check_equals_dygraph_with_weight_update


def test_autograd_variant_equals_dygraph_without_onednn(monkeypatch):
    """Same chain as dygraph over T = 30 and after an Adam step, and never run with oneDNN."""
    paddle.seed(3)
    ebm = EBMRes(3, 8, 8)
    seen = []
    real = paddle.set_flags
    monkeypatch.setattr(paddle, "set_flags", lambda flags: (seen.append(dict(flags)), real(flags)))
    check_equals_dygraph_with_weight_update(ebm, "autograd")
    assert not any(f.get("FLAGS_use_onednn") for f in seen), seen
    if lf.available():   # ...while the manual program does set it (so the spy is not blind)
        lf.FastLangevin(ebm, strict=True, variant="manual").step(_x(2, 1), *CLIPS)
        assert any(f.get("FLAGS_use_onednn") for f in seen)
