"""benchmarks/nonlinear_targets.py: one short row, its fields and their meaning."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
from _scripts import load_script

os.environ["HF_HUB_OFFLINE"] = "1"


@pytest.fixture(scope="module")
def bench():
    """The script, imported as a module."""
    return load_script("benchmarks/nonlinear_targets.py")


def test_row_of_a_short_run(bench):
    row = bench._run("tanh_zero_out", 0, 200, 1e-4, chains=3, draws=100)
    assert row["case"] == "tanh_zero_out" and row["num_burnin"] == 200
    assert row["fisher_damping"] == 1e-4 and row["healthy_chains"] == 3
    for key in ("sd_log_metric_median", "sd_log_metric_max", "tensor_sd_log_metric_max"):
        assert math.isfinite(row[key]) and row[key] >= 0, key
    # The median over coordinates cannot exceed the largest coordinate's spread.
    assert row["sd_log_metric_median"] <= row["sd_log_metric_max"]
    assert row["step_size_median"] > 0 and row["step_size_max_over_min"] >= 1
    assert np.isfinite(row["llc_mean"]) and row["llc_sd_across_chains"] >= 0


def test_settings_cover_both_burnins_and_dampings(bench):
    burnins = {b for b, _ in bench.SETTINGS}
    dampings = {d for _, d in bench.SETTINGS}
    assert burnins == {2000, 8000} and dampings == {1e-4, 1e-2}
    assert len(bench.SETTINGS) == len(burnins) * len(dampings)
