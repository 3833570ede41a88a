"""Chains over processes (accelerate, CPU) and mixed precision."""

from __future__ import annotations

import gc
import json
import logging
import os
import subprocess
import sys
import warnings

import pytest
import torch

import hf_llc.sampling.loop as loop_mod
from hf_llc import SamplerConfig, estimate_llc, make_dln_problem
from hf_llc.distributed import ProcessInfo, resolve_mixed_precision

CFG = dict(num_chains=3, num_burnin=30, num_draws=40, batch_size=64)


def _problem():
    return make_dln_problem([4, 3, 4], 1, "aligned", num_samples=2000, seed=2)


def test_chain_assignment_covers_every_chain_once():
    class S:
        def __init__(self, p, i):
            self.num_processes, self.process_index, self.device = p, i, torch.device("cpu")

    for procs in (1, 2, 3, 5):
        got = sorted(c for i in range(procs) for c in ProcessInfo(S(procs, i), None).my_chains(4))
        assert got == [0, 1, 2, 3]


TWO_PROCESS_SCRIPT = """
import json, sys
from accelerate import PartialState, debug_launcher
from hf_llc import SamplerConfig, estimate_llc, make_dln_problem

def run(out_path):
    model, data, _ = make_dln_problem([4, 3, 4], 1, "aligned", num_samples=2000, seed=2)
    cfg = SamplerConfig(**json.loads(sys.argv[2]))
    result = estimate_llc(model, data, cfg, progress=False)
    state = PartialState()
    assert result.diagnostics["num_processes"] == 2
    if state.is_main_process:
        with open(out_path, "w") as f:
            json.dump(result.to_dict(), f)
    state.wait_for_everyone()

if __name__ == "__main__":
    debug_launcher(run, args=(sys.argv[1],), num_processes=2)
"""


