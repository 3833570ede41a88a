"""One GPU: the LLC of a 10⁸-parameter deep linear network in bf16, against Aoyagi's λ.

Furman & Lau (arXiv 2402.03698) validate the estimator on deep linear networks up to ~10⁸
parameters. This script builds one of that size (default: 10 layers of width 3162,
d = 99,982,440), a teacher at a point where the local coefficient equals Aoyagi's global λ
(default ``full_rank``), n samples generated on the GPU (noiseless labels), and runs
``estimate_llc`` with the default recipe under bf16 autocast (parameters, w*, noise and the
update stay fp32). It prints the time per SGLD step (measured first on a 100-step run), the total
time of the estimate, λ̂ ± standard error, λ and the relative error.

Sized to finish in under 8 minutes on one H100/H200-class GPU (4 chains × 2,500 steps at a
few ms per step, plus L_n(w*), curvature estimates and start-up); ``--max-minutes`` shrinks
the draws if the measured step time says the run would not fit. ``--cpu-check`` runs the same
code path at a tiny size on the CPU (to test the script without a GPU).

    python benchmarks/gpu_dln_100m.py                 # on a GPU machine
    python benchmarks/gpu_dln_100m.py --cpu-check     # smoke test anywhere
"""

from __future__ import annotations

import argparse
import math
import sys
import time

import torch

from hf_llc import SamplerConfig, estimate_llc
from hf_llc.models.dln import dln_learning_coefficient, make_dln_problem


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--width", type=int, default=3162)
    p.add_argument("--layers", type=int, default=10)
    p.add_argument("--construction", default="full_rank", choices=["full_rank", "origin"])
    p.add_argument("--num-samples", type=int, default=100_000)
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--num-chains", type=int, default=4)
    p.add_argument("--num-burnin", type=int, default=1000)
    p.add_argument("--num-draws", type=int, default=1500)
    p.add_argument("--chain-mode", default="auto", choices=["auto", "batched", "sequential"])
    p.add_argument("--mixed-precision", default="bf16", choices=["bf16", "no"])
    p.add_argument("--max-minutes", type=float, default=7.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cpu-check", action="store_true", help="tiny run on the CPU")
    args = p.parse_args(argv)
    if args.cpu_check:
        args.width, args.layers, args.num_samples = 16, 3, 4000
        args.batch_size, args.num_burnin, args.num_draws = 64, 50, 100
        args.mixed_precision = "no"
    return args


def build(args, device):
    widths = [args.width] * (args.layers + 1)
    # The teacher's weights from the library (num_samples=1: its own data is not used), then
    # n inputs drawn on the device and noiseless labels y = f(x) (no 2.5 GB Arrow table).
    model, _, lam = make_dln_problem(
        widths, construction=args.construction, num_samples=1, seed=args.seed
    )
    model = model.to(device).eval()
    gen = torch.Generator(device=device).manual_seed(args.seed)
    x = torch.randn(args.num_samples, args.width, generator=gen, device=device)
    with torch.no_grad():
        y = torch.cat([model(inputs=chunk).logits for chunk in x.split(4096)])
    rank = 0 if args.construction == "origin" else args.width
    lam_check, mult = dln_learning_coefficient(widths, rank)
    assert lam_check == lam
    return model, {"inputs": x, "labels": y}, float(lam), mult


def config(args, draws, burnin, chains) -> SamplerConfig:
    return SamplerConfig(
        num_chains=chains,
        num_burnin=burnin,
        num_draws=draws,
        batch_size=args.batch_size,
        seed=args.seed,
        chain_mode=args.chain_mode,
    )


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.cpu_check:
        device = torch.device("cpu")
    elif not torch.cuda.is_available():
        print("no CUDA device: run with --cpu-check for a CPU smoke test", file=sys.stderr)
        return 2
    else:
        device = torch.device("cuda")
        torch.backends.cuda.matmul.allow_tf32 = True
    t_start = time.perf_counter()
    model, data, lam, mult = build(args, device)
    d = model.num_parameters()
    print(
        f"DLN {args.layers} layers × width {args.width}: d = {d:,}, {args.construction}, "
        f"n = {args.num_samples:,}, λ = {lam:g} (multiplicity {mult}), {args.mixed_precision}, "
        f"device {torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}"
    )

    # 1. Step time from a short fixed-step run (sampling time only: L_n(w*) excluded).
    steps = 100
    cfg = config(args, steps, 0, args.num_chains)
    cfg = SamplerConfig(**{**cfg.to_dict(), "step_size": 1e-9, "preconditioner": "identity"})
    r = estimate_llc(model, data, cfg, mixed_precision=args.mixed_precision, progress=False)
    per_step = r.timings["sampling_seconds"] / (steps * args.num_chains)
    print(
        f"SGLD step (per chain, {r.diagnostics['chain_mode']} chains, {args.num_chains} chains): "
        f"{per_step * 1e3:.2f} ms; L_n(w*) pass {r.timings['init_loss_seconds']:.1f} s"
    )

    # 2. Fit the run into the time budget (the curvature estimates cost ≈ 10% extra).
    left = args.max_minutes * 60 - (time.perf_counter() - t_start)
    budget_steps = int(0.85 * left / (per_step * args.num_chains * 1.1))
    burnin, draws = args.num_burnin, args.num_draws
    if burnin + draws > budget_steps:
        scale = budget_steps / (burnin + draws)
        burnin, draws = max(100, int(burnin * scale)), max(200, int(draws * scale))
        print(f"time budget: shrinking to {burnin} burn-in + {draws} draws per chain")

    # 3. The estimate with the default recipe (curvature step size, rmsprop-burnin).
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    result = estimate_llc(
        model,
        data,
        config(args, draws, burnin, args.num_chains),
        mixed_precision=args.mixed_precision,
        progress=False,
    )
    total = time.perf_counter() - t0
    err = (result.llc_mean - lam) / lam
    print(result.summary())
    print(
        f"λ̂ = {result.llc_mean:.6g} ± {result.llc_stderr:.3g} (se), λ = {lam:g}, "
        f"relative error {err:+.2%}; estimate took {total:.1f} s "
        f"({result.diagnostics['chain_mode']} chains, {args.num_chains} × {burnin + draws} steps)"
    )
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated()
        ratio = peak / (4 * d)
        print(f"peak GPU memory {peak / 2**30:.2f} GiB = {ratio:.2f} × fp32 parameter bytes")
    print(
        f"divergences: {len(result.diagnostics['divergences'])}; "
        f"wall time of this script {time.perf_counter() - t_start:.1f} s"
    )
    return 0 if math.isfinite(result.llc_mean) else 1


if __name__ == "__main__":
    sys.exit(main())
