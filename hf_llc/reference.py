r"""An exact reference sampler of the localized tempered posterior, for small models.

:func:`reference_llc` samples

    p(w) ∝ exp(−U(w)),   U(w) = nβ·L_n(w) + (γ/2)·‖w − w*‖²,

the target of :func:`hf_llc.estimate_llc` (DESIGN §2), with the Metropolis-adjusted Langevin
algorithm (MALA; Roberts & Tweedie, Bernoulli 2(4), 1996): the Langevin proposal
w' = w − (ε/2)·∇U(w) + √ε·ξ, ξ ~ N(0, I), is accepted with probability
min(1, exp(U(w) − U(w') + log q(w | w') − log q(w' | w))), q(b | a) = N(b; a − (ε/2)∇U(a), εI).
Three things make it exact where SGLD is not: the Metropolis–Hastings correction removes the
discretisation bias of the step, L_n is the full-batch mean over all n samples (no minibatch
noise), and the model, the data, w, U and the gradient are all float64.

``method="hmc"`` runs Hamiltonian Monte Carlo instead (Duane et al. 1987; Neal 2011):
momentum p ~ N(0, I) (N(0, A⁻¹) with a ``metric``, A as below), ⌈L/2⌉…L leapfrog steps of
H = U(w) + ½·pᵀA·p, accepted with probability min(1, exp(H − H')); exact for the same
reasons, with longer moves per draw at up to L gradients each.

``num_temperatures=K`` adds replica exchange (parallel tempering): each chain runs K replicas
at temperatures 1 = t_0 > … > t_{K−1}, replica k sampling exp(−t_k·nβ·L_n(w) − localizer),
and neighbours swap states with the Metropolis probability min(1, exp((t_k − t_{k+1})·nβ·
(L_n(x) − L_n(y)))). Every move leaves the product of the tempered targets invariant, so the
t = 1 replica samples p exactly, and it reaches modes behind loss barriers that a chain from
w* alone does not leave (chains that each stay in their own mode agree with each other, and
R̂ cannot see the mode they all miss).

The step size ε of each chain is tuned during the warm-up only, by dual averaging of log ε
towards a target acceptance rate (Hoffman & Gelman, JMLR 15, 2014, §3.2, their Algorithm 5
constants), and then held fixed, so the draws are one time-homogeneous MH chain whose
stationary law is exactly p.

The target is the estimator's: the same preparation (:func:`hf_llc.posterior.open_posterior`:
argument checks, data, loss, nβ, w*) builds the posterior, and a float64 copy of the model
and of the data's floating columns evaluates the same loss function; w* is the model's fp32
weights, exactly representable in float64. λ̂ = nβ·(E_p[L_n(w)] − L_n(w*)) with both terms
in float64; the estimator's fp32 L_n(w*) is reported beside it.

The localizer is Euclidean unless ``metric`` is given. The estimator's default
(``"fisher-burnin"`` with ``localizer="preconditioner"``) measures its localizer in a metric M
that each chain fixes during its burn-in, (γ/2)(w − w*)ᵀM(w − w*): a different target for
each chain. ``SamplerConfig(record_metric=True)`` keeps the chains' metrics in
``LLCResult.localizer_metric``, and ``reference_llc(..., metric=result.localizer_metric)``
samples those exact targets (reference chain c with row c mod rows), so the two answers
compare like with like; those chains propose with the SGLD chain's own preconditioner
A = 1/(nβ·M) (MALA with a fixed diagonal mass: as exact, and it mixes in the flat directions
the metric leaves wide). Without it, compare with ``localizer="euclidean"`` or a Euclidean
preconditioner (``"identity"``, ``"rmsprop"``) for the identical target. The preconditioner
itself changes only how SGLD moves, not what it samples, so the reference ignores it.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ._logging import get_logger
from .diagnostics import _ess_of_chains, ess_bulk, rhat_rank, split_chains
from .posterior import FlatParameters, ModelLoss, checked_config, open_posterior
from .sampling import SamplerConfig
from .sampling.chain import chain_generator

logger = get_logger(__name__)

#: The largest number of sampled parameters: beyond it full-batch float64 MALA is too slow
#: to mix (its step shrinks like d^(−1/3)) and SGLD is the tool.
MAX_PARAMS = 100_000
#: The largest n·d: one full-batch float64 forward and backward costs about this many
#: multiply-adds for a dense model, and a reference run takes tens of thousands of them.
MAX_SIZE = 200_000_000
#: Keyword arguments passed on to the data preparation (those of :func:`hf_llc.estimate_llc`).
DATA_KWARGS = frozenset(
    {
        "loss_fn",
        "model_loss_fn",
        "forward_kwargs",
        "tokenizer",
        "text_column",
        "max_length",
        "num_samples",
        "drop_empty_rows",
        "block_size",
        "dataset_description",
    }
)
METHODS = ("mala", "hmc")
#: How the replica-exchange temperatures are placed (``reference_llc``'s ``ladder``).
LADDERS = ("geometric", "adaptive")
#: A pair's swap rejection is counted as at least this when the ladder is re-placed, so that
#: the cumulative rejection rises strictly and every pair keeps some share of the ladder.
_MIN_REJECTION = 1e-3
#: The warm-up's default target acceptance rate of each method (Roberts & Rosenthal 1998 for
#: MALA; 0.8, Stan's, for HMC).
TARGET_ACCEPTANCE = {"mala": 0.574, "hmc": 0.8}
# Dual averaging (Hoffman & Gelman 2014, Algorithm 5): shrinkage γ, offset t0, decay κ.
_DA_GAMMA, _DA_T0, _DA_KAPPA = 0.05, 10.0, 0.75


@dataclass
class ReferenceResult:
    """What :func:`reference_llc` measured.

    Attributes:
        llc_mean: λ̂ = nβ·(mean L_n(w) over every draw of every chain − L_n(w*)).
        llc_stderr: its Monte Carlo standard error, √(var of the draws' λ values / ESS).
        llc_per_chain: λ̂ of each chain.
        rhat: rank-normalized split R̂ of the chains' λ traces
            (:func:`~hf_llc.diagnostics.rhat_rank`); with several ``metric`` rows, the
            largest over the groups of chains sampling the same row.
        ess: effective sample size of the mean (split chains, Vehtari et al. 2021, eq. 10–12).
        ess_bulk: bulk ESS (rank-normalized), :func:`~hf_llc.diagnostics.ess_bulk`.
        acceptance_rate: the mean MH acceptance probability over the draws of all chains.
        acceptance_per_chain: the same per chain.
        step_size: the mean over chains of the fixed draw-phase ε.
        step_size_per_chain: each chain's ε (fixed during its draws).
        nbeta, localization, num_samples, num_params: nβ, γ, n, d.
        localizer: ``"euclidean"`` ((γ/2)‖w − w*‖²) or ``"metric"`` (the given ``metric``).
        init_loss: L_n(w*) in float64 (the λ̂ reference).
        init_loss_float32: the estimator's L_n(w*) (fp32 model, float64 sum) for comparison.
        loss_trace: L_n(w_t) at each draw, one list per chain (float64).
        method, num_warmup, num_draws, target_acceptance, seed: the settings.
        num_leapfrog: HMC's largest number of leapfrog steps per transition (``None`` for
            MALA).
        tempering: with ``num_temperatures`` > 1, the replica exchange's report, means over
            the chains: ``temperatures``, ``llc_by_temperature`` (each replica's λ̂ at
            nβ' = t·nβ), ``step_size``, ``acceptance``, ``swap_acceptance`` (per neighbouring
            pair) and ``swap_every``; ``None`` without tempering.
        wall_seconds: time of the whole call.
    """

    llc_mean: float
    llc_stderr: float
    llc_per_chain: list[float]
    rhat: float
    ess: float
    ess_bulk: float
    acceptance_rate: float
    acceptance_per_chain: list[float]
    step_size: float
    step_size_per_chain: list[float]
    nbeta: float
    localization: float
    localizer: str
    num_samples: int
    num_params: int
    init_loss: float
    init_loss_float32: float
    loss_trace: list[list[float]] = field(repr=False)
    method: str
    num_warmup: int
    num_draws: int
    target_acceptance: float
    seed: int
    wall_seconds: float
    num_leapfrog: int | None = None
    tempering: dict | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values (floats, ints, strings and lists of them)."""
        return asdict(self)

    def summary(self) -> str:
        """One line: λ̂ ± MCSE, R̂, ESS, acceptance, ε, nβ, γ, n, d."""
        return (
            f"reference λ̂ = {self.llc_mean:.4g} ± {self.llc_stderr:.2g} (MCSE; R̂ = "
            f"{self.rhat:.3f}, ESS = {self.ess:.0f}, acceptance = {self.acceptance_rate:.2f}, "
            f"ε = {self.step_size:.3g}, nβ = {self.nbeta:.4g}, γ = {self.localization:g}"
            f"{' in the given metric' if self.localizer == 'metric' else ''}"
            f"{self._tempering_text()}, "
            f"n = {self.num_samples}, d = {self.num_params})"
        )

    def _tempering_text(self) -> str:
        if not self.tempering:
            return ""
        temps, swaps = self.tempering["temperatures"], self.tempering["swap_acceptance"]
        return (
            f", {len(temps)} replicas down to t = {temps[-1]:.3g}"
            f"{' (adaptive ladder)' if self.tempering.get('ladder') == 'adaptive' else ''}"
            ", swap acceptance "
            f"{min(swaps):.2f}–{max(swaps):.2f}"
        )


