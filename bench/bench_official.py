"""The official PyTorch CoopFlow training iteration against the package's, side by side (by hand, never in CI).

    python bench/bench_official.py -c configs/cifar10_t30.yaml --official-dir DIR --batch 4 8 --iters 5
    python bench/bench_official.py -c configs/cifar10_cpu_coopflow.yaml --official-dir DIR --iters 5
    python bench/bench_official.py -c configs/cifar10_cpu_coopflow.yaml --official-dir DIR --check

DIR is a checkout of github.com/AlvinZhuyx/CoopFlow (default: $COOPFLOW_OFFICIAL_DIR); its `models/`, `util/`
and `main_cifar.py` are imported from there. torch is a benchmark-only dependency (pip install torch==2.13.0);
torchvision, tqdm and matplotlib, imported by main_cifar.py but never used here, are replaced by empty modules
when not installed. Without DIR or torch: one line naming what is missing, exit 2.

Official: main_cifar.py's loop body (sample_flow with its bisection inverse; ebm_sample, T steps of
torch.autograd.grad; the flow update with util.NLLLoss, util.get_param_groups, util.clip_grad_norm, Adam and
LambdaLR; the EBM update with Adam and LambdaLR, plus clip_grad_norm_ as in main_svhn.py when
Optimizer.ebm_clip_norm is set) on the official networks at the config's widths, with the config's learning
rates, betas, weight decay and clip norms; the official attention gets a torch.split that returns narrow views
(its in-place `q *=` on a split view raises on PyTorch >= 1.8; see _SplitAsNarrowViews).
Ours: CoopFlow.train_step (bench/bench_train.py's timed_step).
Same weights (ours, loaded into theirs by state-dict key) and batches; each framework in its own worker
process, taking turns, alternating which goes first; one warm-up iteration, then --iters timed; medians per
part, peak RSS of each worker and the load average, as a Markdown table (docs/speed.md, "Against the
official code"). --check compares the numbers instead (same weights and inputs, dropout off).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import types
from typing import Dict, List, Tuple

import numpy as np

ENV_AT_START = dict(os.environ)  # the official worker's environment: nothing the package sets on import
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "bench"))

import paddle_coopflow  # noqa: E402,F401  (quiet paddle start-up)
from paddle_coopflow.cli import one_line, run_cli  # noqa: E402
from paddle_coopflow.config import load_config  # noqa: E402
from paddle_coopflow.errors import UserError  # noqa: E402

DIR_ENV = "COOPFLOW_OFFICIAL_DIR"
PARTS = ("propose", "revise", "updates", "total")
TAG = "@bench_official "   # prefix of the workers' protocol lines on stdout
PAUSE_S = 0.5              # between the two frameworks' turns: the idle one's OpenMP threads stop spinning
CHECK_TOL = 1e-4           # float32 rounding accumulated through a few dozen layers
PROPOSAL_TOL = 1e-2        # abs, images: the float32 bisection's own error level (docs/speed.md, Flow++ sampling)
CHECK_STEP_SIZE = 10.0     # a fresh EBM's gradient is tiny: a large s makes the checked step move the images
OFFICIAL_FILES = ("main_cifar.py", "models/__init__.py", "models/flowplusplus/flowplusplus.py",
                  "models/ebm/ebm.py", "util/__init__.py")
OFFICIAL_K_DEQUANT = 32    # _Dequantization's default, which FlowPlusPlus never overrides


# ------------------------------------------------------------------------------------------ inputs
def check_config(cfg, path: str) -> None:
    """Raise a UserError when the config asks for something main_cifar.py's loop cannot run."""
    f, lg = cfg.Flow, cfg.Langevin
    wrong = [(cfg.Train.mode != "coopflow", f"Train.mode={cfg.Train.mode}", "use -o Train.mode=coopflow"),
             (f.arch != "flowpp" or cfg.EBM.arch != "res", "networks other than Flow++ and EBM_res",
              "use -o Flow.arch=flowpp -o EBM.arch=res"),
             (list(f.in_shape) != [3, 32, 32] or cfg.EBM.img_size != 32,
              f"images {f.in_shape} (sample_flow draws [N, 3, 32, 32]; EBM_res builds 32 and 64 px only)",
              "use a CIFAR-10 or SVHN config"),
             (lg.noise_mode != "none", f"Langevin.noise_mode={lg.noise_mode} (ebm_sample adds none)", "use -o Langevin.noise_mode=none"),
             (lg.delta_clip != 0.1 or list(lg.image_clip or []) != [-1.0, 1.0],
              "Langevin clips other than δ 0.1 and images [-1, 1] (ebm_sample's constants)",
              "use -o Langevin.delta_clip=0.1 -o Langevin.image_clip=[-1,1]"),
             (f.undo_bound, "Flow.undo_bound=true (sample_flow keeps the 0.9 bound)", "use -o Flow.undo_bound=false")]
    for bad, what, fix in wrong:
        if bad:
            raise UserError(f"{path}: the official CIFAR loop cannot run {what}; {fix}")


