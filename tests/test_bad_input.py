"""Bad input, table-driven: every case yields one clear error that names the argument (or
flag, or column) and the fix, raised by hf_llc itself (not from deep inside torch,
transformers or datasets), and leaves no file half-written.

Python API cases assert the exception type, its message, and that the traceback's last
frame is hf_llc code. CLI cases (run in-process through ``hf_llc.cli.main``) assert exit
code 2, a one-line ``error:`` message on stderr and no Python traceback.
"""

from __future__ import annotations

import json
import logging
import math
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
)

from hf_llc import SamplerConfig, estimate_llc, load_checkpoint
from hf_llc.cli import main
from hf_llc.estimator import LLCResult
from hf_llc.modelcard import read_llc_from_model_card, write_llc_to_model_card
from hf_llc.models.dln import DLNConfig, DLNModel

TEXTS = texts(16)

TINY = SamplerConfig(num_chains=1, num_burnin=2, num_draws=3, batch_size=4)
CLI_TINY = ["--num-chains", "1", "--num-burnin", "2", "--num-draws", "3", "--batch-size", "4"]
BROKEN_CARD = "---\nlicense: mit\ntags: [a, b\n---\n# My model\n"
MARKER = "custom_code_was_executed"


# --------------------------------------------------------------------------- fixtures


_tokenizer = word_tokenizer


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


def _dln() -> DLNModel:
    torch.manual_seed(0)
    return DLNModel(DLNConfig(widths=[2, 3, 2]))


def _dln_data(n: int = 16) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {"inputs": torch.randn(n, 2, generator=g), "labels": torch.randn(n, 2, generator=g)}


@dataclass
class Env:
    root: Path
    model: Path  # tiny GPT-2 checkpoint with a tokenizer and a README.md
    pickle_model: Path  # pytorch_model.bin only
    custom_model: Path  # config.json with auto_map → custom code in the folder
    data: Path  # jsonl with a "text" column
    foo_data: Path  # jsonl without a text column
    empty_data: Path  # a 0-byte jsonl
    xyz_data: Path  # a file of a type no loader reads
    a_file: Path  # a regular file (a "directory" nothing can be written into)
    result: LLCResult  # a finished (tiny) estimate, for the output cases


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> Env:
    root = tmp_path_factory.mktemp("bad_input")
    model = root / "tiny-gpt2"
    _gpt2().save_pretrained(model)
    _tokenizer().save_pretrained(model)

    pickle_model = root / "pickled"
    pickle_model.mkdir()
    gpt2 = _gpt2()
    gpt2.config.architectures = ["GPT2LMHeadModel"]
    gpt2.config.save_pretrained(pickle_model)
    state = {k: v.clone() for k, v in gpt2.state_dict().items()}
    torch.save(state, pickle_model / "pytorch_model.bin")

    custom_model = root / "custom"
    custom_model.mkdir()
    (custom_model / "config.json").write_text(
        json.dumps(
            {
                "model_type": "hf-llc-test-custom",
                "architectures": ["CustomNetForCausalLM"],
                "auto_map": {
                    "AutoConfig": "modeling_custom.CustomConfig",
                    "AutoModelForCausalLM": "modeling_custom.CustomNetForCausalLM",
                },
            }
        )
    )
    # Importing this file would leave a marker: the refusal must come before any import.
    (custom_model / "modeling_custom.py").write_text(
        f"import pathlib\npathlib.Path(__file__).with_name({MARKER!r}).touch()\n"
    )

    data = root / "texts.jsonl"
    data.write_text("\n".join(json.dumps({"text": t}) for t in TEXTS))
    foo_data = root / "foo.jsonl"
    foo_data.write_text("\n".join(json.dumps({"foo": t}) for t in TEXTS))
    empty_data = root / "empty.jsonl"
    empty_data.write_text("")
    xyz_data = root / "data.xyz"
    xyz_data.write_text("1 2 3")
    a_file = root / "a-file"
    a_file.write_text("not a directory")
    result = estimate_llc(_dln(), _dln_data(), TINY, progress=False)
    return Env(
        root=root,
        model=model,
        pickle_model=pickle_model,
        custom_model=custom_model,
        data=data,
        foo_data=foo_data,
        empty_data=empty_data,
        xyz_data=xyz_data,
        a_file=a_file,
        result=result,
    )