class _Float64Loss(ModelLoss):
    """:class:`ModelLoss` on a float64 copy of the model, without the fp32 cast of the loss."""

    def evaluate(self, batch: Mapping[str, Any]) -> Tensor:
        if self.model_loss_fn is not None:
            out = self.model_loss_fn(self.model, batch)
        else:
            out = self.outputs_to_loss(self.model(**self._forward_inputs(batch)), batch)
        if not isinstance(out, Tensor) or out.dtype != torch.float64:
            raise ValueError(
                "reference_llc needs the loss in float64, got "
                f"{getattr(out, 'dtype', type(out).__name__)}: loss_fn/model_loss_fn must keep "
                "the dtype of the model's outputs (no .float())."
            )
        return out


class _Target:
    """U(w) and ∇U(w) in float64, full batch (chunks of ``chunk_size`` rows)."""

    def __init__(self, problem: _Float64Loss, w_star: Tensor, nbeta: float, gamma: float, chunk):
        self.problem, self.w_star, self.nbeta, self.gamma = problem, w_star, nbeta, gamma
        #: The localizer's diagonal metric M (float64), or ``None`` for the Euclidean one.
        self.metric: Tensor | None = None
        #: t of a tempered replica: U_t(w) = t·nβ·L_n(w) + the localizer (1: the target).
        self.temperature = 1.0
        n = problem.num_samples
        self.batches = [
            problem.batch(torch.arange(s, min(s + chunk, n))) for s in range(0, n, chunk)
        ]
        self.sizes = [min(chunk, n - s) for s in range(0, n, chunk)]
        self.n = n

    def loss(self, w: Tensor) -> Tensor:
        """L_n(w), differentiable: per-sample losses summed, or batch means times their size."""
        total = w.new_zeros(())
        for batch, size in zip(self.batches, self.sizes):
            value = self.problem.loss(w, batch)
            total = total + (value.sum() if value.ndim == 1 else value * size)
        return total / self.n

    def __call__(self, w: Tensor) -> tuple[float, float, Tensor]:
        """(U(w), L_n(w), ∇U(w)); U = inf (and a zero gradient) where the loss is not finite."""
        w = w.detach().requires_grad_(True)
        loss = self.loss(w)
        delta2 = (w - self.w_star).pow(2)
        if self.metric is not None:
            delta2 = delta2 * self.metric
        u = self.temperature * self.nbeta * loss + 0.5 * self.gamma * delta2.sum()
        if not torch.isfinite(u):
            return math.inf, float(loss.detach()), torch.zeros_like(w)
        (grad,) = torch.autograd.grad(u, w)
        return float(u.detach()), float(loss.detach()), grad

    def localizer(self, w: Tensor) -> tuple[float, Tensor]:
        """The localizer's value (γ/2)·Σ M(w − w*)² and gradient γ·M·(w − w*) (M = 1 when
        Euclidean)."""
        delta = w - self.w_star
        scaled = delta if self.metric is None else delta * self.metric
        return float(0.5 * self.gamma * (scaled * delta).sum()), self.gamma * scaled

    def with_metric(self, metric: Tensor | None) -> _Target:
        """The same target localized in ``metric`` (shares the model and the data)."""
        other = copy.copy(self)
        other.metric = metric
        return other

    def with_temperature(self, temperature: float) -> _Target:
        """The tempered target exp(−t·nβ·L_n(w) − localizer) (shares the model and the
        data)."""
        other = copy.copy(self)
        other.temperature = float(temperature)
        return other


