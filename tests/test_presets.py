"""Named recipes (``SamplerConfig.from_preset``, ``--preset``) and the localizer's metric
(``localizer="euclidean"``)."""

from __future__ import annotations

import os

import pytest
import torch

from hf_llc import SamplerConfig, estimate_llc, make_dln_problem
from hf_llc.cli import build_parser, config_from_args, parse_args
from hf_llc.sampling.config import PRESETS, chain_settings, preset_settings
from hf_llc.validation import per_sample_loss_fn

os.environ["HF_HUB_OFFLINE"] = "1"


def _cli(*argv):
    return config_from_args(parse_args(build_parser(), ["validate", *argv]))


def test_a_preset_sets_its_settings_and_leaves_the_others_at_their_defaults():
    cfg = SamplerConfig.from_preset("language-model")
    settings = preset_settings("language-model")
    assert settings and all(getattr(cfg, k) == v for k, v in settings.items())
    default = SamplerConfig()
    for name, value in default.to_dict().items():
        if name not in settings:
            assert getattr(cfg, name) == value, name


def test_overrides_win_over_the_preset_and_the_preset_is_not_changed():
    cfg = SamplerConfig.from_preset("language-model", num_draws=7, seed=3)
    assert (cfg.num_draws, cfg.seed) == (7, 3)
    assert preset_settings("language-model")["num_draws"] != 7
    preset_settings("language-model")["num_draws"] = 1  # a copy
    assert PRESETS["language-model"]["num_draws"] != 1


def test_an_unknown_preset_names_the_known_ones():
    with pytest.raises(ValueError, match="language-model"):
        SamplerConfig.from_preset("llm")


def test_cli_preset_then_config_file_then_flags(tmp_path):
    assert _cli("--preset", "language-model") == SamplerConfig.from_preset("language-model")
    assert _cli("--preset", "language-model", "--batch-size", "8").batch_size == 8
    path = tmp_path / "llc.yaml"
    path.write_text("preset: language-model\nnum_burnin: 11\n")
    cfg = _cli("--config", str(path), "--num-draws", "5")
    expected = SamplerConfig.from_preset("language-model", num_burnin=11, num_draws=5)
    assert cfg == expected
    assert _cli() == SamplerConfig()  # no preset: the defaults
    with pytest.raises(SystemExit):
        _cli("--preset", "nope")


def test_the_default_localizer_is_left_out_of_a_runs_identity_and_euclidean_is_not():
    # Runs checkpointed and card entries written before the setting existed keep their identity.
    assert "localizer" not in chain_settings(SamplerConfig().to_dict())
    assert chain_settings(SamplerConfig(localizer="euclidean").to_dict())["localizer"] == (
        "euclidean"
    )
    with pytest.raises(ValueError, match="localizer"):
        SamplerConfig(localizer="fisher")


def _estimate(**settings):
    model, data, _ = make_dln_problem([3, 2, 3], 1, "aligned", num_samples=500, seed=0)
    cfg = SamplerConfig(num_chains=1, num_burnin=60, num_draws=40, batch_size=100, **settings)
    return estimate_llc(model, data, cfg, loss_fn=per_sample_loss_fn(model), progress=False)


def test_the_euclidean_localizer_changes_the_fisher_chain_and_nothing_else():
    # With fisher-burnin the two localizers are two targets: the traces differ. With a
    # preconditioner that has no metric (identity) the localizer is Euclidean either way, so
    # the run is bit-identical.
    torch.manual_seed(0)
    metric, euclid = _estimate(), _estimate(localizer="euclidean")
    assert metric.loss_trace.shape == euclid.loss_trace.shape
    assert not torch.equal(torch.as_tensor(metric.loss_trace), torch.as_tensor(euclid.loss_trace))
    plain = _estimate(preconditioner="identity")
    plain_euclid = _estimate(preconditioner="identity", localizer="euclidean")
    assert torch.equal(torch.as_tensor(plain.loss_trace), torch.as_tensor(plain_euclid.loss_trace))


def test_the_language_model_preset_runs_on_a_causal_lm_and_reports_the_half_step():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=50, n_positions=16, n_embd=16, n_layer=1, n_head=2)
    model = GPT2LMHeadModel(config).eval()
    data = {"input_ids": torch.randint(0, 50, (40, 12), generator=torch.Generator().manual_seed(1))}
    data["labels"] = data["input_ids"]
    cfg = SamplerConfig.from_preset("language-model", num_chains=2, num_burnin=6, num_draws=4)
    result = estimate_llc(model, data, cfg, progress=False)
    assert result.config["batch_size"] == 32 and result.config["step_scale"] == 0.6
    assert result.diagnostics["chain_mode"] == "batched"
    report = result.diagnostics["robustness"]
    assert report is not None and "relative_change" in report
