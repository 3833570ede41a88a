"""Issue 13, part B: data checked against the model before sampling, label conflicts, CLI
errors as one line, and the LLCCallback dry run. Table-driven like ``test_bad_input.py``.

Python API cases assert the exception type, that the message names the argument, column or
file (and the fix), and that the error is raised by hf_llc code. CLI cases (in-process
through ``hf_llc.cli.main``) assert exit status 2, one ``error:`` line and no traceback.
"""

from __future__ import annotations

import json
import logging
import os
import re
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from datasets import Dataset
from tiny_text import texts, word_tokenizer
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    BertForTokenClassification,
    GPT2Config,
    GPT2LMHeadModel,
    Trainer,
    TrainingArguments,
)

import hf_llc.integrations.trainer as trainer_module
from hf_llc import DLNConfig, DLNModel, LLCCallback, SamplerConfig, estimate_llc
from hf_llc.cli import main
from hf_llc.estimator import check_inputs

TEXTS = texts(16)
TINY = SamplerConfig(num_chains=1, num_burnin=2, num_draws=3, batch_size=4)
CLI_TINY = ["--num-chains", "1", "--num-burnin", "2", "--num-draws", "3", "--batch-size", "4"]
LONG_TEXT = " ".join(["the cat sat on a mat"] * 4)  # 24 words > 16 positions


def _gpt2() -> GPT2LMHeadModel:
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=24, n_positions=16, n_embd=8, n_layer=1, n_head=2)
    cfg.pad_token_id = 0
    return GPT2LMHeadModel(cfg).eval()


def _bert_config(**kwargs) -> BertConfig:
    return BertConfig(
        vocab_size=24,
        hidden_size=8,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=8,
        max_position_embeddings=32,
        **kwargs,
    )


def _classifier(num_labels: int = 2) -> BertForSequenceClassification:
    torch.manual_seed(0)
    return BertForSequenceClassification(_bert_config(num_labels=num_labels)).eval()


def _tagger(num_labels: int = 3) -> BertForTokenClassification:
    torch.manual_seed(0)
    return BertForTokenClassification(_bert_config(num_labels=num_labels)).eval()


def _dln() -> DLNModel:
    torch.manual_seed(0)
    return DLNModel(DLNConfig(widths=[2, 3, 2]))


def _dln_data(n: int = 16) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {"inputs": torch.randn(n, 2, generator=g), "labels": torch.randn(n, 2, generator=g)}


def _ids(n: int = 8, bad: tuple[int, int, int] | None = None) -> list[list[int]]:
    rows = [[3 + (i + k) % 10 for k in range(4)] for i in range(n)]
    if bad is not None:
        row, pos, value = bad
        rows[row][pos] = value
    return rows


def _run(model, data, **kwargs):
    kwargs.setdefault("progress", False)
    return estimate_llc(model, data, TINY, **kwargs)


def _classify(data: dict, num_labels: int = 2):
    data = {"text": TEXTS[: len(next(iter(data.values())))], **data}
    return _run(_classifier(num_labels), Dataset.from_dict(data), tokenizer=word_tokenizer())


def _dln_dataset(inputs: list) -> Dataset:
    return Dataset.from_dict({"inputs": inputs, "labels": [[0.0, 1.0]] * len(inputs)})


# --------------------------------------------------------------------------- Python API


@dataclass
class ApiCase:
    id: str
    call: Callable[[], Any]
    error: type[BaseException]
    message: str  # regex: names the argument / column / row and the fix