def _check_settings(
    method: str,
    num_chains: int,
    num_warmup: int,
    num_draws: int,
    target_acceptance: float,
    seed: int,
    step_size: float | None,
    chunk_size: int | None,
    leapfrog: int | None,
    data_kwargs: Mapping[str, Any],
) -> None:
    """ValueError naming the first bad argument (``leapfrog``: HMC's ``num_leapfrog``, ``None``
    for MALA)."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}.")
    for name, value, low in (
        ("num_chains", num_chains, 1),
        ("num_warmup", num_warmup, 10),
        ("num_draws", num_draws, 1),
        ("seed", seed, 0),
        *([] if leapfrog is None else [("num_leapfrog", leapfrog, 1)]),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an integer ≥ {low}, got {value!r}.")
    if chunk_size is not None and (
        isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1
    ):
        raise ValueError(f"chunk_size must be a positive integer or None, got {chunk_size!r}.")
    if not (isinstance(target_acceptance, (int, float)) and 0.0 < target_acceptance < 1.0):
        raise ValueError(f"target_acceptance must be in (0, 1), got {target_acceptance!r}.")
    if step_size is not None and not (
        isinstance(step_size, (int, float)) and math.isfinite(step_size) and step_size > 0
    ):
        raise ValueError(f"step_size must be a positive number or None, got {step_size!r}.")
    unknown = sorted(set(data_kwargs) - DATA_KWARGS)
    if unknown:
        raise ValueError(
            f"reference_llc got unexpected argument(s) {unknown}; it takes estimate_llc's data "
            f"arguments {sorted(DATA_KWARGS)} (no output folder, processes or mixed precision)."
        )


def _check_size(cfg: SamplerConfig, n: int, d: int, has_columns: bool) -> None:
    """Refuse what the reference cannot sample exactly or in reasonable time."""
    if d > MAX_PARAMS:
        raise ValueError(
            f"model: reference_llc samples at most MAX_PARAMS = {MAX_PARAMS} parameters, "
            f"this one has {d}; use estimate_llc."
        )
    if n * d > MAX_SIZE:
        raise ValueError(
            f"dataset: n·d = {n}·{d} exceeds MAX_SIZE = {MAX_SIZE:.0e} (the cost of one "
            "full-batch float64 step); pass num_samples=... to use fewer rows, or use estimate_llc."
        )
    if cfg.init_loss_samples is not None and cfg.init_loss_samples != n:
        raise ValueError(
            f"config.init_loss_samples={cfg.init_loss_samples}: the reference takes L_n(w*) over "
            "all n samples; leave it None."
        )
    if not has_columns:
        raise ValueError(
            "dataset: reference_llc needs numeric tensor columns (a datasets.Dataset or a dict "
            "of tensors); collate_fn datasets are not supported."
        )


def _metric_rows(metric: Any, d: int) -> Tensor | None:
    """``metric`` as a (rows × d) float64 tensor of positive finite numbers (``None`` stays
    ``None``); ValueError naming ``metric`` otherwise."""
    if metric is None:
        return None
    try:
        rows = torch.as_tensor(np.asarray(metric, dtype=np.float64))
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"metric must be an array of numbers, got {type(metric).__name__}."
        ) from err
    if rows.ndim == 1:
        rows = rows.unsqueeze(0)
    if rows.ndim != 2 or rows.shape[0] < 1 or rows.shape[1] != d:
        raise ValueError(
            f"metric must have shape (d,) or (chains, d) with d = {d} sampled parameters, got "
            f"{tuple(rows.shape)}; pass an estimate's result.localizer_metric "
            "(SamplerConfig(record_metric=True))."
        )
    if not bool(torch.isfinite(rows).all()) or not bool((rows > 0).all()):
        raise ValueError("metric entries must be finite and > 0 (a localizer's diagonal metric).")
    return rows


def _fitted(cfg: SamplerConfig, dataset: Any, data_kwargs: Mapping[str, Any]) -> SamplerConfig:
    """``cfg`` with its SGLD ``batch_size`` (unused here but checked against n by the data
    preparation) cut to the dataset's length when that is known."""
    try:
        n = len(dataset)
    except TypeError:
        return cfg
    if data_kwargs.get("num_samples"):
        n = min(n, int(data_kwargs["num_samples"]))
    if isinstance(dataset, Mapping):
        n = min((len(v) for v in dataset.values()), default=n)
    return replace(cfg, batch_size=max(1, min(cfg.batch_size, n)))


def _float64_problem(posterior) -> tuple[_Float64Loss, Tensor]:
    """A float64 copy of the posterior's model and data (floating columns), and w* in float64."""
    problem = posterior.problem
    model64 = copy.deepcopy(problem.model).to(torch.float64)
    flat64 = FlatParameters(model64)
    if flat64.names != posterior.flat.names:
        raise ValueError("model: its float64 copy samples different parameters.")  # defensive
    data64 = copy.copy(problem.data)
    data64.columns = {
        k: v.to(torch.float64) if v.is_floating_point() else v for k, v in data64.columns.items()
    }
    problem64 = _Float64Loss(
        model64,
        flat64,
        data64,
        problem.loss_fn,
        model_loss_fn=problem.model_loss_fn,
        forward_kwargs=problem.forward_kwargs,
        exclude=frozenset(problem.exclude),
    )
    return problem64, posterior.w_star.to(torch.float64)


