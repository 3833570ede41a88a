"""Data conventions: rows without a target are dropped before n is counted (and counted),
``block_size`` blocks for causal LMs, and the dataset's description in the result."""

from __future__ import annotations

import json
import math

import pytest
import torch
from datasets import Dataset, DatasetInfo, IterableDataset, load_dataset
from tiny_text import texts, tiny_bert_config, word_tokenizer
from transformers import (
    BertForMaskedLM,
    BertForSequenceClassification,
    BertForTokenClassification,
    BertModel,
    GPT2Config,
    GPT2LMHeadModel,
)

from hf_llc import SamplerConfig, estimate_llc
from hf_llc.adapters import describe_dataset, prepare_dataset
from hf_llc.posterior import check_inputs

SHORT = SamplerConfig(num_chains=2, num_burnin=5, num_draws=8, batch_size=4)
# Texts with a target for a causal LM (≥ 2 words) and rows without one: empty, one word.
GOOD = texts(12)
EMPTY = ["", "cat", "   ", "dog"]


def _mixed() -> list[str]:
    """GOOD with an EMPTY row after every third: row i of the result is GOOD[...] or empty."""
    out, empties = [], iter(EMPTY * 3)
    for i, t in enumerate(GOOD):
        out.append(t)
        if i % 3 == 2:
            out.append(next(empties))
    return out


def _gpt2(positions: int = 32) -> GPT2LMHeadModel:
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=24, n_positions=positions, n_embd=16, n_layer=1, n_head=2)
    cfg.pad_token_id = 0
    return GPT2LMHeadModel(cfg).eval()


def _bert(cls, **kwargs):
    torch.manual_seed(0)
    return cls(tiny_bert_config(**kwargs)).eval()


def _ids(tok, text: str) -> list[int]:
    return tok(text)["input_ids"]


# ----------------------------------------------------------------------------- empty rows


def test_causal_lm_rows_without_a_next_token_are_dropped_and_counted():
    tok, model = word_tokenizer(), _gpt2()
    rows = _mixed()
    empty = [len(_ids(tok, t)) < 2 for t in rows]
    assert 0 < sum(empty) < len(rows)
    prepared = prepare_dataset(model, Dataset.from_dict({"text": rows}), tokenizer=tok)
    info = prepared.info
    assert info["rows_in"] == len(rows)
    assert info["rows_dropped_empty"] == sum(empty)
    kept = [t for t, e in zip(rows, empty) if not e]
    assert len(prepared.columns["input_ids"]) == len(kept)
    for i, text in enumerate(kept):  # the rows kept are the non-empty ones, in order
        ids = _ids(tok, text)
        assert prepared.columns["input_ids"][i, : len(ids)].tolist() == ids


def test_dropping_empty_rows_changes_n_and_nbeta_but_not_the_loss():
    """L_n is the dataset's mean token loss, which empty rows do not change; n counts only the
    rows with a target, so nβ = n / log n is that of the non-empty rows."""
    tok, model = word_tokenizer(), _gpt2()
    rows = _mixed()
    data = Dataset.from_dict({"text": rows})
    n_good = sum(len(_ids(tok, t)) >= 2 for t in rows)
    dropped = estimate_llc(model, data, SHORT, tokenizer=tok, progress=False)
    kept = estimate_llc(model, data, SHORT, tokenizer=tok, progress=False, drop_empty_rows=False)
    assert dropped.num_samples == n_good
    assert dropped.nbeta == pytest.approx(n_good / math.log(n_good))
    assert kept.num_samples == len(rows)
    assert kept.nbeta == pytest.approx(len(rows) / math.log(len(rows)))
    assert dropped.init_loss == pytest.approx(kept.init_loss, rel=1e-6)
    info = dropped.diagnostics["data"]
    assert info["rows_in"] == len(rows)
    assert info["rows_dropped_empty"] == len(rows) - n_good
    assert info["rows_used"] == n_good == dropped.num_samples
    assert info["drop_empty_rows"] is True and info["block_size"] is None
    info = kept.diagnostics["data"]
    assert info["rows_dropped_empty"] == 0
    assert info["empty_rows_kept"] == len(rows) - n_good
    assert info["rows_used"] == len(rows)
    json.dumps(dropped.to_dict()["diagnostics"]["data"])  # plain JSON


def test_num_samples_takes_the_first_rows_with_a_target():
    tok, model = word_tokenizer(), _gpt2()
    rows = _mixed()
    good_at = [i for i, t in enumerate(rows) if len(_ids(tok, t)) >= 2]
    want = 7
    expected = [rows[i] for i in good_at[:want]]
    for data in (
        Dataset.from_dict({"text": rows}),
        IterableDataset.from_generator(lambda: ({"text": t} for t in rows)),
    ):
        prepared = prepare_dataset(model, data, tokenizer=tok, num_samples=want)
        assert len(prepared.columns["input_ids"]) == want
        for i, text in enumerate(expected):
            ids = _ids(tok, text)
            assert prepared.columns["input_ids"][i, : len(ids)].tolist() == ids
        assert prepared.info["rows_in"] == good_at[want - 1] + 1
        assert prepared.info["rows_dropped_empty"] == good_at[want - 1] + 1 - want
    # Without dropping, num_samples counts rows, empty or not.
    plain = prepare_dataset(
        model,
        Dataset.from_dict({"text": rows}),
        tokenizer=tok,
        num_samples=want,
        drop_empty_rows=False,
    )
    assert len(plain.columns["input_ids"]) == want and plain.info["rows_in"] == want