def official_dir(path: str) -> str:
    """The official checkout, checked for its files, and torch importable; else a one-line UserError."""
    import importlib.util

    if not path:
        raise UserError("no official code: pass --official-dir DIR (a checkout of AlvinZhuyx/CoopFlow) "
                        f"or set {DIR_ENV}")
    path = os.path.abspath(os.path.expanduser(path))
    missing = [f for f in OFFICIAL_FILES if not os.path.isfile(os.path.join(path, f))]
    if missing:
        raise UserError(f"--official-dir {path} is not a checkout of the official CoopFlow code: no {missing[0]}")
    if importlib.util.find_spec("torch") is None:
        raise UserError("the official code needs PyTorch: pip install torch==2.13.0 (CPU; torchvision is not needed)")
    return path


def data(seed: int, it: int, shape) -> np.ndarray:
    """Batch number `it` (0: the flow's data initialisation): uniform in [-1, 1], the same in every process."""
    return np.random.default_rng([seed, it]).uniform(-1.0, 1.0, shape).astype(np.float32)


def official_layout(net) -> Dict[str, np.ndarray]:
    """Our network's state dict under the official keys and torch layout: the reverse of
    paddle_coopflow.official.map_state (WN-Linear weight_v / weight_g transposed back; every other key,
    ActNorm is_initialized included, is the official one already)."""
    from paddle_coopflow.official import _special_keys

    linear, _ = _special_keys(net)
    return {k: np.ascontiguousarray(v.numpy().T if k in linear else v.numpy()) for k, v in net.state_dict().items()}


# -------------------------------------------------------------------------------- the official side
def _stand_ins() -> None:
    """Empty modules for what main_cifar.py imports at its top but the benchmark never calls, when not installed."""
    import importlib.util

    for top, sub in (("torchvision", "transforms"), ("matplotlib", "pyplot"), ("tqdm", "tqdm")):
        if importlib.util.find_spec(top) is None:
            sys.modules[top] = types.ModuleType(top)
            sys.modules[f"{top}.{sub}"] = types.ModuleType(f"{top}.{sub}")
            setattr(sys.modules[top], sub, sys.modules[f"{top}.{sub}"])


class _SplitAsNarrowViews(types.ModuleType):
    """torch, but `split` returns its pieces as single-output views (`narrow`), for the official attention module.

    The official GatedAttn scales its queries in place (`q *= ...`) on a view that torch.split returned. PyTorch 1.7,
    the official environment, allowed this with a deprecation warning; PyTorch >= 1.8 raises "Output 0 of Permute is
    a view and is being modified inplace ..." in every training forward with attention. In-place operations on
    `narrow` views are allowed and give what 1.7 gave: the same values, gradients and copy-on-write backward.
    """

    def __init__(self, torch):
        super().__init__("torch")
        self._torch = torch

    def __getattr__(self, name):
        return getattr(self._torch, name)

    def split(self, t, sizes, dim=0):
        n = t.shape[dim]
        sizes = [min(sizes, n - i) for i in range(0, n, sizes)] if isinstance(sizes, int) else list(sizes)
        starts = np.cumsum([0] + sizes[:-1])
        return tuple(t.narrow(dim, int(a), int(b)) for a, b in zip(starts, sizes))


