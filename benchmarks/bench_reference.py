"""The SGLD recipe against the exact reference sampler on small deep linear networks.

For each case (a [3, 2, 3] teacher from ``make_dln_problem``), one process runs
:func:`hf_llc.reference_llc` (full-batch float64 MALA, 4 chains × (1000 warm-up + 4000 draws))
and :func:`hf_llc.estimate_llc` with the default ``SamplerConfig()`` and with
``preconditioner="identity"`` (whose Euclidean localizer is the reference's target exactly),
and prints a Markdown table: Aoyagi's λ, the reference's λ̂ ± MCSE (R̂, acceptance), and each
SGLD λ̂ ± its standard error across chains, with wall times. Not a test: the numbers go into
docs/reference_sampler.md.

    python benchmarks/bench_reference.py [--num-samples 2000] [--seed 0]

``--integrator``, ``--step-scale`` and ``--probe-reach`` set the step of every SGLD recipe
(default: ``SamplerConfig()``'s; the reference is unchanged), e.g. ``--integrator
leimkuhler-matthews --step-scale 0.6 --probe-reach 2`` for the candidate recipe of
docs/reference_sampler.md.

``--sweep`` prints a second table instead, to locate the SGLD recipe's bias on the noise-free
cases: the default recipe at ``step_scale`` c (``--step-scale``, the default's), c/2 and c/4,
each with burn-in and draws scaled by c / step_scale (so every run covers the same span of Langevin
time), and the default recipe with full-batch gradients (``batch_size = n``: no minibatch
noise), each against the reference.
"""

from __future__ import annotations

import argparse
import time

from hf_llc import SamplerConfig, estimate_llc, make_dln_problem, reference_llc
from hf_llc.sampling.config import INTEGRATORS

CASES = [
    # (construction, rank, noise_std, γ)
    ("full_rank", None, 0.0, 1.0),
    ("aligned", 1, 0.0, 1.0),
    ("origin", None, 0.0, 1.0),
    ("origin", None, 0.0, 0.1),
    ("full_rank", None, 1.0, 1.0),
]


def _timed(fn, *args, **kwargs):
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0


#: The sweep's step scales, as fractions of ``--step-scale``.
SCALES = (1.0, 0.5, 0.25)


def _recipe(args, **kw) -> SamplerConfig:
    """The SGLD recipe of ``args`` (integrator, step scale, probe reach) with ``kw`` on top."""
    base = dict(
        integrator=args.integrator, step_scale=args.step_scale, probe_reach=args.probe_reach
    )
    return SamplerConfig(**{**base, **kw})


def sweep(args) -> None:
    """The step-scale and batch-size sweep of the noise-free cases (see the module docstring)."""
    c = args.step_scale
    head = " | ".join(f"step_scale {c * s:g}" for s in SCALES)
    print(f"| teacher | γ | reference λ̂ ± MCSE | {head} | full batch ({c:g}) |")
    print("|---|---|---|" + "---|" * (len(SCALES) + 1))
    base = SamplerConfig()
    for construction, rank, noise, gamma in CASES:
        if noise:
            continue
        model, dataset, _ = make_dln_problem(
            [3, 2, 3], rank, construction, args.num_samples, args.seed, noise_std=noise
        )
        ref = reference_llc(model, dataset, SamplerConfig(localization=gamma), seed=args.seed)
        cells = []
        settings = [
            dict(
                step_scale=c * s,
                num_burnin=round(base.num_burnin / s),
                num_draws=round(base.num_draws / s),
            )
            for s in SCALES
        ]
        settings.append(dict(batch_size=args.num_samples))
        for extra in settings:
            cfg = _recipe(args, localization=gamma, seed=args.seed, **extra)
            r, t = _timed(estimate_llc, model, dataset, cfg, progress=False)
            bias = (r.llc_mean - ref.llc_mean) / ref.llc_mean
            cells.append(f"{r.llc_mean:.3f} ± {r.llc_stderr:.3f} ({bias:+.1%}, {t:.0f} s)")
        name = construction + (f" r={rank}" if rank is not None else "")
        print(
            f"| {name} | {gamma:g} | {ref.llc_mean:.3f} ± {ref.llc_stderr:.3f} | "
            + " | ".join(cells)
            + " |",
            flush=True,
        )


def main() -> None:
    """Run the cases and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-samples", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sweep", action="store_true", help="the step-scale sweep instead")
    parser.add_argument(
        "--integrator",
        choices=INTEGRATORS,
        default=SamplerConfig().integrator,
        help="the SGLD recipes' step (SamplerConfig.integrator); the reference is unchanged",
    )
    parser.add_argument(
        "--step-scale",
        type=float,
        default=SamplerConfig().step_scale,
        help="c of the default recipe's curvature step (the sweep scales from it)",
    )
    parser.add_argument(
        "--probe-reach",
        type=float,
        default=SamplerConfig().probe_reach,
        help="SamplerConfig.probe_reach of every SGLD recipe",
    )
    args = parser.parse_args()
    if args.sweep:
        sweep(args)
        return
    print(
        "| teacher | σ | γ | nβ | λ (Aoyagi) | reference λ̂ ± MCSE | R̂ | acc. | s "
        "| SGLD default ± se | s | SGLD identity ± se | s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for construction, rank, noise, gamma in CASES:
        model, dataset, lam = make_dln_problem(
            [3, 2, 3], rank, construction, args.num_samples, args.seed, noise_std=noise
        )
        ref, t_ref = _timed(
            reference_llc, model, dataset, SamplerConfig(localization=gamma), seed=args.seed
        )
        default, t_def = _timed(
            estimate_llc,
            model,
            dataset,
            _recipe(args, localization=gamma),
            progress=False,
        )
        ident, t_id = _timed(
            estimate_llc,
            model,
            dataset,
            _recipe(args, localization=gamma, preconditioner="identity"),
            progress=False,
        )
        name = construction + (f" r={rank}" if rank is not None else "")
        print(
            f"| {name} | {noise:g} | {gamma:g} | {ref.nbeta:.1f} | {float(lam):g} "
            f"| {ref.llc_mean:.3f} ± {ref.llc_stderr:.3f} | {ref.rhat:.3f} "
            f"| {ref.acceptance_rate:.2f} | {t_ref:.0f} "
            f"| {default.llc_mean:.3f} ± {default.llc_stderr:.3f} | {t_def:.0f} "
            f"| {ident.llc_mean:.3f} ± {ident.llc_stderr:.3f} | {t_id:.0f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
