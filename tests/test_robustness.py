"""SamplerConfig(robustness=True): λ̂ again at half the step size, in the result, the verdict,
the summary, the JSON, the model card and the command line."""

from __future__ import annotations

import json
import math
import os
from dataclasses import replace

import pytest
import torch
import yaml
from tiny_text import texts, word_tokenizer
from transformers import GPT2Config, GPT2LMHeadModel

from hf_llc import LLCResult, SamplerConfig, estimate_llc, make_dln_problem
from hf_llc.cli import main
from hf_llc.diagnostics import assess_estimate, robustness_checks, robustness_report
from hf_llc.modelcard import read_llc_from_model_card, write_llc_to_model_card

os.environ["HF_HUB_OFFLINE"] = "1"

# One full-rank linear layer (a regular model, λ = 3 exactly) with the identity
# preconditioner: its Hessian is nearly isotropic, so a step ε with ε·h_max = c inflates every
# direction's variance by about 1/(1 − c/4) and λ̂ by the same factor. All chains run as one
# batched computation. Steps are set by the curvature rule (c = step_scale), with few power
# iterations and adaptations (cheap; the Hessian is nearly isotropic, so they converge fast).
WELL_BEHAVED = SamplerConfig(
    num_chains=4,
    num_burnin=200,
    num_draws=600,
    batch_size=64,
    preconditioner="identity",
    chain_mode="batched",
    curvature_iters=3,
    num_adaptations=2,
    seed=0,
)
# Plumbing only (accuracy is not the point): short chains.
TINY = replace(WELL_BEHAVED, num_burnin=20, num_draws=30)

REASON = "when the step size is halved"


def _regular():
    return make_dln_problem([3, 2], construction="full_rank", num_samples=1000, seed=0)


@pytest.fixture(scope="module")
def robust():
    model, data, _ = _regular()
    return estimate_llc(model, data, replace(WELL_BEHAVED, robustness=True), progress=False)


@pytest.fixture(scope="module")
def plain():
    model, data, _ = _regular()
    return estimate_llc(model, data, WELL_BEHAVED, progress=False)


def test_the_report_has_both_step_sizes_the_second_exactly_half(robust):
    rep = robust.diagnostics["robustness"]
    first, second = rep["step_size_per_chain"]
    assert len(first) == len(second) == WELL_BEHAVED.num_chains
    # Chain c ran again at its own ε_c / 2 (the curvature rule's step, then fixed).
    assert second == [e / 2 for e in first]
    assert rep["step_sizes"][1] == rep["step_sizes"][0] / 2
    assert rep["step_sizes"][0] == pytest.approx(sum(first) / len(first), rel=1e-12)
    assert rep["step_rule"] == "curvature"
    a, b = rep["llc_means"]
    assert a == robust.llc_mean and math.isfinite(b) and b != a
    assert rep["llc_stderrs"][0] == robust.llc_stderr
    assert rep["difference"] == b - a
    assert rep["relative_change"] == abs(b - a) / abs(a)
    assert rep["combined_stderr"] == pytest.approx(math.hypot(*rep["llc_stderrs"]), rel=1e-12)
    assert rep["within_noise"] == (abs(b - a) <= 2 * rep["combined_stderr"])
    assert rep["num_divergences"] == [0, 0]
    # Twice the burn-in and draws at ε/2: the same Langevin time as the estimate's chains.
    assert rep["num_burnin"] == [WELL_BEHAVED.num_burnin, 2 * WELL_BEHAVED.num_burnin]
    assert rep["num_draws"] == [WELL_BEHAVED.num_draws, 2 * WELL_BEHAVED.num_draws]
    assert robust.timings["robustness_seconds"] > 0
    assert robust.config["robustness"] is True


def test_turning_the_report_on_leaves_the_estimate_unchanged(robust, plain):
    """Same seed: the first run's chains are the estimate, bit for bit."""
    assert "robustness" not in plain.diagnostics
    assert robust.llc_mean == plain.llc_mean
    assert robust.llc_per_chain == plain.llc_per_chain
    assert robust.llc_stderr == plain.llc_stderr
    assert torch.equal(torch.from_numpy(robust.loss_trace), torch.from_numpy(plain.loss_trace))
    assert robust.diagnostics["step_size_per_chain"] == plain.diagnostics["step_size_per_chain"]
    assert {k: v for k, v in robust.config.items() if k != "robustness"} == {
        k: v for k, v in plain.config.items() if k != "robustness"
    }


