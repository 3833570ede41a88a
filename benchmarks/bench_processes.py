"""Chains over processes: ``hf-llc validate`` with 1 process versus ``accelerate launch`` with 2.

The same total work (one DLN case, the same chains × steps, a fixed ``--step-size`` so that no
curvature estimation runs, ``--jobs 1``) is run as a subprocess

* plainly: ``python -m hf_llc validate ...`` (one process runs every chain), and
* under ``python -m accelerate.commands.launch --multi_gpu --num_processes P -m hf_llc
  validate ...`` with ``ACCELERATE_USE_CPU=1`` (chain c on process c mod P),

alternating the two over ``--rounds`` rounds. Every process of both runs gets
``OMP_NUM_THREADS=1`` (checked first with a probe launched the same two ways), so the
comparison is processes, not intra-op threads. Reported per run: the subprocess wall time
(process start-up, imports, ``accelerate`` rendezvous included), the in-process time of the
case from the JSON (``cases[0]["seconds"]``: building the DLN problem plus ``estimate_llc``),
their difference (start-up and teardown), the children's CPU seconds, chains/s and the
throughput ratio P-process / 1-process (ideal: P on P free cores); and whether both runs wrote
identical ``llc_per_chain``. See ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import cores

PROBE = """\
import os, torch
print(os.environ.get("RANK", "0"), os.environ.get("WORLD_SIZE", "1"),
      os.environ.get("OMP_NUM_THREADS"), torch.get_num_threads(), flush=True)
