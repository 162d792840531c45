"""Static-graph (oneDNN) coupling networks for sampling (paddle_coopflow/accel/coupling.py).

References are independent of the static path: the dygraph network, and the dygraph *forward* flow,
which must map the statically sampled images back to their z.
"""
import copy
import logging

import numpy as np
import paddle
import pytest

from paddle_coopflow.accel import coupling as accel_coupling
from paddle_coopflow.accel.coupling import StaticCouplingNN, make_coupling_nn
from paddle_coopflow.models.flowpp import FlowPlusPlus, data_init
from paddle_coopflow.models.flowpp.coupling import Coupling
from paddle_coopflow.models.flowpp.nn import NN
from paddle_coopflow.utils.env import onednn_cpu

pytestmark = pytest.mark.skipif(not onednn_cpu(), reason="needs a CPU Paddle build with oneDNN")


def _rel_maxdiff(out, ref):
    return max(float(np.abs(o.numpy() - r.numpy()).max()) / (1.0 + float(np.abs(r.numpy()).max()))
               for o, r in zip(out, ref))


def test_static_network_equals_dygraph_dynamic_batch_and_sees_weight_updates():
    paddle.seed(0)
    net = NN(3, 8, 2, 4, 0.2, True)
    net.eval()
    snn = StaticCouplingNN(net, strict=True)
    opt = paddle.optimizer.Adam(0.05, parameters=net.parameters())
    for n in (1, 5):                                   # one program, two batch sizes
        x = paddle.randn([n, 3, 8, 4])
        with paddle.no_grad():
            first = snn(x)                             # first call of the key builds and returns the program's result
            got, ref = snn(x), net(x)
        assert _rel_maxdiff(got, ref) <= 1e-5
        assert _rel_maxdiff(first, got) == 0.0         # deterministic: the first call is the program too
    assert snn.n_compiled == 1 and list(snn.chosen().values()) == ["static"]
    before = [o.numpy() for o in got]
    net.train()
    sum(o.mean() for o in net(paddle.randn([2, 3, 8, 4]))).backward()
    opt.step()
    net.eval()
    with paddle.no_grad():
        got2, ref2 = snn(x), net(x)
    assert _rel_maxdiff(got2, ref2) <= 1e-5
    assert max(float(np.abs(a.numpy() - b).max()) for a, b in zip(got2, before)) > 1e-3   # new weights used
    assert snn.n_compiled == 1


def test_output_ops_survive_the_onednn_rewrite():
    """Each network output must come from an op the in-place oneDNN rewrite keeps (see the same test in
    test_accel_langevin.py: an output of a replaced op is read from freed memory)."""
    from test_accel_langevin import program_output_ops

    paddle.seed(0)
    net = NN(3, 8, 2, 4, 0.2, True)
    net.eval()
    snn = StaticCouplingNN(net, strict=True)
    with paddle.no_grad():
        snn(paddle.randn([2, 3, 8, 4]))
    (prog,) = [p for _, p in snn.cache.programs.values()]
    for outputs, rewritten in program_output_ops(prog):
        assert rewritten and outputs and all(name == "pd_op.share_data_" for name, _ in outputs), outputs


@pytest.fixture(scope="module")
def tiny_flow():
    paddle.seed(1)
    flow = FlowPlusPlus(in_shape=(3, 8, 8), mid_channels=8, num_blocks=1, num_components=4,
                        num_dequant_blocks=0, inverse_method="newton")
    data_init(flow, paddle.rand([8, 3, 8, 8]) * 2 - 1)
    flow.eval()
    return flow


def test_sampling_with_static_networks_inverts_the_dygraph_forward(tiny_flow):
    """z = forward(l) in dygraph, then the inverse with static networks must give l back (float32 round trip)."""
    flow = copy.deepcopy(tiny_flow)
    y = paddle.to_tensor(np.random.RandomState(0).uniform(0.0, 1.0, (6, 3, 8, 8)).astype("float32"))
    zero = paddle.zeros([6])
    with paddle.no_grad():
        l, _ = flow.to_logits(y, zero)                 # logits of images, where the flow was initialised
        z, _ = flow.flows(l, zero)                     # dygraph forward
        flow.set_coupling_engine("static")
        flow.flows(z, zero, reverse=True)              # builds and checks every coupling network
        l_back, _ = flow.flows(z, zero, reverse=True)  # inverse with the static networks
    couplings = [m for m in flow.flows.sublayers() if isinstance(m, Coupling)]
    assert all(list(c.static_nn.chosen().values()) == ["static"] for c in couplings)
    assert float((l_back - l).abs().max()) <= 1e-3