def test_no_warning_when_halving_the_step_does_not_move_the_estimate(robust):
    """The default step_scale 0.3: ε·h_max ≤ 0.3 inflates λ̂ by at most ~8% at ε and ~4% at
    ε/2, so the expected change is ≤ 4%, under the 10% limit. 4 chains × 600 draws at ε and
    × 1,200 at ε/2 put the standard errors near 2-3% and 1-3%, so that real ~4% change may
    or may not exceed 2 combined standard errors: the 10% limit is what keeps the warning
    off. Over seeds 0-5 the change measured 0.3-8.8% (0.05-3.2 combined standard errors;
    seed 0 is the 8.8%), the mean λ̂ 3.21 at ε against 3.07 at ε/2 (λ = 3)."""
    rep = robust.diagnostics["robustness"]
    assert rep["relative_change"] <= 0.10
    assert not any(REASON in r for r in robust.verdict_reasons)
    assert robust.verdict == "ok", robust.verdict_reasons


def test_the_verdict_warns_when_the_step_is_far_too_large(robust):
    """A fixed ε six times the curvature rule's (step_scale 0.3): ε·λ_max ≈ 1.8 on a
    minibatch, ε·h ≈ 1.3 on the full data, which inflates λ̂ by ~1/(1 − 1.3/4) ≈ 1.5 against
    ~1.2 at ε/2: λ̂ falls by ~18% on halving ε, many standard errors (measured over seeds 0-5,
    4 chains × 200 draws, 400 at ε/2: 14-24%, 3.3-11.2 combined standard errors, no
    divergence)."""
    model, data, lam = _regular()
    eps = 6 * min(robust.diagnostics["step_size_per_chain"])
    cfg = replace(WELL_BEHAVED, num_burnin=100, num_draws=200, step_size=eps, robustness=True)
    result = estimate_llc(model, data, cfg, progress=False)
    rep = result.diagnostics["robustness"]
    assert rep["step_rule"] == "fixed"
    assert rep["step_sizes"] == [eps, eps / 2]
    assert rep["step_size_per_chain"] == [[eps] * 4, [eps / 2] * 4]
    a, b = rep["llc_means"]
    assert a > b > lam * 0.95  # the larger step reads high; the smaller one less so
    assert rep["relative_change"] > 0.10 and not rep["within_noise"]
    assert rep["num_divergences"] == [0, 0]
    assert result.verdict in ("warning", "fail")
    (reason,) = [r for r in result.verdict_reasons if REASON in r]
    assert reason.startswith("warning: λ̂ moves ")
    assert f"{rep['relative_change']:.1%}" in reason and "smaller step_size" in reason
    assert "step-size robustness:" in result.summary()


def _report(a, b, sa=0.1, sb=0.1, rule="fixed"):
    return robustness_report(
        llc_means=[a, b], llc_stderrs=[sa, sb], step_sizes=[1e-3, 5e-4], step_rule=rule
    )


def test_the_check_warns_only_beyond_both_limits_and_never_upgrades_a_verdict():
    assert robustness_checks(_report(10.0, 8.0)) != []  # 20%, 14 standard errors
    assert robustness_checks(_report(10.0, 9.5)) == []  # 5%
    assert robustness_checks(_report(10.0, 8.0, sa=1.0, sb=1.0)) == []  # 1.4 standard errors
    (reason,) = robustness_checks(_report(10.0, 8.0, rule="curvature"))
    assert reason[0] == "warning" and "smaller step_scale" in reason[1]
    (reason,) = robustness_checks(_report(10.0, math.nan))
    assert "could not be made" in reason[1]
    base = dict(
        llc_mean=10.0,
        llc_stderr=0.1,
        num_chains=4,
        checks={"flatness": 0.0, "rhat_rank": 1.0, "ess_bulk": 400, "ess_tail": 400},
        divergences=[],
        retries=[],
    )
    assert assess_estimate(**base)["verdict"] == "ok"
    assert assess_estimate(**base, robustness=_report(10.0, 9.9))["verdict"] == "ok"
    assert assess_estimate(**base, robustness=_report(10.0, 8.0))["verdict"] == "warning"
    failed = {**base, "llc_mean": -10.0}
    assert assess_estimate(**failed)["verdict"] == "fail"
    assert assess_estimate(**failed, robustness=_report(-10.0, -8.0))["verdict"] == "fail"


