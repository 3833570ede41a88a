"""The examples run end to end (smoke runs; their science is checked by their full runs)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

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
