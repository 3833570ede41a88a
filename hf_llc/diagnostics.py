"""Convergence diagnostics of loss traces across chains, checks of the sampler's settings, and
the verdict on an estimate: ok, warning or fail.

Convergence statistics follow Vehtari, Gelman, Simpson, Carpenter & Bürkner, "Rank-normalization,
folding, and localization: an improved R̂ for assessing convergence of MCMC", *Bayesian Analysis*
16(2), 2021 (arXiv 1903.08008), each under one name:

- :func:`rhat_rank`: the larger of the bulk R̂ (split R̂ of the rank-normalized draws) and the
  folded R̂ (split R̂ of the rank-normalized |draw − median|), their eq. (15)–(16);
- :func:`ess_bulk`: the effective sample size of the rank-normalized split chains;
- :func:`ess_tail`: the smaller of the effective sample sizes of the 5% and 95% quantiles
  (the indicator draws I(θ ≤ q)) on the split chains.

Inputs are arrays of shape (chains, draws) of finite values; a statistic that cannot be
computed (too few draws or chains, or draws without spread) is NaN, and the verdict then says
so (:func:`statistic_checks`). The checks of the settings (:func:`draws_checks`,
:func:`nbeta_checks`, :func:`movement_checks`, :func:`localization_checks`) take plain numbers
so that they can be fed from any sampler.
"""

from __future__ import annotations

import math

import numpy as np
import torch

#: Draws each chain needs before R̂ and ESS are computed: the chains are split in halves, and a
#: half needs a few draws for its variance and its autocorrelations to exist at all. With fewer
#: the statistics are NaN and the verdict says that they could not be computed.
MIN_DRAWS_FOR_STATISTICS = 8
#: Chains R̂ needs: with one chain only its two halves are compared, which says nothing about
#: whether independent chains agree.
MIN_CHAINS_FOR_RHAT = 2


def _as_chains(traces) -> np.ndarray:
    x = np.asarray(traces, dtype=np.float64)
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2:
        raise ValueError(f"traces must be (chains, draws), got shape {x.shape}.")
    return x


def split_chains(traces) -> np.ndarray:
    """(2·chains, draws // 2): every chain cut into its first and second half (the middle
    draw of an odd-length chain is dropped), so that a trend within a chain shows up as two
    half-chains that disagree (Vehtari et al. 2021, §3)."""
    x = _as_chains(traces)
    half = x.shape[1] // 2
    return np.concatenate([x[:, :half], x[:, x.shape[1] - half :]], axis=0)


def rank_normalize(traces) -> np.ndarray:
    """Normal scores of the pooled ranks: z = Φ⁻¹((r − 3/8) / (S + 1/4)), r the rank of a draw
    among all S draws of every chain (ties get their average rank), Φ the standard normal
    distribution function (Blom's offsets, Vehtari et al. 2021, eq. 14). Same shape."""
    x = _as_chains(traces)
    flat = x.ravel()
    order = np.argsort(flat, kind="mergesort")
    ranks = np.empty(flat.size, dtype=np.float64)
    ranks[order] = np.arange(1, flat.size + 1, dtype=np.float64)
    # Average the ranks of tied values (runs of equal values in sorted order).
    sorted_vals = flat[order]
    starts = np.flatnonzero(np.r_[True, sorted_vals[1:] != sorted_vals[:-1]])
    ends = np.r_[starts[1:], flat.size]
    for s, e in zip(starts, ends):
        if e - s > 1:
            ranks[order[s:e]] = 0.5 * (s + 1 + e)
    p = torch.from_numpy(np.asarray((ranks - 0.375) / (flat.size + 0.25), dtype=np.float64))
    return torch.special.ndtri(p).numpy().reshape(x.shape)  # Φ⁻¹


def _rhat_of_chains(x: np.ndarray) -> float:
    """The potential scale reduction √(var⁺/W) of (chains, draws) (Gelman et al., *Bayesian
    Data Analysis*, 3rd ed., eq. 11.3–11.4): W the mean within-chain variance, B/N the variance
    of the chain means, var⁺ = (N − 1)/N·W + B/N. NaN when W = 0."""
    m, n = x.shape
    if m < 2 or n < 2:
        return float("nan")
    within = x.var(axis=1, ddof=1).mean()
    if not within > 0:
        return float("nan")
    between_over_n = x.mean(axis=1).var(ddof=1)
    var_plus = (n - 1) / n * within + between_over_n
    return float(math.sqrt(var_plus / within))


def _autocovariance(x: np.ndarray) -> np.ndarray:
    """Per-chain autocovariances (divisor N) at lags 0 … N−1, by FFT: (chains, draws)."""
    n = x.shape[1]
    centred = x - x.mean(axis=1, keepdims=True)
    size = 1 << int(math.ceil(math.log2(2 * n)))
    spectrum = np.fft.rfft(centred, n=size, axis=1)
    return np.fft.irfft(spectrum * np.conj(spectrum), n=size, axis=1)[:, :n] / n


