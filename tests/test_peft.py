"""peft adapters: an adapter folder loads on its base model with only the adapter trainable,
estimate_llc samples the adapter alone, and the adapter is described in the result."""

from __future__ import annotations

import json
import logging
import math

import pytest
import torch
from datasets import Dataset
from tiny_text import texts, word_tokenizer
from transformers import GPT2Config, GPT2LMHeadModel

from hf_llc import SamplerConfig, estimate_llc, load_checkpoint
from hf_llc.loading import tokenizer_path
from hf_llc.peft_support import adapter_info, is_peft_model

peft = pytest.importorskip("peft")

TINY = SamplerConfig(num_chains=2, num_burnin=3, num_draws=5, batch_size=4)
TEXTS = texts(16)


def _save_base(folder) -> GPT2LMHeadModel:
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=24, n_positions=16, n_embd=16, n_layer=1, n_head=2)
    cfg.pad_token_id = 0
    model = GPT2LMHeadModel(cfg)
    model.save_pretrained(folder)
    return model


def _lora(base_dir, **overrides):
    """A LoRA on the saved base, with random (non-zero) adapter weights, as after training."""
    base = GPT2LMHeadModel.from_pretrained(base_dir)
    settings = dict(
        r=2,
        lora_alpha=4,
        lora_dropout=0.0,
        target_modules=["c_attn"],
        task_type="CAUSAL_LM",
        init_lora_weights=False,
    )
    torch.manual_seed(1)
    return peft.get_peft_model(base, peft.LoraConfig(**(settings | overrides)))


def _lora_numel(model) -> int:
    return sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)


@pytest.fixture()
def saved(tmp_path):
    """(base folder, adapter folder, the saved LoRA model)."""
    base_dir, adapter_dir = tmp_path / "base", tmp_path / "adapter"
    _save_base(base_dir)
    lora = _lora(base_dir)
    lora.save_pretrained(adapter_dir)
    return base_dir, adapter_dir, lora


def test_an_adapter_folder_loads_with_only_the_adapter_trainable(saved):
    base_dir, adapter_dir, lora = saved
    assert not (adapter_dir / "config.json").exists()
    model = load_checkpoint(adapter_dir)
    assert is_peft_model(model) and not model.training
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    # The adapter's saved weights, on the base model's saved weights.
    saved_state = dict(lora.named_parameters())
    for name, p in model.named_parameters():
        assert torch.equal(p, saved_state[name]), name
    base = GPT2LMHeadModel.from_pretrained(base_dir)
    assert torch.equal(model.get_base_model().transformer.wte.weight, base.transformer.wte.weight)


def test_estimate_llc_of_an_adapter_folder_samples_the_adapter_alone(saved):
    base_dir, adapter_dir, _ = saved
    model = load_checkpoint(adapter_dir)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    data = Dataset.from_dict({"text": TEXTS})
    result = estimate_llc(model, data, TINY, tokenizer=word_tokenizer(), progress=False)
    assert math.isfinite(result.llc_mean)
    assert result.num_params == _lora_numel(model)
    assert result.num_params < sum(p.numel() for p in model.parameters()) / 10
    for name, p in model.named_parameters():  # the weights are exactly w* afterwards
        assert torch.equal(p, before[name]), name
    info = result.diagnostics["adapter"]
    assert info == adapter_info(model)
    assert info["peft_type"] == "LORA" and info["task_type"] == "CAUSAL_LM"
    assert info["base_model"] == str(base_dir)
    assert (info["r"], info["lora_alpha"], info["target_modules"]) == (2, 4, ["c_attn"])
    assert info["num_adapter_params"] == info["num_trainable_params"] == result.num_params
    json.dumps(result.to_dict()["diagnostics"]["adapter"])  # plain JSON for the card


def test_a_peft_model_built_in_python(tmp_path):
    base_dir = tmp_path / "base"
    _save_base(base_dir)
    lora = _lora(base_dir, target_modules=["c_attn", "c_proj"], r=3).eval()
    frozen = {n: p.detach().clone() for n, p in lora.named_parameters() if not p.requires_grad}
    data = Dataset.from_dict({"text": TEXTS})
    result = estimate_llc(lora, data, TINY, tokenizer=word_tokenizer(), progress=False)
    assert (
        result.num_params
        == _lora_numel(lora)
        == result.diagnostics["adapter"]["num_adapter_params"]
    )
    assert result.diagnostics["adapter"]["target_modules"] == ["c_attn", "c_proj"]
    for name, p in lora.named_parameters():
        if name in frozen:
            assert torch.equal(p, frozen[name]), name


def test_tokenizer_path_of_an_adapter(saved, tmp_path):
    base_dir, adapter_dir, _ = saved
    assert tokenizer_path(adapter_dir) == (str(base_dir), None)
    assert tokenizer_path(base_dir) == (str(base_dir), None)
    assert tokenizer_path(adapter_dir, base_model=tmp_path / "elsewhere")[0] == str(
        tmp_path / "elsewhere"
    )
    word_tokenizer().save_pretrained(adapter_dir)  # a run that changed the tokenizer
    assert tokenizer_path(adapter_dir) == (str(adapter_dir), None)


def test_the_base_model_can_be_given_and_a_missing_one_is_named(saved, tmp_path):
    base_dir, adapter_dir, _ = saved
    moved = tmp_path / "moved_base"
    base_dir.rename(moved)
    with pytest.raises(ValueError, match=r"base model of the adapter .*base_model=\.\.\."):
        load_checkpoint(adapter_dir)
    model = load_checkpoint(adapter_dir, base_model=moved)
    assert is_peft_model(model)
    with pytest.raises(ValueError, match="base_model=.* is for adapter folders"):
        load_checkpoint(moved, base_model=moved)


def test_adapter_weights_pickle_only_or_incomplete_are_refused(saved, caplog):
    from safetensors.torch import load_file, save_file

    _, adapter_dir, _ = saved
    weights = adapter_dir / "adapter_model.safetensors"
    state = load_file(weights)
    # A key left out: that adapter weight would keep its initial value.
    first = sorted(state)[0]
    save_file({k: v for k, v in state.items() if k != first}, weights)
    with pytest.raises(ValueError, match="lacks weights its config declares"):
        load_checkpoint(adapter_dir)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="hf_llc"):
        load_checkpoint(adapter_dir, allow_missing_weights=True)
    assert any("lacks weights its config declares" in r.getMessage() for r in caplog.records)
    # Only pickle weights: refused without allow_pickle.
    weights.unlink()
    torch.save(state, adapter_dir / "adapter_model.bin")
    with pytest.raises(ValueError, match=r"only has pickle weights .*allow_pickle=True"):
        load_checkpoint(adapter_dir)
    assert is_peft_model(load_checkpoint(adapter_dir, allow_pickle=True))


def test_a_frozen_adapter_is_a_clear_error(saved):
    base_dir, adapter_dir, _ = saved
    base = GPT2LMHeadModel.from_pretrained(base_dir)
    frozen = peft.PeftModel.from_pretrained(base, adapter_dir)  # peft's default: inference
    assert not any(p.requires_grad for p in frozen.parameters())
    with pytest.raises(ValueError, match=r"adapter is frozen .*is_trainable=True"):
        estimate_llc(
            frozen,
            Dataset.from_dict({"text": TEXTS}),
            TINY,
            tokenizer=word_tokenizer(),
            progress=False,
        )
