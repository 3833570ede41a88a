"""The chain loop through its own seam: a stack's state, its steps, snapshots and restores.

A sequential chain is a stack of one under the eager engine, batched chains a stack of all
under the vmap engine. Every comparison here is exact equality: a chain is a deterministic
function of its state, so a stack restored from a snapshot must continue bit for bit.
"""

from __future__ import annotations

import pytest
import torch
from test_resume import W_STAR, QuadraticProblem, TwoLayerProblem, assert_same_chain

from hf_llc.checkpoint import ChainStopped, RunCheckpoint
from hf_llc.sampling import (
    ChainResult,
    ChainStack,
    ChainState,
    LocalPosterior,
    SamplerConfig,
    chain_generator,
    run_chain,
    run_chains,
    run_stack,
)
from hf_llc.sampling.engines import EagerEngine, VmapEngine


class StackableTwoLayer(TwoLayerProblem):
    """TwoLayerProblem with minibatches as a mapping of tensors (stackable over chains)."""

    def batch(self, idx):
        x, y = super().batch(idx)
        return {"x": x, "y": y}

    def loss(self, w, batch):
        return super().loss(w, (batch["x"], batch["y"]))


def _posterior(problem=None, w_star=None, nbeta=50.0) -> LocalPosterior:
    problem = problem or StackableTwoLayer()
    w_star = W_STAR.clone() if w_star is None else w_star
    cache = problem.loss(w_star, problem.batch(torch.arange(problem.num_samples))).double()
    return LocalPosterior(problem, w_star, nbeta, float(cache.mean()), cache)


def _stack(post, cfg, chains):
    gens = [chain_generator(cfg.seed, c) for c in chains]
    return ChainStack.start(post, cfg, chains, gens)


class Snapshots:
    """A checkpoint that keeps every ``every``-th snapshot in memory (as the files would)."""

    def __init__(self, every: int):
        self.every, self.states = every, []

    def due(self, chain: int, step: int) -> bool:
        return step % self.every == 0

    def save(self, state: ChainState) -> None:
        self.states.append(state)


SETTINGS = [
    dict(),  # the default recipe: curvature step sizes, Fisher diagonal frozen in burn-in
    dict(preconditioner="rmsprop-burnin", mala=True),
    dict(step_size=0.01, preconditioner="identity", draw_every=3),
]
IDS = ["default", "rmsprop-burnin-mala", "fixed-identity-thinned"]


@pytest.mark.parametrize("settings", SETTINGS, ids=IDS)
def test_a_stack_of_one_under_the_eager_engine_is_run_chain(settings):
    cfg = SamplerConfig(batch_size=16, num_burnin=24, num_draws=12, nbeta=50.0, **settings)
    post = _posterior()
    stack = _stack(post, cfg, [2])
    run_stack(post, cfg, stack, EagerEngine(post.problem))
    assert stack.t == cfg.num_steps and stack.checked == cfg.num_steps
    expected = run_chain(
        post.problem,
        post.w_star,
        cfg,
        2,
        nbeta=post.nbeta,
        init_loss=post.init_loss,
        init_per_sample=post.init_per_sample,
    )
    assert_same_chain(stack.result(0, cfg), expected)


@pytest.mark.parametrize("settings", SETTINGS, ids=IDS)
def test_a_batched_stack_restored_from_any_snapshot_continues_bit_identically(settings):
    cfg = SamplerConfig(batch_size=16, num_burnin=24, num_draws=12, nbeta=50.0, **settings)
    post = _posterior()
    engine = VmapEngine(post.problem)
    chains = [0, 1, 2]
    plain = _stack(post, cfg, chains)
    run_stack(post, cfg, plain, engine)
    snaps = Snapshots(5)
    recorded = _stack(post, cfg, chains)
    run_stack(post, cfg, recorded, engine, checkpoint=snaps)
    for i in range(3):  # taking snapshots changes nothing
        assert_same_chain(recorded.result(i, cfg), plain.result(i, cfg))
    steps = sorted({s.step for s in snaps.states})
    assert min(steps) < cfg.num_burnin < max(steps)  # in burn-in and in the draws
    for step in steps:
        states = [s for s in snaps.states if s.step == step]
        assert [s.chain for s in states] == chains  # every running chain, together
        gens = [chain_generator(cfg.seed, c) for c in chains]
        restored = ChainStack.restore(post, cfg, states, gens)
        run_stack(post, cfg, restored, engine)
        for i in range(3):
            assert_same_chain(restored.result(i, cfg), plain.result(i, cfg))
    # The rows are different chains (own data, own noise).
    assert not torch.equal(plain.trace[0], plain.trace[1])


def test_restoring_a_stack_needs_its_chains_at_the_same_step():
    cfg = SamplerConfig(batch_size=16, num_burnin=10, num_draws=10, step_size=0.01)
    post = _posterior()
    snaps = Snapshots(4)
    run_stack(post, cfg, _stack(post, cfg, [0, 1]), VmapEngine(post.problem), checkpoint=snaps)
    mixed = [snaps.states[0], snaps.states[3]]  # chain 0 at step 4, chain 1 at step 8
    with pytest.raises(ValueError, match="same attempt and step"):
        ChainStack.restore(post, cfg, mixed, [chain_generator(0, 0), chain_generator(0, 1)])


