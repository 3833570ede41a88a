"""One SGLD recipe on the nonlinear suites over several teacher seeds, summarised together.

A single run of ``hf-llc validate --suite nonlinear`` cannot rank two recipes: SGLD's standard
error on these models is 4-10% of λ̂ at the default lengths, and the worst case moves from one
run to the next. This script runs a recipe (the sampler flags after ``--``, passed to
``hf-llc validate`` as they are) on ``--suites`` × ``--seeds`` (teacher seed = chain seed),
writes each run's JSON into ``--dir``, and prints one Markdown row per run and a pooled line:

- per run, over **all five cases** (the validate summary leaves out cases whose reference did
  not converge, R̂ > 1.05; that count is shown as ``R̂>1.05``): the median and max |relative
  difference| from the exact reference, the worst case with its verdict, and whether the
  validate summary says the run meets the targets (median ≤ 5%, max ≤ 10%; "untested" when
  they hold only on the cases whose reference converged);
- pooled over every case of every run: the median |relative difference|, how many cases are
  more than 10% off, and how many of those the verdict called ``ok`` (misses it did not flag).

Each run's JSON is rewritten after every finished case, and the script passes ``--resume``:
rerunning the same command after a stop continues each unfinished run where it stopped
instead of starting over (a run made with other flags is refused, not mixed in).

``--from`` summarises JSON files written earlier (by this script or by ``hf-llc validate
--output``) without running anything. ``--against`` compares them case by case with another
recipe's runs at the same suites and seeds: the difference of the pooled median |relative
difference| (``--from`` minus ``--against``) with a 95% interval from a paired bootstrap over
the cases, and how many cases ``--from`` reads closer. ``--noise-floor`` shows how often an
unbiased recipe would meet the targets given the runs' own noise (SGLD's standard error and the
reference's MCSE per case), as reported and divided by 2 or 3 (4× or 9× the chains or draws).
Not a test: the numbers go into docs/reference_sampler.md.

    python benchmarks/nonlinear_seeds.py --seeds 0 1 2 --dir runs/Y -- \\
        --localization 10 --integrator leimkuhler-matthews --step-scale 0.6
    python benchmarks/nonlinear_seeds.py --from runs/Y/*.json
    python benchmarks/nonlinear_seeds.py --from runs/Y/*.json --against runs/X/*.json

About 5-8 minutes per suite run on 2 cores (with the default ``--reference-draws 16000``).
To run two suites side by side on 2 cores (``--suites nonlinear`` and ``--suites
nonlinear-heldout`` in two shells, ``--jobs 1`` each), set ``OMP_NUM_THREADS=1`` for both and
run nothing else: so run, a case with four tempered replicas took 3-8 minutes; with torch's
default threads and tests running beside them, one took 19.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import subprocess
import sys
from pathlib import Path

from _common import cores

from hf_llc.validation_nonlinear import TARGET_MAX, TARGET_MEDIAN

SUITES = ("nonlinear", "nonlinear-heldout")
#: |relative difference| above this is a miss (the issue's target for the worst case).
MISS = 0.10


def run_row(run: dict, name: str = "") -> dict:
    """One suite run (the JSON ``hf-llc validate --suite nonlinear… --output`` writes)
    summarised over all its cases."""
    cases = run["cases"]
    diffs = [abs(c["relative_difference"]) for c in cases]
    worst = max(cases, key=lambda c: abs(c["relative_difference"]))
    summary = run["summary"]
    return {
        "file": name,
        "suite": run["suite"],
        "teacher_seed": cases[0]["seed"],
        "num_cases": len(cases),
        "median_all": statistics.median(diffs),
        "max_all": max(diffs),
        "worst_case": worst["case"],
        "worst_relative_difference": worst["relative_difference"],
        "worst_verdict": worst["verdict"],
        "unconverged_reference": list(summary["unconverged_reference"]),
        "meets_targets": summary["meets_targets"],
        "missed_ok": [c["case"] for c in cases if _missed_ok(c)],
    }


#: How a run's ``meets_targets`` reads in the table (``None``: the converged cases are within
#: the targets but some references did not converge, so the run is untested).
MEETS = {True: "yes", False: "no", None: "untested"}


def _missed_ok(case: dict) -> bool:
    return abs(case["relative_difference"]) > MISS and case["verdict"] == "ok"


def pooled(runs: list[dict]) -> dict:
    """Every case of ``runs`` together: median |relative difference|, the misses (> 10%) and
    how many of them the verdict called ``ok``; runs meeting the targets."""
    cases = [c for run in runs for c in run["cases"]]
    diffs = [abs(c["relative_difference"]) for c in cases]
    return {
        "runs": len(runs),
        "runs_meeting_targets": sum(r["summary"]["meets_targets"] is True for r in runs),
        "cases": len(cases),
        "median_all": statistics.median(diffs) if diffs else float("nan"),
        "misses": sum(d > MISS for d in diffs),
        "misses_called_ok": sum(_missed_ok(c) for c in cases),
    }


def table(runs: list[dict], names: list[str]) -> str:
    """The Markdown rows of :func:`run_row` and the pooled line."""
    lines = [
        "| suite | seed | median / max (all cases) | worst case | R̂>1.05 | meets targets |",
        "|---|---|---|---|---|---|",
    ]
    for run, name in zip(runs, names):
        r = run_row(run, name)
        lines.append(
            f"| {r['suite']} | {r['teacher_seed']} | {r['median_all']:.1%} / {r['max_all']:.1%} "
            f"| {r['worst_case']} {r['worst_relative_difference']:+.1%} ({r['worst_verdict']}) "
            f"| {len(r['unconverged_reference'])} | {MEETS[r['meets_targets']]} |"
        )
    p = pooled(runs)
    lines.append(
        f"\n{p['runs_meeting_targets']} of {p['runs']} runs meet the targets; {p['cases']} cases: "
        f"median |rel. diff| {p['median_all']:.1%}, {p['misses']} more than {MISS:.0%} off, "
        f"{p['misses_called_ok']} of them with the verdict ok"
    )
    return "\n".join(lines)


def _by_case(runs: list[dict]) -> dict[tuple, float]:
    """|relative difference| of every case, keyed by (suite, teacher seed, case)."""
    out = {}
    for run in runs:
        for c in run["cases"]:
            key = (run["suite"], c["seed"], c["case"])
            if key in out:
                raise ValueError(f"case {key} appears twice; pass each suite run once.")
            out[key] = abs(c["relative_difference"])
    return out


def compare(runs: list[dict], baseline: list[dict], *, resamples: int = 10_000, seed: int = 0):
    """``runs`` against ``baseline`` case by case (the same suites, seeds and cases): the
    difference of their pooled median |relative difference|, its 95% interval from a paired
    bootstrap over the cases (``resamples`` draws, ``random.Random(seed)``), and how many
    cases ``runs`` reads closer to the reference."""
    a, b = _by_case(runs), _by_case(baseline)
    if set(a) != set(b):
        missing = sorted(set(a) ^ set(b))[:3]
        raise ValueError(f"the two sets of runs have different cases (e.g. {missing}).")
    keys = sorted(a)
    x, y = [a[k] for k in keys], [b[k] for k in keys]
    rng = random.Random(seed)
    draws = []
    for _ in range(resamples):
        idx = [rng.randrange(len(keys)) for _ in keys]
        draws.append(statistics.median(x[i] for i in idx) - statistics.median(y[i] for i in idx))
    draws.sort()
    return {
        "cases": len(keys),
        "median_difference": statistics.median(x) - statistics.median(y),
        "interval_95": (draws[int(0.025 * resamples)], draws[int(0.975 * resamples) - 1]),
        "closer": sum(u < v for u, v in zip(x, y)),
    }


#: (SGLD standard error, reference MCSE) divisors that ``--noise-floor`` tries: as reported,
#: 4× the chains, 4× the chains and the reference draws, 9× the chains and 4× the draws.
NOISE_SCALES = ((1, 1), (2, 1), (2, 2), (3, 2))


def noise_floor(runs: list[dict], *, se_div=1.0, mcse_div=1.0, draws=4000, seed=0) -> dict:
    """What an unbiased recipe would score with these runs' noise: each case's difference
    drawn as N(0, √((se/se_div)² + (mcse/mcse_div)²)) relative to the reference (SGLD's
    standard error and the reference's MCSE as each run reported them), ``draws`` times per
    run. Returns the share of simulated runs meeting both targets and the median of their
    median |relative difference|. ``se_div`` = 2 stands for 4× the chains."""
    rng = random.Random(seed)
    met, medians = 0, []
    for _ in range(draws):
        for run in runs:
            errs = []
            for c in run["cases"]:
                sd = math.hypot(c["llc_stderr"] / se_div, c["reference_mcse"] / mcse_div)
                errs.append(abs(rng.gauss(0.0, sd / abs(c["reference_llc"]))))
            med = statistics.median(errs)
            medians.append(med)
            met += med <= TARGET_MEDIAN and max(errs) <= TARGET_MAX
    return {"meets_targets": met / (draws * len(runs)), "median_all": statistics.median(medians)}


def _load_run(path: Path) -> dict:
    """One suite run's JSON; a clear error for anything else (e.g. this script's summary)."""
    run = json.loads(Path(path).read_text())
    if not isinstance(run, dict) or "cases" not in run or "suite" not in run:
        raise SystemExit(
            f"{path} is not a suite run (no 'suite' and 'cases'); pass the JSON files that "
            "`hf-llc validate --suite nonlinear… --output` wrote, not a summary."
        )
    if run.get("pending"):
        raise SystemExit(
            f"{path} is an unfinished run ({', '.join(run['pending'])} pending): rerun its "
            "command (it continues with --resume) before summarising it."
        )
    return run


def _run(suite: str, seed: int, out: Path, jobs: int, draws: int, flags: list[str]) -> None:
    cmd = [sys.executable, "-m", "hf_llc", "validate", "--suite", suite]
    cmd += ["--teacher-seed", str(seed), "--seed", str(seed), "--jobs", str(jobs)]
    cmd += ["--reference-draws", str(draws), *flags, "--output", str(out), "--resume"]
    print("$ python", " ".join(cmd[1:]), file=sys.stderr, flush=True)
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    flags = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--from", dest="files", nargs="+", type=Path, help="summarise these JSONs")
    ap.add_argument("--suites", nargs="+", choices=SUITES, default=list(SUITES))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--dir", type=Path, default=Path("nonlinear_seeds"))
    ap.add_argument("--jobs", type=int, default=cores())
    ap.add_argument("--reference-draws", type=int, default=16000)
    ap.add_argument("--output", type=Path, help="write the rows and the pooled line as JSON")
    ap.add_argument(
        "--against", nargs="+", type=Path, help="compare --from case by case with these JSONs"
    )
    ap.add_argument(
        "--noise-floor",
        action="store_true",
        help="also what an unbiased recipe would score with these runs' standard errors",
    )
    args = ap.parse_args(argv)
    files = args.files
    if files is None:
        args.dir.mkdir(parents=True, exist_ok=True)
        files = []
        for seed in args.seeds:
            for suite in args.suites:
                out = args.dir / f"{suite}_seed{seed}.json"
                _run(suite, seed, out, args.jobs, args.reference_draws, flags)
                files.append(out)
    runs = [_load_run(f) for f in files]
    names = [str(f) for f in files]
    print(table(runs, names))
    result = {"runs": [run_row(run, name) for run, name in zip(runs, names)]}
    result["pooled"] = pooled(runs)
    if args.against:
        c = compare(runs, [_load_run(f) for f in args.against])
        low, high = c["interval_95"]
        print(
            f"\nagainst --against, over {c['cases']} cases: pooled median |rel. diff| "
            f"{c['median_difference']:+.1%} (paired bootstrap 95%: {low:+.1%} to {high:+.1%}); "
            f"closer in {c['closer']} of {c['cases']} cases"
        )
        result["against"] = {"files": [str(f) for f in args.against], **c}
    if args.noise_floor:
        result["noise_floor"] = []
        print("\nan unbiased recipe with this noise (se, MCSE divided by):")
        for se_div, mcse_div in NOISE_SCALES:
            f = noise_floor(runs, se_div=se_div, mcse_div=mcse_div)
            result["noise_floor"].append({"se_div": se_div, "mcse_div": mcse_div, **f})
            print(
                f"  se/{se_div}, MCSE/{mcse_div}: {f['meets_targets']:.0%} of runs meet the "
                f"targets, median |rel. diff| {f['median_all']:.1%}"
            )
    if args.output is not None:
        args.output.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
