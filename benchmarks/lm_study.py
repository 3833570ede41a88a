"""The LLC of small language models trained on real text, under several sampler recipes.

What is measured: for GPT-2- and Llama-style (grouped-query attention) causal language models of
about 1e5, 1e6 and 1e7 parameters, trained briefly on the same text, the estimate λ̂ of
``estimate_llc`` under named *recipes* (sets of :class:`~hf_llc.SamplerConfig` settings) and
under *variations* of a recipe (other seeds, half and double the step, nβ, batch size and chain
length). Each estimate records λ̂ ± se, the per-chain λ̂, the verdict and its reasons, R-hat and
ESS, the chain mode used, the step sizes, and the wall time and SGLD steps per second. The
summary checks whether the seeds agree within two standard errors and how far λ̂ moves when
the step is halved.

Data: the English prose of CPython's documentation that ships with every Python
(``pydoc_data.topics.topics``), concatenated in sorted-key order, encoded as UTF-8 and read as
bytes (vocabulary 256, no tokenizer), cut into non-overlapping blocks of ``--seq-len`` tokens;
the first ``--num-samples`` blocks are both the training set and the estimate's data set. The
loss is the mean next-token cross-entropy (hf_llc builds the causal-LM labels from the token
ids). The corpus's sha256 and the Python version are recorded with every run.

Models are built from a config, trained with AdamW from a fixed seed and cached under
``--cache-dir`` (``save_pretrained``), so reruns do not retrain. Every estimate is appended to
``--out`` (JSON lines) as soon as it finishes, and a rerun skips the runs already there.

Built-in recipes: ``default-short`` (the defaults: curvature step, fisher-burnin, γ = 1,
nβ = n / log n; 500 burn-in steps, 1000 draws, batch 32) and ``literature`` (plain SGLD with a
fixed ε, γ = 300, nβ = 30, batch 32, 200 burn-in steps, 800 draws). ``--recipe-json`` adds one.

    # CPU smoke run (tiny model, short training, recipe lengths / 10)
    python benchmarks/lm_study.py --quick --device cpu --vary seed
    # a small CPU run
    python benchmarks/lm_study.py --device cpu --models gpt2-100k --train-steps 200 \\
        --num-samples 512 --base default-short --vary seed
    # the full grid on a GPU
    python benchmarks/lm_study.py --device cuda --base default-short literature \\
        --vary seed step nbeta batch length --robustness
    # the tables of a results file
    python benchmarks/lm_study.py --table benchmarks/results/lm_study.jsonl
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import math
import platform
import sys
import time
import warnings
from pathlib import Path

import torch

from hf_llc import SamplerConfig, estimate_llc

HERE = Path(__file__).resolve().parent
VOCAB = 256
MAX_POSITIONS = 256
#: name → (family, hidden size, layers, MLP width, query heads, key-value heads).
SIZES = {
    "gpt2-100k": ("gpt2", 64, 2, 256, 4, 4),
    "gpt2-1m": ("gpt2", 128, 5, 512, 4, 4),
    "gpt2-10m": ("gpt2", 320, 8, 1280, 8, 8),
    "llama-100k": ("llama", 64, 2, 172, 4, 2),
    "llama-1m": ("llama", 128, 5, 344, 4, 2),
    "llama-10m": ("llama", 320, 8, 864, 4, 2),
}
#: The nominal size in each name, for the sanity check of the parameter counts.
NOMINAL = {"100k": 1e5, "1m": 1e6, "10m": 1e7}
VARIATIONS = ("seed", "step", "nbeta", "batch", "length")
QUICK_DIVISOR = 10


# --- corpus ---------------------------------------------------------------------------------


def corpus_bytes() -> bytes:
    """CPython's documentation topics, concatenated in sorted-key order, as UTF-8 bytes."""
    from pydoc_data.topics import topics

    return "".join(topics[k] for k in sorted(topics)).encode("utf-8")


def corpus_blocks(seq_len: int, num_samples: int) -> tuple[torch.Tensor, str]:
    """The first ``num_samples`` non-overlapping blocks of ``seq_len`` byte tokens
    (LongTensor [n, seq_len]) and the sha256 of the whole corpus."""
    data = corpus_bytes()
    digest = hashlib.sha256(data).hexdigest()
    tokens = torch.frombuffer(bytearray(data), dtype=torch.uint8).long()
    available = tokens.numel() // seq_len
    if num_samples > available:
        raise ValueError(
            f"the corpus holds {available} blocks of {seq_len} tokens, fewer than "
            f"--num-samples {num_samples}"
        )
    blocks = tokens[: available * seq_len].view(available, seq_len)[:num_samples].clone()
    return blocks, digest


