r"""Many chains as one computation: the model under ``torch.func.vmap`` over a chain dimension.

The state of C chains is stacked: parameters W (C × d), gradients (which also take the drift
and the noise) and (for RMSProp) the preconditioner state, with w* held once and shared.
Each step evaluates

    (∇L_{B_t^c}(w_t^c), L_{B_t^c}(w_t^c))  for c = 1..C

as one ``vmap(grad_and_value(loss))`` call over (W, minibatches stacked C × m), then applies
the SGLD update of :mod:`hf_llc.sampling.sgld` to every row with that chain's own step size ε_c:

    w^c ← w^c − (ε_c/2)·A_c·[nβ·∇L_{B^c}(w^c) + γ·(w^c − w*)] + √ε_c·√A_c·ξ^c.

**Per-chain equivalence.** Chain c consumes its own generator (seeded from (seed, c)) exactly as
:func:`hf_llc.sampling.run_chain` does: the same initial curvature vector, the same per-epoch
permutations of its :class:`EpochBatcher`, the same curvature probes (the step-size
measurements run chain by chain with the sequential code, at the chain's own row, on its own
minibatch) and the same noise draws in the same order. Its trace therefore equals the
sequential one up to float rounding (a batched matrix product may round differently from a
plain one). A chain that diverges stops consuming its generator at the check that caught it,
exactly where the sequential attempt stops; its retries (half the step, from w*, generator
continuing) then run sequentially, so they too match.

Models that cannot run under ``vmap`` (data-dependent Python control flow, in-place updates of
inputs, ``.item()``) or whose minibatches are not tensors with a leading sample dimension fall
back to the sequential path (:func:`run_chains` decides, with a one-line notice).
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from .chain import (
    WARM_START_DTYPE,
    ChainResult,
    EpochBatcher,
    LossProblem,
    Schedule,
    _grad,
    chain_generator,
    divergence_message,
    measure_step_size,
    retry_record,
    run_attempts,
    run_chain,
)
from .config import SamplerConfig
from .preconditioners import Preconditioner, make_preconditioner
from .sgld import (
    StepCoefficients,
    langevin_update_,
    mala_acceptance,
    potential,
    potential_grad,
)


class NotBatchable(Exception):
    """The problem cannot run its chains under ``vmap`` (the message says why)."""


def stack_batches(problem: LossProblem, indices: Tensor) -> Any:
    """The minibatches of C chains, ``indices`` (C × m), as one batch with a leading chain dim.

    One gather for all chains (``problem.batch`` of the concatenated indices), then every
    tensor is viewed as (C, m, …). Raises :class:`NotBatchable` for batches that are not a
    tensor or a mapping of tensors with one row per sample.
    """
    c, m = indices.shape
    flat = problem.batch(indices.reshape(-1))

    def split(value: Any, name: str) -> Tensor:
        if not isinstance(value, Tensor) or value.ndim == 0 or value.shape[0] != c * m:
            raise NotBatchable(
                f"batch entry {name!r} is not a tensor with one row per sample "
                f"({type(value).__name__})"
            )
        return value.view(c, m, *value.shape[1:])

    if isinstance(flat, Tensor):
        return split(flat, "batch")
    if isinstance(flat, Mapping):
        return {k: split(v, k) for k, v in flat.items()}
    raise NotBatchable(f"batches of type {type(flat).__name__} cannot be stacked over chains")


def batched_grad_fn(problem: LossProblem, compile: bool = False):
    """``f(W, batches) -> (G, L)``: per-chain gradient and mean loss of C chains at once.

    ``W`` is C × d, ``batches`` has a leading chain dimension (:func:`stack_batches`); ``G``
    is C × d and ``L`` has C entries. The forward is ``vmap``-ped over chains and the backward
    is ordinary autograd of Σ_c L_c, whose gradient with respect to row c of W is ∇L_c (the
    chains share no parameters). ``compile=True`` compiles the vmapped forward with
    ``torch.compile`` (its backward is compiled with it).
    """

    def mean_loss(w: Tensor, batch: Any) -> Tensor:
        per = problem.loss(w, batch)
        return per.mean() if per.ndim else per

    forward = torch.func.vmap(mean_loss)
    if compile:
        forward = torch.compile(forward, dynamic=False)

    def grad_and_loss(W: Tensor, batch: Any) -> tuple[Tensor, Tensor]:
        leaf = W.detach().requires_grad_(True)
        with torch.enable_grad():
            L = forward(leaf, batch)
            (G,) = torch.autograd.grad(L.sum(), leaf)
        return G, L.detach()

    return grad_and_loss


def sgld_step_chains_(
    W: Tensor,
    G: Tensor,
    w_star: Tensor,
    *,
    step_sizes: list[float],
    nbeta: float,
    localization: float,
    generators: list[torch.Generator],
    active: list[bool],
    precond: Preconditioner | None = None,
    adapt: bool = False,
    cache: dict | None = None,
) -> None:
    r"""One SGLD step of every chain, in place on the rows of ``W`` (C × d); ``G`` is consumed.

    Row c moves with its own ε_c = ``step_sizes[c]`` and draws its noise from
    ``generators[c]`` (d standard normals, as :func:`hf_llc.sampling.sgld_step_` draws them),
    into row c of ``G`` once the gradient has been applied; an inactive chain neither moves
    nor draws. ``precond`` holds a (C × d) state per chain or a shared (d,) diagonal;
    ``None`` for identity. ``cache`` (a dict kept between calls) saves rebuilding the
    per-chain coefficients while the step sizes do not change.
    """
    dev, dt = W.device, W.dtype
    eps = tuple(s if a else 0.0 for s, a in zip(step_sizes, active))
    if cache is not None and cache.get("eps") == eps:
        coefficients = cache["coefficients"]
    else:
        half = torch.tensor(eps, device=dev, dtype=dt).unsqueeze(1) / 2
        root = torch.tensor([math.sqrt(s) for s in eps], device=dev, dtype=dt).unsqueeze(1)
        coefficients = StepCoefficients.of(half, root, nbeta=nbeta, localization=localization)
        if cache is not None:
            cache.update(eps=eps, coefficients=coefficients)

    def draw_noise(buf: Tensor) -> None:
        for row, gen, on in zip(buf, generators, active):
            if on:
                torch.randn(row.shape, generator=gen, out=row, dtype=dt, device=dev)
            else:
                row.zero_()

    langevin_update_(
        W,
        G,
        w_star,
        coefficients=coefficients,
        nbeta=nbeta,
        localization=localization,
        draw_noise=draw_noise,
        precond=precond,
        adapt=adapt,
    )


def check_batchable(
    problem: LossProblem, w_star: Tensor, cfg: SamplerConfig, num_chains: int, grad_fn
) -> None:
    """Run one batched gradient at w* for ``num_chains`` chains and compare chain 0 with the
    sequential gradient; raise :class:`NotBatchable` (with the reason) if either fails."""
    m = cfg.batch_size
    idx = torch.arange(m).repeat(num_chains, 1)
    try:
        batch = stack_batches(problem, idx)
        W = w_star.expand(num_chains, -1).clone()
        G, L = grad_fn(W, batch)
    except NotBatchable:
        raise
    except Exception as err:  # vmap raises many kinds of errors for unsupported models
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise NotBatchable(f"{type(err).__name__}: {first[:200]}") from err
    _, _, loss, g = _grad(problem, w_star, problem.batch(idx[0]))
    if G.shape != W.shape or L.shape != (num_chains,):
        raise NotBatchable(f"the vmapped gradient has shape {tuple(G.shape)}, not (C, d)")
    # A gross-error check (a model that mixes samples or chains is off by O(1)), loose enough
    # for bf16 autocast, where a batched matmul may round differently from a plain one.
    if float((G[0] - g).norm()) > 1e-2 * float(g.norm()) + 1e-6:
        raise NotBatchable("the vmapped gradient differs from the plain one")
    loss = float(loss.detach())
    if abs(float(L[0]) - loss) > 1e-2 * abs(loss) + 1e-6:
        raise NotBatchable("the vmapped loss differs from the plain one")


def run_chains(
    problem: LossProblem,
    w_star: Tensor,
    cfg: SamplerConfig,
    chains: list[int],
    *,
    nbeta: float,
    init_loss: float,
    init_per_sample: Tensor | None = None,
    precond_diagonal: Tensor | None = None,
    progress: Any = None,
    runner: Any = None,
) -> tuple[list[ChainResult], str]:
    """Run ``chains`` as ``cfg.chain_mode`` says; returns (results, mode actually used).

    ``"auto"`` batches when there is more than one chain and the model passes a trial step
    under ``vmap`` (:func:`check_batchable`); ``"batched"`` batches whenever the trial step
    passes. A model that fails it runs sequentially, with a one-line warning saying why.
    ``runner`` replaces :func:`run_chain` (same signature) and runs the chains one after
    another, e.g. the checkpointing wrapper, whose chains are saved and restored one by one.
    """
    kw = dict(
        nbeta=nbeta,
        init_loss=init_loss,
        init_per_sample=init_per_sample,
        precond_diagonal=precond_diagonal,
        progress=progress,
    )
    mode = cfg.chain_mode if runner is None else "sequential"
    if mode == "auto" and len(chains) < 2:
        mode = "sequential"
    if mode != "sequential" and chains:
        grad_fn = batched_grad_fn(problem, compile=cfg.compile)
        try:
            check_batchable(problem, w_star, cfg, len(chains), grad_fn)
        except NotBatchable as why:
            warnings.warn(
                f"hf_llc: chain_mode={cfg.chain_mode!r}: the chains cannot run batched under "
                f"torch.func.vmap ({why}); running them one after another.",
                UserWarning,
                stacklevel=3,
            )
            mode = "sequential"
        else:
            return run_chains_batched(problem, w_star, cfg, chains, grad_fn=grad_fn, **kw), (
                "batched"
            )
    if cfg.compile and hasattr(problem, "compile"):
        problem.compile()
    run_one = run_chain if runner is None else runner
    return [run_one(problem, w_star, cfg, c, **kw) for c in chains], "sequential"


def run_chains_batched(
    problem: LossProblem,
    w_star: Tensor,
    cfg: SamplerConfig,
    chains: list[int],
    *,
    nbeta: float,
    init_loss: float,
    init_per_sample: Tensor | None = None,
    precond_diagonal: Tensor | None = None,
    progress: Any = None,
    grad_fn: Any = None,
) -> list[ChainResult]:
    """Run ``chains`` together from w*; each result matches :func:`run_chain`'s for that chain
    up to float rounding (see the module docstring). Diverged chains are retried sequentially
    with half the step size, as ``run_chain`` does."""
    start = time.perf_counter()
    grad_fn = grad_fn if grad_fn is not None else batched_grad_fn(problem, cfg.compile)
    device = w_star.device
    C, d = len(chains), w_star.numel()
    gens = [chain_generator(cfg.seed, c, device) for c in chains]
    batchers = [EpochBatcher(problem.num_samples, cfg.batch_size, g) for g in gens]

    # A user diagonal is (d,), shared by every chain; adaptive ones keep a row per chain.
    precond = make_preconditioner(
        cfg,
        w_star.expand(C, d),
        nbeta=nbeta,
        diagonal=precond_diagonal,
        segments=getattr(problem, "segments", None),
    )

    W = w_star.expand(C, d).clone()
    total = cfg.num_steps
    trace = torch.empty(C, total, dtype=torch.float64, device=device)
    init_trace = (
        torch.empty(C, total, dtype=torch.float64, device=device)
        if init_per_sample is not None
        else None
    )
    mala = torch.empty(C, cfg.num_draws, dtype=torch.float64, device=device) if cfg.mala else None

    schedule = Schedule.of(cfg)
    adaptive, adapt_at, freeze_at = schedule.adaptive, schedule.adapt_at, schedule.freeze_at
    steps = [float("nan") if adaptive else float(cfg.step_size)] * C
    histories: list[list] = [[] for _ in chains]
    vs = [schedule.warm_start(g, w_star) for g in gens]
    adapting_precond = True
    threshold = cfg.divergence_factor * (abs(init_loss) + d / nbeta)
    active = [True] * C
    div_step: list[int | None] = [None] * C
    reasons: list[str | None] = [None] * C
    idx = torch.empty(C, cfg.batch_size, dtype=torch.long, device=device)
    checked = 0
    coefficients: dict = {}
    for t in range(total):
        for i in range(C):
            if active[i]:
                idx[i] = batchers[i].next()
        batch = stack_batches(problem, idx)
        schedule.renew(precond, t)
        curvature_now = adaptive and (t == 0 or t in adapt_at or t == freeze_at)
        for i in range(C) if curvature_now else ():
            if not active[i]:
                continue
            own = problem.batch(idx[i])
            row = precond.row(i)
            steps[i], vs[i] = measure_step_size(
                problem,
                W[i],
                w_star,
                own,
                t=t,
                current=steps[i],
                schedule=schedule,
                cfg=cfg,
                step_scale=cfg.step_scale,
                nbeta=nbeta,
                precond=row,
                gen=gens[i],
                v=vs[i],
            )
            histories[i].append((t, steps[i]))
            vs[i] = None if t >= schedule.last_measurement else vs[i].to(WARM_START_DTYPE)
        if t == freeze_at:
            adapting_precond = False
            precond.freeze()

        G, L = grad_fn(W, batch)
        trace[:, t] = L.detach()
        if init_trace is not None:
            init_trace[:, t] = init_per_sample[idx].mean(dim=1)
        draw = t - cfg.num_burnin
        record_mala = mala is not None and draw >= 0 and draw % cfg.draw_every == 0
        if record_mala:
            W_old, L_old, G_old = W.clone(), L.detach(), G.clone()
        sgld_step_chains_(
            W,
            G,
            w_star,
            step_sizes=steps,
            nbeta=nbeta,
            localization=cfg.localization,
            generators=gens,
            active=active,
            precond=precond,
            adapt=adapting_precond and precond.adaptive,
            cache=coefficients,
        )
        if record_mala:
            G_new, L_new = grad_fn(W, batch)
            for i in range(C):
                if not active[i]:
                    continue
                kw = dict(nbeta=nbeta, localization=cfg.localization, metric=precond.row(i).metric)
                u_old = potential(L_old[i], W_old[i], w_star, **kw)
                u_new = potential(L_new[i], W[i], w_star, **kw)
                gu_old = potential_grad(G_old[i], W_old[i], w_star, **kw)
                gu_new = potential_grad(G_new[i], W[i], w_star, **kw)
                mala[i, draw // cfg.draw_every] = mala_acceptance(
                    W_old[i],
                    W[i],
                    u_old,
                    u_new,
                    gu_old,
                    gu_new,
                    step_size=steps[i],
                    precond=precond.row(i).A,
                )
        del G
        if (t + 1 - checked) >= cfg.check_every or t + 1 == total:
            chunk = trace[:, checked : t + 1]
            bad = ~torch.isfinite(chunk) | (chunk - init_loss > threshold)
            rows = bad.any(dim=1).tolist()
            for i in range(C):
                if active[i] and rows[i]:
                    first = checked + int(torch.nonzero(bad[i])[0, 0])
                    div_step[i] = first
                    reasons[i] = divergence_message(
                        chains[i], first, float(trace[i, first]), init_loss, steps[i], 1.0
                    )
                    active[i] = False
                    W[i] = w_star  # parked: it no longer moves nor draws
            if progress is not None:
                progress.update((t + 1 - checked) * sum(active))
            checked = t + 1
            if not any(active):
                break

    seconds = (time.perf_counter() - start) / C
    b, k = cfg.num_burnin, cfg.draw_every
    results = []
    for i, chain in enumerate(chains):
        diverged = div_step[i] is not None
        end = div_step[i] if diverged else total
        row = trace[i, :end].cpu()
        draws = row[b::k][: cfg.num_draws]
        result = ChainResult(
            chain=chain,
            loss_trace=draws,
            init_batch_trace=None
            if init_trace is None
            else init_trace[i, :end].cpu()[b::k][: cfg.num_draws],
            burnin_trace=row[:b],
            step_size=steps[i],
            step_size_history=histories[i],
            mala_acceptance=None if mala is None else mala[i, : len(draws)].cpu(),
            diverged=diverged,
            divergence_step=div_step[i],
            divergence_reason=reasons[i],
            seconds=seconds,
        )
        result.retries = [retry_record(result)] if diverged else []
        if diverged and cfg.divergence_retries:
            # Retries run sequentially, from where the chain's generator stopped, exactly as
            # run_chain's do.
            if progress is not None:
                progress.total += cfg.num_steps
            result = run_attempts(
                problem,
                w_star,
                cfg,
                chain,
                gens[i],
                start=1,
                retries=result.retries,
                nbeta=nbeta,
                init_loss=init_loss,
                init_per_sample=init_per_sample,
                precond_diagonal=precond_diagonal,
                progress=progress,
            )
        results.append(result)
    return results
