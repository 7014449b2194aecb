"""Where DeepPlanning's files are, and the agent limits of its evaluation: the one place for both.

Under the data root (``--data-dir``, else ``$OPSD_DATA_DIR``, else ``data/``; ``python -m
eval.prepare`` fills it with the same relative paths as ``../shared/data``)::

    DeepPlanning/travelplanning/travelplanning_query_en.json     the shipped queries     QUERY_RELPATH
    DeepPlanning/travelplanning_tool_schema/tool_schema_en.json  the shipped tool schemas  SCHEMA_RELPATH
    DeepPlanning/travelplanning/database/                        default database folder  DB_RELPATH
    deepplanning/{travel_train,travel_test}.jsonl, split.json    the 80/20 split (eval.deepplanning.data)

The database is not shipped: ``$DEEPPLANNING_DB`` names it (the unzipped ``database_en.zip`` of
the Hub data set Qwen/DeepPlanning). The queries and the tool schema are looked for in the data
root, then in the shared copy (``../shared/data``); a missing file is an error naming every place
looked at.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Optional

from eval.benchmarks import SHARED_DATA, data_root

QUERY_RELPATH = "DeepPlanning/travelplanning/travelplanning_query_en.json"
SCHEMA_RELPATH = "DeepPlanning/travelplanning_tool_schema/tool_schema_en.json"
DB_RELPATH = "DeepPlanning/travelplanning/database"
DB_ENV = "DEEPPLANNING_DB"
SPLIT_DIR = "deepplanning"
TRAIN_FILE, TEST_FILE, SPLIT_FILE = "travel_train.jsonl", "travel_test.jsonl", "split.json"

# Agent limits of eval.run's deepplanning_travel (recorded in the benchmark's settings, so a
# resumed run uses the same); each environment variable overrides its default.
MAX_TURNS_ENV, MAX_TURNS = "DEEPPLANNING_MAX_TURNS", 40  # assistant turns per episode
MAX_EPISODE_TOKENS_ENV, MAX_EPISODE_TOKENS = "DEEPPLANNING_MAX_EPISODE_TOKENS", 32768  # after the prompt


def find(what: str, relpath: str, roots: Iterable[Path]) -> Path:
    """The first ``root / relpath`` that is a file; else a FileNotFoundError naming ``what`` and
    every path looked at."""
    tried = [Path(r) / relpath for r in roots]
    for path in tried:
        if path.is_file():
            return path
    raise FileNotFoundError(f"DeepPlanning {what} not found (looked at {', '.join(map(str, tried))}; "
                            "python -m eval.prepare copies it from ../shared/data)")


def query_file(data_dir: Optional[str] = None, source: Optional[Path] = None) -> Path:
    """The shipped query JSON: the data root's copy, else ``source``'s (default ../shared/data)."""
    return find("query file", QUERY_RELPATH, [data_root(data_dir), Path(source or SHARED_DATA)])


def schema_file(data_dir: Optional[str] = None) -> Path:
    """The shipped tool schemas: the data root's copy, else the shared copy."""
    return find("tool schema", SCHEMA_RELPATH, [data_root(data_dir), SHARED_DATA])


def split_file(data_dir: Optional[str] = None) -> Optional[Path]:
    """The data root's ``deepplanning/split.json``, or None before ``eval.prepare`` wrote it (the
    split file is optional: the environment records it when there is one)."""
    path = data_root(data_dir) / SPLIT_DIR / SPLIT_FILE
    return path if path.is_file() else None


def db_dir(data_dir: Optional[str] = None) -> Path:
    """``$DEEPPLANNING_DB``, else ``<data root>/DeepPlanning/travelplanning/database`` (whether it
    exists is the environment's check, which names the folder)."""
    env = os.environ.get(DB_ENV)
    return Path(env) if env else data_root(data_dir) / DB_RELPATH


def agent_limits() -> dict:
    """``max_turns`` and ``max_episode_tokens`` of the evaluation: the defaults above, each
    overridden by its environment variable."""
    return {"max_turns": int(os.environ.get(MAX_TURNS_ENV, MAX_TURNS)),
            "max_episode_tokens": int(os.environ.get(MAX_EPISODE_TOKENS_ENV, MAX_EPISODE_TOKENS))}
