"""Any PreTrainedModel + Dataset: adapters, token weighting, the `estimate` CLI and the card."""

from __future__ import annotations

import json
import math

import pytest
import torch
from datasets import Dataset
from tiny_text import texts, tiny_bert_config, word_tokenizer
from transformers import (
    BertForSequenceClassification,
    BertModel,
    GPT2Config,
    GPT2LMHeadModel,
)

from hf_llc import SamplerConfig, estimate_llc
from hf_llc.adapters import default_loss_fn, prepare_dataset
from hf_llc.cli import main
from hf_llc.modelcard import read_llc_from_model_card

TEXTS = texts(48)
SHORT = SamplerConfig(num_chains=2, num_burnin=10, num_draws=15, batch_size=8)


_tokenizer = word_tokenizer


def _gpt2(vocab=24):
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=vocab, n_positions=16, n_embd=16, n_layer=1, n_head=2)
    cfg.pad_token_id = 0
    return GPT2LMHeadModel(cfg).eval()


def test_causal_lm_token_weighting_gives_the_dataset_mean_token_loss():
    """L_n is the mean token loss, whatever the padding: the same texts padded to a longer
    max_length give the same L_n(w*), equal to a direct token-by-token computation."""
    tok, model = _tokenizer(), _gpt2()
    data = Dataset.from_dict({"text": TEXTS})
    prepared = prepare_dataset(model, data, tokenizer=tok)
    loss_fn = default_loss_fn(model, prepared)
    cols = prepared.columns
    with torch.no_grad():
        out = model(input_ids=cols["input_ids"], attention_mask=cols["attention_mask"])
        per_sample = loss_fn(out, cols)
        logits, labels = out.logits[:, :-1], cols["labels"][:, 1:]
        tokens = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), reduction="none"
        )[labels.reshape(-1) != -100]
    assert per_sample.mean().item() == pytest.approx(tokens.mean().item(), rel=1e-5)
    # Extra padding columns change nothing.
    cols2 = {
        k: torch.nn.functional.pad(v, (0, 5), value=0 if k != "labels" else -100)
        for k, v in cols.items()
    }
    with torch.no_grad():
        out2 = model(input_ids=cols2["input_ids"], attention_mask=cols2["attention_mask"])
        per2 = loss_fn(out2, cols2)
    assert per2.mean().item() == pytest.approx(per_sample.mean().item(), rel=1e-5)

    result = estimate_llc(model, data, SHORT, tokenizer=tok, progress=False)
    assert result.init_loss == pytest.approx(tokens.mean().item(), rel=1e-5)
    assert result.llc_paired_mean is not None  # per-sample losses → cache + paired estimator


def test_sequence_classifier_with_a_label_column():
    torch.manual_seed(0)
    cfg = tiny_bert_config(num_labels=3)
    model = BertForSequenceClassification(cfg).eval()
    data = Dataset.from_dict({"text": TEXTS, "label": [i % 3 for i in range(len(TEXTS))]})
    result = estimate_llc(model, data, SHORT, tokenizer=_tokenizer(), progress=False)
    assert math.isfinite(result.llc_mean)
    with torch.no_grad():
        enc = _tokenizer()(TEXTS, padding=True, return_tensors="pt")
        ref = model(**enc, labels=torch.tensor([i % 3 for i in range(len(TEXTS))])).loss
    assert result.init_loss == pytest.approx(ref.item(), rel=1e-5)


