"""Per-step cost of the SGLD chain step versus a plain training step of the same model.

``--model dln`` (default): a deep linear network (widths 50-50-50-50-50, d = 10^4 parameters,
full-rank teacher, n = 10^5 samples) with minibatches of 500. ``--model lm``: the GPT-2-style
causal LM of ``bench_devinterp.py`` (4 layers, width 256, vocabulary 4096, d = 4.2·10^6,
2,000 random sequences of 64 tokens) with minibatches of 8, prepared as ``estimate_llc``
prepares it (per-sample token loss from the logits, ``use_cache=False``). It times,
interleaved in one process:

* SGLD: ``hf_llc.sampling.run_chain`` itself, on the problem built exactly as
  ``hf_llc.estimate_llc`` builds it (``TensorBatches`` → ``FlatParameters`` → ``ModelLoss``),
  with a fixed float step size (no curvature estimation) and the flat first A (the default's
  one-time curvature start is timed on its own with ``--start``), once per preconditioner;
  ms/step = wall time of the whole ``run_chain`` call / number of steps (nothing subtracted).
* train: ``model(**batch).loss`` (the model's own loss from the labels), ``loss.backward()``,
  ``torch.optim.SGD.step()``, ``zero_grad(set_to_none=True)``, minibatch indices drawn the
  same way (a per-epoch ``torch.randperm`` from a ``torch.Generator``) into the same
  pre-collated tensors.

For ``--model lm`` it also reports memory over the fp32 parameter bytes: the parameter-sized
tensors a chain holds while it steps (counted from the live tensors at a step), and the peak
resident memory added by sampling and by training, each measured in a fresh subprocess.

Run ``python benchmarks/bench_step.py --help`` for the options; ``--profile`` adds a breakdown
of where the SGLD step's time goes. See ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import copy
import cProfile
import gc
import io
import json
import math
import os
import platform
import pstats
import statistics
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass, field

import torch
from _common import cores

from hf_llc.estimator import FlatParameters, ModelLoss, TensorBatches, _model_device
from hf_llc.models.dln import make_dln_problem
from hf_llc.sampling import SamplerConfig, run_chain
from hf_llc.sampling.chain import EpochBatcher, chain_generator
from hf_llc.sampling.config import PRECONDITIONERS

TARGET_RATIO = 1.15
TARGET_MEMORY = 3.5  # peak memory per chain / parameter bytes, activations aside

DEFAULTS = {
    "dln": dict(batch_size=500, steps=400, rounds=25, warmup=200, step_size=1e-6, memory_steps=0),
    "lm": dict(batch_size=8, steps=10, rounds=10, warmup=2, step_size=1e-5, memory_steps=5),
}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--model",
        choices=["dln", "lm"],
        default="dln",
        help="dln: deep linear network; lm: the small GPT-2-style causal LM of bench_devinterp",
    )
    p.add_argument("--widths", type=int, nargs="+", default=[50, 50, 50, 50, 50], help="(dln)")
    p.add_argument("--num-samples", type=int, default=100_000, help="n, dataset size (dln)")
    p.add_argument("--seq-len", type=int, default=64, help="tokens per sequence (lm)")
    p.add_argument("--batch-size", type=int, default=None, help="dln: 500, lm: 8")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--steps",
        type=int,
        default=None,
        help="steps per timed measurement (one run_chain call / one training-loop block); "
        "dln: 400, lm: 10",
    )
    p.add_argument(
        "--rounds",
        type=int,
        default=None,
        help="interleaved rounds (many short rounds keep load bursts from favouring one "
        "side); dln: 25, lm: 10",
    )
    p.add_argument(
        "--warmup", type=int, default=None, help="untimed warm-up steps of each; dln: 200, lm: 3"
    )
    p.add_argument(
        "--step-size", type=float, default=None, help="fixed SGLD step size ε; dln: 1e-6, lm: 1e-5"
    )
    p.add_argument(
        "--memory-steps",
        type=int,
        default=None,
        help="(lm) steps per peak-memory subprocess, 0 skips them; lm: 5",
    )
    p.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    p.add_argument(
        "--start",
        action="store_true",
        help="also time fisher_start='curvature' (the equivariant first A: Hessian-vector "
        "products at w*) against the median SGLD step of the same run",
    )
    p.add_argument(
        "--preconditioners",
        nargs="+",
        default=["identity", "fisher-burnin", "rmsprop-burnin"],
        choices=[p + suffix for suffix in ("", LM_SUFFIX) for p in PRECONDITIONERS],
        help="configurations to time; a name ending in +lm uses integrator='leimkuhler-matthews' "
        "(e.g. fisher-burnin fisher-burnin+lm compares the two steps side by side)",
    )
    p.add_argument(
        "--burnin-fraction",
        type=float,
        default=0.4,
        help="share of the timed steps that are burn-in (the library default is 2000/5000); "
        "only matters for the *-burnin preconditioners, whose diagonal adapts during burn-in "
        "only",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=cores(),
        help="torch.set_num_threads (default: all cores available to this process)",
    )
    p.add_argument(
        "--profile",
        nargs="?",
        const="all",
        default=None,
        choices=["all", "torch", "cprofile"],
        help="also print where the SGLD step's time goes: 'torch' (torch.profiler ops table "
        "of run_chain and of the train step), 'cprofile' (Python-level), 'all' (both; the "
        "default when the flag is given bare)",
    )
    p.add_argument(
        "--profile-steps",
        type=int,
        default=1200,
        help="steps per profiled configuration (one chain of this many steps)",
    )
    args = p.parse_args(argv)
    for name, value in DEFAULTS[args.model].items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if not 0.0 <= args.burnin_fraction < 1.0:
        p.error("--burnin-fraction must be in [0, 1)")
    if args.steps < 2 or args.rounds < 1:
        p.error("--steps must be >= 2 and --rounds >= 1")
    return args


# --------------------------------------------------------------------------- setup


@dataclass
class Setup:
    model: torch.nn.Module
    problem: ModelLoss
    flat: FlatParameters
    w_star: torch.Tensor
    nbeta: float
    init_loss: float
    init_cache: torch.Tensor | None
    columns: dict
    n: int
    d: int
    name: str = ""
    forward_kwargs: dict = field(default_factory=dict)
    setup_seconds: dict = field(default_factory=dict)

    @property
    def param_bytes(self) -> int:
        return sum(p.numel() * p.element_size() for p in self.model.parameters())


def build(args) -> Setup:
    return build_lm(args) if args.model == "lm" else build_dln(args)


def build_dln(args) -> Setup:
    """The DLN problem, wrapped exactly as ``estimate_llc`` wraps a model and dataset."""
    t0 = time.perf_counter()
    model, dataset, _ = make_dln_problem(
        args.widths, None, "full_rank", num_samples=args.num_samples, seed=args.seed
    )
    t1 = time.perf_counter()
    device = _model_device(model)
    data = TensorBatches(dataset, device, None)
    n = data.num_samples
    nbeta = n / math.log(n)
    model.eval()
    flat = FlatParameters(model)
    problem = ModelLoss(model, flat, data, None)
    w_star = flat.w_star.to(device)
    t2 = time.perf_counter()
    init_loss, cache = problem.init_loss(n, max(args.batch_size, 256))
    t3 = time.perf_counter()
    return Setup(
        model=model,
        problem=problem,
        flat=flat,
        w_star=w_star,
        nbeta=nbeta,
        init_loss=init_loss,
        init_cache=cache,
        columns=data.columns,
        n=n,
        d=flat.numel,
        name=f"DLN widths {args.widths} (d = {flat.numel}), n = {n}",
        setup_seconds={
            "make_dln_problem": t1 - t0,
            "TensorBatches+FlatParameters+ModelLoss": t2 - t1,
            "init_loss (L_n(w*), once per estimate)": t3 - t2,
        },
    )


def build_lm(args) -> Setup:
    """bench_devinterp's GPT-2-style causal LM and data, prepared as ``estimate_llc`` does."""
    import bench_devinterp

    from hf_llc.adapters import default_loss_fn, prepare_dataset

    t0 = time.perf_counter()
    dv_args = bench_devinterp.parse_args(
        ["--lm-seq-len", str(args.seq_len), "--lm-batch-size", str(args.batch_size)]
        + ["--seed", str(args.seed), "--threads", str(args.threads)]
    )
    lm = bench_devinterp.lm_problem(dv_args)
    model = lm["model"]
    t1 = time.perf_counter()
    # As estimate_llc: tokenized columns, the per-sample token loss computed from the logits
    # (so the model is not passed the labels), no KV cache.
    prepared = prepare_dataset(model, lm["hf_data"], seed=args.seed)
    dataset = prepared.columns if prepared.columns is not None else prepared.dataset
    loss_fn = default_loss_fn(model, prepared)
    exclude = frozenset({"labels"}) if loss_fn is not None else frozenset()
    forward_kwargs = {"use_cache": False} if prepared.kind == "causal-lm" else {}
    device = _model_device(model)
    data = TensorBatches(dataset, device, None)
    n = data.num_samples
    nbeta = n / math.log(n)
    model.eval()
    flat = FlatParameters(model)
    problem = ModelLoss(model, flat, data, loss_fn, forward_kwargs=forward_kwargs, exclude=exclude)
    w_star = flat.w_star.to(device)
    t2 = time.perf_counter()
    # L_n(w*) from 32 batches' worth of samples, as bench_devinterp (init_loss_samples = 32·m;
    # estimate_llc then keeps no per-sample cache).
    init_loss, _ = problem.init_loss(min(32 * args.batch_size, n), 64)
    cache = None
    t3 = time.perf_counter()
    return Setup(
        model=model,
        problem=problem,
        flat=flat,
        w_star=w_star,
        nbeta=nbeta,
        init_loss=init_loss,
        init_cache=cache,
        columns=data.columns,
        n=n,
        d=flat.numel,
        name=f"{lm['name']}, n = {n}",
        forward_kwargs=forward_kwargs,
        setup_seconds={
            "model + data (bench_devinterp.lm_problem)": t1 - t0,
            "prepare_dataset+TensorBatches+FlatParameters+ModelLoss": t2 - t1,
            "init_loss (L(w*) over 32·m samples, once per estimate)": t3 - t2,
        },
    )


