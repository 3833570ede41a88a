"""Teacher–student problems on deep linear networks with a known learning coefficient.

:func:`make_dln_problem` returns a DLN placed at a teacher w*, a dataset labelled by that teacher,
and Aoyagi's learning coefficient λ of the teacher's end-to-end rank, so an LLC estimate
λ̂(w*) can be compared with an exact value.

Aoyagi's λ is the *global* learning coefficient (the minimum of the local coefficient over all
true parameters). The local coefficient λ(w*) at a particular true parameter can be larger, so
only the constructions at which the two are known to coincide are offered:

* ``"origin"``: every weight zero (rank 0).
* ``"aligned"``: W_l = diag(I_r, 0) for every layer (rank r), the canonical rank-r point with
  every layer's unused rows and columns at zero.
* ``"full_rank"``: generic full-rank layers W_l = U_l diag(s_l) V_lᵀ, end-to-end rank
  r = min(widths). There the end-to-end map is locally a submersion onto the rank-r matrices,
  so the model is regular in the directions that change the function and
  λ(w*) = r(H_0 + H_L − r)/2, which is Aoyagi's λ for r = min(widths).

At other rank-reduced points (e.g. a rank-r product whose individual layers have rank above r)
the local coefficient can exceed the global λ, so there is no exact reference there.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from fractions import Fraction
from numbers import Integral, Real
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import torch
from datasets import Dataset, DatasetInfo, Features, List, Value
from datasets.fingerprint import Hasher
from datasets.table import InMemoryTable

from .configuration_dln import DLNConfig, _check_loss_type, _check_widths
from .modeling_dln import DLNModel
from .theory import dln_learning_coefficient

CONSTRUCTIONS = ("origin", "aligned", "full_rank")
INPUT_DISTRIBUTIONS = ("normal", "uniform")

# Bumped whenever the way a problem is generated from its arguments changes, so that the
# dataset fingerprint of an old and a new generator never coincide.
_GENERATOR_VERSION = 1

_KNOWN_POINTS = (
    "the local learning coefficient is known to equal Aoyagi's global λ only at: "
    "construction='origin' (rank None or 0), construction='aligned' (every layer diag(I_r, 0), "
    "0 <= rank <= min(widths)), and construction='full_rank' (rank None or min(widths)); at "
    "other rank-reduced points the local coefficient can exceed the global one"
)


@dataclass(frozen=True)
class DLNTruth:
    """The exact quantities of a DLN problem.

    Attributes:
        learning_coefficient: λ, Aoyagi's learning coefficient (exact ``Fraction``); equals the
            local coefficient at the construction's w*.
        multiplicity: m, the multiplicity (order of the pole) that goes with λ.
        rank: r, the rank of the teacher's end-to-end matrix W_L ··· W_1.
        construction: how w* is built: ``"origin"``, ``"aligned"`` or ``"full_rank"``.
    """

    learning_coefficient: Fraction
    multiplicity: int
    rank: int
    construction: str


class DLNProblem(NamedTuple):
    """What :func:`make_dln_problem` returns; unpacks as ``model, dataset, lam = problem``.

    Attributes:
        model: a :class:`DLNModel` at the teacher w* (float32, eval mode).
        dataset: a ``datasets.Dataset`` with float32 columns ``"inputs"`` (H_0 values per row)
            and ``"labels"`` (H_L values per row), labels = teacher(inputs) + noise.
        learning_coefficient: the exact λ (``Fraction``). The multiplicity, rank and
            construction are in :func:`dln_truth` (and in ``dataset.info.description``).
    """

    model: DLNModel
    dataset: Dataset
    learning_coefficient: Fraction


def _check_construction(construction) -> None:
    if construction not in CONSTRUCTIONS:
        raise ValueError(
            f"`construction` must be one of {CONSTRUCTIONS}, got {construction!r}: {_KNOWN_POINTS}."
        )


def _resolve_rank(widths: list[int], rank, construction: str) -> int:
    """The end-to-end rank of ``construction``, or ValueError if the pair has no known LLC."""
    if rank is not None and (isinstance(rank, bool) or not isinstance(rank, Integral)):
        raise ValueError(f"`rank` must be None or an integer, got {rank!r}.")
    rank = None if rank is None else int(rank)
    min_width = min(widths)
    if construction == "origin":
        if rank not in (None, 0):
            raise ValueError(
                f"construction='origin' sets every weight to zero, so `rank` must be None or 0, "
                f"got rank={rank}; use construction='aligned' for a rank-{rank} teacher. "
                f"({_KNOWN_POINTS}.)"
            )
        return 0
    if construction == "aligned":
        if rank is None:
            raise ValueError(
                "construction='aligned' needs an explicit `rank` r with "
                f"0 <= r <= min(widths) = {min_width}; pass e.g. rank={min_width}."
            )
        if not 0 <= rank <= min_width:
            raise ValueError(
                f"construction='aligned' needs 0 <= rank <= min(widths) = {min_width}, got "
                f"rank={rank}: the end-to-end rank cannot exceed the narrowest layer."
            )
        return rank
    # full_rank
    if rank not in (None, min_width):
        raise ValueError(
            f"construction='full_rank' has end-to-end rank min(widths) = {min_width}, got "
            f"rank={rank}; pass rank=None, or construction='aligned' (diag(I_r, 0) layers) for a "
            f"rank-reduced teacher, because {_KNOWN_POINTS}."
        )
    return min_width


def dln_truth(widths, rank: int | None = None, construction: str = "full_rank") -> DLNTruth:
    """The exact learning coefficient, multiplicity and rank of a DLN teacher construction.

    Validates ``(widths, rank, construction)`` exactly as :func:`make_dln_problem` does, without
    building anything.

    Args:
        widths: ``[H_0, …, H_L]``, at least two positive integers.
        rank: end-to-end rank of the teacher; see :func:`make_dln_problem`.
        construction: ``"origin"``, ``"aligned"`` or ``"full_rank"``.

    Returns:
        :class:`DLNTruth` with λ and m from
        :func:`hf_llc.models.dln.theory.dln_learning_coefficient`.

    Raises:
        ValueError: on invalid widths, an unknown construction, or a rank that the construction
            does not support.
    """
    widths = _check_widths(widths)
    _check_construction(construction)
    r = _resolve_rank(widths, rank, construction)
    lam, multiplicity = dln_learning_coefficient(widths, r)
    return DLNTruth(
        learning_coefficient=Fraction(lam),
        multiplicity=int(multiplicity),
        rank=r,
        construction=construction,
    )


def _seed_streams(seed: int, count: int) -> list[torch.Generator]:
    """Independent ``torch.Generator`` streams derived from one seed (numpy SeedSequence)."""
    generators = []
    for child in np.random.SeedSequence(seed).spawn(count):
        generator = torch.Generator(device="cpu")
        generator.manual_seed(int(child.generate_state(1, dtype=np.uint64)[0]))
        generators.append(generator)
    return generators


def _haar_orthogonal(n: int, generator: torch.Generator) -> torch.Tensor:
    """A Haar-distributed n × n orthogonal matrix (QR of a Gaussian, signs fixed), float64."""
    gaussian = torch.randn(n, n, generator=generator, dtype=torch.float64)
    q, r = torch.linalg.qr(gaussian)
    signs = torch.sign(torch.diagonal(r))
    signs = torch.where(signs == 0, torch.ones_like(signs), signs)
    return q * signs


def _teacher_weights(
    widths: list[int], rank: int, construction: str, generator: torch.Generator
) -> list[torch.Tensor]:
    """The teacher's layers W_1 … W_L (float64), W_l of shape (H_l, H_{l-1})."""
    weights = []
    for h_in, h_out in zip(widths[:-1], widths[1:]):
        if construction == "origin":
            w = torch.zeros(h_out, h_in, dtype=torch.float64)
        elif construction == "aligned":
            w = torch.zeros(h_out, h_in, dtype=torch.float64)
            w[:rank, :rank] = torch.eye(rank, dtype=torch.float64)
        else:  # full_rank: U diag(s) Vᵀ, s ~ U[0.5, 1.5]
            k = min(h_in, h_out)
            u = _haar_orthogonal(h_out, generator)
            v = _haar_orthogonal(h_in, generator)
            s = 0.5 + torch.rand(k, generator=generator, dtype=torch.float64)
            w = (u[:, :k] * s) @ v[:, :k].T
        weights.append(w)
    return weights


