"""The chain loop: one loop for a stack of C ≥ 1 chains, with retries and checkpoints.

Each step of :func:`run_stack`, for every chain c of the stack (its own generator, minibatch
order and step size ε_c):

1. draw the minibatch B_t^c; at the schedule's steps re-estimate A and measure ε_c
   (:func:`hf_llc.sampling.chain.measure_step_size`);
2. gradients and losses from the engine (:mod:`hf_llc.sampling.engines`);
3. the SGLD update  w ← w − (ε/2)·A·∇U(w) + √ε·√A·ξ  (:mod:`hf_llc.sampling.sgld`), MALA's
   acceptance probability alongside when asked;
4. every ``check_every`` steps, the divergence check (a diverged chain is parked and, with
   ``divergence_retries``, restarted from w* with half the step);
5. a snapshot of every running chain when the checkpoint asks for one.

A sequential chain is a stack of one (the eager engine); batched chains are a stack of all
(the ``vmap`` engine), and their restarts run as stacks of one, as a sequential chain's do.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Protocol

import torch
from torch import Tensor

from .._logging import get_logger
from .chain import (
    WARM_START_DTYPE,
    ChainCheckpoint,
    ChainResult,
    ChainState,
    chain_generator,
    fisher_start,
    measure_step_size,
    retry_record,
)
from .config import SamplerConfig
from .engines import (
    EagerEngine,
    Engine,
    NotBatchable,
    VmapEngine,
    batched_grad_fn,
    check_batchable,
)
from .posterior import LocalPosterior
from .sgld import (
    StepCoefficients,
    langevin_update_,
    mala_acceptance,
    potential,
    potential_grad,
    sgld_step_,
    sgld_step_chains_,
)
from .state import ChainStack

logger = get_logger(__name__)


def run_stack(
    post: LocalPosterior,
    cfg: SamplerConfig,
    stack: ChainStack,
    engine: Engine,
    *,
    progress: Any = None,
    checkpoint: ChainCheckpoint | None = None,
    on_diverged: Any = None,
) -> None:
    """Advance ``stack`` (in place) to the end of its attempt, or until every chain diverged.

    ``checkpoint`` is asked after every step whether a snapshot is due and then receives one
    :class:`ChainState` per running chain (all of them before an exception ``save`` raises is
    re-raised). ``on_diverged(stack, i)`` is called when row i diverges."""
    total = cfg.num_steps
    threshold = post.divergence_threshold(cfg)
    idx = torch.empty(stack.size, cfg.batch_size, dtype=torch.long, device=post.w_star.device)
    schedule = stack.schedule
    # The steps at which the schedule does anything (A re-estimated or frozen, ε measured).
    events = schedule.refresh_at | schedule.adapt_at | {0, schedule.freeze_at}
    step = _stepper(post, cfg, stack, engine)
    single = not engine.stacked  # one chain: its indices (m,) as they come, no copy
    with engine.open(stack.W):
        for t in range(stack.t, total):
            if single:
                idx = stack.batchers[0].next()
            else:
                for i, batcher in enumerate(stack.batchers):
                    if stack.active[i]:
                        idx[i] = batcher.next()
            batch = engine.batch(idx)
            if t in events:
                _adapt(post, cfg, stack, engine, batch, idx, t)
            G, L = engine.grad(stack.W, batch)
            stack.trace[:, t] = L
            if stack.init_trace is not None:
                stack.init_trace[:, t] = post.init_per_sample[idx].mean(dim=-1)
            draw = t - cfg.num_burnin
            record = stack.mala is not None and draw >= 0 and draw % cfg.draw_every == 0
            before = (stack.W.clone(), L.clone(), G.clone()) if record else None
            step(G)
            del G
            if record:
                _record_mala(post, cfg, stack, engine, batch, before, draw // cfg.draw_every)
            stack.t = t + 1
            if stack.t - stack.checked >= cfg.check_every or stack.t == total:
                newly = _check_divergence(post, stack, threshold, progress)
                if on_diverged is not None:
                    _each(newly, lambda i: on_diverged(stack, i))
                if not any(stack.active):
                    break
            if checkpoint is not None and stack.t < total:
                _save_if_due(cfg, stack, checkpoint)


def _adapt(post, cfg, stack: ChainStack, engine, batch, idx: Tensor, t: int) -> None:
    """The schedule at step ``t``: A re-estimated or frozen, each running chain's ε measured."""
    schedule, precond = stack.schedule, stack.precond
    if t == 0 and cfg.fisher_start == "curvature" and precond.name == "fisher":
        # Before renew: without burn-in A is frozen at step 0, and then it is this start.
        _start_fisher(post, stack, engine, batch, idx)
    schedule.renew(precond, t)
    if schedule.adaptive and (t == 0 or t in schedule.adapt_at or t == schedule.freeze_at):
        step_scale = cfg.step_scale * stack.step_factor
        for i in range(stack.size):
            if not stack.active[i] or not schedule.measures_at(t, stack.histories[i]):
                continue
            # At the chain's own position and minibatch (at freeze_at: against the final A).
            eps, v = measure_step_size(
                post.problem,
                stack.W[i],
                post.w_star,
                engine.row_batch(batch, idx, i),
                t=t,
                current=stack.steps[i],
                schedule=schedule,
                cfg=cfg,
                step_scale=step_scale,
                nbeta=post.nbeta,
                precond=precond.row(i),
                gen=stack.gens[i],
                v=stack.vs[i],
            )
            stack.steps[i] = eps
            stack.histories[i].append((t, eps))
            stack.vs[i] = None if t >= schedule.last_measurement else v.to(WARM_START_DTYPE)
    if t == schedule.freeze_at:
        # "…-burnin": the diagonal stops adapting (the Fisher one was frozen by renew
        # already); the draws use a constant A.
        stack.adapting = False
        precond.freeze()


