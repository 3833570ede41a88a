"""hf_llc (sequential and batched chains) side by side with devinterp, in one process.

Same model, same data, same SGLD: fixed step ε, localization γ, nβ, batch m, chains, burn-in
and draws, identity preconditioner, and the same per-sample loss (for the deep linear network
devinterp gets hf_llc's ½·squared error summed over outputs through its ``loss_fn``, so both
estimate the same λ; for the causal LM both use the mean next-token cross-entropy). For every
configuration the three runs are interleaved (devinterp, hf_llc sequential, hf_llc batched,
repeated ``--rounds`` times) and the script prints:

* wall-time ratios devinterp / hf_llc (whole estimate: init loss, chains, results); both
  take the init loss L(w*) from 32 batches' worth of samples (devinterp's default
  ``num_init_loss_batches``; hf_llc's ``init_loss_samples = 32·m``);
* the SGLD step time over the floor, one plain training step (forward, backward,
  ``torch.optim.SGD.step``) of the same model on the same minibatch size, timed again in
  every round (median over rounds); for hf_llc the step
  time is its sampling time (``timings["sampling_seconds"]``, L_n(w*) excluded) / (chains ×
  steps); devinterp reports no such split, so its column is its whole wall time / (chains ×
  steps), an upper bound that includes its setup and init-loss batches;
* peak resident memory added by the run (VmHWM, reset before each run) over the parameter
  bytes — with activations, data gathers and each tool's buffers included;
* both tools' λ̂ ± standard error over chains (devinterp's λ̂ from its draws only, with its
  own init loss; on the DLN they must agree within their standard errors).

Run ``python benchmarks/bench_devinterp.py --help``; see ``benchmarks/README.md``.
Needs the ``bench`` extra (``pip install -e .[bench]``; install devinterp with ``--no-deps``
if its pins would replace your torch).
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings

os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch
from _common import cores

from hf_llc import SamplerConfig, estimate_llc
from hf_llc.models.dln import make_dln_problem


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--quick", action="store_true", help="tiny run to check the script works")
    p.add_argument("--chains", type=int, nargs="+", default=[4, 16])
    p.add_argument("--draws", type=int, default=1000)
    p.add_argument("--burnin", type=int, default=100)
    p.add_argument("--rounds", type=int, default=1, help="interleaved repetitions")
    p.add_argument("--widths", type=int, nargs="+", default=[50, 50, 50, 50, 50])
    p.add_argument("--num-samples", type=int, default=100_000, help="n of the DLN data")
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--step-size", type=float, default=1e-6, help="ε (DLN)")
    p.add_argument("--localization", type=float, default=1.0, help="γ")
    p.add_argument("--skip-dln", action="store_true")
    p.add_argument("--skip-lm", action="store_true")
    p.add_argument("--lm-chains", type=int, nargs="+", default=[4])
    p.add_argument("--lm-draws", type=int, default=50)
    p.add_argument("--lm-burnin", type=int, default=10)
    p.add_argument("--lm-batch-size", type=int, default=8)
    p.add_argument("--lm-seq-len", type=int, default=64)
    p.add_argument("--lm-step-size", type=float, default=1e-5, help="ε (causal LM)")
    p.add_argument("--threads", type=int, default=cores())
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.quick:
        args.chains, args.draws, args.burnin = [2], 20, 5
        args.num_samples, args.lm_draws, args.lm_burnin, args.lm_chains = 5000, 5, 2, [2]
    return args


# --------------------------------------------------------------------------- measurement


def _status_kib(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def measure(fn):
    """(result, wall seconds, peak extra resident bytes) of fn()."""
    import gc

    gc.collect()
    try:  # hand freed heap pages back, so that a run reusing them still shows its peak
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    base = _status_kib("VmRSS")
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current RSS
    except OSError:
        pass
    t0 = time.perf_counter()
    out = fn()
    wall = time.perf_counter() - t0
    peak = max(0, _status_kib("VmHWM") - base) * 1024
    return out, wall, peak


def train_step_time(model, batches, loss_of, steps: int) -> float:
    """Seconds per plain training step (forward, backward, SGD step, zero_grad)."""
    import copy

    m = copy.deepcopy(model).train()
    opt = torch.optim.SGD(m.parameters(), lr=1e-9)
    for i in range(max(5, steps // 10)):  # warm-up
        loss_of(m, batches(i)).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    t0 = time.perf_counter()
    for i in range(steps):
        loss_of(m, batches(i)).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return (time.perf_counter() - t0) / steps


def _mean_se(values) -> tuple[float, float]:
    v = np.asarray(values, dtype=float)
    return float(v.mean()), float(v.std(ddof=1) / math.sqrt(len(v))) if len(v) > 1 else 0.0


# --------------------------------------------------------------------------- the two tools


def run_devinterp(model, dataset, *, loss_fn, eps, nbeta, gamma, m, chains, burnin, draws, seed):
    """devinterp 2.x ``sample``: returns per-chain λ̂ from its draws (burn-in excluded)."""
    import xarray as xr  # noqa: F401  (devinterp's result type)
    from devinterp.slt.sampling import sample

    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tree = sample(
            model=model,
            dataset=dataset,
            observables={},
            lr=eps,
            n_beta=nbeta,
            localization=gamma,
            num_chains=chains,
            num_draws=draws,
            num_burnin_steps=burnin,
            batch_size=m,
            init_seed=seed,
            match_sampling_input_ids_across_chains=False,  # independent data order per chain
            device="cpu",
            output_path=os.path.join(tmp, "samples.zarr"),
            loss_fn=loss_fn,
        )
        ds = tree.dataset
        init = float(ds.init_loss.values.mean())
        draws_loss = ds.sampling_loss.values  # (chain, draw, batch, token_pos)
        per_chain = nbeta * (draws_loss.reshape(chains, -1).mean(axis=1) - init)
    return [float(x) for x in per_chain]


def run_hf_llc(
    model, dataset, *, mode, eps, nbeta, gamma, m, chains, burnin, draws, seed, init_samples
):
    cfg = SamplerConfig(
        step_size=eps,
        integrator="euler",  # devinterp's update (the default up to hf_llc 0.1)
        preconditioner="identity",
        nbeta=nbeta,
        localization=gamma,
        batch_size=m,
        num_chains=chains,
        num_burnin=burnin,
        num_draws=draws,
        seed=seed,
        chain_mode=mode,
        init_loss_samples=init_samples,
    )
    result = estimate_llc(model, dataset, cfg, progress=False)
    return result


# --------------------------------------------------------------------------- problems


def dln_problem(args):
    from datasets import Dataset

    model, dataset, lam = make_dln_problem(
        args.widths, construction="full_rank", num_samples=args.num_samples, seed=args.seed
    )
    cols = dataset.with_format("torch")
    X, Y = cols["inputs"][:], cols["labels"][:]
    n = len(X)
    # devinterp's data must be an "input_ids" column; it carries the row index, and its
    # loss_fn looks the row up (a tensor index, cheaper than storing x and y per token).
    idx = np.arange(n, dtype=np.int64)
    dv_data = Dataset.from_dict({"input_ids": np.stack([idx, idx], 1)}).with_format("torch")

    def dv_loss(mod, input_ids):
        rows = input_ids[:, 0]
        out = mod(inputs=X[rows]).logits
        return mod.per_sample_loss(out, Y[rows])[:, None]  # ½‖f(x) − y‖²: hf_llc's loss

    def batches(i):
        g = torch.Generator().manual_seed(i)
        r = torch.randint(0, n, (args.batch_size,), generator=g)
        return X[r], Y[r]

    def loss_of(mod, b):
        return mod(inputs=b[0], labels=b[1]).loss

    return dict(
        name=f"DLN {'-'.join(map(str, args.widths))} (d = {model.num_parameters():,})",
        model=model,
        # hf_llc gets the same tensors as a dict (documented input; no second copy of the
        # data, so the memory column shows the sampler, not a dataset conversion).
        hf_data={"inputs": X, "labels": Y},
        dv_data=dv_data,
        dv_loss=dv_loss,
        n=n,
        nbeta=n / math.log(n),
        eps=args.step_size,
        m=args.batch_size,
        burnin=args.burnin,
        draws=args.draws,
        chain_counts=args.chains,
        floor_steps=200,
        batches=batches,
        loss_of=loss_of,
        truth=float(lam),
    )


def lm_problem(args):
    from datasets import Dataset
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(args.seed)
    config = GPT2Config(
        vocab_size=4096,
        n_positions=args.lm_seq_len,
        n_embd=256,
        n_layer=4,
        n_head=4,
        attn_pdrop=0.0,
        embd_pdrop=0.0,
        resid_pdrop=0.0,
    )
    model = GPT2LMHeadModel(config).eval()
    n = 2000
    gen = torch.Generator().manual_seed(args.seed)
    ids = torch.randint(0, config.vocab_size, (n, args.lm_seq_len), generator=gen)
    data = Dataset.from_dict({"input_ids": ids.numpy()})

    def batches(i):
        g = torch.Generator().manual_seed(i)
        return ids[torch.randint(0, n, (args.lm_batch_size,), generator=g)]

    def loss_of(mod, b):
        return mod(input_ids=b, labels=b, use_cache=False).loss

    return dict(
        name=f"GPT-2-style causal LM (d = {model.num_parameters():,}, seq {args.lm_seq_len})",
        model=model,
        hf_data=data,
        dv_data=data.with_format("torch"),
        dv_loss=None,  # devinterp's default: mean next-token cross-entropy, as hf_llc's
        n=n,
        nbeta=n / math.log(n),
        eps=args.lm_step_size,
        m=args.lm_batch_size,
        burnin=args.lm_burnin,
        draws=args.lm_draws,
        chain_counts=args.lm_chains,
        floor_steps=30,
        batches=batches,
        loss_of=loss_of,
        truth=None,
    )


# --------------------------------------------------------------------------- main


def bench(problem, args) -> list[dict]:
    model = problem["model"]
    param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    _, _, floor_mem = measure(
        lambda: train_step_time(
            model, problem["batches"], problem["loss_of"], steps=problem["floor_steps"]
        )
    )
    rows = []
    for chains in problem["chain_counts"]:
        steps = problem["burnin"] + problem["draws"]
        common = dict(
            eps=problem["eps"],
            nbeta=problem["nbeta"],
            gamma=args.localization,
            m=problem["m"],
            chains=chains,
            burnin=problem["burnin"],
            draws=problem["draws"],
            seed=args.seed,
        )
        init_n = min(32 * problem["m"], problem["n"])
        runs: dict[str, list] = {"devinterp": [], "sequential": [], "batched": []}
        floors = []
        for _ in range(args.rounds):
            # The floor in every round, next to the runs it divides (the machine's speed drifts).
            floors.append(
                train_step_time(
                    model, problem["batches"], problem["loss_of"], problem["floor_steps"]
                )
            )
            runs["devinterp"].append(
                measure(
                    lambda c=common: run_devinterp(
                        model, problem["dv_data"], loss_fn=problem["dv_loss"], **c
                    )
                )
            )
            for mode in ("sequential", "batched"):
                res = measure(
                    lambda c=common, mo=mode, k=init_n: run_hf_llc(
                        model, problem["hf_data"], mode=mo, init_samples=k, **c
                    )
                )
                ran = res[0].diagnostics["chain_mode"]
                if ran != mode:
                    print(f"  note: chain_mode={mode!r} ran {ran!r}", file=sys.stderr)
                sampling = res[0].timings["sampling_seconds"]
                runs[mode].append((res[0].llc_per_chain, res[1], res[2], ran, sampling))
        dv_wall = statistics.median(w for _, w, _ in runs["devinterp"])
        floor = statistics.median(floors)
        dv_llc, dv_se = _mean_se(runs["devinterp"][-1][0])
        row = dict(
            problem=problem["name"],
            chains=chains,
            steps=steps,
            devinterp_s=dv_wall,
            devinterp_step_over_floor=dv_wall / (chains * steps) / floor,
            devinterp_mem=max(p for _, _, p in runs["devinterp"]) / param_bytes,
            devinterp_llc=(dv_llc, dv_se),
            floor_ms=floor * 1e3,
            floor_spread_ms=(min(floors) * 1e3, max(floors) * 1e3),
            floor_mem=floor_mem / param_bytes,
            truth=problem["truth"],
        )
        for mode in ("sequential", "batched"):
            wall = statistics.median(r[1] for r in runs[mode])
            sampling = statistics.median(r[4] for r in runs[mode])
            llc, se = _mean_se(runs[mode][-1][0])
            row[mode] = dict(
                s=wall,
                ratio=dv_wall / wall,
                step_over_floor=sampling / (chains * steps) / floor,
                mem=max(r[2] for r in runs[mode]) / param_bytes,
                llc=(llc, se),
                ran=runs[mode][-1][3],
            )
        rows.append(row)
        print_row(row, file=sys.stderr)
    return rows


def print_row(r, file=sys.stdout):
    print(
        f"  {r['problem']}, {r['chains']} chains × {r['steps']} steps: devinterp "
        f"{r['devinterp_s']:.1f} s, sequential {r['sequential']['s']:.1f} s, batched "
        f"{r['batched']['s']:.1f} s",
        file=file,
    )


def _fmt_llc(pair) -> str:
    return f"{pair[0]:.4g} ± {pair[1]:.2g}"


def table(rows) -> str:
    out = [
        "| model | chains × steps | devinterp / hf_llc seq. | devinterp / hf_llc batched "
        "| step / train step: devinterp · seq. · batched "
        "| peak mem / param bytes: devinterp · seq. · batched "
        "| λ̂ ± se: devinterp · seq. · batched |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        s, b = r["sequential"], r["batched"]
        truth = f" (λ = {r['truth']:.6g})" if r["truth"] is not None else ""
        note = "" if b["ran"] == "batched" else f" (ran {b['ran']})"
        out.append(
            f"| {r['problem']}{truth} | {r['chains']} × {r['steps']} "
            f"| **{s['ratio']:.2f}×** | **{b['ratio']:.2f}×**{note} "
            f"| {r['devinterp_step_over_floor']:.2f} · {s['step_over_floor']:.2f} · "
            f"{b['step_over_floor']:.2f} "
            f"| {r['devinterp_mem']:.1f} · {s['mem']:.1f} · {b['mem']:.1f} "
            f"| {_fmt_llc(r['devinterp_llc'])} · {_fmt_llc(s['llc'])} · {_fmt_llc(b['llc'])} |"
        )
    return "\n".join(out)


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    from importlib.metadata import version

    print(
        f"torch {torch.__version__}, devinterp {version('devinterp')}, {args.threads} threads, "
        f"{platform.processor() or platform.machine()}"
    )
    rows = []
    if not args.skip_dln:
        rows += bench(dln_problem(args), args)
    if not args.skip_lm:
        rows += bench(lm_problem(args), args)
    print(table(rows))
    for r in rows:
        lo, hi = r["floor_spread_ms"]
        print(
            f"floor (train step) for {r['problem']}, {r['chains']} chains: {r['floor_ms']:.2f} "
            f"ms (median of the rounds; {lo:.2f}–{hi:.2f}), peak memory "
            f"{r['floor_mem']:.1f} × parameter bytes"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