def _log_q(to: Tensor, frm: Tensor, grad_frm: Tensor, eps: float, A: Tensor | None) -> float:  # noqa: N803
    """log q(to | from) of the Langevin proposal N(from − (ε/2)·A·∇U(from), ε·A) (A = I when
    ``None``), up to its constant."""
    if A is None:
        diff = to - frm + 0.5 * eps * grad_frm
        return float(-diff.pow(2).sum() / (2.0 * eps))
    diff = to - frm + 0.5 * eps * A * grad_frm
    return float(-(diff.pow(2) / A).sum() / (2.0 * eps))


class _Chain:
    """One MALA chain: its state (w, U, L_n, ∇U), generator and step size.

    With a metric localizer the proposal is preconditioned by the diagonal A = 1/(nβ·M), the
    SGLD chain's own preconditioner (M = 1/(nβ·A) there): it moves the flat directions, where
    M is small and the target wide, as far as the curved ones. A fixed A changes how fast the
    chain mixes, not what it samples (the acceptance step uses the preconditioned proposal's
    density)."""

    def __init__(self, target: _Target, w: Tensor, gen: torch.Generator, eps: float):
        self.target, self.gen, self.eps = target, gen, eps
        self.A = None if target.metric is None else (target.nbeta * target.metric).reciprocal()
        self.A_sqrt = None if self.A is None else self.A.sqrt()
        self.w = w.clone()
        self.u, self.loss, self.grad = target(self.w)

    def adopt(self, w: Tensor, loss: float, grad: Tensor, temperature: float) -> None:
        """Take over the state (w, L_n(w), ∇U_t'(w)) of a replica at temperature t' (a
        replica-exchange swap): U and ∇U are re-weighted to this chain's temperature from the
        loss and the localizer, without evaluating the model again."""
        target = self.target
        loc, loc_grad = target.localizer(w)
        loss_grad = (grad - loc_grad) / (temperature * target.nbeta)
        self.w, self.loss = w, loss
        self.u = target.temperature * target.nbeta * loss + loc
        self.grad = target.temperature * target.nbeta * loss_grad + loc_grad

    def step(self) -> float:
        """One transition at the current ε; returns the acceptance probability."""
        proposal, u, loss, grad, log_alpha = self._propose(self.eps)
        alpha = 1.0 if log_alpha >= 0 else math.exp(log_alpha)
        uniform = float(torch.rand((), generator=self.gen, dtype=torch.float64))
        if uniform < alpha:
            self.w, self.u, self.loss, self.grad = proposal, u, loss, grad
        return alpha

    def _noise(self) -> Tensor:
        noise = torch.randn(self.w.shape, generator=self.gen, dtype=self.w.dtype)
        return noise.to(self.w.device)

    def _propose(self, eps: float) -> tuple[Tensor, float, float, Tensor, float]:
        """The Langevin proposal: (w', U(w'), L_n(w'), ∇U(w'), log acceptance ratio)."""
        noise = self._noise()
        if self.A is None:
            proposal = self.w - 0.5 * eps * self.grad + math.sqrt(eps) * noise
        else:
            proposal = (
                self.w - 0.5 * eps * self.A * self.grad + math.sqrt(eps) * self.A_sqrt * noise
            )
        u, loss, grad = self.target(proposal)
        if not _finite(u, grad):
            return proposal, u, loss, grad, -math.inf  # rejected
        log_alpha = (
            self.u
            - u
            + _log_q(self.w, proposal, grad, eps, self.A)
            - _log_q(proposal, self.w, self.grad, eps, self.A)
        )
        return proposal, u, loss, grad, log_alpha

    def initial_step_size(self, guess: float) -> float:
        """Double or halve ``guess`` until the acceptance probability of one proposal from the
        current point crosses 1/2 (Hoffman & Gelman 2014, Algorithm 4); the state is kept."""
        saved = (self.w, self.u, self.loss, self.grad, self.gen.get_state())
        self.eps = guess
        direction = None
        for _ in range(60):
            self.w, self.u, self.loss, self.grad = saved[:4]
            up = self.step() > 0.5
            if direction is None:
                direction = up
            elif up != direction:
                break
            self.eps = self.eps * 2.0 if up else self.eps / 2.0
        self.w, self.u, self.loss, self.grad = saved[:4]
        self.gen.set_state(saved[4])
        return self.eps


class _HMCChain(_Chain):
    """One HMC chain (Duane et al., Phys. Lett. B 195, 1987; Neal 2011): momentum
    p ~ N(0, A⁻¹), ``leapfrog`` steps of the Hamiltonian H = U(w) + ½·pᵀA·p (velocity A·p;
    A as in :class:`_Chain`), accepted with probability min(1, exp(H − H')). The number of
    leapfrog steps of each transition is drawn uniformly from ⌈L/2⌉…L, which breaks the
    periodic orbits a fixed length can fall into and keeps every transition reversible."""

    def __init__(self, target: _Target, w: Tensor, gen: torch.Generator, eps: float, leapfrog):
        super().__init__(target, w, gen, eps)
        self.leapfrog = int(leapfrog)

    def _velocity(self, p: Tensor) -> Tensor:
        return p if self.A is None else self.A * p

    def _propose(self, eps: float) -> tuple[Tensor, float, float, Tensor, float]:
        low = (self.leapfrog + 1) // 2
        steps = low + int(torch.randint(self.leapfrog - low + 1, (), generator=self.gen))
        noise = self._noise()
        p = noise if self.A is None else noise / self.A_sqrt
        h0 = self.u + 0.5 * float((p * self._velocity(p)).sum())
        w, grad = self.w, self.grad
        p = p - 0.5 * eps * grad
        for k in range(steps):
            w = w + eps * self._velocity(p)
            u, loss, grad = self.target(w)
            if not _finite(u, grad):
                return w, u, loss, grad, -math.inf  # rejected
            p = p - (0.5 if k == steps - 1 else 1.0) * eps * grad
        h1 = u + 0.5 * float((p * self._velocity(p)).sum())
        return w, u, loss, grad, h0 - h1


