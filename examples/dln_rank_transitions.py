"""Stage-wise learning of a deep linear network, seen by the LLC.

    python examples/dln_rank_transitions.py                 # 3-7 min on 2 CPU cores
    python examples/dln_rank_transitions.py --quick         # a smoke run (seconds)

A [10, 5, 10] deep linear network starts from a small random initialisation and is trained
with SGD (``transformers.Trainer``) towards a rank-5 teacher with singular values
8, 4, 2, 1, 0.5. From small initialisation gradient descent learns the teacher's modes one at
a time, largest first (saddle-to-saddle dynamics), so the rank of the end-to-end matrix
W_2·W_1 steps up 0 → 1 → ... → 5. A mode of strength s is learned after about
log(s/u₀)/(2·s·lr) steps, and the transition itself takes a fixed fraction of that time, so
the singular values are spaced by factors of 2 (with evenly spaced values such as 10·(1..5)
consecutive transitions overlap) and the training steps are read on a log axis. They are
8…0.5 rather than 80…5 because the largest curvature sets the SGLD step size, and the flat
directions of the unlearned modes then need proportionally more steps to mix (measured at
rank 3: −11% with 80/40/20 and 5,000 steps per chain, +0.3% with 8/4/2).

:class:`hf_llc.LLCCallback` estimates the LLC at log-spaced steps with realizable targets
(``targets="model"``: labels replaced by the network's own outputs, so each checkpoint is a
minimum of the loss whose LLC is measured, as in Furman & Lau, arXiv 2402.03698). At the same
steps the script measures the rank of the end-to-end matrix (singular values above
``--rank-threshold``) and Aoyagi's learning coefficient λ for that rank, which is the LLC of a
two-layer linear network at such a point (reduced-rank regression, Aoyagi & Watanabe 2005).

Outputs in ``--output-dir``: ``llc_history.json`` (the callback's curve),
``rank_transitions.json`` (per step: singular values, rank, λ, λ̂; per plateau: rank, λ, mean
λ̂, relative error) and ``rank_transitions.png`` (λ̂ with ±2 s.e., λ, and the training loss).
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
import torch
from transformers import Trainer, TrainerCallback, TrainingArguments

from hf_llc import (
    DLNConfig,
    DLNModel,
    LLCCallback,
    SamplerConfig,
    dln_learning_coefficient,
)
from hf_llc.plotting import plot_llc_history
from hf_llc.serialization import write_json

WIDTHS = [10, 5, 10]
TEACHER_SINGULAR_VALUES = [8.0, 4.0, 2.0, 1.0, 0.5]


def make_teacher_data(num_samples: int, noise: float, seed: int) -> dict[str, torch.Tensor]:
    """x ~ N(0, I), y = T x + noise·ε with T = U diag(s) Vᵀ of the teacher's singular values."""
    gen = torch.Generator().manual_seed(seed)
    h_in, h_out, r = WIDTHS[0], WIDTHS[-1], len(TEACHER_SINGULAR_VALUES)
    u, _ = torch.linalg.qr(torch.randn(h_out, r, generator=gen))
    v, _ = torch.linalg.qr(torch.randn(h_in, r, generator=gen))
    teacher = u @ torch.diag(torch.tensor(TEACHER_SINGULAR_VALUES)) @ v.T
    x = torch.randn(num_samples, h_in, generator=gen)
    y = x @ teacher.T + noise * torch.randn(num_samples, h_out, generator=gen)
    return {"inputs": x, "labels": y}


class SingularValueRecorder(TrainerCallback):
    """Records the singular values of the end-to-end matrix at the given steps."""

    def __init__(self, steps):
        self.steps = set(steps)
        self.records: dict[int, list[float]] = {}

    def _record(self, state, model):
        if state.global_step in self.steps:
            with torch.no_grad():
                sv = torch.linalg.svdvals(model.end_to_end_matrix().double())
            self.records[state.global_step] = sv.tolist()

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self._record(state, model)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self._record(state, model)


def log_spaced_steps(max_steps: int, per_decade: int) -> list[int]:
    """0, then about ``per_decade`` integer steps per decade up to ``max_steps``."""
    count = int(math.ceil(per_decade * math.log10(max_steps))) + 1
    steps = np.unique(np.round(np.logspace(0, math.log10(max_steps), count)).astype(int))
    return [0, *steps.tolist()]


def plateaus(rows: list[dict], settled_low: float, settled_high: float) -> list[dict]:
    """Group the estimates taken while no mode was mid-transition by the rank at that step.

    A step is *settled* when every singular value σ_i of W_2·W_1 is either below
    ``settled_low`` (an unlearned mode) or above ``settled_high`` × the teacher's i-th value
    (a learned one).
    """
    by_rank: dict[int, list[dict]] = {}
    for row in rows:
        sv = row["singular_values"]
        settled = all(
            s < settled_low or s > settled_high * t
            for s, t in zip(sv, TEACHER_SINGULAR_VALUES + [0.0] * len(sv))
        )
        if settled and row["llc_mean"] is not None:
            by_rank.setdefault(row["rank"], []).append(row)
    out = []
    for rank in sorted(by_rank):
        group = by_rank[rank]
        lam = group[0]["lambda"]
        mean = float(np.mean([g["llc_mean"] for g in group]))
        out.append(
            {
                "rank": rank,
                "lambda": lam,
                "llc_mean": mean,
                "relative_error": (mean - lam) / lam,
                "steps": [g["step"] for g in group],
                "llc_per_step": [g["llc_mean"] for g in group],
            }
        )
    return out


