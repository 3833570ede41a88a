"""Validate the estimator against the exact learning coefficients of deep linear networks.

Each case builds a DLN teacher problem (:func:`hf_llc.make_dln_problem`), runs
:func:`hf_llc.estimate_llc` with ONE recipe (the :class:`SamplerConfig` defaults, unless the
caller overrides a setting for every case alike) and compares λ̂ with Aoyagi's λ. Cases run in
parallel worker processes, one thread each.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import time
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

from ._text import table_lines
from .estimator import estimate_llc
from .models.dln import dln_truth, make_dln_problem, rescale_dln
from .sampling import SamplerConfig
from .serialization import check_format, format_header, to_plain, write_json

DEFAULT_NUM_SAMPLES = 100_000


@dataclass(frozen=True)
class ValidationCase:
    """One DLN problem: widths [H_0 (input), …, H_L (output)], rank and construction."""

    widths: tuple[int, ...]
    rank: int
    construction: str


def _case(widths, rank, construction) -> ValidationCase:
    return ValidationCase(tuple(widths), rank, construction)


# ≥ 8 cases, the three constructions, depths 2–4, 12 to 7,500 parameters (~4 minutes on 2 cores).
QUICK_SUITE: tuple[ValidationCase, ...] = (
    _case([3, 2, 3], 0, "origin"),
    _case([5, 3, 5], 0, "origin"),
    _case([4, 4, 4, 4], 0, "origin"),
    _case([7, 4, 6, 5], 0, "origin"),
    _case([3, 3, 3], 1, "aligned"),
    _case([10, 5, 10], 2, "aligned"),
    _case([4, 4, 4, 4], 2, "aligned"),
    _case([10, 20, 30, 20, 10], 5, "aligned"),
    _case([50, 50, 50, 50], 10, "aligned"),
    _case([5, 4, 5], 4, "full_rank"),
    _case([8, 6, 7], 6, "full_rank"),
    _case([30, 20, 30], 20, "full_rank"),
)

# Modelled on Furman & Lau's parameter-count buckets (their 1k–100M), as far as 2 CPU cores
# allow: ~10³, ~10⁴ and ~5·10⁴ parameters, each construction, depths 2–5.
PAPER_SUITE: tuple[ValidationCase, ...] = (
    _case([20, 30, 20], 0, "origin"),
    _case([20, 30, 20], 8, "aligned"),
    _case([20, 30, 20], 20, "full_rank"),
    _case([50, 50, 50, 50, 50], 0, "origin"),
    _case([50, 50, 50, 50, 50], 20, "aligned"),
    _case([50, 50, 50, 50, 50], 50, "full_rank"),
    _case([100, 150, 150, 100], 0, "origin"),
    _case([100, 150, 150, 100], 40, "aligned"),
    _case([100, 150, 150, 100], 100, "full_rank"),
)

# Cases the default recipe was not tuned on (measured once it was fixed): shapes from
# tests/data/dln_cases.json outside the two suites above, and new ones; depths 2–4, 3 to 20,000
# parameters, the three constructions, the tiny bottlenecks included.
HELDOUT_SUITE: tuple[ValidationCase, ...] = (
    _case([5, 4, 5], 0, "origin"),
    _case([4, 3, 8], 0, "origin"),
    _case([8, 3, 4], 0, "origin"),
    _case([3, 8, 4], 0, "origin"),
    _case([3, 3, 3], 0, "origin"),
    _case([1, 2, 1], 0, "origin"),
    _case([2, 1, 2], 0, "origin"),
    _case([1, 1, 1, 1], 0, "origin"),
    _case([5, 3, 4, 6, 2], 1, "aligned"),
    _case([3, 5, 4, 6], 2, "aligned"),
    _case([20, 20, 20], 5, "aligned"),
    _case([6, 5, 4, 5, 6], 2, "aligned"),
    _case([15, 10, 5, 10, 15], 3, "aligned"),
    _case([12, 8, 10], 8, "full_rank"),
    _case([6, 7, 5, 6], 5, "full_rank"),
    _case([100, 100, 100], 100, "full_rank"),
)

SUITES = {"quick": QUICK_SUITE, "paper": PAPER_SUITE, "heldout": HELDOUT_SUITE}


def run_case(
    case: ValidationCase,
    config: SamplerConfig | None = None,
    *,
    num_samples: int = DEFAULT_NUM_SAMPLES,
    seed: int = 0,
    input_distribution: str = "normal",
    loss_type: str = "gaussian_nll",
    mixed_precision: str | None = None,
    progress: bool = False,
    rescale: int | None = None,
) -> dict:
    """Estimate the LLC of one DLN case and compare it with theory; returns a JSON-ready dict.

    ``rescale``: a seed; the teacher is then moved along its rescaling symmetries
    (:func:`hf_llc.models.dln.rescale_dln`, factors in [0.1, 10] per layer and per hidden unit,
    drawn from (seed, case)), which keeps the function and λ exactly."""
    cfg = config if config is not None else SamplerConfig()
    truth = dln_truth(list(case.widths), case.rank, case.construction)
    start = time.perf_counter()
    model, dataset, lam = make_dln_problem(
        list(case.widths),
        case.rank,
        case.construction,
        num_samples=num_samples,
        seed=seed,
        input_distribution=input_distribution,
        loss_type=loss_type,
    )
    if rescale is not None:
        rescale_dln(model, _case_seed(rescale, case))
    # Per-sample losses: exact L_n(w*) from the cache, and the paired estimator alongside.
    result = estimate_llc(
        model,
        dataset,
        cfg,
        loss_fn=per_sample_loss_fn(model),
        mixed_precision=mixed_precision,
        progress=progress,
    )
    seconds = time.perf_counter() - start
    theory = float(lam)
    rel = (result.llc_mean - theory) / theory if theory else float("nan")
    diag = result.diagnostics
    steps = diag["step_size_per_chain"]
    return {
        "widths": list(case.widths),
        "rank": case.rank,
        "construction": case.construction,
        "num_params": result.num_params,
        "num_samples": num_samples,
        "seed": seed,
        "loss_type": loss_type,
        "rescale": rescale,
        "mixed_precision": result.diagnostics["mixed_precision"],
        "num_processes": result.diagnostics["num_processes"],
        "lambda_theory": theory,
        "lambda_theory_exact": str(lam),
        "multiplicity": truth.multiplicity,
        "llc_mean": result.llc_mean,
        "llc_std": result.llc_std,
        "llc_stderr": result.llc_stderr,
        "llc_per_chain": result.llc_per_chain,
        "llc_paired_mean": result.llc_paired_mean,
        "relative_error": rel,
        "nbeta": result.nbeta,
        "step_size": statistics.fmean(steps) if steps else float("nan"),
        "rhat_rank": diag.get("rhat_rank"),
        "ess_bulk": diag.get("ess_bulk"),
        "ess_tail": diag.get("ess_tail"),
        "settings_checked": diag.get("settings"),
        "mala_acceptance": diag.get("mala_acceptance"),
        "diverged_chains": len(diag["divergences"]),
        "verdict": result.verdict,
        "verdict_reasons": result.verdict_reasons,
        "seconds": seconds,
    }


def _case_seed(seed: int, case: ValidationCase) -> int:
    """A seed of its own for each case of a suite, from (seed, widths, rank, construction)."""
    key = [
        int(seed),
        *case.widths,
        case.rank,
        ("origin", "aligned", "full_rank").index(case.construction),
    ]
    return int(np.random.SeedSequence(key).generate_state(1)[0])


def per_sample_loss_fn(model) -> Callable:
    """``loss_fn`` for a DLN that returns per-sample losses (the batch mean is ``.loss``)."""

    def loss_fn(outputs, batch):
        return model.per_sample_loss(outputs.logits, batch["labels"])

    return loss_fn


def _worker(args: tuple) -> dict:
    import torch

    torch.set_num_threads(1)
    run_one, case, config, kwargs = args
    return run_one(case, SamplerConfig.from_dict(config), **kwargs)


def run_cases(
    run_one: Callable[..., dict],
    cases: Sequence[Any],
    cfg: SamplerConfig,
    kwargs: dict,
    *,
    jobs: int | None = None,
    on_result: Callable[[dict], None] | None = None,
) -> list[dict]:
    """``run_one(case, cfg, **kwargs)`` for every case, in ``jobs`` worker processes (default:
    one per CPU core; ``run_one`` must be a module-level function), one torch thread each;
    results in the cases' order, ``on_result`` called on each as it finishes."""
    jobs = max(1, min(jobs or os.cpu_count() or 1, len(cases)))
    results: list[dict | None] = [None] * len(cases)
    if jobs == 1:
        for i, case in enumerate(cases):
            results[i] = run_one(case, cfg, **kwargs)
            if on_result:
                on_result(results[i])
        return results
    work = [(run_one, case, cfg.to_dict(), kwargs) for case in cases]
    with ProcessPoolExecutor(jobs, mp_context=get_context("spawn")) as pool:
        futures = {pool.submit(_worker, w): i for i, w in enumerate(work)}
        for fut in as_completed(futures):
            results[futures[fut]] = fut.result()
            if on_result:
                on_result(results[futures[fut]])
    return results