def _ess_of_chains(x: np.ndarray) -> float:
    """Effective sample size of (chains, draws) (Vehtari et al. 2021, eq. 10–12).

    ρ̂_t = 1 − (W − mean_m γ̂_{t,m}) / var⁺ (γ̂_{t,m} chain m's autocovariance at lag t, W and
    var⁺ as in R̂); the sum τ̂ = −1 + 2·Σ_k P̂_k over Geyer's initial monotone sequence of the
    pair sums P̂_k = ρ̂_{2k} + ρ̂_{2k+1}, cut before the first negative one and made
    non-increasing; ESS = M·N / τ̂, with τ̂ ≥ 1 / log10(M·N) as Stan bounds it (antithetic
    chains could otherwise give an unbounded ESS). NaN when the draws have no spread.
    """
    m, n = x.shape
    if n < 4:
        return float("nan")
    acov = _autocovariance(x)
    within = acov[:, 0].mean() * n / (n - 1)
    between_over_n = x.mean(axis=1).var(ddof=1) if m > 1 else 0.0
    var_plus = (n - 1) / n * within + between_over_n
    if not var_plus > 0 or not within > 0:
        return float("nan")
    rho = 1.0 - (within - acov.mean(axis=0)) / var_plus
    rho[0] = 1.0
    total, last = 0.0, math.inf
    for k in range(0, n - 1, 2):
        pair = rho[k] + rho[k + 1]
        if pair < 0:
            break
        last = min(last, pair)  # initial monotone sequence
        total += last
    tau = max(2.0 * total - 1.0, 1.0 / math.log10(max(m * n, 10)))
    return float(m * n / tau)


def _enough(x: np.ndarray, min_chains: int) -> bool:
    return (
        x.shape[0] >= min_chains
        and x.shape[1] >= MIN_DRAWS_FOR_STATISTICS
        and bool(np.isfinite(x).all())
    )


def rhat_rank(traces) -> float:
    """Rank-normalized split R̂ (Vehtari et al. 2021, eq. 16): max(bulk R̂, folded R̂).

    Bulk: split R̂ of :func:`rank_normalize` of the split chains, which sees chains whose
    locations differ (and is not fooled by heavy tails). Folded: the same of |θ − median(θ)|,
    which sees chains whose scales differ. ≈ 1 when the chains agree. NaN with fewer than
    MIN_CHAINS_FOR_RHAT chains or MIN_DRAWS_FOR_STATISTICS draws per chain, or no spread.
    """
    x = _as_chains(traces)
    if not _enough(x, MIN_CHAINS_FOR_RHAT):
        return float("nan")
    bulk = _rhat_of_chains(rank_normalize(split_chains(x)))
    folded = _rhat_of_chains(rank_normalize(split_chains(np.abs(x - np.median(x)))))
    values = [v for v in (bulk, folded) if math.isfinite(v)]
    return max(values) if values else float("nan")


def ess_bulk(traces) -> float:
    """Bulk effective sample size (Vehtari et al. 2021, §4.3): the ESS of the rank-normalized
    split chains, i.e. how many independent draws the sample of the centre of the distribution
    (its mean, its median) is worth. NaN with fewer than MIN_DRAWS_FOR_STATISTICS draws per
    chain or no spread."""
    x = _as_chains(traces)
    if not _enough(x, 1):
        return float("nan")
    return _ess_of_chains(rank_normalize(split_chains(x)))


def ess_tail(traces, probabilities: tuple[float, float] = (0.05, 0.95)) -> float:
    """Tail effective sample size (Vehtari et al. 2021, §4.3): the smaller of the ESS of the
    indicator draws I(θ ≤ q_p) on the split chains, q_p the pooled p-quantile, for p = 5% and
    95%: how many independent draws the sample of the tails is worth. NaN as :func:`ess_bulk`."""
    x = _as_chains(traces)
    if not _enough(x, 1):
        return float("nan")
    split = split_chains(x)
    values = [
        _ess_of_chains((split <= np.quantile(x, p)).astype(np.float64)) for p in probabilities
    ]
    return min(values) if all(math.isfinite(v) for v in values) else float("nan")


# --------------------------------------------------------------------------- verdict
#
# Thresholds of :func:`assess_estimate`, set with a margin from the deep-linear-network quick
# suite at the defaults and from constructed failures (tests/test_verdict.py); the measurements
# are in the README ("Where the thresholds come from"). Vehtari et al.'s own limits are not
# copied: an SGLD chain's excess loss on a singular posterior mixes slowly while λ̂ is accurate.

#: |mean flatness over C chains| above max(FLATNESS_FLOOR, FLATNESS_ONE_CHAIN / √C) is "not
#: flat". Flatness is √12 × the correlation of the draws with time, so it lies in [−3.46, 3.46]
#: (±3.46 = a pure trend); in a stationary chain it is noise, and the limits are about three of
#: its spreads. A chain that mixes so slowly that its flatness exceeds them by chance has not
#: explored its posterior either, so the warning (more burn-in/draws) is then deserved anyway.
FLATNESS_ONE_CHAIN = 2.4
FLATNESS_FLOOR = 0.5
#: Blocks the second half is averaged into before its trend is measured: averaging removes
#: minibatch noise (independent from step to step) and keeps the trend, so a trend in a raw
#: L_B(w_t) trace is not hidden by minibatch noise. For independent noise the flatness of 50
#: block means has spread √(12/50) ≈ 0.49 per chain, inside the thresholds above.
FLATNESS_BLOCKS = 50
#: :func:`rhat_rank` of the excess-loss draws above this: the chains disagree (Gelman et al.'s
#: classic limit).
RHAT_MAX = 1.1
#: :func:`ess_bulk` below this many per chain: too few independent draws for the mean (λ̂) and
#: for R̂ itself to mean much.
ESS_BULK_MIN_PER_CHAIN = 10
#: :func:`ess_tail` below this many per chain: the tails (what R̂'s folded half and the
#: spread of λ̂ rest on) are sampled by too few independent draws.
ESS_TAIL_MIN_PER_CHAIN = 20
#: Per-chain mean MALA acceptance below this: the step is too coarse for the posterior, and λ̂
#: reads high.
MALA_MIN = 0.85
#: Paired traces only: more than this fraction of the draws below L_n(w*) (L_B(w_t) < L_B(w*))
#: means the typical sampled point has a lower loss than w*: w* is not at a minimum. At a
#: minimum the excess averages λ/nβ > 0.
FRACTION_BELOW_MAX = 0.5
#: The standard error of λ̂ over the chains (their standard deviation / √chains) above this
#: fraction of λ̂: the chains disagree so much that a second run could read 20% away. Rank-
#: based R̂ and ESS miss one chain whose mean is carried by rare large excursions (they rank
#: the excursion like any other high draw): at the origin of the [1, 2, 1] DLN one chain of
#: four read 1.21 against 0.46-0.52 (λ = 0.5) with R̂ 1.001. Over the 369 suite cases
#: committed under docs/ before this check existed it turns 2 of the 12 readings that were
#: more than 10% off yet `ok` into warnings, and none of the 114 `ok` readings within 5%.
RELATIVE_STDERR_MAX = 0.10


