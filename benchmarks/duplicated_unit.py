"""Why the default reads high on the duplicated ReLU unit: how far its target reaches.

The nonlinear suite's ``relu_duplicated`` case (teacher seed 0, n = 1000) splits one ReLU unit
of the teacher into two copies with the same incoming weights and 0.3 / 0.7 of its outgoing
weights. This script runs the default recipe there with 16 chains and many more draws than the
default (``--draws``; the burn-in, and so each chain's step size and localizer metric, are the
default's), and prints:

1. λ̂ over consecutive windows of ``--window`` draws (mean over the chains ± its standard
   error): does the estimate still move after the default's 3,000 draws, and towards what?
2. Where the chains put the two copies, against the exact reference (replica exchange, eight
   replicas down to t = 0.02, 1,000 + 4,000 steps, two reference chains for each of the first
   ``--reference-targets`` SGLD chains' targets, as in ``hf-llc validate``): the norm of the
   copies' summed outgoing weights (0.23 at w*), the distance between their incoming weights
   (0 at w*), and the fraction of draws where one copy is dead (its pre-activation negative on
   every one of the 1000 inputs, so that its incoming weights no longer change the function).

The chains' positions are read by wrapping two internal functions (the SGLD loop's divergence
check, which runs every ``check_every`` = 50 steps, and the reference chain's step); they are
not an API, and the estimate is unchanged by it. Not a test: the numbers go into
docs/reference_sampler.md ("The duplicated ReLU unit: a target that reaches far").

    OMP_NUM_THREADS=1 python benchmarks/duplicated_unit.py --draws 100000 \\
        --output docs/fisher_start/duplicated_unit_100k.json

About 12 minutes on one core with the default settings (SGLD 16 × 102,000 steps, reference
8 chains × 8 replicas × 5,000 steps).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections import defaultdict

import numpy as np
import torch

import hf_llc.reference as reference_module
import hf_llc.sampling.loop as loop_module
from hf_llc import SamplerConfig, estimate_llc, reference_llc
from hf_llc.validation_nonlinear import BUILDERS, per_sample_loss

EVERY = 50  # the reference's positions are kept every this many of its steps


def unit_geometry(w: torch.Tensor, x: torch.Tensor) -> tuple[float, float, bool]:
    """(‖a₀ + a₃‖, ‖(w₀, b₀) − (w₃, b₃)‖, one copy dead) of the 4-4-2 student's flat
    parameters ``w`` (fc1.weight, fc1.bias, fc2.weight, fc2.bias), copies 0 and 3."""
    w = w.double()
    w1, b1, w2 = w[:16].reshape(4, 4), w[16:20], w[20:28].reshape(2, 4)
    total = float((w2[:, 0] + w2[:, 3]).norm())
    gap = float(torch.cat([w1[0] - w1[3], (b1[0] - b1[3]).reshape(1)]).norm())
    pre = x.double() @ w1[[0, 3]].T + b1[[0, 3]]
    dead = bool((pre.amax(dim=0) <= 0).any())
    return total, gap, dead


def summarise(rows: list[tuple[float, float, bool]]) -> dict:
    if not rows:
        return {"positions": 0}
    arr = np.array([r[:2] for r in rows], dtype=np.float64)
    dead = np.array([r[2] for r in rows], dtype=bool)
    q = (0.05, 0.5, 0.95)
    return {
        "positions": len(rows),
        "outgoing_norm_quantiles": np.quantile(arr[:, 0], q).round(3).tolist(),
        "incoming_gap_quantiles": np.quantile(arr[:, 1], q).round(3).tolist(),
        "fraction_one_copy_dead": float(dead.mean()),
    }


def sgld_positions(cfg: SamplerConfig, model, data) -> tuple:
    """The SGLD run with every running chain's position kept at each divergence check."""
    kept: dict[tuple[int, int], list] = defaultdict(list)
    check = loop_module._check_divergence

    def keeping(post, stack, threshold, progress):
        for i, chain in enumerate(stack.chains):
            if stack.active[i]:
                kept[(chain, stack.attempt)].append((stack.t, stack.W[i].detach().clone()))
        return check(post, stack, threshold, progress)

    loop_module._check_divergence = keeping
    try:
        result = estimate_llc(model, data, cfg, loss_fn=per_sample_loss, progress=False)
    finally:
        loop_module._check_divergence = check
    last: dict[int, tuple[int, list]] = {}
    for (chain, attempt), rows in kept.items():
        if chain not in last or attempt > last[chain][0]:
            last[chain] = (attempt, rows)
    return result, {c: rows for c, (_, rows) in last.items()}


def reference_positions(model, data, cfg, metric, targets: int, warmup: int, draws: int) -> tuple:
    """The reference on the first ``targets`` SGLD chains' targets, its t = 1 replicas'
    positions kept every ``EVERY`` steps of the draws."""
    kept: list[torch.Tensor] = []
    step = reference_module._Chain.step

    def keeping(self):
        out = step(self)
        if self.target.temperature == 1.0:
            # Counted on the chain itself: an id() could be reused by the next chain's replica.
            self._steps_seen = getattr(self, "_steps_seen", 0) + 1
            if self._steps_seen > warmup and self._steps_seen % EVERY == 0:
                kept.append(self.w.detach().clone())
        return out

    reference_module._Chain.step = keeping
    try:
        ref = reference_llc(
            model,
            data,
            cfg,
            loss_fn=per_sample_loss,
            metric=metric[:targets],
            num_chains=2 * targets,
            num_warmup=warmup,
            num_draws=draws,
            num_temperatures=8,
            min_temperature=0.02,
            seed=cfg.seed,
        )
    finally:
        reference_module._Chain.step = step
    return ref, kept