def _draw_inputs(
    num_samples: int, width: int, distribution: str, generator: torch.Generator
) -> torch.Tensor:
    if distribution == "normal":
        return torch.randn(num_samples, width, generator=generator, dtype=torch.float32)
    # uniform on [-√3, √3]: zero mean, unit variance
    u = torch.rand(num_samples, width, generator=generator, dtype=torch.float32)
    return (2.0 * u - 1.0) * math.sqrt(3.0)


def _fixed_size_list(array: np.ndarray) -> pa.FixedSizeListArray:
    """An (n, h) float32 array as an Arrow fixed-size-list column (zero-copy of the buffer)."""
    flat = pa.array(np.ascontiguousarray(array, dtype=np.float32).reshape(-1))
    return pa.FixedSizeListArray.from_arrays(flat, array.shape[1])


def make_dln_problem(
    widths,
    rank: int | None = None,
    construction: str = "full_rank",
    num_samples: int = 100_000,
    seed: int = 0,
    input_distribution: str = "normal",
    noise_std: float = 0.0,
    loss_type: str = "gaussian_nll",
) -> DLNProblem:
    """Build a DLN teacher w*, its dataset, and the exact learning coefficient at w*.

    Args:
        widths: ``[H_0 (input), H_1, …, H_L (output)]``, at least two positive integers.
        rank: end-to-end rank r of the teacher. ``"origin"``: None or 0. ``"aligned"``:
            required, 0 <= r <= min(widths). ``"full_rank"``: None or min(widths).
        construction: the teacher w*, one of the points where the local learning coefficient
            is known to equal Aoyagi's global λ:

            - ``"origin"``: every weight zero;
            - ``"aligned"``: every layer W_l = diag(I_r, 0) of shape (H_l, H_{l−1});
            - ``"full_rank"`` (default): W_l = U diag(s) Vᵀ with U, V Haar-random orthogonal and
              s ~ Uniform[0.5, 1.5], drawn from a ``torch.Generator`` seeded from ``seed``.

        num_samples: n, the number of rows (>= 1).
        seed: non-negative integer; the weights, the inputs and the label noise come from three
            independent streams derived from it (``numpy.random.SeedSequence(seed).spawn``), so
            e.g. changing ``noise_std`` does not change the inputs. The global torch RNG is left
            untouched.
        input_distribution: ``"normal"`` (x ~ N(0, I)) or ``"uniform"`` (each coordinate uniform
            on [−√3, √3], unit variance).
        noise_std: σ >= 0; labels = teacher(x) + σ·ε with ε ~ N(0, I). With σ = 0 the labels are
            exact and L_n(w*) = 0 up to float32 rounding.
        loss_type: the model's loss, ``"gaussian_nll"`` (default) or ``"mse"``; see
            :class:`DLNConfig`.

    Returns:
        :class:`DLNProblem` ``(model, dataset, learning_coefficient)``: the float32
        :class:`DLNModel` at w* in eval mode; a ``datasets.Dataset`` with float32 fixed-length
        list columns ``"inputs"`` (H_0) and ``"labels"`` (H_L), no format set (use
        ``dataset.with_format("torch")`` for tensors), with a deterministic fingerprint and the
        problem (including the multiplicity) described in JSON in ``dataset.info.description``;
        and λ as a ``Fraction``. Use :func:`dln_truth` for the multiplicity and rank.

    Raises:
        ValueError: if any argument is invalid, naming it, or if ``(construction, rank)`` is not
            a point with a known local learning coefficient.

    Example::

        >>> model, dataset, lam = make_dln_problem([5, 3, 5], construction="origin",
        ...                                        num_samples=1000)
        >>> lam
        Fraction(13, 2)
    """
    widths = _check_widths(widths)
    num_samples, seed, noise_std = _check_sampling_args(
        num_samples, seed, input_distribution, noise_std
    )
    _check_loss_type(loss_type)
    truth = dln_truth(widths, rank, construction)

    weight_gen, input_gen, noise_gen = _seed_streams(seed, 3)

    # Teacher: round the float64 construction to float32 once. The labels are computed in
    # float64 from exactly these float32 weights and inputs and rounded once, so noise-free
    # labels are the returned float32 model's output to within float32 rounding.
    weights = [
        w.to(torch.float32) for w in _teacher_weights(widths, truth.rank, construction, weight_gen)
    ]
    model = _teacher_model(widths, weights, loss_type)
    inputs = _draw_inputs(num_samples, widths[0], input_distribution, input_gen)
    labels = _teacher_labels(inputs, weights, noise_std, noise_gen)

    description = json.dumps(
        {
            "problem": "hf_llc deep linear network teacher",
            "widths": widths,
            "construction": construction,
            "rank": truth.rank,
            "learning_coefficient": str(truth.learning_coefficient),
            "multiplicity": truth.multiplicity,
            "num_samples": num_samples,
            "seed": seed,
            "input_distribution": input_distribution,
            "noise_std": noise_std,
        }
    )
    dataset = _problem_dataset(inputs, labels, description)
    return DLNProblem(model, dataset, truth.learning_coefficient)


