"""Benchmark registry and loaders.

Files live under the data root: ``--data-dir``, else ``$OPSD_DATA_DIR``, else ``data/`` in the
repository, filled by ``python -m eval.prepare`` with the same relative paths as
``../shared/data`` (so ``OPSD_DATA_DIR=../shared/data`` also works for the three test sets).
The toy benchmark reads ``heldout.jsonl`` of the toy world (``$OPSD_TOY_DIR``, default
``artifacts/toy``, built by ``recipes/toy/world.py``) and is graded by ``opsd.toy.task.reward``,
imported lazily.

The gold answer is each file's ``answer`` column, never one re-extracted from a solution. A
benchmark's version id is the sha256 of its file; results carry it, so a run on a different file
(e.g. a Hub download that is not byte-identical) cannot be mixed into an earlier one.
"""
from __future__ import annotations

import hashlib
import importlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from eval.grading import GradeResult, Grader

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"  # the shared local copy eval.prepare reads
DATA_ENV = "OPSD_DATA_DIR"
TOY_ENV = "OPSD_TOY_DIR"  # the toy world's folder (default artifacts/toy)


class BenchmarkError(ValueError):
    """A benchmark file is missing or malformed; the message names the file and row."""


@dataclass(frozen=True)
class HubSource:
    """Where ``eval.prepare --hub`` downloads a file from (``datasets.load_dataset``)."""

    repo: str
    split: str


@dataclass(frozen=True)
class BenchmarkSpec:
    """A registered benchmark.

    ``relpath`` is under the data root (``root="data"``) or the toy folder (``root="toy"``:
    ``$OPSD_TOY_DIR``, default ``artifacts/toy``);
    ``answer_type`` is ``math`` | ``integer`` (see ``eval.grading``) | ``toy`` (graded by the toy
    task) | ``deepplanning`` (agent episodes, see ``eval.deepplanning.evaluate``); ``int_range``
    bounds integer golds (AIME: 0-999) and is checked at load time.
    """

    name: str
    relpath: str
    problem_field: str
    answer_field: str
    id_field: Optional[str]
    answer_type: str
    template: str
    root: str = "data"
    int_range: Optional[Tuple[int, int]] = None
    hub: Optional[HubSource] = None
    paper_name: str = ""
    max_new_tokens: int = 8192  # the paper's max response length (Table 9)


BENCHMARKS: Dict[str, BenchmarkSpec] = {
    spec.name: spec
    for spec in [
        BenchmarkSpec("math500", "MATH-500/test.jsonl", "problem", "answer", "unique_id", "math",
                      "boxed", hub=HubSource("HuggingFaceH4/MATH-500", "test"), paper_name="MATH-500"),
        BenchmarkSpec("aime24", "AIME_2024/aime_2024_problems.parquet", "problem", "answer", "id",
                      "integer", "boxed", int_range=(0, 999),
                      hub=HubSource("HuggingFaceH4/aime_2024", "train"), paper_name="AIME'24"),
        BenchmarkSpec("aime25", "AIME_2025/train.jsonl", "problem", "answer", "id", "integer",
                      "boxed", int_range=(0, 999), hub=HubSource("math-ai/aime25", "test"),
                      paper_name="AIME'25"),
        # The 20 % held-out split of DAPO-Math-17k written by eval.prepare (Table 8's MATH-DAPO).
        BenchmarkSpec("dapo", "dapo/validation.jsonl", "problem", "answer", "id", "integer", "dapo",
                      paper_name="MATH-DAPO"),
        BenchmarkSpec("toy", "heldout.jsonl", "prompt", "answer", "id", "toy",
                      "plain", root="toy", max_new_tokens=64),
        # The held-out 20 % of the DeepPlanning travel tasks (Table 7), written by eval.prepare; played
        # as agent episodes and scored by eval.deepplanning (the "answer" is the task id).
        BenchmarkSpec("deepplanning_travel", "deepplanning/travel_test.jsonl", "query", "id", "id",
                      "deepplanning", "plain", paper_name="DeepPlanning Travel"),
    ]
}


@dataclass
class Problem:
    id: str
    problem: str
    answer: str


@dataclass
class Benchmark:
    """A loaded benchmark: its spec, file, version id and problems (in file order)."""

    spec: BenchmarkSpec
    path: Path
    version: str
    problems: List[Problem] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.spec.name

    def grade(self, response: str, answer: str, grader: Grader) -> GradeResult:
        if self.spec.answer_type == "toy":
            return grade_toy(response, answer)
        return grader.grade(response, answer, self.spec.answer_type)


