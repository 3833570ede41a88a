"""The SGLD sampler against exact results on a Gaussian target, and its bookkeeping.

The workhorse is the quadratic model: one parameter vector w ∈ R^k with per-sample loss
ℓ_i(w) = ½‖w − x_i‖², so L_n(w) = ½‖w − x̄‖² + c₀ and the localized tempered posterior is
Gaussian with precision P = nβ + γ and mean μ = (nβ·x̄ + γ·w*)/P. Full-batch SGLD with a fixed
step ε is then an exact Gaussian AR(1) process per coordinate, e = w − μ:

    e' = ρ·e + √ε·ξ,   ρ = 1 − εP/2,   stationary variance σ² = ε/(1 − ρ²) = 1/(P(1 − εP/4)),

(with a diagonal preconditioner A replace ε by εA_j per coordinate). Every statistical tolerance
below is a multiple of a standard error derived from this AR(1) structure, and every run is
seeded, so each test is deterministic; the multiple (4 SE) bounds the chance that a correct
sampler fails on another random stream by ~1e-4 per check.
"""

from __future__ import annotations

import logging
import math
import os
import re

os.environ["HF_HUB_OFFLINE"] = "1"

import numpy as np
import pytest
import torch
from torch import nn

import hf_llc.sampling._ops as ops_mod
import hf_llc.sampling.preconditioners as precond_mod
from hf_llc import SamplerConfig, estimate_llc
from hf_llc.estimator import FlatParameters, ModelLoss, TensorBatches
from hf_llc.sampling import (
    DiagonalPreconditioner,
    FisherPreconditioner,
    RMSPropPreconditioner,
    chain_seed,
    mala_acceptance,
    run_chain,
    sgld_step_,
)

K = 5  # parameters of the quadratic model
N = 16  # samples; every test uses full batches (batch_size = N): no minibatch noise
MU = torch.tensor([0.5, -1.0, 0.25, 1.5, -0.75])


def _data(dtype=torch.float32) -> torch.Tensor:
    # x_i = MU + 0.1·z_i: a small spread keeps c₀ = L_n(x̄) ≈ 0.025, so float32 losses resolve
    # the O(k/nβ) fluctuations that the LLC measures with ~1e-5 relative precision.
    gen = torch.Generator().manual_seed(1234)
    return (MU + 0.1 * torch.randn(N, K, generator=gen)).to(dtype)


X = _data()
XBAR = X.mean(0)


class Quadratic(nn.Module):
    """ℓ_i(w) = ½‖w − x_i‖², returned per sample."""

    def __init__(self, w0: torch.Tensor):
        super().__init__()
        self.w = nn.Parameter(w0.clone())

    def forward(self, x):
        return 0.5 * ((self.w - x) ** 2).sum(-1)


def per_sample(outputs, batch):
    return outputs


class QuadraticProblem:
    """The same loss as a run_chain LossProblem in float64; optionally records every w_t."""

    def __init__(self, record: bool = False):
        self.x = _data(torch.float64)
        self.num_samples = N
        self.record = record
        self.ws: list[torch.Tensor] = []

    def batch(self, indices):
        return self.x[indices]

    def loss(self, w, batch):
        if self.record:
            self.ws.append(w.detach().clone())
        return 0.5 * ((w - batch) ** 2).sum(-1)


def _estimate(model, config, **kw):
    return estimate_llc(model, {"x": X}, config, loss_fn=per_sample, progress=False, **kw)


def _fixed(**kw) -> SamplerConfig:
    """Full-batch, fixed-step, identity-preconditioned SGLD (the exactly solvable sampler)."""
    base = dict(
        preconditioner="identity",
        batch_size=N,
        nbeta=100.0,
        localization=0.0,
        num_chains=1,
        num_burnin=100,
        num_draws=100,
    )
    base.update(kw)
    return SamplerConfig(**base)


def _ar1_var(h: float, P: float) -> float:
    """Stationary variance of unadjusted Langevin on precision P with h = εP (or εA_jP)."""
    return 1.0 / (P * (1.0 - h / 4.0))


def _tau_sq(rho: float) -> float:
    """Integrated autocorrelation time of e_t² for a Gaussian AR(1) (corr of e² is ρ^{2s})."""
    return (1 + rho**2) / (1 - rho**2)


def _expected_llc_and_se(nbeta, P, hs, num_draws_total):
    """E[λ̂] = nβ·Σ_j σ_j²/2 and the standard error of the mean over all draws.

    λ̂ averages nβ·½Σ_j e_j² over the draws; Var(½e_j²) = σ_j⁴/2, inflated by τ²(ρ_j).
    ``P`` is the potential's precision, one number or one per direction.
    """
    mean, var = 0.0, 0.0
    Ps = P if isinstance(P, (list, tuple)) else [P] * len(hs)
    for h, P in zip(hs, Ps):
        s2 = _ar1_var(h, P)
        mean += nbeta * s2 / 2
        var += nbeta**2 * s2**2 / 2 * _tau_sq(1 - h / 2)
    return mean, math.sqrt(var / num_draws_total)


# --------------------------------------------------------------------------------------------
# 1. Gaussian target: the draws' mean, variance and autocorrelation are exact.