#: A configuration name ``"<preconditioner>+lm"`` runs that preconditioner with
#: ``integrator="leimkuhler-matthews"``; a bare name uses the default Euler–Maruyama step.
LM_SUFFIX = "+lm"


def sampler_config(args, preconditioner: str, steps: int, seed: int) -> SamplerConfig:
    burnin = int(round(args.burnin_fraction * steps))
    name, lm = preconditioner.removesuffix(LM_SUFFIX), preconditioner.endswith(LM_SUFFIX)
    return SamplerConfig(
        step_size=args.step_size,
        batch_size=args.batch_size,
        num_chains=1,
        num_burnin=burnin,
        num_draws=steps - burnin,
        preconditioner=name,
        integrator="leimkuhler-matthews" if lm else "euler",
        # The per-step cost: the default's curvature start (48 Hessian-vector products once
        # per chain, at step 0) would land in these short timed runs; ``--start`` times it.
        fisher_start="flat",
        seed=seed,
    )


# --------------------------------------------------------------------------- the two steps


def time_sgld(s: Setup, args, preconditioner: str, steps: int, seed: int) -> float:
    """Seconds of one ``run_chain`` call of ``steps`` steps, as estimate_llc makes it."""
    cfg = sampler_config(args, preconditioner, steps, seed)
    t0 = time.perf_counter()
    result = run_chain(
        s.problem,
        s.w_star,
        cfg,
        0,
        nbeta=s.nbeta,
        init_loss=s.init_loss,
        init_per_sample=s.init_cache,
        precond_diagonal=None,
        progress=None,
    )
    elapsed = time.perf_counter() - t0
    if result.diverged:
        raise RuntimeError(f"the benchmark chain diverged: {result.divergence_reason}")
    return elapsed