"""


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--widths", default="50,50,50", help="DLN widths, as for hf-llc validate")
    p.add_argument("--rank", type=int, default=50)
    p.add_argument("--construction", default="full_rank")
    p.add_argument("--num-samples", type=int, default=20_000)
    p.add_argument("--num-chains", type=int, default=8)
    p.add_argument("--num-draws", type=int, default=1500)
    p.add_argument("--num-burnin", type=int, default=500)
    p.add_argument("--step-size", default="1e-6", help="fixed ε (no curvature estimation)")
    p.add_argument("--processes", type=int, default=2, help="P of the accelerate run")
    p.add_argument("--rounds", type=int, default=3, help="alternations of the two runs")
    p.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of every process")
    p.add_argument("--keep", type=Path, default=None, help="keep the JSON outputs in this dir")
    return p.parse_args(argv)


def child_env(threads: int) -> dict:
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = str(threads)
    env["MKL_NUM_THREADS"] = str(threads)
    env["ACCELERATE_USE_CPU"] = "1"
    env.pop("WORLD_SIZE", None)  # the plain run must not think it is distributed
    env.pop("RANK", None)
    return env


def launcher(processes: int) -> list[str]:
    """The command prefix: plain ``python``, or ``accelerate launch`` with P CPU processes."""
    if processes == 1:
        return [sys.executable]
    return [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        str(processes),
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
    ]


def check_threads(args: argparse.Namespace, env: dict, tmp: Path) -> None:
    """Launch a probe both ways; every process must report torch.get_num_threads() == threads."""
    probe = tmp / "probe_threads.py"
    probe.write_text(PROBE)
    for procs in (1, args.processes):
        out = subprocess.run(
            [*launcher(procs), str(probe)],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        lines = sorted(line.split() for line in out.splitlines() if line.strip())
        threads = [int(line[3]) for line in lines]
        print(
            f"thread check, {procs} process(es): "
            + ", ".join(f"rank {r[0]}/{r[1]} OMP_NUM_THREADS={r[2]} torch={r[3]}" for r in lines)
        )
        if len(lines) != procs or any(t != args.threads for t in threads):
            raise SystemExit(f"expected {procs} process(es) with {args.threads} thread(s) each")


def run_once(args: argparse.Namespace, procs: int, env: dict, output: Path) -> dict:
    cmd = [
        *launcher(procs),
        "-m",
        "hf_llc",
        "validate",
        "--widths",
        args.widths,
        "--rank",
        str(args.rank),
        "--construction",
        args.construction,
        "--num-samples",
        str(args.num_samples),
        "--num-chains",
        str(args.num_chains),
        "--num-draws",
        str(args.num_draws),
        "--num-burnin",
        str(args.num_burnin),
        "--step-size",
        args.step_size,
        "--jobs",
        "1",
        "--no-progress",
        "--output",
        str(output),
    ]
    output.unlink(missing_ok=True)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout + proc.stderr)
        raise SystemExit(f"{procs}-process run failed (rc {proc.returncode})")
    data = json.loads(output.read_text())
    case = data["cases"][0]
    if case["num_processes"] != procs:
        raise SystemExit(f"asked for {procs} processes, the JSON says {case['num_processes']}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {
        "procs": procs,
        "wall": wall,
        "case": case["seconds"],
        "suite": data["summary"]["wall_seconds"],
        "cpu": cpu,
        "llc_per_chain": case["llc_per_chain"],
        "llc_mean": case["llc_mean"],
    }


def main(argv=None) -> int:
    args = parse_args(argv)
    env = child_env(args.threads)
    steps = args.num_draws + args.num_burnin
    P = args.processes
    import torch

    print(
        f"{platform.platform()}, python {platform.python_version()}, torch {torch.__version__}, "
        f"{cores()} cores, load average {os.getloadavg()[0]:.2f}"
    )
    print(
        f"DLN {args.widths} rank {args.rank} {args.construction}, n = {args.num_samples}; "
        f"{args.num_chains} chains × {steps} steps ({args.num_burnin} burn-in), "
        f"ε = {args.step_size}; 1 process vs {P} processes, "
        f"OMP_NUM_THREADS={args.threads}, {args.rounds} rounds\n"
    )
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = args.keep or Path(tmpdir)
        tmp.mkdir(parents=True, exist_ok=True)
        check_threads(args, env, tmp)
        runs: dict[int, list[dict]] = {1: [], P: []}
        for rnd in range(args.rounds):
            order = (1, P) if rnd % 2 == 0 else (P, 1)  # alternate who goes first
            for procs in order:
                r = run_once(args, procs, env, tmp / f"out_p{procs}_r{rnd}.json")
                runs[procs].append(r)
                print(
                    f"round {rnd + 1}, {procs} process(es): wall {r['wall']:.2f}s, "
                    f"case {r['case']:.2f}s, start-up+teardown {r['wall'] - r['suite']:.2f}s, "
                    f"CPU {r['cpu']:.1f}s, λ̂ = {r['llc_mean']:.6g}",
                    flush=True,
                )

    def med(procs: int, key: str) -> float:
        return statistics.median(r[key] for r in runs[procs])

    print()
    head = f"{'':>14} {'wall s':>8} {'case s':>8} {'start-up s':>10} {'CPU s':>7}"
    head += f" {'chains/s':>9} {'chains/s (case)':>16} {'s/chain/proc':>13}"
    print(head)
    for procs in (1, P):
        wall, case = med(procs, "wall"), med(procs, "case")
        start_up = statistics.median(r["wall"] - r["suite"] for r in runs[procs])
        # Seconds a process spends per chain it runs (the case's time includes building the
        # problem, which every process does once; the JSON has no per-chain timings).
        per_chain = case / (args.num_chains / procs)
        print(
            f"{procs:>2} process(es) {wall:>8.2f} {case:>8.2f} {start_up:>10.2f} "
            f"{med(procs, 'cpu'):>7.1f} {args.num_chains / wall:>9.3f} "
            f"{args.num_chains / case:>16.3f} {per_chain:>13.3f}"
        )
    ratio_wall = med(1, "wall") / med(P, "wall")
    ratio_case = med(1, "case") / med(P, "case")
    per_round = [a["wall"] / b["wall"] for a, b in zip(runs[1], runs[P])]
    print(
        f"\nthroughput ratio {P}-process / 1-process (ideal {P}.0 on {P} free cores):\n"
        f"  wall, start-up included: {ratio_wall:.2f}  "
        f"(per round: {', '.join(f'{x:.2f}' for x in per_round)})\n"
        f"  in-process case time:    {ratio_case:.2f}"
    )
    reference = runs[1][0]["llc_per_chain"]
    same = all(r["llc_per_chain"] == reference for rs in runs.values() for r in rs)
    print(f"llc_per_chain identical across all {2 * args.rounds} runs: {same}")
    if not same:
        for procs, rs in runs.items():
            print(f"  {procs} process(es): {rs[0]['llc_per_chain']}")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
