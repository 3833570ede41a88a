"""Exact learning coefficients of deep linear networks (hf_llc.models.dln.theory).

Ground truth: ``tests/data/dln_cases.json`` (Aoyagi 2024, kept inside the repository), the
reduced-rank-regression closed form (Aoyagi & Watanabe 2005) for two layers, and model facts
that hold whatever the formula: a single linear layer is a regular model, λ ≤ d/2, and
transposing the network (reversing the widths) changes nothing.
"""

from __future__ import annotations

import itertools
import json
from fractions import Fraction
from pathlib import Path

import pytest

from hf_llc.models.dln.theory import (
    _bottleneck_deficiencies,
    dln_learning_coefficient,
    rrr_learning_coefficient,
)

REFERENCE = Path(__file__).resolve().parent / "data" / "dln_cases.json"


def _load_reference_cases() -> list[dict]:
    if not REFERENCE.is_file():
        return []
    return json.loads(REFERENCE.read_text())["cases"]


CASES = _load_reference_cases()


def _case_id(case: dict) -> str:
    return "x".join(map(str, case["widths"])) + f"-r{case['rank']}"


def _num_params(widths) -> int:
    return sum(a * b for a, b in zip(widths, widths[1:]))


def _all_widths(num_layers: int, max_width: int):
    """Every width list of ``num_layers`` layers with widths 1..max_width, with every rank."""
    for widths in itertools.product(range(1, max_width + 1), repeat=num_layers + 1):
        for rank in range(min(widths) + 1):
            yield list(widths), rank


def test_reference_file_is_present_and_nonempty():
    assert REFERENCE.is_file(), f"missing ground truth {REFERENCE}"
    assert len(CASES) > 0


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_matches_aoyagi_reference_case(case):
    lam, multiplicity = dln_learning_coefficient(case["widths"], case["rank"])
    assert lam == Fraction(case["lambda"])
    assert multiplicity == case["multiplicity"]
    assert float(lam) == pytest.approx(case["lambda_float"])


def test_returns_exact_fraction_and_int():
    lam, multiplicity = dln_learning_coefficient([5, 3, 5], 0)
    assert type(lam) is Fraction and lam == Fraction(13, 2)
    assert type(multiplicity) is int and multiplicity == 2


def test_two_layers_equal_reduced_rank_regression():
    mismatches = []
    for n, h, m in itertools.product(range(1, 10), repeat=3):
        for r in range(min(n, h, m) + 1):
            deep = dln_learning_coefficient([n, h, m], r)
            rrr = rrr_learning_coefficient(n, h, m, r)
            if deep != rrr:
                mismatches.append(((n, h, m, r), deep, rrr))
    assert mismatches == []


@pytest.mark.parametrize(
    ("dims", "expected"),
    [
        # balanced case, M+H+N+r even and odd
        ((2, 2, 2, 0), (Fraction(3, 2), 1)),
        ((5, 3, 5, 0), (Fraction(13, 2), 2)),
        # M+H < N+r, N+H < M+r, M+N < H+r
        ((8, 3, 4, 1), (Fraction(3 * 4 - 3 * 1 + 8 * 1, 2), 1)),
        ((4, 3, 8, 1), (Fraction(3 * 4 - 3 * 1 + 8 * 1, 2), 1)),
        ((3, 9, 4, 0), (Fraction(12, 2), 1)),
    ],
)
def test_reduced_rank_regression_regimes(dims, expected):
    assert rrr_learning_coefficient(*dims) == expected


@pytest.mark.parametrize(("a", "b"), list(itertools.product(range(1, 7), repeat=2)))
def test_single_layer_is_regular_at_every_rank(a, b):
    # f(x) = W x is a regular (identifiable, linear) model: λ = d/2 = ab/2, m = 1.
    for rank in range(min(a, b) + 1):
        assert dln_learning_coefficient([a, b], rank) == (Fraction(a * b, 2), 1)


@pytest.mark.parametrize("num_layers", [1, 2, 3])
def test_lambda_is_positive_and_at_most_half_the_parameter_count(num_layers):
    for widths, rank in _all_widths(num_layers, 5):
        lam, multiplicity = dln_learning_coefficient(widths, rank)
        assert 0 < lam <= Fraction(_num_params(widths), 2), (widths, rank, lam)
        assert multiplicity >= 1


