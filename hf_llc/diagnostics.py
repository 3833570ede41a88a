"""Convergence diagnostics of loss traces across chains (split R-hat, effective sample size,
trace flatness, draws below L_n(w*)) and the verdict on an estimate: ok, warning or fail.

R-hat and ESS follow Gelman et al., *Bayesian Data Analysis* (3rd ed., §11.4–11.5): R-hat on
chains split in halves; ESS from the multi-chain autocorrelation, summed over Geyer's initial
positive sequence. Inputs are arrays of shape (chains, draws) of finite values.
"""

from __future__ import annotations

import numpy as np


def split_rhat(traces: np.ndarray) -> float:
    """Split-R̂ of (chains, draws) traces; ≈ 1 when the chains agree, > 1.05 is suspect."""
    x = np.asarray(traces, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] < 4:
        return float("nan")
    half = x.shape[1] // 2
    x = np.concatenate([x[:, :half], x[:, half : 2 * half]], axis=0)
    n = x.shape[1]
    chain_means = x.mean(axis=1)
    within = x.var(axis=1, ddof=1).mean()
    between = n * chain_means.var(ddof=1)
    if within <= 0:
        return float("nan")
    var_plus = (n - 1) / n * within + between / n
    return float(np.sqrt(var_plus / within))


def effective_sample_size(traces: np.ndarray) -> float:
    """Multi-chain effective sample size of (chains, draws) traces."""
    x = np.asarray(traces, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] < 4:
        return float("nan")
    m, n = x.shape
    centred = x - x.mean(axis=1, keepdims=True)
    size = 1 << int(np.ceil(np.log2(2 * n)))
    spectrum = np.fft.rfft(centred, n=size, axis=1)
    acov = np.fft.irfft(spectrum * np.conj(spectrum), n=size, axis=1)[:, :n] / n
    within = (acov[:, 0] * n / (n - 1)).mean()
    chain_means = x.mean(axis=1)
    var_plus = within * (n - 1) / n + (chain_means.var(ddof=1) if m > 1 else 0.0)
    if var_plus <= 0:
        return float("nan")
    rho = 1.0 - (within - acov.mean(axis=0)) / var_plus
    rho[0] = 1.0
    # Geyer: sum pairs (rho[2k] + rho[2k+1]) while positive.
    total = 0.0
    for k in range(0, n - 1, 2):
        pair = rho[k] + rho[k + 1]
        if pair <= 0:
            break
        total += pair
    tau = max(2.0 * total - 1.0, 1.0 / np.log10(max(m * n, 10)))
    return float(m * n / tau)


# --------------------------------------------------------------------------- verdict
#
# Thresholds of :func:`assess_estimate`, chosen on the 12-case deep-linear-network quick suite
# at the default recipe (4 chains × 3000 draws, seed 0), where every estimate is within 8% of
# the exact λ, and on constructed failures (tests/test_verdict.py). Values measured there:
# per-chain flatness −1.95 … +1.51 and its mean over the 4 chains −0.47 … +0.29; split R̂ of
# the excess loss ≤ 1.054; ESS ≥ 117; MALA acceptance per chain 0.917 … 0.996; no divergence,
# no restart, no draw below L_n(w*).

