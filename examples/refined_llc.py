"""Per-layer LLCs of a small trained transformer (weight-refined LLCs, ``parameters=``).

A 2-layer GPT-2 is trained briefly on short texts, then the LLC is estimated with the same
recipe and data for the whole model and for each group of its weights alone (the embeddings,
each block's attention and MLP, the final layer norm), every other weight held at w*. It
writes ``refined_llc.json`` and ``refined_llc.png`` (λ̂ ± 2 s.e. per group) to ``--out``
(``docs/`` holds the committed run). ``--quick`` is a smoke run.

``--heads`` estimates per-head LLCs instead: each attention head of each block alone
(``parameters="transformer.h.N.attn:head=H"``: the head's columns of the fused query/key/value
matrix and its bias entries, and its rows of the output projection; the other head's entries
of the same matrices stay at w*), beside each block's whole attention (``c_attn`` and
``c_proj``), written to ``refined_llc_heads.json`` and ``refined_llc_heads.png`` (7 minutes
on 2 CPU cores with ``OMP_NUM_THREADS=1``).

    python examples/refined_llc.py --out docs
    python examples/refined_llc.py --heads --out docs
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from datasets import Dataset

from hf_llc import SamplerConfig, attention_modules, estimate_llc, heads

sys.path.insert(0, str(Path(__file__).resolve().parent))
# The texts, word-level tokenizer and training of the checkpoint example.
from estimate_checkpoint import TEXTS, train_on_texts, word_tokenizer  # noqa: E402

#: The weight groups, as ``parameters=`` patterns over GPT-2's parameter names.
GROUPS = {
    "embeddings": ["transformer.wte.*", "transformer.wpe.*"],
    "block 0 attention": ["transformer.h.0.ln_1.*", "transformer.h.0.attn.*"],
    "block 0 MLP": ["transformer.h.0.ln_2.*", "transformer.h.0.mlp.*"],
    "block 1 attention": ["transformer.h.1.ln_1.*", "transformer.h.1.attn.*"],
    "block 1 MLP": ["transformer.h.1.ln_2.*", "transformer.h.1.mlp.*"],
    "final layer norm": ["transformer.ln_f.*"],
}


def head_groups(model) -> dict[str, list[str]]:
    """Each block's whole attention and each of its heads, as ``parameters=`` selections."""
    groups = {}
    for module in attention_modules(model):  # transformer.h.0.attn, transformer.h.1.attn
        block = module.split(".")[2]
        groups[f"block {block} attention, all heads"] = [f"{module}.*"]
        for h in range(model.config.n_head):
            groups[f"block {block} head {h}"] = [heads(module, h)]
    return groups


def train_model(tokenizer, steps: int):
    """A 2-layer GPT-2 trained full-batch with AdamW, so w* sits near a minimum."""
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(vocab_size=len(tokenizer), n_positions=16, n_embd=32, n_layer=2, n_head=2)
    config.pad_token_id = 0
    torch.manual_seed(0)
    model = GPT2LMHeadModel(config)
    train_on_texts(model, tokenizer, steps)
    return model.eval()


def plot(rows: list[dict], path: Path, title: str) -> None:
    from hf_llc.plotting import _import_matplotlib, save_figure

    Figure, FigureCanvasAgg = _import_matplotlib()
    fig = Figure(figsize=(8, 0.45 * len(rows) + 1.0), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    names = [f"{r['group']} (d = {r['num_params']:,})" for r in rows]
    means = [r["llc_mean"] for r in rows]
    errs = [2 * r["llc_stderr"] for r in rows]
    grey = ("whole model", "all heads")  # the references the parts are set beside
    colors = ["0.45" if any(g in r["group"] for g in grey) else "C0" for r in rows]
    ax.barh(names, means, xerr=errs, color=colors, capsize=3)
    ax.invert_yaxis()
    ax.set_xlabel(r"LLC $\hat\lambda$ (± 2 s.e.), the other weights at $w^*$")
    ax.set_title(title)
    ax.axvline(0, color="0.2", lw=0.8)
    ax.grid(axis="x", alpha=0.3)
    save_figure(fig, path)


def estimate_groups(model, data, config, tokenizer, groups: dict) -> list[dict]:
    """One LLC per group of weights (``None``: the whole model), the others held at w*."""
    rows = []
    for group, patterns in groups.items():
        t0 = time.perf_counter()
        result = estimate_llc(
            model, data, config, tokenizer=tokenizer, parameters=patterns, progress=False
        )
        rows.append(
            {
                "group": group,
                "parameters": patterns,
                "num_params": result.num_params,
                "llc_mean": result.llc_mean,
                "llc_stderr": result.llc_stderr,
                "verdict": result.verdict,
                "verdict_reasons": list(result.verdict_reasons),
                "seconds": round(time.perf_counter() - t0, 1),
            }
        )
        print(
            f"{group:28s} d = {result.num_params:6d}  λ̂ = {result.llc_mean:8.3f} ± "
            f"{result.llc_stderr:.3f}  {result.verdict}",
            flush=True,
        )
    return rows


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("."), help="output folder")
    parser.add_argument("--quick", action="store_true", help="a smoke run (few steps)")
    parser.add_argument(
        "--heads", action="store_true", help="per-head LLCs (refined_llc_heads.json/png)"
    )
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)

    tokenizer = word_tokenizer()
    model = train_model(tokenizer, steps=20 if args.quick else 400)
    data = Dataset.from_dict({"text": TEXTS})
    if args.quick:
        config = SamplerConfig(num_chains=2, num_burnin=5, num_draws=10, batch_size=32)
    else:
        config = SamplerConfig(num_chains=4, num_burnin=1000, num_draws=2000, batch_size=64)
    if args.heads:
        groups, stem = head_groups(model), "refined_llc_heads"
        title = "Per-head LLCs of a 2-layer GPT-2 (2 heads per block)"
    else:
        groups, stem = {"whole model": None, **GROUPS}, "refined_llc"
        title = "Weight-refined LLCs of a 2-layer GPT-2"
    rows = estimate_groups(model, data, config, tokenizer, groups)
    report = {"config": config.to_dict(), "num_samples": len(TEXTS), "rows": rows}
    (args.out / f"{stem}.json").write_text(json.dumps(report, indent=1) + "\n")
    plot(rows, args.out / f"{stem}.png", title)
    print(f"wrote {args.out / (stem + '.json')} and {args.out / (stem + '.png')}")
    return report


if __name__ == "__main__":
    main()
