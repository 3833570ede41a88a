"""Convergence diagnostics of loss traces across chains: split R-hat and effective sample size.

Both follow Gelman et al., *Bayesian Data Analysis* (3rd ed., §11.4–11.5): R-hat on chains split
in halves; ESS from the multi-chain autocorrelation, summed over Geyer's initial positive
sequence. Inputs are arrays of shape (chains, draws) of finite values.
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