def run_suite(
    cases: Sequence[ValidationCase],
    config: SamplerConfig | None = None,
    *,
    jobs: int | None = None,
    on_result: Callable[[dict], None] | None = None,
    **case_kwargs: Any,
) -> dict:
    """Run ``cases`` (in ``jobs`` worker processes; default: one per CPU core) and summarise.

    ``case_kwargs`` (``num_samples``, ``seed``, ``input_distribution``, ``loss_type``,
    ``mixed_precision``, ``rescale``) go to :func:`run_case` for every case alike. Returns
    ``{"format": "hf_llc.validation_report", "format_version": 1, "cases": [...],
    "summary": {...}}`` with the cases in their given order.
    """
    cfg = config if config is not None else SamplerConfig()
    num_samples = case_kwargs.get("num_samples", DEFAULT_NUM_SAMPLES)
    start = time.perf_counter()
    results = run_cases(run_case, cases, cfg, case_kwargs, jobs=jobs, on_result=on_result)
    return {
        **format_header("validation_report"),
        "cases": results,
        "summary": summarise(results, cfg, time.perf_counter() - start, num_samples),
    }


@dataclass
class SuiteRecord:
    """A suite run's report on disk, rewritten as each case finishes.

    After every finished case :meth:`add` writes the report so far to ``path`` (atomically):
    the finished cases in the suite's order, their summary, the run's ``recipe`` and the keys
    of the cases still ``pending``. An interrupted run so loses only the cases in progress.
    :meth:`resume` reads such a report back and keeps its cases, so that only the others run;
    a report made with another recipe is refused rather than mixed in.

    Args:
        path: the report's JSON file (``None``: keep nothing on disk).
        recipe: what every case of one report shares (sampler settings, problem settings);
            JSON-ready.
        order: every case's key in the suite's order (the report lists cases in this order,
            then any others it holds; a later --resume may add any of them).
        key: a finished case's key, from its result dict (the keys of ``order``).
        summarise: ``(results, wall_seconds) -> summary`` of the finished cases.
        header: top-level fields of the report besides the format, cases and summary.
        write: ``False`` on processes that must not write (all but the main one).
        numbers: the result keys whose ``null`` in the file stands for NaN (JSON has no NaN,
            so :func:`~hf_llc.serialization.write_json` writes it as ``null``); a kept case
            gets its NaN back, so that the summary and the table read it as a number.
    """

    path: Path | None
    recipe: dict
    order: Sequence[Hashable]
    key: Callable[[dict], Hashable]
    summarise: Callable[[list[dict], float], dict]
    header: dict = field(default_factory=dict)
    write: bool = True
    numbers: tuple[str, ...] = ()
    done: dict = field(default_factory=dict)
    #: Wall seconds of the earlier runs the report continues.
    earlier_seconds: float = 0.0
    started: float = field(default_factory=time.perf_counter)
    #: The keys of the cases this run is to finish (see :meth:`pending`).
    selected: list = field(default_factory=list)

    def __post_init__(self) -> None:
        self.selected = self.selected or list(self.order)
        # The recipe as it reads back from JSON (tuples become lists), to compare with a file's.
        self.recipe = json.loads(json.dumps(to_plain(self.recipe)))

    def resume(self) -> int:
        """Keep the finished cases of the report in ``path``; returns how many. Nothing there:
        0. Raises ``ValueError`` (naming the file and the fix) for a report of another kind or
        made with another recipe."""
        if self.path is None or not self.path.exists():
            return 0
        old = json.loads(self.path.read_text())
        check_format(old, "validation_report", source=self.path)
        if "recipe" not in old:
            raise ValueError(
                f"{self.path} records no recipe (written by an earlier hf_llc), so its cases "
                "cannot be matched to this run: pass another --output, or remove it and start "
                "over."
            )
        if old["recipe"] != self.recipe:
            differs = sorted(
                k
                for k in set(old["recipe"]) | set(self.recipe)
                if old["recipe"].get(k) != self.recipe.get(k)
            )
            raise ValueError(
                f"{self.path} holds cases made with other {', '.join(differs)}: one report "
                "keeps one recipe. Run with the same settings to continue it, or pass another "
                "--output."
            )
        for result in old.get("cases", []):
            nan = {k: math.nan for k in self.numbers if k in result and result[k] is None}
            self.done[self.key(result)] = {**result, **nan}
        self.earlier_seconds = float(old.get("summary", {}).get("wall_seconds") or 0.0)
        return len(old.get("cases", []))

    def pending(self, cases: Sequence[Any], case_key: Callable[[Any], Hashable]) -> list:
        """The ``cases`` this run is to finish (all of ``order`` unless called) whose key
        (``case_key(case)``) has no result yet; the report's ``pending`` lists them until
        they finish."""
        self.selected = [case_key(c) for c in cases]
        return [c for c in cases if case_key(c) not in self.done]

    def add(self, result: dict) -> None:
        """Record one finished case and write the report so far."""
        self.done[self.key(result)] = result
        self.save()

    def save(self) -> dict:
        """Write :meth:`report` to ``path`` (when there is one and this process writes) and
        return it."""
        out = self.report()
        if self.write and self.path is not None:
            write_json(self.path, out)
        return out

    def report(self) -> dict:
        """The report of the finished cases (``pending``: the selected cases' keys not done)."""
        in_order = set(self.order)
        keys = [k for k in self.order if k in self.done]
        keys += [k for k in self.done if k not in in_order]
        results = [self.done[k] for k in keys]
        seconds = self.earlier_seconds + time.perf_counter() - self.started
        return {
            **format_header("validation_report"),
            **self.header,
            "recipe": self.recipe,
            "cases": results,
            "pending": to_plain([k for k in self.selected if k not in self.done]),
            "summary": self.summarise(results, seconds),
        }