def test_gaussian_target_stationary_law_is_exact():
    nbeta, gamma, h = 100.0, 100.0, 0.5
    P = nbeta + gamma
    eps = h / P
    w_star = torch.zeros(K, dtype=torch.float64)  # w* ≠ x̄: the mean is pulled half-way
    cfg = _fixed(step_size=eps, localization=gamma, nbeta=nbeta, num_draws=16_000)
    problem = QuadraticProblem(record=True)
    xbar = problem.x.mean(0)
    init = float(0.5 * ((w_star - problem.x) ** 2).sum(-1).mean())
    out = run_chain(problem, w_star, cfg, 0, nbeta=nbeta, init_loss=init)

    ws = torch.stack(problem.ws)  # w_t at every step, in the order the losses were taken
    assert ws.shape == (cfg.num_steps, K)
    # The trace records L_{B_t}(w_t) at the draws (full batch: L_n(w_t)).
    expect_trace = 0.5 * ((ws[:, None, :] - problem.x) ** 2).sum(-1).mean(1)
    torch.testing.assert_close(out.loss_trace, expect_trace[cfg.num_burnin :], rtol=0, atol=1e-12)

    draws = ws[cfg.num_burnin :].numpy()
    mu = ((nbeta * xbar + gamma * w_star) / P).numpy()
    rho = 1 - h / 2  # 0.75
    s2 = _ar1_var(h, P)  # 1/(P·0.875): 14% above the continuous-time 1/P
    n_draws = draws.shape[0]
    # Burn-in of 100 steps leaves a transient of ρ^100 ≈ 3e-13 of the start offset.
    e = draws - mu

    # Mean: Var(ē_j) = σ²/N·(1+ρ)/(1−ρ) = 7σ²/N per coordinate (AR(1) sum of autocorrelations).
    se_mean = math.sqrt(s2 / n_draws * (1 + rho) / (1 - rho))
    assert np.abs(e.mean(0)).max() <= 4 * se_mean
    assert np.abs(mu - xbar.numpy()).min() > 20 * se_mean  # the check can tell μ from x̄

    # Variance (known mean, pooled over k independent coordinates):
    # Var(s²) = 2σ⁴/(kN)·(1+ρ²)/(1−ρ²), so SE/σ² ≈ 0.0095 and 4 SE ≈ 3.8%,
    # well inside the 14% discretisation factor that the exact formula predicts.
    var_hat = float((e**2).mean())
    se_var = s2 * math.sqrt(2 * _tau_sq(rho) / (K * n_draws))
    assert abs(var_hat - s2) <= 4 * se_var
    assert abs(var_hat - 1 / P) > 8 * se_var  # the continuous-time variance is excluded

    # Lag-1 autocorrelation is ρ = 1 − εP/2: Var(r̂) ≈ (1 − ρ²)/(kN) → SE ≈ 0.0023.
    r1 = float((e[1:] * e[:-1]).sum() / (e[:-1] ** 2).sum())
    assert abs(r1 - rho) <= 4 * math.sqrt((1 - rho**2) / (K * n_draws))


def _lm_autocorrelations(h: float, lags: int) -> np.ndarray:
    """ρ_s of the Leimkuhler–Matthews iteration e' = a·e + (√ε/2)(ξ_t + ξ_{t+1}), a = 1 − h/2,
    on precision P (h = εP), for s = 0..lags: ρ_1 = 1 − h/4 (Cov(e_{t+1}, e_t) = a/P + ε/4),
    then ρ_s = a^{s−1}·ρ_1 (an ARMA(1, 1) process)."""
    a = 1 - h / 2
    return np.array([1.0] + [(1 - h / 4) * a ** (s - 1) for s in range(1, lags + 1)])


@pytest.mark.parametrize("h", [0.5, 1.5])
def test_leimkuhler_matthews_stationary_law_is_exact(h):
    # The same Gaussian target as above, with integrator="leimkuhler-matthews": in a direction
    # of curvature P the iteration is e' = (1 − h/2)·e + (√ε/2)(ξ_t + ξ_{t+1}), whose stationary
    # variance is exactly 1/P for every stable h = εP (Euler–Maruyama: 1/(P(1 − h/4)), 14% and
    # 60% wider at h = 0.5 and 1.5).
    nbeta, gamma = 100.0, 100.0
    P = nbeta + gamma
    w_star = torch.zeros(K, dtype=torch.float64)
    cfg = _fixed(
        step_size=h / P,
        localization=gamma,
        nbeta=nbeta,
        num_draws=16_000,
        integrator="leimkuhler-matthews",
    )
    problem = QuadraticProblem(record=True)
    xbar = problem.x.mean(0)
    init = float(0.5 * ((w_star - problem.x) ** 2).sum(-1).mean())
    run_chain(problem, w_star, cfg, 0, nbeta=nbeta, init_loss=init)
    draws = torch.stack(problem.ws)[cfg.num_burnin :].numpy()
    mu = ((nbeta * xbar + gamma * w_star) / P).numpy()
    e, n_draws = draws - mu, draws.shape[0]
    rho = _lm_autocorrelations(h, 400)  # |a|^400 < 1e-48: the sums below are complete
    s2 = 1 / P

    # Mean: Var(ē_j) = σ²/N·Σ_s ρ_|s| per coordinate.
    se_mean = math.sqrt(s2 / n_draws * (2 * rho.sum() - 1))
    assert np.abs(e.mean(0)).max() <= 4 * se_mean

    # Variance, pooled over the k coordinates: Var(s²) = 2σ⁴/(kN)·Σ_s ρ_|s|² (Gaussian e).
    # SE/σ² ≈ 0.9% (h = 0.5) and 0.5% (h = 1.5), so 4 SE (≤ 3.7%) excludes the Euler values.
    var_hat = float((e**2).mean())
    se_var = s2 * math.sqrt(2 * (2 * (rho**2).sum() - 1) / (K * n_draws))
    assert abs(var_hat - s2) <= 4 * se_var
    assert abs(var_hat - _ar1_var(h, P)) > 8 * se_var  # Euler–Maruyama's law is excluded

    # Lag-1 autocorrelation 1 − h/4; Bartlett's variance of r̂_1 is
    # Σ_s (ρ_{s+1} + ρ_{s−1} − 2ρ_1ρ_s)²/(kN) (s over all integers, ρ_{−s} = ρ_s).
    r = np.concatenate([rho[:0:-1], rho])  # ρ_s for s = −400..400
    terms = r[2:] + r[:-2] - 2 * rho[1] * r[1:-1]
    se_r1 = math.sqrt(float((terms**2).sum()) / (K * n_draws))
    r1 = float((e[1:] * e[:-1]).sum() / (e[:-1] ** 2).sum())
    assert abs(r1 - rho[1]) <= 4 * se_r1


