"""Weight-refined LLCs: ``parameters=`` / ``--parameters`` choose the sampled weights; the
others stay at w* throughout, and every ``requires_grad`` flag is restored afterwards."""

from __future__ import annotations

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402
from datasets import Dataset  # noqa: E402
from tiny_text import texts, word_tokenizer  # noqa: E402
from transformers import GPT2Config, GPT2LMHeadModel  # noqa: E402

from hf_llc import SamplerConfig, estimate_llc, write_llc_to_model_card  # noqa: E402
from hf_llc.cli import main  # noqa: E402
from hf_llc.estimator import check_inputs  # noqa: E402
from hf_llc.models.dln import make_dln_problem  # noqa: E402
from hf_llc.selection import select_parameters  # noqa: E402

TINY = SamplerConfig(num_chains=2, num_burnin=3, num_draws=5, batch_size=4, seed=1)


@pytest.fixture()
def gpt2():
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=24, n_positions=16, n_embd=16, n_layer=2, n_head=2)
    cfg.pad_token_id = 0
    return GPT2LMHeadModel(cfg)


@pytest.fixture(scope="module")
def data():
    return Dataset.from_dict({"text": texts(16)})


def _numel(model, prefix):
    return sum(p.numel() for n, p in model.named_parameters() if n.startswith(prefix))


def test_a_layer_alone_is_sampled_and_everything_else_stays_at_w_star(gpt2, data):
    before = {n: p.detach().clone() for n, p in gpt2.named_parameters()}
    gpt2.transformer.wpe.weight.requires_grad_(False)  # a flag of the user's, restored too
    flags = {n: p.requires_grad for n, p in gpt2.named_parameters()}
    layer = "transformer.h.1."
    others = [(n, p) for n, p in gpt2.named_parameters() if not n.startswith(layer)]
    moved = []

    def loss_fn(outputs, batch):
        # Called at every chain step: the unselected weights must be exactly w* then.
        moved.extend(n for n, p in others if not torch.equal(p.detach(), before[n]))
        return outputs.loss

    result = estimate_llc(
        gpt2,
        data,
        TINY,
        tokenizer=word_tokenizer(),
        parameters=layer + "*",
        loss_fn=loss_fn,
        progress=False,
    )
    assert result.num_params == _numel(gpt2, layer)
    sampled = result.diagnostics["parameters"]
    assert sampled["selection"] == [layer + "*"]
    assert sampled["names"] == [n for n, _ in gpt2.named_parameters() if n.startswith(layer)]
    assert sampled["num_params"] == result.num_params
    assert np.isfinite(result.llc_mean)
    assert not moved
    for n, p in gpt2.named_parameters():  # weights and flags as they were
        assert torch.equal(p.detach(), before[n]), n
        assert p.requires_grad == flags[n], n


def test_several_patterns_a_predicate_and_tied_weights(gpt2):
    # Two patterns: the union, each parameter once.
    both = select_parameters(gpt2, ["transformer.h.0.attn.*", "transformer.h.0.*"])
    assert both["num_params"] == _numel(gpt2, "transformer.h.0.")
    # A predicate on (name, parameter).
    biases = select_parameters(gpt2, lambda name, p: name.endswith(".bias"))
    assert biases["names"] == [n for n, _ in gpt2.named_parameters() if n.endswith(".bias")]
    # GPT-2's output layer is the input embedding: either name selects that one parameter,
    # reported under the name named_parameters() gives it.
    tied = select_parameters(gpt2, "lm_head.weight")
    assert tied["names"] == ["transformer.wte.weight"]
    assert tied["num_params"] == gpt2.transformer.wte.weight.numel()


