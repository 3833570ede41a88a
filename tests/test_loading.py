"""Tests for hf_llc.loading.load_checkpoint (offline, tiny models built from configs)."""

from __future__ import annotations

import json
import logging
import os

import pytest
import torch
from transformers import (
    AutoModel,
    AutoModelForCausalLM,
    BertConfig,
    BertForMaskedLM,
    BertForSequenceClassification,
    BertModel,
    GPT2Config,
    GPT2LMHeadModel,
)

from hf_llc.loading import TASKS, load_checkpoint, resolve_auto_class


def _gpt2_config() -> GPT2Config:
    return GPT2Config(
        n_layer=1,
        n_embd=16,
        n_head=2,
        vocab_size=64,
        n_positions=32,
        bos_token_id=0,
        eos_token_id=0,
    )


def _bert_config(**kw) -> BertConfig:
    return BertConfig(
        vocab_size=64,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
        **kw,
    )


def _assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], rtol=0, atol=0, msg=k)


@pytest.fixture
def gpt2_dir(tmp_path):
    torch.manual_seed(0)
    model = GPT2LMHeadModel(_gpt2_config())
    path = tmp_path / "gpt2"
    model.save_pretrained(path)
    return path, model


def test_causal_lm_round_trip(gpt2_dir, caplog):
    path, original = gpt2_dir
    with caplog.at_level(logging.WARNING, logger="hf_llc"):
        model = load_checkpoint(path)
    assert type(model) is GPT2LMHeadModel
    assert not model.training
    assert all(p.dtype == torch.float32 for p in model.parameters())
    _assert_same_weights(original, model)
    # Tied lm_head must not be reported as missing (no false positive on a clean round trip).
    assert "randomly initialised" not in caplog.text
    # str paths and an explicit task give the same thing
    again = load_checkpoint(str(path), task="causal_lm")
    assert type(again) is GPT2LMHeadModel


def test_half_precision_checkpoint_loaded_as_float32(tmp_path):
    model = GPT2LMHeadModel(_gpt2_config()).to(torch.bfloat16)
    model.save_pretrained(tmp_path / "bf16")
    loaded = load_checkpoint(tmp_path / "bf16")
    assert all(p.dtype == torch.float32 for p in loaded.parameters())


def test_bare_encoder_into_masked_lm_refused_then_allowed(tmp_path, caplog):
    torch.manual_seed(0)
    bert = BertModel(_bert_config())
    bert.save_pretrained(tmp_path / "bert")

    # Inferred from architectures: bare BertModel -> AutoModel, loads cleanly.
    base = load_checkpoint(tmp_path / "bert")
    assert type(base) is BertModel
    _assert_same_weights(bert, base)

    with pytest.raises(ValueError) as err:
        load_checkpoint(tmp_path / "bert", task="masked-lm")
    msg = str(err.value)
    assert "cls.predictions.transform.dense.weight" in msg
    assert "meaningless" in msg and "allow_missing_weights=True" in msg

    with caplog.at_level(logging.WARNING, logger="hf_llc"):
        mlm = load_checkpoint(tmp_path / "bert", task="masked-lm", allow_missing_weights=True)
    (notice,) = [r for r in caplog.records if "randomly initialised" in r.getMessage()]
    assert notice.levelno == logging.WARNING and notice.name == "hf_llc.loading"
    assert type(mlm) is BertForMaskedLM
    assert not mlm.training


def test_masked_lm_round_trip_has_no_false_positive(tmp_path, caplog):
    model = BertForMaskedLM(_bert_config())
    model.save_pretrained(tmp_path / "mlm")
    with caplog.at_level(logging.WARNING, logger="hf_llc"):
        loaded = load_checkpoint(tmp_path / "mlm")
    assert type(loaded) is BertForMaskedLM
    _assert_same_weights(model, loaded)
    assert "randomly initialised" not in caplog.text