def test_leimkuhler_matthews_llc_has_no_discretisation_factor():
    # At w* = x̄ with γ = 0 the expectation is E[λ̂] = nβ·k·σ²/2 = k/2 exactly with this
    # integrator at h = εnβ = 1 (Euler–Maruyama: (k/2)/(1 − 1/4) = 3.33).
    nbeta, eps, chains, draws = 100.0, 0.01, 2, 6000
    cfg = _fixed(
        step_size=eps,
        nbeta=nbeta,
        num_chains=chains,
        num_draws=draws,
        integrator="leimkuhler-matthews",
    )
    result = _estimate(Quadratic(XBAR), cfg)
    rho = _lm_autocorrelations(eps * nbeta, 400)
    # λ̂ averages nβ·½Σ_j e_j²: Var(½e_j²) = σ⁴/2 with σ² = 1/nβ, times the sum of the
    # autocorrelations of e_j² (ρ_s²): SE/E = sqrt(2·1.9/(k·N)) ≈ 1.1%.
    se = nbeta * math.sqrt(K * (1 / nbeta) ** 2 / 2 * (2 * (rho**2).sum() - 1) / (chains * draws))
    assert abs(result.llc_mean - K / 2) <= 4 * se
    assert abs(result.llc_mean - K / 2 / (1 - eps * nbeta / 4)) > 8 * se


# --------------------------------------------------------------------------------------------
# 2. Localization: E[λ̂] = nβ·k/(2P(1 − εP/4)), P = nβ + γ, at w* = x̄.


@pytest.mark.parametrize("gamma", [0.0, 100.0])
def test_localization_closed_form(gamma):
    # At w* = x̄, L_n(w) − L_n(w*) = ½‖w − x̄‖² and the posterior mean is x̄, so
    # E[λ̂] = nβ·k·σ²/2 = (k/2)·(nβ/P)/(1 − εP/4): 2.857 for γ = 0 (h = 0.5) and
    # 1.667 for γ = nβ (h = 1), against 2.5 and 1.25 without the discretisation factor.
    nbeta, eps = 100.0, 0.005
    P = nbeta + gamma
    chains, draws = 2, 6000
    cfg = _fixed(step_size=eps, localization=gamma, nbeta=nbeta, num_chains=chains, num_draws=draws)
    result = _estimate(Quadratic(XBAR), cfg)
    expected, se = _expected_llc_and_se(nbeta, P, [eps * P] * K, chains * draws)
    # SE/E = sqrt(2τ²/(kN)) = 1.1% (γ = 0, ρ = 0.75) and 0.75% (γ = nβ, ρ = 0.5), so the
    # 4 SE band (≤ 4.4%) excludes both the continuous-time value and the other γ's value.
    assert abs(result.llc_mean - expected) <= 4 * se
    assert abs(result.llc_mean - K / 2 * nbeta / P) > 8 * se
    assert result.llc_per_chain == pytest.approx(
        [nbeta * (row.mean() - result.init_loss) for row in result.loss_trace], rel=1e-12
    )


# --------------------------------------------------------------------------------------------
# 3. A regular model at "curvature" step sizes gives λ ≈ k/2.


def test_regular_model_curvature_identity_is_k_over_2_with_known_bias():
    # Hessian of U is P·I exactly, so power iteration returns P and ε = step_scale/P = 0.3/P
    # at every adaptation; then E[λ̂] = (k/2)·(nβ/P)/(1 − 0.3/4) = 1.081·(k/2)·nβ/P.
    nbeta, gamma = 1000.0, 1.0
    P = nbeta + gamma
    chains, draws = 2, 5000
    cfg = SamplerConfig(
        step_size="curvature",
        preconditioner="identity",
        batch_size=N,
        nbeta=nbeta,
        localization=gamma,
        num_chains=chains,
        num_burnin=200,
        num_draws=draws,
    )
    result = _estimate(Quadratic(XBAR), cfg)
    for eps in result.diagnostics["step_size_per_chain"]:
        assert eps == pytest.approx(0.3 / P, rel=1e-5)
    expected, se = _expected_llc_and_se(nbeta, P, [0.3] * K, chains * draws)
    # ρ = 0.85, τ² = 6.2: SE/E = sqrt(2·6.2/(5·10⁴)) = 1.6%.
    assert abs(result.llc_mean - expected) <= 4 * se
    assert abs(result.llc_mean - K / 2) <= K / 2 * (0.075 / (1 - 0.075) + gamma / P) + 4 * se


@pytest.mark.parametrize("name", ["fisher-burnin", "rmsprop-burnin"])
def test_regular_model_default_preconditioner(monkeypatch, name):
    # The default recipe ("curvature" + "fisher-burnin") and the previous one (RMSProp). The
    # frozen A of each chain is captured, so the exact expectation Σ_j nβ/(2P_j(1 − εA_jP_j/4))
    # is known per chain (the few steps after the freeze during which the variance relaxes to
    # the new A are negligible: ≈ 4 of 5000). P_j = nβ + γ·M_j, with M_j = 1/(nβA_j) for the
    # Fisher diagonal's localizer and M = I for RMSProp's.
    made: list = []
    cls = {"fisher-burnin": FisherPreconditioner, "rmsprop-burnin": RMSPropPreconditioner}[name]

    class Recording(cls):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            made.append(self)

    monkeypatch.setattr(precond_mod, cls.__name__, Recording)
    nbeta, gamma = 1000.0, 1.0
    chains, draws = 2, 5000
    cfg = SamplerConfig(
        batch_size=N,
        nbeta=nbeta,
        localization=gamma,
        num_chains=chains,
        num_burnin=300,
        num_draws=draws,
        preconditioner=name,
        # The recorder patches the sequential chain; batched chains are pinned to it by
        # test_batched_chains_match_sequential_chains (tests/test_batched.py).
        chain_mode="sequential",
    )
    assert cfg.step_size == "curvature"
    assert SamplerConfig().preconditioner == "fisher-burnin"
    result = _estimate(Quadratic(XBAR), cfg)
    assert len(made) == chains and not result.diagnostics["divergences"]

    expected, var, h_max, loc_max = 0.0, 0.0, 0.0, 0.0
    for pre, eps in zip(made, result.diagnostics["step_size_per_chain"]):
        A = pre.A.double().reshape(-1)  # a sequential chain is a stack of one: (1, d)
        M = 1 / (nbeta * A) if name == "fisher-burnin" else torch.ones_like(A)
        Ps = (nbeta + gamma * M).tolist()
        hs = (eps * A * (nbeta + gamma * M)).tolist()
        assert all(0 < h < 2 for h in hs)  # stable and not overdamped
        h_max = max(h_max, *hs)
        loc_max = max(loc_max, float(gamma * M.max()) / nbeta)
        m, se = _expected_llc_and_se(nbeta, Ps, hs, draws)
        expected += m / chains
        var += se**2 / chains**2
    se = math.sqrt(var)
    assert abs(result.llc_mean - expected) <= 4 * se
    # ≈ k/2: within the largest per-direction discretisation inflation plus γM/nβ, plus 4 SE.
    assert abs(result.llc_mean - K / 2) <= K / 2 * (h_max / 4 / (1 - h_max / 4) + loc_max) + (
        4 * se
    )