class MemoryStore:
    """run_chains' store in memory; ``stop_after`` saves, ``save`` raises (after saving), as a
    termination signal does with the files."""

    def __init__(self, every: int, stop_after: int | None = None):
        self.every, self.stop_after = every, stop_after
        self.saved: dict[int, ChainResult | ChainState] = {}
        self.saves = 0

    def due(self, chain: int, step: int) -> bool:
        return step % self.every == 0

    def save(self, state: ChainState) -> None:
        self.saved[state.chain] = state
        self.saves += 1
        if self.stop_after is not None and self.saves == self.stop_after:
            raise KeyboardInterrupt("stop")

    def save_finished(self, result: ChainResult) -> None:
        self.saved[result.chain] = result

    def load_chain(self, chain: int):
        return self.saved.get(chain)

    def stop_if_requested(self) -> None:
        pass


def _diverging():
    # ε = 0.1 with nβ = 100 explodes (εh = 10), as does ε/2; ε/4 is stable (test_sampler).
    problem = QuadraticProblem()
    w_star = problem.x.mean(0)
    post = LocalPosterior(problem, w_star, 100.0, float(problem.loss(w_star, problem.x).mean()))
    cfg = SamplerConfig(
        step_size=0.1,
        preconditioner="identity",
        batch_size=4,
        localization=0.0,
        num_burnin=20,
        num_draws=30,
        check_every=10,
        divergence_retries=2,
        num_chains=3,
        chain_mode="batched",
    )
    return post, cfg


def test_batched_chains_that_diverge_restart_alone_and_resume_bit_identically():
    post, cfg = _diverging()
    chains = [0, 1, 2]
    plain, mode = run_chains(post, cfg, chains)
    assert mode == "batched"
    assert all(len(r.retries) == 2 and not r.diverged for r in plain)
    # The same as sequential chains, whose restarts run the same way.
    for r in plain:
        expected = run_chain(
            post.problem, post.w_star, cfg, r.chain, nbeta=100.0, init_loss=post.init_loss
        )
        assert [x["step"] for x in r.retries] == [x["step"] for x in expected.retries]
    # Interrupted at every possible save, then resumed from what was saved: the same results.
    total = MemoryStore(4)
    run_chains(post, cfg, chains, store=total)
    assert total.saves > 6
    kinds = set()
    for stop in range(1, total.saves + 1):
        store = MemoryStore(4, stop_after=stop)
        with pytest.raises(KeyboardInterrupt):
            run_chains(post, cfg, chains, store=store)
        kinds |= {
            (s.attempt, s.step == 0) for s in store.saved.values() if isinstance(s, ChainState)
        }
        store.stop_after = None
        resumed, mode = run_chains(post, cfg, chains, store=store, resume=True)
        assert mode == "batched"
        for a, b in zip(resumed, plain):
            assert_same_chain(a, b)
    # Snapshots of the batched attempt, restarts not yet begun, and running restarts.
    assert {(0, False), (1, True), (1, False), (2, False)} <= kinds


class StoppingFolder(RunCheckpoint):
    """The checkpoint folder itself as run_chains' store, stopping (as a signal would) after
    ``stop_after`` snapshots: restarts not yet begun go through its files too."""

    def __init__(self, root, stop_after=None):
        super().__init__(root, checkpoint_every=4, checkpoint_seconds=None)
        self.config_hash, self.stop_after, self.saves = "test", stop_after, 0

    def save(self, state):
        super().save(state)
        self.saves += 1
        if self.stop_after is not None and self.saves == self.stop_after:
            raise ChainStopped(15)


def test_batched_restarts_round_trip_through_the_checkpoint_files(tmp_path):
    post, cfg = _diverging()
    plain, _ = run_chains(post, cfg, [0, 1, 2])
    # The first save that writes a restart not yet begun (a chain that just diverged).
    first = None
    for stop in range(1, 40):
        store = MemoryStore(4, stop_after=stop)
        with pytest.raises(KeyboardInterrupt):
            run_chains(post, cfg, [0, 1, 2], store=store)
        if any(isinstance(s, ChainState) and s.step == 0 for s in store.saved.values()):
            first = stop
            break
    assert first is not None
    folder = StoppingFolder(tmp_path / "run", stop_after=first)
    with pytest.raises(ChainStopped):
        run_chains(post, cfg, [0, 1, 2], store=folder)
    restart = [folder.load_chain(c) for c in range(3)]
    assert any(isinstance(s, ChainState) and s.step == 0 and s.attempt == 1 for s in restart)
    folder.stop_after = None
    resumed, mode = run_chains(post, cfg, [0, 1, 2], store=folder, resume=True)
    assert mode == "batched"
    for a, b in zip(resumed, plain):
        assert_same_chain(a, b)