@pytest.mark.parametrize("num_layers", [1, 2, 3, 4])
def test_reversing_the_widths_changes_nothing(num_layers):
    # (W_L ··· W_1)^T = W_1^T ··· W_L^T: the transposed network has the same loss geometry.
    for widths, rank in _all_widths(num_layers, 4):
        assert dln_learning_coefficient(widths, rank) == dln_learning_coefficient(
            widths[::-1], rank
        )


@pytest.mark.parametrize("num_layers", [1, 2, 3, 4])
def test_admissible_index_set_exists_and_is_unique(num_layers):
    # Brute force over *all* index subsets Σ (not only prefixes of the sorted Δ's): exactly one
    # satisfies Aoyagi's three conditions, and it is the one the implementation selects.
    for widths, rank in _all_widths(num_layers, 4):
        deltas = [h - rank for h in widths]
        indices = range(len(deltas))
        admissible = []
        for size in range(1, len(deltas) + 1):
            for sigma in itertools.combinations(indices, size):
                inside = [deltas[i] for i in sigma]
                outside = [deltas[i] for i in indices if i not in sigma]
                ell, total = size - 1, sum(inside)
                if outside and not max(inside) < min(outside):
                    continue
                if not total >= ell * max(inside):
                    continue
                if outside and not total < ell * min(outside):
                    continue
                admissible.append(sorted(inside))
        assert len(admissible) == 1, (widths, rank, admissible)
        assert _bottleneck_deficiencies(deltas) == admissible[0]


@pytest.mark.parametrize("num_layers", range(1, 9))
def test_scalar_chain_has_multiplicity_equal_to_depth(num_layers):
    # Widths all 1 at rank 0: K(w) = (w_1 ··· w_L)^2 is already a normal-crossing monomial,
    # so λ = 1/2 with multiplicity L (all L coordinates attain the minimum ratio 1/2).
    assert dln_learning_coefficient([1] * (num_layers + 1), 0) == (Fraction(1, 2), num_layers)


def test_multiplicity_is_aoyagis_order_not_the_subset_size():
    # [2, 2, 2, 2, 2] at rank 0: ℓ = 4, S = 10, a = 2, so m = a(ℓ−a) + 1 = 5 (Aoyagi's order
    # formula) — the first depth where this differs from ℓ; every reference case has ℓ ≤ 3.
    assert dln_learning_coefficient([2, 2, 2, 2, 2], 0) == (Fraction(3, 2), 5)


def test_accepts_tuples_and_numpy_integers():
    np = pytest.importorskip("numpy")
    expected = dln_learning_coefficient([5, 3, 5], 1)
    assert dln_learning_coefficient((5, 3, 5), 1) == expected
    assert dln_learning_coefficient(np.array([5, 3, 5]), np.int64(1)) == expected
    assert rrr_learning_coefficient(np.int64(5), 3, 5, 1) == expected


@pytest.mark.parametrize(
    ("widths", "rank", "match"),
    [
        ([3], 0, "at least 2 widths"),
        ([], 0, "at least 2 widths"),
        (3, 0, "widths must be a sequence"),
        ("35", 0, "widths must be a sequence"),
        ([3, 0], 0, r"widths\[1\] must be a positive integer"),
        ([-2, 3], 0, r"widths\[0\] must be a positive integer"),
        ([3, 2.0], 0, r"widths\[1\] must be an integer"),
        ([3, True], 0, r"widths\[1\] must be an integer"),
        ([3, 2], -1, "rank must be non-negative"),
        ([3, 2], 3, "rank=3 exceeds the smallest width 2"),
        ([3, 2], 1.0, "rank must be an integer"),
    ],
)
def test_dln_rejects_bad_input(widths, rank, match):
    with pytest.raises(ValueError, match=match):
        dln_learning_coefficient(widths, rank)


@pytest.mark.parametrize(
    ("dims", "match"),
    [
        ((0, 2, 2, 0), "input_dim must be a positive integer"),
        ((2, -1, 2, 0), "hidden_dim must be a positive integer"),
        ((2, 2, 2.5, 0), "output_dim must be an integer"),
        ((2, 2, 2, -1), "rank must be non-negative"),
        ((4, 2, 4, 3), "rank=3 exceeds the smallest width 2"),
    ],
)
def test_rrr_rejects_bad_input(dims, match):
    with pytest.raises(ValueError, match=match):
        rrr_learning_coefficient(*dims)
