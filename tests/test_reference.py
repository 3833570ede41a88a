"""The exact reference sampler (hf_llc.reference): an analytic Gaussian target, a deep linear
network against Aoyagi's λ and the SGLD estimator, exactness sanity checks, bad inputs."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from torch import nn

from hf_llc import SamplerConfig, estimate_llc, make_dln_problem
from hf_llc.reference import MAX_PARAMS, ReferenceResult, reference_llc


class LinearRegression(nn.Module):
    """y ≈ X·w with the Gaussian NLL ½‖y − X·w‖² per sample (up to a constant): L_n is exactly
    quadratic in w."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.weight = nn.Parameter(weight.clone())

    def forward(self, inputs, labels):
        residual = labels - inputs @ self.weight
        return {"loss": 0.5 * residual.pow(2)}


def _regression(n=500, p=4, seed=0):
    """Inputs with per-coordinate scales spanning two decades (so H's eigenvalues do too), noisy
    labels, and the model at the least-squares solution rounded to fp32."""
    gen = torch.Generator().manual_seed(seed)
    scales = torch.tensor([0.1, 0.3, 1.0, 2.0])[:p]
    x = (torch.randn(n, p, generator=gen, dtype=torch.float64) * scales).float()
    y = (
        x.double() @ torch.ones(p, dtype=torch.float64)
        + torch.randn(n, generator=gen, dtype=torch.float64)
    ).float()
    w_ls = torch.linalg.lstsq(x.double(), y.double()[:, None]).solution[:, 0]
    return LinearRegression(w_ls.float()), {"inputs": x, "labels": y}


def _analytic_llc(model, data, nbeta, gamma, metric=None):
    """E_p[nβ·(L_n(w) − L_n(w*))] for L_n(w* + δ) − L_n(w*) = gᵀδ + ½δᵀHδ, in float64.

    p(δ) ∝ exp(−nβ(gᵀδ + ½δᵀHδ) − γ/2‖δ‖²) is N(μ, Σ) with Σ = (nβH + γI)⁻¹, μ = −Σ·nβg, so
    the expectation is nβ·(gᵀμ + ½(tr(HΣ) + μᵀHμ)). With g = 0 (w* the exact minimum) it is
    ½ Σ_i nβh_i / (nβh_i + γ); g ≠ 0 here only through w*'s rounding to fp32. A diagonal
    ``metric`` M localizes with (γ/2)δᵀMδ: Σ = (nβH + γ·diag(M))⁻¹ (the second value is then
    not computed)."""
    x, y = data["inputs"].double(), data["labels"].double()
    w = model.weight.detach().double()
    n = len(y)
    h = x.T @ x / n
    g = x.T @ (x @ w - y) / n
    m = torch.ones(len(w), dtype=torch.float64) if metric is None else torch.as_tensor(metric)
    sigma = torch.linalg.inv(nbeta * h + gamma * torch.diag(m.double()))
    mu = -sigma @ (nbeta * g)
    value = nbeta * (g @ mu + 0.5 * (torch.trace(h @ sigma) + mu @ h @ mu))
    eig = torch.linalg.eigvalsh(h)
    no_gradient = 0.5 * float((nbeta * eig / (nbeta * eig + gamma)).sum())
    return float(value), no_gradient


@pytest.fixture(scope="module")
def gaussian():
    model, data = _regression()
    cfg = SamplerConfig(localization=20.0)
    # 4 chains × 2000 draws after 500 warm-up steps, seed 0: an ESS of several hundred, so
    # the Monte Carlo standard error is a few percent of λ̂ and is itself estimated to ~10%.
    result = reference_llc(model, data, cfg, num_chains=4, num_warmup=500, num_draws=2000, seed=0)
    return model, data, cfg, result


