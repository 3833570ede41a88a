"""Run one SGLD chain over a loss given as a pure function of a flat parameter vector.

A problem is anything with ``num_samples``, ``batch(indices)`` and ``loss(w, batch)``; the
loss returns the minibatch's per-sample losses (1-D) or their mean (0-d). This module knows
nothing about Hugging Face: :mod:`hf_llc.estimator` builds the problem from a model.
"""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor

from .config import SamplerConfig
from .preconditioners import make_preconditioner
from .sgld import mala_acceptance, potential, potential_grad, sgld_step_


class LossProblem(Protocol):
    """What a chain needs. ``bind(w)`` is optional: a context manager yielding a fast
    ``step(batch) -> (per-sample or mean loss, mean loss, flat gradient)`` evaluated at the
    chain's own buffer ``w`` (or ``None``); without it every step goes through ``loss``.
    ``segments`` is optional too: the sizes of the parameter tensors in the flat vector, in
    order (per-tensor quantities such as the Fisher diagonal's damping use it)."""

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
    v = v0.to(w.dtype)
    v = v / v.norm()
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


#: The power-iteration vector is kept between step-size measurements only to warm-start the
#: next one; a direction needs no more than bf16, so it costs half a parameter vector per
#: chain, and nothing after the last measurement.
WARM_START_DTYPE = torch.bfloat16


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
            # ε is measured again a few steps after each re-estimate before the freeze (the
            # steps after the freeze have their own re-measurements on the grid).
            later = {max(1, every // 64), max(1, every // 8)}
            settle_at = frozenset(
                t + k for t in grid[:cut] for k in later if t + k < cfg.num_burnin
            )
            measure = [*grid, *settle_at, cfg.num_burnin]
            adapt_at = frozenset(measure) - {0} if adaptive else frozenset()
        last = max([0, *adapt_at, *([freeze_at] if freeze_at is not None else [])])
        return cls(adaptive, adapt_at, freeze_at, last, refresh_at, settle_at)

    def renew(self, precond, t: int) -> None:
        """Before step ``t``'s step-size measurement: a windowed preconditioner's A is
        re-estimated at the steps ``refresh_at``, and frozen at the last of them."""
        if t in self.refresh_at:
            precond.freeze() if t == self.freeze_at else precond.refresh()

    def next_step_size(self, t: int, measured: float, current: float) -> float:
        """The step size after the measurement ``measured`` = c/λ_max at step ``t`` (t > 0).

        Where A was just re-estimated (``refresh_at``) the old ε no longer applies: ε is the
        new measurement. A few steps later (``settle_at``) it is measured again and may only
        shrink, freely: a window that saw only the flat neighbourhood of w* (the origin of a
        deep network) sets a step that is too large once the chain moves out to where the loss
        is steep. At the other grid points ε only shrinks, by at most 4×, and freely at the
        freeze: it has to be stable at every point the chain visits, not only the latest."""
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


def _initial_step_size(problem, w_star, batch, cfg, step_scale, nbeta, precond, gen, v):
    """ε = c / λ_max, with λ_max probed at w* and at points one noise step away from w*.

    At a flat w* (the origin of a deep linear network, λ_max = γ) a step sized from w* alone
    would throw the chain far out, where the loss is steep; probing at w* + √(εA)·ξ and
    moving ε geometrically towards c / λ_max(probe) finds a self-consistent step.
    """
    kw = dict(
        nbeta=nbeta,
        localization=cfg.localization,
        precond_sqrt=precond.A_sqrt,
        iters=cfg.curvature_iters,
        metric=precond.metric,
    )
    lam, v = max_curvature(problem, w_star, w_star, batch, v0=v, **kw)
    lam = max(lam, 1e-12)
    eps = step_scale / lam
    for _ in range(8):
        xi = torch.randn(w_star.shape, generator=gen, device=w_star.device, dtype=w_star.dtype)
        if precond.A_sqrt is not None:
            xi = xi * precond.A_sqrt
        lam_p, v = max_curvature(problem, w_star + math.sqrt(eps) * xi, w_star, batch, v0=v, **kw)
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
    vector). At step 0 the measurement is probed around w* (:func:`_initial_step_size`); later
    it is c/λ_max at the chain's ``w``, and :meth:`Schedule.next_step_size` says how ε may
    change."""
    if t == 0:
        return _initial_step_size(problem, w_star, batch, cfg, step_scale, nbeta, precond, gen, v)
    lam, v = max_curvature(
        problem,
        w,
        w_star,
        batch,
        nbeta=nbeta,
        localization=cfg.localization,
        precond_sqrt=precond.A_sqrt,
        v0=v,
        iters=cfg.curvature_iters,
        metric=precond.metric,
    )
    return schedule.next_step_size(t, step_scale / max(lam, 1e-12), current), v


def divergence_message(
    chain: int, step: int, loss: float, init_loss: float, step_size: float, step_factor: float
) -> str:
    """The report of a chain that diverged at ``step`` (attempts after the first say so)."""
    return (
        f"chain {chain} diverged at step {step} (loss {loss:.4g}, "
        f"L_n(w*) = {init_loss:.4g}, step size {step_size:.3g}): reduce step_size "
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


def run_chain(
    problem: LossProblem,
    w_star: Tensor,
    cfg: SamplerConfig,
    chain: int,
    *,
    nbeta: float,
    init_loss: float,
    init_per_sample: Tensor | None = None,
    precond_diagonal: Tensor | None = None,
    progress: Any = None,
    checkpoint: ChainCheckpoint | None = None,
    resume: ChainState | None = None,
) -> ChainResult:
    """Run chain ``chain`` from w* (or from ``resume``) and return its traces.

    Draws are the steps t ≥ ``num_burnin`` with (t − num_burnin) divisible by ``draw_every``;
    the loss recorded at step t is L_{B_t}(w_t), the one whose gradient moves w_t to w_{t+1}.
    A chain whose loss stops being finite or explodes is stopped and flagged, never averaged.
    With ``cfg.divergence_retries`` > 0 a diverged chain starts again from w* with half the step
    size (its generator continues, so the result is still a function of (seed, chain)); every
    divergence is kept in ``ChainResult.retries``.

    ``checkpoint`` (optional) is asked after every step whether a snapshot is due and then
    receives a :class:`ChainState`; ``resume`` continues from such a snapshot. Snapshots only
    copy state, so the result does not depend on when (or whether) they were taken.
    """
    if cfg.step_size == "auto":
        raise ValueError(
            "step_size='auto' is resolved by estimate_llc (pilot chains, hf_llc.calibration) "
            "before the chains run; pass run_chain a number or 'curvature'."
        )
    gen = chain_generator(cfg.seed, chain, w_star.device)
    retries: list[dict] = []
    first = 0
    if resume is not None:
        if resume.chain != chain:
            raise ValueError(f"resume holds the state of chain {resume.chain}, not of {chain}.")
        retries = [dict(r) for r in resume.retries]
        first = resume.attempt
        if first and progress is not None:
            progress.total += first * cfg.num_steps
    return run_attempts(
        problem,
        w_star,
        cfg,
        chain,
        gen,
        start=first,
        retries=retries,
        nbeta=nbeta,
        init_loss=init_loss,
        init_per_sample=init_per_sample,
        precond_diagonal=precond_diagonal,
        progress=progress,
        checkpoint=checkpoint,
        resume=resume,
    )


def run_attempts(
    problem: LossProblem,
    w_star: Tensor,
    cfg: SamplerConfig,
    chain: int,
    gen: torch.Generator,
    *,
    start: int,
    retries: list[dict],
    progress: Any = None,
    checkpoint: ChainCheckpoint | None = None,
    resume: ChainState | None = None,
    **kw: Any,
) -> ChainResult:
    """Attempts ``start``, ``start + 1``, … of a chain (attempt k from w* with the step scaled by
    2⁻ᵏ, its generator continuing) until one does not diverge or ``divergence_retries`` is
    reached; ``retries`` (the records of earlier attempts) grows by each diverged one. The
    progress bar's total grows by one chain for every attempt after ``start``; ``resume``
    continues attempt ``start``. ``kw`` are :func:`_run_attempt`'s (nβ, L_n(w*), …)."""
    for attempt in range(start, cfg.divergence_retries + 1):
        if attempt > start and progress is not None:
            progress.total += cfg.num_steps
        result = _run_attempt(
            problem,
            w_star,
            cfg,
            chain,
            gen,
            0.5**attempt,
            progress=progress,
            attempt=attempt,
            retries=retries,
            checkpoint=checkpoint,
            resume=resume if attempt == start else None,
            **kw,
        )
        if not result.diverged:
            break
        retries.append(retry_record(result))
    result.retries = retries
    return result


def _run_attempt(
    problem: LossProblem,
    w_star: Tensor,
    cfg: SamplerConfig,
    chain: int,
    gen: torch.Generator,
    step_factor: float,
    *,
    nbeta: float,
    init_loss: float,
    init_per_sample: Tensor | None,
    precond_diagonal: Tensor | None,
    progress: Any,
    attempt: int = 0,
    retries: list | None = None,
    checkpoint: ChainCheckpoint | None = None,
    resume: ChainState | None = None,
) -> ChainResult:
    """One attempt of a chain, with the step size (or step scale) multiplied by step_factor.

    With ``resume`` the attempt continues from that snapshot (taken in attempt ``attempt``)."""
    start = time.perf_counter()
    device = w_star.device
    step_scale = cfg.step_scale * step_factor
    batcher = EpochBatcher(problem.num_samples, cfg.batch_size, gen)
    d = w_star.numel()

    precond = make_preconditioner(
        cfg,
        w_star,
        nbeta=nbeta,
        diagonal=precond_diagonal,
        segments=getattr(problem, "segments", None),
    )

    # The chain's state: w, the gradient buffer (which also takes the drift and the noise) and
    # the preconditioner's; w* is shared.
    w = w_star.clone()
    total = cfg.num_steps
    trace = torch.empty(total, dtype=torch.float64, device=device)
    init_trace = (
        torch.empty(total, dtype=torch.float64, device=device)
        if init_per_sample is not None
        else None
    )
    mala = torch.empty(cfg.num_draws, dtype=torch.float64, device=device) if cfg.mala else None

    schedule = Schedule.of(cfg)
    adaptive, adapt_at, freeze_at = schedule.adaptive, schedule.adapt_at, schedule.freeze_at
    step_size = float(cfg.step_size) * step_factor if not adaptive else float("nan")
    history: list = []
    v = schedule.warm_start(gen, w)
    adapting_precond = True
    threshold = cfg.divergence_factor * (abs(init_loss) + d / nbeta)
    diverged, div_step, reason = False, None, None
    checked = 0
    first_step = 0
    if resume is not None:
        # Everything the loop below carries from step to step (the generator last: the setup
        # above drew from it).
        first_step, checked = resume.step, resume.checked
        w.copy_(resume.w)
        gen.set_state(resume.generator_state)
        batcher.load_state(resume.perm, resume.pos)
        step_size = resume.step_size
        history = [tuple(h) for h in resume.step_size_history]
        if resume.v is not None:
            v = resume.v.to(device)
        precond.load_state_dict(resume.precond)
        adapting_precond = resume.adapting_precond
        if not adapting_precond:
            precond.freeze()  # no-op unless the snapshot predates frozen state being saved
        trace[:first_step] = resume.trace.to(device)
        if init_trace is not None:
            init_trace[:first_step] = resume.init_trace.to(device)
        if mala is not None:
            mala[: len(resume.mala)] = resume.mala.to(device)
        start -= resume.seconds
        if progress is not None:
            progress.update(checked)

    def snapshot(steps: int) -> ChainState:
        return ChainState(
            chain=chain,
            attempt=attempt,
            step=steps,
            checked=checked,
            w=_copy(w),
            generator_state=gen.get_state(),
            perm=batcher.state()[0],
            pos=batcher.state()[1],
            step_size=step_size,
            step_size_history=list(history),
            v=None if v is None else _copy(v),
            precond={k: _copy(x) for k, x in precond.state_dict().items()},
            adapting_precond=adapting_precond,
            trace=_copy(trace[:steps]),
            init_trace=None if init_trace is None else _copy(init_trace[:steps]),
            mala=None if mala is None else _copy(mala[: _num_draws_before(steps, cfg)]),
            retries=[dict(r) for r in retries or []],
            seconds=time.perf_counter() - start,
        )

    bind = getattr(problem, "bind", None)
    with bind(w) if bind is not None else nullcontext() as fast_step:
        for t in range(first_step, total):
            idx = batcher.next()
            batch = problem.batch(idx)
            schedule.renew(precond, t)
            if adaptive and (t == 0 or t in adapt_at or t == freeze_at):
                # At the chain's own position (at freeze_at: against the final A).
                step_size, v = measure_step_size(
                    problem,
                    w,
                    w_star,
                    batch,
                    t=t,
                    current=step_size,
                    schedule=schedule,
                    cfg=cfg,
                    step_scale=step_scale,
                    nbeta=nbeta,
                    precond=precond,
                    gen=gen,
                    v=v,
                )
                history.append((t, step_size))
            if v is not None and v.dtype != WARM_START_DTYPE:  # just measured
                v = None if t >= schedule.last_measurement else v.to(WARM_START_DTYPE)
            if t == freeze_at:
                # "…-burnin": the diagonal stops adapting (the Fisher one was frozen by
                # schedule.renew already); the draws use a constant A.
                adapting_precond = False
                precond.freeze()

            if fast_step is not None:
                per, loss, g = fast_step(batch)
            else:
                _, per, loss, g = _grad(problem, w, batch)
            trace[t] = loss.detach()
            if init_trace is not None:
                init_trace[t] = init_per_sample[idx].mean()
            draw = t - cfg.num_burnin
            if mala is not None and draw >= 0 and draw % cfg.draw_every == 0:
                w_old = w.clone()
                ukw = dict(nbeta=nbeta, localization=cfg.localization, metric=precond.metric)
                u_old = potential(loss.detach(), w_old, w_star, **ukw)
                gu_old = potential_grad(g, w_old, w_star, **ukw)
            sgld_step_(
                w,
                g,
                w_star,
                step_size=step_size,
                nbeta=nbeta,
                localization=cfg.localization,
                generator=gen,
                precond=precond,
                adapt=adapting_precond and precond.adaptive,
            )
            if mala is not None and draw >= 0 and draw % cfg.draw_every == 0:
                _, _, loss_new, g_new = _grad(problem, w, batch)
                u_new = potential(loss_new.detach(), w, w_star, **ukw)
                gu_new = potential_grad(g_new, w, w_star, **ukw)
                mala[draw // cfg.draw_every] = mala_acceptance(
                    w_old, w, u_old, u_new, gu_old, gu_new, step_size=step_size, precond=precond.A
                )
            if (t + 1 - checked) >= cfg.check_every or t + 1 == total:
                chunk = trace[checked : t + 1]
                bad = ~torch.isfinite(chunk) | (chunk - init_loss > threshold)
                if bool(bad.any()):
                    first = checked + int(torch.nonzero(bad)[0, 0])
                    value = float(trace[first])
                    diverged, div_step = True, first
                    reason = divergence_message(
                        chain, first, value, init_loss, step_size, step_factor
                    )
                    break
                if progress is not None:
                    progress.update(t + 1 - checked)
                checked = t + 1
            if checkpoint is not None and t + 1 < total and checkpoint.due(chain, t + 1):
                checkpoint.save(snapshot(t + 1))

    b, k = cfg.num_burnin, cfg.draw_every
    end = total if not diverged else div_step
    trace_cpu = trace[:end].cpu()
    draws = trace_cpu[b::k][: cfg.num_draws]
    return ChainResult(
        chain=chain,
        loss_trace=draws,
        init_batch_trace=None
        if init_trace is None
        else init_trace[:end].cpu()[b::k][: cfg.num_draws],
        burnin_trace=trace_cpu[:b],
        step_size=step_size,
        step_size_history=history,
        mala_acceptance=None if mala is None else mala[: len(draws)].cpu(),
        diverged=diverged,
        divergence_step=div_step,
        divergence_reason=reason,
        seconds=time.perf_counter() - start,
    )
