"""The Hugging Face conventions from the command line: a PEFT adapter folder as MODEL, empty
rows and --block-size, --dataset-revision, and --push-to-hub (against a mocked HfApi)."""

from __future__ import annotations

import json
import os
import re

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402
from test_modelcard_hub import CARD, REPO, FakeHub  # noqa: E402
from tiny_text import texts, word_tokenizer  # noqa: E402
from transformers import GPT2Config, GPT2LMHeadModel  # noqa: E402

from hf_llc import modelcard as mc  # noqa: E402
from hf_llc.cli import main  # noqa: E402

TINY = ["--num-chains", "2", "--num-burnin", "3", "--num-draws", "5", "--batch-size", "4"]
TINY += ["--quiet", "--seed", "3"]


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    """A 1-layer GPT-2 checkpoint folder with its word-level tokenizer."""
    folder = tmp_path_factory.mktemp("base")
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=24, n_positions=32, n_embd=16, n_layer=1, n_head=2)
    cfg.pad_token_id = 0
    GPT2LMHeadModel(cfg).save_pretrained(folder)
    word_tokenizer().save_pretrained(folder)
    return folder


def _jsonl(path, rows):
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in rows))
    return path


def test_adapter_folder_as_model_samples_only_the_adapter(base_dir, tmp_path):
    peft = pytest.importorskip("peft")
    base = GPT2LMHeadModel.from_pretrained(base_dir)
    lora_config = peft.LoraConfig(
        r=2, lora_alpha=4, target_modules=["c_attn"], task_type="CAUSAL_LM", init_lora_weights=False
    )
    torch.manual_seed(1)
    lora = peft.get_peft_model(base, lora_config)
    adapter_dir = tmp_path / "adapter"
    lora.save_pretrained(adapter_dir)  # no tokenizer here: the base model's is used
    assert not (adapter_dir / "config.json").exists()
    adapter_params = sum(p.numel() for n, p in lora.named_parameters() if "lora_" in n)

    data = _jsonl(tmp_path / "texts.jsonl", texts(16))
    out = tmp_path / "llc.json"
    argv = ["estimate", str(adapter_dir), "--dataset", str(data), "--output", str(out), *TINY]
    assert main(argv) == 0
    result = json.loads(out.read_text())
    assert result["num_params"] == adapter_params  # the LoRA matrices, not the base model
    adapter = result["diagnostics"]["adapter"]
    assert adapter["peft_type"] == "LORA" and adapter["r"] == 2
    assert adapter["num_adapter_params"] == adapter_params


def test_empty_rows_are_dropped_by_default_and_kept_on_request(base_dir, tmp_path, capsys):
    rows = texts(12)
    rows[2] = rows[7] = ""  # no token, so no next-token target
    rows[5] = "cat"  # one token: nothing to predict either
    data = _jsonl(tmp_path / "texts.jsonl", rows)
    out = tmp_path / "llc.json"
    common = ["estimate", str(base_dir), "--dataset", str(data), "--output", str(out), *TINY]

    assert main(common) == 0
    assert "data: 3 of 12 rows have no target token" in capsys.readouterr().out
    info = json.loads(out.read_text())["diagnostics"]["data"]
    assert (info["rows_in"], info["rows_dropped_empty"], info["rows_used"]) == (12, 3, 9)
    assert json.loads(out.read_text())["num_samples"] == 9

    assert main([*common, "--keep-empty-rows"]) == 0
    info = json.loads(out.read_text())["diagnostics"]["data"]
    assert (info["rows_dropped_empty"], info["rows_used"]) == (0, 12)


def test_block_size_groups_the_texts_into_blocks(base_dir, tmp_path):
    rows = texts(20)
    data = _jsonl(tmp_path / "texts.jsonl", rows)
    out = tmp_path / "llc.json"
    argv = ["estimate", str(base_dir), "--dataset", str(data), "--output", str(out), *TINY]
    assert main([*argv, "--block_size", "8"]) == 0  # the underscore spelling too
    result = json.loads(out.read_text())
    tokens = sum(len(t.split()) for t in rows)  # one token per word (word-level tokenizer)
    assert result["diagnostics"]["data"]["block_size"] == 8
    assert result["num_samples"] == tokens // 8  # the incomplete last block is dropped


def test_push_to_hub_opens_a_pull_request_with_the_estimate(base_dir, tmp_path, monkeypatch):
    fake = FakeHub(tmp_path, {"README.md": CARD.encode()})
    monkeypatch.setattr(mc, "HfApi", fake)
    data = _jsonl(tmp_path / "texts.jsonl", texts(16))
    argv = ["estimate", str(base_dir), "--dataset", str(data), *TINY]
    argv += ["--push-to-hub", REPO, "--hub-token", "hf_test", "--commit-message", "LLC"]
    assert main(argv) == 0
    (commit,) = fake.commits
    assert commit["repo_id"] == REPO and commit["create_pr"] is True
    assert commit["commit_message"] == "LLC" and "hf_test" in fake.tokens
    front = commit["files"]["README.md"].decode().split("---\n")[1]
    meta = yaml.safe_load(front)
    assert meta["license"] == "apache-2.0"  # the rest of the card is kept
    metrics = [m for entry in meta["model-index"] for r in entry["results"] for m in r["metrics"]]
    assert any(m["type"] == "llc" for m in metrics)

    fake.commits.clear()
    assert main([*argv, "--no-pr", "--hub-revision", "dev"]) == 0
    (commit,) = fake.commits
    assert commit["create_pr"] is False and commit["revision"] == "dev"


def test_push_to_hub_checks_the_repository_before_sampling(base_dir, tmp_path, monkeypatch):
    fake = FakeHub(tmp_path, {"README.md": CARD.encode()})
    monkeypatch.setattr(mc, "HfApi", fake)
    sampled = []
    monkeypatch.setattr("hf_llc.estimator.estimate_llc", lambda *a, **k: sampled.append(1))
    data = _jsonl(tmp_path / "texts.jsonl", texts(16))
    argv = ["estimate", str(base_dir), "--dataset", str(data), *TINY, "--hub-token", "hf_x"]
    with pytest.raises(SystemExit) as stop:
        main([*argv, "--push-to-hub", "someone/not-there"])
    assert stop.value.code == 2 and not sampled and not fake.commits


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        (["--no-pr"], r"--no-pr does nothing without --push-to-hub"),
        (["--hub-revision", "dev"], r"--hub-revision does nothing without --push-to-hub"),
        (["--dataset-revision", "v1"], r"--dataset-revision 'v1' does nothing with the local"),
        (["--write-card"], r"use --push-to-hub someone/tiny-model"),
    ],
)
def test_flags_that_would_do_nothing_are_refused(tmp_path, capsys, extra, match):
    data = _jsonl(tmp_path / "texts.jsonl", texts(4))
    with pytest.raises(SystemExit) as stop:
        main(["estimate", "someone/tiny-model", "--dataset", str(data), *extra])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert re.search(match, " ".join(err.split())), err