def test_too_few_rows_with_a_target_for_num_samples():
    tok, model = word_tokenizer(), _gpt2()
    rows = _mixed()
    n_good = sum(len(_ids(tok, t)) >= 2 for t in rows)
    with pytest.raises(ValueError, match=rf"only {n_good} rows with a token.*--keep-empty-rows"):
        prepare_dataset(model, Dataset.from_dict({"text": rows}), tokenizer=tok, num_samples=15)


def test_token_classification_rows_labelled_minus_100_everywhere_are_dropped():
    model = _bert(BertForTokenClassification, num_labels=3)
    ids = [[3, 4, 5], [6, 7], [8, 9, 10, 11], [3, 5]]
    labels = [[0, 1, 2], [-100, -100], [-100, 2, -100, 1], [-100, -100]]
    data = Dataset.from_dict({"input_ids": ids, "labels": labels})
    prepared = prepare_dataset(model, data)
    assert prepared.info["rows_dropped_empty"] == 2
    assert prepared.columns["input_ids"][:, 0].tolist() == [3, 8]
    # Every token label counts once: the dropped rows had none.
    assert prepared.tokens_per_sample == pytest.approx(5 / 2)
    # check_inputs (the dry run) prepares the same data.
    loss = check_inputs(model, data, SamplerConfig(batch_size=2))
    assert math.isfinite(loss)


def test_sequence_classification_and_masked_lm_drop_rows_without_tokens():
    tok = word_tokenizer()
    rows = ["the cat sat", "", "dog ran", "   ", "a big red log"]
    seq = _bert(BertForSequenceClassification, num_labels=2)
    data = Dataset.from_dict({"text": rows, "label": [0, 1, 1, 0, 1]})
    prepared = prepare_dataset(seq, data, tokenizer=tok)
    assert prepared.info["rows_dropped_empty"] == 2
    assert prepared.columns["labels"].tolist() == [0, 1, 1]  # the labels follow their rows
    # A masked LM: rows without a maskable token are dropped; a row that drew no mask is
    # kept (the masks are one fixed draw, not a property of the data).
    mlm = _bert(BertForMaskedLM)
    prepared = prepare_dataset(mlm, Dataset.from_dict({"text": rows}), tokenizer=tok, seed=1)
    assert prepared.info["rows_dropped_empty"] == 2
    assert len(prepared.columns["input_ids"]) == 3


def test_rows_of_a_model_without_known_targets_are_not_checked():
    tok = word_tokenizer()
    model = _bert(BertModel)
    enc = tok(GOOD, padding=True)
    data = Dataset.from_dict({**enc, "target": [[float(i % 2)] * 16 for i in range(len(GOOD))]})

    def loss_fn(outputs, batch):
        return ((outputs.pooler_output - batch["target"]) ** 2).sum(-1)

    result = estimate_llc(model, data, SHORT, loss_fn=loss_fn, progress=False)
    info = result.diagnostics["data"]
    assert info["rows_dropped_empty"] is None  # unknown targets: nothing dropped
    assert info["rows_in"] == info["rows_used"] == len(GOOD) == result.num_samples


def test_every_row_empty_is_a_clear_error():
    tok, model = word_tokenizer(), _gpt2()
    with pytest.raises(ValueError, match=r"every label is -100 .*none of the 4 rows read"):
        prepare_dataset(model, Dataset.from_dict({"text": EMPTY}), tokenizer=tok)


# ----------------------------------------------------------------------------- block_size


def _stream(tok, rows):
    return [t for text in rows for t in _ids(tok, text)]


def test_block_size_concatenates_and_cuts_blocks():
    tok, model = word_tokenizer(), _gpt2()
    rows = _mixed()
    stream = _stream(tok, rows)
    size = 8
    prepared = prepare_dataset(
        model, Dataset.from_dict({"text": rows}), tokenizer=tok, block_size=size
    )
    count = len(stream) // size
    expected = torch.tensor(stream[: count * size]).view(count, size)
    assert torch.equal(prepared.columns["input_ids"], expected)
    assert prepared.columns["attention_mask"].eq(1).all()
    assert torch.equal(prepared.columns["labels"], expected)
    info = prepared.info
    assert info["rows_in"] == len(rows) and info["block_size"] == size
    assert info["tokens_used"] == count * size and info["tokens_in"] == len(stream)
    assert info["rows_dropped_empty"] == sum(len(_ids(tok, t)) == 0 for t in rows)
    # Each block has size - 1 next-token targets.
    assert prepared.tokens_per_sample == size - 1