# ------------------------------------------------------------------ checks of the settings
#
# Each takes plain numbers and returns a list of (level, text) reasons, "fail" or "warning",
# each naming the setting and the fix. They do not depend on how the sampler measures its
# numbers, so a changed preconditioner or localizer only has to supply them.

#: Draws per chain below this: fail. λ̂_c is the mean of a handful of strongly correlated
#: minibatch losses, dominated by minibatch noise and by where the chain happened to start.
MIN_DRAWS_FAIL = 10
#: Draws per chain below this: warning (the spread of λ̂ across chains, R̂ and ESS rest on too
#: few draws to be trusted; the defaults take 3000).
MIN_DRAWS_WARN = 100
#: nβ / (n / log n) outside [1/NBETA_FACTOR_FAIL, NBETA_FACTOR_FAIL]: fail; outside
#: [1/NBETA_FACTOR_WARN, NBETA_FACTOR_WARN]: warning. λ̂ estimates λ at the inverse temperature
#: β* = 1 / log n of WBIC (Watanabe 2013; Lau et al. 2023, §3), where λ̂ is derived; at other β
#: it still estimates λ to leading order, but with corrections that grow with the distance from
#: β*: far colder, the posterior shrinks below the step's resolution (discretisation bias); far
#: hotter, the localizer (γ fixed, nβ·curvature falling) takes over every direction. A factor
#: 10 either way is the range over which the LLC literature varies β (e.g. 1/log n to 10/log n),
#: so it is a warning beyond it; a factor 100 is outside any use we know of: fail.
NBETA_FACTOR_WARN = 10.0
NBETA_FACTOR_FAIL = 100.0
#: e-foldings of the stiffest direction, T·ε·λ_max(A·∇²U)/2 over all T steps, below this: fail.
#: In a direction of curvature h SGLD contracts by (1 − εh/2) per step, so after T steps the
#: start is forgotten by exp(−Tεh/2) and the variance has reached 1 − exp(−Tεh) of its
#: equilibrium value; below one e-folding even the stiffest (fastest) direction has not
#: relaxed, every softer one (which carry λ) still less: the chains have barely left w*, and
#: λ̂ measures the step size, not the posterior.
RELAXATION_FAIL = 1.0
#: e-foldings of the stiffest direction during burn-in below this: warning. After 3 e-foldings
#: 5% of the start is left in the fastest direction; the draws then begin far from equilibrium.
RELAXATION_BURNIN_WARN = 3.0
#: γ / (nβ·λ_max(∇²L)) at or above this: fail. The localizer is then at least as stiff as the
#: stiffest direction of the tempered loss, so every direction is pinned by the localizer and
#: λ̂ reflects γ, not the loss (with only the localizer, λ̂ → 0).
LOCALIZATION_FAIL = 1.0
#: γ / (nβ·λ_max(∇²L)) at or above this: warning. The localizer then shrinks the variance of
#: the stiffest direction by more than ~10% (1 / (1 + ratio)) and pins every direction whose
#: curvature is below 10× the stiffest one's, biasing λ̂ low.
LOCALIZATION_WARN = 0.1


def draws_checks(*, num_draws: int, num_burnin: int, num_chains: int) -> list[tuple[str, str]]:
    """Too few draws per chain (< MIN_DRAWS_FAIL: fail; < MIN_DRAWS_WARN: warning), no
    burn-in (warning: the first draws are at w*, where the excess loss is 0, so λ̂ is biased
    low), and a single chain (warning: no spread across chains, no R̂)."""
    out: list[tuple[str, str]] = []
    if num_draws < MIN_DRAWS_WARN:
        out.append(
            (
                "fail" if num_draws < MIN_DRAWS_FAIL else "warning",
                f"too few draws (num_draws={num_draws} per chain, fewer than "
                f"{MIN_DRAWS_FAIL if num_draws < MIN_DRAWS_FAIL else MIN_DRAWS_WARN}): λ̂ is the "
                "mean of a few correlated minibatch losses; use num_draws ≥ "
                f"{MIN_DRAWS_WARN} (default 3000)",
            )
        )
    if num_burnin == 0:
        out.append(
            (
                "warning",
                "no burn-in (num_burnin=0): the first draws are taken at w*, where the excess "
                "loss is 0, so λ̂ is biased low; use num_burnin ≥ a few hundred (default 2000)",
            )
        )
    if num_chains < MIN_CHAINS_FOR_RHAT:
        out.append(
            (
                "warning",
                f"only {num_chains} chain: no spread of λ̂ across chains and no R-hat can be "
                "computed; use num_chains ≥ 2 (default 4)",
            )
        )
    return out


