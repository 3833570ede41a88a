"""Batched chains for transformers: GPT-2, Llama (grouped-query attention) and BERT under vmap.

Under ``chain_mode="auto"`` these models now run their chains batched: their SDPA attention is
switched, for the run only, to a mask path free of data-dependent branches
(:mod:`hf_llc._attention`). Chain c consumes its own generator exactly as the sequential chain
c does, so the two runs differ only by float rounding: the batched attention builds an explicit
boolean mask and runs SDPA's math backend, where the sequential run may use SDPA's fused kernel
with ``is_causal`` (~1e-7 relative per evaluation in fp32), and batched matrix products round
differently from plain ones. Over these short runs (~60 steps, contracting localized chains)
the measured differences stay below 1e-5 relative; RTOL = 1e-4 leaves 10× room and is still
over 100× smaller than the differences between chains, which any mix-up of generators, data
order or step sizes would produce.
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import numpy as np
import pytest
import torch
from datasets import Dataset
from tiny_text import tiny_bert_config
from transformers import (
    BertForSequenceClassification,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
)

from hf_llc import SamplerConfig, estimate_llc
from hf_llc._attention import BATCHED_ATTENTION, batched_attention

RTOL = 1e-4
VOCAB, LENGTH, ROWS = 24, 10, 96


def _gpt2():
    cfg = GPT2Config(vocab_size=VOCAB, n_positions=16, n_embd=16, n_layer=2, n_head=2)
    return GPT2LMHeadModel(cfg)


def _llama():
    cfg = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,  # grouped-query attention
        max_position_embeddings=16,
    )
    return LlamaForCausalLM(cfg)


def _bert():
    return BertForSequenceClassification(tiny_bert_config(num_labels=3))


def _dataset(kind: str) -> Dataset:
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(3, VOCAB, (ROWS, LENGTH), generator=gen)
    # Rows of different lengths: padding at the end of every third row, so the mask is real.
    mask = torch.ones_like(ids)
    mask[::3, LENGTH - 3 :] = 0
    ids[mask == 0] = 0
    columns = {"input_ids": ids.tolist(), "attention_mask": mask.tolist()}
    if kind == "bert":
        columns["labels"] = (ids[:, 0] % 3).tolist()
    return Dataset.from_dict(columns)


MODELS = {"gpt2": _gpt2, "llama": _llama, "bert": _bert}


def _run(model, dataset, mode, burnin=20, draws=40, **kwargs):
    # A fixed step and no preconditioner: at these randomly initialised (untrained) models the
    # default recipe's steps are large enough early in burn-in that the chains are not yet
    # contracting and rounding differences grow (the adaptive step sizes and preconditioners
    # are compared batched against sequential on the trained DLNs of test_batched.py). Here
    # the chains contract, so the comparison isolates the batched evaluation itself.
    cfg = SamplerConfig(
        num_chains=3,
        num_burnin=burnin,
        num_draws=draws,
        batch_size=16,
        step_size=1e-4,
        preconditioner="identity",
        chain_mode=mode,
    )
    return estimate_llc(model, dataset, cfg, progress=False, **kwargs)


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_auto_batches_transformers_and_matches_sequential(kind):
    torch.manual_seed(0)
    model = MODELS[kind]().eval()
    assert model.config._attn_implementation == "sdpa"
    dataset = _dataset(kind)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    bat = _run(model, dataset, "auto")  # chains batched
    seq = _run(model, dataset, "sequential")
    assert bat.diagnostics["chain_mode"] == "batched"
    assert seq.diagnostics["chain_mode"] == "sequential"
    # The model is as it was: attention implementation restored, weights untouched.
    assert model.config._attn_implementation == "sdpa"
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]), n
    np.testing.assert_allclose(bat.loss_trace, seq.loss_trace, rtol=RTOL, atol=1e-9)
    np.testing.assert_allclose(bat.llc_per_chain, seq.llc_per_chain, rtol=RTOL)
    rows = seq.loss_trace
    assert np.abs(rows[0] - rows[1]).max() > 1e2 * RTOL * np.abs(rows).max()


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_batched_attention_is_exact_and_restores_the_model(kind):
    torch.manual_seed(0)
    model = MODELS[kind]().eval()
    batch = {k: torch.tensor(v) for k, v in _dataset(kind)[:6].items()}
    if kind != "bert":
        batch["labels"] = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    with torch.no_grad():
        plain = model(**batch).logits
        with batched_attention(model):
            assert model.config._attn_implementation == BATCHED_ATTENTION
            switched = model(**batch).logits
    assert model.config._attn_implementation == "sdpa"
    keep = batch["attention_mask"].bool() if kind != "bert" else slice(None)
    torch.testing.assert_close(switched[keep], plain[keep], rtol=1e-5, atol=1e-6)


def test_models_on_other_attention_implementations_are_left_alone():
    config = GPT2Config(vocab_size=VOCAB, n_positions=16, n_embd=16, n_layer=1, n_head=2)
    config._attn_implementation = "eager"
    model = GPT2LMHeadModel(config)
    with batched_attention(model):
        assert model.config._attn_implementation == "eager"
    assert model.config._attn_implementation == "eager"


def test_a_head_of_a_transformer_runs_batched_and_matches_sequential():
    # A partially sampled parameter (one head's slices of the fused c_attn and of c_proj)
    # under vmap on a real transformer; same tolerance and reasoning as above.
    torch.manual_seed(0)
    model = _gpt2().eval()
    dataset = _dataset("gpt2")
    spec = "transformer.h.0.attn:head=1"
    runs = {m: _run(model, dataset, m, 10, 20, parameters=spec) for m in ("auto", "sequential")}
    bat, seq = runs["auto"], runs["sequential"]
    assert bat.diagnostics["chain_mode"] == "batched"
    width, head_dim = 16, 8  # n_embd 16, 2 heads
    # q, k and v columns of c_attn with their bias entries, and the head's rows of c_proj.
    assert bat.num_params == seq.num_params == 3 * (width + 1) * head_dim + head_dim * width
    np.testing.assert_allclose(bat.loss_trace, seq.loss_trace, rtol=RTOL, atol=1e-9)
    np.testing.assert_allclose(bat.llc_per_chain, seq.llc_per_chain, rtol=RTOL)
