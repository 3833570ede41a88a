"""Step-size calibration: the choice rule, the sweep on a small deep linear network,
step_size="auto" in estimate_llc (result, JSON, card) and `hf-llc calibrate`."""

from __future__ import annotations

import json
import math
import os

import pytest

from hf_llc import SamplerConfig, estimate_llc, make_dln_problem, read_llc_from_model_card
from hf_llc.calibration import (
    DEFAULT_GRID_EXPONENTS,
    CalibrationResult,
    calibrate_step_size,
    choose_step_size,
    pilot_config,
)
from hf_llc.cli import main
from hf_llc.estimator import LLCResult
from hf_llc.modelcard import write_llc_to_model_card
from hf_llc.validation import per_sample_loss_fn

os.environ["HF_HUB_OFFLINE"] = "1"


def _row(eps, acc=0.95, flat=0.0, diverged=False):
    return {"step_size": eps, "mala_acceptance": acc, "flatness": flat, "diverged": diverged}


def test_choice_is_the_largest_healthy_step_below_any_divergence():
    rows = [
        _row(1e-4, flat=3.0),  # too small to settle in the pilot
        _row(2e-4),
        _row(4e-4, acc=0.92),
        _row(8e-4, acc=0.7),  # too coarse
        _row(1.6e-3, diverged=True),
        _row(3.2e-3),  # stable by luck above a divergence: never chosen
    ]
    eps, reason = choose_step_size(rows, min_acceptance=0.9)
    assert eps == 4e-4 and "largest" in reason
    assert [r["checks"] for r in rows] == [
        "not flat",
        "ok",
        "ok",
        "acceptance < 0.9",
        "diverged",
        "above a diverged ε",
    ]


def test_choice_falls_back_and_refuses_when_everything_diverged():
    eps, reason = choose_step_size([_row(1e-4, flat=3.0), _row(2e-4, flat=3.0)], min_acceptance=0.9)
    assert eps == 2e-4 and "no ε passed" in reason
    eps, reason = choose_step_size([_row(1e-4, acc=0.5), _row(2e-4, acc=0.4)], min_acceptance=0.9)
    assert eps == 1e-4 and "smallest stable" in reason
    with pytest.raises(ValueError, match="every pilot diverged"):
        choose_step_size([_row(1.0, diverged=True)], min_acceptance=0.9)


def test_pilot_settings_keep_the_burnin_with_few_draws_mala_and_no_restarts():
    cfg = pilot_config(SamplerConfig(), pilot_burnin=None, pilot_draws=None)
    # The full burn-in: the acceptance must be measured where the real chains will be.
    assert (cfg.num_chains, cfg.num_burnin, cfg.num_draws) == (1, 2000, 200)
    assert cfg.mala and cfg.divergence_retries == 0
    with pytest.raises(ValueError, match="pilot_draws"):
        pilot_config(SamplerConfig(), pilot_burnin=10, pilot_draws=2)


def test_auto_is_a_valid_step_size_and_run_chain_refuses_it():
    from hf_llc.sampling import run_chain

    cfg = SamplerConfig(step_size="auto")
    with pytest.raises(ValueError, match="auto"):
        run_chain(None, None, cfg, 0, nbeta=1.0, init_loss=0.0)
    with pytest.raises(ValueError, match="'auto'"):
        SamplerConfig(step_size="automatic")


SMALL = dict(num_chains=2, num_burnin=100, num_draws=100, batch_size=64)


def test_sweep_on_a_small_network_marks_divergence_and_plots(tmp_path):
    pytest.importorskip("matplotlib")
    model, data, _ = make_dln_problem([3, 2, 3], 0, "origin", num_samples=1000, seed=1)
    grid = [1e-4, 3e-4, 1e-3, 10.0]  # 10 is far beyond the stable step of this problem
    cal = calibrate_step_size(
        model,
        data,
        SamplerConfig(**SMALL),
        grid=grid,
        pilot_burnin=50,
        pilot_draws=60,
        loss_fn=per_sample_loss_fn(model),
        progress=False,
    )
    assert [r["step_size"] for r in cal.sweep] == grid
    assert cal.sweep[-1]["diverged"] and cal.sweep[-1]["checks"] == "diverged"
    assert cal.chosen_step_size in grid[:-1]
    stable = [r for r in cal.sweep if not r["diverged"]]
    assert all(0 <= r["mala_acceptance"] <= 1 and math.isfinite(r["llc"]) for r in stable)
    table = cal.table()
    assert "*" in table and "chosen ε" in table and "diverged" in table
    png = cal.plot(tmp_path / "sweep.png")
    assert (tmp_path / "sweep.png").read_bytes()[:4] == b"\x89PNG" and png is not None
    back = CalibrationResult.from_dict(json.loads(json.dumps(cal.to_dict())))
    assert back.chosen_step_size == cal.chosen_step_size
    assert math.isnan(back.sweep[-1]["llc"])