def import_official(path: str) -> types.SimpleNamespace:
    """main_cifar, models, util and torch, imported from the official checkout `path`."""
    import warnings

    for name in ("models", "util", "main_cifar"):
        mod = sys.modules.get(name)
        if mod is not None and not os.path.abspath(getattr(mod, "__file__", "") or "").startswith(path + os.sep):
            raise UserError(f"another module named {name!r} is already imported ({mod}); run from a fresh process")
    _stand_ins()
    sys.path.insert(0, path)
    warnings.filterwarnings("ignore", message=r".*weight_norm.*")          # torch's legacy weight norm, as used
    warnings.filterwarnings("ignore", message=r".*epoch parameter in `scheduler.step\(\)`.*")  # step(samples_seen)
    import main_cifar
    import torch
    import util
    from models import EBM_res, FlowPlusPlus
    from models.flowplusplus.flowplusplus import _Dequantization

    if os.path.dirname(os.path.abspath(main_cifar.__file__)) != path:
        raise UserError(f"main_cifar was imported from {main_cifar.__file__}, not from {path}")
    sys.modules["models.flowplusplus.nn"].torch = _SplitAsNarrowViews(torch)
    return types.SimpleNamespace(torch=torch, util=util, main=main_cifar, FlowPlusPlus=FlowPlusPlus,
                                 EBM_res=EBM_res, Dequantization=_Dequantization)


def load_state(net, state: Dict[str, np.ndarray], what: str) -> None:
    """Load `state` (official keys, torch layout) into an official network after checking every key and shape."""
    import torch

    own = net.state_dict()
    problem = next((f"'{k}' is missing from ours" for k in own if k not in state), None)
    problem = problem or next((f"ours has '{k}', which the official one lacks" for k in state if k not in own), None)
    problem = problem or next((f"'{k}' is {list(state[k].shape)} in ours but {list(own[k].shape)} in the official "
                               "network" for k in own if tuple(state[k].shape) != tuple(own[k].shape)), None)
    if problem:
        raise UserError(f"{what} weights do not fit the official network built at the config's widths: {problem}")
    net.load_state_dict({k: torch.from_numpy(state[k]).to(own[k].dtype) for k in own}, strict=True)


def official_side(off, cfg, batch: int, seed: int, threads: int, state: Dict[str, Dict[str, np.ndarray]]):
    """The official iteration on FlowPlusPlus and EBM_res built at the config's widths, holding `state`.

    The official dequantization flow always has 32 mixture components; with another number in the config
    the official _Dequantization class is built with the config's.
    """
    off.torch.set_num_threads(threads)
    off.torch.manual_seed(seed)
    f, e = cfg.Flow, cfg.EBM
    flow = off.FlowPlusPlus(scales=[tuple(s) for s in f.scales], in_shape=tuple(f.in_shape),
                            mid_channels=f.mid_channels, num_blocks=f.num_blocks,
                            num_dequant_blocks=f.num_dequant_blocks, num_components=f.num_components,
                            use_attn=f.use_attn, drop_prob=f.drop_prob)
    k_dequant = f.num_dequant_components or f.num_components
    if f.num_dequant_blocks > 0 and k_dequant != OFFICIAL_K_DEQUANT:
        flow.dequant_flows = off.Dequantization(in_shape=tuple(f.in_shape), mid_channels=f.mid_channels,
                                                num_blocks=f.num_dequant_blocks, use_attn=f.use_attn,
                                                drop_prob=f.drop_prob, num_components=k_dequant)
    ebm = off.EBM_res(n_c=e.in_channels, n_f=e.base_channels, img_size=e.img_size)
    load_state(flow, state["flow"], "flow")
    load_state(ebm, state["ebm"], "EBM")
    flow.train()
    ebm.train()
    return OfficialIteration(off, cfg, flow, ebm, batch)