def _check_sampling_args(
    num_samples, seed, input_distribution, noise_std
) -> tuple[int, int, float]:
    """``(num_samples, seed, noise_std)`` as plain Python numbers, or ValueError naming the
    first bad argument of :func:`make_dln_problem`."""
    if isinstance(num_samples, bool) or not isinstance(num_samples, Integral) or num_samples < 1:
        raise ValueError(f"`num_samples` must be an integer >= 1, got {num_samples!r}.")
    if isinstance(seed, bool) or not isinstance(seed, Integral) or seed < 0:
        raise ValueError(f"`seed` must be a non-negative integer, got {seed!r}.")
    if input_distribution not in INPUT_DISTRIBUTIONS:
        raise ValueError(
            f"`input_distribution` must be one of {INPUT_DISTRIBUTIONS}, got "
            f"{input_distribution!r}."
        )
    if (
        isinstance(noise_std, bool)
        or not isinstance(noise_std, Real)
        or not math.isfinite(noise_std)
        or noise_std < 0
    ):
        raise ValueError(f"`noise_std` must be a finite number >= 0, got {noise_std!r}.")
    return int(num_samples), int(seed), float(noise_std)


def _teacher_model(widths: list[int], weights: list[torch.Tensor], loss_type: str) -> DLNModel:
    """A float32 :class:`DLNModel` in eval mode with layers ``weights``; the global torch RNG
    is left untouched by its random initialisation."""
    config = DLNConfig(widths=widths, loss_type=loss_type)
    with torch.random.fork_rng(devices=[]):
        model = DLNModel(config)
    model = model.to(torch.float32)
    with torch.no_grad():
        for layer, w in zip(model.layers, weights):
            layer.weight.copy_(w)
    model.eval()
    return model