def test_gaussian_target_matches_the_analytic_value(gaussian):
    model, data, cfg, result = gaussian
    exact, no_gradient = _analytic_llc(model, data, result.nbeta, cfg.localization)
    # w*'s fp32 rounding barely moves the value: the ½Σ formula holds to 1e-6 relative.
    assert exact == pytest.approx(no_gradient, rel=1e-6)
    # The localization (γ = 20 against nβ·h_i from ~0.8 to ~330) shrinks it well below d/2 = 2,
    # so this checks γ enters as the estimator's (γ/2)‖w − w*‖².
    assert exact < 1.8
    # MH-corrected draws of an exactly Gaussian target: λ̂ − exact is Monte Carlo error only,
    # |z| < 3 with probability 0.997 for a correct sampler (ESS > 200 makes the MCSE reliable).
    assert result.ess > 200
    assert abs(result.llc_mean - exact) < 3 * result.llc_stderr


def test_target_is_the_estimators(gaussian):
    model, data, cfg, result = gaussian
    n = len(data["labels"])
    assert result.nbeta == pytest.approx(n / math.log(n))
    assert result.localization == cfg.localization
    assert (result.num_samples, result.num_params) == (n, 4)
    # L_n(w*) is summed over chunks of the batch size, and an fp32 forward of 50 rows may round
    # differently from one of 500 on some CPUs (the BLAS picks another kernel), so the SGLD run
    # uses the reference's chunk, batch_size = n, for the exact comparison.
    sgld = estimate_llc(
        model,
        data,
        SamplerConfig(localization=20.0, num_chains=1, num_burnin=5, num_draws=10, batch_size=n),
        progress=False,
    )
    assert result.nbeta == sgld.nbeta
    assert result.init_loss_float32 == sgld.init_loss
    # L_n(w*) of the float64 copy equals the estimator's fp32 one to fp32 rounding.
    assert result.init_loss == pytest.approx(sgld.init_loss, rel=1e-6)


def test_exactness_sanity(gaussian):
    _, _, _, result = gaussian
    # Dual averaging aims at 0.574; the averaged ε̄ it ends at accepts somewhat less or more.
    assert 0.35 < result.acceptance_rate < 0.85
    assert all(0.3 < a < 0.9 for a in result.acceptance_per_chain)
    assert result.rhat < 1.05
    assert len(result.loss_trace) == 4 and {len(t) for t in result.loss_trace} == {2000}
    assert all(np.isfinite(result.loss_trace).ravel())
    d = result.to_dict()
    assert d["llc_mean"] == result.llc_mean and isinstance(d["loss_trace"], list)
    assert "λ̂" in result.summary()


def test_a_metric_localizer_matches_the_analytic_value():
    """Each chain samples the target localized in its own row of ``metric``."""
    model, data = _regression()
    cfg = SamplerConfig(localization=20.0)
    # Two rows far apart: the metric weakens the localizer 20-fold on the two stiff
    # coordinates in row 0 and strengthens it 5-fold on the two soft ones in row 1.
    rows = torch.tensor([[1.0, 1.0, 0.05, 0.05], [5.0, 5.0, 1.0, 1.0]], dtype=torch.float64)
    result = reference_llc(
        model, data, cfg, num_chains=4, num_warmup=500, num_draws=2000, seed=0, metric=rows
    )
    assert result.localizer == "metric" and "in the given metric" in result.summary()
    exact = [_analytic_llc(model, data, result.nbeta, 20.0, row)[0] for row in rows]
    euclidean = _analytic_llc(model, data, result.nbeta, 20.0)[0]
    assert min(abs(e - euclidean) for e in exact) > 0.1  # the rows are different targets
    # Chains 0, 2 sample row 0 and chains 1, 3 row 1: λ̂ over all chains estimates the mean of
    # the two exact values. Same Gaussian, chains and draws as the Euclidean test above (ESS
    # of several hundred): |z| < 3 with probability 0.997.
    assert result.ess > 200
    assert abs(result.llc_mean - float(np.mean(exact))) < 3 * result.llc_stderr
    per_row = [np.mean(result.llc_per_chain[r::2]) for r in range(2)]
    assert per_row[0] > per_row[1]  # the weaker localizer gives the larger λ
    # R̂ is within each row's pair of chains: the two targets' different means do not count.
    assert result.rhat < 1.05


