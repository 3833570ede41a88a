"""Replica exchange in the exact reference sampler (``reference_llc(num_temperatures=K)``): a
two-mode target whose λ is known by quadrature, the swap's re-weighting, the report and bad
settings."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from hf_llc import SamplerConfig, reference_llc
from hf_llc.reference import _Chain, _ladder, _ladder_updates, _placed_ladder, _Target

N, NBETA, GAMMA = 200, 40.0, 1.0


class TwoWells(nn.Module):
    """f(x) = g(w)·x, g(w) = (w − 1)(w + 1)², fitted to y = 0: L_n(w) = g(w)²·mean(x²) has a
    regular minimum at w* = 1 (λ = 1/2) and a quartic one at w = −1 (λ = 1/4), the two apart by
    a barrier nβ·L_n(0) = nβ·mean(x²) ≈ 37: a chain started at w* never leaves its mode."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.ones(1))

    def forward(self, x):
        w = self.w
        return (w - 1) * (w + 1) ** 2 * x


def _squared_error(outputs, batch):
    return (outputs - batch["y"]).pow(2).squeeze(-1)


def _data():
    x = torch.randn(N, 1, generator=torch.Generator().manual_seed(0))
    return {"x": x, "y": torch.zeros(N, 1)}


def _exact(data) -> tuple[float, float]:
    """λ = nβ·(E_p[L_n] − L_n(w*)) by quadrature on a fine grid (L_n(w*) = 0 exactly), and the
    probability of the far mode (w < 0)."""
    m2 = float(data["x"].double().pow(2).mean())
    grid = np.linspace(-4.0, 4.0, 400_001)
    loss = ((grid - 1) * (grid + 1) ** 2) ** 2 * m2
    log_p = -NBETA * loss - 0.5 * GAMMA * (grid - 1) ** 2
    p = np.exp(log_p - log_p.max())
    return NBETA * float((loss * p).sum() / p.sum()), float(p[grid < 0].sum() / p.sum())


CONFIG = SamplerConfig(nbeta=NBETA, localization=GAMMA, batch_size=N)
RUN = dict(loss_fn=_squared_error, num_chains=4, num_warmup=500, num_draws=2000, seed=0)


def test_replica_exchange_finds_the_mode_a_single_chain_misses():
    """The far mode holds half the mass (0.52) and pulls λ from the regular mode's ≈ 0.5 to
    0.40. MALA from w* stays in its mode: λ̂ ≈ 0.51, many MCSE off, while its R̂ is ≈ 1
    (every chain is stuck in the same mode, so they agree). Four replicas down to t = 0.02
    (barrier ≈ 0.7 there) swap with probability ≈ 0.6 and recover the quadrature value.
    4 chains × 2000 draws, seed 0: MCSE ≈ 0.013; measured 0.389 (0.8 MCSE from 0.399), so
    3 MCSE covers the Monte Carlo error with room."""
    data = _data()
    exact, far_mass = _exact(data)
    assert 0.3 < far_mass < 0.7 and 0.35 < exact < 0.45
    single = reference_llc(TwoWells(), data, CONFIG, **RUN)
    assert single.tempering is None
    assert single.llc_mean - exact > 5 * single.llc_stderr
    assert single.rhat < 1.05  # R̂ does not see the missed mode
    tempered = reference_llc(
        TwoWells(), data, CONFIG, **RUN, num_temperatures=4, min_temperature=0.02
    )
    assert abs(tempered.llc_mean - exact) < 3 * tempered.llc_stderr
    report = tempered.tempering
    assert report["temperatures"] == pytest.approx([1.0, 0.02 ** (1 / 3), 0.02 ** (2 / 3), 0.02])
    assert len(report["swap_acceptance"]) == 3
    assert all(0.2 < a < 1.0 for a in report["swap_acceptance"])
    # The t = 1 replica is the estimate: its λ̂ at nβ' = nβ is λ̂ itself.
    assert report["llc_by_temperature"][0] == pytest.approx(tempered.llc_mean, rel=1e-9)
    assert len(report["step_size"]) == len(report["acceptance"]) == 4
    assert tempered.to_dict()["tempering"] == report
    assert "4 replicas down to t = 0.02" in tempered.summary()
    assert "replicas" not in single.summary()


def test_a_swapped_state_is_reweighted_exactly():
    """After a swap a replica's U and ∇U are those of its own temperature at the new point,
    computed from the other replica's without evaluating the model: they match a fresh
    evaluation to float64 rounding (Euclidean and metric localizers)."""
    data = _data()
    w_star = torch.ones(1, dtype=torch.float64)

    class Problem:
        num_samples = N

        def batch(self, rows):
            return {"x": data["x"][rows].double()}

        def loss(self, w, batch):
            return (((w - 1) * (w + 1) ** 2) * batch["x"]).pow(2).squeeze(-1)

    base = _Target(Problem(), w_star, NBETA, GAMMA, N)
    for metric in (None, torch.tensor([3.0], dtype=torch.float64)):
        target = base.with_metric(metric)
        hot, cold = target.with_temperature(0.1), target.with_temperature(1.0)
        gen = torch.Generator().manual_seed(0)
        chain = _Chain(cold, w_star, gen, 0.01)
        w = torch.tensor([-0.7], dtype=torch.float64)
        u_hot, loss, grad_hot = hot(w)
        chain.adopt(w, loss, grad_hot, 0.1)
        u, loss_cold, grad = cold(w)
        assert chain.u == pytest.approx(u, rel=1e-12) and chain.loss == loss_cold
        assert torch.allclose(chain.grad, grad, rtol=1e-12, atol=0)


