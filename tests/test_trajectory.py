"""``hf-llc trajectory`` / ``estimate_trajectory``: every checkpoint of a Trainer run with one
recipe, the curve written after each, and a rerun that never recomputes a finished one."""

from __future__ import annotations

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402
from datasets import Dataset  # noqa: E402
from tiny_text import texts, word_tokenizer  # noqa: E402
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments  # noqa: E402

import hf_llc.estimator  # noqa: E402
from hf_llc.cli import main  # noqa: E402
from hf_llc.trajectory import (  # noqa: E402
    Checkpoint,
    estimate_trajectory,
    find_checkpoints,
    load_trajectory,
)

SHORT = ["--num-chains", "2", "--num-burnin", "3", "--num-draws", "5", "--batch-size", "4"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A Trainer's output_dir with checkpoint-2, checkpoint-4 and checkpoint-6 (tokenizer
    saved in each), and the texts as a jsonl file."""
    root = tmp_path_factory.mktemp("run")
    tok = word_tokenizer()
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=len(tok), n_positions=16, n_embd=16, n_layer=1, n_head=2)
    cfg.pad_token_id = 0
    rows = texts(32)
    enc = tok(rows, padding="max_length", max_length=8, truncation=True)
    labels = [[t if m else -100 for t, m in zip(ids, mask)] for ids, mask in
              zip(enc["input_ids"], enc["attention_mask"])]  # fmt: skip
    train = Dataset.from_dict({**enc, "labels": labels})
    args = TrainingArguments(
        str(root / "out"),
        max_steps=6,
        save_steps=2,
        per_device_train_batch_size=8,
        learning_rate=1e-2,
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
    )
    Trainer(
        model=GPT2LMHeadModel(cfg), args=args, train_dataset=train, processing_class=tok
    ).train()
    data = root / "texts.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in rows))
    return root / "out", data


def test_find_checkpoints_of_a_trainer_run_and_of_hub_revisions(run_dir, tmp_path):
    out, _ = run_dir
    found = find_checkpoints(out)
    assert [c.step for c in found] == [2, 4, 6]
    assert [os.path.basename(c.path) for c in found] == [f"checkpoint-{s}" for s in (2, 4, 6)]
    # One checkpoint folder alone: itself, its step from the folder name.
    assert find_checkpoints(found[1].path) == [found[1]]
    revs = find_checkpoints("org/model", revisions=["step1000", "step2000", "main"])
    assert [(c.revision, c.step) for c in revs] == [("step1000", 1000), ("step2000", 2000),
                                                    ("main", None)]  # fmt: skip
    with pytest.raises(ValueError, match="not a local folder: for a Hub repository"):
        find_checkpoints("org/model")
    with pytest.raises(ValueError, match="holds no checkpoint"):
        find_checkpoints(tmp_path)


def test_cli_curve_plot_cards_and_a_rerun_that_recomputes_nothing(run_dir, tmp_path, monkeypatch):
    out, data = run_dir
    curve_file, plot = tmp_path / "curve.json", tmp_path / "curve.png"
    argv = ["trajectory", str(out), "--dataset", str(data), *SHORT, "--quiet"]
    argv += ["--output", str(curve_file), "--seed", "3"]
    assert main([*argv, "--plot", str(plot), "--write-card"]) == 0
    curve = load_trajectory(curve_file)
    assert curve["format"] == "hf_llc.trajectory"
    entries = curve["checkpoints"]
    assert [e["step"] for e in entries] == [2, 4, 6]
    assert all(e["verdict"] in ("ok", "warning", "fail") for e in entries)
    assert all(e["num_params"] == entries[0]["num_params"] > 0 for e in entries)
    assert plot.stat().st_size > 0
    for e in entries:  # each checkpoint's card holds its own estimate
        card = yaml.safe_load((out / os.path.basename(e["path"]) / "README.md").read_text()
                              .split("---\n")[1])  # fmt: skip
        assert card["hf_llc"][0]["value"] == pytest.approx(e["llc_mean"])

    calls = []
    real = hf_llc.estimator.estimate_llc
    monkeypatch.setattr(
        hf_llc.estimator, "estimate_llc", lambda *a, **k: calls.append(1) or real(*a, **k)
    )
    assert main(argv) == 0  # everything is there: nothing recomputed
    assert calls == [] and load_trajectory(curve_file)["checkpoints"] == entries

    # Interrupted after two checkpoints: only the third is computed, the first two kept.
    partial = dict(curve, checkpoints=entries[:2])
    curve_file.write_text(json.dumps(partial))
    assert main(argv) == 0
    again = load_trajectory(curve_file)["checkpoints"]
    assert len(calls) == 1 and again[:2] == entries[:2]
    # Chains depend only on (seed, chain) and the data: the recomputed point is the same.
    assert again[2]["llc_mean"] == pytest.approx(entries[2]["llc_mean"], rel=1e-6)


def test_a_curve_keeps_one_recipe(run_dir, tmp_path, capsys):
    out, data = run_dir
    curve_file = tmp_path / "curve.json"
    argv = ["trajectory", str(out), "--dataset", str(data), *SHORT, "--quiet"]
    argv += ["--output", str(curve_file), "--checkpoints", str(out / "checkpoint-2")]
    assert main(argv) == 0
    with pytest.raises(SystemExit) as stop:
        main([*argv, "--seed", "9"])
    assert stop.value.code == 2
    assert "holds a curve made with other config" in capsys.readouterr().err
    assert len(load_trajectory(curve_file)["checkpoints"]) == 1


def test_python_api_on_listed_folders(run_dir):
    out, _ = run_dir
    data = Dataset.from_dict({"text": texts(32)})
    from hf_llc import SamplerConfig

    seen = []
    curve = estimate_trajectory(
        [out / "checkpoint-6", Checkpoint(str(out / "checkpoint-2"), step=2)],
        data,
        SamplerConfig(num_chains=2, num_burnin=3, num_draws=5, batch_size=4),
        tokenizer=word_tokenizer(),
        on_result=lambda cp, result, entry: seen.append((cp.key, result.llc_mean)),
        progress=False,
    )
    assert [e["step"] for e in curve["checkpoints"]] == [6, 2]  # in the order given
    assert [e["llc_mean"] for e in curve["checkpoints"]] == [v for _, v in seen]
    with pytest.raises(ValueError, match="the same checkpoint twice"):
        estimate_trajectory([out / "checkpoint-2", out / "checkpoint-2"], data)