def test_one_and_two_processes_give_identical_chains(tmp_path):
    # accelerate's debug_launcher forks; forking a process whose OpenMP threads have already
    # run (this pytest process) can deadlock, so the two processes start from a fresh
    # interpreter.
    script = tmp_path / "two.py"
    script.write_text(TWO_PROCESS_SCRIPT)
    out = tmp_path / "two.json"
    # Bit-identity needs sequential chains: batched chains (chain_mode "auto"/"batched") equal
    # them only up to float rounding, which depends on how many chains share a batch
    # (tests/test_batched.py).
    cfg = dict(CFG, chain_mode="sequential")
    subprocess.run(
        [sys.executable, str(script), str(out), json.dumps(cfg)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    two = json.loads(out.read_text())
    model, data, _ = _problem()
    one = estimate_llc(model, data, SamplerConfig(**cfg), progress=False)
    assert two["llc_per_chain"] == one.llc_per_chain  # bit-identical, chain by chain
    assert two["loss_trace"] == one.to_dict()["loss_trace"]


def test_bf16_agrees_with_fp32_and_keeps_fp32_state():
    model, data, lam = make_dln_problem([6, 4, 6], 4, "full_rank", num_samples=20_000)
    cfg = SamplerConfig(num_chains=4, num_burnin=500, num_draws=1000)
    fp32 = estimate_llc(model, data, cfg, progress=False)
    bf16 = estimate_llc(model, data, cfg, mixed_precision="bf16", progress=False)
    assert bf16.diagnostics["mixed_precision"] == "bf16"
    assert all(p.dtype == torch.float32 for p in model.parameters())
    # bf16 rounds the forward/backward to 8 mantissa bits (relative 2^-8 ≈ 0.4% per op): the
    # loss differences that make λ̂ are relative to L_n(w*) = 0 here, so the estimate moves by
    # a few percent at most; with 4 chains the chain-to-chain standard error is ≈ 2-3% of λ.
    # Allow 10% of λ plus 3 standard errors of the difference.
    se = (fp32.llc_stderr**2 + bf16.llc_stderr**2) ** 0.5
    assert abs(bf16.llc_mean - fp32.llc_mean) <= 0.10 * float(lam) + 3 * se


def test_fp16_runs_in_fp32_with_a_logged_warning(caplog):
    # fp16 (no loss scaling) would bias SGLD: asked for it, the chains run in fp32 instead, the
    # same run as mixed_precision="no", and a warning says how to silence it.
    model, data, _ = _problem()
    cfg = SamplerConfig(**CFG)
    fp32 = estimate_llc(model, data, cfg, mixed_precision="no", progress=False)
    with caplog.at_level(logging.WARNING, logger="hf_llc"):
        fp16 = estimate_llc(model, data, cfg, mixed_precision="fp16", progress=False)
    assert fp16.llc_per_chain == fp32.llc_per_chain
    (notice,) = [r for r in caplog.records if "fp16" in r.getMessage()]
    assert notice.levelno == logging.WARNING and notice.name == "hf_llc.distributed"
    text = notice.getMessage()
    assert "sampling in fp32" in text and "ACCELERATE_MIXED_PRECISION=bf16 or no" in text
    with pytest.raises(ValueError, match="mixed_precision"):
        estimate_llc(model, data, cfg, mixed_precision="fp8", progress=False)


def test_fp16_from_the_accelerator_or_the_environment_is_fp32_too(monkeypatch, caplog):
    class Accelerator:  # what resolve_mixed_precision reads of an accelerate.Accelerator
        mixed_precision = "fp16"

    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "fp16")
    with caplog.at_level(logging.WARNING, logger="hf_llc"):
        from_env = resolve_mixed_precision(None, None)
        from_accelerator = resolve_mixed_precision(None, Accelerator())
        explicit_bf16 = resolve_mixed_precision("bf16", Accelerator())
    assert (from_env, from_accelerator, explicit_bf16) == ("no", "no", "bf16")
    sources = [r.getMessage() for r in caplog.records if r.name == "hf_llc.distributed"]
    assert len(sources) == 2
    assert "(from ACCELERATE_MIXED_PRECISION)" in sources[0]
    assert "(from the accelerator)" in sources[1]
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    assert resolve_mixed_precision(None, None) == "bf16"


@pytest.mark.slow
def test_cli_under_accelerate_launch_matches_one_process(tmp_path):
    args = [
        "validate",
        "--widths",
        "4,3,4",
        "--rank",
        "1",
        "--construction",
        "aligned",
        "--num-samples",
        "2000",
        "--num-chains",
        "3",
        "--num-draws",
        "40",
        "--num-burnin",
        "30",
        "--batch-size",
        "64",
        "--no-progress",
    ]
    env = dict(os.environ, ACCELERATE_USE_CPU="1")
    two, one = tmp_path / "two.json", tmp_path / "one.json"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--multi_gpu",
            "--num_processes",
            "2",
            "-m",
            "hf_llc",
            *args,
            "--output",
            str(two),
        ],
        check=True,
        env=env,
        capture_output=True,
    )
    subprocess.run(
        [sys.executable, "-m", "hf_llc", *args, "--output", str(one)],
        check=True,
        capture_output=True,
    )
    a, b = json.loads(two.read_text())["cases"][0], json.loads(one.read_text())["cases"][0]
    assert a["llc_per_chain"] == b["llc_per_chain"]


PEAK_SCRIPT = """
import resource, sys
from hf_llc import SamplerConfig, estimate_llc, make_dln_problem
model, data, _ = make_dln_problem([1000, 1000], construction="full_rank", num_samples=256)
cfg = SamplerConfig(num_chains=int(sys.argv[1]), num_burnin=3, num_draws=3, batch_size=32,
                    step_size=1e-8, chain_mode=sys.argv[2])
estimate_llc(model, data, cfg, progress=False)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)  # KiB on Linux
"""