class Trainer:
    """A plain training loop on a copy of the model (w* itself is never touched)."""

    def __init__(self, s: Setup, args):
        self.model = copy.deepcopy(s.model).train()
        self.opt = torch.optim.SGD(self.model.parameters(), lr=1e-6)
        self.columns = s.columns
        self.forward_kwargs = s.forward_kwargs
        self.batcher = EpochBatcher(s.n, args.batch_size, chain_generator(args.seed, 1))

    def step(self) -> None:
        idx = self.batcher.next()
        # Same gather as the library's TensorBatches, so the ratio measures the sampler alone.
        batch = {k: v.index_select(0, idx) for k, v in self.columns.items()}
        out = self.model(**batch, **self.forward_kwargs)
        out.loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)

    def run(self, steps: int) -> float:
        step = self.step
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        return time.perf_counter() - t0


# --------------------------------------------------------------------------- benchmark


def benchmark(s: Setup, args) -> dict:
    trainer = Trainer(s, args)
    # Warm-up: allocator, autograd, oneDNN/MKL kernels, Python caches of both paths.
    for p in args.preconditioners:
        time_sgld(s, args, p, max(args.warmup, 2), seed=10_000)
    trainer.run(args.warmup)

    names = [f"SGLD {p}" for p in args.preconditioners] + ["train"]
    per_step: dict[str, list[float]] = {k: [] for k in names}
    for r in range(args.rounds):
        # Rotate the order every round so that no measurement always runs first or last.
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            if name == "train":
                sec = trainer.run(args.steps)
            else:
                sec = time_sgld(s, args, name.removeprefix("SGLD "), args.steps, seed=r)
            per_step[name].append(sec / args.steps)

    # Per-chain fixed cost: a 1-step chain minus one median step.
    fixed = {}
    repeats = 20 if args.model == "dln" else 3
    for p in args.preconditioners:
        one = [time_sgld(s, args, p, 1, seed=0) for _ in range(repeats)]
        fixed[p] = statistics.median(one) - statistics.median(per_step[f"SGLD {p}"])
    out = {"per_step": per_step, "fixed": fixed}
    if args.start:
        out["start"] = [time_start(s, args, seed=r) for r in range(3 if args.model == "lm" else 10)]
    return out


