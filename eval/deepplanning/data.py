"""The 120 English travel tasks, their seeded 80/20 split, and the database check.

Files under the data root (``python -m eval.prepare`` writes them; :mod:`eval.deepplanning.files`
finds them)::

    deepplanning/travel_train.jsonl   96 tasks: {"id", "query", "meta_info"} (the trainer's rows)
    deepplanning/travel_test.jsonl    24 tasks (the held-out 20 %, eval.run's deepplanning_travel)
    deepplanning/split.json           seed, fraction, ids of both parts, sha256 of the query file

The split is ``random.Random(seed).shuffle`` of the task ids sorted numerically; the test part is
the first ``round(fraction * 120)`` ids. Runs record ``split.json`` (the environment puts its
sha256 in every episode's info; eval.run's benchmark version is the sha256 of the test file).
"""
from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from typing import Any, Dict, List

from eval.deepplanning.database import check_task, count_duplicates
from eval.deepplanning.files import SPLIT_FILE, TEST_FILE, TRAIN_FILE

ROW_KEYS = ("id", "query", "meta_info")


class TaskDataError(ValueError):
    """A query file or split file is missing or malformed; names the file."""


def load_queries(path: Path) -> List[Dict[str, Any]]:
    """The tasks of the shipped query JSON (a list of {id, query, meta_info, ...})."""
    path = Path(path)
    if not path.is_file():
        raise TaskDataError(f"{path} is missing (python -m eval.prepare copies it from ../shared/data)")
    try:
        tasks = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise TaskDataError(f"{path}: not valid JSON ({e})") from e
    for i, t in enumerate(tasks):
        missing = [k for k in ROW_KEYS if k not in t]
        if missing:
            raise TaskDataError(f"{path} task {i}: missing {missing}")
    return tasks


def split_ids(ids: List[str], seed: int = 0, test_fraction: float = 0.2) -> Dict[str, List[str]]:
    if not 0 < test_fraction < 1:
        raise ValueError(f"test fraction must be in (0, 1), got {test_fraction}")
    order = sorted(ids, key=lambda x: (len(x), x))  # numeric order of "0".."119"
    random.Random(seed).shuffle(order)
    n_test = round(test_fraction * len(order))
    key = lambda x: int(x) if x.isdigit() else x  # noqa: E731
    return {"train": sorted(order[n_test:], key=key), "test": sorted(order[:n_test], key=key)}


def _write_jsonl(path: Path, rows: List[Dict[str, Any]]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps({k: r[k] for k in ROW_KEYS}, ensure_ascii=False) + "\n")
    tmp.replace(path)


def write_split(query_file: Path, out_dir: Path, seed: int = 0, test_fraction: float = 0.2) -> Dict[str, Any]:
    """Write the train/test jsonl files and ``split.json``; returns the split record."""
    tasks = load_queries(query_file)
    by_id = {str(t["id"]): t for t in tasks}
    parts = split_ids(list(by_id), seed, test_fraction)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_jsonl(out_dir / TRAIN_FILE, [by_id[i] for i in parts["train"]])
    _write_jsonl(out_dir / TEST_FILE, [by_id[i] for i in parts["test"]])
    record = {"seed": seed, "test_fraction": test_fraction, "source": str(query_file),
              "source_sha256": hashlib.sha256(Path(query_file).read_bytes()).hexdigest(),
              "train": parts["train"], "test": parts["test"]}
    (out_dir / SPLIT_FILE).write_text(json.dumps(record, indent=1) + "\n")
    return record


def read_split(path: Path) -> Dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise TaskDataError(f"split file {path} is missing (python -m eval.prepare writes it)")
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise TaskDataError(f"{path}: not valid JSON ({e})") from e
    if not {"train", "test"} <= set(record):
        raise TaskDataError(f"{path}: expected keys 'train' and 'test'")
    record["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    return record


def check_database(db_root: Path, task_ids: List[str]) -> List[str]:
    """Every problem of a database folder for these tasks (one line each, naming task and file)."""
    db_root = Path(db_root)
    if not db_root.is_dir():
        return [f"database folder {db_root} is missing"]
    return [p for tid in task_ids for p in check_task(db_root, str(tid))]


def duplicate_summary(db_root: Path, task_ids: List[str]) -> str:
    """One line: per table, the rows that repeat an earlier row's name and the tasks that have
    any. Not an error: the scorer then checks against the last such row and the tools answer with
    the first, both as officially; a plan written from a tool's answer can fail the scorer."""
    rows, tasks = {}, {}
    for tid in task_ids:
        for table, n in count_duplicates(Path(db_root), str(tid)).items():
            rows[table] = rows.get(table, 0) + n
            tasks[table] = tasks.get(table, 0) + bool(n)
    parts = ", ".join(f"{t} {rows[t]} row(s) in {tasks[t]} task(s)" for t in rows)
    return (f"duplicate names ({parts}); the scorer keeps a name's last row, the tools its first, "
            "as officially")