# --------------------------------------------------------------------------------------------
# 4. Determinism.


def _small_default(**kw) -> SamplerConfig:
    base = dict(batch_size=8, nbeta=200.0, num_chains=4, num_burnin=30, num_draws=40)
    base.update(kw)
    return SamplerConfig(**base)


def _without_timings(result) -> dict:
    out = result.to_dict()
    out.pop("timings")  # wall-clock seconds are the only non-deterministic field
    return out


def test_same_seed_gives_identical_result_and_other_seed_does_not():
    cfg = _small_default()  # minibatches, curvature steps and RMSProp: every random path
    a = _estimate(Quadratic(XBAR), cfg)
    b = _estimate(Quadratic(XBAR), _small_default())
    assert _without_timings(a) == _without_timings(b)
    c = _estimate(Quadratic(XBAR), _small_default(seed=1))
    assert not (c.loss_trace == a.loss_trace).any()
    assert len({tuple(row) for row in a.loss_trace}) == 4  # the chains differ from each other


def test_chain_does_not_depend_on_other_chains():
    # Sequential chains, compared bit for bit; batched chains equal these up to float
    # rounding (tests/test_batched.py).
    cfg4 = _small_default(chain_mode="sequential")
    model = Quadratic(XBAR)
    four = _estimate(model, cfg4)
    one = _estimate(model, _small_default(num_chains=1, chain_mode="sequential"))
    np.testing.assert_array_equal(one.loss_trace[0], four.loss_trace[0])

    # Chain 2 run alone through run_chain on the estimator's own problem.
    flat = FlatParameters(model)
    problem = ModelLoss(model, flat, TensorBatches({"x": X}, torch.device("cpu")), per_sample)
    alone = run_chain(problem, flat.w_star, cfg4, 2, nbeta=four.nbeta, init_loss=four.init_loss)
    np.testing.assert_array_equal(alone.loss_trace.numpy(), four.loss_trace[2])
    np.testing.assert_array_equal(alone.burnin_trace.numpy(), four.diagnostics["burnin_trace"][2])
    assert alone.step_size == four.diagnostics["step_size_per_chain"][2]
    assert chain_seed(0, 2) != chain_seed(0, 3) and chain_seed(0, 2) != chain_seed(1, 2)


def test_seeds_beyond_32_bits_are_distinct():
    assert chain_seed(2**32, 0) != chain_seed(0, 0)


def test_negative_seed_is_rejected():
    with pytest.raises(ValueError, match="seed"):
        SamplerConfig(seed=-1)


# --------------------------------------------------------------------------------------------
# 5. sgld_step_ is the formula.


def _rmsprop_reference(drift: torch.Tensor, eps: float) -> torch.Tensor:
    """pSGLD's A after one update from ∇U = ``drift``, written out directly."""
    root = drift.abs()  # √V with V = drift² (the first update sets V to the squared drift)
    raw = 1 / (root + eps * root.mean())
    return raw / raw.mean()


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-13), (torch.float32, 1e-6)])
@pytest.mark.parametrize("localization", [0.0, 3.0])
@pytest.mark.parametrize(
    "kind", ["identity", "tensor", "diagonal", "rmsprop", "rmsprop-adapt", "rmsprop-frozen"]
)
def test_sgld_step_matches_direct_formula(dtype, tol, localization, kind):
    g = torch.Generator().manual_seed(7)
    w = torch.randn(K, generator=g).to(dtype)
    grad = torch.randn(K, generator=g).to(dtype)
    w_star = torch.randn(K, generator=g).to(dtype)
    eps, nbeta = 0.01, 50.0
    drift = nbeta * grad + localization * (w - w_star)  # ∇U(w)

    precond, adapt = None, False
    A = torch.ones(K, dtype=dtype)
    if kind in ("tensor", "diagonal"):
        A = (torch.rand(K, generator=g) * 2 + 0.1).to(dtype)
        precond = A if kind == "tensor" else DiagonalPreconditioner(A)
    elif kind.startswith("rmsprop"):
        precond = RMSPropPreconditioner(w, decay=0.9, eps=0.1)
        if kind == "rmsprop-adapt":
            adapt = True  # the step itself learns A from this ∇U, then uses it
        else:
            precond.update_(torch.randn(K, generator=g).to(dtype))
            if kind == "rmsprop-frozen":
                precond.freeze()
        A = _rmsprop_reference(drift, 0.1) if adapt else precond.A.clone()

    xi = torch.randn(K, generator=torch.Generator().manual_seed(99), dtype=dtype)
    direct = w - eps / 2 * A * drift + (eps * A).sqrt() * xi

    out = w.clone()
    ptr = out.data_ptr()
    sgld_step_(
        out,
        grad.clone(),
        w_star,
        step_size=eps,
        nbeta=nbeta,
        localization=localization,
        generator=torch.Generator().manual_seed(99),
        precond=precond,
        adapt=adapt,
    )
    assert out.data_ptr() == ptr  # in place
    torch.testing.assert_close(out, direct, rtol=tol, atol=tol)


