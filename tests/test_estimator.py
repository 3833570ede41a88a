"""estimate_llc: accuracy against exact theory, bad input, weights restored, results on disk."""

from __future__ import annotations

import json
import logging
import math
import os

import pytest
import torch
from torch import nn

from hf_llc import LLCResult, SamplerConfig, estimate_llc, make_dln_problem
from hf_llc.validation import per_sample_loss_fn

os.environ["HF_HUB_OFFLINE"] = "1"

# Short chains for the plumbing tests (accuracy is not their point).
FAST = SamplerConfig(num_chains=2, num_burnin=20, num_draws=30, batch_size=64)


def _small_problem(n=512):
    return make_dln_problem([3, 2, 3], 0, "origin", num_samples=n, seed=1)


def _accuracy_bound(result: LLCResult, lam: float) -> float:
    # Systematic error of the default recipe at n = 1e5 (step discretisation at step_scale 0.3,
    # finite-nβ terms of the multiplicity, mixing): ≤ 7.9% on the 12-case quick suite and
    # ≤ 5.2% on the cases below, so 12% of λ, plus 3 standard errors of the 4-chain mean
    # (seed 0) for the sampling noise.
    return 0.12 * lam + 3 * result.llc_stderr


@pytest.mark.parametrize("a,b", [(4, 3), (2, 6)])
def test_regular_model_gives_half_the_parameter_count(a, b):
    """A single full-rank linear layer is a regular model: λ = ab/2."""
    model, data, lam = make_dln_problem([a, b], construction="full_rank", num_samples=100_000)
    assert lam == a * b / 2
    result = estimate_llc(model, data, progress=False)
    assert abs(result.llc_mean - a * b / 2) <= _accuracy_bound(result, a * b / 2)
    assert result.verdict == "ok", result.verdict_reasons


@pytest.mark.parametrize(
    "widths,rank,construction",
    [([5, 3, 5], 0, "origin"), ([10, 5, 10], 2, "aligned"), ([8, 6, 7], 6, "full_rank")],
)
def test_dln_estimate_matches_aoyagi(widths, rank, construction):
    model, data, lam = make_dln_problem(widths, rank, construction, num_samples=100_000)
    result = estimate_llc(model, data, progress=False)
    assert not result.diagnostics["divergences"]
    assert abs(result.llc_mean - float(lam)) <= _accuracy_bound(result, float(lam))
    assert result.verdict == "ok", result.verdict_reasons


@pytest.mark.slow
def test_quick_suite_meets_the_accuracy_bar():
    """The issue's bar for `hf-llc validate`: median |rel. err| ≤ 10%, max ≤ 25%; and the
    verdict trusts every one of these estimates (each within 8.4% of the exact λ at seed 0)."""
    from hf_llc.validation import QUICK_SUITE, run_suite

    out = run_suite(QUICK_SUITE)
    assert out["summary"]["median_abs_relative_error"] <= 0.10
    assert out["summary"]["max_abs_relative_error"] <= 0.25
    assert out["summary"]["verdicts"] == {"ok": len(QUICK_SUITE)}, [
        (c["widths"], c["construction"], c["verdict_reasons"]) for c in out["cases"]
    ]


@pytest.mark.slow
def test_quick_suite_with_auto_step_size_meets_the_same_bar():
    """step_size="auto" (pilot chains choose a fixed ε) against the defaults' bar above.

    Measured at seed 0 with an earlier default recipe and the grid ε_c·2^k, k = −3…0: median
    4.7%, max 17.6% (7,4,6,5 at the origin reads low: the pilots pick smaller fixed steps
    there, which mix slowly); it passes at the current defaults too (`pytest -m slow`). A grid
    that also tried 2ε_c read up to +22.5%, close to the bar.
    """
    from hf_llc.validation import QUICK_SUITE, run_suite

    out = run_suite(QUICK_SUITE, SamplerConfig(step_size="auto"))
    assert out["summary"]["median_abs_relative_error"] <= 0.10
    assert out["summary"]["max_abs_relative_error"] <= 0.25


def test_result_fields_and_defaults():
    model, data, _ = _small_problem()
    result = estimate_llc(model, data, FAST, loss_fn=per_sample_loss_fn(model), progress=False)
    n = 512
    assert result.num_samples == n
    assert result.nbeta == pytest.approx(n / math.log(n))  # n / log n, never the batch size
    assert result.loss_trace.shape == (2, 30)
    assert len(result.llc_per_chain) == 2
    assert result.num_params == 12
    assert result.init_loss == pytest.approx(0.0, abs=1e-9)
    assert result.llc_paired_mean is not None  # per-sample losses → paired estimator
    assert result.config["num_draws"] == 30
    assert math.isfinite(result.llc_mean) and result.llc_std >= 0


def test_nbeta_override_and_init_loss_subset():
    model, data, _ = _small_problem()
    cfg = SamplerConfig(**{**FAST.to_dict(), "nbeta": 123.0, "init_loss_samples": 100})
    result = estimate_llc(model, data, cfg, loss_fn=per_sample_loss_fn(model), progress=False)
    assert result.nbeta == 123.0
    assert result.llc_paired_mean is None  # the cache needs every sample


def test_save_and_load_round_trip(tmp_path):
    model, data, _ = _small_problem()
    result = estimate_llc(model, data, FAST, progress=False)
    path = result.save(tmp_path / "sub" / "llc.json")
    raw = json.loads(path.read_text())
    assert raw["llc_mean"] == result.llc_mean
    back = LLCResult.load(path)
    assert back.llc_per_chain == result.llc_per_chain
    assert torch.equal(torch.as_tensor(back.loss_trace), torch.as_tensor(result.loss_trace))
    assert back.config == result.config
    assert not (tmp_path / "sub" / "llc.json.tmp").exists()


