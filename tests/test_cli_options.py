"""The ``hf-llc`` flags: generated from dataclasses, both spellings, defaults shown,
``--config FILE`` under the command line, ``--seed`` the chains' seed everywhere, a lazy import."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import fields

import pytest
import torch
from tiny_text import texts, word_tokenizer
from transformers import GPT2Config, GPT2LMHeadModel

from hf_llc.cli import COMMAND_ARGUMENTS, build_parser, config_from_args, main, parse_args
from hf_llc.sampling import SamplerConfig

os.environ["HF_HUB_OFFLINE"] = "1"

# A non-default value for every SamplerConfig field, as typed on the command line.
NON_DEFAULT = {
    "step_size": ("1e-4", 1e-4),
    "step_scale": ("0.2", 0.2),
    "localization": ("0", 0.0),
    "nbeta": ("50", 50.0),
    "batch_size": ("16", 16),
    "num_chains": ("3", 3),
    "num_burnin": ("0", 0),
    "num_draws": ("7", 7),
    "draw_every": ("2", 2),
    "preconditioner": ("identity", "identity"),
    "rmsprop_decay": ("0.9", 0.9),
    "rmsprop_eps": ("0.5", 0.5),
    "fisher_damping": ("0.01", 0.01),
    "fisher_start": ("flat", "flat"),
    "seed": ("5", 5),
    "mala": (None, True),
    "init_loss_samples": ("11", 11),
    "curvature_iters": ("3", 3),
    "num_adaptations": ("2", 2),
    "probe_reach": ("2", 2.0),
    "divergence_factor": ("10", 10.0),
    "divergence_retries": ("1", 1),
    "check_every": ("5", 5),
    "chain_mode": ("batched", "batched"),
    "compile": (None, True),
    "robustness": (None, True),
    "record_metric": (None, True),
    "localizer": ("euclidean", "euclidean"),
    "integrator": ("leimkuhler-matthews", "leimkuhler-matthews"),
}


def _parse(argv):
    return parse_args(build_parser(), argv)


def test_every_sampler_setting_is_a_flag_in_both_spellings():
    assert set(NON_DEFAULT) == {f.name for f in fields(SamplerConfig)}
    for spell in (lambda n: n.replace("_", "-"), lambda n: n):
        argv = ["validate"]
        for name, (text, _) in NON_DEFAULT.items():
            argv += [f"--{spell(name)}"] + ([text] if text is not None else [])
        cfg = config_from_args(_parse(argv))
        assert {k: getattr(cfg, k) for k in NON_DEFAULT} == {
            k: v for k, (_, v) in NON_DEFAULT.items()
        }
    assert config_from_args(_parse(["validate"])) == SamplerConfig()


def test_help_gives_every_flag_a_text_and_shows_the_defaults():
    parser = build_parser()
    for command in COMMAND_ARGUMENTS:
        sub = parser._subparsers._group_actions[0].choices[command]
        for action in sub._actions:
            if action.option_strings and action.help != "==SUPPRESS==":
                assert action.help, f"{command} {action.option_strings} has no help text"
        text = sub.format_help()
        assert "(default: 4)" in text  # --num-chains
        assert "(default: fisher-burnin)" in text
    estimate = parser._subparsers._group_actions[0].choices["estimate"].format_help()
    assert "(default: 300.0)" in estimate  # --checkpoint-seconds
    calibrate = parser._subparsers._group_actions[0].choices["calibrate"].format_help()
    assert "(default: 0.9)" in calibrate  # --min-acceptance


def test_command_defaults_are_the_library_defaults():
    from hf_llc.calibration import DEFAULT_MIN_ACCEPTANCE
    from hf_llc.validation import DEFAULT_NUM_SAMPLES

    assert _parse(["validate"]).num_samples == DEFAULT_NUM_SAMPLES
    calibrate = _parse(["calibrate", "m", "--dataset", "d"])
    assert calibrate.min_acceptance == DEFAULT_MIN_ACCEPTANCE


def test_seed_is_the_chains_seed_in_every_command():
    for argv in (
        ["validate"],
        ["estimate", "m", "--dataset", "d"],
        ["calibrate", "m", "--dataset", "d"],
    ):
        assert config_from_args(_parse([*argv, "--seed", "4"])).seed == 4
        assert config_from_args(_parse([*argv, "--sampler-seed", "6"])).seed == 6
    args = _parse(["validate", "--seed", "4", "--teacher-seed", "9"])
    assert args.teacher_seed == 9 and config_from_args(args).seed == 4
    assert _parse(["validate"]).teacher_seed == 0


def test_config_file_sets_flags_and_the_command_line_wins(tmp_path):
    path = tmp_path / "llc.yaml"
    path.write_text(
        "num-chains: 3\nnum_draws: 40\nstep_size: 1e-4\npreconditioner: identity\n"
        "mala: true\nwidths: [3, 2, 3]\nquiet: true\n"
    )
    args = _parse(["validate", "--config", str(path), "--num_draws", "9"])
    cfg = config_from_args(args)
    assert (cfg.num_chains, cfg.num_draws, cfg.step_size) == (3, 9, 1e-4)
    assert cfg.preconditioner == "identity" and cfg.mala is True
    assert args.widths == [3, 2, 3] and args.quiet is True
    assert {"num_chains", "num_draws", "widths"} <= args.given
    assert "rank" not in args.given and args.rank is None

    as_json = tmp_path / "llc.json"
    as_json.write_text(json.dumps({"model": "some/model", "dataset": "d.jsonl", "seed": 2}))
    args = _parse(["estimate", "--config", str(as_json)])
    assert args.model == "some/model" and args.dataset == "d.jsonl"
    assert config_from_args(args).seed == 2


@pytest.mark.parametrize(
    "text, match",
    [
        ("num_chainz: 3\n", "unknown setting.*num_chainz"),
        ("num_chains: three\n", "num_chains.*three"),
        ("mala: 1\n", "mala must be true or false"),
        ("preconditioner: adam\n", "preconditioner='adam' is not one of"),
        ("- 1\n- 2\n", "expected a mapping"),
        ("a: [b\n", "not valid YAML/JSON"),
    ],
)
def test_bad_config_files_name_the_setting(tmp_path, capsys, text, match):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(SystemExit) as exc:
        main(["validate", "--config", str(path)])
    assert exc.value.code == 2
    assert __import__("re").search(match, capsys.readouterr().err)


def test_missing_model_or_dataset_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit):
        _parse(["estimate", "--dataset", "d"])
    assert "MODEL is required" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        _parse(["estimate", "m"])
    assert "--dataset is required" in capsys.readouterr().err


def test_loss_fn_and_model_loss_fn_are_alternatives(capsys):
    argv = ["estimate", "m", "--dataset", "d.jsonl", "--loss-fn", "a:b", "--model-loss-fn", "a:c"]
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert "--loss-fn and --model-loss-fn are alternatives" in capsys.readouterr().err


def test_estimate_with_seed_underscored_flags_and_a_config_file(tmp_path, capsys):
    """The issue's command: ``hf-llc estimate M --dataset D --seed 3 --num_chains 2 --config
    llc.yaml`` runs, with the file's settings under the command line's."""
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=24, n_positions=16, n_embd=16, n_layer=1, n_head=2)
    cfg.pad_token_id = 0
    model_dir = tmp_path / "tiny-gpt2"
    GPT2LMHeadModel(cfg).save_pretrained(model_dir)
    word_tokenizer().save_pretrained(model_dir)
    data = tmp_path / "train.jsonl"
    data.write_text("\n".join(json.dumps({"text": t}) for t in texts(40)))
    config = tmp_path / "llc.yaml"
    config.write_text("num_chains: 4\nnum_draws: 12\nnum_burnin: 8\nbatch_size: 8\nquiet: true\n")
    out = tmp_path / "llc.json"
    argv = ["estimate", str(model_dir), "--dataset", str(data), "--seed", "3"]
    argv += ["--num_chains", "2", "--config", str(config), "--output", str(out)]
    assert main(argv) == 0
    result = json.loads(out.read_text())
    assert result["config"]["seed"] == 3
    assert result["config"]["num_chains"] == 2  # the command line over the file's 4
    assert result["config"]["num_draws"] == 12 and result["config"]["batch_size"] == 8
    assert len(result["llc_per_chain"]) == 2


def test_import_and_help_do_not_load_torch():
    """``import hf_llc`` and ``hf-llc --help`` load neither torch nor transformers (which
    with peft installed pulls in the whole Trainer stack): the names load on first use."""
    code = (
        "import sys, hf_llc, hf_llc.cli\n"
        "from hf_llc.cli import build_parser\n"
        "build_parser().format_help()\n"
        "heavy = [m for m in ('torch', 'transformers', 'datasets') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "assert hf_llc.SamplerConfig().num_chains == 4\n"
        "assert 'torch' not in sys.modules\n"
        "hf_llc.estimate_llc\n"
        "assert 'torch' in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_lazy_names_are_the_submodules_objects():
    import hf_llc
    from hf_llc.estimator import estimate_llc
    from hf_llc.models.dln import DLNConfig

    assert hf_llc.estimate_llc is estimate_llc and hf_llc.DLNConfig is DLNConfig
    assert set(hf_llc.__all__) <= set(dir(hf_llc))
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        hf_llc.nope  # noqa: B018
