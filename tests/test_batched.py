"""Batched chains (``chain_mode="batched"``) against the sequential path, fallback, settings.

Batched chain c consumes its own generator exactly as the sequential chain c does, so traces
agree up to float rounding: a batched matrix product (bmm under vmap) may round differently
from a plain one (~1e-7 relative per step in fp32), and SGLD with the same noise does not
amplify such differences much over ~100 steps of a contracting chain. The tolerance 1e-4
(relative) is ~100× the differences measured on these configurations and ~1e4× smaller than
the differences between chains, which any mix-up of generators, data order or step sizes
would produce.
"""

from __future__ import annotations

import logging
import os
import re
import warnings

os.environ["HF_HUB_OFFLINE"] = "1"

import numpy as np
import pytest
import torch
from torch import nn

from hf_llc import SamplerConfig, estimate_llc
from hf_llc.cli import build_parser, config_from_args, parse_args
from hf_llc.models.dln import make_dln_problem
from hf_llc.sampling.engines import NotBatchable, stack_batches

RTOL = 1e-4


@pytest.fixture(scope="module")
def dln():
    # n = 512 with batches of 32: 16 steps per epoch, so every chain reshuffles several times.
    model, dataset, _ = make_dln_problem([6, 5, 4, 6], construction="full_rank", num_samples=512)
    return model, dataset


def _run(model, dataset, mode, **kw):
    base = dict(num_chains=3, num_burnin=40, num_draws=60, batch_size=32, chain_mode=mode)
    base.update(kw)
    with warnings.catch_warnings():
        # No warning expected; a sequential fallback shows in diagnostics["chain_mode"].
        warnings.simplefilter("error", UserWarning)
        return estimate_llc(
            model,
            dataset,
            SamplerConfig(**base),
            # Per-sample losses: exercises the cache at w* and the paired estimator too.
            loss_fn=lambda out, batch: model.per_sample_loss(out.logits, batch["labels"]),
            progress=False,
        )


def _assert_same_chains(seq, bat):
    assert seq.diagnostics["chain_mode"] == "sequential"
    assert bat.diagnostics["chain_mode"] == "batched"
    np.testing.assert_allclose(bat.loss_trace, seq.loss_trace, rtol=RTOL, atol=1e-9)
    for a, b in zip(bat.diagnostics["burnin_trace"], seq.diagnostics["burnin_trace"]):
        np.testing.assert_allclose(a, b, rtol=RTOL, atol=1e-9)
    np.testing.assert_allclose(
        bat.diagnostics["step_size_per_chain"], seq.diagnostics["step_size_per_chain"], rtol=RTOL
    )
    np.testing.assert_allclose(bat.llc_per_chain, seq.llc_per_chain, rtol=RTOL)
    np.testing.assert_allclose(bat.llc_paired_per_chain, seq.llc_paired_per_chain, rtol=RTOL)
    # The chains differ from each other by far more than the tolerance (own data, own noise).
    rows = seq.loss_trace
    assert np.abs(rows[0] - rows[1]).max() > 1e3 * RTOL * np.abs(rows).max()


@pytest.mark.parametrize(
    "settings",
    [
        dict(step_size=2e-4, preconditioner="identity"),
        dict(mala=True),  # the default recipe: curvature step sizes, fisher-burnin
        dict(preconditioner="rmsprop-burnin"),
        dict(step_size=2e-4, preconditioner="rmsprop", localization=10, draw_every=2, num_draws=30),
        dict(mala=True, integrator="leimkuhler-matthews"),
        dict(step_size=2e-4, preconditioner="identity", integrator="leimkuhler-matthews"),
        # Probed re-measurements after each fisher-burnin re-estimate (reach ≠ 1).
        dict(integrator="leimkuhler-matthews", step_scale=0.6, probe_reach=2.0),
        # The equivariant first A: each row's Hutchinson probes from its own generator.
        dict(fisher_start="curvature"),
    ],
    ids=[
        "identity-fixed",
        "default-with-mala",
        "rmsprop-burnin",
        "rmsprop-thinned",
        "leimkuhler-matthews-with-mala",
        "leimkuhler-matthews-identity",
        "probe-reach-2",
        "fisher-start-curvature",
    ],
)
def test_batched_chains_match_sequential_chains(dln, settings):
    model, dataset = dln
    seq = _run(model, dataset, "sequential", **settings)
    bat = _run(model, dataset, "batched", **settings)
    _assert_same_chains(seq, bat)
    if settings.get("mala"):
        np.testing.assert_allclose(
            bat.diagnostics["mala_acceptance_per_chain"],
            seq.diagnostics["mala_acceptance_per_chain"],
            rtol=1e-3,  # acceptance = exp(difference of potentials): rounding is amplified
        )
        steps = [len(h) for h in bat.diagnostics["step_size_history"]]
        assert steps == [len(h) for h in seq.diagnostics["step_size_history"]] and min(steps) > 1