def main(argv=None) -> dict:
    threads = torch.get_num_threads()
    # The network has 100 parameters: per-op threading overhead would dominate every step.
    torch.set_num_threads(1)
    try:
        return run(argv)
    finally:
        torch.set_num_threads(threads)


def run(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output-dir", default="rank_transitions")
    parser.add_argument("--max-steps", type=int, default=1200)
    parser.add_argument("--learning-rate", type=float, default=0.05)
    parser.add_argument("--init-scale", type=float, default=1e-5)
    parser.add_argument("--num-samples", type=int, default=5000)
    parser.add_argument("--estimates-per-decade", type=int, default=12)
    parser.add_argument("--num-chains", type=int, default=4)
    parser.add_argument("--num-burnin", type=int, default=1500)
    parser.add_argument("--num-draws", type=int, default=1500)
    parser.add_argument("--rank-threshold", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="tiny smoke run")
    args = parser.parse_args(argv)
    if args.quick:
        args.max_steps, args.estimates_per_decade = 20, 2
        args.num_burnin, args.num_draws, args.num_chains = 20, 20, 2
        args.num_samples = 500

    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = make_teacher_data(args.num_samples, noise=1.0, seed=args.seed)
    from datasets import Dataset

    dataset = Dataset.from_dict({k: v.numpy() for k, v in data.items()})

    torch.manual_seed(args.seed)
    model = DLNModel(DLNConfig(widths=WIDTHS))
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(args.init_scale)

    steps = log_spaced_steps(args.max_steps, args.estimates_per_decade)
    training_args = TrainingArguments(
        str(out / "trainer"),
        max_steps=args.max_steps,
        per_device_train_batch_size=256,
        learning_rate=args.learning_rate,
        optim="sgd",
        lr_scheduler_type="constant",
        weight_decay=0.0,
        max_grad_norm=0.0,
        logging_steps=5,
        save_strategy="no",
        report_to=[],
        seed=args.seed,
        use_cpu=True,
        disable_tqdm=True,
    )
    trainer = Trainer(model=model, args=training_args, train_dataset=dataset)
    recorder = SingularValueRecorder(steps)
    config = SamplerConfig(
        num_chains=args.num_chains,
        num_burnin=args.num_burnin,
        num_draws=args.num_draws,
        batch_size=500,
        seed=args.seed,
    )
    llc = LLCCallback(
        trainer,
        config=config,
        at_steps=steps,
        on_save=False,
        targets="model",
        dataset_name="dln-teacher",
        write_model_card=False,
    )
    trainer.add_callback(recorder)
    trainer.add_callback(llc)
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start

    rows = []
    for entry in llc.history:
        sv = recorder.records[entry["step"]]
        rank = int(sum(s > args.rank_threshold for s in sv))
        lam = float(dln_learning_coefficient(WIDTHS, rank)[0])
        rows.append({**entry, "singular_values": sv, "rank": rank, "lambda": lam})
    # A learned mode sits within 10% of its teacher value; an unlearned one below 0.01, a
    # quarter of the posterior's width in function space (~1/sqrt(nβ) = 0.04 for n = 5000).
    summary = plateaus(rows, settled_low=0.01, settled_high=0.9)
    losses = [(e["step"], e["loss"]) for e in trainer.state.log_history if "loss" in e]
    report = {
        "widths": WIDTHS,
        "teacher_singular_values": TEACHER_SINGULAR_VALUES,
        "settings": vars(args),
        "sampler": config.to_dict(),
        "seconds": seconds,
        "steps": rows,
        "plateaus": summary,
    }
    write_json(out / "rank_transitions.json", report)
    try:
        plot_llc_history(
            [r for r in rows if r["step"] > 0],
            out / "rank_transitions.png",
            reference=(
                [r["step"] for r in rows if r["step"] > 0],
                [r["lambda"] for r in rows if r["step"] > 0],
                "Aoyagi λ at the measured rank",
            ),
            loss=([s for s, _ in losses], [v for _, v in losses], "training loss"),
            log_steps=True,
            title=f"DLN {WIDTHS}: LLC over training (teacher σ = {TEACHER_SINGULAR_VALUES})",
        )
    except ImportError:
        print("matplotlib not installed: no plot (pip install 'hf-llc[plot]')")

    print(f"trained and estimated in {seconds:.0f} s; plateaus:")
    print("| rank | λ (Aoyagi) | λ̂ (mean over plateau) | rel. err | steps |")
    print("|---|---|---|---|---|")
    for p in summary:
        print(
            f"| {p['rank']} | {p['lambda']:g} | {p['llc_mean']:.2f} | "
            f"{100 * p['relative_error']:+.1f}% | {p['steps'][0]}–{p['steps'][-1]} "
            f"({len(p['steps'])} estimates) |"
        )
    return report


if __name__ == "__main__":
    main()