def test_rmsprop_state_is_one_vector_and_chunked_passes_match_whole_vector_math(monkeypatch):
    # A vector of 2.5 chunks (and, below, a stack of 3 chains) exercises the chunk borders:
    # the chunked A equals the formula evaluated on the whole vector, per chain.
    monkeypatch.setattr(ops_mod, "CHUNK", 1000)
    gen = torch.Generator().manual_seed(0)
    d = 2500
    stack = torch.zeros(3, d, dtype=torch.float64)
    pre = RMSPropPreconditioner(stack, decay=0.8, eps=0.1)
    drifts = [torch.randn(3, d, generator=gen, dtype=torch.float64) for _ in range(3)]
    V = drifts[0] ** 2
    for g in drifts[1:]:
        V = 0.8 * V + 0.2 * g**2
    for g in drifts:
        pre.update_(g)
    torch.testing.assert_close(pre.V, V, rtol=1e-14, atol=0)
    raw = 1 / (V.sqrt() + 0.1 * V.sqrt().mean(dim=1, keepdim=True))
    A = raw / raw.mean(dim=1, keepdim=True)
    torch.testing.assert_close(pre.A, A, rtol=1e-12, atol=0)
    torch.testing.assert_close(pre.row(1).A_sqrt, A[1].sqrt(), rtol=1e-12, atol=0)
    # Parameter-sized state: R = √V only (the rest is two scalars per chain).
    sizes = [t.numel() for t in pre.state_dict().values() if isinstance(t, torch.Tensor)]
    assert sorted(sizes) == [3, 3, 3 * d]
    # Freezing overwrites R with √A in place; A is unchanged by it.
    ptr = pre.R.data_ptr()
    pre.freeze()
    assert pre.R.data_ptr() == ptr and pre.frozen
    torch.testing.assert_close(pre.R, A.sqrt(), rtol=1e-12, atol=0)
    torch.testing.assert_close(pre.A, A, rtol=1e-12, atol=0)
    buf = torch.randn(3, d, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(pre.scale_(buf.clone()), buf * A, rtol=1e-12, atol=0)
    with pytest.raises(RuntimeError, match="frozen"):
        pre.update_(drifts[0])


def test_rmsprop_loads_snapshots_of_the_earlier_state_layout():
    # Snapshots written before the lean layout held V, A and √A; V alone determines A.
    gen = torch.Generator().manual_seed(1)
    drift = torch.randn(40, generator=gen)
    pre = RMSPropPreconditioner(torch.zeros(40), decay=0.9, eps=0.1)
    pre.update_(drift)
    old = {"V": pre.V.clone(), "A": pre.A, "A_sqrt": pre.A_sqrt, "initialised": True}
    fresh = RMSPropPreconditioner(torch.zeros(40), decay=0.9, eps=0.1)
    fresh.load_state_dict(old)
    torch.testing.assert_close(fresh.A, pre.A)
    assert not fresh.frozen


# --------------------------------------------------------------------------------------------
# 6. MALA acceptance.


def test_mala_acceptance_exact_values():
    # (a) A reversible pair with equal potentials: U = P/2‖w‖², w' = −w. Then U(w) = U(w') and
    # the backward residual is exactly minus the forward one, so α = 1 exactly.
    P, eps = 5.0, 0.1
    w = torch.tensor([0.3, -0.2, 0.7], dtype=torch.float64)
    u = lambda v: 0.5 * P * (v**2).sum()  # noqa: E731
    one = mala_acceptance(w, -w, u(w), u(-w), P * w, -P * w, step_size=eps)
    assert float(one) == 1.0

    # (b) For U = ½Σ_j P_j w_j² the ratio has the closed form (any pair w, w', any diagonal A):
    # log α = Σ_j (εA_jP_j²/8)(w_j² − w'_j²)   [from ‖w'−ρw‖² − ‖w−ρw'‖² = (1−ρ²)(‖w'‖²−‖w‖²)].
    g = torch.Generator().manual_seed(3)
    Pj = torch.rand(4, generator=g, dtype=torch.float64) * 4 + 1
    for A in (None, torch.rand(4, generator=g, dtype=torch.float64) + 0.5):
        a = torch.ones(4, dtype=torch.float64) if A is None else A
        for _ in range(20):
            w = torch.randn(4, generator=g, dtype=torch.float64)
            w2 = torch.randn(4, generator=g, dtype=torch.float64)
            U = lambda v: 0.5 * (Pj * v * v).sum()  # noqa: E731
            got = mala_acceptance(w, w2, U(w), U(w2), Pj * w, Pj * w2, step_size=eps, precond=A)
            log_alpha = float((eps * a * Pj**2 / 8 * (w**2 - w2**2)).sum())
            assert float(got) == pytest.approx(math.exp(min(0.0, log_alpha)), rel=1e-12)

    # (c) A flat potential (zero gradients): the proposal is symmetric, α = exp(U − U').
    z = torch.zeros(3, dtype=torch.float64)
    w2 = w[:3] + 0.5
    flat = mala_acceptance(w[:3], w2, torch.tensor(0.0), torch.tensor(1.0), z, z, step_size=eps)
    assert float(flat) == pytest.approx(math.exp(-1.0), rel=1e-15)


def _predicted_acceptance(h: float, P: float, num: int = 400_000, var: float | None = None):
    """E[α] over ULA transitions from the stationary law (variance ``var`` per coordinate;
    ULA's own by default), with log α = (εP²/8)(‖e‖² − ‖e'‖²) (see above)."""
    rng = np.random.default_rng(0)
    eps, rho = h / P, 1 - h / 2
    e = rng.normal(size=(num, K)) * math.sqrt(_ar1_var(h, P) if var is None else var)
    e2 = rho * e + math.sqrt(eps) * rng.normal(size=(num, K))
    alpha = np.minimum(1.0, np.exp(eps * P**2 / 8 * ((e**2).sum(1) - (e2**2).sum(1))))
    return float(alpha.mean()), float(alpha.std() / math.sqrt(num))


def _near_stability_limit(chains: int, draws: int, **kw) -> SamplerConfig:
    """Full-batch fixed-step chains with MALA scores at εP = 3 (nβ = γ = 100, P = 200)."""
    return _fixed(
        step_size=3.0 / 200.0,
        nbeta=100.0,
        localization=100.0,
        num_chains=chains,
        num_burnin=50,
        num_draws=draws,
        mala=True,
        **kw,
    )


def test_mala_acceptance_of_runs():
    nbeta = gamma = 100.0
    P = nbeta + gamma
    model = Quadratic(XBAR)
    # Tiny step (εP = 0.02): predicted E[α] = 0.9994 with sd(α) ≈ 1e-3, so > 0.95 has no slack
    # issue at all.
    tiny = _estimate(
        model, _fixed(step_size=0.02 / P, nbeta=nbeta, localization=gamma, num_draws=300, mala=True)
    )
    assert tiny.diagnostics["mala_acceptance"] > 0.95

    # Near the stability limit (εP = 3 of 4, ρ = −0.5): predicted E[α] ≈ 0.58. α_t depends on
    # (w_t, w_{t+1}); for a Gaussian AR(1) the maximal correlation across a gap of s − 1 steps is
    # |ρ|^{s−1}, so τ ≤ 1 + 2/(1 − |ρ|) = 5 and with Var(α) ≤ ¼ over N = 5000 draws
    # SE ≤ sqrt(5/(4N)) = 0.016.
    chains, draws = 2, 2500
    near = _estimate(model, _near_stability_limit(chains, draws))
    predicted, mc_se = _predicted_acceptance(3.0, P)
    se = math.sqrt(5 / (4 * chains * draws))
    acc = near.diagnostics["mala_acceptance"]
    assert abs(acc - predicted) <= 4 * se + 4 * mc_se
    assert acc < 0.7 < tiny.diagnostics["mala_acceptance"]
    assert len(near.diagnostics["mala_acceptance_per_chain"]) == chains


def test_mala_acceptance_with_leimkuhler_matthews_scores_the_euler_proposal():
    # The recorded α is that of the Euler–Maruyama proposal from w_t with this step's ξ_{t+1}
    # (the move taken reuses ξ_t, so it is no proposal from w_t alone). w_t follows the
    # integrator's exact law N(μ, 1/P), so at εP = 3 the prediction is E[α] over e ~ N(0, 1/P)
    # and e' = (1 − 3/2)·e + √ε·ξ. α_t depends on (e_t, ξ_{t+1}), whose correlation across s
    # steps decays as |1 − h/2|^{s−1} = 0.5^{s−1}: τ ≤ 5 and SE ≤ sqrt(5/(4N)) = 0.016 as above.
    P = 200.0
    chains, draws = 2, 2500
    cfg = _near_stability_limit(chains, draws, integrator="leimkuhler-matthews")
    acc = _estimate(Quadratic(XBAR), cfg).diagnostics["mala_acceptance"]
    predicted, mc_se = _predicted_acceptance(3.0, P, var=1 / P)
    euler_law, _ = _predicted_acceptance(3.0, P)
    se = math.sqrt(5 / (4 * chains * draws))
    assert abs(acc - predicted) <= 4 * se + 4 * mc_se
    # 0.21 here, against 0.58 from Euler–Maruyama's wider law of w_t: the score sees which
    # law the chain is in.
    assert abs(acc - euler_law) > 8 * se


# --------------------------------------------------------------------------------------------
# 7. Preconditioners.


@pytest.mark.parametrize("name,calls", [("rmsprop-burnin", "burnin"), ("rmsprop", "all")])
def test_rmsprop_burnin_freezes_A_during_draws(monkeypatch, name, calls):
    seen: list[tuple[int, torch.Tensor]] = []
    original = RMSPropPreconditioner._finish_update  # the end of every RMSProp update

    def counting(self, *args):
        original(self, *args)
        seen.append((id(self), self.A.clone()))

    monkeypatch.setattr(RMSPropPreconditioner, "_finish_update", counting)
    cfg = _fixed(step_size=0.004, preconditioner=name, num_burnin=25, num_draws=40)
    problem = QuadraticProblem()
    w_star = problem.x.mean(0)
    out = run_chain(problem, w_star, cfg, 0, nbeta=100.0, init_loss=0.0)
    assert not out.diverged
    assert len(seen) == (cfg.num_burnin if calls == "burnin" else cfg.num_steps)
    assert len({i for i, _ in seen}) == 1
    # A moves during burn-in (it is learned), so freezing is not a no-op.
    assert not torch.equal(seen[0][1], seen[-1][1])


def test_rmsprop_A_finite_and_positive_at_an_exact_minimum():
    w = torch.tensor([0.5, -1.0, 2.0, 0.0])
    zero = torch.zeros(4)
    pre = RMSPropPreconditioner(w, decay=0.9, eps=0.1)
    pre.update_(zero)  # ∇U = 0: V ≡ 0
    assert torch.equal(pre.A, torch.ones(4)) and torch.equal(pre.A_sqrt, torch.ones(4))

    # One non-zero coordinate: A_j ∝ 1/(δ·mean√V + √V_j), normalised to mean 1.
    pre = RMSPropPreconditioner(w, decay=0.9, eps=0.1)
    pre.update_(torch.tensor([2.0, 0.0, 0.0, 0.0]))  # ∇U = (2, 0, 0, 0)
    raw = 1 / (0.1 * 0.5 + torch.tensor([2.0, 0.0, 0.0, 0.0]))
    torch.testing.assert_close(pre.A, raw / raw.mean())
    # Then sit at the minimum while V decays into the float32 denormals.
    for _ in range(1200):
        pre.update_(zero)
        assert bool(torch.isfinite(pre.A).all() and (pre.A > 0).all())
        assert float(pre.A.mean()) == pytest.approx(1.0, rel=1e-5)
    # V has reached the smallest float32 denormals (it never rounds all the way to 0), the
    # most extreme relative damping the normalisation has to survive.
    assert 0 < float(pre.V.max()) < 1e-40


def test_user_diagonal_of_ones_equals_identity():
    # float64 run_chain: the two code paths differ only by rounding (≲ 1e-16 per step, damped
    # by ρ = 0.8 per step), so the traces agree to 1e-13, whereas different noise would
    # differ by ~σ² ≈ 0.01.
    cfg = _fixed(step_size=0.004, localization=10.0, num_burnin=20, num_draws=200)
    w_star = QuadraticProblem().x.mean(0)
    ident = run_chain(QuadraticProblem(), w_star, cfg, 0, nbeta=100.0, init_loss=0.0)
    ones = run_chain(
        QuadraticProblem(),
        w_star,
        cfg,
        0,
        nbeta=100.0,
        init_loss=0.0,
        precond_diagonal=torch.ones(K, dtype=torch.float64),
    )
    torch.testing.assert_close(ones.loss_trace, ident.loss_trace, rtol=0, atol=1e-13)

    # Through estimate_llc (float32), as a flat tensor and as a dict: rounding of O(6e-8)
    # per step, damped by 1/(1 − ρ) = 5, moves the loss by ≲ 1e-6; tolerance 1e-5.
    model = Quadratic(XBAR)
    ref = _estimate(model, _fixed(step_size=0.004, localization=10.0, num_draws=200))
    for diag in (torch.ones(K), {"w": torch.ones(K)}):
        got = _estimate(
            model,
            _fixed(step_size=0.004, localization=10.0, num_draws=200, preconditioner=diag),
        )
        np.testing.assert_allclose(got.loss_trace, ref.loss_trace, rtol=0, atol=1e-5)
        assert got.llc_mean == pytest.approx(ref.llc_mean, abs=1e-3)


# --------------------------------------------------------------------------------------------
# 8. Divergence.


def test_all_chains_diverge_gives_nan_and_warns(caplog):
    # εP = 10: ρ = 1 − εP/2 = −4, so |e| grows 4× per step whatever the noise does.
    cfg = _fixed(step_size=0.1, num_chains=3, num_burnin=2, num_draws=100, divergence_retries=0)
    with caplog.at_level(logging.WARNING, logger="hf_llc"):
        result = _estimate(Quadratic(XBAR), cfg)
    assert math.isnan(result.llc_mean)
    assert all(math.isnan(v) for v in result.llc_per_chain)
    assert result.diagnostics["num_chains_used"] == 0
    divs = result.diagnostics["divergences"]
    assert [d["chain"] for d in divs] == [0, 1, 2]
    threshold = cfg.divergence_factor * (abs(result.init_loss) + K / result.nbeta)
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    for d, burn, row in zip(divs, result.diagnostics["burnin_trace"], result.loss_trace):
        step = d["step"]
        assert isinstance(step, int) and 0 < step < cfg.check_every
        assert re.search(rf"diverged at step {step}\b.*step size 0\.1\b", d["message"])
        assert "reduce step_size" in d["message"]
        assert d["message"] in messages
        # `step` is the *first* bad step: everything recorded before it is healthy.
        before = np.concatenate([burn, row[np.isfinite(row)]])
        assert len(before) == step and (before - result.init_loss <= threshold).all()
        assert np.isnan(row[max(0, step - cfg.num_burnin) :]).all()
    assert any("every chain diverged" in m and "reduce step_size" in m for m in messages)


class CliffQuadratic(Quadratic):
    """Quadratic plus (b/4)Σ(w − w*)⁴: beyond |w_j − w*_j| > √(3/b) the step εnβ = 1 overshoots
    more than it contracts and the chain explodes (a genuine, noise-triggered divergence)."""

    def __init__(self, w0, b=25.0):
        super().__init__(w0)
        self.register_buffer("center", w0.clone())
        self.b = b

    def forward(self, x):
        return super().forward(x) + self.b / 4 * ((self.w - self.center) ** 4).sum()


def test_diverged_chains_are_excluded_from_the_mean(caplog):
    # With b = 25 about half of the chains cross the cliff within 120 steps, so 8 chains are
    # mixed with probability ≈ 1 − 2·2⁻⁸; trying seeds 0, 1, 2 makes a fully one-sided outcome
    # (which would not exercise the exclusion) a ~1e-6 event on any random stream.
    model = CliffQuadratic(XBAR)
    for seed in range(3):
        cfg = _fixed(
            step_size=0.01,
            num_chains=8,
            num_burnin=20,
            num_draws=100,
            seed=seed,
            divergence_retries=0,
        )
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="hf_llc"):
            result = _estimate(model, cfg)
        bad = {d["chain"] for d in result.diagnostics["divergences"]}
        if 0 < len(bad) < 8:
            break
    assert 0 < len(bad) < 8, "no seed gave a mixed outcome"
    good = [c for c in range(8) if c not in bad]
    assert result.diagnostics["num_chains_used"] == len(good)
    per_chain = [result.nbeta * (result.loss_trace[c].mean() - result.init_loss) for c in good]
    for c in range(8):
        assert math.isnan(result.llc_per_chain[c]) == (c in bad)
        assert np.isfinite(result.loss_trace[c]).all() == (c not in bad)
    assert result.llc_per_chain[good[0]] == pytest.approx(per_chain[0], rel=1e-12)
    assert result.llc_mean == pytest.approx(float(np.mean(per_chain)), rel=1e-12)
    if len(good) > 1:
        assert result.llc_std == pytest.approx(float(np.std(per_chain, ddof=1)), rel=1e-9)
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert sum("diverged at step" in m for m in messages) == len(bad)
    assert not any("every chain diverged" in m for m in messages)