API_CASES = [
    # item 2: label conflicts and silent truncation
    ApiCase(
        "label-and-labels-columns",
        lambda: _classify({"label": [0, 1] * 8, "labels": [1, 0] * 8}),
        ValueError,
        r"columns \['label', 'labels'\], which all mean the labels.*keep one",
    ),
    ApiCase(
        "label-and-labels-in-a-dict",
        lambda: _run(_dln(), {**_dln_data(), "label": torch.zeros(16, 2)}),
        ValueError,
        r"columns \['label', 'labels'\].*remove_columns\(\['labels'\]\)",
    ),
    ApiCase(
        "label-and-label-ids-pre-tokenized",
        lambda: _run(
            _classifier(),
            Dataset.from_dict({"input_ids": _ids(), "label": [0, 1] * 4, "label_ids": [1, 0] * 4}),
        ),
        ValueError,
        r"columns \['label', 'label_ids'\]",
    ),
    ApiCase(
        "fractional-class-labels",
        lambda: _classify({"label": [0, 1.5] + [1.0] * 14}),
        ValueError,
        r"column 'labels' holds non-integer class labels \(1\.5 at row 1.*num_labels=2.*"
        r"map them to integer classes",
    ),
    ApiCase(
        "fractional-class-labels-tensor",
        lambda: _run(
            _classifier(),
            {
                "input_ids": torch.tensor(_ids(16)),
                "labels": torch.tensor([0.0, 1.0, 0.25] + [0.0] * 13),
            },
        ),
        ValueError,
        r"non-integer class labels \(0\.25 at row 2",
    ),
    ApiCase(
        "token-labels-shorter-than-input-ids",
        lambda: _run(
            _tagger(), Dataset.from_dict({"input_ids": _ids(), "labels": [[0, 1, 2]] * 8})
        ),
        ValueError,
        r"column 'labels': row 0 has 3 token labels but 4 input_ids: token labels must align",
    ),
    ApiCase(
        "token-labels-longer-than-input-ids",
        lambda: _run(
            _tagger(),
            Dataset.from_dict({"input_ids": _ids(), "labels": [[0, 1, 2, 1]] * 5 + [[0] * 6] * 3}),
        ),
        ValueError,
        r"row 5 has 6 token labels but 4 input_ids",
    ),
    ApiCase(
        "token-labels-fractional",
        lambda: _run(
            _tagger(), Dataset.from_dict({"input_ids": _ids(), "labels": [[0, 1, 2, 1.5]] * 8})
        ),
        ValueError,
        r"column 'labels' holds non-integer token labels \(row 0: 1\.5\)",
    ),
    ApiCase(
        "token-labels-shape-in-a-dict",
        lambda: _run(
            _tagger(),
            {"input_ids": torch.tensor(_ids(16)), "labels": torch.zeros(16, 3, dtype=torch.long)},
        ),
        ValueError,
        r"column 'labels' has shape \(16, 3\) but 'input_ids' has shape \(16, 4\)",
    ),
    # item 3: ranges, lengths, text values, dtypes, ragged / text columns
    ApiCase(
        "token-id-beyond-vocabulary",
        lambda: _run(_gpt2(), Dataset.from_dict({"input_ids": _ids(bad=(2, 1, 30))})),
        ValueError,
        r"column 'input_ids' has token id 30 at row 2, position 1 .*GPT2LMHeadModel has 24 "
        r"token ids \(0\.\.23.*checkpoint's own tokenizer",
    ),
    ApiCase(
        "token-id-negative",
        lambda: _run(_gpt2(), {"input_ids": torch.tensor(_ids(16, bad=(4, 0, -100)))}),
        ValueError,
        r"token id -100 at row 4, position 0.*-100 is the ignore index of labels, not a token",
    ),
    ApiCase(
        "token-id-beyond-vocabulary-masked-lm-dict",
        lambda: _run(_tagger(), {"input_ids": torch.tensor(_ids(16, bad=(9, 3, 24)))}),
        ValueError,
        r"token id 24 at row 9, position 3 .*BertForTokenClassification has 24 token ids",
    ),
    ApiCase(
        "token-type-beyond-type-vocabulary",
        lambda: _run(
            _tagger(),
            Dataset.from_dict(
                {"input_ids": _ids(), "token_type_ids": [[0, 0, 1, 1]] * 6 + [[0, 2, 0, 0]] * 2}
            ),
        ),
        ValueError,
        r"column 'token_type_ids' has token type 2 at row 6, position 1 .*type_vocab_size=2",
    ),
    ApiCase(
        "list-labels-for-a-sequence-classifier",
        lambda: _classify({"label": [[0, 1]] * 16}),
        ValueError,
        r"column 'label' holds a list per row \(\[0, 1\]\).*pass loss_fn=",
    ),
    ApiCase(
        "class-label-beyond-num-labels",
        lambda: _classify({"label": [0, 1, 1, 5] + [0] * 12}),
        ValueError,
        r"column 'labels' has class 5 at row 3 .*num_labels=2 \(classes 0\.\.1.*map the labels",
    ),
    ApiCase(
        "class-label-negative",
        lambda: _classify({"label": [0, -1] + [0] * 14}),
        ValueError,
        r"column 'labels' has class -1 at row 1",
    ),
    ApiCase(
        "token-class-beyond-num-labels",
        lambda: _run(
            _tagger(3),
            Dataset.from_dict({"input_ids": _ids(), "labels": [[0, 1, -100, 2]] * 7 + [[7] * 4]}),
        ),
        ValueError,
        r"column 'labels' has class 7 at row 7, position 0 .*num_labels=3",
    ),
    ApiCase(
        "causal-lm-label-beyond-vocabulary",
        lambda: _run(
            _gpt2(),
            {
                "input_ids": torch.tensor(_ids(16)),
                "labels": torch.tensor(_ids(16, bad=(1, 2, 99))),
            },
        ),
        ValueError,
        r"column 'labels' has target token id 99 at row 1, position 2",
    ),
    ApiCase(
        "texts-longer-than-positions",
        lambda: _run(
            _gpt2(),
            Dataset.from_dict({"text": TEXTS[:15] + [LONG_TEXT]}),
            tokenizer=word_tokenizer(),
        ),
        ValueError,
        r"sequences are 24 tokens long \(the longest is row 15, with 24\) but GPT2LMHeadModel "
        r"accepts at most 16 positions \(config\.\w+\): pass max_length=16 \(CLI: "
        r"--max-length 16\)",
    ),
    ApiCase(
        "input-ids-wider-than-bert-positions",
        lambda: _run(_tagger(), {"input_ids": torch.full((16, 40), 3)}),
        ValueError,
        r"sequences are 40 tokens long .*at most 32 positions \(config\.max_position_embeddings\)",
    ),
    ApiCase(
        "text-value-none",
        lambda: _run(
            _gpt2(),
            Dataset.from_dict({"text": TEXTS[:3] + [None] + TEXTS[4:]}),
            tokenizer=word_tokenizer(),
        ),
        ValueError,
        r"text_column='text': row 3 holds None \(NoneType\), not a string: drop or fill",
    ),
    ApiCase(
        "text-value-lists",
        lambda: _run(
            _gpt2(),
            Dataset.from_dict({"text": [t.split() for t in TEXTS]}),
            tokenizer=word_tokenizer(),
        ),
        ValueError,
        r"text_column='text': row 0 holds \['the', .*\(list\), not a string: join the "
        r"pieces",
    ),
    ApiCase(
        "float-input-ids-dataset",
        lambda: _run(_gpt2(), Dataset.from_dict({"input_ids": [[3.0, 4.5, 5.0]] * 8})),
        ValueError,
        r"column 'input_ids' holds float values \(3\.0\), but token ids must be integers",
    ),
    ApiCase(
        "float-input-ids-dict",
        lambda: _run(_gpt2(), {"input_ids": torch.tensor(_ids(16)).float()}),
        ValueError,
        r"column 'input_ids' holds torch\.float32 values, but token ids must be integers",
    ),
    ApiCase(
        "float64-inputs-for-a-float32-model",
        lambda: _run(_dln(), {k: v.double() for k, v in _dln_data().items()}),
        ValueError,
        r"DLNModel's forward failed on the first batch because of a dtype mismatch.*"
        r"parameters are float32 but column\(s\) \['inputs'\] hold float64.*column\.float\(\)",
    ),
    ApiCase(
        "integer-inputs-for-a-float32-model",
        lambda: _run(_dln(), {**_dln_data(), "inputs": torch.ones(16, 2, dtype=torch.long)}),
        ValueError,
        r"dtype mismatch.*column\(s\) \['inputs'\] hold int64",
    ),
    ApiCase(
        "ragged-column",
        lambda: _run(_dln(), _dln_dataset([[0.1, 0.2], [0.3, 0.4, 0.5]] * 8)),
        ValueError,
        r"DLNModel\.forward needs 'inputs', and the dataset's column 'inputs' could not be made "
        r"a tensor: it holds ragged rows \(row 0 has 2 values, row 1 has 3\)",
    ),
    ApiCase(
        "text-column-where-numbers-are-needed",
        lambda: _run(_dln(), _dln_dataset(["0.1 0.2"] * 16)),
        ValueError,
        r"column 'inputs' could not be made a tensor: it holds text \(row 0: '0\.1 0\.2'\)",
    ),
    # item 5
    ApiCase(
        "step-size-overflows-float32",
        lambda: SamplerConfig(step_size=1e39),
        ValueError,
        r"step_size=1e\+39 overflows float32 .*pass a much smaller step_size",
    ),
    ApiCase(
        "nbeta-overflows-float32",
        lambda: SamplerConfig(nbeta=1e300),
        ValueError,
        r"nbeta=1e\+300 overflows float32",
    ),
    ApiCase(
        "check-inputs-token-id-beyond-vocabulary",
        lambda: check_inputs(_gpt2(), Dataset.from_dict({"input_ids": _ids(bad=(0, 0, 25))}), TINY),
        ValueError,
        r"column 'input_ids' has token id 25 at row 0, position 0",
    ),
]


