"""``python -m eval.grader_agreement``: does the grader accept each benchmark's own gold solution?

Grades every reference solution text (MATH-500 ``solution``, AIME 2024 ``solution``) against the
row's ``answer`` with ``eval.grading`` and lists every miss with the answer the grader extracted.
A grader that fails its own gold solutions would under-count every model. Exit status 1 when the
agreement of a benchmark is below ``--min-agreement`` (default 0.99).

    python -m eval.grader_agreement [--data-dir DIR] [--isolation process|inline]
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field
from typing import List, Optional, Sequence

from eval.benchmarks import benchmark_path, get_spec, read_rows
from eval.grading import Grader, GradingConfig

SOLUTION_BENCHES = ("math500", "aime24")  # the benchmarks whose files carry a solution text


@dataclass
class Miss:
    index: int
    problem_id: str
    answer: str
    extracted: Optional[str]
    reason: str
    tail: str


@dataclass
class Agreement:
    benchmark: str
    total: int
    correct: int
    seconds: float
    misses: List[Miss] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.correct / self.total if self.total else 0.0


def _reason(result) -> str:
    if result.timed_out:
        return "timed out"
    if result.error:
        return result.error
    if result.extracted is None:
        return "no answer extracted from the solution"
    return "extracted answer not equivalent to the gold answer"


def agreement(bench: str, grader: Grader, data_dir: Optional[str] = None) -> Agreement:
    spec = get_spec(bench)
    rows = read_rows(benchmark_path(spec, data_dir))
    start, correct, misses = time.perf_counter(), 0, []
    for i, row in enumerate(rows):
        answer = str(row[spec.answer_field]).strip()
        result = grader.grade(row["solution"], answer, spec.answer_type)
        if result.correct:
            correct += 1
        else:
            tail = " ".join(row["solution"][-160:].split())
            misses.append(Miss(i, str(row.get(spec.id_field, i)), answer, result.extracted,
                               _reason(result), tail))
    return Agreement(bench, len(rows), correct, time.perf_counter() - start, misses)


def report(result: Agreement) -> str:
    lines = [f"{result.benchmark}: {result.correct}/{result.total} = {100 * result.rate:.1f}% "
             f"of gold solutions graded correct ({result.total / result.seconds:.0f} answers/s)"]
    for m in result.misses:
        lines.append(f"  miss row {m.index} (id {m.problem_id}): gold {m.answer!r}, extracted "
                     f"{m.extracted!r}: {m.reason}\n    solution ends: …{m.tail}")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m eval.grader_agreement", description=__doc__.split("\n")[0])
    p.add_argument("--data-dir", default=None)
    p.add_argument("--bench", default=",".join(SOLUTION_BENCHES))
    p.add_argument("--isolation", default="process", choices=["process", "inline"])
    p.add_argument("--min-agreement", type=float, default=0.99)
    args = p.parse_args(argv)
    grader = Grader(GradingConfig(isolation=args.isolation))
    ok = True
    try:
        for bench in args.bench.split(","):
            result = agreement(bench, grader, args.data_dir)
            print(report(result))
            ok &= result.rate >= args.min_agreement
    finally:
        grader.close()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
