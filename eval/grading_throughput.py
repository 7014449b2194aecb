"""``python -m eval.grading_throughput``: answers graded per second on this machine.

Workload: the MATH-500 gold solutions (long texts, LaTeX answers) graded against their answers,
repeated ``--repeat`` times the way an evaluation repeats each gold answer n times; plus a short
"boxed integer" workload (AIME-style). Prints answers/s for each isolation mode.

    python -m eval.grading_throughput [--repeat 4] [--isolation process,inline]
"""
from __future__ import annotations

import argparse
import sys
import time
from typing import List, Optional, Sequence, Tuple

from eval.benchmarks import benchmark_path, get_spec, read_rows
from eval.grading import Grader, GradingConfig


def workloads(data_dir: Optional[str]) -> List[Tuple[str, List[Tuple[str, str, str]]]]:
    rows = read_rows(benchmark_path(get_spec("math500"), data_dir))
    math = [(r["solution"], r["answer"], "math") for r in rows]
    ints = [(f"Reasoning ... so the answer is \\boxed{{{i % 1000:03d}}}.", str(i % 1000), "integer")
            for i in range(500)]
    return [("MATH-500 solutions", math), ("boxed AIME-style integers", ints)]


def measure(grader: Grader, items: Sequence[Tuple[str, str, str]], repeat: int) -> Tuple[float, int]:
    grader.grade("warm-up \\boxed{1}", "1")  # worker start-up and imports are not grading time
    start = time.perf_counter()
    correct = sum(grader.grade(r, g, t).correct for _ in range(repeat) for r, g, t in items)
    return (len(items) * repeat) / (time.perf_counter() - start), correct


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m eval.grading_throughput", description=__doc__.split("\n")[0])
    p.add_argument("--data-dir", default=None)
    p.add_argument("--repeat", type=int, default=2, help="passes over each workload")
    p.add_argument("--isolation", default="process,inline")
    args = p.parse_args(argv)
    for isolation in args.isolation.split(","):
        grader = Grader(GradingConfig(isolation=isolation))
        try:
            for name, items in workloads(args.data_dir):
                rate, correct = measure(grader, items, args.repeat)
                print(f"{isolation:8s} {name:28s} {rate:8.0f} answers/s "
                      f"({len(items) * args.repeat} graded, {correct} correct)")
        finally:
            grader.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