#: |mean flatness over C chains| above max(FLATNESS_FLOOR, FLATNESS_ONE_CHAIN / √C) is "not
#: flat". Flatness is √12 × the correlation of the draws with time, so it lies in [−3.46, 3.46]
#: (±3.46 = a pure trend). In a stationary chain it is noise whose spread is set by how many
#: independent stretches the half-chain holds: on the quick suite one chain's value had a
#: spread ≈ 0.75 (extremes −1.95, +1.51 over 48 chains), so 2.4 for one chain and 1.2 for the
#: mean of four are ≈ 3.2 spreads (and 2.5× the largest mean of four seen). A chain that mixes
#: so slowly that its flatness exceeds these by chance has not explored its posterior either,
#: so the warning (more burn-in/draws) is then deserved anyway.
FLATNESS_ONE_CHAIN = 2.4
FLATNESS_FLOOR = 0.5
#: Blocks the second half is averaged into before its trend is measured: averaging removes
#: minibatch noise (independent from step to step) and keeps the trend, so a trend in a raw
#: L_B(w_t) trace is not hidden by minibatch noise. For independent noise the flatness of 50
#: block means has spread √(12/50) ≈ 0.49 per chain, inside the thresholds above.
FLATNESS_BLOCKS = 50
#: Split R̂ of the excess-loss draws above this: chains disagree (Gelman et al.'s classic 1.1;
#: the quick suite stays ≤ 1.054).
RHAT_MAX = 1.1
#: ESS below this many per chain: too few independent draws for the mean and for R̂ themselves
#: to mean much (the quick suite has ≥ 29 per chain, i.e. ESS ≥ 117 over 4 chains).
ESS_MIN_PER_CHAIN = 10
#: Per-chain mean MALA acceptance below this: the step is too coarse for the posterior. The
#: quick suite's default step (0.3 / λ_max) gives 0.917 … 0.996 ("healthy ≈ 0.9"). Run at
#: fixed steps ≈ 2–8× the default's, 8 of the 10 cases had a chain below 0.85 (λ̂ +1.6% …
#: +176%, median +17%); the other two stayed ≥ 0.89 ([10, 5, 10] +3.9%, [5, 4, 5] +8.8%).
MALA_MIN = 0.85
#: Paired traces only: more than this fraction of the draws below L_n(w*) (L_B(w_t) < L_B(w*))
#: means the typical sampled point has a lower loss than w*: w* is not at a minimum. At a
#: minimum the excess averages λ/nβ > 0 (none of the quick suite's draws are below).
FRACTION_BELOW_MAX = 0.5


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
    flatness and the fraction of draws below L_n(w*) per chain and their means, and split R̂
    and ESS of the excess (on the paired trace these see the chain's own wandering instead of
    the minibatch noise that dominates a raw loss trace).
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
    if x.shape[0] >= 2 and np.isfinite(x).all():
        out["rhat"] = split_rhat(x)
        out["ess"] = effective_sample_size(x)
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
    - mean flatness over the chains beyond ± :func:`flatness_threshold` → warning: loss still
      rising (more burn-in or a larger step) or still falling (not at a minimum, or burn-in);
    - split R̂ > RHAT_MAX or ESS < ESS_MIN_PER_CHAIN per chain → warning (longer chains);
    - a chain's mean MALA acceptance < MALA_MIN → warning (smaller step).
    """
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
    if used > 0 and np.isfinite(llc_mean) and llc_mean < 0:
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
    flat = checks.get("flatness", float("nan"))
    limit = checks.get("flatness_threshold", flatness_threshold(used))
    if np.isfinite(flat) and flat > limit:
        reasons.append(
            (
                "warning",
                f"loss still rising at the end (drift {flat:+.2f} spreads over the second half "
                f"of the draws, limit {limit:.2f}): the chains have not reached equilibrium; "
                "more burn-in (num_burnin) or a larger step size",
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
    rhat = checks.get("rhat", float("nan"))
    if np.isfinite(rhat) and rhat > RHAT_MAX:
        reasons.append(
            (
                "warning",
                f"chains disagree (split R-hat {rhat:.3f} > {RHAT_MAX}): run longer chains "
                "(num_burnin, num_draws) or a larger step size",
            )
        )
    ess = checks.get("ess", float("nan"))
    if np.isfinite(ess) and used > 0 and ess < ESS_MIN_PER_CHAIN * used:
        reasons.append(
            (
                "warning",
                f"few independent draws (ESS {ess:.0f} over {used} chains, fewer than "
                f"{ESS_MIN_PER_CHAIN} per chain): the "
                "chains mix slowly; run more draws (num_draws) or a larger step size",
            )
        )
    acc = [a for a in (mala_acceptance_per_chain or []) if a is not None and np.isfinite(a)]
    if acc and min(acc) < MALA_MIN:
        reasons.append(
            (
                "warning",
                f"low MALA acceptance (lowest chain {min(acc):.2f} < {MALA_MIN}): the step is too "
                "coarse for this posterior; reduce step_size (or step_scale)",
            )
        )
    if used > 0 and not np.isfinite(llc_mean):
        reasons.append(("fail", "the estimate is not finite: check the loss and the data"))
    levels = [lvl for lvl, _ in reasons]
    verdict = "fail" if "fail" in levels else "warning" if levels else "ok"
    order = {"fail": 0, "warning": 1}
    ordered = sorted(reasons, key=lambda r: order[r[0]])
    return {"verdict": verdict, "reasons": [f"{lvl}: {text}" for lvl, text in ordered]}


def _g(value) -> str:
    try:
        return format(float(value), ".4g")
    except (TypeError, ValueError):
        return str(value)