@pytest.mark.parametrize("metric", [None, "rows"], ids=["euclidean", "metric"])
def test_hmc_matches_the_analytic_value(metric):
    """HMC samples the same target: the analytic Gaussian value, Euclidean and in two metrics."""
    model, data = _regression()
    rows = torch.tensor([[1.0, 1.0, 0.05, 0.05], [5.0, 5.0, 1.0, 1.0]], dtype=torch.float64)
    rows = rows if metric else None
    result = reference_llc(
        model,
        data,
        SamplerConfig(localization=20.0),
        method="hmc",
        num_leapfrog=8,
        num_chains=4,
        num_warmup=300,
        num_draws=3000,
        seed=0,
        metric=rows,
    )
    assert result.method == "hmc" and result.num_leapfrog == 8
    assert result.target_acceptance == 0.8
    nbeta = result.nbeta
    if rows is None:
        exact = _analytic_llc(model, data, nbeta, 20.0)[0]
    else:
        exact = float(np.mean([_analytic_llc(model, data, nbeta, 20.0, r)[0] for r in rows]))
    # 4 chains × 3000 HMC transitions of up to 8 leapfrog steps on a Gaussian: an ESS of
    # thousands (checked), so the MCSE is reliable and |z| < 3 holds with probability 0.997
    # for a correct sampler. (With 1000 transitions the Euclidean run read z = −3.9 at this
    # seed, its ESS-based MCSE too small; 8 × 10,000 transitions at seed 5 read
    # 1.0228 ± 0.0057 against 1.0242.)
    assert result.ess > 200 and result.rhat < 1.05
    assert abs(result.llc_mean - exact) < 3 * result.llc_stderr


def test_chains_of_different_targets_are_summarised_per_target():
    """Independent draws, the odd chains shifted by 3 (another target): pooled, R̂ sees the
    shift; grouped by target it does not, and the MCSE is that of 8000 draws' mean."""
    from hf_llc.reference import _grouped_statistics, _statistics

    x = np.random.default_rng(0).normal(size=(4, 2000))
    x[1::2] += 3.0
    assert _statistics(x)[3] > 1.5
    mcse, ess, _, rhat = _grouped_statistics(x, 2)
    assert rhat < 1.01
    # White noise: each group's ESS ≈ its 4000 draws (±10%), the mean's se ≈ 1/√8000.
    assert 7000 < ess < 9000
    assert mcse == pytest.approx(1 / math.sqrt(8000), rel=0.1)
    assert math.isnan(_grouped_statistics(x, 4)[3])  # one chain per target: no R̂
    assert _grouped_statistics(x, 1) == _statistics(x)


def test_the_recorded_metric_survives_a_resume(tmp_path):
    """A finished chain's checkpoint keeps its metric: a resumed run reports the same rows."""
    model, data = _regression(n=200)
    cfg = SamplerConfig(
        num_chains=2, num_burnin=40, num_draws=10, batch_size=50, record_metric=True
    )
    first = estimate_llc(model, data, cfg, progress=False, output_dir=tmp_path)
    again = estimate_llc(model, data, cfg, progress=False, output_dir=tmp_path, resume=True)
    assert again.llc_per_chain == first.llc_per_chain
    assert np.array_equal(again.localizer_metric, first.localizer_metric)
    path = first.save(tmp_path / "result.json")
    loaded = type(first).load(path)
    assert np.allclose(loaded.localizer_metric, first.localizer_metric, rtol=1e-7)


