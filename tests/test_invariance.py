"""The default sampler is invariant to rescalings that keep the function (issue: the same
function gets the same LLC).

Fast tests pin the mechanism exactly: the ``"fisher-burnin"`` diagonal goes to D·A·D under
w → D·w, and one SGLD step from D·w with gradient D⁻¹·g lands on D·(the step from w). Slow
tests (``pytest -m slow``) pin the outcome: rescaled deep linear networks against Aoyagi's exact
λ, and a rescaled ReLU network whose λ̂ must not depend on the rescaling.
"""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch
from _scripts import load_script

from hf_llc import SamplerConfig, estimate_llc, make_dln_problem
from hf_llc.models.dln import rescale_dln
from hf_llc.sampling import FisherPreconditioner, sgld_step_
from hf_llc.validation import per_sample_loss_fn

os.environ["HF_HUB_OFFLINE"] = "1"

SEGMENTS = [6, 4, 5]  # three "parameter tensors" of a 15-parameter vector
NBETA = 50.0


def _per_tensor_scale(seed: int) -> torch.Tensor:
    """D: one factor in [0.1, 10] per tensor (the damping is per tensor, so this is exact)."""
    gen = torch.Generator().manual_seed(seed)
    logs = torch.empty(len(SEGMENTS), dtype=torch.float64).uniform_(
        math.log(0.1), math.log(10.0), generator=gen
    )
    return torch.cat([torch.full((n,), float(math.exp(v))) for n, v in zip(SEGMENTS, logs)])


def _fed(D, grads, w, w_star, *, freeze: bool = False) -> FisherPreconditioner:
    """A preconditioner after one window of the gradients ``grads`` (seen in coordinates
    u = D·w: gradients D⁻¹·g), then refreshed (or frozen: the window's A in fp32)."""
    d = w.numel()
    pre = FisherPreconditioner(torch.zeros(d, dtype=torch.float64), NBETA, 1e-4, SEGMENTS)
    for g in grads:
        g = g.clone() if D is None else g / D
        pre.drift_(g, w, w_star, nbeta=NBETA, localization=1.0, adapt=True)
    pre.freeze() if freeze else pre.refresh()
    return pre


def test_fisher_diagonal_goes_to_DAD_and_its_localizer_metric_to_inverse():
    gen = torch.Generator().manual_seed(0)
    d = sum(SEGMENTS)
    grads = [torch.randn(d, generator=gen, dtype=torch.float64) for _ in range(20)]
    w_star = torch.randn(d, generator=gen, dtype=torch.float64)
    D = _per_tensor_scale(1).double()
    plain = _fed(None, grads, w_star, w_star)
    scaled = _fed(D, grads, D * w_star, D * w_star)
    torch.testing.assert_close(scaled.A, D * plain.A * D, rtol=1e-12, atol=0)
    torch.testing.assert_close(scaled.metric, plain.metric / D**2, rtol=1e-12, atol=0)
    plain = _fed(None, grads, w_star, w_star, freeze=True)
    scaled = _fed(D, grads, D * w_star, D * w_star, freeze=True)
    torch.testing.assert_close(scaled.A, D * plain.A * D, rtol=1e-12, atol=0)