def test_user_diagonal_preconditioner_batched_matches_sequential(dln):
    model, dataset = dln
    diag = {n: torch.full_like(p, 0.5 + i) for i, (n, p) in enumerate(model.named_parameters())}
    seq = _run(model, dataset, "sequential", step_size=1e-4, preconditioner=diag)
    bat = _run(model, dataset, "batched", step_size=1e-4, preconditioner=diag)
    _assert_same_chains(seq, bat)


def test_auto_batches_several_chains_and_runs_one_chain_sequentially(dln):
    model, dataset = dln
    several = _run(model, dataset, "auto", step_size=2e-4, num_chains=2, num_draws=5)
    one = _run(model, dataset, "auto", step_size=2e-4, num_chains=1, num_draws=5)
    assert several.diagnostics["chain_mode"] == "batched"
    assert one.diagnostics["chain_mode"] == "sequential"
    # Chain 0 is the same chain either way.
    np.testing.assert_allclose(several.loss_trace[0], one.loss_trace[0], rtol=RTOL)


class Quadratic(nn.Module):
    """ℓ_i(w) = ½‖w − x_i‖² per sample (precision nβ per coordinate at full batch)."""

    def __init__(self, w0):
        super().__init__()
        self.w = nn.Parameter(w0.clone())

    def forward(self, x):
        return 0.5 * ((self.w - x) ** 2).sum(-1)


class Branchy(Quadratic):
    """Data-dependent Python control flow: cannot run under vmap."""

    def forward(self, x):
        if bool(x.sum() > 0):
            return super().forward(x)
        return super().forward(-x)


def _per_sample(outputs, batch):
    return outputs


def _quadratic_data():
    gen = torch.Generator().manual_seed(0)
    return {"x": 1.0 + 0.1 * torch.randn(16, 4, generator=gen)}


def test_diverging_chains_retry_like_sequential_chains(caplog):
    # εnβ = 10 explodes (ρ = 1 − εnβ/2 = −4), ε/2 too (ρ = −1.5), ε/4 is stable (ρ = −0.25):
    # every chain diverges twice and then samples; the retries run sequentially from the
    # generator state the batched attempt left, so everything matches the sequential run.
    data = _quadratic_data()
    model = Quadratic(data["x"].mean(0))
    cfg = dict(
        step_size=0.1,
        nbeta=100.0,
        localization=0.0,
        preconditioner="identity",
        batch_size=16,
        num_chains=2,
        num_burnin=10,
        num_draws=200,
        divergence_retries=2,
    )
    out = {}
    for mode in ("sequential", "batched"):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="hf_llc"):
            out[mode] = estimate_llc(
                model,
                data,
                SamplerConfig(chain_mode=mode, **cfg),
                loss_fn=_per_sample,
                progress=False,
            )
        out[mode + "-warnings"] = sorted(r.getMessage() for r in caplog.records)
    seq, bat = out["sequential"], out["batched"]
    assert bat.diagnostics["chain_mode"] == "batched"
    assert [(r["chain"], r["step"]) for r in bat.diagnostics["retries"]] == [
        (r["chain"], r["step"]) for r in seq.diagnostics["retries"]
    ]
    assert len(seq.diagnostics["retries"]) == 4 and not bat.diagnostics["divergences"]
    assert bat.diagnostics["step_size_per_chain"] == pytest.approx([0.025, 0.025])
    np.testing.assert_allclose(bat.loss_trace, seq.loss_trace, rtol=RTOL)
    assert out["batched-warnings"] == out["sequential-warnings"]
    assert sum("restarted it" in m for m in out["batched-warnings"]) == 4