def test_bad_values_are_refused_with_the_fix():
    with pytest.raises(ValueError, match=r"robustness must be True or False.*--robustness"):
        SamplerConfig(robustness="yes")


def test_the_report_survives_json(robust, tmp_path):
    path = robust.save(tmp_path / "llc.json")
    loaded = LLCResult.load(path)
    assert loaded.diagnostics["robustness"] == json.loads(
        json.dumps(robust.to_dict()["diagnostics"]["robustness"])
    )
    assert (
        loaded.diagnostics["robustness"]["llc_means"]
        == robust.diagnostics["robustness"]["llc_means"]
    )
    assert loaded.summary() == robust.summary()
    assert "step-size robustness: λ̂ = " in loaded.summary()


def test_the_card_records_the_report_under_the_same_entry(robust, plain, tmp_path):
    """The report does not change the estimate, so it does not change the card entry's
    identity either: the run with the report replaces the one without."""
    write_llc_to_model_card(tmp_path, plain, dataset_name="regular", date="2026-01-01")
    path = write_llc_to_model_card(tmp_path, robust, dataset_name="regular", date="2026-01-01")
    (entry,) = read_llc_from_model_card(tmp_path)
    summary = entry["diagnostics"]["step_size_robustness"]
    rep = robust.diagnostics["robustness"]
    assert summary["llc_means"] == rep["llc_means"]
    assert summary["step_sizes"] == rep["step_sizes"]
    assert summary["relative_change"] == rep["relative_change"]
    assert summary["within_noise"] is rep["within_noise"] and summary["step_rule"] == "curvature"
    assert summary["num_draws"] == rep["num_draws"] and summary["num_burnin"] == rep["num_burnin"]
    assert entry["settings"]["robustness"] is True
    front = path.read_text().split("---\n")[1]
    assert "step_size_robustness" in yaml.safe_load(front)["hf_llc"][0]["diagnostics"]


def test_a_run_resumed_with_the_report_keeps_its_chains(robust, tmp_path):
    """The output folder holds the estimate's chains; the report is not part of their
    settings, so a finished run can be resumed with it turned on."""
    model, data, _ = _regular()
    cfg = replace(TINY, step_size=robust.diagnostics["robustness"]["step_sizes"][0])
    first = estimate_llc(model, data, cfg, progress=False, output_dir=tmp_path / "run")
    again = estimate_llc(
        model,
        data,
        replace(cfg, robustness=True),
        progress=False,
        output_dir=tmp_path / "run",
        resume=True,
    )
    assert again.llc_per_chain == first.llc_per_chain
    assert again.diagnostics["robustness"]["llc_means"][0] == first.llc_mean
    saved = LLCResult.load(tmp_path / "run" / "result.json")
    assert "robustness" in saved.diagnostics


def test_cli_robustness_flag_end_to_end(tmp_path, capsys):
    model_dir = tmp_path / "model"
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=24, n_positions=32, n_embd=16, n_layer=1, n_head=2)
    cfg.pad_token_id = 0
    GPT2LMHeadModel(cfg).save_pretrained(model_dir)
    word_tokenizer().save_pretrained(model_dir)
    data = tmp_path / "texts.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts(16)))
    out = tmp_path / "llc.json"
    argv = ["estimate", str(model_dir), "--dataset", str(data), "--output", str(out)]
    argv += ["--num-chains", "2", "--num-burnin", "3", "--num-draws", "5", "--batch-size", "4"]
    argv += ["--step-size", "1e-3", "--curvature-iters", "2"]
    argv += ["--quiet", "--seed", "3", "--robustness", "--write-card"]
    assert main(argv) == 0
    assert "step-size robustness: λ̂ = " in capsys.readouterr().out
    result = json.loads(out.read_text())
    assert result["config"]["robustness"] is True
    rep = result["diagnostics"]["robustness"]
    assert rep["llc_means"][0] == result["llc_mean"]
    assert rep["step_size_per_chain"] == [[1e-3, 1e-3], [5e-4, 5e-4]]
    (entry,) = read_llc_from_model_card(model_dir)
    assert entry["diagnostics"]["step_size_robustness"]["llc_means"] == rep["llc_means"]


def test_cli_config_file_refuses_a_non_boolean(tmp_path, capsys):
    settings = tmp_path / "settings.yaml"
    settings.write_text("robustness: 1\n")
    with pytest.raises(SystemExit):
        main(["validate", "--config", str(settings)])
    assert "robustness must be true or false" in capsys.readouterr().err