@pytest.fixture
def empty_hub_cache(tmp_path, monkeypatch):
    """An empty Hub cache, so a repo id is certainly not cached (offline: not fetched)."""
    import huggingface_hub

    if not huggingface_hub.is_offline_mode():
        pytest.skip("needs HF_HUB_OFFLINE=1 (set by conftest)")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))


def _card(tmp: Path, text: str = BROKEN_CARD) -> Path:
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "README.md").write_text(text)
    return tmp


class _NoLoss(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(2, 1)

    def forward(self, inputs):
        return {"logits": self.linear(inputs)}


# --------------------------------------------------------------------------- Python API


@dataclass
class ApiCase:
    id: str
    call: Callable[[Env, Path], Any]  # (env, tmp_path) -> raises
    error: type[BaseException]
    message: str  # regex: names the argument and the fix
    untouched: Callable[[Env, Path], None] | None = None  # asserts nothing was half-written


def _text_estimate(data: dict, **kwargs):
    kwargs.setdefault("tokenizer", _tokenizer())
    return estimate_llc(_gpt2(), Dataset.from_dict(data), TINY, progress=False, **kwargs)


def _nan_inputs(env, tmp):
    data = _dln_data()
    data["inputs"][5, 1] = float("nan")
    estimate_llc(_dln(), data, TINY, progress=False)


def _inf_labels(env, tmp):
    data = _dln_data()
    data["labels"][7, 0] = float("inf")
    estimate_llc(_dln(), data, TINY, progress=False)


def _card_unchanged(env, tmp):
    assert (tmp / "card" / "README.md").read_text() == BROKEN_CARD
    assert sorted(p.name for p in (tmp / "card").iterdir()) == ["README.md"]


def _no_output_left(env, tmp):
    assert sorted(p.name for p in env.a_file.parent.iterdir() if "out" in p.name) == []
    assert env.a_file.read_text() == "not a directory"


def _save_onto_a_directory(env, tmp):
    (tmp / "taken" / "sub").mkdir(parents=True)
    env.result.save(tmp / "taken")  # the temporary file is written, the rename fails


def _no_temporary_left(env, tmp):
    assert sorted(p.name for p in tmp.iterdir()) == ["taken"]
    assert [p.name for p in (tmp / "taken").iterdir()] == ["sub"]


def _custom_code_not_run(env, tmp):
    assert not (env.custom_model / MARKER).exists()


API_CASES = [
    ApiCase(
        "missing-model-path",
        lambda env, tmp: load_checkpoint(tmp / "no-such-model"),
        ValueError,
        r"not found locally.*Pass a folder written by save_pretrained",
    ),
    ApiCase(
        "hub-id-while-offline",
        lambda env, tmp: load_checkpoint("hf-llc-test/not-cached"),
        ValueError,
        r"not in the Hub cache \(offline mode\).*HF_HUB_OFFLINE=0.*hf download",
    ),
    ApiCase(
        "unknown-task",
        lambda env, tmp: load_checkpoint(env.model, task="telepathy"),
        ValueError,
        r"Unknown task 'telepathy'\. Supported tasks: .*'causal-lm'",
    ),
    ApiCase(
        "pickle-weights-without-opt-in",
        lambda env, tmp: load_checkpoint(env.pickle_model),
        ValueError,
        r"only has pickle weights.*allow_pickle=True \(CLI: --allow-pickle\)",
    ),
    ApiCase(
        "trust-remote-code-needed",
        lambda env, tmp: load_checkpoint(env.custom_model),
        ValueError,
        r"auto_map.*trust_remote_code=True \(CLI: --trust-remote-code\)",
        _custom_code_not_run,
    ),
    ApiCase(
        "dataset-without-input-ids-or-text",
        lambda env, tmp: _text_estimate({"foo": list(range(16))}),
        ValueError,
        r"needs an 'input_ids' column or raw text.*\['foo'\].*pass text_column=",
    ),
    ApiCase(
        "forward-argument-not-in-dataset",
        lambda env, tmp: estimate_llc(
            _dln(), {"x": torch.randn(16, 2), "labels": torch.randn(16, 2)}, TINY, progress=False
        ),
        ValueError,
        r"DLNModel\.forward needs \['inputs'\].*columns \['labels', 'x'\].*rename or add",
    ),
    ApiCase(
        "sequence-classifier-without-labels",
        lambda env, tmp: estimate_llc(
            BertForSequenceClassification(_bert_config()),
            Dataset.from_dict({"text": TEXTS}),
            TINY,
            tokenizer=_tokenizer(),
            progress=False,
        ),
        ValueError,
        r"needs a 'label' \(or 'labels'\) column.*add the labels, or pass loss_fn=",
    ),
    ApiCase(
        "text-column-missing",
        lambda env, tmp: _text_estimate({"text": TEXTS}, text_column="body"),
        ValueError,
        r"text_column='body' is not a column.*\['text'\].*pass the name of its raw-text column",
    ),
    ApiCase(
        "text-column-holds-numbers",
        lambda env, tmp: _text_estimate({"text": list(range(16))}),
        ValueError,
        r"text_column='text' holds int64 values, not text: pass the name of a string column",
    ),
    ApiCase(
        "label-column-holds-strings",
        lambda env, tmp: estimate_llc(
            BertForSequenceClassification(_bert_config()),
            Dataset.from_dict({"text": TEXTS, "label": ["pos", "neg"] * 8}),
            TINY,
            tokenizer=_tokenizer(),
            progress=False,
        ),
        ValueError,
        r"column 'label' holds text \('pos'\), not class ids: map the labels to integers",
    ),
    ApiCase(
        "empty-split",
        lambda env, tmp: _text_estimate({"text": []}),
        ValueError,
        r"dataset is empty \(0 rows\): check the split",
    ),
    ApiCase(
        "num-samples-larger-than-data",
        lambda env, tmp: _text_estimate({"text": TEXTS}, num_samples=1000),
        ValueError,
        r"num_samples=1000 is larger than the dataset \(16 rows\); pass a smaller value",
    ),
    ApiCase(
        "num-samples-zero",
        lambda env, tmp: _text_estimate({"text": TEXTS}, num_samples=0),
        ValueError,
        r"num_samples must be an integer ≥ 1 \(or None\), got 0",
    ),
    ApiCase(
        "max-length-negative",
        lambda env, tmp: _text_estimate({"text": TEXTS}, max_length=-5),
        ValueError,
        r"max_length must be an integer ≥ 1 \(or None\), got -5",
    ),
    ApiCase(
        "batch-larger-than-data",
        lambda env, tmp: estimate_llc(
            _dln(), _dln_data(16), SamplerConfig(batch_size=64), progress=False
        ),
        ValueError,
        r"batch_size=64 is larger than the dataset \(16 samples\); pass .*batch_size=\.\.\.\) ≤ 16",
    ),
    ApiCase(
        "iterable-dataset-without-num-samples",
        lambda env, tmp: estimate_llc(
            _gpt2(),
            Dataset.from_dict({"text": TEXTS}).to_iterable_dataset(),
            TINY,
            tokenizer=_tokenizer(),
            progress=False,
        ),
        ValueError,
        r"IterableDataset has no length: pass num_samples=N",
    ),
    ApiCase(
        "step-size-nan",
        lambda env, tmp: SamplerConfig(step_size=math.nan),
        ValueError,
        r"step_size must be a finite number > 0, got nan",
    ),
    ApiCase(
        "step-size-not-understood",
        lambda env, tmp: SamplerConfig(step_size="big"),
        ValueError,
        r"step_size='big' is not understood: pass a positive float, 'curvature' or 'auto'",
    ),
    ApiCase(
        "step-scale-negative",
        lambda env, tmp: SamplerConfig(step_scale=-0.3),
        ValueError,
        r"step_scale must be a finite number > 0, got -0\.3",
    ),
    ApiCase(
        "nbeta-zero",
        lambda env, tmp: SamplerConfig(nbeta=0.0),
        ValueError,
        r"nbeta must be a finite number > 0, got 0\.0",
    ),
    ApiCase(
        "nbeta-negative",
        lambda env, tmp: SamplerConfig(nbeta=-10),
        ValueError,
        r"nbeta must be a finite number > 0, got -10",
    ),
    ApiCase(
        "nbeta-infinite",
        lambda env, tmp: SamplerConfig(nbeta=math.inf),
        ValueError,
        r"nbeta must be a finite number > 0, got inf",
    ),
    ApiCase(
        "num-chains-negative",
        lambda env, tmp: SamplerConfig(num_chains=-2),
        ValueError,
        r"num_chains must be an integer ≥ 1, got -2",
    ),
    ApiCase(
        "draw-every-zero",
        lambda env, tmp: SamplerConfig(draw_every=0),
        ValueError,
        r"draw_every must be an integer ≥ 1, got 0",
    ),
    ApiCase(
        "localization-negative",
        lambda env, tmp: SamplerConfig(localization=-1.0),
        ValueError,
        r"localization must be ≥ 0 .*use 0 for none",
    ),
    ApiCase(
        "unknown-preconditioner",
        lambda env, tmp: SamplerConfig(preconditioner="adam"),
        ValueError,
        r"preconditioner='adam' is not known: use one of \('fisher-burnin', 'identity'",
    ),
    ApiCase(
        "config-not-a-sampler-config",
        lambda env, tmp: estimate_llc(_dln(), _dln_data(), {"num_chains": 2}, progress=False),
        ValueError,
        r"config must be a SamplerConfig, got dict",
    ),
    ApiCase(
        "fp16-model-with-mixed-precision-no",
        lambda env, tmp: estimate_llc(
            _dln().half(), _dln_data(), TINY, mixed_precision="no", progress=False
        ),
        ValueError,
        r"float16 .*mixed_precision='no'.*model\.float\(\)",
    ),
    ApiCase(
        "forward-returns-no-loss",
        lambda env, tmp: estimate_llc(_NoLoss(), {"inputs": torch.randn(16, 2)}, TINY),
        ValueError,
        r"_NoLoss's forward returned no loss.*pass loss_fn=",
    ),
    ApiCase(
        "labels-all-minus-100-token-classification",
        lambda env, tmp: estimate_llc(
            BertForTokenClassification(_bert_config(num_labels=3)),
            Dataset.from_dict({"input_ids": [[3, 4, 5]] * 8, "labels": [[-100] * 3] * 8}),
            TINY,
            progress=False,
        ),
        ValueError,
        r"every label is -100 \(no token to predict\): check the labels column",
    ),
    ApiCase(
        "labels-all-minus-100-one-token-texts",
        lambda env, tmp: _text_estimate({"text": ["cat"] * 16}),
        ValueError,
        r"every label is -100.*longer than one token",
    ),
    ApiCase(
        "nan-in-data",
        _nan_inputs,
        ValueError,
        r"column 'inputs' has non-finite values \(NaN or inf\) in 1 row\(s\), the first at row "
        r"5: drop or fix",
    ),
    ApiCase(
        "inf-in-labels",
        _inf_labels,
        ValueError,
        r"column 'labels' has non-finite values .*row 7: drop or fix",
    ),
    ApiCase(
        "malformed-card-yaml-write",
        lambda env, tmp: write_llc_to_model_card(_card(tmp / "card"), env.result, dataset_name="d"),
        ValueError,
        r"README\.md: malformed model card metadata.*Fix the YAML between the leading '---'",
        _card_unchanged,
    ),
    ApiCase(
        "malformed-card-yaml-read",
        lambda env, tmp: read_llc_from_model_card(_card(tmp / "card")),
        ValueError,
        r"README\.md: malformed model card metadata.*Fix the YAML",
        _card_unchanged,
    ),
    ApiCase(
        "unwritable-output-dir",
        lambda env, tmp: env.result.save(env.a_file / "out.json"),
        OSError,
        r"cannot write .*a-file/out\.json .*pass a path in an existing, writable directory",
        _no_output_left,
    ),
    ApiCase(
        "output-path-is-a-directory",
        _save_onto_a_directory,
        OSError,
        r"cannot write .*taken \(Is a directory\): pass a path in an existing, writable",
        _no_temporary_left,
    ),
]


def _raised_in_hf_llc(excinfo) -> bool:
    """The last frame is hf_llc code (an error from a library is re-raised there ``from`` it)."""
    last = traceback.extract_tb(excinfo.tb)[-1].filename
    return f"{os.sep}hf_llc{os.sep}" in last


@pytest.mark.parametrize("case", API_CASES, ids=[c.id for c in API_CASES])
def test_api_bad_input(case: ApiCase, env, tmp_path, empty_hub_cache):
    with pytest.raises(case.error) as excinfo:
        case.call(env, tmp_path)
    message = str(excinfo.value)
    assert re.search(case.message, message, re.S), message
    assert _raised_in_hf_llc(excinfo), traceback.format_tb(excinfo.tb)[-1]
    if case.untouched is not None:
        case.untouched(env, tmp_path)


# --------------------------------------------------------------------------- CLI


@dataclass
class CliCase:
    id: str
    argv: Callable[[Env, Path], list[str]]
    message: str  # regex over the error line: names the flag and the fix
    untouched: Callable[[Env, Path], None] | None = None


def _estimate(env: Env, *extra: str, model: Path | None = None, data: Path | None = None):
    return [
        "estimate",
        str(model or env.model),
        "--dataset",
        str(data or env.data),
        "--quiet",
        *CLI_TINY,
        *extra,
    ]


def _nothing_written(env, tmp):
    assert list(tmp.iterdir()) == []


def _cli_card_unchanged(env, tmp):
    assert (tmp / "card" / "README.md").read_text() == BROKEN_CARD
    assert not list(tmp.glob("*.json"))


def _card_model(env: Env, tmp: Path) -> Path:
    folder = tmp / "card"
    folder.mkdir()
    for f in env.model.iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    (folder / "README.md").write_text(BROKEN_CARD)
    return folder


CLI_CASES = [
    CliCase(
        "missing-model-path",
        lambda env, tmp: _estimate(env, model=tmp / "no-such-model"),
        r"not found locally.*Pass a folder written by save_pretrained",
    ),
    CliCase(
        "hub-id-while-offline",
        lambda env, tmp: ["estimate", "hf-llc-test/not-cached", "--dataset", str(env.data)],
        r"offline mode.*HF_HUB_OFFLINE=0.*hf download hf-llc-test/not-cached",
    ),
    CliCase(
        "pickle-weights-without-opt-in",
        lambda env, tmp: _estimate(env, model=env.pickle_model),
        r"only has pickle weights.*--allow-pickle",
    ),
    CliCase(
        "trust-remote-code-needed",
        lambda env, tmp: _estimate(env, model=env.custom_model),
        r"auto_map.*--trust-remote-code",
        _custom_code_not_run,
    ),
    CliCase(
        "nonexistent-dataset-file",
        lambda env, tmp: _estimate(env, data=tmp / "missing.jsonl"),
        r"--dataset .*missing\.jsonl: no such file; check the path",
    ),
    CliCase(
        "empty-dataset-file",
        lambda env, tmp: _estimate(env, data=env.empty_data),
        r"--dataset .*empty\.jsonl is an empty file",
    ),
    CliCase(
        "unknown-dataset-file-type",
        lambda env, tmp: _estimate(env, data=env.xyz_data),
        r"--dataset .*data\.xyz: unknown file type '\.xyz'; use one of \['\.csv'",
    ),
    CliCase(
        "hub-dataset-while-offline",
        lambda env, tmp: _estimate(env, data=Path("hf-llc-test/no-such-dataset")),
        r"--dataset 'hf-llc-test/no-such-dataset' could not be loaded.*HF_HUB_OFFLINE is set",
    ),
    CliCase(
        "dataset-without-text-column",
        lambda env, tmp: _estimate(env, data=env.foo_data),
        r"needs an 'input_ids' column or raw text.*\['foo'\].*pass text_column=",
    ),
    CliCase(
        "text-column-missing",
        lambda env, tmp: _estimate(env, "--text-column", "body"),
        r"text_column='body' is not a column.*\(CLI: --text-column\)",
    ),
    CliCase(
        "num-samples-larger-than-data",
        lambda env, tmp: _estimate(env, "--num-samples", "1000"),
        r"num_samples=1000 is larger than the dataset \(16 rows\)",
    ),
    CliCase(
        "num-samples-zero",
        lambda env, tmp: _estimate(env, "--num-samples", "0"),
        r"num_samples must be an integer ≥ 1",
    ),
    CliCase(
        "batch-larger-than-data",
        lambda env, tmp: _estimate(env, "--batch-size", "64"),
        r"batch_size=64 is larger than the dataset \(16 samples\)",
    ),
    CliCase(
        "step-size-nan",
        lambda env, tmp: _estimate(env, "--step-size", "nan"),
        r"step_size must be a finite number > 0, got nan",
    ),
    CliCase(
        "step-size-not-a-number",
        lambda env, tmp: _estimate(env, "--step-size", "big"),
        r"--step-size takes a positive number, 'curvature' or 'auto', got 'big'",
    ),
    CliCase(
        "nbeta-zero",
        lambda env, tmp: _estimate(env, "--nbeta", "0"),
        r"nbeta must be a finite number > 0, got 0\.0",
    ),
    CliCase(
        "nbeta-negative-infinity",
        lambda env, tmp: _estimate(env, "--nbeta=-inf"),
        r"nbeta must be a finite number > 0, got -inf",
    ),
    CliCase(
        "num-chains-negative",
        lambda env, tmp: _estimate(env, "--num-chains", "-1"),
        r"num_chains must be an integer ≥ 1, got -1",
    ),
    CliCase(
        "draw-every-zero",
        lambda env, tmp: _estimate(env, "--draw-every", "0"),
        r"draw_every must be an integer ≥ 1, got 0",
    ),
    CliCase(
        "localization-negative",
        lambda env, tmp: _estimate(env, "--localization", "-1"),
        r"localization must be ≥ 0",
    ),
    CliCase(
        "unknown-preconditioner",
        lambda env, tmp: _estimate(env, "--preconditioner", "adam"),
        r"argument --preconditioner: invalid choice: 'adam' \(choose from 'fisher-burnin', "
        r"'identity'",
    ),
    CliCase(
        "loss-fn-without-colon",
        lambda env, tmp: _estimate(env, "--loss-fn", "mylosses"),
        r"--loss-fn takes MODULE:FUNCTION or path/to/file\.py:FUNCTION",
    ),
    CliCase(
        "loss-fn-module-missing",
        lambda env, tmp: _estimate(env, "--loss-fn", "hf_llc_no_such_module:f"),
        r"--loss-fn: cannot import 'hf_llc_no_such_module'",
    ),
    CliCase(
        "loss-fn-function-missing",
        lambda env, tmp: _estimate(env, "--loss-fn", "math:no_such_function"),
        r"--loss-fn: 'math' has no function 'no_such_function'",
    ),
    CliCase(
        "unwritable-output-dir",
        lambda env, tmp: _estimate(env, "--output", str(env.a_file / "out.json")),
        r"--output .*a-file/out\.json: .*a-file is not a writable directory; pass a path",
        _no_output_left,
    ),
    CliCase(
        "output-dir-missing",
        lambda env, tmp: _estimate(env, "--output", str(tmp / "nope" / "out.json")),
        r"--output: directory .*nope does not exist; create it first",
        _nothing_written,
    ),
    CliCase(
        "plot-dir-missing",
        lambda env, tmp: _estimate(env, "--plot", str(tmp / "nope" / "trace.png")),
        r"--plot: directory .*nope does not exist; create it first",
        _nothing_written,
    ),
    CliCase(
        "write-card-malformed-yaml",
        lambda env, tmp: _estimate(
            env, "--write-card", "--output", str(tmp / "out.json"), model=_card_model(env, tmp)
        ),
        r"README\.md: malformed model card metadata.*Fix the YAML",
        _cli_card_unchanged,
    ),
    CliCase(
        "write-card-hub-id",
        lambda env, tmp: ["estimate", "org/model", "--dataset", str(env.data), "--write-card"],
        r"--write-card writes README\.md in a local checkpoint folder.*--push-to-hub org/model",
    ),
]


@pytest.mark.parametrize("case", CLI_CASES, ids=[c.id for c in CLI_CASES])
def test_cli_bad_input(case: CliCase, env, tmp_path, empty_hub_cache, capsys):
    work = tmp_path / "work"
    work.mkdir()
    argv = case.argv(env, work)
    with pytest.raises(SystemExit) as excinfo:
        main(argv)
    assert excinfo.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1, err  # one error line (argparse's usage lines precede its own)
    assert lines[0].startswith(("hf-llc estimate: error:", "hf-llc estimate: error: argument"))
    assert re.search(case.message, lines[0]), lines[0]
    if case.untouched is not None:
        case.untouched(env, work)


def test_cli_fp16_runs_in_fp32_with_a_logged_warning(env, tmp_path, empty_hub_cache, caplog):
    # fp16 is not refused (the callback, estimate_llc and the CLI treat it alike): the run is
    # the fp32 one, and a warning says so and how to silence it.
    outputs = {}
    for precision in ("no", "fp16"):
        outputs[precision] = tmp_path / f"{precision}.json"
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="hf_llc"):
            argv = _estimate(
                env, "--mixed-precision", precision, "--output", str(outputs[precision])
            )
            assert main(argv) == 0
        notices = [r for r in caplog.records if "fp16" in r.getMessage()]
        assert len(notices) == (precision == "fp16"), caplog.text
    (notice,) = notices
    assert notice.levelno == logging.WARNING
    assert "fp32" in notice.getMessage() and "ACCELERATE_MIXED_PRECISION" in notice.getMessage()
    fp32, fp16 = (json.loads(outputs[p].read_text()) for p in ("no", "fp16"))
    assert fp16["llc_per_chain"] == fp32["llc_per_chain"]


def test_the_table_covers_the_issue_list():
    """Issue 7, part 4: at least 20 cases, and every listed kind of bad input."""
    ids = {c.id for c in API_CASES} | {c.id for c in CLI_CASES}
    assert len(API_CASES) + len(CLI_CASES) >= 20
    for kind in [
        "missing-model-path",
        "hub-id-while-offline",
        "dataset-without-input-ids-or-text",
        "text-column-missing",
        "empty-split",
        "num-samples-larger-than-data",
        "batch-larger-than-data",
        "step-size-nan",
        "localization-negative",
        "nbeta-zero",
        "fp16-model-with-mixed-precision-no",
        "forward-returns-no-loss",
        "labels-all-minus-100-token-classification",
        "nan-in-data",
        "malformed-card-yaml-write",
        "unwritable-output-dir",
        "pickle-weights-without-opt-in",
        "trust-remote-code-needed",
    ]:
        assert kind in ids
