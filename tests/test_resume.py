"""Checkpoints and resume: an interrupted run, resumed, gives bit for bit the uninterrupted result.

Three levels: ``run_chain`` resumed from every snapshot of a chain (through the checkpoint
files); ``estimate_llc`` stopped by a real signal in-process; and the ``hf-llc`` command
stopped by SIGTERM in a subprocess. Every comparison is exact equality.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from dataclasses import fields

import numpy as np
import pytest
import torch

from hf_llc import EstimateInterrupted, SamplerConfig, estimate_llc, make_dln_problem
from hf_llc.checkpoint import PARTIAL_RESULT, RESULT, RunCheckpoint
from hf_llc.cli import main
from hf_llc.sampling import ChainResult, run_chain

# --------------------------------------------------------------------------------------------
# run_chain: resume from every snapshot.


class TwoLayerProblem:
    """ℓ_i(w) = ½‖W₂W₁x_i − y_i‖² for a 3-2-3 linear network (per-sample losses)."""

    def __init__(self, n: int = 64):
        gen = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 3, generator=gen)
        self.y = self.x @ torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.5, 0.0], [0.0, 0.0, 0.0]])
        self.num_samples = n

    def batch(self, idx):
        return self.x[idx], self.y[idx]

    def loss(self, w, batch):
        x, y = batch
        w1, w2 = w[:6].view(2, 3), w[6:].view(3, 2)
        return 0.5 * ((x @ w1.T @ w2.T - y) ** 2).sum(-1)


W_STAR = torch.tensor([1.0, 0, 0, 0, 0.5, 0, 1, 0, 0, 1, 0, 0])


class QuadraticProblem:
    """ℓ_i(w) = ½‖w − x_i‖² (as in test_sampler): a fixed step can be made to diverge."""

    def __init__(self):
        gen = torch.Generator().manual_seed(1234)
        self.x = torch.tensor([0.5, -1.0, 0.25, 1.5, -0.75]) + 0.1 * torch.randn(
            16, 5, generator=gen
        )
        self.num_samples = 16

    def batch(self, idx):
        return self.x[idx]

    def loss(self, w, batch):
        return 0.5 * ((w - batch) ** 2).sum(-1)


class Recorder:
    """A checkpoint hook that round-trips every snapshot through a checkpoint file."""

    def __init__(self, root, every):
        self.root, self.every, self.states = root, every, []

    def due(self, chain, step):
        return step % self.every == 0

    def save(self, state):
        folder = RunCheckpoint(self.root / f"{len(self.states)}", checkpoint_seconds=None)
        folder.config_hash = "test"
        folder.save(state)
        self.states.append(folder.load_chain(state.chain))


def assert_same_chain(a: ChainResult, b: ChainResult) -> None:
    for f in fields(ChainResult):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if f.name == "seconds":
            continue
        if isinstance(x, torch.Tensor):
            assert isinstance(y, torch.Tensor) and x.dtype == y.dtype, f.name
            assert torch.equal(x, y), f.name
        else:
            assert x == y, f.name


def _resume_from_every_snapshot(tmp_path, problem, w_star, cfg, every, init_loss, cache=None):
    kw = dict(nbeta=cfg.nbeta, init_loss=init_loss, init_per_sample=cache)
    plain = run_chain(problem, w_star, cfg, 1, **kw)
    rec = Recorder(tmp_path, every)
    recorded = run_chain(problem, w_star, cfg, 1, checkpoint=rec, **kw)
    assert_same_chain(recorded, plain)  # taking snapshots changes nothing
    for state in rec.states:
        assert_same_chain(run_chain(problem, w_star, cfg, 1, resume=state, **kw), plain)
    return plain, rec.states


@pytest.mark.parametrize(
    "settings",
    [
        dict(),  # the default recipe: curvature step size, Fisher diagonal frozen in burn-in
        dict(preconditioner="rmsprop-burnin"),  # RMSProp frozen after burn-in
        dict(mala=True, preconditioner="rmsprop", draw_every=3),
        dict(step_size=0.01, preconditioner="identity"),
        dict(integrator="leimkuhler-matthews", mala=True),  # ξ_t is part of the state
        dict(fisher_start="curvature"),  # the first A, set at step 0, is in A's state
    ],
    ids=[
        "default",
        "rmsprop-burnin",
        "mala-rmsprop-thinned",
        "fixed-identity",
        "lm-mala",
        "fisher-start-curvature",
    ],
)
def test_run_chain_resumes_bit_identically_from_every_snapshot(tmp_path, settings):
    problem = TwoLayerProblem()
    cfg = SamplerConfig(batch_size=16, num_burnin=24, num_draws=12, nbeta=50.0, **settings)
    cache = problem.loss(W_STAR, problem.batch(torch.arange(64))).double()
    plain, states = _resume_from_every_snapshot(
        tmp_path, problem, W_STAR, cfg, 5, float(cache.mean()), cache
    )
    steps = [s.step for s in states]
    assert min(steps) < cfg.num_burnin < max(steps)  # snapshots in burn-in and in the draws
    if cfg.mala:
        assert len(plain.mala_acceptance) == cfg.num_draws


def test_run_chain_resumes_across_divergence_retries(tmp_path):
    # ε = 0.1 with nβ = 100 explodes (εh = 10), as does ε/2; ε/4 is stable (test_sampler).
    problem = QuadraticProblem()
    cfg = SamplerConfig(
        step_size=0.1,
        preconditioner="identity",
        batch_size=16,
        nbeta=100.0,
        localization=0.0,
        num_burnin=20,
        num_draws=30,
        check_every=10,
        divergence_retries=2,
    )
    w_star = problem.x.mean(0)
    init = float(problem.loss(w_star, problem.x).mean())
    plain, states = _resume_from_every_snapshot(tmp_path, problem, w_star, cfg, 4, init)
    assert len(plain.retries) == 2 and not plain.diverged
    assert {s.attempt for s in states} == {0, 1, 2}


# --------------------------------------------------------------------------------------------
# estimate_llc: stopped by a signal, resumed.

# The default recipe (curvature step size, RMSProp frozen after burn-in) with fewer and shorter
# curvature measurements than the default, for speed; run_chain above is tested with defaults.
CFG = dict(
    num_chains=2, num_burnin=30, num_draws=40, batch_size=64, num_adaptations=2, curvature_iters=4
)


@pytest.fixture(scope="module")
def dln():
    return make_dln_problem([4, 3, 4], 1, "aligned", num_samples=2000, seed=2)


@pytest.fixture(scope="module")
def reference(dln):
    model, data, _ = dln
    return estimate_llc(model, data, SamplerConfig(**CFG), progress=False)


def _comparable(result) -> dict:
    out = result.to_dict() if not isinstance(result, dict) else dict(result)
    out.pop("timings")
    return out


def _signal_at_save(monkeypatch, number, sig=signal.SIGTERM):
    """Send ``sig`` to this process while the ``number``-th chain snapshot is being saved."""
    calls = []
    save = RunCheckpoint.save

    def save_and_signal(self, state):
        calls.append((state.chain, state.step))
        if len(calls) == number:
            os.kill(os.getpid(), sig)
        save(self, state)

    monkeypatch.setattr(RunCheckpoint, "save", save_and_signal)
    return calls


@pytest.mark.parametrize(
    "stop_at,finished",
    [(2, []), (14, [0])],  # step 14 of chain 0 (burn-in); step 35 of chain 1 (draws)
    ids=["burn-in", "draws"],
)
def test_interrupted_estimate_resumes_to_the_uninterrupted_result(
    tmp_path, monkeypatch, dln, reference, stop_at, finished
):
    model, data, _ = dln
    out = tmp_path / "run"
    handler = signal.getsignal(signal.SIGTERM)
    calls = _signal_at_save(monkeypatch, stop_at)
    with pytest.raises(EstimateInterrupted) as stop:
        estimate_llc(
            model, data, SamplerConfig(**CFG), progress=False, output_dir=out, checkpoint_every=7
        )
    assert signal.getsignal(signal.SIGTERM) is handler  # the previous handler is back
    chain, step = calls[-1]
    assert (chain, step) == ((0, 14) if not finished else (1, 35))
    assert stop.value.signum == signal.SIGTERM and stop.value.exit_code == 143
    assert stop.value.finished_chains == finished
    assert "resume=True" in str(stop.value)
    assert not (out / RESULT).exists()
    status = json.loads((out / f"chain_{chain}.json").read_text())
    assert status["status"] == "running" and status["step"] == step

    # The partial result holds exactly the finished chains, with their final values.
    partial = json.loads((out / PARTIAL_RESULT).read_text())
    assert partial["diagnostics"]["partial"]["finished_chains"] == finished
    assert partial["llc_per_chain"] == reference.llc_per_chain[: len(finished)]

    monkeypatch.undo()
    resumed = estimate_llc(
        model, data, SamplerConfig(**CFG), progress=False, output_dir=out, resume=True
    )
    assert resumed.llc_per_chain == reference.llc_per_chain
    np.testing.assert_array_equal(resumed.loss_trace, reference.loss_trace)
    assert _comparable(resumed) == _comparable(reference)
    assert _comparable(json.loads((out / RESULT).read_text())) == _comparable(reference)
    assert not (out / PARTIAL_RESULT).exists()


@pytest.mark.parametrize("stop_at", [2, 9], ids=["burn-in", "draws"])
def test_batched_chains_checkpoint_and_resume_bit_identically(tmp_path, monkeypatch, dln, stop_at):
    model, data, _ = dln
    cfg = SamplerConfig(**CFG, chain_mode="batched")
    reference = estimate_llc(model, data, cfg, progress=False)
    assert reference.diagnostics["chain_mode"] == "batched"
    out = tmp_path / "run"
    calls = _signal_at_save(monkeypatch, stop_at)
    with pytest.raises(EstimateInterrupted):
        estimate_llc(model, data, cfg, progress=False, output_dir=out, checkpoint_every=7)
    # The chains are saved together, at the same step (2 saves per checkpoint).
    assert calls[-2:] == [(0, calls[-1][1]), (1, calls[-1][1])]
    monkeypatch.undo()
    resumed = estimate_llc(model, data, cfg, progress=False, output_dir=out, resume=True)
    assert resumed.diagnostics["chain_mode"] == "batched"
    np.testing.assert_array_equal(resumed.loss_trace, reference.loss_trace)
    assert _comparable(resumed) == _comparable(reference)


def test_interrupted_twice_and_finished_runs_resume_without_rerunning(
    tmp_path, monkeypatch, dln, reference
):
    model, data, _ = dln
    out, cfg = tmp_path / "run", SamplerConfig(**CFG)
    kw = dict(progress=False, output_dir=out, checkpoint_every=7)
    _signal_at_save(monkeypatch, 1, signal.SIGINT)  # Ctrl-C at step 7 of chain 0
    with pytest.raises(EstimateInterrupted) as stop:
        estimate_llc(model, data, cfg, **kw)
    assert stop.value.exit_code == 130
    monkeypatch.undo()
    _signal_at_save(monkeypatch, 6)  # step 49 of chain 0: from a resumed run's own snapshot
    with pytest.raises(EstimateInterrupted):
        estimate_llc(model, data, cfg, resume=True, **kw)
    monkeypatch.undo()
    assert _comparable(estimate_llc(model, data, cfg, resume=True, **kw)) == _comparable(reference)

    # A finished run resumes by loading every chain: no chain runs again.
    def no_chains(*args, **kwargs):
        raise AssertionError("a finished chain was rerun")

    monkeypatch.setattr("hf_llc.sampling.loop.run_stack", no_chains)
    again = estimate_llc(model, data, cfg, resume=True, **kw)
    assert _comparable(again) == _comparable(reference)


def test_a_run_from_the_flat_start_default_resumes_only_with_that_start(tmp_path, dln):
    # Runs saved before fisher_start="curvature" became the default left the flat start out of
    # their settings (it is not in their identity): the new default is refused, naming the
    # start as the run had it, and the run resumes with fisher_start="flat".
    model, data, _ = dln
    out = tmp_path / "run"
    small = dict(CFG, num_chains=1, num_draws=5, num_burnin=5)
    flat = SamplerConfig(**small, fisher_start="flat")
    first = estimate_llc(model, data, flat, progress=False, output_dir=out)
    assert "fisher_start" not in json.loads((out / "manifest.json").read_text())["config"]
    with pytest.raises(ValueError, match=r"fisher_start: saved 'flat' \(the value before"):
        estimate_llc(
            model, data, SamplerConfig(**small), progress=False, output_dir=out, resume=True
        )
    again = estimate_llc(model, data, flat, progress=False, output_dir=out, resume=True)
    assert _comparable(again) == _comparable(first)


def test_resume_refuses_other_settings_model_or_folder(tmp_path, dln):
    model, data, _ = dln
    out = tmp_path / "run"
    small = dict(CFG, num_chains=1, num_draws=5, num_burnin=5)
    estimate_llc(model, data, SamplerConfig(**small), progress=False, output_dir=out)
    with pytest.raises(ValueError, match=r"num_draws: saved 5, now 6.*output_dir"):
        cfg = SamplerConfig(**dict(small, num_draws=6))
        estimate_llc(model, data, cfg, progress=False, output_dir=out, resume=True)
    other, _, _ = make_dln_problem([4, 3, 4], None, "full_rank", num_samples=2000, seed=2)
    with pytest.raises(ValueError, match="weights_sha256"):
        estimate_llc(
            other, data, SamplerConfig(**small), progress=False, output_dir=out, resume=True
        )
    with pytest.raises(ValueError, match="already holds a run.*resume=True"):
        estimate_llc(model, data, SamplerConfig(**small), progress=False, output_dir=out)
    with pytest.raises(ValueError, match="holds no run"):
        estimate_llc(
            model,
            data,
            SamplerConfig(**small),
            progress=False,
            output_dir=tmp_path / "new",
            resume=True,
        )
    with pytest.raises(ValueError, match="needs output_dir"):
        estimate_llc(model, data, SamplerConfig(**small), progress=False, resume=True)
    with pytest.raises(ValueError, match="checkpoint_every"):
        estimate_llc(
            model,
            data,
            SamplerConfig(**small),
            progress=False,
            output_dir=tmp_path / "x",
            checkpoint_every=0,
        )


def test_checkpointing_outside_the_main_thread_runs_without_signal_handlers(tmp_path, dln):
    model, data, _ = dln
    cfg = SamplerConfig(**dict(CFG, num_chains=1, num_draws=5, num_burnin=5))
    got = {}

    def work():
        got["result"] = estimate_llc(
            model, data, cfg, progress=False, output_dir=tmp_path, checkpoint_every=2
        )

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    expected = estimate_llc(model, data, cfg, progress=False)
    assert _comparable(got["result"]) == _comparable(expected)
    assert json.loads((tmp_path / "chain_0.json").read_text())["status"] == "finished"


# --------------------------------------------------------------------------------------------
# The command line: Ctrl-C in-process, SIGTERM to a subprocess.

# A fixed step (≈ the curvature step these chains choose) keeps the command-line runs short;
# the curvature step size is covered above.
CLI_SHORT = ["--num-chains", "2", "--num-burnin", "30", "--num-draws", "40", "--batch-size", "64"]
CLI_SHORT += ["--step-size", "5e-4"]


@pytest.fixture(scope="module")
def saved_problem(tmp_path_factory, dln):
    model, data, _ = dln
    root = tmp_path_factory.mktemp("saved")
    model.save_pretrained(root / "model")
    data.save_to_disk(str(root / "data"))
    return root


def _cli_args(root, *extra):
    # The DLN architecture is registered with the Auto classes by importing hf_llc, not known
    # to transformers itself, so loading it by path needs --trust-remote-code (no code runs).
    model = [str(root / "model"), "--trust-remote-code"]
    return ["estimate", *model, "--dataset", str(root / "data"), "--quiet", *CLI_SHORT, *extra]


@pytest.fixture(scope="module")
def cli_reference(saved_problem, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "ref.json"
    assert main(_cli_args(saved_problem, "--output", str(out))) == 0
    return json.loads(out.read_text())


def test_cli_ctrl_c_prints_the_resume_command_and_resume_matches(
    tmp_path, monkeypatch, capsys, saved_problem, cli_reference
):
    run, out = tmp_path / "run", tmp_path / "out.json"
    args = _cli_args(saved_problem, "--output-dir", str(run), "--checkpoint-every", "10")
    args += ["--output", str(out)]
    _signal_at_save(monkeypatch, 2, signal.SIGINT)
    assert main(args) == 130
    err = capsys.readouterr().err
    assert "SIGINT" in err and "0 of 2 chains finished" in err
    command = err.strip().splitlines()[-1]
    assert command.startswith("To resume, run: hf-llc estimate")
    assert not out.exists() and (run / PARTIAL_RESULT).exists()
    monkeypatch.undo()
    argv = shlex.split(command.removeprefix("To resume, run: hf-llc "))
    assert argv == args + ["--resume"]
    assert main(argv) == 0
    assert _comparable(json.loads(out.read_text())) == _comparable(cli_reference)


# Slows every checkpoint down so that SIGTERM reliably lands mid-run; the rest is `python -m
# hf_llc` as a user runs it.
PACED_CLI = """
import runpy, sys, time
from hf_llc.checkpoint import RunCheckpoint
save = RunCheckpoint.save
def paced(self, state):
    save(self, state)
    time.sleep(0.2)
