r"""Exact learning coefficients of deep linear networks (the ground truth for LLC validation).

A deep linear network (DLN) with widths ``[H_0 (input), H_1, ..., H_L (output)]`` is the model
f(x) = W_L ··· W_1 x with W_s of shape H_s × H_{s-1} and no biases, so it has
d = Σ_s H_{s-1}·H_s parameters. For a true end-to-end matrix of rank r its (global) learning
coefficient λ and multiplicity m — the exponents of the volume law
V(ε) ≈ c·ε^λ·(−log ε)^(m−1) and of the free energy F_n = nL_n(w₀) + λ log n − (m−1) log log n —
are known in closed form:

* :func:`dln_learning_coefficient` — any depth L ≥ 1: M. Aoyagi, "Consideration on the learning
  efficiency of multiple-layered neural networks with linear units", Neural Networks 172:106132
  (2024), main theorem (cited as Theorem 1 by Furman & Lau, arXiv 2402.03698, Theorem B.1).
* :func:`rrr_learning_coefficient` — L = 2 (reduced-rank regression): M. Aoyagi and S. Watanabe,
  "Stochastic complexities of reduced rank regression in Bayesian estimation", Neural Networks
  18(7):924-933 (2005). For L = 2 the two agree (checked in the tests).

Everything is computed in exact :class:`fractions.Fraction` arithmetic.

Aoyagi's λ is the *global* coefficient (the minimum over the set of true parameters); see the
design notes for the points w* at which the local coefficient equals it.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from fractions import Fraction

__all__ = ["dln_learning_coefficient", "rrr_learning_coefficient"]


def _check_int(value: object, name: str) -> int:
    """Return ``value`` as an ``int`` if it is an integer (``bool`` excluded), else raise.

    Anything with ``__index__`` counts as an integer (``int``, NumPy integers, 0-d integer
    tensors); floats do not, even when integral.
    """
    if isinstance(value, bool):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    try:
        return operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be an integer, got {value!r}") from None


def _check_positive_int(value: object, name: str) -> int:
    value = _check_int(value, name)
    if value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value}")
    return value


def _check_rank(rank: object, widths: Sequence[int], name: str = "rank") -> int:
    rank = _check_int(rank, name)
    if rank < 0:
        raise ValueError(f"{name} must be non-negative, got {rank}")
    if rank > min(widths):
        raise ValueError(
            f"{name}={rank} exceeds the smallest width {min(widths)}: a product through a layer "
            f"of that width has rank at most {min(widths)}"
        )
    return rank


def _bottleneck_deficiencies(deficiencies: Sequence[int]) -> list[int]:
    r"""Aoyagi's index set Σ, returned as the sorted list of its Δ values.

    Σ (with |Σ| = ℓ + 1) is the set of indices that satisfies

    1. max_{σ∈Σ} Δ_σ < min_{k∉Σ} Δ_k,
    2. Σ_{σ∈Σ} Δ_σ ≥ ℓ · max_{σ∈Σ} Δ_σ,
    3. Σ_{σ∈Σ} Δ_σ < ℓ · min_{k∉Σ} Δ_k,

    where conditions 1 and 3 are vacuous when Σ holds every index. Condition 1 makes Σ a set of
    the smallest Δ's with ties all in or all out, so only the prefixes of the sorted Δ's that end
    at a change of value need checking; the first prefix that passes is taken (Aoyagi shows it
    exists and is unique; the tests check uniqueness on a sweep).
    """
    ordered = sorted(deficiencies)
    n = len(ordered)
    total = 0
    for size in range(1, n + 1):
        total += ordered[size - 1]
        if size < n and ordered[size - 1] == ordered[size]:
            continue  # a tie straddles the cut: condition 1 fails
        ell = size - 1
        if total < ell * ordered[size - 1]:
            continue  # condition 2
        if size < n and not total < ell * ordered[size]:
            continue  # condition 3
        return ordered[:size]
    raise AssertionError(f"no admissible index set for deficiencies {list(deficiencies)}")


def dln_learning_coefficient(widths: Sequence[int], rank: int) -> tuple[Fraction, int]:
    r"""Learning coefficient λ and multiplicity m of a deep linear network (Aoyagi 2024).

    The model is f(x) = W_L ··· W_1 x (no biases) with ``widths = [H_0, H_1, ..., H_L]``
    (H_0 the input and H_L the output dimension), and the truth is an end-to-end matrix of
    rank r = ``rank``. Following M. Aoyagi, "Consideration on the learning efficiency of
    multiple-layered neural networks with linear units", Neural Networks 172:106132 (2024):

    * Δ_i = H_i − r for every width i = 0, ..., L.
    * Σ is the unique index set, of size ℓ + 1, with
      max_{σ∈Σ} Δ_σ < min_{k∉Σ} Δ_k,  Σ_{σ∈Σ} Δ_σ ≥ ℓ·max_{σ∈Σ} Δ_σ  and
      Σ_{σ∈Σ} Δ_σ < ℓ·min_{k∉Σ} Δ_k (the conditions on k ∉ Σ are vacuous if Σ is everything).
    * S = Σ_{σ∈Σ} Δ_σ and a = S − ℓ·⌊S/ℓ⌋ ∈ {0, ..., ℓ−1}.

    Then::

        λ = (−r² + r(H_0 + H_L))/2 + a(ℓ−a)/(4ℓ) − ℓ(ℓ−1)/4·(S/ℓ)² + ½·Σ_{i<j ∈ Σ} Δ_i Δ_j
        m = a(ℓ−a) + 1

    (Aoyagi writes the residue as a ∈ {1, ..., ℓ}, i.e. a = ℓ where we write a = 0; λ and m are
    the same under both conventions.) ℓ ≥ 1 always holds for two or more widths.

    Args:
        widths: layer widths ``[H_0 (input), ..., H_L (output)]``, positive integers, at least 2.
        rank: rank r of the true end-to-end matrix, 0 ≤ r ≤ min(widths).

    Returns:
        ``(λ, m)``: λ exactly as a :class:`~fractions.Fraction`, m as an ``int``.

    Raises:
        ValueError: if ``widths`` is not a sequence of at least two positive integers, or
            ``rank`` is not an integer in [0, min(widths)].

    Example:
        >>> dln_learning_coefficient([5, 3, 5], 0)
        (Fraction(13, 2), 2)
    """
    if isinstance(widths, (str, bytes)):
        raise ValueError(f"widths must be a sequence of positive integers, got {widths!r}")
    try:
        widths = list(widths)
    except TypeError:
        raise ValueError(
            f"widths must be a sequence of positive integers, got {widths!r}"
        ) from None
    if len(widths) < 2:
        raise ValueError(
            f"widths must list at least 2 widths (input and output), got {len(widths)}"
        )
    widths = [_check_positive_int(h, f"widths[{i}]") for i, h in enumerate(widths)]
    r = _check_rank(rank, widths)

    sigma = _bottleneck_deficiencies([h - r for h in widths])
    ell = len(sigma) - 1
    total = sum(sigma)
    a = total % ell if ell > 0 else 0

    regular = Fraction(-(r**2) + r * (widths[0] + widths[-1]), 2)
    pairs = sum(sigma[i] * sigma[j] for i in range(len(sigma)) for j in range(i + 1, len(sigma)))
    core = Fraction(pairs, 2)
    if ell > 0:
        core += (
            Fraction(a * (ell - a), 4 * ell)
            - Fraction(ell * (ell - 1), 4) * Fraction(total, ell) ** 2
        )
    multiplicity = a * (ell - a) + 1
    return regular + core, multiplicity


def rrr_learning_coefficient(
    input_dim: int, hidden_dim: int, output_dim: int, rank: int
) -> tuple[Fraction, int]:
    r"""Learning coefficient λ and multiplicity m of reduced-rank regression (2-layer DLN).

    The model is f(x) = B A x with A of shape H × N and B of shape M × H (N = ``input_dim``,
    H = ``hidden_dim``, M = ``output_dim``), at a true matrix of rank r = ``rank``. From
    M. Aoyagi and S. Watanabe, "Stochastic complexities of reduced rank regression in Bayesian
    estimation", Neural Networks 18(7):924-933 (2005):

    * if N + r ≤ M + H, M + r ≤ N + H and H + r ≤ M + N:

      - M + H + N + r even: λ = [2(H+r)(M+N) − (M−N)² − (H+r)²]/8, m = 1;
      - M + H + N + r odd:  λ = [2(H+r)(M+N) − (M−N)² − (H+r)² + 1]/8, m = 2;

    * else if M + H < N + r: λ = (HM − Hr + Nr)/2, m = 1;
    * else if N + H < M + r: λ = (HN − Hr + Mr)/2, m = 1;
    * else (M + N < H + r):  λ = MN/2, m = 1.

    It equals ``dln_learning_coefficient([N, H, M], r)``.

    Args:
        input_dim: N, a positive integer.
        hidden_dim: H, a positive integer.
        output_dim: M, a positive integer.
        rank: rank r of the true matrix, 0 ≤ r ≤ min(N, H, M).

    Returns:
        ``(λ, m)``: λ exactly as a :class:`~fractions.Fraction`, m as an ``int``.

    Raises:
        ValueError: if a dimension is not a positive integer or ``rank`` is not an integer in
            [0, min(N, H, M)].
    """
    n = _check_positive_int(input_dim, "input_dim")
    h = _check_positive_int(hidden_dim, "hidden_dim")
    m = _check_positive_int(output_dim, "output_dim")
    r = _check_rank(rank, [n, h, m])

    if n + r <= m + h and m + r <= n + h and h + r <= m + n:
        numerator = 2 * (h + r) * (m + n) - (m - n) ** 2 - (h + r) ** 2
        if (m + h + n + r) % 2 == 0:
            return Fraction(numerator, 8), 1
        return Fraction(numerator + 1, 8), 2
    if m + h < n + r:
        return Fraction(h * m - h * r + n * r, 2), 1
    if n + h < m + r:
        return Fraction(h * n - h * r + m * r, 2), 1
    return Fraction(m * n, 2), 1