def test_divergence_retries_halve_the_step(caplog):
    # εP = 10 (ρ = −4) and εP/2 = 5 (ρ = −1.5) both explode; εP/4 = 2.5 (ρ = −0.25) is stable,
    # so with two retries every chain ends healthy at ε/4 and samples the h = 2.5 law:
    # E[λ̂] = (k/2)/(1 − 2.5/4) = 6.67 with SE/E = sqrt(2τ²/(kN)) ≈ 1.1% (τ² = 1.13, N = 4000).
    eps, nbeta = 0.1, 100.0
    chains, draws = 2, 2000
    cfg = _fixed(step_size=eps, num_chains=chains, num_draws=draws, divergence_retries=2)
    with caplog.at_level(logging.WARNING, logger="hf_llc"):
        result = _estimate(Quadratic(XBAR), cfg)
    assert not result.diagnostics["divergences"]
    assert result.diagnostics["step_size_per_chain"] == [pytest.approx(eps / 4)] * chains
    retries = result.diagnostics["retries"]
    got = sorted((r["chain"], r["step_size"]) for r in retries)
    assert [c for c, _ in got] == [0, 0, 1, 1]
    assert [s for _, s in got] == pytest.approx([eps / 2, eps] * chains)
    assert sum("restarted" in r.getMessage() for r in caplog.records) == 2 * chains
    expected, se = _expected_llc_and_se(nbeta, nbeta, [2.5] * K, chains * draws)
    assert abs(result.llc_mean - expected) <= 4 * se