def data_root(data_dir: Optional[str] = None) -> Path:
    """``data_dir``, else ``$OPSD_DATA_DIR``, else ``<repo>/data``."""
    return Path(data_dir or os.environ.get(DATA_ENV) or REPO_ROOT / "data")


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def get_spec(name: str) -> BenchmarkSpec:
    if name not in BENCHMARKS:
        raise BenchmarkError(f"--bench {name!r} is unknown; choose from {sorted(BENCHMARKS)}")
    return BENCHMARKS[name]


def toy_dir() -> Path:
    return Path(os.environ.get(TOY_ENV) or REPO_ROOT / "artifacts" / "toy")


def benchmark_path(spec: BenchmarkSpec, data_dir: Optional[str] = None) -> Path:
    base = toy_dir() if spec.root == "toy" else data_root(data_dir)
    return base / spec.relpath


def read_rows(path: Path) -> List[Dict[str, Any]]:
    """Rows of a jsonl or parquet file; a bad jsonl line is an error naming file and line."""
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    rows = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise BenchmarkError(f"{path}:{lineno}: not valid JSON ({e})") from e
    return rows


def _missing_message(spec: BenchmarkSpec, path: Path) -> str:
    if spec.root == "toy":
        return (f"benchmark {spec.name!r}: {path} not found; build the toy world first "
                f"(python recipes/toy/world.py --world toy --out artifacts/toy) or set ${TOY_ENV}")
    if spec.name == "deepplanning_travel":
        return (f"benchmark 'deepplanning_travel': {path} not found; run `python -m eval.prepare` to write "
                "the DeepPlanning travel split")
    if spec.name == "dapo":
        return (f"benchmark 'dapo': {path} not found; run `python -m eval.prepare` to write the "
                "DAPO train/validation split")
    return (f"benchmark {spec.name!r}: {path} not found; run `python -m eval.prepare` (copies "
            f"from ../shared/data, or --hub downloads) or point --data-dir / ${DATA_ENV} at a "
            "folder that holds " + spec.relpath)


def _to_problem(spec: BenchmarkSpec, row: Dict[str, Any], index: int, path: Path) -> Problem:
    where = f"{path} row {index}"
    for key in (spec.problem_field, spec.answer_field):
        if row.get(key) is None:
            raise BenchmarkError(f"{where}: field {key!r} is missing")
    answer = str(row[spec.answer_field]).strip()
    if spec.answer_type == "integer":
        try:
            value = int(answer)
        except ValueError:
            raise BenchmarkError(f"{where}: answer {answer!r} is not an integer") from None
        lo_hi = spec.int_range
        if lo_hi and not lo_hi[0] <= value <= lo_hi[1]:
            raise BenchmarkError(f"{where}: answer {value} is outside {lo_hi}")
    pid = row.get(spec.id_field) if spec.id_field else None
    return Problem(id=str(index if pid is None else pid), problem=str(row[spec.problem_field]),
                   answer=answer)


def load_benchmark(name: str, data_dir: Optional[str] = None, limit: Optional[int] = None) -> Benchmark:
    """Load a registered benchmark (the first ``limit`` problems when given)."""
    spec = get_spec(name)
    path = benchmark_path(spec, data_dir)
    if not path.is_file():
        raise BenchmarkError(_missing_message(spec, path))
    problems = [_to_problem(spec, row, i, path) for i, row in enumerate(read_rows(path))]
    ids = [p.id for p in problems]
    if len(set(ids)) != len(ids):
        raise BenchmarkError(f"{path}: problem ids in {spec.id_field!r} are not unique")
    if limit is not None:
        problems = problems[:limit]
    return Benchmark(spec=spec, path=path, version="sha256:" + file_sha256(path), problems=problems)


# ---------------------------------------------------------------------------------------------
# The toy task's grader (written in opsd.toy.task by the toy-world code)
# ---------------------------------------------------------------------------------------------

TOY_TASK_MODULE = "opsd.toy.task"


def _toy_function(name: str) -> Optional[Callable]:
    try:
        module = importlib.import_module(TOY_TASK_MODULE)
    except ImportError as e:
        raise BenchmarkError(f"benchmark 'toy' needs {TOY_TASK_MODULE} (the toy task): {e}") from e
    return getattr(module, name, None)


def grade_toy(response: str, answer: str) -> GradeResult:
    """``opsd.toy.task.reward(response, answer)``; the reward is binary, so > 0.5 is correct.
    The vote key comes from the task's ``extract_answer`` when it has one."""
    reward_fn = _toy_function("reward")
    if reward_fn is None:
        raise BenchmarkError(f"{TOY_TASK_MODULE} has no function 'reward'")
    extract = _toy_function("extract_answer")
    key = extract(response) if extract is not None else None
    return GradeResult(correct=float(reward_fn(response, answer)) > 0.5,
                       extracted=None if key is None else str(key))