def _start_fisher(post, stack: ChainStack, engine, batch, idx: Tensor) -> None:
    """Each running chain's first Fisher A, equivariant (``fisher_start="curvature"``), at w*
    on the chain's own first minibatch, its probes drawn from the chain's own generator."""
    for i in range(stack.size):
        if not stack.active[i]:
            continue
        row = stack.precond.row(i)
        start = fisher_start(
            post.problem,
            post.w_star,
            engine.row_batch(batch, idx, i),
            nbeta=post.nbeta,
            precond=row,
            gen=stack.gens[i],
        )
        row.start_(start)


def _stepper(post, cfg, stack: ChainStack, engine):
    """``step(G)``: the SGLD update of every running chain (``G`` consumed), one chain's step
    with plain numbers, or one update of the stack with per-chain coefficients."""
    common = dict(
        nbeta=post.nbeta,
        localization=cfg.localization,
        precond=stack.precond,
        prev_noise=stack.noise,
    )
    w_star, cache = post.w_star, {}

    def adapt() -> bool:
        return stack.adapting and stack.precond.adaptive

    if engine.stacked:

        def step(G: Tensor) -> None:
            sgld_step_chains_(
                stack.W,
                G,
                w_star,
                step_sizes=stack.steps,
                generators=stack.gens,
                active=stack.active,
                adapt=adapt(),
                cache=cache,
                **common,
            )

    else:

        def step(G: Tensor) -> None:
            sgld_step_(
                stack.W,
                G,
                w_star,
                step_size=stack.steps[0],
                generator=stack.gens[0],
                adapt=adapt(),
                **common,
            )

    return step


def _record_mala(post, cfg, stack: ChainStack, engine, batch, before, k: int) -> None:
    """MALA's acceptance probability of the step just taken, for every running chain.

    With the Leimkuhler–Matthews integrator the move taken is not a Langevin proposal from
    w_t alone (it reuses ξ_t), so what is scored is the Euler–Maruyama proposal from w_t with
    the same ε, A and this step's ξ_{t+1}: how far a step of this size is from an exact
    Langevin step, as with Euler–Maruyama."""
    W_old, L_old, G_old = before
    W_new = stack.W if stack.noise is None else _euler_proposals(post, cfg, stack, before)
    G_new, L_new = engine.fresh_grad(W_new, batch)
    L_old, L_new = L_old.reshape(-1), L_new.reshape(-1)
    for i in range(stack.size):
        if not stack.active[i]:
            continue
        row = stack.precond.row(i)
        kw = dict(nbeta=post.nbeta, localization=cfg.localization, metric=row.metric)
        w_old, w_new = W_old[i], W_new[i]
        stack.mala[i, k] = mala_acceptance(
            w_old,
            w_new,
            potential(L_old[i], w_old, post.w_star, **kw),
            potential(L_new[i], w_new, post.w_star, **kw),
            potential_grad(G_old[i], w_old, post.w_star, **kw),
            potential_grad(G_new[i], w_new, post.w_star, **kw),
            step_size=stack.steps[i],
            precond=row.A,
        )