# --------------------------------------------------------------------------------------------
# 9. Burn-in never enters the draws; thinning picks every draw_every-th step.


@pytest.mark.parametrize("fixed_step", [True, False])
def test_draws_are_the_steps_after_burnin_thinned(fixed_step):
    # With the same seed, runs that differ only in num_draws/draw_every take identical steps
    # (same batches, same noise) up to the shorter one's end: compare them step by step.
    extra = (
        dict(step_size=0.004, preconditioner="identity")
        if fixed_step
        else dict(step_size="curvature", preconditioner="rmsprop-burnin")
    )
    b = 20
    common = dict(batch_size=8, nbeta=100.0, num_chains=2, num_burnin=b, **extra)
    model = Quadratic(XBAR)
    every1 = _estimate(model, SamplerConfig(num_draws=60, draw_every=1, **common))
    every3 = _estimate(model, SamplerConfig(num_draws=20, draw_every=3, **common))
    assert every3.loss_trace.shape == (2, 20) and every1.loss_trace.shape == (2, 60)
    np.testing.assert_array_equal(every3.loss_trace, every1.loss_trace[:, ::3])
    for c in range(2):
        assert len(every1.diagnostics["burnin_trace"][c]) == b
        np.testing.assert_array_equal(
            every3.diagnostics["burnin_trace"][c], every1.diagnostics["burnin_trace"][c]
        )
    assert every3.llc_per_chain == pytest.approx(
        [every3.nbeta * (row.mean() - every3.init_loss) for row in every3.loss_trace], rel=1e-12
    )
    if fixed_step:
        # Without burn-in the same steps appear from draw 0: draw t of the burnt-in run is
        # step b + t, never a burn-in step.
        no_burn = _estimate(
            model, SamplerConfig(**{**common, "num_burnin": 0}, num_draws=b + 60, draw_every=1)
        )
        np.testing.assert_array_equal(no_burn.loss_trace[:, b:], every1.loss_trace)
        np.testing.assert_array_equal(
            no_burn.loss_trace[:, :b], np.stack(every1.diagnostics["burnin_trace"])
        )