def time_start(s: Setup, args, seed: int) -> float:
    """Seconds of one ``fisher_start`` (a chain's first A under ``fisher_start="curvature"``)
    at w* on one minibatch, as the chain loop calls it at step 0."""
    from hf_llc.sampling.chain import fisher_start
    from hf_llc.sampling.preconditioners import make_preconditioner

    gen = chain_generator(seed, 0)
    batch = s.problem.batch(EpochBatcher(s.n, args.batch_size, gen).next())
    cfg = SamplerConfig(fisher_start="curvature")
    precond = make_preconditioner(cfg, s.w_star, nbeta=s.nbeta, segments=s.flat.sizes)
    t0 = time.perf_counter()
    fisher_start(s.problem, s.w_star, batch, nbeta=s.nbeta, precond=precond, gen=gen)
    return time.perf_counter() - t0


def print_report(s: Setup, args, res: dict) -> None:
    per_step = res["per_step"]
    med = {k: statistics.median(v) for k, v in per_step.items()}
    train = med["train"]
    train_rounds = per_step["train"]
    print(f"\n## SGLD step vs train step: {s.name}, batch {args.batch_size}")
    print(
        f"\n{args.rounds} interleaved rounds x {args.steps} steps each; median per-step time; "
        f"SGLD burn-in share {args.burnin_fraction:g}, fixed step size {args.step_size:g}\n"
    )
    print(
        "| configuration | ms/step SGLD | ms/step train | ratio (SGLD/train) "
        "| paired ratio (median of rounds) | ratio of minima | target |"
    )
    print("|---|---:|---:|---:|---:|---:|---|")
    for p in args.preconditioners:
        sg = per_step[f"SGLD {p}"]
        ratio = med[f"SGLD {p}"] / train
        paired = statistics.median(a / b for a, b in zip(sg, train_rounds))
        ok = "ok" if ratio <= TARGET_RATIO else f"ABOVE {TARGET_RATIO}"
        print(
            f"| {p} | {1e3 * med[f'SGLD {p}']:.3f} | {1e3 * train:.3f} | {ratio:.3f} | "
            f"{paired:.3f} | {min(sg) / min(train_rounds):.3f} | <= {TARGET_RATIO} {ok} |"
        )
    print("\nSpread (min / median / max ms/step over rounds):")
    for k, v in per_step.items():
        print(f"  {k:<22} {1e3 * min(v):.3f} / {1e3 * med[k]:.3f} / {1e3 * max(v):.3f}")
    print("\nPer-chain fixed cost of run_chain (1-step chain minus one median step), ms:")
    for p, sec in res["fixed"].items():
        share = sec / (args.steps * med[f"SGLD {p}"])
        print(f"  {p:<22} {1e3 * sec:.3f}  (= {share:.2%} of a {args.steps}-step chain)")
    if "start" in res:
        start = statistics.median(res["start"])
        step = med["SGLD fisher-burnin"] if "SGLD fisher-burnin" in med else train
        print(
            f"\nfisher_start='curvature' (once per chain, at step 0): median {1e3 * start:.1f} ms "
            f"over {len(res['start'])} = {start / step:.0f} SGLD steps "
            f"(= {start / (5000 * step):.2%} of the default 5,000-step chain)"
        )
    print("\nOne-off setup (not in the per-step numbers), s:")
    for k, v in s.setup_seconds.items():
        print(f"  {k:<40} {v:.3f}")