#: The numeric fields of a DLN case's result (see :class:`SuiteRecord`'s ``numbers``).
RESULT_NUMBERS = ("llc_mean", "llc_std", "llc_stderr", "relative_error", "step_size")


def case_key(case: ValidationCase) -> tuple:
    """A DLN case's key in a :class:`SuiteRecord` (widths, rank, construction)."""
    return (tuple(case.widths), case.rank, case.construction)


def result_key(result: dict) -> tuple:
    """The key of a DLN case's result dict (the same as :func:`case_key` of its case)."""
    return (tuple(result["widths"]), result["rank"], result["construction"])


def summarise(results: Sequence[dict], config: SamplerConfig, seconds: float, n: int) -> dict:
    """Median and max |relative error| over the cases, with the recipe that produced them."""
    errors = [abs(r["relative_error"]) for r in results if math.isfinite(r["relative_error"])]
    verdicts = [r.get("verdict") for r in results]
    return {
        "num_cases": len(results),
        "verdicts": {v: verdicts.count(v) for v in ("ok", "warning", "fail") if v in verdicts},
        "median_abs_relative_error": statistics.median(errors) if errors else float("nan"),
        "max_abs_relative_error": max(errors) if errors else float("nan"),
        "cases_failed": len(results) - len(errors),
        "num_samples": n,
        "wall_seconds": seconds,
        "config": config.to_dict(),
    }


