"""How long do ``import hf_llc`` and ``hf-llc estimate --help`` take, against importing the
modules an estimate needs (what ``import hf_llc`` loaded before it became lazy)?

Each command runs in a fresh interpreter; the three are interleaved over ``--rounds`` rounds
(the order rotates) and the medians are reported with their ratios.

    python benchmarks/bench_import.py --rounds 5
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

COMMANDS = {
    "import hf_llc": [sys.executable, "-c", "import hf_llc"],
    "hf-llc estimate --help": [sys.executable, "-m", "hf_llc", "estimate", "--help"],
    "import the estimate stack": [
        sys.executable,
        "-c",
        "import hf_llc.estimator, hf_llc.loading, hf_llc.integrations.trainer, hf_llc.models.dln",
    ],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    names = list(COMMANDS)
    seconds: dict[str, list[float]] = {name: [] for name in names}
    for r in range(args.rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            start = time.perf_counter()
            subprocess.run(COMMANDS[name], check=True, stdout=subprocess.DEVNULL)
            seconds[name].append(time.perf_counter() - start)
    stack = statistics.median(seconds["import the estimate stack"])
    print(f"{'command':28} {'median s':>9} {'/ stack':>8}")
    for name in names:
        median = statistics.median(seconds[name])
        print(f"{name:28} {median:9.2f} {median / stack:8.2f}")


if __name__ == "__main__":
    main()