def _finite(u: float, grad: Tensor) -> bool:
    """Whether U and ∇U are finite (a proposal where they are not is rejected)."""
    return math.isfinite(u) and bool(torch.isfinite(grad).all())


class _DualAveraging:
    """Dual averaging of log ε towards a target acceptance rate (Hoffman & Gelman 2014,
    Algorithm 5), one transition at a time; :meth:`finish` fixes ε at exp(log ε̄)."""

    def __init__(self, chain: _Chain, target_acceptance: float):
        self.chain, self.target = chain, target_acceptance
        self.mu = math.log(10.0 * chain.eps)
        self.h_bar, self.log_eps_bar, self.m = 0.0, 0.0, 0

    def update(self, alpha: float) -> None:
        """Adapt ε after a transition accepted with probability ``alpha``."""
        self.m += 1
        m = self.m
        weight = 1.0 / (m + _DA_T0)
        self.h_bar = (1.0 - weight) * self.h_bar + weight * (self.target - alpha)
        log_eps = self.mu - math.sqrt(m) / _DA_GAMMA * self.h_bar
        eta = m**-_DA_KAPPA
        self.log_eps_bar = eta * log_eps + (1.0 - eta) * self.log_eps_bar
        self.chain.eps = math.exp(log_eps)

    def finish(self) -> None:
        """End the warm-up: ε = exp(log ε̄), the averaged step, fixed from now on."""
        self.chain.eps = math.exp(self.log_eps_bar)


def _warm_up(chain: _Chain, num_warmup: int, target_acceptance: float) -> None:
    """Dual averaging of log ε towards ``target_acceptance`` over ``num_warmup`` transitions;
    ε is then fixed at the averaged value exp(log ε̄)."""
    adapt = _DualAveraging(chain, target_acceptance)
    for _ in range(num_warmup):
        adapt.update(chain.step())
    adapt.finish()


def _new_chain(
    target: _Target,
    w_star: Tensor,
    gen: torch.Generator,
    step_size: float | None,
    num_leapfrog: int | None,
) -> _Chain:
    """A MALA (or, with ``num_leapfrog``, HMC) chain at w* with its first ε: ``step_size``,
    or found by doubling/halving from the step of a unit-curvature direction of L."""
    # A = 1/(nβ·M) already scales by 1/nβ.
    default = 1.0 / (target.nbeta + target.gamma) if target.metric is None else 1.0
    guess = step_size if step_size is not None else default
    if num_leapfrog is None:
        chain = _Chain(target, w_star, gen, guess)
    else:
        chain = _HMCChain(target, w_star, gen, guess, num_leapfrog)
    if step_size is None:
        chain.initial_step_size(guess)
    return chain


def _run_chain(
    target: _Target,
    w_star: Tensor,
    gen: torch.Generator,
    *,
    num_warmup: int,
    num_draws: int,
    target_acceptance: float,
    step_size: float | None,
    num_leapfrog: int | None = None,
) -> tuple[list[float], float, float]:
    """One chain from w*: warm-up (ε adapted), then ``num_draws`` MALA (or, with
    ``num_leapfrog``, HMC) transitions at a fixed ε. Returns (L_n at each draw, mean
    acceptance probability of the draws, ε)."""
    chain = _new_chain(target, w_star, gen, step_size, num_leapfrog)
    _warm_up(chain, num_warmup, target_acceptance)
    eps = chain.eps
    losses, accept = [], 0.0
    for _ in range(num_draws):
        accept += chain.step()
        losses.append(chain.loss)
    assert chain.eps == eps  # the draws are a fixed-step chain
    return losses, accept / num_draws, eps


def _sample(target, w_star, gen, temperatures, tempering: dict, kwargs: dict) -> tuple:
    """One reference chain, plain (one temperature: :func:`_run_chain`) or with replica
    exchange (:func:`_run_tempered`, ``tempering`` its settings): (L_n at each draw, mean
    acceptance, ε, the replica-exchange report or ``None``)."""
    if len(temperatures) == 1:
        return (*_run_chain(target, w_star, gen, **kwargs), None)
    return _run_tempered(target, w_star, gen, temperatures, **tempering, **kwargs)


def _ladder(num_temperatures: int, min_temperature: float) -> list[float]:
    """The geometric ladder 1 = t_0 > t_1 > … > t_{K−1} = ``min_temperature``."""
    if num_temperatures == 1:
        return [1.0]
    ratio = min_temperature ** (1.0 / (num_temperatures - 1))
    return [ratio**k for k in range(num_temperatures)]


def _placed_ladder(temperatures: list[float], rejection: list[float]) -> list[float]:
    """The ladder re-placed so that every neighbouring pair gets the same share of the swap
    rejection: the cumulative rejection Λ_k = r_0 + … + r_{k−1} of the current ladder
    (r_j = 1 − pair j's mean swap acceptance, at least :data:`_MIN_REJECTION`) is taken as
    piecewise linear in log t between the rungs, and the new t_i solve Λ(t_i) = i·Λ_K/(K−1)
    (the communication-barrier schedule of Syed et al., JRSS B 84(2), 2022, in log t). The ends
    1 and t_{K−1} stay; the order is kept."""
    k = len(temperatures)
    if k < 3:
        return list(temperatures)
    x = np.log(np.asarray(temperatures, dtype=np.float64))
    cum = np.concatenate([[0.0], np.cumsum(np.maximum(rejection, _MIN_REJECTION))])
    levels = cum[-1] * np.arange(k) / (k - 1)
    placed = np.interp(levels, cum, x)  # cum rises strictly, x falls: Λ → log t
    return [1.0] + [float(math.exp(v)) for v in placed[1:-1]] + [float(temperatures[-1])]


def _retemper(replicas: list[_Chain], temperatures: list[float]) -> None:
    """Move each replica to its new temperature, keeping its state (U and ∇U re-weighted
    from the loss and the localizer, as in a swap)."""
    for replica, t in zip(replicas, temperatures):
        old = replica.target.temperature
        replica.target = replica.target.with_temperature(t)
        replica.adopt(replica.w, replica.loss, replica.grad, old)