def _euler_proposals(post, cfg, stack: ChainStack, before) -> Tensor:
    """Row i: the Euler–Maruyama step from w_t (:func:`langevin_update_`, the arithmetic of the
    step itself) with ξ_{t+1}, the normals of the step just taken (held in ``stack.noise``), as
    its noise; a parked row stays where it was."""
    W_old, _, G_old = before
    W_prop = W_old.clone()
    for i in range(stack.size):
        if not stack.active[i]:
            continue
        eps = stack.steps[i]
        coefficients = StepCoefficients.of(
            eps / 2, math.sqrt(eps), nbeta=post.nbeta, localization=cfg.localization
        )
        langevin_update_(
            W_prop[i],
            G_old[i].clone(),
            post.w_star,
            coefficients=coefficients,
            nbeta=post.nbeta,
            localization=cfg.localization,
            draw_noise=lambda buf, xi=stack.noise[i]: buf.copy_(xi),
            precond=stack.precond.row(i),
        )
    return W_prop


def _check_divergence(
    post: LocalPosterior, stack: ChainStack, threshold: float, progress: Any
) -> list[int]:
    """Check the losses since the last check; returns the rows that diverged (now parked).
    Counts the checked steps of the chains still running in the progress bar."""
    t = stack.t
    chunk = stack.trace[:, stack.checked : t]
    bad = ~torch.isfinite(chunk) | (chunk - post.init_loss > threshold)
    rows = bad.any(dim=1).tolist()
    newly = []
    for i, is_bad in enumerate(rows):
        if stack.active[i] and is_bad:
            first = stack.checked + int(torch.nonzero(bad[i])[0, 0])
            stack.mark_diverged(i, first, post.init_loss)
            stack.W[i] = post.w_star  # parked: it no longer moves nor draws
            newly.append(i)
    running = sum(stack.active)
    if progress is not None and running:
        progress.update((t - stack.checked) * running)
    stack.checked = t
    return newly


def _save_if_due(cfg: SamplerConfig, stack: ChainStack, checkpoint: ChainCheckpoint) -> None:
    """A snapshot of every running chain when ``checkpoint`` asks for one."""
    running = [i for i in range(stack.size) if stack.active[i]]
    if not running or not checkpoint.due(stack.chains[running[0]], stack.t):
        return
    _each(running, lambda i: checkpoint.save(stack.snapshot(i, cfg)))


def _each(rows: list[int], save) -> None:
    """``save(i)`` for every row; an exception (e.g. a stop request after a save) is raised
    once every row is saved."""
    raised: BaseException | None = None
    for i in rows:
        try:
            save(i)
        except BaseException as err:
            raised = raised or err
    if raised is not None:
        raise raised


# -------------------------------------------------------------------------------- drivers


def run_attempts(
    post: LocalPosterior,
    cfg: SamplerConfig,
    chain: int,
    gen: torch.Generator,
    *,
    start: int = 0,
    retries: list[dict] | None = None,
    progress: Any = None,
    checkpoint: ChainCheckpoint | None = None,
    resume: ChainState | None = None,
) -> ChainResult:
    """One chain as a stack of one: attempts ``start``, ``start + 1``, … (attempt k from w*
    with the step scaled by 2⁻ᵏ, its generator continuing) until one does not diverge or
    ``divergence_retries`` is reached. ``resume`` continues attempt ``start`` from a snapshot
    (one taken at step 0 is a restart not yet begun). The progress bar's total grows by one
    chain for every attempt after ``start``."""
    retries = [dict(r) for r in retries or []]
    engine = EagerEngine(post.problem)
    for attempt in range(start, cfg.divergence_retries + 1):
        if attempt > start and progress is not None:
            progress.total += cfg.num_steps
        if resume is not None and attempt == start and resume.step > 0:
            stack = ChainStack.restore(post, cfg, [resume], [gen])
            if progress is not None:
                progress.update(stack.checked)
        else:
            if resume is not None and attempt == start:
                gen.set_state(resume.generator_state)
            stack = ChainStack.start(post, cfg, [chain], [gen], attempt=attempt, retries=[retries])
        run_stack(post, cfg, stack, engine, progress=progress, checkpoint=checkpoint)
        result = stack.result(0, cfg)
        if not result.diverged:
            break
        retries.append(retry_record(result))
    result.retries = retries
    return result


