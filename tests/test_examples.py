"""The examples run end to end (smoke runs; their science is checked by their full runs)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import torch

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _load(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_rank_transition_example_quick(tmp_path):
    example = _load("dln_rank_transitions")
    report = example.main(["--quick", "--output-dir", str(tmp_path)])
    saved = json.loads((tmp_path / "rank_transitions.json").read_text())
    assert saved["steps"] and len(saved["steps"]) == len(report["steps"])
    first = saved["steps"][0]
    assert first["step"] == 0 and first["rank"] == 0  # small initialisation: rank 0
    assert first["lambda"] == 22.0  # Aoyagi's λ of a [10, 5, 10] DLN at rank 0
    assert (tmp_path / "rank_transitions.png").stat().st_size > 0
    assert (tmp_path / "trainer" / "llc_history.json").exists()


def test_log_spaced_steps():
    example = _load("dln_rank_transitions")
    steps = example.log_spaced_steps(1000, 3)
    assert steps[:2] == [0, 1] and steps[-1] == 1000
    assert steps == sorted(set(steps))


def test_rescaling_invariance_example_quick(tmp_path):
    example = _load("rescaling_invariance")
    data = example.main(["--quick", "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "rescaling_invariance.json").read_text())
    assert len(saved["rows"]) == len(data["alphas"]) * len(example.RECIPES)
    assert set(saved["spread"]) == set(example.RECIPES)
    # The hand-built diagonal with γ = 0 is exactly invariant: the chain at α is the chain at
    # any other α in rescaled coordinates, so λ̂ agrees to float rounding.
    hand = [r["llc_mean"] for r in saved["rows"] if r["recipe"].startswith("hand")]
    assert max(hand) - min(hand) <= 1e-3 * abs(hand[0])
    assert (tmp_path / "rescaling_invariance.png").stat().st_size > 0
    # The rescaled teacher computes the teacher's function.
    teacher = example.make_teacher()
    x = example.make_data(teacher, 64)["inputs"]
    torch.testing.assert_close(example.rescaled(teacher, 37.0)(x), teacher(x), rtol=1e-5, atol=1e-5)


def test_refined_llc_example_quick(tmp_path):
    example = _load("refined_llc")
    report = example.main(["--quick", "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "refined_llc.json").read_text())
    rows = {r["group"]: r for r in saved["rows"]}
    assert set(rows) == {"whole model", *example.GROUPS}
    # The groups partition the weights (GPT-2's output layer is the tied embedding).
    assert (
        sum(r["num_params"] for g, r in rows.items() if g != "whole model")
        == (rows["whole model"]["num_params"])
    )
    assert len(report["rows"]) == len(saved["rows"])
    assert (tmp_path / "refined_llc.png").stat().st_size > 0


def test_refined_llc_example_heads_quick(tmp_path):
    example = _load("refined_llc")
    example.main(["--quick", "--heads", "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "refined_llc_heads.json").read_text())
    rows = {r["group"]: r for r in saved["rows"]}
    assert list(rows) == [
        f"block {b} {part}" for b in (0, 1) for part in ("attention, all heads", "head 0", "head 1")
    ]
    e, d = 32, 16  # the example's n_embd, and its head size with 2 heads
    for b in (0, 1):
        for h in (0, 1):  # q, k, v columns and bias entries, c_proj rows
            assert rows[f"block {b} head {h}"]["num_params"] == 3 * e * d + 3 * d + d * e
        # The two heads make up the layer's attention but for c_proj's bias, no head's own.
        heads_total = sum(rows[f"block {b} head {h}"]["num_params"] for h in (0, 1))
        assert rows[f"block {b} attention, all heads"]["num_params"] == heads_total + e
    assert (tmp_path / "refined_llc_heads.png").stat().st_size > 0
