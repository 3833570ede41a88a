"""What one chain is made of: its generator and minibatches, its records (``ChainState``,
``ChainResult``), and the step-size rule (curvature by power iteration, the adaptation
:class:`Schedule`).

A problem is anything with ``num_samples``, ``batch(indices)`` and ``loss(w, batch)``; the
loss returns the minibatch's per-sample losses (1-D) or their mean (0-d). This package knows
nothing about Hugging Face: :mod:`hf_llc.posterior` builds the problem from a model; the loop
that runs chains is :mod:`hf_llc.sampling.loop`.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor

from .config import SamplerConfig


class LossProblem(Protocol):
    """What a chain needs. ``bind(w)`` is optional: a context manager yielding a fast
    ``step(batch) -> (per-sample or mean loss, mean loss, flat gradient)`` evaluated at the
    chain's own buffer ``w`` (or ``None``); without it every step goes through ``loss``.
    ``segments`` is optional too: the sizes of the parameter tensors in the flat vector, in
    order (per-tensor quantities such as the Fisher diagonal's damping use it).
    ``transformable()`` is optional as well: a context manager within which the loss supports
    ``torch.func.vmap`` and double backward, for models that need another code path for them
    (:func:`transform_context`)."""

    num_samples: int

    def batch(self, indices: Tensor) -> Any: ...

    def loss(self, w: Tensor, batch: Any) -> Tensor: ...


def chain_seed(seed: int, chain: int) -> int:
    """The 63-bit seed of chain ``chain``'s generator, a function of (seed, chain) only."""
    state = np.random.SeedSequence([int(seed), int(chain)]).generate_state(2)
    return int((int(state[0]) << 31) ^ int(state[1])) & ((1 << 63) - 1)


def chain_generator(seed: int, chain: int, device: torch.device | str = "cpu") -> torch.Generator:
    """One generator per chain, for both its data order and its noise."""
    gen = torch.Generator(device=device)
    gen.manual_seed(chain_seed(seed, chain))
    return gen


class EpochBatcher:
    """Minibatch indices: a fresh permutation per epoch drawn from the chain's generator.

    The last incomplete batch of an epoch is dropped, so every step sees ``batch_size``
    samples; over many steps every sample is used equally often.
    """

    def __init__(self, num_samples: int, batch_size: int, generator: torch.Generator):
        if batch_size > num_samples:
            raise ValueError(
                f"batch_size={batch_size} is larger than the dataset ({num_samples} samples); "
                "pass a smaller batch_size."
            )
        self.n = num_samples
        self.m = batch_size
        self.gen = generator
        self._perm: Tensor | None = None
        self._pos = num_samples  # forces a shuffle on first use

    def next(self) -> Tensor:
        if self._pos + self.m > self.n:
            self._perm = torch.randperm(self.n, generator=self.gen, device=self.gen.device)
            self._pos = 0
        idx = self._perm[self._pos : self._pos + self.m]
        self._pos += self.m
        return idx

    def state(self) -> tuple[Tensor | None, int]:
        """(current permutation on the CPU or ``None``, position in it), for checkpoints."""
        return (None if self._perm is None else self._perm.cpu().clone(), self._pos)

    def load_state(self, perm: Tensor | None, pos: int) -> None:
        """Continue from what :meth:`state` returned."""
        self._perm = None if perm is None else perm.to(self.gen.device)
        self._pos = int(pos)


@dataclass
class ChainResult:
    """What one chain produced. Traces are CPU float64 tensors."""

    chain: int
    loss_trace: Tensor  # L_{B_t}(w_t) at the draws
    init_batch_trace: Tensor | None  # L_{B_t}(w*) at the draws (per-sample cache), else None
    burnin_trace: Tensor
    step_size: float
    step_size_history: list = field(default_factory=list)
    mala_acceptance: Tensor | None = None
    diverged: bool = False
    retries: list = field(default_factory=list)
    divergence_step: int | None = None
    divergence_reason: str | None = None
    seconds: float = 0.0
    #: The localizer's metric M of the draws (flat, CPU), with ``record_metric``; else ``None``.
    metric: Tensor | None = None


@dataclass
class ChainState:
    """Everything a running chain carries from one step to the next, at a step boundary.

    Restoring it (``run_chain(..., resume=state)``) continues the chain exactly as if it had
    never stopped: the result is bit-identical to an uninterrupted run. Tensors are CPU copies.

    Attributes:
        chain: the chain index.
        attempt: 0 for the first attempt, k after k divergence restarts (step factor 2⁻ᵏ).
        step: SGLD steps done in this attempt (the next step is ``step``).
        checked: steps already checked for divergence (and counted in the progress bar).
        w: the current parameters w_t (flat fp32).
        generator_state: ``torch.Generator.get_state()`` of the chain's generator.
        perm, pos: the minibatch permutation of the current epoch and the position in it.
        step_size: ε now; step_size_history: the (step, ε) adaptation points so far.
        v: the power-iteration vector warm-starting the next curvature estimate (or ``None``).
        precond: the preconditioner's ``state_dict()`` (RMSProp: V, or √A once frozen, and
            its per-chain scalars).
        adapting_precond: whether the preconditioner still adapts (``False`` once frozen).
        trace, init_trace: L_{B_t}(w_t) and L_{B_t}(w*) for the steps done (float64).
        mala: MALA acceptance probabilities of the draws done (or ``None``).
        retries: the divergence records of earlier attempts.
        seconds: sampling time spent on this chain so far (not part of the result's values).
        noise: with ``integrator="leimkuhler-matthews"``, the standard normals ξ_t of the last
            step, which the next step reuses (``None`` for Euler–Maruyama).
    """

    chain: int
    attempt: int
    step: int
    checked: int
    w: Tensor
    generator_state: Tensor
    perm: Tensor | None
    pos: int
    step_size: float
    step_size_history: list
    v: Tensor | None
    precond: dict
    adapting_precond: bool
    trace: Tensor
    init_trace: Tensor | None
    mala: Tensor | None
    retries: list
    seconds: float = 0.0
    noise: Tensor | None = None


class ChainCheckpoint(Protocol):
    """Where a running chain sends snapshots of its state (see :func:`run_chain`).

    ``due(chain, step)`` is asked after every step; when it returns ``True`` the chain calls
    ``save(state)`` with a :class:`ChainState`. ``save`` may raise (after saving) to stop the
    chain, e.g. on a termination signal; the exception propagates out of :func:`run_chain`.
    """

    def due(self, chain: int, step: int) -> bool: ...

    def save(self, state: ChainState) -> None: ...


def _num_draws_before(step: int, cfg: SamplerConfig) -> int:
    """How many draws the steps t < ``step`` contain."""
    k = cfg.draw_every
    return min(cfg.num_draws, max(0, (step - cfg.num_burnin + k - 1) // k))


def _copy(value: Any) -> Any:
    return value.detach().cpu().clone() if isinstance(value, Tensor) else value


def transform_context(problem: LossProblem) -> Any:
    """The problem's ``transformable()`` context, or a no-op for problems without one.

    Batched chains evaluate their vmapped gradients in it, and every chain measures its
    curvature in it, so a chain's Hessian-vector products are the same (exact, by double
    backward) whether it runs batched or alone. For a transformers model it switches SDPA
    attention to a path that vmap and double backward support (:mod:`hf_llc._attention`).
    """
    enter = getattr(problem, "transformable", None)
    return enter() if enter is not None else nullcontext()


def _grad(problem: LossProblem, w: Tensor, batch: Any, create_graph: bool = False):
    leaf = w.detach().requires_grad_(True)
    per = problem.loss(leaf, batch)
    loss = per.mean() if per.ndim else per
    (g,) = torch.autograd.grad(loss, leaf, create_graph=create_graph)
    return leaf, per, loss, g


def max_curvature(
    problem: LossProblem,
    w: Tensor,
    w_star: Tensor,
    batch: Any,
    *,
    nbeta: float,
    localization: float,
    precond_sqrt: Tensor | None,
    v0: Tensor,
    iters: int,
    metric: Tensor | None = None,
) -> tuple[float, Tensor]:
    """Largest eigenvalue of √A·∇²U(w)·√A on one minibatch, by power iteration.

    ∇²U = nβ·∇²L_B + γ·M, with M the localizer's metric (``metric``; identity if ``None``).

    Hessian-vector products use double backward; models that do not support it fall back to
    a forward difference of gradients. Returns (eigenvalue, eigenvector) so later estimates
    can warm-start from the vector.
    """
    with transform_context(problem):
        return _power_iteration(
            problem, w, batch, nbeta, localization, precond_sqrt, v0, iters, metric
        )


def _hessian_vector_product(problem, w, batch):
    """``hvp(u)`` = ∇²L_B(w)·u: double backward, or for models that do not support it a
    forward difference of gradients."""
    try:
        leaf, _, _, g = _grad(problem, w, batch, create_graph=True)

        def hvp(u):
            return torch.autograd.grad(g, leaf, grad_outputs=u, retain_graph=True)[0]

        hvp(torch.zeros_like(w))
    except RuntimeError:
        _, _, _, g0 = _grad(problem, w, batch)
        g0 = g0.detach()
        h = 1e-3 * max(float(w.norm()) / math.sqrt(w.numel()), 1e-2)

        def hvp(u):
            un = u.norm().clamp_min(1e-30)
            g1 = _grad(problem, w + (h / un) * u, batch)[3]
            return (g1 - g0) * (un / h)

    return hvp


def _power_iteration(problem, w, batch, nbeta, localization, precond_sqrt, v0, iters, metric):
    v = v0.to(w.dtype)
    v = v / v.norm()
    hvp = _hessian_vector_product(problem, w, batch)
    lam = 0.0
    for _ in range(iters):
        u = v if precond_sqrt is None else v * precond_sqrt
        z = hvp(u).detach() * nbeta + localization * (u if metric is None else metric * u)
        if precond_sqrt is not None:
            z = z * precond_sqrt
        lam = float(torch.dot(v, z))
        norm = z.norm()
        if not torch.isfinite(norm) or norm == 0:
            break
        v = z / norm
    return abs(lam), v.detach()


#: ``fisher_start="curvature"``: rounds of the per-tensor equilibration at w*, and Rademacher
#: probes per round.
START_ROUNDS, START_PROBES = 12, 4
#: A tensor whose rows of ∇²L_B(w*) are below this many machine epsilons (of w*'s dtype: 8·eps
#: ≈ 10⁻⁶ in float32) times the stiffest tensor's (root mean square, in the flat start's
#: coordinates) is treated as having no curvature: its rows are rounding, not curvature.
#: Measured in float32: a key bias, along which softmax attention is exactly invariant, sits at
#: 2·10⁻⁹–10⁻⁸ of the stiffest tensor (equilibrated, its A came out 10⁸ times the others' and
#: its rounding noise, so amplified, spoiled every chain); real tensors sit at ≥ 3·10⁻³ on the
#: nonlinear suites, DLNs and tiny GPT-2 / Llama models, and at 3·10⁻⁵ on the ReLU network with
#: one layer scaled by 10² (``examples/rescaling_invariance.py``).
START_ROUNDING = 8


def fisher_start(
    problem: LossProblem, w_star: Tensor, batch: Any, *, nbeta: float, precond, gen
) -> Tensor:
    """The first A of the ``"fisher-burnin"`` diagonal, one value per parameter tensor
    (``fisher_start="curvature"``): the scaling that equilibrates the curvature ∇²L_B(w*)
    between tensors.

    With A constant on each tensor, Ĥ = √A·∇²L_B·√A; A is chosen so that every tensor's rows
    of Ĥ have the same root-mean-square size, 1/(nβ·(1 + δ)) per parameter: on a diagonal
    Hessian that is A = 1/(nβ·(1 + δ)·RMS_t(∂ᵢᵢL)), the per-tensor form of the
    1/(nβ·∂ᵢᵢL) that F̂ estimates at equilibrium. Unlike A ≡ 1/nβ it is equivariant: under
    w → D·w (D constant on each tensor) ∇²L → D⁻¹·∇²L·D⁻¹, so the equilibrating A goes to
    D·A·D, and the first window, and with it every later one, is the same chain in the other
    coordinates. (From A ≡ 1/nβ, with A growing at most ``FisherPreconditioner.GROWTH``-fold
    per window, a layer scaled by 10⁻² still had another A at the freeze.) Rows rather than the
    diagonal: a tensor whose curvature is concentrated in a few directions (a language
    model's embeddings and large matrices) has a small mean diagonal but a large top
    eigenvalue, and scaling it by its diagonal would set a step size a thousand times smaller.

    The squared row norms are estimated with Rademacher probes z drawn from ``gen``:
    E‖(Ĥz)_t‖² = ‖Ĥ_t,:‖²_F. Each round rescales every tensor's A by the factor that would
    equilibrate it if its rows were its diagonal (an iteration in the manner of Ruiz's matrix
    equilibration; exact in one round on a diagonal Hessian); after
    ``START_ROUNDS`` rounds what is left of the flat start is well below the probes' noise. A
    tensor with no curvature keeps 1/nβ: none at all (every tensor at the origin of a deep
    linear network with a zero teacher, any depth ≥ 2), or, in the first round, rows below
    ``START_ROUNDING`` machine epsilons times the stiffest tensor's (rounding along an exact
    symmetry such as a key bias; so in float32 the start is equivariant for rescalings that
    keep every tensor's rows above 10⁻⁶ of the stiffest, a layer scaled by up to about 10² to
    10³). Costs ``START_ROUNDS × START_PROBES`` Hessian-vector products at step 0."""
    segments = precond.segments
    device = w_star.device
    a = torch.full((len(segments),), 1.0 / nbeta, dtype=torch.float64, device=device)
    sizes = torch.tensor(segments, device=device)
    target = 1.0 / (nbeta * (1 + precond.damping))
    flat = None
    with transform_context(problem):
        hvp = _hessian_vector_product(problem, w_star, batch)
        for _ in range(START_ROUNDS):
            root = a.sqrt().to(w_star.dtype).repeat_interleave(sizes)
            squares = torch.zeros(len(segments), dtype=torch.float64, device=device)
            for _ in range(START_PROBES):
                z = torch.randint(0, 2, w_star.shape, generator=gen, device=device)
                z = z.to(w_star.dtype).mul_(2).sub_(1)
                rows = (root * hvp(root * z).detach()).double()
                squares += torch.stack([r.square().sum() for r in torch.split(rows, segments)])
            rms = (squares / (START_PROBES * sizes)).sqrt()
            if flat is None:  # the first round: every tensor in the flat start's coordinates
                flat = rms <= START_ROUNDING * torch.finfo(w_star.dtype).eps * rms.max()
            a = torch.where(flat, a, a * target / rms)
    return a


#: A step-size measurement whose curvature is not finite (the loss overflowed at the point,
#: or at a probe point) shrinks ε by this factor instead of setting it to NaN (a NaN step made
#: every later update NaN, and the chain was reported diverged "with step size nan").
UNMEASURABLE_SHRINK = 4.0

#: The power-iteration vector is kept between step-size measurements only to warm-start the
#: next one; a direction needs no more than bf16, so it costs half a parameter vector per
#: chain, and nothing after the last measurement.
WARM_START_DTYPE = torch.bfloat16

#: A re-estimate of A that raises ε more than this factor is followed by settling
#: re-measurements (:meth:`Schedule.measures_at`).
SETTLE_AFTER_GROWTH = 2.0


@dataclass(frozen=True)
class Schedule:
    """When a chain adapts, the same for every chain of a configuration.

    ``adaptive``: ε is measured from the curvature (``step_size="curvature"``), at step 0, at
    the steps ``adapt_at`` during burn-in and, with ``"rmsprop-burnin"``, at ``freeze_at``
    (the step at which the RMSProp diagonal stops adapting, ``None`` otherwise);
    ``last_measurement`` is the last of those steps. ``refresh_at``: the steps at which a
    windowed preconditioner (``"fisher-burnin"``) re-estimates A before the step size is
    measured afresh (the last one is ``freeze_at``).
    """

    adaptive: bool
    adapt_at: frozenset[int]
    freeze_at: int | None
    last_measurement: int
    refresh_at: frozenset[int] = frozenset()
    settle_at: frozenset[int] = frozenset()

    @classmethod
    def of(cls, cfg: SamplerConfig) -> Schedule:
        adaptive = cfg.step_size == "curvature"
        # The adaptation grid: num_adaptations evenly spaced steps inside the burn-in.
        every = max(1, cfg.num_burnin // (cfg.num_adaptations + 1))
        grid = [every * k for k in range(1, cfg.num_adaptations + 1) if every * k < cfg.num_burnin]
        adapt_at: frozenset[int] = frozenset(grid) if adaptive else frozenset()
        # "…-burnin": adapt A during burn-in only; the draws then sample with a constant A.
        burnin_only = cfg.preconditioner in ("rmsprop-burnin", "fisher-burnin")
        freeze_at = cfg.num_burnin if burnin_only else None
        refresh_at: frozenset[int] = frozenset()
        settle_at: frozenset[int] = frozenset()
        if cfg.preconditioner == "fisher-burnin":
            # A is re-estimated from windows of the burn-in at the first half of the grid and
            # frozen at the next grid point (whatever the step-size mode); the rest of the
            # burn-in runs with the final A, and ε is re-measured there (it may only shrink) at
            # the remaining grid points and at the end, so that it is stable at several points
            # the chain visits, not only where A was set.
            cut = len(grid) // 2
            freeze_at = grid[cut] if cut < len(grid) else cfg.num_burnin
            refresh_at = frozenset([*grid[:cut], freeze_at])
            # ε may be measured again a few steps after each re-estimate before the freeze
            # (measures_at; the steps after the freeze have their own re-measurements).
            later = {max(1, every // 64), max(1, every // 8)}
            settle_at = frozenset(
                t + k for t in grid[:cut] for k in later if t + k < cfg.num_burnin
            ) - set(grid)
            measure = [*grid, *settle_at, cfg.num_burnin]
            adapt_at = frozenset(measure) - {0} if adaptive else frozenset()
        last = max([0, *adapt_at, *([freeze_at] if freeze_at is not None else [])])
        return cls(adaptive, adapt_at, freeze_at, last, refresh_at, settle_at)

    def renew(self, precond, t: int) -> None:
        """Before step ``t``'s step-size measurement: a windowed preconditioner's A is
        re-estimated at the steps ``refresh_at``, and frozen at the last of them."""
        if t in self.refresh_at:
            precond.freeze() if t == self.freeze_at else precond.refresh()

    def measures_at(self, t: int, history: list) -> bool:
        """Whether a chain measures ε at step ``t``, given its (step, ε) ``history`` so far.

        At step 0, on the grid ``adapt_at`` and at the freeze, always; at a ``settle_at`` step
        only if the re-estimate of A just before it raised ε more than ``SETTLE_AFTER_GROWTH``-
        fold (a chain whose step did not jump has nothing to settle, and keeps exactly the
        schedule it would have without these steps)."""
        if not self.adaptive:
            return False
        if t == 0 or t == self.freeze_at:
            return True
        if t not in self.adapt_at:
            return False
        if t not in self.settle_at:
            return True
        refresh = max(s for s in self.refresh_at if s < t)
        at_refresh = [eps for s, eps in history if s == refresh]
        before = [eps for s, eps in history if s < refresh]
        return bool(at_refresh and before and at_refresh[0] > SETTLE_AFTER_GROWTH * before[-1])

    def next_step_size(self, t: int, measured: float, current: float) -> float:
        """The step size after the measurement ``measured`` = c/λ_max at step ``t`` (t > 0).

        Where A was just re-estimated (``refresh_at``) the old ε no longer applies: ε is the
        new measurement. If that raised ε, it is measured again a few steps later (``settle_at``)
        and may only shrink, freely: a window that saw only the flat neighbourhood of w* (the
        origin of a deep network) sets a step that is too large once the chain moves out to
        where the loss is steep. At the other grid points ε only shrinks, by at most 4×, and
        freely at the freeze: it has to be stable at every point the chain visits, not only the
        latest."""
        if t in self.refresh_at:
            return measured
        if t == self.freeze_at or t in self.settle_at:
            return min(measured, current)
        return min(max(measured, current / 4), current)

    def warm_start(self, gen: torch.Generator, like: Tensor) -> Tensor | None:
        """The first power-iteration vector (drawn from the chain's generator), or ``None``."""
        if not self.adaptive:
            return None
        v = torch.randn(like.shape, generator=gen, device=like.device, dtype=like.dtype)
        return v.to(WARM_START_DTYPE)


def _curvature_settings(cfg: SamplerConfig, nbeta: float, precond) -> dict:
    """The keyword arguments of a :func:`max_curvature` measurement under ``precond``."""
    return dict(
        nbeta=nbeta,
        localization=cfg.localization,
        precond_sqrt=precond.A_sqrt,
        iters=cfg.curvature_iters,
        metric=precond.metric,
    )


def _probed_step_size(problem, w, w_star, batch, cfg, step_scale, nbeta, precond, gen, v):
    """ε = c / λ_max, with λ_max probed at ``w`` and at points ``cfg.probe_reach`` noise steps
    away from it.

    At a flat point (the origin of a deep linear network, λ_max = γ) a step sized from that
    point alone would throw the chain far out, where the loss is steep; probing at
    w + r·√(εA)·ξ (r = ``probe_reach``) and moving ε geometrically towards
    c / λ_max(probe) finds a step that is stable that far out as well.
    """
    kw = _curvature_settings(cfg, nbeta, precond)
    lam, v = max_curvature(problem, w, w_star, batch, v0=v, **kw)
    lam = max(lam, 1e-12)
    eps = step_scale / lam
    reach = cfg.probe_reach
    for _ in range(8):
        xi = torch.randn(w.shape, generator=gen, device=w.device, dtype=w.dtype)
        if precond.A_sqrt is not None:
            xi = xi * precond.A_sqrt
        lam_p, v_p = max_curvature(
            problem, w + reach * math.sqrt(eps) * xi, w_star, batch, v0=v, **kw
        )
        if not math.isfinite(lam_p):
            # The loss or its curvature is not finite that far out (an overflow): a step this
            # size would carry the chain there. Shrink it, as for a very stiff probe.
            eps /= UNMEASURABLE_SHRINK
            continue
        v = v_p
        target = step_scale / max(lam_p, lam)
        if target >= 0.9 * eps:
            break
        eps = math.sqrt(eps * target)
    return eps, v


def measure_step_size(
    problem: LossProblem,
    w: Tensor,
    w_star: Tensor,
    batch: Any,
    *,
    t: int,
    current: float,
    schedule: Schedule,
    cfg: SamplerConfig,
    step_scale: float,
    nbeta: float,
    precond,
    gen: torch.Generator,
    v: Tensor,
) -> tuple[float, Tensor]:
    """The step-size rule of every chain: (ε after a measurement at step ``t``, the power
    vector). At step 0 the measurement is probed around w* (:func:`_probed_step_size`). With a
    ``probe_reach`` other than 1, so is the measurement where a windowed preconditioner was
    just re-estimated (ε measured afresh, with no bound from the one before), around the
    chain's ``w``: with the smaller first step of a longer reach, a chain that has barely left
    a flat w* in its first window would otherwise get a step sized for the flat point and be
    thrown out at once (every chain at the origin of a 5-layer DLN of width 50 diverged one
    step after its first re-estimate at reach 2). At reach 1 (the default) that measurement is
    c/λ_max at the chain's ``w``, as everywhere else, and :meth:`Schedule.next_step_size`
    says how ε may change."""
    if t == 0 or (t in schedule.refresh_at and cfg.probe_reach != 1):
        center = w_star if t == 0 else w
        eps, v = _probed_step_size(
            problem, center, w_star, batch, cfg, step_scale, nbeta, precond, gen, v
        )
    else:
        kw = _curvature_settings(cfg, nbeta, precond)
        lam, v = max_curvature(problem, w, w_star, batch, v0=v, **kw)
        eps = schedule.next_step_size(t, step_scale / max(lam, 1e-12), current)
    if t > 0 and not math.isfinite(eps):
        # Not measurable at the chain's point (the loss or its curvature overflowed there): the
        # step shrinks instead of becoming NaN; a chain that has left the finite region is then
        # caught by the divergence check with a step that says what it was.
        eps = current / UNMEASURABLE_SHRINK
    return eps, v


def divergence_message(
    chain: int, step: int, loss: float, init_loss: float, step_size: float, step_factor: float
) -> str:
    """The report of a chain that diverged at ``step`` (attempts after the first say so)."""
    size = (
        f"step size {step_size:.3g}"
        if math.isfinite(step_size)
        else "step size not measurable: the curvature at w* was not finite"
    )
    return (
        f"chain {chain} diverged at step {step} (loss {loss:.4g}, "
        f"L_n(w*) = {init_loss:.4g}, {size}): reduce step_size "
        f"(or step_scale) by 2-10x"
        + (f" (attempt {1 + round(math.log2(1 / step_factor))})" if step_factor < 1 else "")
    )


def retry_record(result: ChainResult) -> dict:
    """What ``ChainResult.retries`` keeps of a diverged attempt."""
    return {
        "step": result.divergence_step,
        "step_size": result.step_size,
        "message": result.divergence_reason,
    }