def run_chain(
    problem: Any,
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
    post = LocalPosterior(problem, w_star, nbeta, init_loss, init_per_sample, precond_diagonal)
    return run_one(post, cfg, chain, progress=progress, checkpoint=checkpoint, resume=resume)


def run_one(
    post: LocalPosterior,
    cfg: SamplerConfig,
    chain: int,
    *,
    progress: Any = None,
    checkpoint: ChainCheckpoint | None = None,
    resume: ChainState | None = None,
) -> ChainResult:
    """:func:`run_chain` on a :class:`LocalPosterior`."""
    if cfg.step_size == "auto":
        raise ValueError(
            "step_size='auto' is resolved by estimate_llc (pilot chains, hf_llc.calibration) "
            "before the chains run; pass run_chain a number or 'curvature'."
        )
    gen = chain_generator(cfg.seed, chain, post.w_star.device)
    start, retries = 0, []
    if resume is not None:
        if resume.chain != chain:
            raise ValueError(f"resume holds the state of chain {resume.chain}, not of {chain}.")
        start, retries = resume.attempt, resume.retries
        if start and progress is not None:
            progress.total += start * cfg.num_steps
    return run_attempts(
        post,
        cfg,
        chain,
        gen,
        start=start,
        retries=retries,
        progress=progress,
        checkpoint=checkpoint,
        resume=resume,
    )


class ChainStore(ChainCheckpoint, Protocol):
    """Where :func:`run_chains` keeps chains across sessions (``hf_llc.checkpoint``'s
    ``RunCheckpoint``): snapshots (``due``/``save``), finished chains, and what was saved."""

    def load_chain(self, chain: int) -> ChainResult | ChainState | None: ...

    def save_finished(self, result: ChainResult) -> None: ...

    def stop_if_requested(self) -> None: ...


def run_chains(
    post: LocalPosterior,
    cfg: SamplerConfig,
    chains: list[int],
    *,
    progress: Any = None,
    store: ChainStore | None = None,
    resume: bool = False,
) -> tuple[list[ChainResult], str]:
    """Run ``chains`` as ``cfg.chain_mode`` says; returns (results in chain order, the mode used).

    ``"auto"`` batches when there are several chains and the model passes a trial step under
    ``vmap`` (:func:`check_batchable`); ``"batched"`` batches whenever the trial step passes. A
    model that fails it runs sequentially, with a one-line warning saying why. With ``store``
    every chain is checkpointed there and recorded when it finishes; with ``resume`` as well,
    chains finished earlier are loaded and running ones continue from their snapshots."""
    done: dict[int, ChainResult] = {}
    saved: dict[int, ChainState] = {}
    for c in chains if store is not None and resume else ():
        found = store.load_chain(c)
        if isinstance(found, ChainResult):
            done[c] = found
            if progress is not None:
                progress.update(cfg.num_steps)
        elif found is not None:
            saved[c] = found
    todo = [c for c in chains if c not in done]
    mode, engine = _choose_engine(post, cfg, chains, todo)
    if engine is None:
        for c in todo:
            if store is not None:
                store.stop_if_requested()
            result = run_one(post, cfg, c, progress=progress, checkpoint=store, resume=saved.get(c))
            done[c] = _finished(store, result)
    else:
        if store is not None and todo:
            store.stop_if_requested()
        done.update(_run_batched(post, cfg, todo, saved, engine, progress, store))
    return [done[c] for c in chains], mode


def _choose_engine(post, cfg: SamplerConfig, chains: list[int], todo: list[int]):
    """("batched", a vmap engine) or ("sequential", None), as ``cfg.chain_mode`` asks and the
    model allows (decided on all ``chains``, so a resumed run batches as the first one did)."""
    mode = cfg.chain_mode
    if mode == "auto" and len(chains) < 2:
        mode = "sequential"
    if mode != "sequential" and todo:
        grad_fn = batched_grad_fn(post.problem, compile=cfg.compile)
        try:
            check_batchable(post.problem, post.w_star, cfg, len(todo), grad_fn)
        except NotBatchable as why:
            # Asked for explicitly, the fallback is news; under "auto" it is a detail.
            logger.log(
                logging.WARNING if cfg.chain_mode == "batched" else logging.INFO,
                "chain_mode=%r: the chains cannot run batched under torch.func.vmap (%s); "
                "running them one after another.",
                cfg.chain_mode,
                why,
            )
        else:
            return "batched", VmapEngine(post.problem, grad_fn)
    if cfg.compile and hasattr(post.problem, "compile"):
        post.problem.compile()
    return "sequential", None


def _run_batched(post, cfg, todo, saved, engine, progress, store) -> dict[int, ChainResult]:
    """The chains ``todo`` as stacks under ``engine`` (fresh chains together, resumed ones with
    the chains they were saved with); a chain that diverges restarts afterwards as a stack of
    one, as a sequential chain does, and so does a restart found saved."""
    gens = {c: chain_generator(cfg.seed, c, post.w_star.device) for c in todo}
    stacks = []
    fresh = [c for c in todo if c not in saved]
    if fresh:
        stacks.append(ChainStack.start(post, cfg, fresh, [gens[c] for c in fresh]))
    by_step: dict[int, list[ChainState]] = {}
    for state in saved.values():
        if state.attempt == 0 and state.step > 0:
            by_step.setdefault(state.step, []).append(state)
    for states in by_step.values():
        stack = ChainStack.restore(post, cfg, states, [gens[s.chain] for s in states])
        if progress is not None:
            progress.update(stack.checked * stack.size)
        stacks.append(stack)
    restarts = {c: s for c, s in saved.items() if not (s.attempt == 0 and s.step > 0)}

    def keep(stack: ChainStack, i: int) -> None:
        _keep_diverged(post, cfg, stack, i, store)

    results: dict[int, ChainResult] = {}
    for stack in stacks:
        run_stack(
            post,
            cfg,
            stack,
            engine,
            progress=progress,
            checkpoint=store,
            on_diverged=None if store is None else keep,
        )
        for i, c in enumerate(stack.chains):
            result = stack.result(i, cfg)
            if result.diverged:
                retries = [*result.retries, retry_record(result)]
                result.retries = retries
                if cfg.divergence_retries:  # from where the chain's generator stopped
                    if progress is not None:
                        progress.total += cfg.num_steps
                    result = run_attempts(
                        post,
                        cfg,
                        c,
                        stack.gens[i],
                        start=stack.attempt + 1,
                        retries=retries,
                        progress=progress,
                        checkpoint=store,
                    )
            results[c] = _finished(store, result)
    for c, state in restarts.items():
        result = run_one(post, cfg, c, progress=progress, checkpoint=store, resume=state)
        results[c] = _finished(store, result)
    return results


def _keep_diverged(post, cfg, stack: ChainStack, i: int, store: ChainStore) -> None:
    """Row i of a stack just diverged: saved at once as what comes next, its restart not yet
    begun (a snapshot at step 0 of the next attempt) or, with no restart left, its result."""
    result = stack.result(i, cfg)
    retries = [*result.retries, retry_record(result)]
    if not cfg.divergence_retries:
        result.retries = retries
        store.save_finished(result)
        return
    empty = torch.empty(0, dtype=torch.float64)
    store.save(
        ChainState(
            chain=stack.chains[i],
            attempt=stack.attempt + 1,
            step=0,
            checked=0,
            w=post.w_star.detach().cpu().clone(),
            generator_state=stack.gens[i].get_state(),
            perm=None,
            pos=post.problem.num_samples,
            step_size=float("nan"),
            step_size_history=[],
            v=None,
            precond={},
            adapting_precond=True,
            trace=empty,
            init_trace=None if stack.init_trace is None else empty,
            mala=None if stack.mala is None else empty,
            retries=retries,
            seconds=result.seconds,
        )
    )


def _finished(store: ChainStore | None, result: ChainResult) -> ChainResult:
    """Record a finished chain in ``store`` (if any); returns it."""
    if store is not None:
        store.save_finished(result)
    return result