class OfficialIteration:
    """main_cifar.py's training loop body (without its plots, prints and checkpoints) on the official networks."""

    def __init__(self, off, cfg, flow, ebm, batch: int):
        o, lg = cfg.Optimizer, cfg.Langevin
        optim, sched = off.torch.optim, off.torch.optim.lr_scheduler
        self.off, self.flow, self.ebm, self.batch = off, flow, ebm, batch
        self.T, self.step_size = lg.n_steps, lg.step_size
        self.max_grad_norm, self.ebm_clip = o.flow_clip_norm or 0.0, o.ebm_clip_norm
        self.loss_fn = off.util.NLLLoss()
        groups = off.util.get_param_groups(flow, o.flow_gain_l2, norm_suffix="weight_g")
        self.flow_opt = optim.Adam(groups, lr=o.flow_lr, betas=(o.flow_beta1, o.flow_beta2))
        self.ebm_opt = optim.Adam(ebm.parameters(), lr=o.ebm_lr, betas=[o.ebm_beta1, o.ebm_beta2])
        warm_up = o.warmup_iters * batch
        ramp = (lambda s: min(1.0, s / warm_up)) if warm_up > 0 else (lambda s: 1.0)
        self.flow_sched, self.ebm_sched = sched.LambdaLR(self.flow_opt, ramp), sched.LambdaLR(self.ebm_opt, ramp)
        self.samples_seen = 0

    def propose(self):
        return self.off.main.sample_flow(self.flow, self.batch, "cpu").detach()

    def revise(self, x_flow, n_steps=None):
        return self.off.main.ebm_sample(0, self.ebm, K=self.T if n_steps is None else n_steps,
                                        step_size=self.step_size, device="cpu", p_0=x_flow, num_sample=self.batch,
                                        save_images=False)

    def flow_loss(self, x_ebm):
        z, sldj = self.flow(x_ebm.detach(), reverse=False)
        return self.loss_fn(z, sldj)

    def ebm_loss(self, x, x_ebm):
        en_pos, en_neg = self.ebm(x).mean(), self.ebm(x_ebm).mean()
        return en_neg - en_pos, en_pos, en_neg

    def step(self, x) -> Dict[str, float]:
        """One iteration on the data batch x [B, 3, 32, 32]; seconds per part."""
        torch = self.off.torch
        t0 = time.perf_counter()
        x_flow = self.propose()
        t1 = time.perf_counter()
        x_ebm = self.revise(x_flow)
        t2 = time.perf_counter()
        mse_loss = torch.sum(torch.mean((x_ebm.detach() - x_flow) ** 2, dim=0)).detach()
        self.flow_opt.zero_grad()
        flow_loss = self.flow_loss(x_ebm)
        flow_loss.item()
        flow_loss.backward()
        if self.max_grad_norm > 0:
            self.off.util.clip_grad_norm(self.flow_opt, self.max_grad_norm)
        self.flow_opt.step()
        self.flow_sched.step(self.samples_seen)
        self.ebm_opt.zero_grad()
        ebm_loss, en_pos, en_neg = self.ebm_loss(x, x_ebm)
        ebm_loss.item()
        ebm_loss.backward()
        if self.ebm_clip:
            torch.nn.utils.clip_grad_norm_(self.ebm.parameters(), self.ebm_clip)
        self.ebm_opt.step()
        self.ebm_sched.step(self.samples_seen)
        if any(bool(torch.isnan(v)) for v in (mse_loss, flow_loss, en_pos, en_neg, ebm_loss)):
            raise UserError(f"the official iteration produced NaN at sample {self.samples_seen}")
        self.samples_seen += int(x.shape[0])
        t3 = time.perf_counter()
        return {"propose": t1 - t0, "revise": t2 - t1, "updates": t3 - t2, "total": t3 - t0}


# ---------------------------------------------------------------------------------------- workers
def _rss_mb() -> Tuple[float, float]:
    """(current, peak) resident set size of this process in MB."""
    with open("/proc/self/statm") as fh:
        current = int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20
    return current, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _say(msg: Dict) -> None:
    print(TAG + json.dumps(msg), flush=True)


def paddle_side(cfg, batch: int, seed: int, threads: int):
    """Our learner data-initialised on batch 0: (step(x_numpy, it) -> seconds per part, the learner)."""
    import paddle

    from bench_train import build_learner, timed_step
    from paddle_coopflow.utils.env import setup_threads

    setup_threads(threads)
    learner, flow, _ = build_learner(cfg, batch, seed)
    flow.data_init(paddle.to_tensor(data(seed, 0, [batch] + list(cfg.Flow.in_shape))))
    step = timed_step(learner)
    return (lambda x, it: step(paddle.to_tensor(x), it)), learner


