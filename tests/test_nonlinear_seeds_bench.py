"""benchmarks/nonlinear_seeds.py: the per-run rows and the pooled line, from suite JSONs."""

from __future__ import annotations

import json
import os

import pytest
from _scripts import load_script

os.environ["HF_HUB_OFFLINE"] = "1"


@pytest.fixture(scope="module")
def bench():
    """The script, imported as a module."""
    return load_script("benchmarks/nonlinear_seeds.py")


def _run(suite: str, seed: int, diffs: dict, verdicts: dict, unconverged=(), meets=True) -> dict:
    """A suite run as ``hf-llc validate --output`` writes it (the fields the script reads)."""
    cases = [
        {"case": name, "seed": seed, "relative_difference": d, "verdict": verdicts[name]}
        for name, d in diffs.items()
    ]
    summary = {"unconverged_reference": list(unconverged), "meets_targets": meets}
    return {"suite": suite, "cases": cases, "summary": summary}


RUNS = [
    _run(
        "nonlinear",
        0,
        {"a": 0.02, "b": -0.04, "c": 0.06},
        {"a": "ok", "b": "ok", "c": "warning"},
    ),
    _run(
        "nonlinear-heldout",
        1,
        {"d": -0.21, "e": 0.12, "f": 0.01},
        {"d": "warning", "e": "ok", "f": "ok"},
        unconverged=["f"],
        meets=False,
    ),
]


def test_row_counts_every_case_and_names_the_worst(bench):
    row = bench.run_row(RUNS[1], "x.json")
    # All three cases count, the unconverged one included: |diffs| 0.01, 0.12, 0.21.
    assert row["median_all"] == pytest.approx(0.12) and row["max_all"] == pytest.approx(0.21)
    assert (row["worst_case"], row["worst_verdict"]) == ("d", "warning")
    assert row["teacher_seed"] == 1 and row["unconverged_reference"] == ["f"]
    # "e" is 12% off and was called ok: a miss the verdict did not flag; "d" was flagged.
    assert row["missed_ok"] == ["e"] and row["meets_targets"] is False


def test_pooled_over_runs(bench):
    p = bench.pooled(RUNS)
    # Six |diffs|: 0.01 0.02 0.04 0.06 0.12 0.21, median (0.04 + 0.06) / 2.
    assert p["cases"] == 6 and p["median_all"] == pytest.approx(0.05)
    assert (p["misses"], p["misses_called_ok"]) == (2, 1)
    assert (p["runs"], p["runs_meeting_targets"]) == (2, 1)


def _write_runs(tmp_path) -> list:
    """RUNS written as the JSON files ``--from`` reads."""
    files = [tmp_path / f"run{i}.json" for i in range(len(RUNS))]
    for f, run in zip(files, RUNS):
        f.write_text(json.dumps(run))
    return files