def nbeta_checks(*, nbeta: float, num_samples: int) -> list[tuple[str, str]]:
    """nβ far from the default n / log n: outside a factor NBETA_FACTOR_FAIL → fail, outside
    NBETA_FACTOR_WARN → warning (see there for why). No check when n < 2 (no default)."""
    if num_samples < 2 or not (math.isfinite(nbeta) and nbeta > 0):
        return []
    default = num_samples / math.log(num_samples)
    ratio = nbeta / default
    factor = max(ratio, 1.0 / ratio)
    if factor <= NBETA_FACTOR_WARN:
        return []
    level = "fail" if factor > NBETA_FACTOR_FAIL else "warning"
    side = "below" if ratio < 1 else "above"
    return [
        (
            level,
            f"nbeta = {_g(nbeta)} is {_g(factor)}x {side} n / log n = {_g(default)} (limit "
            f"{_g(NBETA_FACTOR_FAIL if level == 'fail' else NBETA_FACTOR_WARN)}x): λ̂ is derived "
            "at nβ = n / log n; leave nbeta unset (None) or set it close to n / log n",
        )
    ]


def movement_checks(
    *, step_times_curvature: float, num_burnin: int, num_steps: int
) -> list[tuple[str, str]]:
    """Whether the chains can have moved on the posterior's scale.

    ``step_times_curvature`` is ε·λ_max(A·∇²U), the step in units of the stiffest direction of
    the (preconditioned) potential: the sampler's measured value with ``step_size="curvature"``
    (where it is ``step_scale`` by construction), else a post-hoc measurement. Over T steps the
    stiffest direction relaxes through T·ε·λ_max/2 e-foldings (see RELAXATION_FAIL): fewer
    than RELAXATION_FAIL over all ``num_steps`` → fail; fewer than RELAXATION_BURNIN_WARN
    during a non-empty burn-in → warning. A step so large that ε·λ_max ≥ 2 is unstable; that
    shows up as divergence, not here.
    """
    x = step_times_curvature
    if x is None or not math.isfinite(x):
        return [
            (
                "warning",
                "whether the chains moved could not be checked (step × curvature not measured)",
            )
        ]
    out: list[tuple[str, str]] = []
    total_folds = num_steps * x / 2
    burn_folds = num_burnin * x / 2
    if total_folds < RELAXATION_FAIL:
        out.append(
            (
                "fail",
                f"the chains barely moved: step × curvature ε·λ_max = {_g(x)}, so over "
                f"{num_steps} steps even the stiffest direction relaxed only {_g(total_folds)} "
                f"e-foldings (need ≥ {_g(RELAXATION_FAIL)}); λ̂ reflects the step size, not the "
                "posterior: increase step_size (or use the default step_size='curvature') or "
                "run more steps (num_burnin, num_draws)",
            )
        )
    elif num_burnin > 0 and burn_folds < RELAXATION_BURNIN_WARN:
        out.append(
            (
                "warning",
                f"burn-in too short for the step: ε·λ_max = {_g(x)}, so the {num_burnin} burn-in "
                f"steps relax the stiffest direction only {_g(burn_folds)} e-foldings (need ≥ "
                f"{_g(RELAXATION_BURNIN_WARN)}); increase num_burnin or step_size",
            )
        )
    return out


def localization_checks(*, localization_ratio: float) -> list[tuple[str, str]]:
    """Whether the localizer dominates the tempered loss: ``localization_ratio`` is the
    localizer's stiffness over nβ × the loss's largest curvature, γ / (nβ·λ_max(∇²L)) for
    (γ/2)‖w − w*‖² (for a metric localizer (γ/2)(w − w*)ᵀM(w − w*), the same ratio in that
    metric). ≥ LOCALIZATION_FAIL → fail, ≥ LOCALIZATION_WARN → warning."""
    r = localization_ratio
    if r is None or (isinstance(r, float) and math.isnan(r)):
        return [
            (
                "warning",
                "whether the localization dominates could not be checked (curvature not measured)",
            )
        ]
    if r < LOCALIZATION_WARN:
        return []
    fail = r >= LOCALIZATION_FAIL
    return [
        (
            "fail" if fail else "warning",
            f"the localization dominates: γ / (nβ·λ_max(∇²L)) = {_g(r)} (limit "
            f"{_g(LOCALIZATION_FAIL if fail else LOCALIZATION_WARN)}), so "
            + (
                "every direction is pinned by the localizer and λ̂ reflects γ, not the loss"
                if fail
                else "directions within 1/ratio of the stiffest are pinned by the localizer and "
                "λ̂ is biased low"
            )
            + "; reduce localization (default 1.0) or check nbeta",
        )
    ]


def _or_larger_step(diverged: bool) -> str:
    """The end of a slow-mixing warning's advice: a larger step size, unless chains of the
    same run diverged (then the step is already too large, and only length helps)."""
    if diverged:
        return "; not a larger step size: chains diverged at this one"
    return " or a larger step size"


def _more_draws(ess: float, need: float, draws: float | None) -> str:
    """The fewest ``num_draws`` that may give ``need`` effective draws where ``draws`` gave
    ``ess``: ESS grows about linearly with the draws once the chains mix, but chains slower
    than the run can need far more (on the nonlinear suite, four times the steps left the ESS
    about where it was; ``docs/reference_sampler.md``, "Chain length")."""
    if not (_finite(draws) and draws > 0 and ess > 0):
        return "run more draws (num_draws)"
    factor = need / ess
    return f"run at least {factor:.1f}× the draws (num_draws ≥ {math.ceil(draws * factor)})"