# --------------------------------------------------------------------------------------------
# Curvature estimate: double backward, and the finite-difference fallback.


class _OnceDifferentiableSquare(torch.autograd.Function):
    """x ↦ x² whose backward cannot itself be differentiated (like some fused kernels)."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return 2 * x * grad


class _DiagonalQuadratic:
    """L(w) = ½·Σ_j h_j·w_j², with or without double-backward support."""

    num_samples = 4

    def __init__(self, h, twice_differentiable):
        self.h = h
        self.twice = twice_differentiable

    def batch(self, indices):
        return None

    def loss(self, w, batch):
        sq = w * w if self.twice else _OnceDifferentiableSquare.apply(w)
        return 0.5 * torch.sum(self.h * sq)


@pytest.mark.parametrize("twice_differentiable", [True, False])
def test_max_curvature_matches_the_largest_hessian_eigenvalue(twice_differentiable):
    from hf_llc.sampling import max_curvature

    h = torch.tensor([0.5, 3.0, 1.0, 2.0], dtype=torch.float64)
    problem = _DiagonalQuadratic(h, twice_differentiable)
    w = torch.tensor([0.3, -0.2, 0.1, 0.4], dtype=torch.float64)
    nbeta, gamma = 10.0, 1.5
    v0 = torch.ones(4, dtype=torch.float64)
    # ∇²U = nβ·diag(h) + γI: largest eigenvalue 10·3 + 1.5 = 31.5. The power iteration's error
    # shrinks like (21.5/31.5)^(2k) for k = 60 iterations (< 1e-19); the finite difference is
    # exact for a quadratic up to rounding.
    lam, _ = max_curvature(
        problem,
        w,
        torch.zeros_like(w),
        None,
        nbeta=nbeta,
        localization=gamma,
        precond_sqrt=None,
        v0=v0,
        iters=60,
    )
    assert lam == pytest.approx(31.5, rel=1e-6)
    # With a preconditioner A the eigenvalue is that of √A(∇²U)√A = diag(A_j(nβh_j + γ)).
    a = torch.tensor([4.0, 0.5, 1.0, 1.0], dtype=torch.float64)
    lam, _ = max_curvature(
        problem,
        w,
        torch.zeros_like(w),
        None,
        nbeta=nbeta,
        localization=gamma,
        precond_sqrt=a.sqrt(),
        v0=v0,
        iters=60,
    )
    assert lam == pytest.approx(max(a * (nbeta * h + gamma)).item(), rel=1e-6)