@pytest.mark.skipif(sys.platform != "linux", reason="ru_maxrss units differ by platform")
def test_memory_does_not_grow_with_the_number_of_chains(tmp_path):
    """Sequential chains on one device run one after another and free their state: the peak
    memory of 8 chains is that of 1 chain. One chain's state (flat parameters, gradient and
    RMSProp's R, 3 × 4 MB for this 10⁶-parameter model) kept per chain would add ≈ 84 MB over
    8 chains; a 40 MB margin separates the two cleanly."""
    script = tmp_path / "peak.py"
    script.write_text(PEAK_SCRIPT)
    peaks = {}
    for chains in (1, 8):
        out = subprocess.run(
            [sys.executable, str(script), str(chains), "sequential"],
            check=True,
            capture_output=True,
            text=True,
            timeout=300,
        )
        peaks[chains] = int(out.stdout.strip().splitlines()[-1]) / 1024  # MiB
    assert peaks[8] - peaks[1] < 40, peaks


def _live_storages(min_bytes: int = 0) -> dict[int, int]:
    """data pointer → bytes of every live tensor storage of at least ``min_bytes``."""
    with warnings.catch_warnings():  # isinstance() on deprecated torch objects warns
        warnings.simplefilter("ignore")
        tensors = [o for o in gc.get_objects() if isinstance(o, torch.Tensor)]
    found = {}
    for t in tensors:
        st = t.untyped_storage()
        if st.nbytes() >= min_bytes and st.data_ptr():
            found[st.data_ptr()] = st.nbytes()
    return found


@pytest.mark.parametrize("mode", ["sequential", "batched"])
@pytest.mark.parametrize("preconditioner", ["identity", "rmsprop-burnin", "fisher-burnin"])
def test_sampler_state_is_parameters_gradient_and_preconditioner(monkeypatch, mode, preconditioner):
    """At every SGLD step the sampler holds, per chain, the parameters and the gradient (whose
    buffer also takes the drift and the noise), plus RMSProp's R = √V, or the Fisher
    diagonal's window sum S and, until its freeze, its current A (then √A in S's place);
    w* once for all chains; and, until the last step-size measurement, the power-iteration
    warm start in bf16 (half a vector). Counted exactly: every live parameter-sized tensor
    storage allocated since before the estimate (the model's own parameters are not
    counted)."""
    model, data, _ = make_dln_problem([600, 600], construction="full_rank", num_samples=256)
    d = model.num_parameters()
    chains = 3
    before = set(_live_storages())
    seen: list[float] = []

    def recording(step):
        def wrapper(*args, **kwargs):
            # ≥ 2d bytes: parameter-sized fp32 and bf16 vectors, not the 256 × 600 data.
            new = [b for p, b in _live_storages(2 * d).items() if p not in before]
            seen.append(sum(new) / (4 * d))
            return step(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(loop_mod, "sgld_step_", recording(loop_mod.sgld_step_))
    monkeypatch.setattr(loop_mod, "sgld_step_chains_", recording(loop_mod.sgld_step_chains_))
    cfg = SamplerConfig(
        num_chains=chains,
        num_burnin=4,
        num_draws=3,
        batch_size=32,
        num_adaptations=1,
        chain_mode=mode,
        preconditioner=preconditioner,
    )
    estimate_llc(model, data, cfg, progress=False)
    per_chain = 2 if preconditioner == "identity" else 3
    burnin = 1.0 if preconditioner == "fisher-burnin" else 0.0  # the current A until the freeze
    warm = 0.5  # the bf16 power-iteration vector, until the last measurement
    if mode == "sequential":  # one chain at a time
        assert len(seen) == chains * cfg.num_steps
        assert max(seen) == per_chain + burnin + 1 + warm  # + w*
        assert seen[-1] == per_chain + 1  # after the last measurement
    else:
        assert len(seen) == cfg.num_steps
        assert max(seen) == chains * (per_chain + burnin + warm) + 1
        assert seen[-1] == chains * per_chain + 1
