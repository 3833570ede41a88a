"""``hf-llc validate --output`` keeps finished cases: the report is rewritten after each case,
an interrupted run leaves its finished cases and the pending ones on disk, and ``--resume``
runs only the others (refusing a report made with another recipe)."""

from __future__ import annotations

import json

import pytest

import hf_llc.validation_nonlinear as vn
from hf_llc.cli import main
from hf_llc.validation import SuiteRecord

TINY = ["--num-samples", "80", "--jobs", "1", "--num-chains", "1", "--num-burnin", "5"]
TINY += ["--num-draws", "5", "--batch-size", "16", "--reference-chains", "1"]
TINY += ["--reference-warmup", "10", "--reference-draws", "5", "--nbeta", "20", "--quiet"]


def _record(path, recipe=None):
    return SuiteRecord(
        path,
        recipe or {"config": {"seed": 0}, "n": 10},
        ["a", "b", "c"],
        lambda r: r["case"],
        lambda results, seconds: {"num_cases": len(results), "wall_seconds": seconds},
        header={"suite": "toy"},
    )


def test_the_report_is_on_disk_after_each_case(tmp_path):
    path = tmp_path / "r.json"
    record = _record(path)
    record.add({"case": "b", "x": 2})
    on_disk = json.loads(path.read_text())
    assert [r["case"] for r in on_disk["cases"]] == ["b"]
    assert on_disk["pending"] == ["a", "c"]
    assert on_disk["format"] == "hf_llc.validation_report" and on_disk["suite"] == "toy"
    record.add({"case": "a", "x": 1})
    on_disk = json.loads(path.read_text())
    assert [r["case"] for r in on_disk["cases"]] == ["a", "b"]  # the suite's order
    assert on_disk["summary"]["num_cases"] == 2


def test_resume_keeps_the_finished_cases_and_runs_the_others(tmp_path):
    path = tmp_path / "r.json"
    first = _record(path)
    first.add({"case": "a", "x": 1})
    again = _record(path)
    assert again.resume() == 1
    assert again.pending(["a", "b", "c"], lambda c: c) == ["b", "c"]
    again.add({"case": "c", "x": 3})
    on_disk = json.loads(path.read_text())
    assert [r["case"] for r in on_disk["cases"]] == ["a", "c"]
    assert on_disk["pending"] == ["b"]
    assert on_disk["cases"][0] == {"case": "a", "x": 1}


def test_resume_refuses_another_recipe_and_old_reports(tmp_path):
    path = tmp_path / "r.json"
    _record(path).add({"case": "a"})
    with pytest.raises(ValueError, match=r"other n: one report keeps one recipe"):
        _record(path, {"config": {"seed": 0}, "n": 11}).resume()
    path.write_text(json.dumps({"format": "hf_llc.validation_report", "cases": []}))
    with pytest.raises(ValueError, match="records no recipe"):
        _record(path).resume()
    path.write_text(json.dumps({"format": "hf_llc.llc_result"}))
    with pytest.raises(ValueError, match="llc_result"):
        _record(path).resume()
    assert _record(tmp_path / "missing.json").resume() == 0


def test_an_interrupted_nonlinear_run_keeps_its_finished_cases(tmp_path, monkeypatch):
    out = tmp_path / "nonlinear.json"
    argv = ["validate", "--suite", "nonlinear", "--cases", "tanh_zero_out,gelu_minimal"]
    argv += [*TINY, "--output", str(out)]
    real = vn.run_nonlinear_case
    calls = []

    def stop_at_the_second(case, *args, **kwargs):
        calls.append(case.name)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(case, *args, **kwargs)

    monkeypatch.setattr(vn, "run_nonlinear_case", stop_at_the_second)
    with pytest.raises(KeyboardInterrupt):
        main(argv)
    stopped = json.loads(out.read_text())
    assert [r["case"] for r in stopped["cases"]] == ["tanh_zero_out"]
    assert stopped["pending"] == ["gelu_minimal"]

    def counted(case, *args, **kwargs):
        calls.append(case.name)
        return real(case, *args, **kwargs)

    calls.clear()
    monkeypatch.setattr(vn, "run_nonlinear_case", counted)
    # One reference chain has no R̂: NaN, written as null; the kept case must read it back as
    # NaN for the summary and the table.
    assert stopped["cases"][0]["reference_rhat"] is None
    assert main([*argv, "--resume"]) == 0
    assert calls == ["gelu_minimal"]  # the finished case is not run again
    report = json.loads(out.read_text())
    assert [r["case"] for r in report["cases"]] == ["tanh_zero_out", "gelu_minimal"]
    assert report["cases"][0] == stopped["cases"][0]
    assert report["pending"] == []


def test_resume_with_other_settings_is_refused(tmp_path, capsys):
    out = tmp_path / "nonlinear.json"
    argv = ["validate", "--suite", "nonlinear", "--cases", "gelu_minimal", *TINY]
    assert main([*argv, "--output", str(out)]) == 0
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--output", str(out), "--resume", "--seed", "3"])
    assert exc.value.code == 2
    assert "other config" in capsys.readouterr().err


def test_a_resumed_dln_run_skips_the_finished_case(tmp_path):
    out = tmp_path / "dln.json"
    argv = ["validate", "--widths", "3,2,3", "--rank", "0", "--num-samples", "200", "--jobs", "1"]
    argv += ["--num-chains", "1", "--num-burnin", "5", "--num-draws", "5", "--batch-size", "50"]
    argv += ["--quiet"]
    argv += ["--output", str(out)]
    assert main(argv) == 0
    first = json.loads(out.read_text())
    assert first["pending"] == [] and first["recipe"]["num_samples"] == 200
    assert main([*argv, "--resume"]) == 0
    again = json.loads(out.read_text())
    assert again["cases"] == first["cases"]  # kept, not rerun (a rerun would differ in time)


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["--resume"], "--resume continues the report in --output"),
        (["--cases", "relu_duplicated"], "--cases names cases of --suite nonlinear"),
        (["--suite", "nonlinear", "--cases", "nope"], "its cases are tanh_zero_out"),
    ],
)
def test_bad_case_selection_and_resume_are_named(argv, match, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["validate", *argv])
    assert exc.value.code == 2
    assert match in capsys.readouterr().err