# --------------------------------------------------------------------------- memory


def _status_kib(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise OSError(f"no {key} in /proc/self/status")


def _release() -> None:
    """Collect garbage and hand freed heap pages back, so a later peak is the run's own."""
    gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def memory_child(args) -> int:
    """One peak-RSS measurement, in a fresh process; prints one JSON line.

    After setup and a 2-step warm-up (lazy kernel and allocator initialisation), the resident
    high-water mark is reset to the current RSS (``/proc/self/clear_refs``); the peak added by
    ``--memory-steps`` steps is then VmHWM − VmRSS before them.
    """
    s = build(args)
    mode = args.memory_child
    if mode == "train":
        trainer = Trainer(s, args)

        def run(k):
            trainer.run(k)

    else:

        def run(k):
            time_sgld(s, args, mode, k, seed=1)

    run(2)
    _release()
    base = _status_kib("VmRSS")
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        reset = True
    except OSError:
        reset = False  # VmHWM then includes the setup's peak: reported as such
    run(args.memory_steps)
    peak = _status_kib("VmHWM")
    print(
        json.dumps(
            {"mode": mode, "added": (peak - base) * 1024, "reset": reset, "params": s.param_bytes}
        )
    )
    return 0


def memory_subprocess(args, mode: str) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--model", args.model]
    for flag, value in [
        ("--seq-len", args.seq_len),
        ("--widths", None),
        ("--num-samples", args.num_samples),
        ("--batch-size", args.batch_size),
        ("--step-size", args.step_size),
        ("--burnin-fraction", args.burnin_fraction),
        ("--seed", args.seed),
        ("--threads", args.threads),
        ("--memory-steps", args.memory_steps),
        ("--memory-child", mode),
    ]:
        cmd += [flag, *map(str, args.widths)] if value is None else [flag, str(value)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"memory subprocess {mode!r} failed:\n{out.stderr[-2000:]}")
    return json.loads([ln for ln in out.stdout.splitlines() if ln.startswith("{")][-1])


def _large_storages(min_bytes: int) -> dict[int, int]:
    """data_ptr → bytes of every live tensor storage of at least ``min_bytes``."""
    found = {}
    with warnings.catch_warnings():  # isinstance() on deprecated torch objects warns
        warnings.simplefilter("ignore")
        tensors = [o for o in gc.get_objects() if isinstance(o, torch.Tensor)]
    for obj in tensors:
        try:
            st = obj.untyped_storage()
        except (RuntimeError, NotImplementedError):
            continue
        if st.nbytes() >= min_bytes and st.data_ptr():
            found[st.data_ptr()] = st.nbytes()
    del tensors
    return found


def count_chain_state(s: Setup, args, preconditioner: str) -> dict:
    """The tensor storages (≥ 64 KiB) alive at a chain's third step that were not alive
    before ``run_chain``: the chain's own state. w*, the data and the model's own parameters
    (swapped out while the chain runs) exist before and are shared by all chains."""
    _release()
    before = _large_storages(1 << 16)
    seen: dict[int, int] = {}
    calls = [0]
    original = s.problem.batch

    def batch(idx):
        calls[0] += 1
        if calls[0] == 3:  # before the forward: the previous step's activations are freed
            seen.update(_large_storages(1 << 16))
        return original(idx)

    s.problem.batch = batch
    try:
        time_sgld(s, args, preconditioner, 4, seed=3)
    finally:
        del s.problem.batch
    new = {k: v for k, v in seen.items() if k not in before}
    vector = 4 * s.d
    return {
        "vectors": sum(1 for v in new.values() if v == vector),
        "other_bytes": sum(v for v in new.values() if v != vector),
        "w_star_shared": s.w_star.untyped_storage().data_ptr() in before,
    }


def memory_report(s: Setup, args) -> None:
    pb = s.param_bytes
    print(
        f"\n## Memory over parameter bytes ({pb / 2**20:.1f} MiB fp32, d = {s.d}), "
        f"batch {args.batch_size}"
    )
    print(
        "\nCounted state per chain: parameter-sized (d × fp32) storages alive at a step that "
        "run_chain allocated, plus w* (allocated once, shared by all chains):\n"
    )
    print("| preconditioner | chain's own d-vectors | + w* | other new storages | target |")
    print("|---|---:|---:|---:|---|")
    for p in args.preconditioners:
        c = count_chain_state(s, args, p)
        total = c["vectors"] + 1
        ok = "ok" if total <= TARGET_MEMORY else f"ABOVE {TARGET_MEMORY}"
        print(
            f"| {p} | {c['vectors']} ({c['vectors'] * 4 * s.d / pb:.2f}×) | {total:.2f}× "
            f"| {c['other_bytes'] / 2**10:.0f} KiB | <= {TARGET_MEMORY}× {ok} |"
        )
    if args.memory_steps <= 0:
        return
    modes = ["train", *args.preconditioners]
    res = {m: memory_subprocess(args, m) for m in modes}
    print(
        f"\nPeak resident memory added by {args.memory_steps} steps (fresh process each, after "
        "setup and a 2-step warm-up; activations, gradients and sampler state included):\n"
    )
    print("| run | peak RSS added, MiB | / param bytes | (run − train) / param bytes |")
    print("|---|---:|---:|---:|")
    train = res["train"]["added"]
    for m in modes:
        added = res[m]["added"]
        name = "train (SGD)" if m == "train" else f"SGLD {m}"
        diff = "" if m == "train" else f"{(added - train) / pb:+.2f}"
        print(f"| {name} | {added / 2**20:.1f} | {added / pb:.2f} | {diff} |")
    if not all(r["reset"] for r in res.values()):
        print("(VmHWM could not be reset: the peaks include the setup's)")


# --------------------------------------------------------------------------- profiling


def _torch_profile(s: Setup, args) -> None:
    from torch.profiler import ProfilerActivity, profile

    for p in args.preconditioners:
        time_sgld(s, args, p, 50, seed=1)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            time_sgld(s, args, p, args.profile_steps, seed=2)
        print(
            f"\n## torch.profiler, run_chain {p}, {args.profile_steps} steps "
            "(self CPU time, top 25)\n"
        )
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))
    trainer = Trainer(s, args)
    trainer.run(50)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        trainer.run(args.profile_steps)
    print(f"\n## torch.profiler, train step, {args.profile_steps} steps (top 25)\n")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))