@pytest.mark.parametrize(
    ("parameters", "match"),
    [
        ("encoder.*", r"the pattern 'encoder\.\*' matches no parameter of GPT2LMHeadModel"),
        ([], r"pass glob patterns over model\.named_parameters\(\) names"),
        ([3], r"pass glob patterns"),
        (lambda name, p: False, r"selects no parameter"),
    ],
)
def test_bad_selections_are_refused_before_any_work(gpt2, data, parameters, match):
    with pytest.raises(ValueError, match=match):
        check_inputs(gpt2, data, TINY, tokenizer=word_tokenizer(), parameters=parameters)
    with pytest.raises(ValueError, match=match):
        estimate_llc(gpt2, data, TINY, tokenizer=word_tokenizer(), parameters=parameters)
    assert all(p.requires_grad for p in gpt2.parameters())


def test_batched_chains_of_a_refined_llc_match_the_sequential_ones():
    # Tolerance as in tests/test_batched.py: bmm under vmap rounds differently from a plain
    # matmul (~1e-7 relative per step); 1e-4 is far below the differences between chains.
    model, dataset, _ = make_dln_problem([4, 3, 4], construction="full_rank", num_samples=256)
    runs = {}
    for mode in ("sequential", "batched"):
        cfg = SamplerConfig(num_chains=3, num_burnin=20, num_draws=30, batch_size=32)
        runs[mode] = estimate_llc(
            model, dataset, SamplerConfig(**{**cfg.to_dict(), "chain_mode": mode}),
            parameters="layers.1.*", progress=False,
        )  # fmt: skip
    assert runs["batched"].diagnostics["chain_mode"] == "batched"
    assert runs["batched"].num_params == runs["sequential"].num_params == 12
    np.testing.assert_allclose(
        runs["batched"].loss_trace, runs["sequential"].loss_trace, rtol=1e-4, atol=1e-9
    )


def test_refined_and_whole_model_llcs_are_separate_card_entries(gpt2, data, tmp_path):
    tok = word_tokenizer()
    whole = estimate_llc(gpt2, data, TINY, tokenizer=tok, progress=False)
    layer = estimate_llc(gpt2, data, TINY, tokenizer=tok, parameters="transformer.h.0.*",
                         progress=False)  # fmt: skip
    assert whole.diagnostics["parameters"] is None
    assert whole.num_params == sum(p.numel() for p in gpt2.parameters())
    for result in (whole, layer, layer):  # the refined one twice: it replaces itself
        write_llc_to_model_card(tmp_path, result, dataset_name="texts")
    meta = yaml.safe_load((tmp_path / "README.md").read_text().split("---\n")[1])
    entries = meta["hf_llc"]
    assert len(entries) == 2
    assert "parameters" not in entries[0]
    assert entries[1]["parameters"] == ["transformer.h.0.*"]
    assert entries[1]["num_params"] == _numel(gpt2, "transformer.h.0.")
    assert entries[0]["settings_id"] != entries[1]["settings_id"]


def test_cli_parameters_flag_and_config_file(gpt2, tmp_path):
    folder = tmp_path / "model"
    gpt2.save_pretrained(folder)
    word_tokenizer().save_pretrained(folder)
    rows = tmp_path / "texts.jsonl"
    rows.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts(16)))
    out = tmp_path / "llc.json"
    argv = ["estimate", str(folder), "--dataset", str(rows), "--output", str(out), "--quiet"]
    argv += ["--num-chains", "2", "--num-burnin", "3", "--num-draws", "5", "--batch-size", "4"]
    assert main([*argv, "--parameters", "transformer.h.0.attn.*,transformer.h.1.mlp.*"]) == 0
    result = json.loads(out.read_text())
    expected = _numel(gpt2, "transformer.h.0.attn.") + _numel(gpt2, "transformer.h.1.mlp.")
    assert result["num_params"] == expected
    config = tmp_path / "llc.yaml"
    config.write_text("parameters: ['transformer.h.1.*']\n")
    assert main([*argv, "--config", str(config)]) == 0
    assert json.loads(out.read_text())["num_params"] == _numel(gpt2, "transformer.h.1.")