def _save_pickle_only(model: torch.nn.Module, path) -> None:
    # transformers 5's save_pretrained always writes safetensors (no safe_serialization
    # argument any more), so write the legacy pytorch_model.bin by hand.
    os.makedirs(path, exist_ok=True)
    model.config.architectures = [type(model).__name__]  # model.save_pretrained sets this
    model.config.save_pretrained(path)
    state = {k: v.clone() for k, v in model.state_dict().items()}  # un-share tied tensors
    torch.save(state, os.path.join(path, "pytorch_model.bin"))


def test_pickle_only_refused_by_default_and_allowed_with_flag(tmp_path):
    torch.manual_seed(0)
    model = GPT2LMHeadModel(_gpt2_config())
    path = tmp_path / "pickle"
    _save_pickle_only(model, path)
    assert sorted(os.listdir(path)) == ["config.json", "pytorch_model.bin"]

    with pytest.raises(ValueError, match="allow_pickle=True"):
        load_checkpoint(path)

    loaded = load_checkpoint(path, allow_pickle=True)
    assert type(loaded) is GPT2LMHeadModel
    _assert_same_weights(model, loaded)


def test_safetensors_preferred_when_both_present(tmp_path):
    torch.manual_seed(0)
    good = GPT2LMHeadModel(_gpt2_config())
    path = tmp_path / "both"
    good.save_pretrained(path)
    torch.manual_seed(1)
    other = GPT2LMHeadModel(_gpt2_config())
    torch.save(other.state_dict(), os.path.join(path, "pytorch_model.bin"))
    for allow_pickle in (False, True):
        _assert_same_weights(good, load_checkpoint(path, allow_pickle=allow_pickle))


@pytest.mark.parametrize(
    "where", ["/definitely/not/here/model", "./not-here", "not a repo id!", "no-org/not-cached"]
)
def test_missing_path_gives_clear_error(where, tmp_path):
    with pytest.raises(ValueError, match="not found locally"):
        load_checkpoint(where)


def test_missing_tmp_subfolder(tmp_path):
    with pytest.raises(ValueError, match="not found locally"):
        load_checkpoint(tmp_path / "nope")


def test_folder_without_config_or_weights(tmp_path):
    with pytest.raises(ValueError, match="config.json"):
        load_checkpoint(tmp_path)
    cfg = _gpt2_config()
    cfg.architectures = ["GPT2LMHeadModel"]
    cfg.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="no model weights"):
        load_checkpoint(tmp_path)


def test_unknown_task(gpt2_dir):
    path, _ = gpt2_dir
    with pytest.raises(ValueError, match="Supported tasks") as err:
        load_checkpoint(path, task="telepathy")
    assert "causal-lm" in str(err.value) and "masked-lm" in str(err.value)


def test_sequence_classifier_picked_from_architectures(tmp_path):
    torch.manual_seed(0)
    model = BertForSequenceClassification(_bert_config(num_labels=3))
    model.save_pretrained(tmp_path / "cls")
    loaded = load_checkpoint(tmp_path / "cls")
    assert type(loaded) is BertForSequenceClassification
    assert loaded.config.num_labels == 3
    _assert_same_weights(model, loaded)


def _write_config(path, cfg: dict) -> None:
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "config.json"), "w") as fh:
        json.dump(cfg, fh)


def test_unknown_model_type_requires_trust_remote_code(tmp_path):
    _write_config(
        tmp_path / "custom",
        {"model_type": "my-fancy-net", "architectures": ["MyFancyNetForCausalLM"]},
    )
    with pytest.raises(ValueError, match=r"trust_remote_code=True"):
        load_checkpoint(tmp_path / "custom")


def test_auto_map_requires_trust_remote_code(tmp_path):
    _write_config(
        tmp_path / "remote",
        {
            "model_type": "my-fancy-net",
            "architectures": ["MyFancyNetForCausalLM"],
            "auto_map": {
                "AutoConfig": "modeling_fancy.FancyConfig",
                "AutoModelForCausalLM": "modeling_fancy.MyFancyNetForCausalLM",
            },
        },
    )
    with pytest.raises(ValueError, match=r"auto_map.*trust_remote_code=True"):
        load_checkpoint(tmp_path / "remote")


