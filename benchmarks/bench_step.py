"""Per-step cost of the SGLD chain step versus a plain training step of the same model.

On a deep linear network (default: widths 50-50-50-50-50, d = 10^4 parameters, full-rank
teacher, n = 10^5 samples) with minibatches of 500, this times, interleaved in one process:

* SGLD: ``hf_llc.sampling.run_chain`` itself, on the problem built exactly as
  ``hf_llc.estimate_llc`` builds it (``TensorBatches`` → ``FlatParameters`` → ``ModelLoss``),
  with a fixed float step size (no curvature estimation), once per preconditioner;
  ms/step = wall time of the whole ``run_chain`` call / number of steps (nothing subtracted).
* train: ``model(inputs=..., labels=...)``, ``loss.backward()``, ``torch.optim.SGD.step()``,
  ``zero_grad(set_to_none=True)``, minibatch indices drawn the same way (a per-epoch
  ``torch.randperm`` from a ``torch.Generator``) into the same pre-collated tensors.

Run ``python benchmarks/bench_step.py --help`` for the options; ``--profile`` adds a breakdown
of where the SGLD step's time goes. See ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import copy
import cProfile
import io
import math
import os
import platform
import pstats
import statistics
import sys
import time
from dataclasses import dataclass, field

import torch
from _common import cores

from hf_llc.estimator import FlatParameters, ModelLoss, TensorBatches, _model_device
from hf_llc.models.dln import make_dln_problem
from hf_llc.sampling import SamplerConfig, run_chain
from hf_llc.sampling.chain import EpochBatcher, chain_generator

TARGET_RATIO = 1.15


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--widths", type=int, nargs="+", default=[50, 50, 50, 50, 50])
    p.add_argument("--num-samples", type=int, default=100_000, help="n, dataset size")
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--steps",
        type=int,
        default=400,
        help="steps per timed measurement (one run_chain call / one training-loop block)",
    )
    p.add_argument(
        "--rounds",
        type=int,
        default=25,
        help="interleaved rounds (many short rounds keep load bursts from favouring one side)",
    )
    p.add_argument("--warmup", type=int, default=200, help="untimed warm-up steps of each")
    p.add_argument("--step-size", type=float, default=1e-6, help="fixed SGLD step size ε")
    p.add_argument(
        "--preconditioners",
        nargs="+",
        default=["identity", "rmsprop-burnin"],
        choices=["identity", "rmsprop", "rmsprop-burnin"],
    )
    p.add_argument(
        "--burnin-fraction",
        type=float,
        default=0.4,
        help="share of the timed steps that are burn-in (the library default is 2000/5000); "
        "only matters for rmsprop-burnin, whose diagonal adapts during burn-in only",
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
    setup_seconds: dict = field(default_factory=dict)


def build(args) -> Setup:
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
        setup_seconds={
            "make_dln_problem": t1 - t0,
            "TensorBatches+FlatParameters+ModelLoss": t2 - t1,
            "init_loss (L_n(w*), once per estimate)": t3 - t2,
        },
    )


def sampler_config(args, preconditioner: str, steps: int, seed: int) -> SamplerConfig:
    burnin = int(round(args.burnin_fraction * steps))
    return SamplerConfig(
        step_size=args.step_size,
        batch_size=args.batch_size,
        num_chains=1,
        num_burnin=burnin,
        num_draws=steps - burnin,
        preconditioner=preconditioner,
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
        self.inputs = s.columns["inputs"]
        self.labels = s.columns["labels"]
        self.batcher = EpochBatcher(s.n, args.batch_size, chain_generator(args.seed, 1))

    def step(self) -> None:
        idx = self.batcher.next()
        # Same gather as the library's TensorBatches, so the ratio measures the sampler alone.
        x, y = self.inputs.index_select(0, idx), self.labels.index_select(0, idx)
        out = self.model(inputs=x, labels=y)
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
    for p in args.preconditioners:
        one = [time_sgld(s, args, p, 1, seed=0) for _ in range(20)]
        fixed[p] = statistics.median(one) - statistics.median(per_step[f"SGLD {p}"])
    return {"per_step": per_step, "fixed": fixed}


def print_report(s: Setup, args, res: dict) -> None:
    per_step = res["per_step"]
    med = {k: statistics.median(v) for k, v in per_step.items()}
    train = med["train"]
    train_rounds = per_step["train"]
    print(
        f"\n## SGLD step vs train step: DLN widths {args.widths} (d = {s.d}), n = {s.n}, "
        f"batch {args.batch_size}"
    )
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
    print("\nOne-off setup (not in the per-step numbers), s:")
    for k, v in s.setup_seconds.items():
        print(f"  {k:<40} {v:.3f}")


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
    if args.profile:
        profile_sgld(s, args)
    print(f"\ntotal wall time {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