def serve(args, cfg) -> int:
    """A worker: build one framework's iteration, then run `step IT` / `quit` commands read from stdin."""
    batch, shape = args.batch[0], [args.batch[0]] + list(cfg.Flow.in_shape)
    if args.worker == "paddle":
        step, learner = paddle_side(cfg, batch, args.seed, args.threads)
        np.savez(args.weights, **{f"{net}/{k}": v for net, layer in (("flow", learner.flow), ("ebm", learner.ebm))
                                  for k, v in official_layout(layer).items()})
        info = {"langevin_step": _engine(learner)}
    else:
        os.environ.clear()                     # the user's environment, without what importing the package set
        os.environ.update(ENV_AT_START)
        with np.load(args.weights, allow_pickle=False) as npz:
            state = {"flow": {}, "ebm": {}}
            for key in npz.files:
                net, name = key.split("/", 1)
                state[net][name] = npz[key]
        it = official_side(import_official(args.official_dir), cfg, batch, args.seed, args.threads, state)
        step, info = (lambda x, i: it.step(it.off.torch.from_numpy(x))), {}
    _say(dict(info, rss_mb=_rss_mb()[0]))
    for line in sys.stdin:
        cmd = line.split()
        if cmd and cmd[0] == "step":
            i = int(cmd[1])
            _say(step(data(args.seed, i, shape), i))
        elif cmd == ["quit"]:
            _say({"peak_rss_mb": _rss_mb()[1]})
            return 0
    return 0


class Worker:
    """A worker process (this script with --worker KIND) and its line protocol."""

    def __init__(self, kind: str, argv: List[str], env: Dict[str, str], log: str):
        self.kind, self.log = kind, log
        with open(log, "w") as err:
            self.proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--worker", kind] + argv,
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True,
                                         env=env)

    def read(self) -> Dict:
        for line in self.proc.stdout:
            if line.startswith(TAG):
                return json.loads(line[len(TAG):])
        rc = self.proc.wait()
        with open(self.log) as fh:
            last = ([ln.strip() for ln in fh if ln.strip()] or ["(no output)"])[-1]
        raise UserError(f"the {self.kind} worker stopped (exit {rc}): {last}")

    def ask(self, cmd: str) -> Dict:
        self.proc.stdin.write(cmd + "\n")
        self.proc.stdin.flush()
        return self.read()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


def bench_batch(args, batch: int, tmp: str) -> Dict:
    """Both workers for one batch size: medians per part, every total, peak RSS, load averages."""
    common = ["-c", args.config] + [a for o in args.override for a in ("-o", o)] + [
        "--batch", str(batch), "--threads", str(args.threads), "--seed", str(args.seed),
        "--official-dir", args.official_dir, "--weights", os.path.join(tmp, "weights.npz")]
    workers: Dict[str, Worker] = {}
    try:
        workers["ours"] = Worker("paddle", common, dict(os.environ), os.path.join(tmp, "paddle.log"))
        ready = {"ours": workers["ours"].read()}           # writes the weights the official side loads
        workers["official"] = Worker("official", common, ENV_AT_START, os.path.join(tmp, "official.log"))
        ready["official"] = workers["official"].read()
        runs: Dict[str, List[Dict]] = {"official": [], "ours": []}
        loads = []
        for i in range(args.iters + 1):                    # i = 0: the warm-up iteration of each
            order = ["official", "ours"] if i % 2 == 0 else ["ours", "official"]
            for name in order:
                time.sleep(PAUSE_S)
                t = workers[name].ask(f"step {i + 1}")
                if i > 0:
                    runs[name].append(t)
            if i > 0:
                loads.append(os.getloadavg()[0])
        peak = {name: w.ask("quit")["peak_rss_mb"] for name, w in workers.items()}
    finally:
        for w in workers.values():
            w.close()
    med = {name: {p: statistics.median(r[p] for r in rs) for p in PARTS} for name, rs in runs.items()}
    return {"median": med, "totals": {n: [r["total"] for r in rs] for n, rs in runs.items()}, "peak_rss_mb": peak,
            "ready_rss_mb": {n: r["rss_mb"] for n, r in ready.items()}, "loads": loads,
            "langevin_step": ready["ours"]["langevin_step"]}


