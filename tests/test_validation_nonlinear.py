"""The nonlinear validation suite: case structure, w* a minimum, one case end to end with
tiny settings, the table, and ``hf-llc validate --suite nonlinear``."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
import torch

from hf_llc.cli import main
from hf_llc.sampling import SamplerConfig
from hf_llc.validation_nonlinear import (
    BUILDERS,
    HELDOUT_NONLINEAR_SUITE,
    NONLINEAR_SUITE,
    format_nonlinear_summary,
    format_nonlinear_table,
    loss_and_grad_norm,
    run_nonlinear_case,
    summarise_nonlinear,
)

TINY = SamplerConfig(num_chains=2, num_burnin=20, num_draws=30, batch_size=64)
TINY_REF = {"num_chains": 2, "num_warmup": 20, "num_draws": 30}


@pytest.mark.parametrize("case", NONLINEAR_SUITE + HELDOUT_NONLINEAR_SUITE, ids=lambda c: c.name)
def test_each_case_sits_at_a_minimum(case):
    model, dataset, info = BUILDERS[case.name](case.num_samples, 0)
    loss, grad = loss_and_grad_norm(model, dataset)
    assert 20 <= sum(p.numel() for p in model.parameters()) <= 300
    assert len(dataset["x"]) == len(dataset["y"]) == case.num_samples
    if case.name == "relu_trained":
        # Noisy labels (σ = 0.1, one output): L_n ≈ ½·0.01 at a fitted minimum.
        assert 0.002 < loss < 0.01
        assert grad < 1e-3
        assert info["train_grad_norm"] == pytest.approx(grad)
    elif case.name == "tanh_trained":
        # Noisy labels (σ = 0.1, two outputs): L_n ≈ ½·2·0.01 at a fitted minimum; the
        # gradient is what L-BFGS left plus the float32 rounding of w*.
        assert 0.005 < loss < 0.02
        assert grad < 1e-3
        assert info["train_grad_norm"] == pytest.approx(grad)
    else:
        # Noise-free realizable teachers: w* is an exact global minimum (float32 rounding).
        assert loss < 1e-10
        assert grad < 1e-6


def test_singular_structure():
    model, _, info = BUILDERS["tanh_zero_out"](100, 1)
    unit = info["zero_outgoing_unit"]
    assert torch.all(model.fc2.weight[:, unit] == 0)
    assert torch.any(model.fc1.weight[unit] != 0)

    model, _, info = BUILDERS["relu_duplicated"](100, 1)
    a, b = info["duplicated_units"]
    assert torch.equal(model.fc1.weight[a], model.fc1.weight[b])
    assert model.fc1.bias[a] == model.fc1.bias[b]
    total = model.fc2.weight[:, a] + model.fc2.weight[:, b]
    torch.testing.assert_close(total, torch.tensor(info["teacher_outgoing"]))
    assert torch.all(model.fc2.weight[:, a] != 0) and torch.all(model.fc2.weight[:, b] != 0)


def test_heldout_singular_structure():
    model, _, info = BUILDERS["silu_zero_in"](100, 1)
    unit = info["zero_incoming_unit"]
    assert torch.all(model.fc1.weight[unit] == 0) and model.fc1.bias[unit] == 0
    assert torch.all(model.fc2.weight[:, unit] != 0)  # unidentified: silu(0) = 0

    model, _, info = BUILDERS["softplus_duplicated"](100, 1)
    a, b = info["duplicated_units"]
    assert torch.equal(model.fc1.weight[a], model.fc1.weight[b])
    assert torch.equal(model.fc2.weight[:, a], model.fc2.weight[:, b])
    assert {c.name for c in HELDOUT_NONLINEAR_SUITE}.isdisjoint(c.name for c in NONLINEAR_SUITE)


def test_run_one_case_with_tiny_settings():
    case = next(c for c in NONLINEAR_SUITE if c.name == "gelu_minimal")
    r = run_nonlinear_case(case, TINY, seed=0, num_samples=200, reference_kwargs=TINY_REF)
    assert r["num_samples"] == 200 and r["num_params"] == 30
    assert r["nbeta"] == r["nbeta_sgld"] == pytest.approx(200 / math.log(200))
    # The same w* and data: the estimator's L_n(w*) and the reference's agree (fp32 vs fp64).
    assert r["sgld_init_loss"] == pytest.approx(r["reference_init_loss"], abs=1e-6)
    for key in ("reference_llc", "reference_mcse", "llc_mean", "llc_stderr", "z"):
        assert math.isfinite(r[key]), key
    assert r["reference_settings"] == {"num_warmup": 20, "num_draws": 30, "seed": 0} | {
        "num_chains": 2
    }
    assert r["verdict"] in ("ok", "warning", "fail")
    # SGLD's own mixing numbers are kept; MALA acceptance only when the recipe asks for it.
    assert {"rhat_rank", "ess_bulk"} <= set(r) and r["mala_acceptance"] is None
    # The default's localizer is the chains' metric: the reference samples those targets.
    assert r["reference_localizer"] == "metric"
    json.dumps(r)  # JSON-ready
    table = format_nonlinear_table([r])
    assert "| gelu_minimal | 30 | 200 |" in table
    assert table.count("\n") == 2 + (2 + len(r["verdict_reasons"]) if r["verdict_reasons"] else 0)
    # As if the (tiny) reference had converged: the summary counts only such cases.
    summary = summarise_nonlinear([{**r, "reference_rhat": 1.0}], TINY, 1.0)
    assert summary["max_abs_relative_difference"] == pytest.approx(abs(r["relative_difference"]))
    assert "targets" in format_nonlinear_summary(summary)


def test_the_reference_samples_each_sgld_chains_own_target(monkeypatch):
    """Reference chain c is localized in SGLD chain c's metric; a Euclidean recipe gets a
    Euclidean reference; the reference runs two chains per SGLD chain unless told otherwise."""
    import hf_llc.validation_nonlinear as vn

    seen = {}
    original_estimate, original_reference = vn.estimate_llc, vn.reference_llc

    def estimate(*args, **kwargs):
        seen["sgld"] = original_estimate(*args, **kwargs)
        return seen["sgld"]

    def reference(*args, **kwargs):
        seen["metric"], seen["chains"] = kwargs["metric"], kwargs["num_chains"]
        return original_reference(*args, **kwargs)

    monkeypatch.setattr(vn, "estimate_llc", estimate)
    monkeypatch.setattr(vn, "reference_llc", reference)
    case = next(c for c in NONLINEAR_SUITE if c.name == "tanh_zero_out")
    ref = {"num_warmup": 10, "num_draws": 10}
    r = run_nonlinear_case(case, TINY, seed=0, num_samples=200, reference_kwargs=ref)
    assert (seen["metric"] == seen["sgld"].localizer_metric).all()  # every chain healthy
    assert seen["metric"].shape == (TINY.num_chains, r["num_params"])
    assert seen["chains"] == 2 * TINY.num_chains
    # Reference chain c samples SGLD chain c mod 2's target: per-chain values for both.
    assert len(r["reference_llc_per_chain"]) == 2 * len(r["llc_per_chain"])
    euclid = replace(TINY, localizer="euclidean")
    r = run_nonlinear_case(case, euclid, seed=0, num_samples=200, reference_kwargs=ref)
    assert seen["metric"] is None and r["reference_localizer"] == "euclidean"


def test_a_diverged_chains_target_is_left_out_of_the_reference():
    """λ̂ leaves out a chain that diverged on every attempt (λ̂_c = NaN): so does the
    reference, which samples the targets of the chains that entered λ̂."""
    from types import SimpleNamespace

    from hf_llc.validation_nonlinear import _healthy_metrics

    metric = torch.arange(12.0).reshape(3, 4).numpy() + 1
    sgld = SimpleNamespace(localizer_metric=metric, llc_per_chain=[1.0, float("nan"), 2.0])
    assert (_healthy_metrics(sgld) == metric[[0, 2]]).all()
    assert _healthy_metrics(SimpleNamespace(localizer_metric=None, llc_per_chain=[1.0])) is None


def test_summary_against_targets():
    rows = [
        {"case": f"c{i}", "relative_difference": d, "verdict": "ok", "reference_rhat": 1.01}
        for i, d in enumerate((0.01, -0.04, 0.06))
    ]
    s = summarise_nonlinear(rows, SamplerConfig(), 0.0)
    assert s["median_abs_relative_difference"] == pytest.approx(0.04)
    assert s["meets_targets"] and s["unconverged_reference"] == []
    # A case whose reference did not converge is no ground truth: left out, and said so.
    unconverged = {"case": "late", "relative_difference": 0.6, "reference_rhat": 1.2}
    s = summarise_nonlinear([*rows, unconverged], SamplerConfig(), 0.0)
    assert s["unconverged_reference"] == ["late"]
    # The converged cases are within the targets, but the suite is not passed without "late".
    assert s["meets_targets"] is None
    line = format_nonlinear_summary(s)
    assert line.startswith("3 cases (late left out: reference R̂ > 1.05")
    assert "untested, as 1 of 4 references did not converge: the recipe may or may not" in line
    rows.append({"case": "far", "relative_difference": 0.2, "reference_rhat": 1.0})
    assert summarise_nonlinear(rows, SamplerConfig(), 0.0)["meets_targets"] is False
    # A miss among the converged cases fails the suite whatever the others would read.
    assert summarise_nonlinear([*rows, unconverged], SamplerConfig(), 0.0)["meets_targets"] is False
    assert "does NOT meet" in format_nonlinear_summary(
        summarise_nonlinear([*rows, unconverged], SamplerConfig(), 0.0)
    )
    none_counted = summarise_nonlinear([unconverged], SamplerConfig(), 0.0)
    assert none_counted["meets_targets"] is None
    assert "0 cases (late left out" in format_nonlinear_summary(none_counted)
    assert "median |rel. diff| = -, max = -" in format_nonlinear_summary(none_counted)
    # As written to JSON (NaN becomes null), the summary still formats.
    read_back = json.loads(json.dumps({k: None if v != v else v for k, v in none_counted.items()}))
    assert format_nonlinear_summary(read_back) == format_nonlinear_summary(none_counted)


def test_cli_validate_nonlinear(tmp_path, capsys):
    out = tmp_path / "nonlinear.json"
    argv = ["validate", "--suite", "nonlinear", "--num-samples", "100", "--jobs", "1"]
    argv += ["--num-chains", "2", "--num-burnin", "10", "--num-draws", "10", "--batch-size", "32"]
    argv += ["--reference-chains", "2", "--reference-warmup", "10", "--reference-draws", "10"]
    argv += ["--nbeta", "30", "--output", str(out), "--quiet"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "| case | d | n |" in printed and "targets" in printed
    report = json.loads(out.read_text())
    assert report["suite"] == "nonlinear"
    assert [r["case"] for r in report["cases"]] == [c.name for c in NONLINEAR_SUITE]
    for r in report["cases"]:
        assert r["nbeta"] == r["nbeta_sgld"] == 30.0  # --nbeta goes to both samplers
        assert r["num_samples"] == 100
        assert r["reference_settings"]["num_draws"] == 10
    assert report["summary"]["config"]["num_draws"] == 10


def test_cli_validate_nonlinear_heldout(tmp_path):
    out = tmp_path / "heldout.json"
    argv = ["validate", "--suite", "nonlinear-heldout", "--num-samples", "60", "--jobs", "1"]
    argv += ["--num-chains", "1", "--num-burnin", "5", "--num-draws", "5", "--batch-size", "16"]
    argv += ["--reference-chains", "1", "--reference-warmup", "10", "--reference-draws", "5"]
    argv += ["--localizer", "euclidean", "--reference-method", "hmc"]
    argv += ["--reference-temperatures", "2", "--reference-min-temperature", "0.1"]
    argv += ["--output", str(out), "--quiet"]
    assert main(argv) == 0
    report = json.loads(out.read_text())
    assert report["suite"] == "nonlinear-heldout"
    for r in report["cases"]:
        assert r["reference_settings"]["method"] == "hmc"
        assert r["reference_settings"]["num_leapfrog"] == 16
        assert r["reference_settings"]["num_temperatures"] == 2
        assert r["reference_settings"]["min_temperature"] == pytest.approx(0.1)
        assert len(r["reference_settings"]["swap_acceptance"]) == 1
    assert [r["case"] for r in report["cases"]] == [c.name for c in HELDOUT_NONLINEAR_SUITE]
    assert report["summary"]["config"]["localizer"] == "euclidean"


def test_cli_refuses_dln_options_with_nonlinear():
    with pytest.raises(SystemExit) as exc:
        main(["validate", "--suite", "nonlinear", "--widths", "3,2,3"])
    assert exc.value.code == 2


@pytest.mark.parametrize(
    "flag, value",
    [
        ("--reference-draws", "10"),
        ("--reference-temperatures", "10"),
        ("--reference-ladder", "adaptive"),
    ],
)
def test_cli_refuses_reference_options_without_nonlinear(flag, value):
    with pytest.raises(SystemExit) as exc:
        main(["validate", flag, value])
    assert exc.value.code == 2


def test_cli_adaptive_ladder_is_recorded(tmp_path):
    """``--reference-ladder adaptive`` reaches the reference and is kept in the recipe and in
    each case's settings; the geometric default leaves the recipe as files written before the
    option had it (so that they still resume)."""
    argv = ["validate", "--suite", "nonlinear", "--cases", "relu_duplicated", "--jobs", "1"]
    argv += ["--num-samples", "60", "--num-chains", "1", "--num-burnin", "5"]
    argv += ["--num-draws", "5", "--batch-size", "16", "--reference-chains", "1"]
    argv += ["--reference-warmup", "80", "--reference-draws", "5"]
    argv += ["--reference-temperatures", "3", "--reference-min-temperature", "0.1", "--quiet"]
    for ladder in ("geometric", "adaptive"):
        out = tmp_path / f"{ladder}.json"
        assert main([*argv, "--reference-ladder", ladder, "--output", str(out)]) == 0
        report = json.loads(out.read_text())
        settings = report["cases"][0]["reference_settings"]
        if ladder == "geometric":
            assert "ladder" not in report["recipe"]["reference"] and "ladder" not in settings
        else:
            assert report["recipe"]["reference"]["ladder"] == "adaptive"
            assert settings["ladder"] == "adaptive"
            temps = settings["temperatures"]
            assert temps[0] == 1.0 and temps[-1] == pytest.approx(0.1) and 0.1 < temps[1] < 1