RunCheckpoint.save = paced
sys.argv = ["hf_llc", *sys.argv[1:]]
runpy.run_module("hf_llc", run_name="__main__", alter_sys=True)
"""


def test_cli_sigterm_in_a_subprocess_then_resume_matches(tmp_path, saved_problem, cli_reference):
    script = tmp_path / "paced.py"
    script.write_text(PACED_CLI)
    run, out = tmp_path / "run", tmp_path / "out.json"
    args = _cli_args(saved_problem, "--output-dir", str(run), "--checkpoint-every", "5")
    args += ["--output", str(out)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    proc = subprocess.Popen(
        [sys.executable, str(script), *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    status = run / "chain_0.json"
    deadline = time.monotonic() + 240
    while not (status.exists() and json.loads(status.read_text()).get("step", 99) >= 10):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr
    assert "SIGTERM" in stderr
    command = stderr.strip().splitlines()[-1]
    assert command.startswith("To resume, run: python -m hf_llc estimate"), stderr
    assert command.endswith("--resume")
    assert not out.exists() and (run / "manifest.json").exists()
    assert (run / PARTIAL_RESULT).exists() and (run / "chain_0.safetensors").exists()

    argv = shlex.split(command.removeprefix("To resume, run: python -m hf_llc "))
    assert main(argv) == 0
    resumed = json.loads(out.read_text())
    assert resumed["llc_per_chain"] == cli_reference["llc_per_chain"]
    assert resumed["loss_trace"] == cli_reference["loss_trace"]
    assert _comparable(resumed) == _comparable(cli_reference)
