"""Batched against sequential chains on small transformers, and both against a training step.

For GPT-2-, Llama- (grouped-query attention) and BERT-style models built from a config (random
weights, random tokens: the cost of a step does not depend on the values), this script times,
interleaved in one process, per chain and per step:

* ``train``: one training step of one minibatch: ``model(**batch).loss``, ``backward``,
  ``torch.optim.SGD.step``, ``zero_grad`` (under the same autocast as the chains);
* ``sequential``: ``estimate_llc`` with ``chain_mode="sequential"`` (C chains one after another);
* ``batched``: the same with ``chain_mode="batched"`` (C chains under ``torch.func.vmap``).

Both chain runs use a fixed step size and no preconditioner (no curvature estimates), so the
time is the chain step itself: ``timings["sampling_seconds"] / (steps · C)``, nothing
subtracted. It prints one table: ms per chain-step, the batched speed-up (sequential time over
batched time per chain-step) and the SGLD step over the training step; with ``--json`` it
also writes them. ``--device cuda`` runs on a GPU with ``--precision no bf16`` (fp32 and bf16
autocast; sampling state stays fp32) and reports the peak GPU memory of each chain run.

    python benchmarks/bench_chains.py                       # CPU, tiny models
    python benchmarks/bench_chains.py --device cuda --size small medium --precision no bf16
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings
from contextlib import nullcontext

import torch
from _common import cores

from hf_llc import SamplerConfig, estimate_llc

#: (hidden size, layers, heads, vocabulary, sequence length) of each size.
SIZES = {
    "tiny": (64, 2, 4, 512, 32),
    "small": (256, 4, 8, 4096, 64),
    "medium": (768, 12, 12, 50257, 128),
}


def build(kind: str, size: str):
    from transformers import (
        BertConfig,
        BertForSequenceClassification,
        GPT2Config,
        GPT2LMHeadModel,
        LlamaConfig,
        LlamaForCausalLM,
    )

    width, layers, heads, vocab, length = SIZES[size]
    if kind == "gpt2":
        cfg = GPT2Config(
            vocab_size=vocab, n_positions=length, n_embd=width, n_layer=layers, n_head=heads
        )
        return GPT2LMHeadModel(cfg), length
    if kind == "llama":
        cfg = LlamaConfig(
            vocab_size=vocab,
            hidden_size=width,
            intermediate_size=4 * width,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            num_key_value_heads=max(1, heads // 4),
            max_position_embeddings=length,
        )
        return LlamaForCausalLM(cfg), length
    cfg = BertConfig(
        vocab_size=vocab,
        hidden_size=width,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=4 * width,
        max_position_embeddings=length,
        num_labels=4,
    )
    return BertForSequenceClassification(cfg), length


def make_data(kind: str, vocab: int, length: int, n: int, device) -> dict:
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (n, length), generator=gen)
    data = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    data["labels"] = ids.clone() if kind != "bert" else ids[:, 0] % 4
    return {k: v.to(device) for k, v in data.items()}


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_train(model, data, batch_size: int, steps: int, precision: str, device) -> float:
    """Seconds per training step (SGD), minibatches drawn like a chain's."""
    model.train(False)  # dropout off, as in the chains
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    n = data["input_ids"].shape[0]
    gen = torch.Generator().manual_seed(1)
    autocast = (
        torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16" else nullcontext()
    )
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        idx = torch.randint(0, n, (batch_size,), generator=gen).to(device)
        with autocast:
            loss = model(**{k: v[idx] for k, v in data.items()}).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    sync(device)
    return (time.perf_counter() - start) / steps