def _teacher_labels(
    inputs: torch.Tensor,
    weights: list[torch.Tensor],
    noise_std: float,
    generator: torch.Generator,
) -> torch.Tensor:
    """teacher(inputs) + noise_std·ε, computed in float64 and rounded to float32 once."""
    end_to_end = weights[0].double()
    for w in weights[1:]:
        end_to_end = w.double() @ end_to_end
    labels = inputs.double() @ end_to_end.T
    if noise_std > 0:
        labels = labels + noise_std * torch.randn(
            inputs.shape[0], weights[-1].shape[0], generator=generator, dtype=torch.float64
        )
    return labels.to(torch.float32)


def _problem_dataset(inputs: torch.Tensor, labels: torch.Tensor, description: str) -> Dataset:
    """The in-memory dataset of a problem, its fingerprint derived from ``description``."""
    features = Features(
        {
            "inputs": List(Value("float32"), length=inputs.shape[1]),
            "labels": List(Value("float32"), length=labels.shape[1]),
        }
    )
    table = pa.table(
        {
            "inputs": _fixed_size_list(inputs.numpy()),
            "labels": _fixed_size_list(labels.numpy()),
        }
    )
    fingerprint = Hasher.hash(("hf_llc_dln_problem", _GENERATOR_VERSION, description))
    return Dataset(
        InMemoryTable(table),
        info=DatasetInfo(description=description, features=features),
        fingerprint=fingerprint,
    )


__all__ = [
    "CONSTRUCTIONS",
    "INPUT_DISTRIBUTIONS",
    "DLNProblem",
    "DLNTruth",
    "dln_truth",
    "make_dln_problem",
]


def rescale_dln(model: DLNModel, seed: int, low: float = 0.1, high: float = 10.0) -> DLNModel:
    """Move a DLN along its rescaling symmetries, in place: the function, and so the learning
    coefficient, stay exactly the same.

    Layer l is multiplied by a_l, with log a_l drawn uniformly from [log ``low``, log ``high``]
    and then centred so that ∏ a_l = 1; then every hidden unit j between layers l and l + 1 gets
    a factor α_j (log-uniform in [``low``, ``high``]) on its incoming row of W_l and 1/α_j on its
    outgoing column of W_{l+1}. The draws come from ``numpy.random.default_rng(seed)``.
    Returns ``model``.

    The local learning coefficient is invariant under these linear symmetries, but a sampler
    is not unless its preconditioner and localizer transform with them: this is the test bed
    for that (``hf-llc validate --rescale SEED``).
    """
    if isinstance(seed, bool) or not isinstance(seed, Integral) or seed < 0:
        raise ValueError(f"`seed` must be a non-negative integer, got {seed!r}.")
    if not (0 < low <= high and math.isfinite(high)):
        raise ValueError(f"need 0 < low <= high < inf, got low={low!r}, high={high!r}.")
    rng = np.random.default_rng(int(seed))
    layers = list(model.layers)
    span = (math.log(low), math.log(high))
    logs = rng.uniform(*span, size=len(layers))
    logs -= logs.mean()
    with torch.no_grad():
        for layer, a in zip(layers, np.exp(logs)):
            layer.weight.mul_(float(a))
        for i in range(len(layers) - 1):
            units = layers[i].weight.shape[0]
            alpha = torch.tensor(np.exp(rng.uniform(*span, size=units)), dtype=torch.float64)
            w_in, w_out = layers[i].weight, layers[i + 1].weight
            w_in.copy_((w_in.double() * alpha[:, None]).to(w_in.dtype))
            w_out.copy_((w_out.double() / alpha[None, :]).to(w_out.dtype))
    return model
