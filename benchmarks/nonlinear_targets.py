"""How much the default's target differs from chain to chain on the nonlinear suite.

The default localizes each chain in its own metric M = 1/(nβ·A), A the ``fisher-burnin``
diagonal frozen half-way through that chain's burn-in (see ``SamplerConfig.localizer``). This
script runs the default recipe with 8 chains and ``record_metric=True`` on each case of
``hf-llc validate --suite nonlinear`` (or ``--suite nonlinear-heldout``), at the default
burn-in and at four times it, and at the default ``fisher_damping`` and at 100 times it, and
reports per setting:

- ``sd log M``: the standard deviation across chains of log M, per coordinate; the median over
  coordinates and the largest (1 means one chain's M is typically a factor e ≈ 2.7 off);
- ``tensor sd``: the largest over parameter tensors of the standard deviation across chains of
  the log of the tensor's mean M (a per-tensor scale the chains disagree on);
- the chains' λ̂ (mean ± standard deviation across chains, not the standard error) and their
  curvature step sizes ε (median, and max / min).

Not a test: the numbers go into docs/reference_sampler.md.

    python benchmarks/nonlinear_targets.py [--suite nonlinear] [--seed 0] [--jobs 2]
"""

from __future__ import annotations

import argparse
import json
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np
from _common import cores

SETTINGS = [  # (num_burnin, fisher_damping)
    (2000, 1e-4),
    (8000, 1e-4),
    (2000, 1e-2),
    (8000, 1e-2),
]


def _run(
    case_name: str, seed: int, burnin: int, damping: float, chains: int = 8, draws: int = 3000
) -> dict:
    """One setting on one case: the default recipe (3000 draws) with ``chains`` chains,
    ``burnin`` burn-in steps, ``draws`` draws and δ = ``damping``; returns the table's row."""
    import torch

    torch.set_num_threads(1)
    from hf_llc import SamplerConfig, estimate_llc
    from hf_llc.validation_nonlinear import BUILDERS, _healthy_metrics, per_sample_loss

    model, dataset, _ = BUILDERS[case_name](1000, seed)
    sizes = [p.numel() for p in model.parameters() if p.requires_grad]
    cfg = SamplerConfig(
        num_chains=chains,
        num_burnin=burnin,
        num_draws=draws,
        fisher_damping=damping,
        seed=seed,
        record_metric=True,
    )
    t0 = time.perf_counter()
    result = estimate_llc(model, dataset, cfg, loss_fn=per_sample_loss, progress=False)
    seconds = time.perf_counter() - t0
    # The chains that entered λ̂ (the suite's own selection), their metrics and λ̂.
    metric = np.asarray(_healthy_metrics(result), dtype=np.float64)
    llc = np.asarray(result.llc_per_chain, dtype=np.float64)
    llc = llc[np.isfinite(llc)]
    sd_log_m = np.log(metric).std(axis=0)
    bounds = np.cumsum([0, *sizes])
    tensor_sd = max(
        float(np.log(metric[:, a:b].mean(axis=1)).std()) for a, b in zip(bounds[:-1], bounds[1:])
    )
    eps = np.asarray(result.diagnostics["step_size_per_chain"], dtype=np.float64)
    return {
        "case": case_name,
        "num_burnin": burnin,
        "fisher_damping": damping,
        "healthy_chains": len(llc),
        "sd_log_metric_median": float(np.median(sd_log_m)),
        "sd_log_metric_max": float(sd_log_m.max()),
        "tensor_sd_log_metric_max": tensor_sd,
        "llc_mean": float(llc.mean()),
        "llc_sd_across_chains": float(llc.std(ddof=1)),
        "step_size_median": float(np.median(eps)),
        "step_size_max_over_min": float(eps.max() / eps.min()),
        "seconds": seconds,
    }


def main() -> None:
    from hf_llc.validation_nonlinear import NONLINEAR_SUITES

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", default="nonlinear", choices=sorted(NONLINEAR_SUITES))
    parser.add_argument("--seed", type=int, default=0, help="teacher and sampler seed")
    parser.add_argument("--jobs", type=int, default=cores(), help="worker processes")
    parser.add_argument("--output", help="write the rows as JSON here")
    args = parser.parse_args()
    jobs = [
        (case.name, args.seed, burnin, damping)
        for case in NONLINEAR_SUITES[args.suite]
        for burnin, damping in SETTINGS
    ]
    with ProcessPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        rows = list(pool.map(_run, *zip(*jobs)))
    print(
        "| case | burn-in | δ | sd log M: median / max | tensor sd | λ̂ mean ± sd (chains) "
        "| ε median (max/min) |"
    )
    print("|" + "---|" * 7)
    for r in rows:
        print(
            f"| {r['case']} | {r['num_burnin']} | {r['fisher_damping']:g} "
            f"| {r['sd_log_metric_median']:.2f} / {r['sd_log_metric_max']:.2f} "
            f"| {r['tensor_sd_log_metric_max']:.2f} "
            f"| {r['llc_mean']:.2f} ± {r['llc_sd_across_chains']:.2f} "
            f"| {r['step_size_median']:.3g} ({r['step_size_max_over_min']:.1f}×) |"
        )
    if args.output:
        with open(args.output, "w") as f:
            json.dump({"suite": args.suite, "seed": args.seed, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
