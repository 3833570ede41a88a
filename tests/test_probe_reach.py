"""``probe_reach``: how far from w* the first curvature step size is probed.

The first ε is moved towards c / λ_max at w* + r·√(εA)·ξ. On a quadratic loss the Hessian is
the same everywhere, so the reach cannot matter; at the flat origin of a deep linear network
the curvature grows with the distance from w*, so a longer reach gives a smaller first step,
one that does not throw the chains out to where the loss is too steep for it.
"""

from __future__ import annotations

import math
import os
from dataclasses import replace

import pytest
import torch

from hf_llc import SamplerConfig, estimate_llc, make_dln_problem
from hf_llc.sampling.chain import Schedule, measure_step_size
from hf_llc.sampling.config import LATER_SETTINGS, chain_settings
from hf_llc.sampling.preconditioners import make_preconditioner
from hf_llc.validation import per_sample_loss_fn

os.environ["HF_HUB_OFFLINE"] = "1"


def _first_steps(result) -> list[float]:
    """Each chain's ε at step 0 (the probe's result)."""
    return [history[0][1] for history in result.diagnostics["step_size_history"]]


def _run(widths, construction, rank, cfg, num_samples=100_000):
    model, data, _ = make_dln_problem(widths, rank, construction, num_samples=num_samples, seed=0)
    return estimate_llc(model, data, cfg, loss_fn=per_sample_loss_fn(model), progress=False)


def test_probe_reach_is_validated_and_left_out_of_old_identities():
    with pytest.raises(ValueError, match="probe_reach"):
        SamplerConfig(probe_reach=0)
    with pytest.raises(ValueError, match="probe_reach"):
        SamplerConfig(probe_reach=float("nan"))
    # A run recorded before the setting existed had reach 1: its identity must not change.
    assert LATER_SETTINGS["probe_reach"] == SamplerConfig().probe_reach == 1.0
    assert "probe_reach" not in chain_settings(SamplerConfig().to_dict())
    assert chain_settings(SamplerConfig(probe_reach=2.0).to_dict())["probe_reach"] == 2.0


def test_reach_does_not_change_the_first_step_on_a_quadratic_loss():
    # A full-rank two-layer DLN of widths [3, 3] is one linear layer: its loss is quadratic,
    # with the same Hessian at every probe point, so both reaches agree up to the power
    # iteration's convergence (10 iterations on a 9-dimensional, well-separated spectrum).
    cfg = SamplerConfig(num_chains=2, num_burnin=0, num_draws=1, batch_size=10_000)
    near = _first_steps(_run([3, 3], "full_rank", 3, cfg, num_samples=10_000))
    far = _first_steps(_run([3, 3], "full_rank", 3, replace(cfg, probe_reach=3.0), 10_000))
    assert far == pytest.approx(near, rel=0.02)


def test_a_longer_reach_keeps_chains_at_a_flat_origin_from_diverging():
    # [3, 8, 4] at the origin (λ = 6), the held-out DLN case where three of four chains
    # diverged at twice the default step: the curvature there grows with the distance from
    # w*, so a probe one noise step out sets a first ε that the chains outrun within their
    # first burn-in window (222 steps before ε is measured again), and the divergence check
    # restarts them. Seeded (chain seeds 0-3), so this is one fixed run, not a rate: at
    # reach 1 three of the four chains diverge (steps 71-174); at reach 2 the first ε is
    # smaller for every chain and none diverges.
    cfg = SamplerConfig(
        step_scale=0.6, integrator="leimkuhler-matthews", num_burnin=2000, num_draws=1
    )
    near = _run([3, 8, 4], "origin", 0, cfg)
    far = _run([3, 8, 4], "origin", 0, replace(cfg, probe_reach=2.0))
    assert near.diagnostics["retries"], "reach 1 no longer shows the failure this test guards"
    assert not far.diagnostics["retries"] and not far.diagnostics["divergences"]
    for eps_far, eps_near in zip(_first_steps(far), _first_steps(near)):
        assert eps_far < eps_near


def test_with_a_longer_reach_a_step_measured_afresh_is_probed_too():
    # The origin of a 5-layer DLN of width 50 (d = 10⁴) at reach 2: the first ε is small
    # enough that in the first window (33 steps with num_burnin=300) the chain barely leaves
    # the flat origin, the Fisher diagonal A grows tenfold, and ε, measured afresh at the
    # chain's nearly flat point, was 5211, which diverged on the next step (loss 1.4e10).
    # Probed like the first step it stays small. Seeded; one chain.
    cfg = SamplerConfig(
        step_scale=0.6,
        integrator="leimkuhler-matthews",
        probe_reach=2.0,
        num_chains=1,
        num_burnin=300,
        num_draws=1,
        divergence_retries=0,
    )
    result = _run([50] * 5, "origin", 0, cfg)
    assert not result.diagnostics["divergences"]
    (history,) = result.diagnostics["step_size_history"]
    first, after_refresh = history[0][1], history[1][1]
    assert history[1][0] == 33 and after_refresh < first


class _Barrier:
    """L(w) = ½‖w‖² − 10⁻³·√(r − max|wᵢ|) on every sample: NaN, with its derivatives, for
    max|wᵢ| > r = ``radius``, a loss that overflows a short way from w* = 0, as a model's can
    far out."""

    num_samples = 1

    def __init__(self, radius: float):
        self.radius = radius

    def batch(self, indices):
        return None

    def loss(self, w, batch):
        return 0.5 * w.square().sum() - 1e-3 * torch.sqrt(self.radius - w.abs().max())


def test_a_probe_where_the_loss_is_not_finite_shrinks_the_step_instead_of_making_it_nan():
    # The first step is probed at w* + r·√(εA)·ξ. With nβ = 100 the unbarriered first step is
    # 0.3/101 ≈ 3e-3, whose probes have coordinates up to ~0.1 (√ε times the largest of 64
    # normal draws): beyond a barrier at 0.01 their curvature is NaN, which used to make ε NaN
    # (max(nan, λ) is nan; the chain then diverged "with step size nan"). Now such a probe
    # shrinks ε 4-fold and probes again: the first ε is finite and smaller than without the
    # barrier (seeded probes; measured 1.2e-5 against 3.0e-3, and NaN before the fix).
    cfg = SamplerConfig(preconditioner="identity")
    schedule = Schedule.of(cfg)

    def first_step(radius: float, t: int = 0, at: float = 0.0, current=math.nan) -> float:
        w_star = torch.zeros(64, dtype=torch.float64)
        gen = torch.Generator().manual_seed(0)
        precond = make_preconditioner(cfg, w_star, nbeta=100.0)
        eps, _ = measure_step_size(
            _Barrier(radius),
            torch.full_like(w_star, at),
            w_star,
            None,
            t=t,
            current=current,
            schedule=schedule,
            cfg=cfg,
            step_scale=0.3,
            nbeta=100.0,
            precond=precond,
            gen=gen,
            v=torch.randn(64, generator=gen, dtype=torch.float64),
        )
        return eps

    barred, free = first_step(0.01), first_step(1e6)
    assert math.isfinite(barred) and 0 < barred < free, (barred, free)
    # Later, at a chain point beyond the barrier, a measurement on the burn-in grid shrinks the
    # current step 4-fold instead (the identity preconditioner has no windows or freeze; those
    # steps take the same branch).
    assert schedule.adapt_at
    for t in sorted(schedule.adapt_at):
        assert first_step(0.01, t=t, at=0.02, current=1e-3) == 1e-3 / 4, t
