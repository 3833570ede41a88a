"""benchmarks/lm_study.py: its corpus, model sizes, summary checks and an end-to-end run."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import sys
from pathlib import Path

import pytest
import torch

os.environ["HF_HUB_OFFLINE"] = "1"
BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.fixture(scope="module")
def study():
    """The script, imported as a module."""
    spec = importlib.util.spec_from_file_location("lm_study", BENCHMARKS / "lm_study.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["lm_study"] = module
    spec.loader.exec_module(module)
    return module


def test_corpus_blocks_are_deterministic_bytes(study):
    blocks, digest = study.corpus_blocks(64, 100)
    again, digest_again = study.corpus_blocks(64, 100)
    assert blocks.shape == (100, 64) and blocks.dtype == torch.long
    assert torch.equal(blocks, again) and digest == digest_again and len(digest) == 64
    assert 0 <= int(blocks.min()) and int(blocks.max()) < 256
    text = study.corpus_bytes()
    assert bytes(blocks[1].tolist()) == text[64:128]  # non-overlapping, in order
    with pytest.raises(ValueError, match="blocks"):
        study.corpus_blocks(64, len(text))


@pytest.mark.parametrize("name", ["gpt2-100k", "gpt2-1m", "gpt2-10m", "llama-100k", "llama-1m"])
def test_parameter_counts_match_the_names(study, name):
    count = study.count_params(study.build_model(name, "meta"))
    nominal = study.NOMINAL[name.split("-")[1]]
    assert nominal / 2 <= count <= nominal * 2


def test_llama_sizes_use_grouped_query_attention(study):
    cfg = study.model_config("llama-1m")
    assert cfg.num_key_value_heads < cfg.num_attention_heads
    assert cfg._attn_implementation == "sdpa"


def _fake(variation, seed, mean, se, recipe="r"):
    return {
        "model": "m",
        "params": 10,
        "n": 64,
        "seq_len": 8,
        "recipe": recipe,
        "variation": variation,
        "settings": {"seed": seed},
        "llc_mean": mean,
        "llc_stderr": se,
        "verdict": "ok",
        "wall_s": 2.0,
        "chain_steps": 400,
    }


def test_summary_checks_on_hand_made_runs(study):
    runs = [
        _fake("base", 0, 10.0, 1.0),
        _fake("seed=1", 1, 12.0, 1.0),
        _fake("seed=2", 2, 13.0, 2.0),
        _fake("step×0.5", 0, 8.0, 0.5),
    ]
    seeds = study.seed_agreement(runs)
    # pairs: |10-12|/√2 = 1.414, |10-13|/√5 = 1.342, |12-13|/√5 = 0.447
    assert seeds["seeds"] == 3 and seeds["pair"] == (0, 1) and seeds["agree"]
    assert seeds["max_z"] == pytest.approx(2 / math.sqrt(2))
    half = study.step_halving(runs)
    assert half["relative_change"] == pytest.approx(-0.2)
    assert half["z"] == pytest.approx(2 / math.sqrt(1.25))
    rows = study.table_rows(runs)
    assert [r["change"] for r in rows] == pytest.approx([0.0, 0.2, 0.3, -0.2])
    assert rows[0]["s_per_1k_steps"] == pytest.approx(5.0)
    text = study.markdown_tables(runs)
    assert "| r | seed=2 | 13.00 ± 2.00 | +30.0% | ok |" in text
    assert "3 seeds agree" in text and "-20.0%" in text
    far = runs[:2] + [_fake("seed=2", 2, 20.0, 1.0)]
    assert not study.seed_agreement(far)["agree"]


def test_variations_scale_the_right_settings(study):
    base = study.builtin_recipes(10**5)["default-short"]
    plan = dict(study.plan_runs(base, ["seed", "step", "nbeta", "batch", "length"], n=100))
    assert "seed=0" not in plan  # the base run is seed 0
    assert plan["step×0.5"]["step_scale"] == pytest.approx(0.15)
    assert plan["nbeta×2"]["nbeta"] == pytest.approx(2 * 100 / math.log(100))
    assert plan["batch×2"]["batch_size"] == 64
    assert plan["length×0.5"]["num_burnin"] == 250 and plan["length×0.5"]["num_draws"] == 500
    lit = study.builtin_recipes(10**7)["literature"]
    assert lit["step_size"] == 3e-4
    assert dict(study.plan_runs(lit, ["step"], n=100))["step×2"]["step_size"] == 6e-4


def test_quick_run_writes_a_line_and_skips_it_on_rerun(study, tmp_path, capsys):
    out = tmp_path / "runs.jsonl"
    recipe = {
        "name": "tiny",
        "base": "literature",
        "num_burnin": 0,
        "num_draws": 10,
        "num_chains": 2,
        "batch_size": 8,
    }
    argv = ["--quick", "--device", "cpu", "--train-steps", "3", "--base", "tiny"]
    argv += ["--recipe-json", json.dumps(recipe), "--out", str(out)]
    argv += ["--cache-dir", str(tmp_path / "models")]
    assert study.main(argv) == 0
    lines = out.read_text().splitlines()
    assert len(lines) == 1
    record = json.loads(lines[0])
    assert record["model"] == "gpt2-100k" and record["n"] == 64 and record["seq_len"] == 64
    assert record["settings"]["num_draws"] == 10 and record["settings"]["chain_mode"] == "auto"
    assert math.isfinite(record["llc_mean"]) and len(record["llc_per_chain"]) == 2
    assert record["corpus_sha256"] == study.corpus_blocks(64, 1)[1]
    assert study.main(argv) == 0  # the model comes from the cache, the run is skipped
    assert len(out.read_text().splitlines()) == 1
    assert "already in" in capsys.readouterr().out