def _cprofile(s: Setup, args) -> None:
    for p in args.preconditioners:
        time_sgld(s, args, p, 50, seed=1)
        pr = cProfile.Profile()
        pr.enable()
        time_sgld(s, args, p, args.profile_steps, seed=2)
        pr.disable()
        buf = io.StringIO()
        stats = pstats.Stats(pr, stream=buf).strip_dirs().sort_stats("tottime")
        stats.print_stats(25)
        print(f"\n## cProfile, run_chain {p}, {args.profile_steps} steps (by tottime)\n")
        print(buf.getvalue())


def profile_sgld(s: Setup, args) -> None:
    if args.profile in ("all", "torch"):
        _torch_profile(s, args)
    if args.profile in ("all", "cprofile"):
        _cprofile(s, args)


# --------------------------------------------------------------------------- main


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.memory_child:
        return memory_child(args)
    print(
        f"torch {torch.__version__} | threads {torch.get_num_threads()} "
        f"(interop {torch.get_num_interop_threads()}) | cpu_count {os.cpu_count()} | "
        f"python {platform.python_version()} | {platform.machine()}"
    )
    try:
        load = os.getloadavg()
        print(f"load average before start: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    except OSError:
        pass
    t0 = time.perf_counter()
    s = build(args)
    res = benchmark(s, args)
    print_report(s, args, res)
    if args.model == "lm":
        memory_report(s, args)
    if args.profile:
        profile_sgld(s, args)
    print(f"\ntotal wall time {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