def test_static_networks_only_when_sampling_in_eval_without_grad(tiny_flow, monkeypatch):
    flow = copy.deepcopy(tiny_flow)
    flow.set_coupling_engine("static")
    calls = []
    monkeypatch.setattr(StaticCouplingNN, "__call__", lambda self, x: calls.append(1) or self.net(x))
    z = paddle.randn([2, 3, 8, 8])
    flow.inverse(z)
    n_eval = len(calls)
    assert n_eval == len([m for m in flow.flows.sublayers() if isinstance(m, Coupling)])
    flow.train()
    flow.inverse(z)                                    # train mode (dropout on): dygraph
    flow.eval()
    flow(paddle.rand([2, 3, 8, 8]) * 2 - 1)            # density path: dygraph
    assert len(calls) == n_eval


def test_positional_encoding_buffer_stays_out_of_the_state_dict(tiny_flow):
    flow = copy.deepcopy(tiny_flow)
    keys = set(flow.state_dict())
    flow.inverse(paddle.randn([1, 3, 8, 8]))
    assert set(flow.state_dict()) == keys and not any("pos_enc" in k for k in keys)


def test_failure_falls_back_in_auto_and_raises_in_on(monkeypatch, caplog):
    paddle.seed(2)
    net = NN(3, 8, 1, 2, 0.0, False)
    net.eval()
    x = paddle.randn([2, 3, 4, 4])

    def broken(*a, **k):
        raise RuntimeError("no static graph today")

    monkeypatch.setattr(paddle.jit, "to_static", broken)
    with paddle.no_grad():
        snn = make_coupling_nn(net, "auto")
        with caplog.at_level(logging.WARNING, logger="paddle_coopflow.accel.coupling"):
            out = snn(x)
            out = snn(x)
        assert _rel_maxdiff(out, net(x)) == 0.0 and list(snn.chosen().values()) == ["dygraph"]
        assert caplog.text.count("using dygraph") == 1          # one line, once
        with pytest.raises(RuntimeError, match="Flow.coupling_engine"):
            make_coupling_nn(net, "static")(x)
    for old, new in (("on", "static"), ("off", "dygraph")):     # an old value names the new one
        with pytest.raises(ValueError, match=f"Flow.coupling_engine.*'{new}'"):
            FlowPlusPlus(in_shape=(3, 8, 8), mid_channels=4, num_blocks=1, num_components=2, coupling_engine=old)
    assert make_coupling_nn(net, "dygraph") is None


def test_engine_choice_is_deterministic_and_deep_copies_get_their_own_cache(tiny_flow):
    """'auto' builds the static runner on oneDNN CPU builds without timing anything; a deep-copied flow
    gets a fresh runner over its own copy of each network (no programs shared between copies)."""
    flow = copy.deepcopy(tiny_flow)
    flow.set_coupling_engine("auto")
    couplings = [m for m in flow.flows.sublayers() if isinstance(m, Coupling)]
    assert all(isinstance(c.static_nn, StaticCouplingNN) and not c.static_nn.cache.strict for c in couplings)
    z = paddle.randn([2, 3, 8, 8])
    flow.inverse(z)
    assert all(c.static_nn.n_compiled == 1 for c in couplings)
    twin = copy.deepcopy(flow)
    twins = [m for m in twin.flows.sublayers() if isinstance(m, Coupling)]
    assert all(t.static_nn.net is t.nn and t.static_nn.n_compiled == 0 for t in twins)
    assert float((twin.inverse(z) - flow.inverse(z)).abs().max()) == 0.0
    assert not hasattr(accel_coupling, "_KEEP_ALIVE")