def _raised_in_hf_llc(excinfo) -> bool:
    """The last frame is hf_llc code (an error from a library is re-raised there ``from`` it)."""
    last = traceback.extract_tb(excinfo.tb)[-1].filename
    return f"{os.sep}hf_llc{os.sep}" in last


@pytest.mark.parametrize("case", API_CASES, ids=[c.id for c in API_CASES])
def test_api_data_checks(case: ApiCase):
    with pytest.raises(case.error) as excinfo:
        case.call()
    message = str(excinfo.value)
    assert re.search(case.message, message, re.S), message
    assert _raised_in_hf_llc(excinfo), traceback.format_tb(excinfo.tb)[-1]


def test_integer_valued_float_labels_are_accepted():
    # 0.0 / 1.0 are classes, not fractions: refused only when a value is not an integer.
    result = _classify({"label": [0.0, 1.0] * 8})
    assert result.num_samples == 16


def test_regression_labels_may_be_fractional():
    result = _classify({"label": [0.5, 1.25] * 8}, num_labels=1)
    assert result.num_samples == 16


def test_bf16_weights_with_mixed_precision_no_get_a_notice(caplog):
    model = _gpt2().to(torch.bfloat16)
    data = Dataset.from_dict({"input_ids": _ids(16)})
    notice = r"bfloat16 .*mixed_precision='no'.*fp32 regardless"
    with caplog.at_level(logging.WARNING, logger="hf_llc"):
        result = _run(model, data, mixed_precision="no")
    assert result.num_samples == 16
    assert re.search(notice, caplog.text)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="hf_llc"):
        check_inputs(_gpt2(), data, TINY, mixed_precision="no")
    assert not re.search(notice, caplog.text)  # fp32 weights: no notice


