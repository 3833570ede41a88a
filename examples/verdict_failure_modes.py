"""The failure modes of the README's verdict section, as ``tests/test_verdict.py`` builds them.

Prints each case's summary (and, for the healthy one, the per-chain table): the README shows
this output. ``python examples/verdict_failure_modes.py [healthy offmin fewsteps large nbeta
tiny]`` (all by default; the healthy case runs the defaults at n = 10⁵, about a minute).
"""

import sys

import torch

from hf_llc import SamplerConfig, estimate_llc, make_dln_problem, set_verbosity
from hf_llc.validation import per_sample_loss_fn

set_verbosity("error")  # divergences show in each summary: no log records for them
which = sys.argv[1:] or ["healthy", "offmin", "fewsteps", "large", "nbeta", "tiny"]


def run(title, model, data, cfg, table=False, per_sample=True):
    r = estimate_llc(
        model, data, cfg, loss_fn=per_sample_loss_fn(model) if per_sample else None, progress=False
    )
    print(f"# {title}")
    print(r.summary())
    if table:
        print(r.chain_table())
    print(flush=True)


if "healthy" in which:
    m, d, _ = make_dln_problem([5, 3, 5], 0, "origin", num_samples=100_000)
    run(
        "a deep linear network at the origin, defaults with mala=True: healthy",
        m,
        d,
        SamplerConfig(mala=True),
        table=True,
    )
if "offmin" in which:
    m, d, _ = make_dln_problem([4, 4], construction="full_rank", num_samples=1000, seed=1)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g))
    run(
        "weights moved off the minimum of a linear regression",
        m,
        d,
        SamplerConfig(num_chains=2, num_burnin=50, num_draws=100, batch_size=64),
    )
if "fewsteps" in which:
    m, d, _ = make_dln_problem([8, 8], 8, "full_rank", num_samples=1000, seed=1)
    run(
        "no burn-in and a step 100x too small",
        m,
        d,
        SamplerConfig(
            num_chains=2,
            num_burnin=0,
            num_draws=200,
            batch_size=64,
            step_size=1e-6,
            preconditioner="identity",
        ),
    )
if "large" in which:
    m, d, _ = make_dln_problem([4, 4], construction="full_rank", num_samples=256)
    run(
        "step_size=1.0, far above stability",
        m,
        d,
        SamplerConfig(
            num_chains=2,
            num_burnin=10,
            num_draws=20,
            batch_size=32,
            step_size=1.0,
            preconditioner="identity",
        ),
        per_sample=False,
    )
base = dict(num_chains=2, num_burnin=200, num_draws=200, batch_size=64)
if "nbeta" in which:
    m, d, _ = make_dln_problem([4, 3, 4], 2, "aligned", num_samples=2000, seed=1)
    run(
        "nbeta=1e-12 (the issue's first meaningless setting)",
        m,
        d,
        SamplerConfig(**base, nbeta=1e-12),
    )
if "tiny" in which:
    m, d, _ = make_dln_problem([4, 3, 4], 2, "aligned", num_samples=2000, seed=1)
    run(
        "step_size=1e-30: nothing moves, λ̂ ≈ 0",
        m,
        d,
        SamplerConfig(**base, step_size=1e-30, preconditioner="identity"),
    )