def time_chains(model, data, mode, chains, steps, batch_size, precision, device) -> dict:
    cfg = SamplerConfig(
        num_chains=chains,
        num_burnin=0,
        num_draws=steps,
        batch_size=batch_size,
        step_size=1e-7,
        preconditioner="identity",
        chain_mode=mode,
    )
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    r = estimate_llc(model, data, cfg, mixed_precision=precision, progress=False)
    out = {
        "seconds": r.timings["sampling_seconds"] / (steps * chains),
        "mode": r.diagnostics["chain_mode"],
    }
    if device.type == "cuda":
        out["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return out


def run_case(args, kind, size, precision, device) -> dict:
    torch.manual_seed(0)
    model, length = build(kind, size)
    model = model.to(device).eval()
    d = sum(p.numel() for p in model.parameters())
    data = make_data(kind, SIZES[size][3], length, args.num_samples, device)
    times = {"train": [], "sequential": [], "batched": []}
    peaks, modes = {}, {}
    for r in range(args.rounds + 1):  # round 0 warms up (kernels, allocator) and is dropped
        t = time_train(model, data, args.batch_size, args.steps, precision, device)
        chain_times = {}
        for mode in ("sequential", "batched"):
            out = time_chains(
                model, data, mode, args.chains, args.steps, args.batch_size, precision, device
            )
            chain_times[mode] = out["seconds"]
            modes[mode] = out["mode"]
            peaks[mode] = out.get("peak_gib")
        if r == 0:
            continue
        times["train"].append(t)
        for mode, value in chain_times.items():
            times[mode].append(value)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "model": kind,
        "size": size,
        "params": d,
        "tokens_per_batch": args.batch_size * length,
        "precision": precision,
        "chains": args.chains,
        "ms_train": 1e3 * med["train"],
        "ms_sequential": 1e3 * med["sequential"],
        "ms_batched": 1e3 * med["batched"],
        "batched_speedup": med["sequential"] / med["batched"],
        "sgld_over_train": med["sequential"] / med["train"],
        "batched_over_train": med["batched"] / med["train"],
        "mode_of_batched_run": modes["batched"],
        "peak_gib": peaks,
    }


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--models", nargs="+", default=["gpt2", "llama", "bert"])
    p.add_argument("--size", nargs="+", default=["tiny"], choices=sorted(SIZES))
    p.add_argument("--precision", nargs="+", default=["no"], choices=["no", "bf16"])
    p.add_argument("--chains", type=int, default=4)
    p.add_argument("--steps", type=int, default=20, help="chain steps per timed run")
    p.add_argument("--rounds", type=int, default=3, help="interleaved timed rounds (median)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--num-samples", type=int, default=512)
    p.add_argument("--json", default=None, help="also write the rows to this file")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device", file=sys.stderr)
        return 2
    device = torch.device(args.device)
    where = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU, {cores()} cores"
    print(
        f"{where}; torch {torch.__version__}; {args.chains} chains × {args.steps} steps, "
        f"batch {args.batch_size}, median of {args.rounds} interleaved rounds"
    )
    header = (
        "| model | size | d | precision | train ms | sequential ms/chain-step | "
        "batched ms/chain-step | batched speed-up | SGLD/train (seq) | SGLD/train (batched) |"
    )
    print(header)
    print("|" + "---|" * header.count(" | ") + "---|")
    rows = []
    for size in args.size:
        for kind in args.models:
            for precision in args.precision:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    row = run_case(args, kind, size, precision, device)
                rows.append(row)
                note = "" if row["mode_of_batched_run"] == "batched" else " (fell back)"
                print(
                    f"| {kind} | {size} | {row['params']:,} | {precision} | "
                    f"{row['ms_train']:.2f} | {row['ms_sequential']:.2f} | "
                    f"{row['ms_batched']:.2f}{note} | {row['batched_speedup']:.2f}× | "
                    f"{row['sgld_over_train']:.2f} | {row['batched_over_train']:.2f} |",
                    flush=True,
                )
    if device.type == "cuda":
        for row in rows:
            peak = row["peak_gib"]
            print(
                f"peak GPU memory {row['model']}/{row['size']}/{row['precision']}: "
                f"sequential {peak['sequential']:.2f} GiB, batched {peak['batched']:.2f} GiB"
            )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": where, "torch": torch.__version__, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