def test_check_inputs_leaves_the_model_as_it_was():
    model = _gpt2().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    loss = check_inputs(model, Dataset.from_dict({"text": TEXTS}), TINY, tokenizer=word_tokenizer())
    assert loss > 0
    assert model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


# --------------------------------------------------------------------------- LLCCallback


def _token_data(n: int = 32, bad: tuple[int, int, int] | None = None) -> Dataset:
    """Token ids with causal-LM labels (the Trainer's model computes its loss from them)."""
    ids = _ids(n, bad=bad)
    return Dataset.from_dict({"input_ids": ids, "labels": ids})


def _trainer(tmp_path, model, train_data, max_steps=4):
    args = TrainingArguments(
        str(tmp_path),
        per_device_train_batch_size=8,
        max_steps=max_steps,
        learning_rate=0.01,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
    )
    return Trainer(model=model, args=args, train_dataset=train_data)


CALLBACK_FAST = SamplerConfig(
    num_chains=1, num_burnin=5, num_draws=5, batch_size=8, step_size=1e-4, preconditioner="identity"
)


@pytest.mark.parametrize(
    "data, match",
    [
        (_token_data(bad=(3, 2, 40)), r"column 'input_ids' has token id 40 at row 3, position 2"),
        (
            Dataset.from_dict({"input_ids": [[3] * 20] * 32}),
            r"at most 16 positions .*max_length=16",
        ),
        (
            Dataset.from_dict({"input_ids": _ids(32), "label": [0] * 32, "labels": [1] * 32}),
            r"columns \['label', 'labels'\]",
        ),
    ],
    ids=["token-id-beyond-vocabulary", "too-long", "label-and-labels"],
)
def test_callback_refuses_bad_data_before_training(tmp_path, data, match):
    # Before: the first estimate (step 2 here; hours in, in real runs) failed inside the
    # forward with an IndexError, aborting training. Now on_train_begin's dry run refuses it.
    model = _gpt2().train()
    trainer = _trainer(tmp_path, model, _token_data())
    callback = LLCCallback(trainer, dataset=data, config=CALLBACK_FAST, every_n_steps=2)
    trainer.add_callback(callback)
    with pytest.raises(ValueError, match=match) as excinfo:
        trainer.train()
    assert "checked before training" in str(excinfo.value)
    assert trainer.state.global_step == 0
    assert callback.history == []