# --- models ---------------------------------------------------------------------------------


def model_config(name: str):
    """The transformers config of a named size (vocabulary 256, SDPA attention, no dropout)."""
    from transformers import GPT2Config, LlamaConfig

    family, width, layers, mlp, heads, kv_heads = SIZES[name]
    common = {"vocab_size": VOCAB, "bos_token_id": 0, "eos_token_id": 0}
    if family == "gpt2":
        return GPT2Config(
            n_positions=MAX_POSITIONS,
            n_embd=width,
            n_layer=layers,
            n_head=heads,
            n_inner=mlp,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            attn_implementation="sdpa",
            **common,
        )
    return LlamaConfig(
        hidden_size=width,
        intermediate_size=mlp,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=MAX_POSITIONS,
        attn_implementation="sdpa",
        **common,
    )


def model_class(name: str):
    """The causal-LM class of a named size."""
    from transformers import GPT2LMHeadModel, LlamaForCausalLM

    return GPT2LMHeadModel if SIZES[name][0] == "gpt2" else LlamaForCausalLM


def build_model(name: str, device: str | torch.device = "cpu"):
    """A freshly initialised model of a named size (``device="meta"`` to count only)."""
    with torch.device(device):
        return model_class(name)(model_config(name))


def count_params(model) -> int:
    """The number of distinct parameters (tied weights counted once)."""
    return sum(p.numel() for p in model.parameters())


def learning_rate(name: str) -> float:
    """AdamW's peak learning rate: 3e-3 for the small sizes, 1e-3 for 1e7 parameters."""
    return 1e-3 if name.endswith("10m") else 3e-3