def test_unvmappable_model_falls_back_to_sequential_with_a_notice(caplog):
    data = _quadratic_data()
    model = Branchy(data["x"].mean(0))
    cfg = dict(step_size=1e-3, nbeta=100.0, batch_size=8, num_chains=2, num_burnin=5)
    with caplog.at_level(logging.INFO, logger="hf_llc"):
        result = estimate_llc(
            model,
            data,
            SamplerConfig(num_draws=20, chain_mode="batched", **cfg),
            loss_fn=_per_sample,
            progress=False,
        )
    notices = [r for r in caplog.records if "cannot run batched" in r.getMessage()]
    assert len(notices) == 1 and "\n" not in notices[0].getMessage()
    assert re.search(r"cannot run batched.*one after another", notices[0].getMessage())
    # Asked for explicitly, the fallback is a warning; under "auto" only an info record.
    assert notices[0].levelno == logging.WARNING
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="hf_llc"):
        estimate_llc(
            model,
            data,
            SamplerConfig(num_draws=20, chain_mode="auto", **cfg),
            loss_fn=_per_sample,
            progress=False,
        )
    (auto,) = [r for r in caplog.records if "cannot run batched" in r.getMessage()]
    assert auto.levelno == logging.INFO
    assert result.diagnostics["chain_mode"] == "sequential"
    plain = estimate_llc(
        model,
        data,
        SamplerConfig(num_draws=20, chain_mode="sequential", **cfg),
        loss_fn=_per_sample,
        progress=False,
    )
    np.testing.assert_array_equal(result.loss_trace, plain.loss_trace)


class _ListProblem:
    num_samples = 8

    def batch(self, indices):
        return {"ids": indices.tolist()}


def test_batches_that_are_not_tensors_are_not_batchable():
    with pytest.raises(NotBatchable, match="'ids'"):
        stack_batches(_ListProblem(), torch.zeros(2, 3, dtype=torch.long))


def test_chain_mode_setting_validates_round_trips_and_has_a_cli_flag():
    with pytest.raises(ValueError, match="chain_mode='vmap'.*'auto', 'batched', 'sequential'"):
        SamplerConfig(chain_mode="vmap")
    with pytest.raises(ValueError, match="compile must be True or False"):
        SamplerConfig(compile="yes")
    cfg = SamplerConfig(chain_mode="sequential", compile=True)
    assert SamplerConfig.from_dict(cfg.to_dict()) == cfg
    assert SamplerConfig().chain_mode == "sequential" and SamplerConfig().compile is False
    args = parse_args(build_parser(), ["validate", "--chain-mode", "batched", "--compile"])
    parsed = config_from_args(args)
    assert parsed.chain_mode == "batched" and parsed.compile is True


@pytest.mark.slow  # torch.compile takes ~30 s per configuration on 2 CPU cores
@pytest.mark.parametrize("mode", ["sequential", "batched"])
def test_compiled_loss_matches_eager(dln, mode):
    # Inductor may fuse and reorder float operations: per-step differences are ~1e-7 relative
    # (fp32 rounding), far inside RTOL over 50 steps of a contracting chain (see module doc).
    model, dataset = dln
    kw = dict(step_size=2e-4, preconditioner="identity", num_chains=2, num_burnin=20)
    eager = _run(model, dataset, mode, num_draws=30, **kw)
    compiled = _run(model, dataset, mode, num_draws=30, compile=True, **kw)
    assert compiled.diagnostics["chain_mode"] == eager.diagnostics["chain_mode"] == mode
    assert compiled.config["compile"] is True
    np.testing.assert_allclose(compiled.loss_trace, eager.loss_trace, rtol=RTOL, atol=1e-9)
    np.testing.assert_allclose(compiled.llc_per_chain, eager.llc_per_chain, rtol=RTOL)