def test_one_step_from_D_w_lands_on_D_times_the_step_from_w():
    """u = D·w, ∇_u = D⁻¹·∇_w and Ã = D·A·D: the drift, the metric localizer and the noise
    all map by D, so the two chains are the same chain in two coordinate systems."""
    gen = torch.Generator().manual_seed(1)
    d = sum(SEGMENTS)
    grads = [torch.randn(d, generator=gen, dtype=torch.float64) for _ in range(20)]
    w_star = torch.randn(d, generator=gen, dtype=torch.float64)
    w = w_star + 0.1 * torch.randn(d, generator=gen, dtype=torch.float64)
    g = torch.randn(d, generator=gen, dtype=torch.float64)
    D = _per_tensor_scale(2).double()
    plain = _fed(None, grads, w_star, w_star, freeze=True)
    scaled = _fed(D, grads, D * w_star, D * w_star, freeze=True)
    w_next, u_next = w.clone(), D * w
    kw = dict(step_size=0.01, nbeta=NBETA, localization=3.0)
    sgld_step_(
        w_next, g.clone(), w_star, generator=torch.Generator().manual_seed(5), precond=plain, **kw
    )
    sgld_step_(
        u_next, g / D, D * w_star, generator=torch.Generator().manual_seed(5), precond=scaled, **kw
    )
    torch.testing.assert_close(u_next, D * w_next, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("frozen", [False, True])
@pytest.mark.parametrize("fused", [False, True])
def test_euclidean_localizer_step_is_the_formula(frozen, fused):
    """``localizer="euclidean"``: the step is w − (ε/2)·A·(nβ·g + γ·(w − w*)) + √(εA)·ξ with
    the Fisher A (the metric localizer's drift is A·nβ·g + (γ/nβ)·(w − w*)),
    both through the separate drift and the fused drift-and-descend paths; adapting, the window
    sees only nβ·g, as with the metric localizer."""
    gen = torch.Generator().manual_seed(3)
    d = sum(SEGMENTS)
    w_star = torch.randn(d, generator=gen, dtype=torch.float64)
    w = w_star + 0.3 * torch.randn(d, generator=gen, dtype=torch.float64)
    g = torch.randn(d, generator=gen, dtype=torch.float64)
    xi = torch.randn(d, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    eps, gamma = 0.01, 3.0
    steps = {}
    for euclidean in (False, True):
        pre = FisherPreconditioner(
            torch.zeros(d, dtype=torch.float64), NBETA, 1e-4, SEGMENTS, euclidean=euclidean
        )
        for h in [torch.randn(d, generator=torch.Generator().manual_seed(k)) for k in range(4)]:
            pre.drift_(h.double(), w, w_star, nbeta=NBETA, localization=gamma, adapt=True)
        pre.freeze() if frozen else pre.refresh()
        A = pre.A
        assert (pre.metric is None) == euclidean
        out = w.clone()
        if fused:
            noise = (eps * A).sqrt() * xi
            out.add_(noise)
            pre.drift_descend_(
                out, g.clone(), w_star, nbeta=NBETA, localization=gamma, coef=-eps / 2
            )
            start = w + noise
        else:
            sgld_step_(
                out,
                g.clone(),
                w_star,
                step_size=eps,
                nbeta=NBETA,
                localization=gamma,
                generator=torch.Generator().manual_seed(5),
                precond=pre,
            )
            start = w
        if euclidean:
            moved = start - eps / 2 * A * (NBETA * g + gamma * (start - w_star))
        else:  # the localizer acts after the gradient move (an O(ε²) difference)
            moved = start - eps / 2 * A * NBETA * g
            k = -eps / 2 * gamma / NBETA
            moved = (1 + k) * moved - k * w_star
        expected = moved + (0 if fused else (eps * A).sqrt() * xi)
        torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
        steps[euclidean] = out
    assert not torch.allclose(steps[False], steps[True])


# ------------------------------------------------------------------------------------------
# The outcome, at the defaults (slow).


# Cases not used to choose the recipe: aligned and full_rank, depths 2–4.
RESCALED_CASES = [
    ([6, 4, 6], 3, "aligned", 11),
    ([5, 7, 4], 4, "full_rank", 12),
    ([4, 6, 5, 4], 2, "aligned", 13),
    ([7, 5, 6, 5], 5, "full_rank", 14),
    ([5, 4, 6, 4, 5], 3, "aligned", 15),
    ([4, 5, 4, 6, 4], 4, "full_rank", 16),
]


@pytest.mark.slow
def test_rescaled_deep_linear_networks_match_theory_at_the_defaults():
    # 4 chains × 3,000 draws at the defaults; the measured spread of λ̂ over seeds on such cases
    # is a few percent (standard errors ≈ 1–2%), so a median of 5% and a max of 15% (the issue's
    # bars) hold with margin unless the recipe loses invariance (then errors reach 20–60%).
    torch.set_num_threads(1)
    errors = []
    for widths, rank, construction, seed in RESCALED_CASES:
        model, dataset, lam = make_dln_problem(widths, rank, construction, num_samples=100_000)
        rescale_dln(model, seed)
        result = estimate_llc(
            model, dataset, SamplerConfig(), loss_fn=per_sample_loss_fn(model), progress=False
        )
        errors.append(abs(result.llc_mean - float(lam)) / float(lam))
    assert np.median(errors) <= 0.05, errors
    assert max(errors) <= 0.15, errors


def _relu_sweep(cfg: SamplerConfig) -> list[float]:
    """λ̂ of the ReLU 10-20-10 of examples/rescaling_invariance.py at each of its α (one
    function: layer 1 × α, layer 2 ÷ α), with ``cfg``."""
    torch.set_num_threads(1)
    ex = load_script("examples/rescaling_invariance.py")
    teacher = ex.make_teacher()
    data = ex.make_data(teacher, 10_000)
    values = []
    for alpha in ex.ALPHAS:
        net = ex.rescaled(teacher, alpha)
        result = estimate_llc(net, data, cfg, loss_fn=ex.gaussian_nll, progress=False)
        values.append(result.llc_mean)
    return values


@pytest.mark.slow
def test_relu_network_estimate_does_not_depend_on_layer_rescaling_at_the_defaults():
    # The ReLU 10-20-10 of examples/rescaling_invariance.py at α = 10⁻²…10² (one function), at
    # the defaults (4 chains × 3,000 draws). Each λ̂ has a standard error of ≈ 1–3% of ~165,
    # so "every α within ±5% of their mean" (the bar) holds for an invariant recipe,
    # while the previous default read ≈ 30–65% apart across α.
    values = _relu_sweep(SamplerConfig())
    mean = float(np.mean(values))
    assert max(abs(v - mean) for v in values) <= 0.05 * mean, values


@pytest.mark.slow
def test_relu_estimate_does_not_depend_on_rescaling_at_all_from_the_curvature_start():
    # The same sweep from the equivariant first A (fisher_start="curvature"). From the flat
    # start the default keeps a trend (151.2 at α = 10⁻², 160.9 at 10²: the first A is ~α² off
    # in one layer and may grow only tenfold per window); from the curvature start the chains
    # at the five α are the same chains up to float rounding and the start's residual, and
    # read 166.15 at every α to two decimals. So every α within ±1% of the mean: far tighter
    # than one λ̂'s standard error (≈ 1.6%), because the chains share seeds and so their noise.
    values = _relu_sweep(SamplerConfig(fisher_start="curvature"))
    mean = float(np.mean(values))
    assert max(abs(v - mean) for v in values) <= 0.01 * mean, values