def test_the_estimators_metrics_are_recorded_for_the_reference():
    """``record_metric`` keeps each chain's M = 1/(nβ·A), which the reference accepts as is."""
    model, data = _regression(n=200)
    cfg = SamplerConfig(num_chains=2, num_burnin=40, num_draws=10, batch_size=50)
    plain = estimate_llc(model, data, cfg, progress=False)
    kept = estimate_llc(model, data, replace(cfg, record_metric=True), progress=False)
    assert plain.localizer_metric is None
    assert kept.llc_per_chain == plain.llc_per_chain  # a report: the chains are the same
    metric = kept.localizer_metric
    assert metric.shape == (2, 4) and bool((metric > 0).all())
    assert not np.allclose(metric[0], metric[1])  # each chain fixes its own during burn-in
    ref = reference_llc(model, data, num_chains=2, num_warmup=10, num_draws=5, metric=metric)
    assert ref.localizer == "metric"
    euclid = replace(cfg, record_metric=True, localizer="euclidean")
    assert estimate_llc(model, data, euclid, progress=False).localizer_metric is None


def test_record_metric_must_be_a_bool():
    with pytest.raises(ValueError, match="record_metric"):
        SamplerConfig(record_metric="yes")


@pytest.mark.parametrize(
    "metric, match",
    [
        (np.ones(3), "shape"),
        (np.ones((2, 5)), "shape"),
        (np.array([1.0, 1.0, 0.0, 1.0]), "> 0"),
        (np.array([1.0, np.inf, 1.0, 1.0]), "finite"),
        ("diag", "metric"),
    ],
)
def test_bad_metrics_are_refused(metric, match):
    model, data = _regression(n=100)
    with pytest.raises(ValueError, match=match):
        reference_llc(model, data, metric=metric, num_warmup=10, num_draws=1)


def _laplace_llc(model, dataset, nbeta, gamma):
    """(number of non-zero Hessian eigenvalues of L_n at w*, ½ Σ nβh/(nβh + γ) over them):
    the Gaussian (Laplace) value of E_p[nβ·(L_n − L_n(w*))] transverse to the flat directions."""
    x = torch.tensor(dataset["inputs"], dtype=torch.float64)
    y = torch.tensor(dataset["labels"], dtype=torch.float64)
    w1, w2 = (layer.weight.detach().double() for layer in model.layers)
    sizes = (w1.numel(), w2.numel())

    def loss(w):
        a, b = w.split(sizes)
        out = x @ a.view_as(w1).T @ b.view_as(w2).T
        return 0.5 * (out - y).pow(2).sum(-1).mean()

    h = torch.linalg.eigvalsh(
        torch.autograd.functional.hessian(loss, torch.cat([w1.ravel(), w2.ravel()]))
    )
    h = h[h > 1e-6 * h.max()]
    return len(h), 0.5 * float((nbeta * h / (nbeta * h + gamma)).sum())


def test_deep_linear_network_matches_aoyagi():
    """Noise-free [3, 2, 3] teacher at a generic full-rank point (multiplicity 1): the point is
    minimally singular, so λ = (number of curved directions) / 2 and, at finite nβ, E_p is the
    Laplace value λ_quad = ½ Σ nβh/(nβh + γ) up to non-Gaussian terms."""
    model, dataset, lam = make_dln_problem([3, 2, 3], num_samples=2000, seed=0)
    cfg = SamplerConfig()  # nβ = n / log n ≈ 263, γ = 1
    # 4 chains × 2000 draws after 500 warm-up steps, seed 0: ESS ≈ 800, MCSE ≈ 0.07.
    result = reference_llc(model, dataset, cfg, num_chains=4, num_warmup=500, num_draws=2000)
    curved, laplace = _laplace_llc(model, dataset, result.nbeta, cfg.localization)
    assert curved == 2 * lam  # the 4 directions of the GL(2) symmetry are flat
    # The localization shrinks λ_quad below λ by ½ Σ γ/(nβh + γ) < 8 · ½ / (263 · 0.5) ≈ 0.03.
    assert 0 < lam - laplace < 0.05
    # Odd terms of the loss around w* cancel in E_p to first order; the leading non-Gaussian
    # correction is O(1/(nβ·h_min)) per curved direction, ≈ 8 / (263 · 0.5) ≈ 0.06 in all:
    # the allowance 0.1 covers it, the rest is Monte Carlo error (3 MCSE).
    assert result.rhat < 1.05
    assert abs(result.llc_mean - laplace) < 3 * result.llc_stderr + 0.1


