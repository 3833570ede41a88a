"""The live state of a stack of C ≥ 1 chains that step together, and its conversions.

A sequential chain is a stack of one; batched chains are a stack of all. Every row keeps what
its chain carries from one step to the next (parameters, generator, minibatch order, step
size, power-iteration vector, preconditioner row, traces); the step counter is shared. A row
converts to and from the on-disk :class:`~hf_llc.sampling.chain.ChainState` (one chain's
snapshot) and, at the end, to a :class:`~hf_llc.sampling.chain.ChainResult`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .chain import (
    ChainResult,
    ChainState,
    EpochBatcher,
    Schedule,
    _copy,
    _num_draws_before,
    divergence_message,
)
from .config import SamplerConfig
from .posterior import LocalPosterior
from .preconditioners import Preconditioner


@dataclass
class ChainStack:
    """C chains at step ``t`` of the same attempt (rows in the order of ``chains``).

    ``W`` is C × d; ``noise`` (C × d, ``integrator="leimkuhler-matthews"`` only) the standard
    normals of each chain's last step, which its next step reuses; ``steps`` the per-chain
    step sizes ε_c; ``active[c]`` is ``False`` once chain c diverged (its row is parked at w*:
    it no longer moves nor draws); ``checked`` the steps already checked for divergence.
    ``elapsed`` is the sampling time of earlier sessions (a resumed snapshot's), per chain.
    """

    chains: list[int]
    attempt: int
    W: Tensor
    gens: list[torch.Generator]
    batchers: list[EpochBatcher]
    precond: Preconditioner
    schedule: Schedule
    steps: list[float]
    histories: list[list]
    vs: list[Tensor | None]
    trace: Tensor
    init_trace: Tensor | None
    mala: Tensor | None
    retries: list[list[dict]]
    adapting: bool = True
    t: int = 0
    checked: int = 0
    active: list[bool] = field(default_factory=list)
    div_step: list[int | None] = field(default_factory=list)
    reasons: list[str | None] = field(default_factory=list)
    elapsed: list[float] = field(default_factory=list)
    noise: Tensor | None = None
    started: float = field(default_factory=time.perf_counter)

    @property
    def size(self) -> int:
        return len(self.chains)

    @property
    def step_factor(self) -> float:
        """2⁻ᵏ in attempt k: a restarted chain runs with half the step of the previous one."""
        return 0.5**self.attempt

    @classmethod
    def start(
        cls,
        post: LocalPosterior,
        cfg: SamplerConfig,
        chains: list[int],
        gens: list[torch.Generator],
        *,
        attempt: int = 0,
        retries: list[list[dict]] | None = None,
    ) -> ChainStack:
        """Fresh chains at w* (attempt ``attempt``, the generators continuing where they are)."""
        C, d = len(chains), post.num_params
        w_star = post.w_star
        device = w_star.device
        schedule = Schedule.of(cfg)
        fixed = float("nan") if schedule.adaptive else float(cfg.step_size) * 0.5**attempt
        W = w_star.expand(C, d).clone()
        total = cfg.num_steps

        def buffer(*shape: int) -> Tensor:
            return torch.empty(*shape, dtype=torch.float64, device=device)

        # Drawn here, from each chain's generator, before its first minibatch.
        vs = [schedule.warm_start(g, w_star) for g in gens]
        noise = None
        if cfg.integrator == "leimkuhler-matthews":  # ξ_0, the first step's "previous" draw
            noise = torch.empty_like(W)
            for row, gen in zip(noise, gens):
                torch.randn(row.shape, generator=gen, out=row, dtype=W.dtype, device=device)

        return cls(
            chains=list(chains),
            attempt=attempt,
            W=W,
            gens=list(gens),
            batchers=[EpochBatcher(post.problem.num_samples, cfg.batch_size, g) for g in gens],
            precond=post.preconditioner(cfg, W),
            schedule=schedule,
            steps=[fixed] * C,
            histories=[[] for _ in chains],
            vs=vs,
            trace=buffer(C, total),
            init_trace=None if post.init_per_sample is None else buffer(C, total),
            mala=buffer(C, cfg.num_draws) if cfg.mala else None,
            retries=[list(r) for r in retries] if retries is not None else [[] for _ in chains],
            active=[True] * C,
            div_step=[None] * C,
            reasons=[None] * C,
            elapsed=[0.0] * C,
            noise=noise,
        )

    @classmethod
    def restore(
        cls,
        post: LocalPosterior,
        cfg: SamplerConfig,
        states: list[ChainState],
        gens: list[torch.Generator],
    ) -> ChainStack:
        """The stack the snapshots ``states`` were taken of (same attempt and step), continued
        exactly where they stopped."""
        first = states[0]
        if any((s.attempt, s.step) != (first.attempt, first.step) for s in states):
            raise ValueError("chains stacked together must be at the same attempt and step.")
        stack = cls.start(post, cfg, [s.chain for s in states], gens, attempt=first.attempt)
        device = post.w_star.device
        stack.t, stack.checked = first.step, first.checked
        stack.adapting = first.adapting_precond
        for i, (state, gen) in enumerate(zip(states, gens)):
            stack.W[i].copy_(state.w)
            gen.set_state(state.generator_state)
            stack.batchers[i].load_state(state.perm, state.pos)
            stack.steps[i] = state.step_size
            stack.histories[i] = [tuple(h) for h in state.step_size_history]
            stack.vs[i] = None if state.v is None else state.v.to(device)
            stack.trace[i, : first.step] = state.trace.to(device)
            if stack.init_trace is not None:
                stack.init_trace[i, : first.step] = state.init_trace.to(device)
            if stack.mala is not None:
                stack.mala[i, : len(state.mala)] = state.mala.to(device)
            stack.retries[i] = [dict(r) for r in state.retries]
            stack.elapsed[i] = state.seconds
            if stack.noise is not None:
                if state.noise is None:
                    raise ValueError(
                        f"chain {state.chain}'s snapshot has no noise state, which "
                        "integrator='leimkuhler-matthews' needs: resume it with the integrator "
                        "it was started with."
                    )
                stack.noise[i].copy_(state.noise)
        stack.precond.load_state_dict(_stack_states([s.precond for s in states]))
        if not stack.adapting:
            stack.precond.freeze()  # no-op once the frozen state is loaded
        return stack

    def seconds(self, i: int) -> float:
        """Chain i's sampling time so far (the stack's wall time is shared by its chains)."""
        return self.elapsed[i] + (time.perf_counter() - self.started) / self.size

    def snapshot(self, i: int, cfg: SamplerConfig) -> ChainState:
        """Row i's :class:`ChainState` at the current step (CPU copies)."""
        steps = self.t
        return ChainState(
            chain=self.chains[i],
            attempt=self.attempt,
            step=steps,
            checked=self.checked,
            w=_copy(self.W[i]),
            generator_state=self.gens[i].get_state(),
            perm=self.batchers[i].state()[0],
            pos=self.batchers[i].state()[1],
            step_size=self.steps[i],
            step_size_history=list(self.histories[i]),
            v=None if self.vs[i] is None else _copy(self.vs[i]),
            precond={k: _copy(x) for k, x in self.precond.row(i).state_dict().items()},
            adapting_precond=self.adapting,
            trace=_copy(self.trace[i, :steps]),
            init_trace=None if self.init_trace is None else _copy(self.init_trace[i, :steps]),
            mala=None
            if self.mala is None
            else _copy(self.mala[i, : _num_draws_before(steps, cfg)]),
            retries=[dict(r) for r in self.retries[i]],
            seconds=self.seconds(i),
            noise=None if self.noise is None else _copy(self.noise[i]),
        )

    def _metric(self, i: int) -> Tensor | None:
        """Row i's localizer metric M as a CPU copy (``None`` when it is Euclidean)."""
        metric = self.precond.row(i).metric
        return None if metric is None else metric.detach().to("cpu", copy=True)

    def mark_diverged(self, i: int, step: int, init_loss: float) -> None:
        """Row i diverged at ``step``: recorded, and the row parked at w*."""
        self.div_step[i] = step
        self.reasons[i] = divergence_message(
            self.chains[i],
            step,
            float(self.trace[i, step]),
            init_loss,
            self.steps[i],
            self.step_factor,
        )
        self.active[i] = False

    def result(self, i: int, cfg: SamplerConfig) -> ChainResult:
        """Row i's :class:`ChainResult` (its traces up to the divergence, if any)."""
        diverged = self.div_step[i] is not None
        end = self.div_step[i] if diverged else cfg.num_steps
        b, k = cfg.num_burnin, cfg.draw_every
        row = self.trace[i, :end].cpu()
        draws = row[b::k][: cfg.num_draws]
        return ChainResult(
            chain=self.chains[i],
            loss_trace=draws,
            init_batch_trace=None
            if self.init_trace is None
            else self.init_trace[i, :end].cpu()[b::k][: cfg.num_draws],
            burnin_trace=row[:b],
            step_size=self.steps[i],
            step_size_history=self.histories[i],
            mala_acceptance=None if self.mala is None else self.mala[i, : len(draws)].cpu(),
            diverged=diverged,
            divergence_step=self.div_step[i],
            divergence_reason=self.reasons[i],
            retries=[dict(r) for r in self.retries[i]],
            seconds=self.seconds(i),
            metric=self._metric(i) if cfg.record_metric else None,
        )


def _stack_states(states: list[dict]) -> dict:
    """One preconditioner state for a stack from its rows' ``state_dict()``s: tensors stacked
    along a new chain dimension, plain values (the same for every row) taken once."""
    out = {}
    for key, value in states[0].items():
        if isinstance(value, Tensor):
            out[key] = torch.stack([s[key] for s in states])
        else:
            if any(s[key] != value for s in states):
                raise ValueError(f"chains stacked together disagree on preconditioner {key!r}.")
            out[key] = value
    return out