def format_table(results: Sequence[dict]) -> str:
    """A plain-text table of validation results, then the reasons of any verdict not ``ok``."""
    show_mala = any(r.get("mala_acceptance") is not None for r in results)
    head = ["widths", "rank", "construction", "params", "λ (theory)", "λ̂ ± std", "rel. err"]
    if show_mala:
        head.append("MALA")
    head += ["verdict", "seconds"]
    rows = []
    for r in results:
        row = [
            ",".join(map(str, r["widths"])),
            str(r["rank"]),
            r["construction"],
            str(r["num_params"]),
            f"{r['lambda_theory']:g}",
            f"{r['llc_mean']:.4g} ± {r['llc_std']:.2g}",
            f"{r['relative_error']:+.1%}",
        ]
        if show_mala:
            acc = r.get("mala_acceptance")
            row.append("-" if acc is None else f"{acc:.3f}")
        row.append(r.get("verdict") or "-")
        row.append(f"{r['seconds']:.1f}")
        rows.append(row)
    lines = table_lines(head, rows, rule=True)
    for r in results:
        for reason in r.get("verdict_reasons") or []:
            lines.append(f"{','.join(map(str, r['widths']))} {r['construction']}: {reason}")
    return "\n".join(lines)


__all__ = [
    "HELDOUT_SUITE",
    "PAPER_SUITE",
    "QUICK_SUITE",
    "SUITES",
    "SuiteRecord",
    "ValidationCase",
    "case_key",
    "format_table",
    "result_key",
    "run_case",
    "run_cases",
    "run_suite",
    "summarise",
]