def _ladder_updates(num_warmup: int, swap_every: int) -> list[int]:
    """The warm-up transitions after which an adaptive ladder is re-placed: 1/8, 1/4 and 1/2
    of the warm-up (each from the swaps since the previous one, twice as many each time), those
    with at least 10 rounds of swaps behind them."""
    points = sorted({num_warmup // 8, num_warmup // 4, num_warmup // 2})
    out, last = [], 0
    for p in points:
        if (p - last) // swap_every >= 10:
            out.append(p)
            last = p
    return out


def _swap_round(replicas: list[_Chain], parity: int, gen: torch.Generator, accepts: list) -> None:
    """Replica-exchange swaps of the pairs (k, k + 1) with k ≡ ``parity`` (mod 2), the
    deterministic even–odd scheme (Okabe et al. 2001; Syed et al. 2022). Swapping the states
    x (at t_k) and y (at t_{k+1}) is accepted with probability
    min(1, exp((t_k − t_{k+1})·nβ·(L_n(x) − L_n(y)))): the localizer, the same at every
    temperature, cancels. ``accepts[k]`` collects each pair's acceptance probabilities."""
    for k in range(parity, len(replicas) - 1, 2):
        a, b = replicas[k], replicas[k + 1]
        ta, tb = a.target.temperature, b.target.temperature
        log_alpha = (ta - tb) * a.target.nbeta * (a.loss - b.loss)
        alpha = 1.0 if log_alpha >= 0 else math.exp(log_alpha)
        accepts[k].append(alpha)
        if float(torch.rand((), generator=gen, dtype=torch.float64)) < alpha:
            state_a = (a.w, a.loss, a.grad)
            a.adopt(b.w, b.loss, b.grad, tb)
            b.adopt(*state_a, ta)


def _run_tempered(
    target: _Target,
    w_star: Tensor,
    gen: torch.Generator,
    temperatures: list[float],
    *,
    num_warmup: int,
    num_draws: int,
    target_acceptance: float,
    step_size: float | None,
    num_leapfrog: int | None,
    swap_every: int,
    adapt_ladder: bool = False,
) -> tuple[list[float], float, float, dict]:
    """One replica-exchange chain from w*: a replica per temperature t_k (exp(−U_{t_k})),
    each a MALA (or HMC) chain with its own ε adapted during the warm-up and fixed after,
    and after every ``swap_every`` transitions a round of swaps between neighbours
    (:func:`_swap_round`, alternating the even and the odd pairs). The product of the
    tempered targets is stationary for every move, so the t = 1 replica's draws sample the
    target exactly; the hotter replicas cross loss barriers the target's chain alone would
    not, and pass those states down. Returns the t = 1 replica's L_n at each draw, its mean
    acceptance probability and ε, and a report: each temperature's mean L_n over the draws,
    ε and acceptance, and each pair's mean swap acceptance over the draws.

    With ``adapt_ladder`` the temperatures are re-placed during the warm-up
    (:func:`_ladder_updates`, :func:`_placed_ladder`) and each replica's ε adaptation starts
    over after the last move; from the first draw on the ladder and the steps are fixed, so the
    draws are exact as with a fixed ladder. The report's ``temperatures`` are the final ones."""
    replicas = [
        _new_chain(target.with_temperature(t), w_star, gen, step_size, num_leapfrog)
        for t in temperatures
    ]
    adapters = [_DualAveraging(r, target_acceptance) for r in replicas]
    swaps: list[list[float]] = [[] for _ in replicas[1:]]
    rounds = 0
    updates = _ladder_updates(num_warmup, swap_every) if adapt_ladder else []
    for m in range(1, num_warmup + 1):
        for r, adapt in zip(replicas, adapters):
            adapt.update(r.step())
        if m % swap_every == 0:
            _swap_round(replicas, rounds % 2, gen, swaps)
            rounds += 1
        if m in updates:
            current = [r.target.temperature for r in replicas]
            rejection = [1.0 - float(np.mean(x)) if x else 0.0 for x in swaps]
            _retemper(replicas, _placed_ladder(current, rejection))
            swaps = [[] for _ in replicas[1:]]
            if m == updates[-1]:
                adapters = [_DualAveraging(r, target_acceptance) for r in replicas]
    for adapt in adapters:
        adapt.finish()
    swaps = [[] for _ in replicas[1:]]
    losses, accept = [], [0.0] * len(replicas)
    loss_sums = [0.0] * len(replicas)
    for m in range(1, num_draws + 1):
        for k, r in enumerate(replicas):
            accept[k] += r.step()
        if m % swap_every == 0:
            _swap_round(replicas, rounds % 2, gen, swaps)
            rounds += 1
        losses.append(replicas[0].loss)
        for k, r in enumerate(replicas):
            loss_sums[k] += r.loss
    report = {
        "temperatures": [r.target.temperature for r in replicas],
        "mean_loss": [x / num_draws for x in loss_sums],
        "step_size": [r.eps for r in replicas],
        "acceptance": [a / num_draws for a in accept],
        "swap_acceptance": [float(np.mean(x)) if x else float("nan") for x in swaps],
    }
    return losses, accept[0] / num_draws, replicas[0].eps, report


def _statistics(llc_trace: np.ndarray) -> tuple[float, float, float, float]:
    """(MCSE of the mean, ESS of the mean, bulk ESS, R̂) of a (chains, draws) λ trace."""
    x = llc_trace
    if x.shape[1] < 8:
        return float("nan"), float("nan"), float("nan"), float("nan")
    ess = _ess_of_chains(split_chains(x))
    var = float(np.var(x, ddof=1)) if x.size > 1 else float("nan")
    mcse = math.sqrt(var / ess) if ess > 0 and math.isfinite(ess) else float("nan")
    return mcse, ess, ess_bulk(x), rhat_rank(x)


def _grouped_statistics(llc_trace: np.ndarray, rows: int) -> tuple[float, float, float, float]:
    """:func:`_statistics` when chain c samples target c mod ``rows``: each group of chains
    sharing a target gets its own; the mean over all chains is a weighted mean of the group
    means, so its MCSE combines theirs, the ESS add up and R̂ is the worst group's (chains
    of different targets may rightly disagree)."""
    groups = [llc_trace[r::rows] for r in range(min(rows, len(llc_trace)))]
    if len(groups) == 1:
        return _statistics(llc_trace)
    stats = [_statistics(g) for g in groups]
    weights = [len(g) / len(llc_trace) for g in groups]
    mcse = math.sqrt(sum((w * s[0]) ** 2 for w, s in zip(weights, stats)))
    rhats = [s[3] for s in stats]
    rhat = max(rhats) if all(math.isfinite(r) for r in rhats) else float("nan")
    return mcse, sum(s[1] for s in stats), sum(s[2] for s in stats), rhat


def reference_llc(
    model: nn.Module,
    dataset: Any,
    config: SamplerConfig | None = None,
    *,
    method: str = "mala",
    num_chains: int = 4,
    num_warmup: int = 1000,
    num_draws: int = 4000,
    target_acceptance: float | None = None,
    step_size: float | None = None,
    num_leapfrog: int = 16,
    seed: int = 0,
    chunk_size: int | None = None,
    metric: Any = None,
    num_temperatures: int = 1,
    min_temperature: float = 0.02,
    swap_every: int = 1,
    ladder: str = "geometric",
    progress: bool = False,
    **data_kwargs: Any,
) -> ReferenceResult:
    r"""The LLC of ``model`` at its current weights w* by exact (MH-corrected, full-batch,
    float64) sampling of p(w) ∝ exp(−nβ·L_n(w) − (γ/2)·‖w − w*‖²), or of
    p(w) ∝ exp(−nβ·L_n(w) − (γ/2)·(w − w*)ᵀM(w − w*)) with a diagonal ``metric`` M.

    nβ, γ and the loss are those :func:`hf_llc.estimate_llc` uses with the same ``config``
    and data arguments (``config.nbeta``, default n / log n; ``config.localization``); the
    config's sampler settings (step size, batch size, chains, draws, preconditioner) do not
    apply. λ̂ = nβ·(E_p[L_n(w)] − L_n(w*)), E_p estimated by the mean over the draws.

    Args:
        model: a small ``torch.nn.Module`` (at most :data:`MAX_PARAMS` sampled parameters and
            n·d ≤ :data:`MAX_SIZE`); it is not modified (a float64 copy is sampled).
        dataset: as for :func:`hf_llc.estimate_llc`, with numeric tensor columns.
        config: a :class:`~hf_llc.SamplerConfig` for nβ and γ (``SamplerConfig()`` if None).
        method: ``"mala"`` (Metropolis-adjusted Langevin, one gradient per transition) or
            ``"hmc"`` (Hamiltonian Monte Carlo, up to ``num_leapfrog`` gradients per
            transition; its longer moves mix faster along wide, flat directions).
        num_chains: independent chains, each started at w* with its own generator seeded from
            (seed, chain).
        num_warmup: steps per chain during which ε is adapted (≥ 10); never in the estimate.
        num_draws: steps per chain at the fixed ε that enter the estimate.
        target_acceptance: the acceptance rate the warm-up aims for (default
            :data:`TARGET_ACCEPTANCE`: 0.574, optimal for MALA in high dimension; 0.8 for
            HMC).
        num_leapfrog: HMC only: each transition takes ⌈L/2⌉…L leapfrog steps (uniformly).
        step_size: the starting ε of the warm-up (default: found by doubling/halving from
            1 / (nβ + γ)).
        seed: base seed (non-negative integer).
        chunk_size: rows per forward pass of L_n (default: all n in one pass).
        metric: the localizer's diagonal metric M: one row of d positive numbers, or one per
            chain (rows × d; chain c uses row c mod rows), in the sampled parameters' order.
            ``LLCResult.localizer_metric`` of an estimate run with
            ``SamplerConfig(record_metric=True)`` gives each SGLD chain's own target. With
            several rows, R̂ is the worst over the groups of chains sharing a row (chains of
            different targets may rightly disagree), so use ``num_chains`` = 2 × rows or more
            (R̂ is NaN with one chain per row); λ̂ is the mean over all chains and its MCSE
            combines the groups'. ``None``: Euclidean (M = I).
        num_temperatures: replica exchange (parallel tempering; Swendsen & Wang 1986, Geyer
            1991) with this many replicas per chain, at the temperatures
            1 = t_0 > … > t_{K−1} = ``min_temperature`` spaced geometrically, replica k
            sampling exp(−t_k·nβ·L_n(w) − localizer); neighbours swap states every
            ``swap_every`` transitions (even and odd pairs in turn). Only the t = 1 replica's
            draws enter λ̂; the hot replicas, where loss barriers are lower, carry a chain
            between modes that a single chain from w* would never leave, so use it when the
            chains of one target disagree (R̂). Costs K times the transitions. 1: no tempering.
        min_temperature: the hottest replica's t, in (0, 1) (with ``num_temperatures`` > 1).
            Lower crosses higher barriers but needs more replicas for the swaps to be accepted
            (``ReferenceResult.tempering["swap_acceptance"]``, aim for ≥ 0.2).
        swap_every: transitions between rounds of swaps (≥ 1).
        ladder: where the temperatures between 1 and ``min_temperature`` sit.
            ``"geometric"`` (default): evenly in log t. ``"adaptive"``: each chain re-places
            its ladder three times in the first half of its warm-up, from the swap rejection
            measured since the last move, so that every neighbouring pair rejects about as
            often (where the loss changes fast with t the rungs close up); then the second half
            of the warm-up adapts the steps to the final temperatures, and the draws run at a
            fixed ladder (exact, as with ``"geometric"``). Use it when one pair's swap
            acceptance is far below the others'.
        progress: log one line per finished chain.
        **data_kwargs: :func:`hf_llc.estimate_llc`'s data arguments (``loss_fn``,
            ``model_loss_fn``, ``forward_kwargs``, ``num_samples``, ``tokenizer``, …).

    Returns:
        :class:`ReferenceResult`.

    Raises:
        ValueError: naming the bad argument, for bad settings, a model or dataset too large,
            data without tensor columns, or a loss that is not float64 on the float64 copy.
    """
    t0 = time.perf_counter()
    cfg = checked_config(config)
    if method in METHODS and target_acceptance is None:
        target_acceptance = TARGET_ACCEPTANCE[method]
    leapfrog = num_leapfrog if method == "hmc" else None
    args = (num_chains, num_warmup, num_draws, target_acceptance, seed, step_size, chunk_size)
    _check_settings(method, *args, leapfrog, data_kwargs)
    _check_tempering(num_temperatures, min_temperature, swap_every, ladder)
    temperatures = _ladder(num_temperatures, min_temperature)
    with open_posterior(model, dataset, _fitted(cfg, dataset, data_kwargs), **data_kwargs) as (
        _,
        posterior,
    ):
        n, d = posterior.num_samples, posterior.num_params
        _check_size(cfg, n, d, posterior.problem.data.columns is not None)
        metrics = _metric_rows(metric, d)
        problem64, w_star = _float64_problem(posterior)
        init_loss32 = posterior.init_loss
        target = _Target(
            problem64, w_star, posterior.nbeta, float(cfg.localization), chunk_size or n
        )
    with torch.no_grad():
        init_loss = float(target.loss(w_star))
    kwargs = dict(
        num_warmup=num_warmup,
        num_draws=num_draws,
        target_acceptance=float(target_acceptance),
        step_size=step_size,
        num_leapfrog=leapfrog,
    )
    tempering = dict(swap_every=swap_every, adapt_ladder=ladder == "adaptive")
    traces, accepts, steps, reports = [], [], [], []
    for c in range(num_chains):
        gen = chain_generator(seed, c, "cpu")
        chain_target = target if metrics is None else target.with_metric(metrics[c % len(metrics)])
        losses, accept, eps, report = _sample(
            chain_target, w_star, gen, temperatures, tempering, kwargs
        )
        if report is not None:
            reports.append(report)
        traces.append(losses)
        accepts.append(accept)
        steps.append(eps)
        if progress:
            lam = target.nbeta * (float(np.mean(losses)) - init_loss)
            logger.info(
                "reference chain %d: λ̂ = %.4g, acceptance %.2f, ε = %.3g", c, lam, accept, eps
            )
    llc = target.nbeta * (np.asarray(traces, dtype=np.float64) - init_loss)
    mcse, ess, ess_b, rhat = _grouped_statistics(llc, 1 if metrics is None else len(metrics))
    return ReferenceResult(
        llc_mean=float(llc.mean()),
        llc_stderr=mcse,
        llc_per_chain=[float(v) for v in llc.mean(axis=1)],
        rhat=rhat,
        ess=ess,
        ess_bulk=ess_b,
        acceptance_rate=float(np.mean(accepts)),
        acceptance_per_chain=accepts,
        step_size=float(np.mean(steps)),
        step_size_per_chain=steps,
        nbeta=target.nbeta,
        localization=target.gamma,
        localizer="euclidean" if metrics is None else "metric",
        num_samples=n,
        num_params=d,
        init_loss=init_loss,
        init_loss_float32=init_loss32,
        loss_trace=traces,
        method=method,
        num_warmup=num_warmup,
        num_draws=num_draws,
        target_acceptance=float(target_acceptance),
        seed=seed,
        wall_seconds=time.perf_counter() - t0,
        num_leapfrog=leapfrog,
        tempering=_tempering_summary(reports, target.nbeta, init_loss, swap_every, ladder),
    )


def _check_tempering(
    num_temperatures: Any, min_temperature: Any, swap_every: Any, ladder: Any
) -> None:
    """ValueError naming the bad replica-exchange setting."""
    if ladder not in LADDERS:
        raise ValueError(f"ladder must be one of {', '.join(LADDERS)}, got {ladder!r}.")
    for name, value in (("num_temperatures", num_temperatures), ("swap_every", swap_every)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer ≥ 1, got {value!r}.")
    ok = isinstance(min_temperature, (int, float)) and not isinstance(min_temperature, bool)
    if not ok or not 0.0 < min_temperature < 1.0:
        raise ValueError(
            f"min_temperature must be in (0, 1), got {min_temperature!r}: the hottest "
            "replica samples exp(−min_temperature·nβ·L_n − localizer)."
        )


def _tempering_summary(
    reports: list[dict], nbeta: float, init_loss: float, swap_every: int, ladder: str
) -> dict | None:
    """The replica-exchange report over the chains (``None`` without tempering): the
    temperatures, each one's λ̂ at nβ' = t·nβ (t·nβ·(mean L_n − L_n(w*)), the LLC estimate of
    that tempered posterior), ε and acceptance, and each neighbouring pair's swap acceptance,
    all means over the chains. With an adaptive ladder each chain has its own temperatures:
    ``temperatures`` is their mean, ``temperatures_per_chain`` each chain's, and each rung's
    λ̂ is the mean of the chains' λ̂ at their own t."""
    if not reports:
        return None

    def mean(key: str) -> list[float]:
        return [float(v) for v in np.mean([r[key] for r in reports], axis=0)]

    # Each chain's λ̂ at each of its own temperatures, then the mean over the chains (with a
    # geometric ladder every chain has the same t, and this is t·nβ·(mean L_n − L_n(w*))).
    per_chain = [
        [t * nbeta * (loss - init_loss) for t, loss in zip(r["temperatures"], r["mean_loss"])]
        for r in reports
    ]
    adaptive = ladder == "adaptive"
    temps = mean("temperatures") if adaptive else reports[0]["temperatures"]
    out = {
        "temperatures": temps,
        "llc_by_temperature": [float(v) for v in np.mean(per_chain, axis=0)],
        "step_size": mean("step_size"),
        "acceptance": mean("acceptance"),
        "swap_acceptance": mean("swap_acceptance") if len(temps) > 1 else [],
        "swap_every": swap_every,
    }
    if adaptive:
        out["ladder"] = ladder
        out["temperatures_per_chain"] = [list(r["temperatures"]) for r in reports]
    return out
