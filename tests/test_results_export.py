"""Result files (format key and version) and the exports to pandas and ArviZ."""

import json
import math
import sys

import numpy as np
import pytest
import torch

from hf_llc import CalibrationResult, LLCResult, SamplerConfig, estimate_llc, make_dln_problem
from hf_llc.diagnostics import ess_bulk, ess_tail, rhat_rank
from hf_llc.serialization import FORMAT_VERSION, check_format, format_header
from hf_llc.validation import run_suite

pd = pytest.importorskip("pandas")
az = pytest.importorskip("arviz")


def ar1_result(chains=4, draws=200, phi=0.5, seed=0, diverged=()) -> LLCResult:
    """A result whose loss draws are AR(1) chains around 1.0 (no sampler involved)."""
    rng = np.random.default_rng(seed)
    x = np.zeros((chains, draws))
    noise = rng.normal(size=(chains, draws))
    for t in range(1, draws):
        x[:, t] = phi * x[:, t - 1] + noise[:, t]
    trace = 1.0 + 0.01 * x
    divergences = []
    for c in diverged:
        trace[c, draws // 2 :] = np.nan
        divergences.append({"chain": c, "step": draws // 2, "message": "diverged"})
    nbeta, init_loss = 50.0, 0.99
    per_chain = [
        float("nan") if c in diverged else nbeta * (trace[c].mean() - init_loss)
        for c in range(chains)
    ]
    good = [v for v in per_chain if math.isfinite(v)]
    std = float(np.std(good, ddof=1)) if len(good) > 1 else float("nan")
    return LLCResult(
        llc_mean=float(np.mean(good)) if good else float("nan"),
        llc_std=std,
        llc_stderr=std / math.sqrt(len(good)) if good else float("nan"),
        llc_per_chain=per_chain,
        loss_trace=trace,
        init_loss=init_loss,
        nbeta=nbeta,
        num_samples=1000,
        num_params=10,
        config={"num_chains": chains, "num_draws": draws, "seed": seed},
        diagnostics={
            "divergences": divergences,
            "retries": [],
            "step_size_per_chain": [1e-3 * (c + 1) for c in range(chains)],
        },
    )


@pytest.fixture(scope="module")
def estimate():
    """A tiny real estimate (no per-sample loss: hf_llc's statistics are of the llc draws)."""
    torch.manual_seed(0)
    model, data, _ = make_dln_problem([3, 2, 3], 0, "origin", num_samples=256, seed=1)
    cfg = SamplerConfig(num_chains=3, num_burnin=20, num_draws=40, batch_size=64)
    return estimate_llc(model, data, cfg, progress=False)


# --------------------------------------------------------------------------- format key


def test_result_json_carries_format_and_round_trips(tmp_path, estimate):
    path = estimate.save(tmp_path / "r.json")
    raw = json.loads(path.read_text())
    assert list(raw)[:2] == ["format", "format_version"]
    assert (raw["format"], raw["format_version"]) == ("hf_llc.llc_result", FORMAT_VERSION)
    back = LLCResult.load(path)
    assert back.llc_per_chain == estimate.llc_per_chain
    assert back.to_dict() == json.loads(json.dumps(estimate.to_dict()))
    assert "format" not in back.diagnostics  # the header is the file's, not a field


def test_old_result_without_format_still_loads(tmp_path):
    data = ar1_result().to_dict()
    del data["format"], data["format_version"]
    (tmp_path / "old.json").write_text(json.dumps(data))
    assert LLCResult.load(tmp_path / "old.json").llc_mean == data["llc_mean"]


def test_wrong_kind_or_newer_version_is_refused(tmp_path):
    cal = CalibrationResult(
        sweep=[{"step_size": 1e-3, "llc": 1.0, "mala_acceptance": 0.95, "checks": "ok"}],
        chosen_step_size=1e-3,
        reason="largest healthy",
        anchor_step_size=2e-3,
        min_acceptance=0.9,
    )
    cal_path = cal.save(tmp_path / "cal.json")
    with pytest.raises(ValueError, match=r"cal\.json.*hf_llc\.calibration_result.*CalibrationRes"):
        LLCResult.load(cal_path)
    assert CalibrationResult.load(cal_path).chosen_step_size == 1e-3

    newer = ar1_result().to_dict() | {"format_version": FORMAT_VERSION + 1}
    (tmp_path / "new.json").write_text(json.dumps(newer))
    with pytest.raises(ValueError, match="newer hf_llc.*upgrade"):
        LLCResult.load(tmp_path / "new.json")
    with pytest.raises(ValueError, match="not 'hf_llc.calibration_result'"):
        CalibrationResult.from_dict(ar1_result().to_dict())


def test_calibration_and_validation_headers():
    assert CalibrationResult.from_dict(
        {"sweep": [], "chosen_step_size": 1e-3, "reason": ""}  # written before the key
    ).to_dict()["format"] == ("hf_llc.calibration_result")
    report = run_suite([], SamplerConfig(num_chains=2))
    assert {k: report[k] for k in ("format", "format_version")} == format_header(
        "validation_report"
    )
    check_format(report, "validation_report")
    with pytest.raises(ValueError, match="unknown result kind"):
        format_header("plot")


# --------------------------------------------------------------------------- pandas


def test_to_pandas_long_format(estimate):
    df = estimate.to_pandas()
    chains, draws = estimate.loss_trace.shape
    assert len(df) == chains * draws
    assert list(df.columns) == ["chain", "draw", "loss", "llc", "step_size", "diverged"]
    assert df.groupby("chain")["draw"].apply(list).tolist() == [list(range(draws))] * chains
    # each chain's mean llc draw is its λ̂_c, and the loss column is the trace itself
    np.testing.assert_allclose(
        df.groupby("chain")["llc"].mean().to_numpy(), estimate.llc_per_chain, rtol=1e-12
    )
    np.testing.assert_array_equal(df["loss"].to_numpy(), estimate.loss_trace.reshape(-1))
    steps = df.groupby("chain")["step_size"].unique().tolist()
    assert [s.tolist() for s in steps] == [[s] for s in estimate.diagnostics["step_size_per_chain"]]
    assert not df["diverged"].any()


def test_to_pandas_marks_diverged_chains():
    df = ar1_result(chains=3, draws=20, diverged=(1,)).to_pandas()
    assert df.loc[df.chain == 1, "diverged"].all() and not df.loc[df.chain != 1, "diverged"].any()
    assert df.loc[(df.chain == 1) & (df.draw >= 10), "loss"].isna().all()


def test_missing_extra_names_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "pandas", None)  # import pandas now raises ImportError
    with pytest.raises(ImportError, match=r"to_pandas\(\) needs pandas.*hf-llc\[pandas\]"):
        ar1_result().to_pandas()
    monkeypatch.setitem(sys.modules, "arviz", None)
    with pytest.raises(ImportError, match=r"hf-llc\[arviz\]"):
        ar1_result().to_inference_data()


# --------------------------------------------------------------------------- arviz


def test_inference_data_groups_and_coords():
    result = ar1_result(chains=4, draws=50, diverged=(2,))
    idata = result.to_inference_data()
    assert set(idata.groups()) == {"posterior", "sample_stats"}
    post = idata.posterior
    assert post["llc"].dims == ("chain", "draw") and post["llc"].shape == (3, 50)
    assert post.chain.values.tolist() == [0, 1, 3]  # hf_llc's chain numbers, diverged left out
    np.testing.assert_array_equal(post["loss"].values, result.loss_trace[[0, 1, 3]])
    np.testing.assert_allclose(
        post["llc"].mean("draw").values, np.array(result.llc_per_chain)[[0, 1, 3]]
    )
    steps = idata.sample_stats["step_size"].values
    assert steps.shape == (3, 50) and steps[:, 0].tolist() == [1e-3, 2e-3, 4e-3]
    assert idata.attrs["inference_library"] == "hf_llc"
    assert idata.attrs["nbeta"] == 50.0
    assert result.to_inference_data(include_diverged=True).posterior.sizes["chain"] == 4


def test_all_chains_diverged_is_refused():
    with pytest.raises(ValueError, match="every chain diverged"):
        ar1_result(chains=2, draws=20, diverged=(0, 1)).to_inference_data()


def test_arviz_statistics_agree_with_hf_llcs_own():
    """Same definitions (Vehtari et al. 2021): ArviZ's R-hat and bulk/tail ESS of the llc
    draws are hf_llc's of the same draws."""
    result = ar1_result(chains=4, draws=200)
    idata = result.to_inference_data()
    draws = result.llc_trace()
    assert float(az.rhat(idata, var_names=["llc"])["llc"]) == pytest.approx(
        rhat_rank(draws), rel=1e-12
    )
    for method, ours in (("bulk", ess_bulk), ("tail", ess_tail)):
        theirs = float(az.ess(idata, var_names=["llc"], method=method)["llc"])
        assert theirs == pytest.approx(ours(draws), rel=1e-12), method


def test_arviz_rhat_of_a_real_estimate_is_the_verdicts(estimate):
    assert estimate.diagnostics["checks"]["trace"] == "loss"  # the llc draws are what it saw
    idata = estimate.to_inference_data()
    rhat = float(az.rhat(idata, var_names=["llc"])["llc"])
    assert rhat == pytest.approx(estimate.diagnostics["rhat_rank"], rel=1e-12)
    assert idata.attrs["hf_llc_rhat_rank"] == estimate.diagnostics["rhat_rank"]