# ------------------------------------------------------------------------------------------- check
def _rel(ours, theirs) -> float:
    ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
    return float(np.abs(ours - theirs).max() / (np.abs(theirs).max() + 1e-30))


def check(args, cfg) -> int:
    """Proposal, one Langevin step and both losses of ours against the official code (same weights and inputs)."""
    import paddle
    import torch

    from paddle_coopflow.coopflow import ebm_ml_loss, flow_ml_loss

    batch, s = args.batch[0], CHECK_STEP_SIZE
    shape = [batch] + list(cfg.Flow.in_shape)
    _, learner = paddle_side(cfg, batch, args.seed, args.threads)
    pflow, pebm = learner.flow, learner.ebm
    state = {"flow": official_layout(pflow), "ebm": official_layout(pebm)}
    it = official_side(import_official(args.official_dir), cfg, batch, args.seed, args.threads, state)
    pflow.eval()    # dropout off in both: the frameworks draw their masks from different generators
    it.flow.eval()
    t = lambda a: paddle.to_tensor(a.detach().numpy() if isinstance(a, torch.Tensor) else a)  # noqa: E731
    torch.manual_seed(args.seed + 1)
    z = torch.randn(shape)                      # what sample_flow draws after the same seed
    torch.manual_seed(args.seed + 1)
    x0 = it.propose()
    prop = np.abs(learner.propose(batch, z=t(z)).numpy() - x0.numpy())
    it.step_size = s
    x1 = it.revise(x0, n_steps=1)
    ours1 = learner.revise(t(x0), step_size=s, n_steps=1)[0].numpy()
    draw = torch.randn if pflow.dequant_noise_kind == "normal" else torch.rand
    torch.manual_seed(args.seed + 2)
    noise = draw(shape)                         # what the official dequantization draws after the same seed
    torch.manual_seed(args.seed + 2)
    nll = it.flow_loss(x1).item()
    x = data(args.seed, 1, shape)
    loss, en_pos, en_neg = (v.item() for v in it.ebm_loss(torch.from_numpy(x), x1))
    ours_loss, f_data, f_rev = ebm_ml_loss(pebm, t(x), t(x1))
    rel = {f"one Langevin step (s = {s:g}): x1": _rel(ours1, x1.numpy()),
           "one Langevin step: x1 - x0": _rel(ours1 - x0.numpy(), (x1 - x0).numpy()),
           "flow loss (mean NLL)": _rel(flow_ml_loss(lambda v: pflow.nll(v, t(noise)), t(x1)).item(), nll),
           "mean f(x), mean f(x1)": _rel([f_data.mean().item(), f_rev.mean().item()], [en_pos, en_neg]),
           "EBM loss ÷ max of the abs mean f": abs(ours_loss.item() - loss) / (max(abs(en_pos), abs(en_neg)) + 1e-30)}
    step = np.abs((x1 - x0).numpy())
    print(f"# check: {args.config} {' '.join('-o ' + o for o in args.override)}, batch {batch}, dropout off, "
          f"Langevin step {_engine(learner)}: NLL {nll:.6g} nats, mean f(x) {en_pos:.6g}, mean f(x1) {en_neg:.6g}, "
          f"max |x1 - x0| {step.max():.3g} ({np.mean(step >= 0.1 - 1e-6):.0%} of the pixels on the δ clip)\n")
    print("| quantity | ours vs official | tolerance |\n| --- | ---: | ---: |")
    print(f"| proposal, both with the bisection inverse: max abs | {prop.max():.2e} | {PROPOSAL_TOL:g} |")
    print(f"| proposal: median abs | {np.median(prop):.2e} | |")
    for name, d in rel.items():
        print(f"| {name}: max relative | {d:.2e} | {CHECK_TOL:g} |")
    bad = [n for n, d in rel.items() if not d <= CHECK_TOL] + (["proposal"] if not prop.max() <= PROPOSAL_TOL else [])
    print(f"\ncheck {'FAILED: ' + ', '.join(bad) if bad else 'passed'}")
    return 1 if bad else 0


# -------------------------------------------------------------------------------------------- main
def _engine(learner) -> str:
    from paddle_coopflow.accel import engine_in_use

    return engine_in_use(learner.langevin_step)