@pytest.mark.parametrize(
    ("config", "task", "expected"),
    [
        ({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}, None, "causal-lm"),
        ({"model_type": "bert", "architectures": ["BertModel"]}, None, "base"),
        ({"model_type": "t5", "architectures": ["T5ForConditionalGeneration"]}, None, "seq2seq-lm"),
        (
            {"model_type": "x", "architectures": ["XForTokenClassification"]},
            None,
            "token-classification",
        ),
        (
            {"model_type": "x", "architectures": ["XForQuestionAnswering"]},
            None,
            "question-answering",
        ),
        (
            {"model_type": "vit", "architectures": ["ViTForImageClassification"]},
            None,
            "image-classification",
        ),
        ({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}, "base", "base"),
        ({"model_type": "bert"}, "sequence_classification", "sequence-classification"),
    ],
)
def test_resolve_auto_class(config, task, expected):
    import transformers

    assert resolve_auto_class(config, task) is getattr(transformers, TASKS[expected][0])


def test_resolve_auto_class_errors():
    with pytest.raises(ValueError, match="pass task="):
        resolve_auto_class({"model_type": "bert"})
    with pytest.raises(ValueError, match="Supported tasks|one of"):
        resolve_auto_class({"model_type": "x", "architectures": ["XDoubleHeads"]})


def test_auto_classes_used_are_real():
    assert resolve_auto_class({"architectures": ["FooForCausalLM"]}) is AutoModelForCausalLM
    assert resolve_auto_class({"architectures": ["FooModel"]}) is AutoModel


def _fake_hub_cache(cache, repo_id: str, src) -> str:
    """Lay out `src`'s files as huggingface_hub's cache would after a download."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snap = repo / "snapshots" / commit
    snap.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    for name in os.listdir(src):
        (snap / name).write_bytes((src / name).read_bytes())
    return commit


def test_offline_hub_cache(tmp_path, monkeypatch, gpt2_dir):
    import huggingface_hub

    if not huggingface_hub.is_offline_mode():
        pytest.skip("needs HF_HUB_OFFLINE=1 (set by conftest)")
    path, original = gpt2_dir
    cache = tmp_path / "hub"
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    commit = _fake_hub_cache(cache, "tiny-org/tiny-gpt2", path)

    model = load_checkpoint("tiny-org/tiny-gpt2")
    assert type(model) is GPT2LMHeadModel
    _assert_same_weights(original, model)
    _assert_same_weights(original, load_checkpoint("tiny-org/tiny-gpt2", revision=commit))

    with pytest.raises(ValueError, match="not found locally.*offline"):
        load_checkpoint("tiny-org/other-model")

    pickle_src = tmp_path / "pickle-src"
    _save_pickle_only(original, pickle_src)
    _fake_hub_cache(cache, "tiny-org/pickled", pickle_src)
    with pytest.raises(ValueError, match="allow_pickle=True"):
        load_checkpoint("tiny-org/pickled")
    _assert_same_weights(original, load_checkpoint("tiny-org/pickled", allow_pickle=True))


def test_registered_dln_checkpoint_loads_without_remote_code(tmp_path):
    # hf_llc registers its deep linear network with AutoConfig/AutoModel at import, so a saved
    # DLN is a known architecture: no trust_remote_code needed (no remote code exists).
    from hf_llc import make_dln_problem

    model, _, _ = make_dln_problem([3, 2, 3], 1, "aligned", num_samples=10)
    model.save_pretrained(tmp_path)
    loaded = load_checkpoint(tmp_path)
    assert type(loaded).__name__ == "DLNModel"
    for a, b in zip(model.parameters(), loaded.parameters()):
        assert torch.equal(a, b)
