"""benchmarks/duplicated_unit.py: the geometry of the two copies, the λ̂ windows, and the
position readers leave the library as they found it."""

from __future__ import annotations

import math
import os
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from _scripts import load_script

import hf_llc.reference as reference_module
import hf_llc.sampling.loop as loop_module
from hf_llc import SamplerConfig
from hf_llc.validation_nonlinear import BUILDERS

os.environ["HF_HUB_OFFLINE"] = "1"


@pytest.fixture(scope="module")
def bench():
    return load_script("benchmarks/duplicated_unit.py")


def _flat(model) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def test_geometry_at_w_star_and_with_a_dead_copy(bench):
    model, data, info = BUILDERS["relu_duplicated"](200, 0)
    w = _flat(model)
    total, gap, dead = bench.unit_geometry(w, data["x"])
    # At w* the copies share their incoming weights and split the teacher's outgoing ones.
    assert total == pytest.approx(float(torch.tensor(info["teacher_outgoing"]).norm()), rel=1e-6)
    assert gap == 0.0 and not dead
    # Copy 3's bias far below its inputs' reach: inactive on every input, 100 apart from copy 0.
    w[16 + 3] -= 100.0
    total2, gap2, dead2 = bench.unit_geometry(w, data["x"])
    assert dead2 and gap2 == pytest.approx(100.0) and total2 == pytest.approx(total)
    s = bench.summarise([(1.0, 2.0, True), (3.0, 4.0, False)])
    assert s["positions"] == 2 and s["fraction_one_copy_dead"] == 0.5
    assert bench.summarise([]) == {"positions": 0}


def test_windows_average_each_chain_then_the_chains(bench):
    trace = np.array([[1.0, 1.0, 3.0, 3.0], [3.0, 3.0, np.nan, 5.0]])
    result = SimpleNamespace(llc_trace=lambda: trace)
    rows = bench.windows(result, 2)
    assert [r["draws"] for r in rows] == [[0, 2], [2, 4]]
    assert rows[0]["llc"] == 2.0 and rows[0]["stderr"] == pytest.approx(1.0)
    assert rows[1]["llc"] == 4.0 and rows[1]["chains"] == 2  # chain 1: the finite draw 5.0


def test_short_run_reads_positions_and_restores_the_library(bench):
    model, data, _ = BUILDERS["relu_duplicated"](200, 0)
    cfg = SamplerConfig(
        num_chains=2, num_burnin=100, num_draws=100, batch_size=50, record_metric=True
    )
    check, step = loop_module._check_divergence, reference_module._Chain.step
    result, positions = bench.sgld_positions(cfg, model, data)
    assert sorted(positions) == [0, 1]
    for rows in positions.values():
        # Every 50 steps (check_every) of 200, each a d-vector.
        assert [t for t, _ in rows] == [50, 100, 150, 200]
        assert all(w.shape == (30,) for _, w in rows)
    ref, kept = bench.reference_positions(model, data, cfg, result.localizer_metric, 1, 20, 100)
    assert len(kept) == 2 * 100 // bench.EVERY  # two chains' t = 1 replicas, draws only
    assert math.isfinite(ref.llc_mean)
    assert loop_module._check_divergence is check and reference_module._Chain.step is step