def test_main_summarises_files(bench, tmp_path, capsys):
    files = _write_runs(tmp_path)
    out = tmp_path / "summary.json"
    assert bench.main(["--from", *map(str, files), "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| nonlinear-heldout | 1 | 12.0% / 21.0% | d -21.0% (warning) | 1 | no |" in printed
    assert "1 of 2 runs meet the targets; 6 cases" in printed
    written = json.loads(out.read_text())
    assert [r["suite"] for r in written["runs"]] == ["nonlinear", "nonlinear-heldout"]
    assert written["pooled"]["misses_called_ok"] == 1


def test_compare_pairs_the_cases_and_bootstraps_the_median_difference(bench):
    # The same six cases read by a second recipe.
    other = [
        _run("nonlinear", 0, {"a": 0.01, "b": 0.08, "c": -0.10}, {k: "ok" for k in "abc"}),
        _run("nonlinear-heldout", 1, {"d": 0.05, "e": -0.20, "f": 0.03}, {k: "ok" for k in "def"}),
    ]
    c = bench.compare(RUNS, other, resamples=2000)
    # RUNS: |diffs| 0.01 0.02 0.04 0.06 0.12 0.21, median 0.05; other: 0.01 0.03 0.05 0.08
    # 0.10 0.20, median 0.065. RUNS is closer on b, c, e and f, farther on a and d.
    assert c["cases"] == 6 and c["closer"] == 4
    assert c["median_difference"] == pytest.approx(0.05 - 0.065)
    low, high = c["interval_95"]
    assert low <= c["median_difference"] <= high and low < high
    # Seeded: the same interval every time.
    assert bench.compare(RUNS, other, resamples=2000)["interval_95"] == (low, high)
    with pytest.raises(ValueError, match="different cases"):
        bench.compare(RUNS, other[:1])


def test_against_on_the_command_line(bench, tmp_path, capsys):
    files = _write_runs(tmp_path)
    out = tmp_path / "summary.json"
    args = ["--from", *map(str, files), "--against", *map(str, files), "--output", str(out)]
    assert bench.main(args) == 0
    assert "closer in 0 of 6 cases" in capsys.readouterr().out
    against = json.loads(out.read_text())["against"]
    assert against["median_difference"] == 0 and against["interval_95"] == [0, 0]


def _noisy_run(se: float, mcse: float) -> dict:
    cases = [
        {"case": str(i), "seed": 0, "llc_stderr": se, "reference_mcse": mcse, "reference_llc": 10.0}
        for i in range(5)
    ]
    return {"suite": "nonlinear", "cases": cases}


def test_noise_floor_is_what_an_unbiased_recipe_scores_with_the_runs_noise(bench):
    # Without noise an unbiased recipe is exact: every simulated run meets the targets.
    exact = bench.noise_floor([_noisy_run(0.0, 0.0)], draws=200)
    assert exact == {"meets_targets": 1.0, "median_all": 0.0}
    # Combined sd 0.5 / 10 = 5% per case: the median of five |N(0, 5%)| is about 0.67·5% ≈ 3.4%;
    # all five within 10% = 2 sd (0.954⁵ ≈ 0.79) and at least three within 5% = 1 sd (≈ 0.81)
    # hold together in ≈ 0.675 of runs (40,000 simulated). With 4,000 the binomial sd is 0.0074,
    # so ±0.04 is more than five of them.
    f = bench.noise_floor([_noisy_run(0.3, 0.4)], draws=4000)
    assert f["median_all"] == pytest.approx(0.034, abs=0.003)
    assert 0.635 < f["meets_targets"] < 0.715
    # Dividing the standard errors is the same as a run that reported smaller ones.
    halved = bench.noise_floor([_noisy_run(0.3, 0.4)], se_div=2, mcse_div=2, draws=500)
    assert halved == bench.noise_floor([_noisy_run(0.15, 0.2)], draws=500)


def test_a_summary_among_the_files_is_named(bench, tmp_path):
    files = _write_runs(tmp_path)
    summary = tmp_path / "summary.json"
    summary.write_text(json.dumps({"runs": [], "pooled": {}}))
    with pytest.raises(SystemExit, match="summary.json is not a suite run"):
        bench.main(["--from", *map(str, files), str(summary)])


def test_an_unfinished_run_is_named(bench, tmp_path):
    files = _write_runs(tmp_path)
    run = json.loads(files[0].read_text())
    run["pending"] = ["attention"]
    files[0].write_text(json.dumps(run))
    with pytest.raises(SystemExit, match="unfinished run \\(attention pending\\)"):
        bench.main(["--from", *map(str, files)])


def test_each_run_continues_where_it_stopped(bench, tmp_path, monkeypatch):
    commands = []
    monkeypatch.setattr(bench.subprocess, "run", lambda cmd, **kw: commands.append(cmd))
    bench._run("nonlinear", 1, tmp_path / "r.json", 1, 100, ["--num-chains", "2"])
    (cmd,) = commands
    assert cmd[-1] == "--resume" and cmd[cmd.index("--output") + 1] == str(tmp_path / "r.json")
    assert "--num-chains" in cmd


def test_a_run_passed_only_on_its_converged_cases_reads_untested(bench):
    untested = _run("nonlinear", 2, {"a": 0.01, "b": 0.3}, {"a": "ok", "b": "warning"}, ["b"], None)
    lines = bench.table([untested, RUNS[0]], ["u.json", "r.json"]).splitlines()
    assert lines[2].endswith("| 1 | untested |") and lines[3].endswith("| 0 | yes |")
    assert bench.pooled([untested, RUNS[0]])["runs_meeting_targets"] == 1