def statistic_checks(
    checks: dict, *, used_chains: int, diverged: bool = False
) -> list[tuple[str, str]]:
    """R̂, bulk and tail ESS and flatness against their thresholds; each one that could not be
    computed (NaN or missing) is a warning saying so, never a pass. ``diverged``: chains of
    this run diverged, so the advice is longer chains, not a larger step."""
    out: list[tuple[str, str]] = []
    draws = checks.get("draws_per_chain")
    short = draws is not None and draws < MIN_DRAWS_FOR_STATISTICS

    def missing(name: str, need_chains: int = 1) -> None:
        if short:
            why = f"{draws} draws per chain, fewer than {MIN_DRAWS_FOR_STATISTICS}"
        elif used_chains < need_chains:
            why = f"{used_chains} chain(s), fewer than {need_chains}"
        else:
            why = "the excess-loss draws have no spread (did the chains move?)"
        out.append(
            (
                "warning",
                f"{name} could not be computed ({why}): convergence is unchecked; run more "
                "chains and draws (num_chains, num_draws)",
            )
        )

    rhat = checks.get("rhat_rank", float("nan"))
    if not _finite(rhat):
        missing("R-hat", MIN_CHAINS_FOR_RHAT)
    elif rhat > RHAT_MAX:
        out.append(
            (
                "warning",
                f"chains disagree (rank-normalized split R-hat {rhat:.3f} > {RHAT_MAX}): run "
                f"longer chains (num_burnin, num_draws){_or_larger_step(diverged)}",
            )
        )
    for key, name, per_chain in (
        ("ess_bulk", "bulk ESS", ESS_BULK_MIN_PER_CHAIN),
        ("ess_tail", "tail ESS", ESS_TAIL_MIN_PER_CHAIN),
    ):
        ess = checks.get(key, float("nan"))
        if not _finite(ess):
            missing(name)
        elif used_chains > 0 and ess < per_chain * used_chains:
            out.append(
                (
                    "warning",
                    f"few independent draws ({name} {ess:.0f} over {used_chains} chains, fewer "
                    f"than {per_chain} per chain): the chains mix slowly; "
                    f"{_more_draws(ess, per_chain * used_chains, draws)}"
                    f"{_or_larger_step(diverged)}",
                )
            )
    if not _finite(checks.get("flatness", float("nan"))):
        missing("the flatness of the traces")
    return out


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def trace_flatness(trace: np.ndarray, blocks: int = FLATNESS_BLOCKS) -> float:
    """Drift of the second half of a 1-D trace, in units of its spread.

    The second half is averaged into ``blocks`` consecutive block means (fewer when it is
    shorter); the least-squares slope b of the block means against time gives the drift across
    the half, b × (its length), which is divided by the standard deviation of the block means.
    That is ≈ √12 × their correlation with time, in [−3.46, 3.46]: ≈ 0 for a stationary trace,
    ±3.36 for a pure trend over 50 blocks (±√12 over many), positive when the loss is rising.
    NaN with fewer than 4 finite draws in the second half; 0 for a constant trace.
    """
    x = np.asarray(trace, dtype=np.float64).ravel()
    half = x[len(x) // 2 :]
    half = half[np.isfinite(half)]
    if len(half) < 4:
        return float("nan")
    size = max(1, len(half) // blocks)
    k = len(half) // size
    means = half[len(half) - k * size :].reshape(k, size).mean(axis=1)
    if k < 4:
        return float("nan")
    sd = means.std(ddof=1)
    if sd <= 0:
        return 0.0
    t = np.arange(k, dtype=np.float64)
    slope = np.polyfit(t, means, 1)[0]
    return float(slope * (k - 1) / sd)


def fraction_below(excess: np.ndarray) -> float:
    """Fraction of the finite draws with excess loss < 0 (the sampled loss below w*'s)."""
    x = np.asarray(excess, dtype=np.float64).ravel()
    x = x[np.isfinite(x)]
    return float((x < 0).mean()) if len(x) else float("nan")


def flatness_threshold(num_chains: int) -> float:
    """The |mean flatness| above which C chains count as not flat (see FLATNESS_ONE_CHAIN)."""
    return max(FLATNESS_FLOOR, FLATNESS_ONE_CHAIN / np.sqrt(max(num_chains, 1)))


def trace_checks(excess: np.ndarray, *, paired: bool) -> dict:
    """Per-chain and across-chain checks of the excess-loss draws (chains × draws).

    ``excess`` is nβ·(L_{B_t}(w_t) − L_{B_t}(w*)) with the per-sample cache (``paired``), else
    nβ·(L_{B_t}(w_t) − L_n(w*)); rows of diverged chains should be left out. Returns the
    flatness and the fraction of draws below L_n(w*) per chain and their means, and
    :func:`rhat_rank`, :func:`ess_bulk` and :func:`ess_tail` of the excess (on the paired
    trace these see the chain's own wandering instead of the minibatch noise that dominates a
    raw loss trace); NaN where they cannot be computed.
    """
    x = np.asarray(excess, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"excess must be (chains, draws), got shape {x.shape}.")
    flat = [trace_flatness(row) for row in x]
    below = [fraction_below(row) for row in x]
    finite_flat = [f for f in flat if np.isfinite(f)]
    out = {
        "trace": "paired" if paired else "loss",
        "flatness_per_chain": flat,
        "flatness": float(np.mean(finite_flat)) if finite_flat else float("nan"),
        "flatness_threshold": flatness_threshold(len(finite_flat)),
        "fraction_below_init_per_chain": below,
        "fraction_below_init": fraction_below(x),
    }
    out["draws_per_chain"] = int(x.shape[1]) if x.shape[0] else 0
    out["rhat_rank"] = rhat_rank(x) if x.size else float("nan")
    out["ess_bulk"] = ess_bulk(x) if x.size else float("nan")
    out["ess_tail"] = ess_tail(x) if x.size else float("nan")
    return out


def assess_estimate(
    *,
    llc_mean: float,
    llc_stderr: float,
    num_chains: int,
    checks: dict,
    divergences: list,
    retries: list,
    mala_acceptance_per_chain: list | None = None,
    settings: dict | None = None,
    robustness: dict | None = None,
) -> dict:
    """Whether to trust an estimate: ``{"verdict": "ok" | "warning" | "fail", "reasons": [...]}``.

    Pure function of the numbers in ``LLCResult.diagnostics``. ``checks`` is
    :func:`trace_checks` of the chains that did not diverge; ``divergences`` and ``retries``
    are the estimator's lists (dicts with ``chain``, ``step``, ``message``/``step_size``). Each
    reason is one line, "fail: …" or "warning: …", naming what was seen and the fix to try.
    The verdict is the worst reason's level (``ok`` when there is none).

    Rules (thresholds are the module constants, justified where they are defined):

    - every chain, or more than half of them, diverged → fail; fewer → warning; a chain
      restarted after a divergence → warning (each names the step size to reduce);
    - λ̂ < 0 → warning, or fail when it is below 0 by more than 2 standard errors: a negative
      LLC means the sampled loss falls below L_n(w*), i.e. w* is not a minimum of this loss;
    - with paired traces, more than half of the draws below L_n(w*) → warning (same cause);
    - :func:`precision_checks`: λ̂'s standard error over the chains above
      ``RELATIVE_STDERR_MAX`` of λ̂ → warning (the chains' estimates disagree);
    - mean flatness over the chains beyond ± :func:`flatness_threshold` → warning: loss still
      rising (more burn-in or a larger step) or still falling (not at a minimum, or burn-in);
    - :func:`statistic_checks`: ``rhat_rank`` > RHAT_MAX, ``ess_bulk`` or ``ess_tail`` below
      their per-chain minimum → warning (longer chains); any of them or the flatness that could
      not be computed → warning saying so;
    - a chain's mean MALA acceptance < MALA_MIN → warning (smaller step);
    - with ``settings`` (numbers describing the run: ``num_draws``, ``num_burnin``,
      ``num_steps``, ``num_chains``, ``nbeta``, ``num_samples``, ``step_times_curvature``,
      ``localization_ratio``): :func:`draws_checks`, :func:`nbeta_checks`,
      :func:`movement_checks` and :func:`localization_checks`, each of which needs only the
      keys it reads;
    - with ``robustness`` (:func:`robustness_report`, ``SamplerConfig(robustness=True)``):
      :func:`robustness_checks`, λ̂ moving on halving the step size → warning.
    """
    used = num_chains - len(divergences)
    diverged = bool(divergences or retries)
    reasons = divergence_checks(divergences, retries, num_chains=num_chains)
    reasons += minimum_checks(llc_mean, llc_stderr, checks, used_chains=used)
    reasons += precision_checks(llc_mean, llc_stderr, used_chains=used)
    reasons += flatness_checks(checks, used_chains=used, diverged=diverged)
    if used > 0:
        reasons += statistic_checks(checks, used_chains=used, diverged=diverged)
    reasons += mala_checks(mala_acceptance_per_chain)
    if used > 0 and not np.isfinite(llc_mean):
        reasons.append(("fail", "the estimate is not finite: check the loss and the data"))
    reasons += settings_reasons(settings or {})
    if robustness is not None and used > 0 and np.isfinite(llc_mean):
        reasons += robustness_checks(robustness)
    levels = [lvl for lvl, _ in reasons]
    verdict = "fail" if "fail" in levels else "warning" if levels else "ok"
    order = {"fail": 0, "warning": 1}
    ordered = sorted(reasons, key=lambda r: order[r[0]])
    return {"verdict": verdict, "reasons": [f"{lvl}: {text}" for lvl, text in ordered]}


def divergence_checks(
    divergences: list, retries: list, *, num_chains: int
) -> list[tuple[str, str]]:
    """Every chain, or more than half of them, diverged → fail; fewer → warning; a chain
    restarted after a divergence → warning (each names the step size to reduce)."""
    reasons: list[tuple[str, str]] = []
    used = num_chains - len(divergences)
    if divergences:
        first = min(divergences, key=lambda d: d.get("step") or 0)
        level = "fail" if used == 0 or len(divergences) > num_chains / 2 else "warning"
        what = (
            "every chain diverged"
            if used == 0
            else f"{len(divergences)} of {num_chains} chains diverged and were left out"
        )
        reasons.append(
            (
                level,
                f"{what} (chain {first.get('chain')} at step {first.get('step')}): the step "
                "size is too large; reduce step_size (or step_scale) by 2-10x",
            )
        )
    restarted = [
        r for r in retries if not any(d.get("chain") == r.get("chain") for d in divergences)
    ]
    if restarted:
        r = restarted[0]
        chains = sorted({x.get("chain") for x in restarted})
        reasons.append(
            (
                "warning",
                f"chain(s) {', '.join(map(str, chains))} diverged (chain {r.get('chain')} at step "
                f"{r.get('step')} with step size {_g(r.get('step_size'))}) and restarted with "
                "half the step size: the step size is too large; reduce step_size (or step_scale)",
            )
        )
    return reasons


def minimum_checks(
    llc_mean: float, llc_stderr: float, checks: dict, *, used_chains: int
) -> list[tuple[str, str]]:
    """Signs that w* is not a minimum of the loss: λ̂ < 0 → warning, or fail when below 0 by
    more than 2 standard errors; with paired traces, more than ``FRACTION_BELOW_MAX`` of the
    draws below L_n(w*) → warning."""
    reasons: list[tuple[str, str]] = []
    if used_chains > 0 and np.isfinite(llc_mean) and llc_mean < 0:
        significant = np.isfinite(llc_stderr) and llc_mean + 2 * llc_stderr < 0
        reasons.append(
            (
                "fail" if significant else "warning",
                f"the estimate is negative (λ̂ = {_g(llc_mean)}): the loss falls below the initial "
                "loss L_n(w*), so the weights are not at a minimum of this loss; train further "
                "or use realizable targets",
            )
        )
    below = checks.get("fraction_below_init", float("nan"))
    if (
        checks.get("trace") == "paired"
        and np.isfinite(below)
        and below > FRACTION_BELOW_MAX
        and not (np.isfinite(llc_mean) and llc_mean < 0)
    ):
        reasons.append(
            (
                "warning",
                f"{below:.0%} of the draws have a lower loss than w*: the weights are not at a "
                "minimum of this loss; train further or use realizable targets",
            )
        )
    return reasons


def precision_checks(
    llc_mean: float, llc_stderr: float, *, used_chains: int
) -> list[tuple[str, str]]:
    """λ̂'s standard error over the chains above ``RELATIVE_STDERR_MAX`` of a positive λ̂ →
    warning: the chains' own estimates disagree (often one chain apart from the rest)."""
    ok = used_chains >= 2 and np.isfinite(llc_mean) and np.isfinite(llc_stderr)
    if not ok or llc_mean <= 0 or llc_stderr <= RELATIVE_STDERR_MAX * llc_mean:
        return []
    return [
        (
            "warning",
            f"λ̂ is imprecise: its standard error over the chains ({_g(llc_stderr)}) is "
            f"{llc_stderr / llc_mean:.0%} of it (limit {RELATIVE_STDERR_MAX:.0%}), so the "
            "chains' own estimates disagree; run more or longer chains (num_chains, num_draws)",
        )
    ]


def chain_notes(flatness: float | None, mala: float | None) -> list[str]:
    """What one chain's own numbers say against the one-chain limits, for the status column
    of :meth:`hf_llc.LLCResult.chain_table`: ``"still rising"`` / ``"still falling"`` when its
    flatness is beyond ± :func:`flatness_threshold` of one chain (the limit the mean over C
    chains is held to is this one over √C), ``"low MALA"`` when its acceptance is below
    ``MALA_MIN``. The verdict is unchanged: it judges the chains together (a single chain's
    flatness is noisier), so these notes only say which chain to look at."""
    notes = []
    limit = flatness_threshold(1)
    if flatness is not None and np.isfinite(flatness) and abs(flatness) > limit:
        notes.append("still rising" if flatness > 0 else "still falling")
    if mala is not None and np.isfinite(mala) and mala < MALA_MIN:
        notes.append("low MALA")
    return notes


def flatness_checks(
    checks: dict, *, used_chains: int, diverged: bool = False
) -> list[tuple[str, str]]:
    """Mean flatness over the chains beyond ± :func:`flatness_threshold` → warning: the loss
    is still rising (more burn-in, or a larger step unless chains ``diverged``) or still
    falling (not at a minimum, or burn-in)."""
    reasons: list[tuple[str, str]] = []
    flat = checks.get("flatness", float("nan"))
    limit = checks.get("flatness_threshold", flatness_threshold(used_chains))
    if np.isfinite(flat) and flat > limit:
        reasons.append(
            (
                "warning",
                f"loss still rising at the end (drift {flat:+.2f} spreads over the second half "
                f"of the draws, limit {limit:.2f}): the chains have not reached equilibrium; "
                f"more burn-in (num_burnin){_or_larger_step(diverged)}",
            )
        )
    elif np.isfinite(flat) and flat < -limit:
        reasons.append(
            (
                "warning",
                f"loss still falling at the end (drift {flat:+.2f} spreads over the second half "
                f"of the draws, limit {limit:.2f}): the chains are moving to lower loss; if w* "
                "is not a minimum train further, else run more burn-in (num_burnin)",
            )
        )
    return reasons


def mala_checks(mala_acceptance_per_chain: list | None) -> list[tuple[str, str]]:
    """A chain's mean MALA acceptance below ``MALA_MIN`` → warning (smaller step)."""
    reasons: list[tuple[str, str]] = []
    acc = [a for a in (mala_acceptance_per_chain or []) if a is not None and np.isfinite(a)]
    if acc and min(acc) < MALA_MIN:
        reasons.append(
            (
                "warning",
                f"low MALA acceptance (lowest chain {min(acc):.2f} < {MALA_MIN}): the step is too "
                "coarse for this posterior; reduce step_size (or step_scale)",
            )
        )
    return reasons


def settings_reasons(settings: dict) -> list[tuple[str, str]]:
    """The checks of the settings that ``settings`` has the numbers for (see
    :func:`assess_estimate`)."""
    s = settings
    out: list[tuple[str, str]] = []
    if all(k in s for k in ("num_draws", "num_burnin", "num_chains")):
        out += draws_checks(
            num_draws=s["num_draws"], num_burnin=s["num_burnin"], num_chains=s["num_chains"]
        )
    if "nbeta" in s and "num_samples" in s:
        out += nbeta_checks(nbeta=s["nbeta"], num_samples=s["num_samples"])
    if "step_times_curvature" in s and "num_steps" in s and "num_burnin" in s:
        out += movement_checks(
            step_times_curvature=_nan_if_none(s["step_times_curvature"]),
            num_burnin=s["num_burnin"],
            num_steps=s["num_steps"],
        )
    if "localization_ratio" in s:
        out += localization_checks(localization_ratio=_nan_if_none(s["localization_ratio"]))
    return out


# ------------------------------------------------------------- the step-size robustness
#
# SamplerConfig(robustness=True) runs the estimate's chains again at half the step size. SGLD's
# discretization bias in λ̂ is first order in ε, so a λ̂ that changes when ε is halved carries
# a bias of about twice the change (λ̂(ε) − λ̂(0) ≈ 2·(λ̂(ε) − λ̂(ε/2))); a λ̂ that does not
# is not driven by the step. With one chain per run there is no standard error, and the
# relative change alone decides. The half-step chains take HALF_STEP_LENGTH times the burn-in
# and the draws, the same Langevin time as the chains at ε: with the same step counts they
# would sample an earlier, less settled stretch of the trajectory from w*, and the check would
# mix equilibration into the discretization it is meant to measure (on a 10⁵-parameter GPT-2,
# −13.3% with the same counts against −5.5% over the same time; docs/language_models.md).

#: The half-step run's burn-in and draws, as multiples of the estimate's (2: the same time).
HALF_STEP_LENGTH = 2

#: |λ̂(ε/2) − λ̂(ε)| / |λ̂(ε)| above this (and beyond the noise, below): warning. A 10% change
#: means about 20% bias at ε (first order), well above the ≤ 7.9% total error of the default
#: recipe on the deep-linear-network quick suite.
ROBUSTNESS_CHANGE_MAX = 0.10
#: The change must also exceed this many combined standard errors √(se(ε)² + se(ε/2)²) of the
#: two chain means, so that the sampling noise of two finite runs is not read as bias (at 2,
#: two runs with no bias at all differ this much about 5% of the time).
ROBUSTNESS_NOISE_MULTIPLE = 2.0


def robustness_report(
    *,
    llc_means: list[float],
    llc_stderrs: list[float],
    step_sizes: list[float],
    step_rule: str,
    **extra,
) -> dict:
    """``diagnostics["robustness"]``: λ̂ at ε and at ε/2 and how far it moved.

    ``llc_means``, ``llc_stderrs`` and ``step_sizes`` hold the first run's and the half-step
    run's values (in that order; the step sizes are the chains' mean); ``step_rule`` is how the
    first run set ε (``"fixed"``, a number or calibrated, or ``"curvature"``). Adds
    ``difference`` λ̂(ε/2) − λ̂(ε), ``relative_change`` |difference| / |λ̂(ε)|,
    ``combined_stderr`` √(se₁² + se₂²), ``noise_multiple`` (the difference in combined
    standard errors), ``within_noise`` (|difference| ≤ ROBUSTNESS_NOISE_MULTIPLE combined
    standard errors) and the two thresholds; ``extra`` (per-chain step sizes, seconds, …) is
    kept as given.
    """
    (a, b), (sa, sb) = [float(x) for x in llc_means], [float(x) for x in llc_stderrs]
    diff = b - a
    combined = math.sqrt(sa**2 + sb**2) if math.isfinite(sa) and math.isfinite(sb) else math.nan
    rel = abs(diff) / abs(a) if a != 0 else (0.0 if diff == 0 else math.inf)
    multiple = abs(diff) / combined if combined > 0 else (0.0 if diff == 0 else math.inf)
    return {
        "step_rule": step_rule,
        "step_sizes": [float(x) for x in step_sizes],
        "llc_means": [a, b],
        "llc_stderrs": [sa, sb],
        "difference": diff,
        "relative_change": rel,
        "combined_stderr": combined,
        "noise_multiple": multiple,
        "within_noise": bool(multiple <= ROBUSTNESS_NOISE_MULTIPLE),
        "change_threshold": ROBUSTNESS_CHANGE_MAX,
        "noise_threshold": ROBUSTNESS_NOISE_MULTIPLE,
        **extra,
    }


def robustness_checks(report: dict) -> list[tuple[str, str]]:
    """λ̂ moved by more than ROBUSTNESS_CHANGE_MAX of itself and more than
    ROBUSTNESS_NOISE_MULTIPLE combined standard errors when the step size was halved →
    warning; a half-step run without a finite λ̂ → warning that the check could not be made."""
    (a, b), (sa, sb) = report["llc_means"], report["llc_stderrs"]
    eps = report.get("step_sizes") or [None, None]
    if b is None or not math.isfinite(b):
        return [
            (
                "warning",
                "the step-size robustness check could not be made: the run at half the step "
                "size gave no finite λ̂ (its chains diverged); check the loss and the step size",
            )
        ]
    # None: a value JSON could not hold (inf, when λ̂(ε) = 0 and λ̂(ε/2) is not).
    rel, multiple = (_nan_if_none(report.get(k)) for k in ("relative_change", "noise_multiple"))
    rel, multiple = (math.inf if math.isnan(x) else x for x in (rel, multiple))
    if rel <= ROBUSTNESS_CHANGE_MAX or multiple <= ROBUSTNESS_NOISE_MULTIPLE:
        return []
    knob = "step_scale" if report.get("step_rule") == "curvature" else "step_size"
    return [
        (
            "warning",
            f"λ̂ moves {rel:.1%} when the step size is halved (λ̂ = {_g(a)} ± {_g(sa)} at ε = "
            f"{_g(eps[0])}, {_g(b)} ± {_g(sb)} at ε/2 = {_g(eps[1])}; {multiple:.1f} combined "
            f"standard errors, limits {ROBUSTNESS_CHANGE_MAX:.0%} and "
            f"{ROBUSTNESS_NOISE_MULTIPLE:g}): λ̂ is driven by the step size (discretization "
            f"bias); use a smaller {knob} with "
            "longer chains (num_burnin, num_draws) until halving it no longer moves λ̂",
        )
    ]


def _nan_if_none(value) -> float:
    return float("nan") if value is None else float(value)


def _g(value) -> str:
    try:
        return format(float(value), ".4g")
    except (TypeError, ValueError):
        return str(value)