def test_estimate_with_auto_records_the_choice_in_result_json_and_card(tmp_path):
    model, data, _ = make_dln_problem([3, 2, 3], 0, "origin", num_samples=1000, seed=1)
    cfg = SamplerConfig(step_size="auto", **SMALL)  # default pilots: the chains' burn-in
    result = estimate_llc(model, data, cfg, loss_fn=per_sample_loss_fn(model), progress=False)
    cal = result.diagnostics["calibration"]
    chosen = cal["chosen_step_size"]
    assert chosen in [r["step_size"] for r in cal["sweep"]]
    # The default grid ε_c·2^k, k = -3..0, at and below the anchor pilot's curvature step ε_c.
    anchor = cal["anchor_step_size"]
    assert DEFAULT_GRID_EXPONENTS == (-3, -2, -1, 0)
    assert [r["step_size"] for r in cal["sweep"]] == pytest.approx(
        [anchor * 2.0**k for k in DEFAULT_GRID_EXPONENTS]
    )
    assert result.config["step_size"] == "auto"
    if not result.diagnostics["retries"]:
        assert result.diagnostics["step_size_per_chain"] == [chosen, chosen]
    back = LLCResult.load(result.save(tmp_path / "r.json"))
    assert back.diagnostics["calibration"]["chosen_step_size"] == chosen
    write_llc_to_model_card(tmp_path, result, dataset_name="dln", date="2026-01-01T00:00:00Z")
    (entry,) = read_llc_from_model_card(tmp_path)
    assert entry["settings"]["step_size"] == "auto"
    assert entry["diagnostics"]["step_size_calibration"]["chosen_step_size"] == chosen
    assert entry["diagnostics"]["verdict"] == result.verdict


def test_cli_calibrate_prints_the_sweep_and_writes_json_plot_and_card(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    from test_hf_surface import TEXTS, _gpt2, _tokenizer

    model_dir = tmp_path / "tiny-gpt2"
    _gpt2().save_pretrained(model_dir)
    _tokenizer().save_pretrained(model_dir)
    data = tmp_path / "train.jsonl"
    data.write_text("\n".join(json.dumps({"text": t}) for t in TEXTS))
    out, plot = tmp_path / "cal.json", tmp_path / "cal.png"
    code = main(
        [
            "calibrate",
            str(model_dir),
            "--dataset",
            str(data),
            "--num-samples",
            "40",
            "--grid",
            "1e-6,1e-5,1000",  # 1000 diverges on any model
            "--pilot-burnin",
            "10",
            "--pilot-draws",
            "12",
            "--num-chains",
            "2",
            "--num-burnin",
            "10",
            "--num-draws",
            "12",
            "--batch-size",
            "8",
            "--output",
            str(out),
            "--plot",
            str(plot),
            "--write-card",
            "--quiet",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "step size ε" in printed and "chosen ε" in printed and "LLC =" in printed
    saved = json.loads(out.read_text())
    chosen = saved["chosen_step_size"]
    assert [r["step_size"] for r in saved["sweep"]] == [1e-6, 1e-5, 1000.0]
    assert saved["sweep"][-1]["diverged"] and chosen in (1e-6, 1e-5)
    assert plot.read_bytes()[:4] == b"\x89PNG"
    (entry,) = read_llc_from_model_card(model_dir)
    assert entry["settings"]["step_size"] == chosen  # the estimate ran at the chosen ε
    assert entry["diagnostics"]["step_size_calibration"]["chosen_step_size"] == chosen


def test_cli_calibrate_bad_grid_is_a_clear_error(capsys):
    with pytest.raises(SystemExit):
        main(["calibrate", "m", "--dataset", "d", "--grid", "1e-4,x"])
    assert "comma-separated step sizes" in capsys.readouterr().err