def table(args, cfg, batch: int, res: Dict) -> str:
    """The Markdown table of one batch size (ratio = ours / official: below 1 means ours is faster)."""
    f, med, peak = cfg.Flow, res["median"], res["peak_rss_mb"]
    labels = {"propose": "flow proposal", "revise": f"Langevin flow, {cfg.Langevin.n_steps} steps",
              "updates": "flow + EBM updates", "total": "**whole iteration**"}
    lines = [f"### batch {batch}: {args.threads} thread(s), medians of {args.iters} iteration(s) after 1 warm-up",
             f"ours: Flow.inverse_method {f.inverse_method}, coupling_engine {f.coupling_engine}, recompute "
             f"{f.recompute}, Langevin step {res['langevin_step']}; official: bisection, torch.autograd.grad",
             "", "| part | official PyTorch | ours | ours / official |", "| --- | ---: | ---: | ---: |"]
    for p in PARTS:
        o, u = med["official"][p], med["ours"][p]
        lines.append(f"| {labels[p]} | {o:.3f} s | {u:.3f} s | {u / o if o > 0 else float('nan'):.2f} |")
    lines.append(f"| peak RSS | {peak['official']:.0f} MB | {peak['ours']:.0f} MB | "
                 f"{peak['ours'] / peak['official']:.2f} |")
    fmt = lambda xs: ", ".join(f"{v:.2f}" for v in xs)  # noqa: E731
    lines += ["", f"whole iterations (s): official {fmt(res['totals']['official'])}; ours {fmt(res['totals']['ours'])}",
              f"RSS when built (MB): official {res['ready_rss_mb']['official']:.0f}, ours "
              f"{res['ready_rss_mb']['ours']:.0f}; load average (1 min) after the timed iterations: "
              f"{min(res['loads']):.2f}-{max(res['loads']):.2f}"]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-c", "--config", required=True)
    ap.add_argument("-o", "--override", action="append", default=[], help="KEY=VALUE, as in the tools")
    ap.add_argument("--official-dir", default=os.environ.get(DIR_ENV, ""),
                    help=f"checkout of the official CoopFlow code (default: ${DIR_ENV})")
    ap.add_argument("--batch", type=int, nargs="+", help="batch sizes to time (default: Train.batch_size)")
    ap.add_argument("--iters", type=int, default=3, help="timed iterations per batch size (after one warm-up)")
    ap.add_argument("--threads", type=int, default=2, help="math threads of each framework")
    ap.add_argument("--seed", type=int, default=0, help="weights and data")
    ap.add_argument("--check", action="store_true", help="compare the numbers instead of timing")
    ap.add_argument("--worker", choices=("paddle", "official"), help=argparse.SUPPRESS)
    ap.add_argument("--weights", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.iters < 1 or args.threads < 1 or min(args.batch or [1]) < 1:
        raise UserError("--iters, --threads and --batch must be >= 1")
    cfg = load_config(args.config, args.override + (["Flow.inverse_method=bisection"] if args.check else []))
    check_config(cfg, args.config)
    args.official_dir = official_dir(args.official_dir)
    args.batch = args.batch or [cfg.Train.batch_size]
    if args.worker:
        return serve(args, cfg)
    if args.check:
        return check(args, cfg)
    print(f"# CoopFlow training iteration, official PyTorch code ({args.official_dir}) vs ours: {args.config} "
          f"{' '.join('-o ' + o for o in args.override)}".rstrip())
    print(f"load average before (1/5/15 min): {' '.join(f'{v:.2f}' for v in os.getloadavg())}\n", flush=True)
    tmp = tempfile.mkdtemp(prefix="bench_official_")
    try:
        for b in args.batch:
            print(table(args, cfg, b, bench_batch(args, b, tmp)) + "\n", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


def _run(argv=None) -> int:
    """run_cli (Paddle's version check; a UserError is one line, exit 2); the official worker never imports Paddle."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:2] == ["--worker", "official"]:
        try:
            return main(argv)
        except UserError as err:
            print(one_line(err), file=sys.stderr)
            return 2
    return run_cli(main, argv)


if __name__ == "__main__":
    sys.exit(_run())