def test_bare_model_with_a_custom_loss_fn_and_model_loss_fn():
    torch.manual_seed(0)
    cfg = tiny_bert_config()
    model = BertModel(cfg).eval()
    tok = _tokenizer()
    enc = tok(TEXTS, padding=True)
    data = Dataset.from_dict({**enc, "target": [[float(i % 2)] * 16 for i in range(len(TEXTS))]})

    def loss_fn(outputs, batch):
        return ((outputs.pooler_output - batch["target"]) ** 2).sum(-1)

    r1 = estimate_llc(model, data, SHORT, loss_fn=loss_fn, progress=False)

    def model_loss_fn(m, batch):
        out = m(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        return loss_fn(out, batch)

    r2 = estimate_llc(model, data, SHORT, model_loss_fn=model_loss_fn, progress=False)
    assert r1.init_loss == pytest.approx(r2.init_loss, rel=1e-6)
    assert r1.llc_per_chain == pytest.approx(r2.llc_per_chain, rel=1e-4)


def test_raw_text_without_tokenizer_is_a_clear_error():
    with pytest.raises(ValueError, match="tokenizer"):
        estimate_llc(_gpt2(), Dataset.from_dict({"text": TEXTS}), SHORT, progress=False)


def test_num_samples_larger_than_the_data_is_rejected():
    with pytest.raises(ValueError, match="num_samples"):
        estimate_llc(
            _gpt2(),
            Dataset.from_dict({"text": TEXTS}),
            SHORT,
            tokenizer=_tokenizer(),
            num_samples=1000,
            progress=False,
        )


def test_cli_estimate_end_to_end_writes_json_plot_and_card(tmp_path, capsys):
    model_dir = tmp_path / "tiny-gpt2"
    _gpt2().save_pretrained(model_dir)
    _tokenizer().save_pretrained(model_dir)
    (model_dir / "README.md").write_text(
        "---\nlicense: mit\ntags:\n- tiny\n---\n# Tiny\n\nHello.\n"
    )
    data = tmp_path / "train.jsonl"
    data.write_text("\n".join(json.dumps({"text": t}) for t in TEXTS))
    out, plot = tmp_path / "llc.json", tmp_path / "trace.png"
    code = main(
        [
            "estimate",
            str(model_dir),
            "--dataset",
            str(data),
            "--num-samples",
            "40",
            "--num-chains",
            "2",
            "--num-draws",
            "15",
            "--num-burnin",
            "10",
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
    assert "LLC =" in printed and "nβ" in printed
    assert "verdict: " in printed and "flatness" in printed  # verdict and per-chain table
    result = json.loads(out.read_text())
    for key in [
        "llc_mean",
        "llc_std",
        "llc_per_chain",
        "nbeta",
        "num_samples",
        "init_loss",
        "config",
        "diagnostics",
        "model",
        "dataset",
    ]:
        assert key in result
    assert result["num_samples"] == 40
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    card = (model_dir / "README.md").read_text()
    assert "license: mit" in card and "Hello." in card and "- tiny" in card
    (entry,) = read_llc_from_model_card(model_dir)
    assert entry["value"] == pytest.approx(result["llc_mean"])


def test_cli_estimate_bad_inputs(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["estimate", str(tmp_path / "missing"), "--dataset", "x.jsonl"])
    assert exc.value.code == 2 and "not found" in capsys.readouterr().err
    model_dir = tmp_path / "m"
    _gpt2().save_pretrained(model_dir)
    bad = tmp_path / "data.xyz"
    bad.write_text("x")
    with pytest.raises(SystemExit):
        main(["estimate", str(model_dir), "--dataset", str(bad)])
    assert "unknown file type" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["estimate", str(model_dir), "--dataset", str(bad), "--loss-fn", "nocolon"])
    assert "MODULE:FUNCTION" in capsys.readouterr().err


def test_masked_lm_masks_are_drawn_once_from_the_seed():
    from transformers import BertForMaskedLM

    torch.manual_seed(0)
    cfg = tiny_bert_config()
    model = BertForMaskedLM(cfg).eval()
    data = Dataset.from_dict({"text": TEXTS})
    a = prepare_dataset(model, data, tokenizer=_tokenizer(), seed=3)
    b = prepare_dataset(model, data, tokenizer=_tokenizer(), seed=3)
    c = prepare_dataset(model, data, tokenizer=_tokenizer(), seed=4)
    assert torch.equal(a.columns["labels"], b.columns["labels"])
    assert not torch.equal(a.columns["labels"], c.columns["labels"])
    masked = a.columns["labels"] != -100
    assert masked.any() and not (a.columns["attention_mask"][masked] == 0).any()
    result = estimate_llc(model, data, SHORT, tokenizer=_tokenizer(), progress=False)
    assert math.isfinite(result.llc_mean) and result.llc_paired_mean is not None


def test_iterable_dataset_needs_num_samples():
    from datasets import IterableDataset

    def rows():
        for t in TEXTS:
            yield {"text": t}

    stream = IterableDataset.from_generator(rows)
    with pytest.raises(ValueError, match="num_samples"):
        estimate_llc(_gpt2(), stream, SHORT, tokenizer=_tokenizer(), progress=False)
    result = estimate_llc(
        _gpt2(), stream, SHORT, tokenizer=_tokenizer(), num_samples=32, progress=False
    )
    assert result.num_samples == 32


def test_cli_loss_fn_from_a_module_in_the_working_directory(tmp_path, monkeypatch, capsys):
    model_dir = tmp_path / "m"
    _gpt2().save_pretrained(model_dir)
    _tokenizer().save_pretrained(model_dir)
    (tmp_path / "my_losses.py").write_text(
        "import torch.nn.functional as F\n"
        "def mean_logit_loss(outputs, batch):\n"
        "    return (outputs.logits.float() ** 2).mean(dim=(1, 2))\n"
    )
    data = tmp_path / "d.jsonl"
    data.write_text("\n".join(json.dumps({"text": t}) for t in TEXTS))
    monkeypatch.chdir(tmp_path)
    for spec in ["my_losses:mean_logit_loss", str(tmp_path / "my_losses.py") + ":mean_logit_loss"]:
        out = tmp_path / "o.json"
        main(
            [
                "estimate",
                str(model_dir),
                "--dataset",
                str(data),
                "--num-chains",
                "1",
                "--num-draws",
                "5",
                "--num-burnin",
                "5",
                "--batch-size",
                "8",
                "--quiet",
                "--loss-fn",
                spec,
                "--output",
                str(out),
            ]
        )
        assert math.isfinite(json.loads(out.read_text())["init_loss"])