def test_callback_dry_run_keeps_training_identical(tmp_path):
    # The dry run restores the random states and modes: the weights after training are the
    # same with and without a callback that never estimates.
    def train(folder, with_callback):
        model = _gpt2().train()
        trainer = _trainer(tmp_path / folder, model, _token_data(), max_steps=3)
        if with_callback:
            trainer.add_callback(
                LLCCallback(trainer, config=CALLBACK_FAST, on_save=False, at_end=False)
            )
        trainer.train()
        return model

    plain, tracked = train("plain", False), train("tracked", True)
    for a, b in zip(plain.parameters(), tracked.parameters()):
        assert torch.equal(a, b)


def _failing_estimates(monkeypatch, fail_at_call: int):
    """estimate_llc in the callback fails on its ``fail_at_call``-th call (1-based)."""
    real = trainer_module.estimate_llc
    calls = []

    def estimate(*args, **kwargs):
        calls.append(1)
        if len(calls) == fail_at_call:
            raise RuntimeError("CUDA out of memory (simulated)")
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer_module, "estimate_llc", estimate)
    return calls


def test_callback_skips_an_estimate_that_fails_during_training(tmp_path, monkeypatch, caplog):
    # Before: the failure propagated out of Trainer.train(), losing the training run.
    _failing_estimates(monkeypatch, fail_at_call=1)
    model = _gpt2().train()
    trainer = _trainer(tmp_path, model, _token_data(), max_steps=4)
    callback = LLCCallback(trainer, config=CALLBACK_FAST, every_n_steps=2, on_save=False)
    trainer.add_callback(callback)
    with caplog.at_level(logging.WARNING, logger="hf_llc"):
        trainer.train()
    assert trainer.state.global_step == 4  # training finished
    first, second = callback.history
    assert first["step"] == 2 and first["skipped"] is True
    assert first["error"] == "RuntimeError: CUDA out of memory (simulated)"
    assert "llc_mean" not in first
    assert second["step"] == 4 and isinstance(second["llc_mean"], float)
    assert [r for r in caplog.records if r.name.startswith("hf_llc") and "step 2" in r.getMessage()]
    assert "raise_on_error=True" in caplog.text and "out of memory" in caplog.text
    saved = json.loads((tmp_path / "llc_history.json").read_text())["history"]
    assert [e.get("skipped", False) for e in saved] == [True, False]
    assert [e["step"] for e in trainer.state.log_history if "llc/mean" in e] == [4]


def test_callback_raise_on_error(tmp_path, monkeypatch):
    _failing_estimates(monkeypatch, fail_at_call=1)
    model = _gpt2().train()
    trainer = _trainer(tmp_path, model, _token_data(), max_steps=4)
    callback = LLCCallback(
        trainer, config=CALLBACK_FAST, every_n_steps=2, on_save=False, raise_on_error=True
    )
    trainer.add_callback(callback)
    with pytest.raises(RuntimeError, match="out of memory"):
        trainer.train()
    assert trainer.state.global_step == 2


# --------------------------------------------------------------------------- CLI


@dataclass
class Env:
    root: Path
    gpt2: Path  # tiny GPT-2 checkpoint with its tokenizer
    classifier: Path  # tiny BERT sequence classifier (2 labels) with its tokenizer
    tagger: Path  # tiny BERT token classifier (3 labels) with its tokenizer


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> Env:
    root = tmp_path_factory.mktemp("data_checks")
    gpt2 = root / "gpt2"
    _gpt2().save_pretrained(gpt2)
    word_tokenizer().save_pretrained(gpt2)
    classifier = root / "classifier"
    model = _classifier()
    model.config.architectures = ["BertForSequenceClassification"]
    model.save_pretrained(classifier)
    word_tokenizer().save_pretrained(classifier)
    tagger = root / "tagger"
    model = _tagger()
    model.config.architectures = ["BertForTokenClassification"]
    model.save_pretrained(tagger)
    word_tokenizer().save_pretrained(tagger)
    return Env(root, gpt2, classifier, tagger)