def train(model, blocks, steps: int, seed: int, lr: float, device) -> dict:
    """AdamW on random minibatches of 32 blocks, linear warm-up then cosine decay to 10%."""
    model.to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    warm = max(1, min(100, steps // 10))

    def factor(t: int) -> float:
        if t < warm:
            return (t + 1) / warm
        return 0.1 + 0.45 * (1 + math.cos(math.pi * (t - warm) / max(1, steps - warm)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    gen = torch.Generator().manual_seed(seed)
    data = blocks.to(device)
    losses = []
    start = time.perf_counter()
    for _ in range(steps):
        idx = torch.randint(0, data.shape[0], (min(32, data.shape[0]),), generator=gen)
        batch = data[idx.to(device)]
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.detach())
    final = float(torch.stack(losses[-20:]).mean()) if losses else float("nan")
    model.eval()
    return {"final_loss": final, "wall_s": time.perf_counter() - start, "lr": lr, "steps": steps}


def trained_model(name: str, blocks, args, device) -> tuple[torch.nn.Module, dict]:
    """The model of ``name`` trained on ``blocks``, from the cache when it is there."""
    tag = f"{name}-steps{args.train_steps}-seed{args.seed}-T{blocks.shape[1]}-n{blocks.shape[0]}"
    folder = Path(args.cache_dir) / tag
    info_file = folder / "train_info.json"
    if info_file.exists():
        model = model_class(name).from_pretrained(
            folder, dtype=torch.float32, attn_implementation="sdpa"
        )
        info = json.loads(info_file.read_text())
        info["cached"] = True
        return model.to(device).eval(), info
    torch.manual_seed(args.seed)
    model = build_model(name)
    info = train(model, blocks, args.train_steps, args.seed, learning_rate(name), device)
    model.save_pretrained(folder)
    info_file.write_text(json.dumps(info, indent=1))
    info["cached"] = False
    return model.eval(), info


# --- recipes and variations ----------------------------------------------------------------


def literature_step(params: int, override: float | None = None) -> float:
    """The fixed ε of the literature recipe: 1e-3 up to ~1e6 parameters, 3e-4 above."""
    if override is not None:
        return override
    return 1e-3 if params <= 2_000_000 else 3e-4


def builtin_recipes(params: int, lit_step: float | None = None) -> dict[str, dict]:
    """The built-in recipes (name → SamplerConfig overrides) for a model of ``params``."""
    return {
        "default-short": {"num_burnin": 500, "num_draws": 1000, "batch_size": 32},
        "literature": {
            "preconditioner": "identity",
            "localization": 300.0,
            "nbeta": 30.0,
            "step_size": literature_step(params, lit_step),
            "batch_size": 32,
            "num_burnin": 200,
            "num_draws": 800,
        },
    }


def custom_recipe(text: str, recipes: dict[str, dict]) -> tuple[str, dict]:
    """A recipe from ``--recipe-json``: ``{"name": ..., "base": <recipe>?, <settings>...}``;
    the settings override the base recipe's (none when no base is named)."""
    spec = json.loads(text)
    name = spec.pop("name", "custom")
    base = spec.pop("base", None)
    settings = dict(recipes[base]) if base is not None else {}
    settings.update(spec)
    return name, settings


def shorten(settings: dict, divisor: int) -> dict:
    """``settings`` with burn-in and draws divided by ``divisor`` (the ``--quick`` lengths)."""
    out = dict(settings)
    defaults = SamplerConfig()
    out["num_burnin"] = out.get("num_burnin", defaults.num_burnin) // divisor
    out["num_draws"] = max(1, out.get("num_draws", defaults.num_draws) // divisor)
    return out


def scaled(settings: dict, key: str, factor: float, n: int) -> dict | None:
    """``settings`` with ``key`` scaled by ``factor`` (integers rounded, kept valid)."""
    out = dict(settings)
    if key == "step":
        step = out.get("step_size", "curvature")
        if step == "curvature":
            out["step_scale"] = out.get("step_scale", SamplerConfig().step_scale) * factor
        elif isinstance(step, (int, float)):
            out["step_size"] = step * factor
        else:  # "auto" chooses its own step
            return None
    elif key == "nbeta":
        base = out.get("nbeta")
        out["nbeta"] = (base if base is not None else n / math.log(n)) * factor
    elif key == "batch":
        out["batch_size"] = max(1, min(n, round(out.get("batch_size", 512) * factor)))
    elif key == "length":
        defaults = SamplerConfig()
        out["num_burnin"] = round(out.get("num_burnin", defaults.num_burnin) * factor)
        out["num_draws"] = max(1, round(out.get("num_draws", defaults.num_draws) * factor))
    return out


def full_settings(settings: dict) -> dict:
    """Every setting of a run (``SamplerConfig.to_dict``), chains batched when possible."""
    return SamplerConfig(**{"chain_mode": "auto", **settings}).to_dict()


def plan_runs(settings: dict, vary: list[str], n: int) -> list[tuple[str, dict]]:
    """(variation, settings) of the base run and its variations; variations whose settings
    equal an earlier run's (seed 0 of a seed-0 base, a batch already at n) are left out."""
    runs = [("base", dict(settings))]
    seen = [full_settings(settings)]
    for kind in vary:
        if kind == "seed":
            options = [(f"seed={s}", {**settings, "seed": s}) for s in (0, 1, 2)]
        else:
            options = [(f"{kind}×{f:g}", scaled(settings, kind, f, n)) for f in (0.5, 2.0)]
        for label, varied in options:
            if varied is not None and full_settings(varied) not in seen:
                runs.append((label, varied))
                seen.append(full_settings(varied))
    return runs


# --- running and recording ------------------------------------------------------------------


def run_key(record: dict) -> str:
    """The identity of a run: model (and its training), recipe, variation, settings."""
    parts = [
        record["model"],
        record["train"]["steps"],
        record["train"]["seed"],
        record["n"],
        record["seq_len"],
        record["recipe"],
        record["variation"],
        record["settings"],
    ]
    return json.dumps(parts, sort_keys=True, default=str)


def done_keys(path: Path) -> set[str]:
    """The keys of the runs already in the JSON-lines file ``path`` (none if it is absent)."""
    if not path.exists():
        return set()
    keys = set()
    for line in path.read_text().splitlines():
        if line.strip():
            try:
                keys.add(json.loads(line)["key"])
            except (ValueError, KeyError):
                continue  # a line cut short by a crash
    return keys


def append_record(path: Path, record: dict) -> None:
    """Append one run as one JSON line and flush it to disk at once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(json.dumps(_no_nan(record), default=_plain) + "\n")
        f.flush()


def _no_nan(value):
    """``value`` with every non-finite float replaced by ``None`` (strict JSON)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _no_nan(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_no_nan(v) for v in value]
    return value


def _plain(value):
    """JSON fallback: numpy and torch scalars as numbers, anything else as text."""
    if hasattr(value, "item"):
        try:
            return value.item()
        except (ValueError, RuntimeError):
            pass
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU with its core count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def next_token_loss(outputs, batch) -> torch.Tensor:
    """Each block's mean next-token cross-entropy (one loss per sample, so the estimator's
    per-sample cache at w* and its paired estimate are used)."""
    logits = outputs.logits[:, :-1].float()
    targets = batch["input_ids"][:, 1:]
    per_token = torch.nn.functional.cross_entropy(logits.transpose(1, 2), targets, reduction="none")
    return per_token.mean(dim=-1)


def estimate(model, dataset, settings: dict) -> tuple[object, float]:
    """One ``estimate_llc`` run (batched chains when possible) and its wall time. ``dataset``
    is ``{"input_ids": blocks}``: a dict of tensors, so no ``datasets`` fingerprinting (which
    fails to pickle pyarrow types under some pyarrow/dill/Python combinations)."""
    config = SamplerConfig(**full_settings(settings))
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = estimate_llc(model, dataset, config, loss_fn=next_token_loss, progress=False)
    return result, time.perf_counter() - start


def result_fields(result, wall: float) -> dict:
    """The fields of a run's record that come from its :class:`~hf_llc.LLCResult`."""
    diag = result.diagnostics or {}
    cfg = result.config
    chain_steps = cfg["num_chains"] * (cfg["num_burnin"] + cfg["num_draws"] * cfg["draw_every"])
    sampling = (result.timings or {}).get("sampling_seconds")
    robust = diag.get("robustness")
    return {
        "llc_mean": result.llc_mean,
        "llc_stderr": result.llc_stderr,
        "llc_per_chain": list(result.llc_per_chain),
        "llc_paired_mean": result.llc_paired_mean,
        "nbeta": result.nbeta,
        "init_loss": result.init_loss,
        "verdict": result.verdict,
        "verdict_reasons": list(result.verdict_reasons),
        "rhat_rank": diag.get("rhat_rank"),
        "ess_bulk": diag.get("ess_bulk"),
        "ess_tail": diag.get("ess_tail"),
        "chain_mode": diag.get("chain_mode"),
        "step_size_per_chain": diag.get("step_size_per_chain"),
        "num_divergences": len(diag.get("divergences") or []),
        "robustness": None
        if robust is None
        else {
            k: robust.get(k)
            for k in ("relative_change", "within_noise", "llc_means", "llc_stderrs", "num_draws")
        },
        "chain_steps": chain_steps,
        "wall_s": wall,
        "sampling_s": sampling,
        "sgld_steps_per_s": chain_steps / wall if wall > 0 else None,
        "timings": result.timings,
    }


def run_model(name: str, blocks, digest: str, args, device, out: Path) -> int:
    """Every planned run of one model not yet in ``out``; returns how many ran."""
    model, train_info = trained_model(name, blocks, args, device)
    params = count_params(model)
    n, seq_len = blocks.shape
    print(
        f"{name}: {params:,} parameters; trained {args.train_steps} steps in "
        f"{train_info['wall_s']:.1f} s{' (cached)' if train_info['cached'] else ''}, "
        f"final training loss {train_info['final_loss']:.3f}",
        flush=True,
    )
    dataset = {"input_ids": blocks}
    recipes = builtin_recipes(params, args.lit_step)
    if args.quick:  # the built-in recipes' lengths / 10 (a custom recipe keeps its own)
        recipes = {k: shorten(v, QUICK_DIVISOR) for k, v in recipes.items()}
    if args.recipe_json:
        custom, settings = custom_recipe(args.recipe_json, recipes)
        recipes[custom] = settings
    done, ran = done_keys(out), 0
    for recipe in args.base:
        settings = recipes[recipe]
        if args.robustness:
            settings = {**settings, "robustness": True}
        for variation, varied in plan_runs(settings, args.vary, n):
            record = {
                "model": name,
                "family": SIZES[name][0],
                "params": params,
                "n": n,
                "seq_len": seq_len,
                "tokens_per_sample": seq_len,
                "target_tokens_per_sample": seq_len - 1,
                "train": {**train_info, "seed": args.seed},
                "recipe": recipe,
                "variation": variation,
                "settings": full_settings(varied),
            }
            record["key"] = run_key(record)
            if record["key"] in done:
                print(f"  {recipe}/{variation}: already in {out}, skipped", flush=True)
                continue
            result, wall = estimate(model, dataset, varied)
            record.update(result_fields(result, wall))
            record.update(_environment(device, digest))
            append_record(out, record)
            done.add(record["key"])
            ran += 1
            print(f"  {_run_line(record)}", flush=True)
    return ran


def _environment(device, digest: str) -> dict:
    """Where and with what a run ran."""
    import transformers

    return {
        "device": device.type,
        "device_name": device_name(device),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "corpus": "pydoc_data.topics.topics (sorted keys, UTF-8 bytes)",
        "corpus_sha256": digest,
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


def _run_line(r: dict) -> str:
    """One printed line per finished run."""
    steps = r["step_size_per_chain"] or []
    eps = f"{min(steps):.2e}–{max(steps):.2e}" if steps else "-"
    return (
        f"{r['recipe']}/{r['variation']}: λ̂ = {r['llc_mean']:.2f} ± {r['llc_stderr']:.2f} "
        f"(nβ {r['nbeta']:.1f}, ε {eps}), {r['verdict']}, {r['chain_mode']}, "
        f"{r['wall_s']:.1f} s, {r['sgld_steps_per_s']:.0f} chain-steps/s"
    )


# --- tables and summary checks --------------------------------------------------------------


def read_runs(path: str | Path) -> list[dict]:
    """The runs of a JSON-lines results file (lines that do not parse are skipped)."""
    runs = []
    for line in Path(path).read_text().splitlines():
        if line.strip():
            try:
                runs.append(json.loads(line))
            except ValueError:
                continue
    return runs


def relative_change(value: float, base: float) -> float | None:
    """(value − base) / |base|, or ``None`` when the base is 0 or missing."""
    if base is None or value is None or base == 0 or not math.isfinite(base):
        return None
    return (value - base) / abs(base)


def seed_agreement(runs: list[dict]) -> dict | None:
    """Max over pairs of seed runs of |λ̂_a − λ̂_b| / √(se_a² + se_b²), and whether it is ≤ 2.
    ``runs`` are one model's runs of one recipe: the base and its ``seed=`` variations."""
    seeds = [r for r in runs if r["variation"] == "base" or r["variation"].startswith("seed=")]
    if len(seeds) < 2:
        return None
    worst, pair = 0.0, None
    for a, b in itertools.combinations(seeds, 2):
        combined = math.hypot(a["llc_stderr"], b["llc_stderr"])
        diff = abs(a["llc_mean"] - b["llc_mean"])
        z = diff / combined if combined > 0 else (math.inf if diff > 0 else 0.0)
        if pair is None or z > worst:
            worst, pair = z, (a["settings"]["seed"], b["settings"]["seed"])
    return {"seeds": len(seeds), "max_z": worst, "pair": pair, "agree": worst <= 2.0}


def step_halving(runs: list[dict]) -> dict | None:
    """How far λ̂ moves when the step is halved: the ``step×0.5`` run against the base run,
    else the base run's own robustness report."""
    base = next((r for r in runs if r["variation"] == "base"), None)
    half = next((r for r in runs if r["variation"] == "step×0.5"), None)
    if base is not None and half is not None:
        combined = math.hypot(base["llc_stderr"], half["llc_stderr"])
        diff = half["llc_mean"] - base["llc_mean"]
        return {
            "source": "step×0.5 run",
            "relative_change": relative_change(half["llc_mean"], base["llc_mean"]),
            "z": abs(diff) / combined if combined > 0 else None,
        }
    robust = (base or {}).get("robustness")
    if robust and robust.get("relative_change") is not None:
        return {
            "source": "robustness",
            "relative_change": robust["relative_change"],
            "within_noise": robust.get("within_noise"),
        }
    return None


def group_runs(runs: list[dict]) -> dict[str, dict[str, list[dict]]]:
    """model → recipe → runs, in the order they were recorded."""
    groups: dict[str, dict[str, list[dict]]] = {}
    for r in runs:
        groups.setdefault(r["model"], {}).setdefault(r["recipe"], []).append(r)
    return groups


def table_rows(runs: list[dict]) -> list[dict]:
    """One model's rows: recipe, variation, λ̂, se, change vs the recipe's base, verdict,
    wall seconds and seconds per 1000 chain-steps."""
    bases = {r["recipe"]: r["llc_mean"] for r in runs if r["variation"] == "base"}
    rows = []
    for r in runs:
        steps = r.get("chain_steps") or 0
        rows.append(
            {
                "recipe": r["recipe"],
                "variation": r["variation"],
                "llc_mean": r["llc_mean"],
                "llc_stderr": r["llc_stderr"],
                "change": relative_change(r["llc_mean"], bases.get(r["recipe"])),
                "verdict": r["verdict"],
                "wall_s": r["wall_s"],
                "s_per_1k_steps": 1e3 * r["wall_s"] / steps if steps else None,
            }
        )
    return rows


def _fmt(value, spec: str, missing: str = "–") -> str:
    """``value`` formatted, or ``missing`` when it is ``None``."""
    return missing if value is None else format(value, spec)


def markdown_tables(runs: list[dict]) -> str:
    """One Markdown table per model, then the summary checks per model and recipe."""
    lines = []
    for model, by_recipe in group_runs(runs).items():
        all_runs = [r for rs in by_recipe.values() for r in rs]
        first = all_runs[0]
        lines += [
            f"### {model} ({first['params']:,} parameters, n = {first['n']}, "
            f"{first['seq_len']} tokens per sample)",
            "",
            "| recipe | variation | λ̂ ± se | change vs base | verdict | wall s "
            "| s / 1k chain-steps |",
            "|---|---|---|---|---|---|---|",
        ]
        for row in table_rows(all_runs):
            lines.append(
                f"| {row['recipe']} | {row['variation']} | {row['llc_mean']:.2f} ± "
                f"{row['llc_stderr']:.2f} | {_fmt(row['change'], '+.1%')} | {row['verdict']} | "
                f"{row['wall_s']:.1f} | {_fmt(row['s_per_1k_steps'], '.2f')} |"
            )
        lines.append("")
        for recipe, rs in by_recipe.items():
            lines.append(f"- {recipe}: {_summary_text(rs)}")
        lines.append("")
    return "\n".join(lines)


def _summary_text(runs: list[dict]) -> str:
    """The summary checks of one model's runs of one recipe, in words."""
    parts = []
    seeds = seed_agreement(runs)
    if seeds is not None:
        verdict = "agree" if seeds["agree"] else "DISAGREE"
        parts.append(
            f"{seeds['seeds']} seeds {verdict} (max pairwise |Δ|/√(se²+se²) = "
            f"{seeds['max_z']:.2f}, seeds {seeds['pair']})"
        )
    half = step_halving(runs)
    if half is not None:
        parts.append(
            f"halving the step moves λ̂ by {_fmt(half['relative_change'], '+.1%')} "
            f"({half['source']})"
        )
    return "; ".join(parts) or "no seed or step variation"


# --- command line ---------------------------------------------------------------------------


def parse_args(argv=None):
    """The command line (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--table", default=None, help="print the tables of this JSONL file and exit")
    p.add_argument("--device", default=None, choices=["cpu", "cuda"])
    p.add_argument("--dtype", default="fp32", choices=["fp32"])
    p.add_argument("--models", nargs="+", default=list(SIZES), choices=list(SIZES))
    p.add_argument("--train-steps", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0, help="seed of initialisation and training")
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--num-samples", type=int, default=2048)
    p.add_argument("--base", nargs="+", default=["default-short"], help="base recipe(s)")
    p.add_argument("--vary", nargs="*", default=[], choices=VARIATIONS)
    p.add_argument("--recipe-json", default=None, help='{"name": ..., "base": ..., settings}')
    p.add_argument("--lit-step", type=float, default=None, help="ε of the literature recipe")
    p.add_argument("--robustness", action="store_true", help="also λ̂ at half the step")
    p.add_argument("--quick", action="store_true", help="gpt2-100k, 50 steps, 64 samples, /10")
    p.add_argument("--cache-dir", default=str(HERE / "results" / "lm_study_models"))
    p.add_argument("--out", default=str(HERE / "results" / "lm_study.jsonl"))
    args = p.parse_args(argv)
    if args.quick:
        args.models, args.train_steps, args.num_samples = ["gpt2-100k"], 50, 64
    if args.seq_len > MAX_POSITIONS:
        p.error(f"--seq-len must be at most {MAX_POSITIONS}")
    return args


def main(argv=None) -> int:
    """Train (or load) each model and run every planned estimate not yet in ``--out``."""
    args = parse_args(argv)
    if args.table:
        print(markdown_tables(read_runs(args.table)))
        return 0
    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device", file=sys.stderr)
        return 2
    device = torch.device(args.device)
    blocks, digest = corpus_blocks(args.seq_len, args.num_samples)
    print(
        f"{device_name(device)}; Python {platform.python_version()}, torch {torch.__version__}; "
        f"corpus sha256 {digest[:16]}…, {blocks.shape[0]} blocks of {blocks.shape[1]} bytes",
        flush=True,
    )
    out = Path(args.out)
    for name in args.models:
        run_model(name, blocks, digest, args, device, out)
    print(markdown_tables([r for r in read_runs(out) if r["model"] in args.models]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