def test_the_ladder_is_geometric():
    assert _ladder(1, 0.01) == [1.0]
    ladder = _ladder(5, 0.01)
    assert ladder[0] == 1.0 and ladder[-1] == pytest.approx(0.01)
    ratios = [b / a for a, b in zip(ladder, ladder[1:])]
    assert all(math.isclose(r, ratios[0]) for r in ratios)


def test_the_ladder_is_placed_where_the_swaps_fail():
    """Re-placing keeps the ends and the order; equal rejection leaves a geometric ladder as
    it is; rejection piled on the cold pair pulls the rungs towards t = 1; and on the
    cumulative rejection the re-placed rungs split it into equal parts."""
    ladder = _ladder(5, 0.01)
    assert _placed_ladder(ladder, [0.4] * 4) == pytest.approx(ladder, rel=1e-12)
    rejection = [0.9, 0.3, 0.2, 0.2]
    placed = _placed_ladder(ladder, rejection)
    assert placed[0] == 1.0 and placed[-1] == ladder[-1]
    assert all(a > b for a, b in zip(placed, placed[1:]))
    assert placed[1] > ladder[1]
    # Λ(t), piecewise linear in log t through the old rungs, at the new rungs: equal steps.
    cum = np.concatenate([[0.0], np.cumsum(rejection)])
    x_old = np.log(ladder)[::-1]  # np.interp needs rising x
    lam = np.interp(np.log(placed), x_old, cum[::-1])
    assert np.diff(lam) == pytest.approx([cum[-1] / 4] * 4, rel=1e-9)
    assert _placed_ladder([1.0, 0.1], [0.9]) == [1.0, 0.1]  # no rung to move


def test_ladder_updates_fall_in_the_first_half_of_the_warm_up():
    assert _ladder_updates(1000, 1) == [125, 250, 500]
    assert _ladder_updates(1000, 20) == [250, 500]  # 125 steps are 6 rounds of swaps: too few
    assert _ladder_updates(15, 1) == []


def test_an_adaptive_ladder_evens_the_swaps_and_stays_exact():
    """Six replicas down to t = 0.005 on the two wells: the geometric ladder's pairs swap with
    probability 0.64–0.88; re-placed during the warm-up they swap at 0.71–0.74 (measured,
    seed 0), and λ̂ is still the quadrature value: 4 chains × 2000 draws give an MCSE ≈ 0.013,
    measured 0.4004 against 0.3994 (0.1 MCSE), so 3 MCSE covers the Monte Carlo error."""
    data = _data()
    exact, _ = _exact(data)
    runs = {
        ladder: reference_llc(
            TwoWells(),
            data,
            CONFIG,
            **RUN,
            num_temperatures=6,
            min_temperature=0.005,
            ladder=ladder,
        )
        for ladder in ("geometric", "adaptive")
    }
    spread = {k: np.ptp(r.tempering["swap_acceptance"]) for k, r in runs.items()}
    assert spread["adaptive"] < 0.5 * spread["geometric"]
    adaptive = runs["adaptive"]
    assert abs(adaptive.llc_mean - exact) < 3 * adaptive.llc_stderr
    report = adaptive.tempering
    assert report["ladder"] == "adaptive" and "ladder" not in runs["geometric"].tempering
    assert len(report["temperatures_per_chain"]) == 4
    for temps in report["temperatures_per_chain"]:
        assert temps[0] == 1.0 and temps[-1] == pytest.approx(0.005)
        assert all(a > b for a, b in zip(temps, temps[1:]))
    assert report["llc_by_temperature"][0] == pytest.approx(adaptive.llc_mean, rel=1e-9)
    assert "(adaptive ladder)" in adaptive.summary()


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(num_temperatures=0), "num_temperatures"),
        (dict(num_temperatures=2.5), "num_temperatures"),
        (dict(num_temperatures=3, min_temperature=1.0), "min_temperature"),
        (dict(num_temperatures=3, min_temperature=0.0), "min_temperature"),
        (dict(num_temperatures=3, swap_every=0), "swap_every"),
        (dict(num_temperatures=3, ladder="linear"), "ladder"),
    ],
)
def test_bad_tempering_settings_are_refused(kwargs, name):
    with pytest.raises(ValueError, match=name):
        reference_llc(TwoWells(), _data(), CONFIG, loss_fn=_squared_error, **kwargs)