def test_block_size_with_num_samples_reads_only_the_rows_it_needs():
    tok, model = word_tokenizer(), _gpt2()
    rows = texts(40)
    size, want = 6, 3
    prepared = prepare_dataset(
        model, Dataset.from_dict({"text": rows}), tokenizer=tok, block_size=size, num_samples=want
    )
    stream = _stream(tok, rows)
    assert prepared.columns["input_ids"].flatten().tolist() == stream[: size * want]
    lengths = [len(_ids(tok, t)) for t in rows]
    needed = next(i + 1 for i in range(len(rows)) if sum(lengths[: i + 1]) >= size * want)
    assert prepared.info["rows_in"] == needed < len(rows)
    result = estimate_llc(
        model,
        Dataset.from_dict({"text": rows}),
        SamplerConfig(num_chains=1, num_burnin=2, num_draws=3, batch_size=2),
        tokenizer=tok,
        block_size=size,
        num_samples=want,
        progress=False,
    )
    assert result.num_samples == want and result.diagnostics["data"]["rows_used"] == want


def test_pre_tokenized_rows_make_blocks_of_their_attended_tokens():
    model = _gpt2()
    data = Dataset.from_dict(
        {
            "input_ids": [[3, 4, 5, 0], [6, 7, 0, 0], [8, 9, 10, 11]],
            "attention_mask": [[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1]],
        }
    )
    prepared = prepare_dataset(model, data, block_size=3)
    assert prepared.columns["input_ids"].tolist() == [[3, 4, 5], [6, 7, 8], [9, 10, 11]]


@pytest.mark.parametrize(
    "model, kwargs, message",
    [
        (lambda: _bert(BertForMaskedLM), {"block_size": 4}, r"not one \(task 'masked-lm'\)"),
        (_gpt2, {"block_size": 4, "max_length": 8}, "block_size or max_length, not both"),
        (_gpt2, {"block_size": 64}, r"block_size=64 is longer .*\(32 positions"),
        (_gpt2, {"block_size": 1}, "integer ≥ 2"),
        (_gpt2, {"block_size": 500}, "block_size=500 is longer"),
        (lambda: _gpt2(1024), {"block_size": 500}, r"fewer than one block of block_size=500"),
        (_gpt2, {"block_size": 8, "num_samples": 100}, r"num_samples=100 blocks .* only"),
    ],
)
def test_block_size_errors(model, kwargs, message):
    data = Dataset.from_dict({"text": texts(12)})
    with pytest.raises(ValueError, match=message):
        prepare_dataset(model(), data, tokenizer=word_tokenizer(), **kwargs)


def test_block_size_with_a_dict_of_tensors_or_collate_fn_is_refused():
    model = _gpt2()
    with pytest.raises(ValueError, match="dict of tensors"):
        prepare_dataset(model, {"input_ids": torch.ones(4, 3, dtype=torch.long)}, block_size=2)
    with pytest.raises(ValueError, match="collate_fn"):
        check_inputs(
            model,
            [{"input_ids": torch.ones(3, dtype=torch.long)}] * 4,
            SamplerConfig(batch_size=2),
            collate_fn=lambda rows: {"input_ids": torch.stack([r["input_ids"] for r in rows])},
            block_size=2,
        )


# ----------------------------------------------------------------------- dataset description


def test_describe_an_in_memory_dataset():
    described = describe_dataset(Dataset.from_dict({"text": ["a b"]}))
    assert described == {
        "name": None,
        "config": None,
        "split": None,
        "revision": None,
        "source": "memory",
    }
    assert describe_dataset({"x": torch.zeros(2)})["source"] == "memory"


def test_describe_a_hub_dataset_from_its_info():
    info = DatasetInfo(
        builder_name="parquet",
        dataset_name="tiny_stories",  # datasets snake-cases the repo name
        config_name="default",
        download_checksums={
            "hf://datasets/someone/TinyStories@0123abcd/data/train-0.parquet": {"num_bytes": 1}
        },
    )
    data = Dataset.from_dict({"text": ["a b"]}, info=info, split="train")
    assert describe_dataset(data) == {
        "name": "someone/TinyStories",
        "config": "default",
        "split": "train",
        "revision": "0123abcd",
        "source": "hub",
    }
    # What the caller knows better wins.
    assert describe_dataset(data, name="someone/other", revision=None)["name"] == "someone/other"


def test_describe_a_dataset_from_local_files_names_no_path(tmp_path):
    path = tmp_path / "secret_folder" / "rows.jsonl"
    path.parent.mkdir()
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in GOOD))
    data = load_dataset("json", data_files=str(path), split="train", cache_dir=str(tmp_path / "c"))
    described = describe_dataset(data)
    assert described["name"] is None and described["source"] == "local"
    assert described["split"] == "train"
    assert "secret_folder" not in json.dumps(described)
    # In a result, with the caller's description over it.
    result = estimate_llc(
        _gpt2(),
        data,
        SHORT,
        tokenizer=word_tokenizer(),
        dataset_description={"name": "someone/rows", "revision": "v1"},
        progress=False,
    )
    assert result.diagnostics["data"]["dataset"] == {
        "name": "someone/rows",
        "config": None,
        "split": "train",
        "revision": "v1",
        "source": "local",
    }
    assert result.diagnostics["adapter"] is None  # not a peft model