def _copy(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def _jsonl(tmp: Path, rows: list[dict], name: str = "data.jsonl") -> Path:
    path = tmp / name
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return path


def _estimate(model: Path, data: Path, *extra: str) -> list[str]:
    return ["estimate", str(model), "--dataset", str(data), "--quiet", *CLI_TINY, *extra]


def _text_rows(n: int = 16) -> list[dict]:
    return [{"text": t} for t in TEXTS[:n]]


def _corrupt_weights(env, tmp):
    model = _copy(env.gpt2, tmp / "model")
    (model / "model.safetensors").write_bytes(b"\x00garbage" * 8)
    return _estimate(model, _jsonl(tmp, _text_rows()))


def _truncated_weights(env, tmp):
    model = _copy(env.gpt2, tmp / "model")
    data = (model / "model.safetensors").read_bytes()
    (model / "model.safetensors").write_bytes(data[: len(data) // 2])
    return _estimate(model, _jsonl(tmp, _text_rows()))


def _config(env, tmp, edit: Callable[[dict], Any] | None = None, text: str | None = None):
    model = _copy(env.gpt2, tmp / "model")
    path = model / "config.json"
    if text is None:
        config = json.loads(path.read_text())
        text = json.dumps(edit(config))
    path.write_text(text)
    return _estimate(model, _jsonl(tmp, _text_rows()))


def _broken_tokenizer(env, tmp):
    model = _copy(env.gpt2, tmp / "model")
    (model / "tokenizer.json").write_text("{not a tokenizer")
    return _estimate(model, _jsonl(tmp, _text_rows()))


def _python(tmp: Path, source: str) -> Path:
    path = tmp / "losses.py"
    path.write_text(source)
    return path


def _tokenizer_config(env, tmp, text: str) -> Path:
    model = _copy(env.gpt2, tmp / "model")
    (model / "tokenizer_config.json").write_text(text)
    return model


CLI_CASES = [
    ("corrupt-safetensors", _corrupt_weights, r"weights file .*model\.safetensors is corrupt"),
    ("truncated-safetensors", _truncated_weights, r"model\.safetensors is corrupt or truncated"),
    (
        "config-json-malformed",
        lambda env, tmp: _config(env, tmp, text='{"model_type": "gpt2",'),
        r"model/config\.json is not valid JSON .*fix or regenerate it",
    ),
    (
        "config-json-a-list",
        lambda env, tmp: _config(env, tmp, text="[1, 2]"),
        r"model/config\.json holds a JSON list, but a model config is a JSON object",
    ),
    (
        "config-json-wrong-type",
        lambda env, tmp: _config(env, tmp, lambda c: {**c, "n_embd": "eight"}),
        r"could not build the model from .*model/config\.json .*n_embd.*wrong type",
    ),
    (
        "config-json-architectures-a-string",
        lambda env, tmp: _config(env, tmp, lambda c: {**c, "architectures": "GPT2LMHeadModel"}),
        r"config\.json: 'architectures' must be a list of class names.*--task",
    ),
    (
        "config-json-bad-value",
        lambda env, tmp: _config(env, tmp, lambda c: {**c, "n_head": 3}),
        r"could not build the model from .*config\.json .*divisible",
    ),
    (
        "tokenizer-unreadable",
        _broken_tokenizer,
        r"the tokenizer in .*model \(tokenizer\.json.*could not be loaded",
    ),
    (
        "token-id-beyond-vocabulary",
        lambda env, tmp: _estimate(
            env.gpt2, _jsonl(tmp, [{"input_ids": r} for r in _ids(16, bad=(5, 1, 99))])
        ),
        r"column 'input_ids' has token id 99 at row 5, position 1",
    ),
    (
        "class-label-beyond-num-labels",
        lambda env, tmp: _estimate(
            env.classifier,
            _jsonl(tmp, [{"text": t, "label": i % 3} for i, t in enumerate(TEXTS)]),
        ),
        r"column 'labels' has class 2 at row 2 .*num_labels=2",
    ),
    (
        "fractional-class-labels",
        lambda env, tmp: _estimate(
            env.classifier,
            _jsonl(tmp, [{"text": t, "label": 0.5 * (i % 3)} for i, t in enumerate(TEXTS)]),
        ),
        r"non-integer class labels \(0\.5 at row 1",
    ),
    (
        "label-and-labels-columns",
        lambda env, tmp: _estimate(
            env.classifier,
            _jsonl(tmp, [{"text": t, "label": 0, "labels": 1} for t in TEXTS]),
        ),
        r"columns \['label', 'labels'\], which all mean the labels",
    ),
    (
        "texts-longer-than-positions",
        lambda env, tmp: _estimate(env.gpt2, _jsonl(tmp, _text_rows(15) + [{"text": LONG_TEXT}])),
        r"at most 16 positions \(config\.\w+\): pass max_length=16 \(CLI: --max-length "
        r"16\)",
    ),
    (
        "text-value-null",
        lambda env, tmp: _estimate(env.gpt2, _jsonl(tmp, _text_rows(5) + [{"text": None}])),
        r"text_column='text': row 5 holds None",
    ),
    (
        "text-value-a-number-among-strings",
        lambda env, tmp: _estimate(
            env.gpt2, _jsonl(tmp, _text_rows(3) + [{"text": 5}] + _text_rows(12))
        ),
        r"text_column='text': row 3 holds 5 \(int\), not a string",
    ),
    (
        "token-labels-misaligned",
        lambda env, tmp: _estimate(
            env.tagger, _jsonl(tmp, [{"input_ids": [3, 4, 5], "labels": [0, 1]}] * 16)
        ),
        r"column 'labels': row 0 has 2 token labels but 3 input_ids",
    ),
    (
        "token-label-beyond-num-labels",
        lambda env, tmp: _estimate(
            env.tagger, _jsonl(tmp, [{"input_ids": [3, 4, 5], "labels": [0, 1, 9]}] * 16)
        ),
        r"column 'labels' has class 9 at row 0, position 2 .*num_labels=3",
    ),
    (
        "negative-token-id",
        lambda env, tmp: _estimate(
            env.gpt2, _jsonl(tmp, [{"input_ids": r} for r in _ids(16, bad=(3, 2, -5))])
        ),
        r"column 'input_ids' has token id -5 at row 3, position 2",
    ),
    (
        "config-json-with-bom",
        lambda env, tmp: _config(env, tmp, text="\ufeff" + (env.gpt2 / "config.json").read_text()),
        r"config\.json is not valid JSON \(Unexpected UTF-8 BOM",
    ),
    (
        "tokenizer-config-malformed",
        lambda env, tmp: _estimate(_tokenizer_config(env, tmp, "{bad"), _jsonl(tmp, _text_rows())),
        r"the tokenizer in .*tokenizer_config\.json.*could not be loaded \(JSONDecodeError",
    ),
    (
        "loss-fn-file-with-a-syntax-error",
        lambda env, tmp: _estimate(
            env.gpt2, _jsonl(tmp, _text_rows()), "--loss-fn", f"{_python(tmp, 'def f(:')}:f"
        ),
        r"--loss-fn: cannot import '.*losses\.py' \(invalid syntax",
    ),
    (
        "step-size-overflows-float32",
        lambda env, tmp: _estimate(env.gpt2, _jsonl(tmp, _text_rows()), "--step-size", "1e39"),
        r"step_size=1e\+39 overflows float32",
    ),
]


@pytest.mark.parametrize("case", CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_cli_data_checks(case, env, tmp_path, capsys):
    _, argv, message = case
    with pytest.raises(SystemExit) as excinfo:
        main(argv(env, tmp_path))
    assert excinfo.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1, err
    assert lines[0].startswith("hf-llc estimate: error:")
    assert re.search(message, lines[0]), lines[0]


def test_cli_debug_shows_the_traceback(env, tmp_path):
    argv = _config(env, tmp_path, text="[1, 2]") + ["--debug"]
    with pytest.raises(ValueError, match=r"config\.json holds a JSON list"):
        main(argv)


def test_table_covers_the_items():
    ids = {c.id for c in API_CASES} | {c[0] for c in CLI_CASES}
    for kind in [
        "label-and-labels-columns",
        "fractional-class-labels",
        "token-labels-shorter-than-input-ids",
        "token-id-beyond-vocabulary",
        "class-label-beyond-num-labels",
        "texts-longer-than-positions",
        "text-value-none",
        "float64-inputs-for-a-float32-model",
        "ragged-column",
        "text-column-where-numbers-are-needed",
        "corrupt-safetensors",
        "config-json-malformed",
        "config-json-a-list",
        "config-json-wrong-type",
        "tokenizer-unreadable",
        "step-size-overflows-float32",
    ]:
        assert kind in ids