def test_float64_and_fixed_step(monkeypatch):
    """The target is evaluated in float64 and ε does not change during the draws."""
    import hf_llc.reference as ref

    model, data = _regression(n=100)
    dtypes, steps = set(), []
    original_call, original_step = ref._Target.__call__, ref._Chain.step

    def call(self, w):
        dtypes.add(w.dtype)
        out = original_call(self, w)
        dtypes.add(out[2].dtype)
        return out

    def step(self):
        steps.append(self.eps)
        return original_step(self)

    monkeypatch.setattr(ref._Target, "__call__", call)
    monkeypatch.setattr(ref._Chain, "step", step)
    result = reference_llc(model, data, num_chains=1, num_warmup=20, num_draws=30)
    assert dtypes == {torch.float64}
    draws = steps[-30:]
    assert set(draws) == {result.step_size_per_chain[0]}
    assert len(set(steps[:-30])) > 1  # adapted during the warm-up
    assert model.weight.dtype == torch.float32  # the user's model is untouched


def test_reproducible_with_the_same_seed():
    model, data = _regression(n=100)
    kw = dict(num_chains=2, num_warmup=20, num_draws=20)
    a = reference_llc(model, data, seed=3, **kw)
    b = reference_llc(model, data, seed=3, **kw)
    c = reference_llc(model, data, seed=4, **kw)
    assert a.loss_trace == b.loss_trace and a.step_size_per_chain == b.step_size_per_chain
    assert a.loss_trace != c.loss_trace
    assert isinstance(a, ReferenceResult)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(method="nuts"), "method"),
        (dict(method="hmc", num_leapfrog=0), "num_leapfrog"),
        (dict(num_chains=0), "num_chains"),
        (dict(num_warmup=5), "num_warmup"),
        (dict(num_draws=0), "num_draws"),
        (dict(target_acceptance=1.0), "target_acceptance"),
        (dict(seed=-1), "seed"),
        (dict(step_size=-0.1), "step_size"),
        (dict(chunk_size=0), "chunk_size"),
        (dict(output_dir="x"), "output_dir"),
        (dict(config=SamplerConfig(init_loss_samples=10)), "init_loss_samples"),
        (dict(config="fast"), "config"),
    ],
)
def test_bad_settings_are_refused(kwargs, name):
    model, data = _regression(n=100)
    with pytest.raises(ValueError, match=name):
        reference_llc(model, data, **kwargs)


def test_too_big_models_and_data_are_refused():
    big = nn.Module()
    big.weight = nn.Parameter(torch.zeros(MAX_PARAMS + 1))
    big.forward = lambda inputs, labels: {"loss": (inputs.sum(-1) * 0 + big.weight.sum()) ** 2}
    data = {"inputs": torch.randn(4, 2), "labels": torch.randn(4)}
    with pytest.raises(ValueError, match="model"):
        reference_llc(big, data)
    # d = MAX_PARAMS is allowed, but with n = 2001 rows n·d passes MAX_SIZE = 2e8.
    wide = nn.Module()
    wide.weight = nn.Parameter(torch.zeros(MAX_PARAMS))
    wide.forward = lambda inputs, labels: {"loss": (inputs[:, 0] - wide.weight.sum()) ** 2}
    rows = {"inputs": torch.zeros(2001, 1), "labels": torch.zeros(2001)}
    with pytest.raises(ValueError, match="n·d"):
        reference_llc(wide, rows)


def test_a_loss_cast_to_float32_is_refused():
    model, data = _regression(n=100)
    with pytest.raises(ValueError, match="float64"):
        reference_llc(
            model, data, loss_fn=lambda out, batch: out["loss"].float(), num_warmup=10, num_draws=1
        )