def _weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_weights_are_exactly_restored_after_the_run():
    model, data, _ = make_dln_problem([4, 3, 4], 2, "aligned", num_samples=256)
    model.train()
    before = _weights(model)
    estimate_llc(model, data, FAST, progress=False)
    after = _weights(model)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert model.training  # the mode is restored too


def test_weights_are_exactly_restored_after_an_error_mid_run():
    model, data, _ = make_dln_problem([4, 3, 4], 2, "aligned", num_samples=256)
    before = _weights(model)
    calls = {"n": 0}

    def flaky_loss(outputs, batch):
        calls["n"] += 1
        if calls["n"] > 40:  # past the L_n(w*) pass, in the middle of a chain
            raise RuntimeError("boom")
        return model.per_sample_loss(outputs.logits, batch["labels"])

    with pytest.raises(RuntimeError, match="boom"):
        estimate_llc(model, data, FAST, loss_fn=flaky_loss, progress=False)
    after = _weights(model)
    assert all(torch.equal(before[k], after[k]) for k in before)


class NoLossModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(2, 1)

    def forward(self, inputs):
        return {"logits": self.lin(inputs)}


def test_model_without_loss_needs_loss_fn():
    data = {"inputs": torch.randn(32, 2), "labels": torch.randn(32, 1)}
    with pytest.raises(ValueError, match="loss_fn"):
        estimate_llc(NoLossModel(), data, FAST.__class__(batch_size=8), progress=False)

    def mse(outputs, batch):
        return ((outputs["logits"] - batch["labels"]) ** 2).sum(-1) / 2

    cfg = SamplerConfig(num_chains=1, num_burnin=5, num_draws=5, batch_size=8)
    result = estimate_llc(NoLossModel(), data, cfg, loss_fn=mse, progress=False)
    assert result.loss_trace.shape == (1, 5)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(step_size=float("nan")), "step_size"),
        (dict(step_size=float("inf")), "step_size"),
        (dict(step_size=-1e-3), "step_size"),
        (dict(step_size="huge"), "step_size"),
        (dict(localization=-1.0), "localization"),
        (dict(localization=float("nan")), "localization"),
        (dict(nbeta=0.0), "nbeta"),
        (dict(num_chains=0), "num_chains"),
        (dict(num_draws=0), "num_draws"),
        (dict(batch_size=0), "batch_size"),
        (dict(preconditioner="adam"), "preconditioner"),
        (dict(integrator="lm"), r"integrator='lm' is not known: use one of \('euler'"),
    ],
)
def test_bad_settings_raise_value_error_naming_the_argument(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SamplerConfig(**kwargs)


def test_empty_dataset_is_rejected():
    model, data, _ = _small_problem()
    with pytest.raises(ValueError, match="empty"):
        estimate_llc(model, data.select([]), FAST, progress=False)


def test_batch_larger_than_dataset_is_rejected():
    model, data, _ = _small_problem(n=50)
    with pytest.raises(ValueError, match="batch_size"):
        estimate_llc(model, data, FAST, progress=False)


def test_non_finite_initial_loss_is_rejected():
    # Finite data (non-finite data is refused earlier, naming the column) but a loss that is
    # not finite at w*.
    data = {"inputs": torch.randn(16, 2), "labels": torch.zeros(16, 1)}

    def mse(outputs, batch):
        return ((outputs["logits"] - batch["labels"]) ** 2).sum(-1) / 0.0

    cfg = SamplerConfig(num_chains=1, num_burnin=1, num_draws=2, batch_size=4)
    with pytest.raises(ValueError, match="not finite"):
        estimate_llc(NoLossModel(), data, cfg, loss_fn=mse, progress=False)


def test_preconditioner_dict_of_ones_equals_identity():
    model, data, _ = _small_problem()
    ones = {k: torch.ones_like(p) for k, p in model.named_parameters()}
    base = dict(FAST.to_dict(), step_size=1e-4)
    a = estimate_llc(
        model, data, SamplerConfig(**{**base, "preconditioner": "identity"}), progress=False
    )
    cfg = SamplerConfig(**base)
    cfg.preconditioner = ones
    b = estimate_llc(model, data, cfg, progress=False)
    assert a.llc_per_chain == pytest.approx(b.llc_per_chain, rel=1e-6)


def test_wrong_preconditioner_size_is_rejected():
    model, data, _ = _small_problem()
    cfg = SamplerConfig(**FAST.to_dict())
    cfg.preconditioner = torch.ones(5)
    with pytest.raises(ValueError, match="preconditioner"):
        estimate_llc(model, data, cfg, progress=False)


def test_divergence_is_reported_not_averaged(caplog):
    model, data, _ = make_dln_problem([4, 4], construction="full_rank", num_samples=256)
    cfg = SamplerConfig(
        num_chains=2,
        num_burnin=10,
        num_draws=20,
        batch_size=32,
        step_size=1.0,
        preconditioner="identity",
    )
    with caplog.at_level(logging.WARNING, logger="hf_llc"):
        result = estimate_llc(model, data, cfg, progress=False)
    assert math.isnan(result.llc_mean)
    assert len(result.diagnostics["divergences"]) == 2
    assert all(
        "step" in d["message"] and "reduce step_size" in d["message"]
        for d in result.diagnostics["divergences"]
    )
    assert any("every chain diverged" in r.getMessage() for r in caplog.records)