def windows(result, width: int) -> list[dict]:
    lam = result.llc_trace()
    out = []
    for start in range(0, lam.shape[1], width):
        per_chain = np.nanmean(lam[:, start : start + width], axis=1)
        per_chain = per_chain[np.isfinite(per_chain)]
        out.append(
            {
                "draws": [start, min(start + width, lam.shape[1])],
                "llc": float(per_chain.mean()),
                "stderr": float(per_chain.std(ddof=1) / math.sqrt(len(per_chain))),
                "chains": len(per_chain),
            }
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", type=int, default=100_000, help="SGLD draws per chain")
    parser.add_argument("--window", type=int, default=5000, help="draws per λ̂ window")
    parser.add_argument("--reference-targets", type=int, default=4)
    parser.add_argument("--reference-warmup", type=int, default=1000)
    parser.add_argument("--reference-draws", type=int, default=4000)
    parser.add_argument("--output", help="write the numbers as JSON here")
    args = parser.parse_args()
    model, data, info = BUILDERS["relu_duplicated"](1000, 0)
    cfg = SamplerConfig(num_chains=16, num_draws=args.draws, record_metric=True)
    t0 = time.perf_counter()
    result, positions = sgld_positions(cfg, model, data)
    sgld_seconds = time.perf_counter() - t0
    w_star = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    x = data["x"]
    win = windows(result, args.window)
    print(f"SGLD, 16 chains × ({cfg.num_burnin} + {args.draws}) steps, {sgld_seconds:.0f}s:")
    print("| draws | λ̂ ± se (chains) |\n|---|---|")
    for row in win:
        print(f"| {row['draws'][0]}–{row['draws'][1]} | {row['llc']:.3f} ± {row['stderr']:.3f} |")
    # Positions in the first 3,000 draws (the default's) and in the last window.
    first, last = [], []
    for rows in positions.values():
        for t, w in rows:
            draw = t - cfg.num_burnin
            if 0 < draw <= 3000:
                first.append(unit_geometry(w, x))
            if draw > args.draws - args.window:
                last.append(unit_geometry(w, x))
    # Per chain: the fraction of its draws with one copy dead, beside its λ̂.
    dead_per_chain = {}
    for chain, rows in sorted(positions.items()):
        flags = [unit_geometry(w, x)[2] for t, w in rows if t > cfg.num_burnin]
        dead_per_chain[chain] = float(np.mean(flags)) if flags else float("nan")
    t0 = time.perf_counter()
    ref, ref_positions = reference_positions(
        model,
        data,
        cfg,
        result.localizer_metric,
        args.reference_targets,
        args.reference_warmup,
        args.reference_draws,
    )
    ref_seconds = time.perf_counter() - t0
    report = {
        "case": "relu_duplicated",
        "teacher_seed": 0,
        "config": cfg.to_dict(),
        "w_star": dict(
            zip(("outgoing_norm", "incoming_gap", "one_copy_dead"), unit_geometry(w_star, x))
        ),
        "sgld_llc": result.llc_mean,
        "sgld_stderr": result.llc_stderr,
        "sgld_llc_per_chain": list(result.llc_per_chain),
        "sgld_step_sizes": result.diagnostics.get("step_size_per_chain"),
        "windows": win,
        "sgld_one_copy_dead_per_chain": [dead_per_chain.get(c, float("nan")) for c in range(16)],
        "sgld_first_3000_draws": summarise(first),
        "sgld_last_window": summarise(last),
        "reference_llc": ref.llc_mean,
        "reference_mcse": ref.llc_stderr,
        "reference_rhat": ref.rhat,
        "reference_targets": args.reference_targets,
        "reference_settings": {
            "num_warmup": args.reference_warmup,
            "num_draws": args.reference_draws,
            "num_temperatures": 8,
            "min_temperature": 0.02,
        },
        "sgld_llc_same_targets": float(np.nanmean(result.llc_per_chain[: args.reference_targets])),
        "reference_draws": summarise([unit_geometry(w, x) for w in ref_positions]),
        "sgld_seconds": sgld_seconds,
        "reference_seconds": ref_seconds,
    }
    print(
        f"reference on the targets of chains 0–{args.reference_targets - 1}: "
        f"{ref.llc_mean:.3f} ± {ref.llc_stderr:.3f} (R̂ {ref.rhat:.3f}), {ref_seconds:.0f}s"
    )
    print("| draws | ‖a₀+a₃‖ 5/50/95% | incoming gap 5/50/95% | one copy dead |\n|---|---|---|---|")
    for name in ("sgld_first_3000_draws", "sgld_last_window", "reference_draws"):
        s = report[name]
        if not s["positions"]:
            continue
        print(
            f"| {name} | {s['outgoing_norm_quantiles']} | {s['incoming_gap_quantiles']} "
            f"| {s['fraction_one_copy_dead']:.2f} |"
        )
    llc = np.asarray(result.llc_per_chain, dtype=np.float64)
    dead = np.asarray(report["sgld_one_copy_dead_per_chain"])
    ok = np.isfinite(llc) & np.isfinite(dead)
    print("per chain (λ̂, fraction of draws with one copy dead):")
    print(", ".join(f"({a:.2f}, {b:.2f})" for a, b in zip(llc[ok], dead[ok])))
    print(f"correlation over {ok.sum()} chains: {np.corrcoef(llc[ok], dead[ok])[0, 1]:+.2f}")
    if args.output:
        with open(args.output, "w") as fh:
            json.dump(report, fh, indent=1)
            fh.write("\n")


if __name__ == "__main__":
    main()
