"""The hf-llc command line: validate one case to JSON, suites, and clear errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from hf_llc.cli import main

SHORT = ["--num-draws", "40", "--num-burnin", "20", "--num-chains", "2", "--batch-size", "64"]


def test_validate_single_case_writes_the_documented_json(tmp_path, capsys):
    out = tmp_path / "out.json"
    code = main(
        [
            "validate",
            "--widths",
            "3,2,3",
            "--rank",
            "0",
            "--construction",
            "origin",
            "--num-samples",
            "2000",
            "--jobs",
            "1",
            "--output",
            str(out),
            "--no-progress",
            *SHORT,
        ]
    )
    assert code == 0
    data = json.loads(out.read_text())
    (case,) = data["cases"]
    for key in [
        "widths",
        "rank",
        "construction",
        "num_params",
        "lambda_theory",
        "llc_mean",
        "llc_std",
        "relative_error",
        "seconds",
    ]:
        assert key in case
    assert case["widths"] == [3, 2, 3] and case["num_params"] == 12
    assert case["lambda_theory"] == 2.5
    assert data["summary"]["num_cases"] == 1
    assert data["summary"]["config"]["num_draws"] == 40
    table = capsys.readouterr().out
    assert "origin" in table and "λ (theory)" in table and "verdict" in table
    assert case["verdict"] in ("ok", "warning", "fail")
    assert "verdicts" in data["summary"]


def test_validate_defaults_rank_and_construction(tmp_path):
    out = tmp_path / "o.json"
    main(
        [
            "validate",
            "--widths",
            "3,4",
            "--num-samples",
            "500",
            "--jobs",
            "1",
            "--output",
            str(out),
            "--no-progress",
            *SHORT,
        ]
    )
    case = json.loads(out.read_text())["cases"][0]
    assert case["construction"] == "full_rank" and case["rank"] == 3
    assert case["lambda_theory"] == 6.0


@pytest.mark.parametrize(
    "argv,match",
    [
        (["--widths", "3,2,3", "--rank", "1", "--construction", "origin"], "origin"),
        (["--widths", "3,2,3", "--rank", "1", "--construction", "full_rank"], "full_rank"),
        (["--rank", "1"], "--widths"),
        (["--widths", "3,2,3", "--step-size", "-1"], "step_size"),
        (["--widths", "3,2,3", "--num-samples", "1"], "num-samples"),
        (["--widths", "3,2,3", "--output", "/nonexistent-dir/x.json"], "does not exist"),
    ],
)
def test_validate_bad_input_exits_with_a_clear_message(argv, match, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["validate", *argv])
    assert exc.value.code == 2
    assert match in capsys.readouterr().err


def test_unparsable_widths_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit):
        main(["validate", "--widths", "3,x"])
    assert "comma-separated" in capsys.readouterr().err


def test_module_entry_point_runs():
    proc = subprocess.run(
        [sys.executable, "-m", "hf_llc", "validate", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "--construction" in proc.stdout


def test_every_sampler_flag_sets_its_config_field():
    from hf_llc.cli import build_parser, config_from_args, parse_args
    from hf_llc.sampling import SamplerConfig

    argv = [
        "validate",
        *("--step-size", "1e-4", "--step-scale", "0.2", "--localization", "0"),
        *("--nbeta", "50", "--num-chains", "3", "--num-draws", "7", "--num-burnin", "0"),
        *("--draw-every", "2", "--batch-size", "16", "--preconditioner", "identity"),
        *("--sampler-seed", "5", "--mala", "--chain-mode", "batched", "--compile"),
    ]
    cfg = config_from_args(parse_args(build_parser(), argv))
    expected = dict(
        step_size=1e-4,
        step_scale=0.2,
        localization=0.0,
        nbeta=50.0,
        num_chains=3,
        num_draws=7,
        num_burnin=0,
        draw_every=2,
        batch_size=16,
        preconditioner="identity",
        seed=5,
        mala=True,
        chain_mode="batched",
        compile=True,
    )
    assert {k: getattr(cfg, k) for k in expected} == expected
    assert config_from_args(parse_args(build_parser(), ["validate"])) == SamplerConfig()
    for mode in ("curvature", "auto"):
        args = parse_args(build_parser(), ["validate", "--step-size", mode])
        assert config_from_args(args).step_size == mode


def test_validate_offers_every_built_in_suite():
    from hf_llc.cli import build_parser
    from hf_llc.validation import HELDOUT_SUITE, SUITES

    validate = build_parser()._subparsers._group_actions[0].choices["validate"]
    (suite,) = [a for a in validate._actions if a.dest == "suite"]
    # The DLN suites, then the nonlinear suites (checked against the exact reference sampler).
    from hf_llc.validation_nonlinear import NONLINEAR_SUITES

    assert list(suite.choices) == [*SUITES, *NONLINEAR_SUITES]
    # The held-out cases are new to both other suites.
    seen = {c for name in ("quick", "paper") for c in SUITES[name]}
    assert HELDOUT_SUITE and not seen & set(HELDOUT_SUITE)
