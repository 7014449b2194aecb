"""The toy worlds' rows and files: hash splits, deterministic draws, atomic writes (no torch here).

Train and held-out rows are disjoint by construction: the split of an item is a hash of its text,
so no seed or count can make them overlap. Every file is written to a temporary name and renamed,
so a crash never leaves a half-written one.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, TypeVar

SPLITS = ("train", "heldout")
T = TypeVar("T")


def hash_split(text: str, heldout_per_mille: int) -> str:
    """'heldout' for a fixed hash-defined share of texts, else 'train'."""
    digest = hashlib.sha256(text.encode()).hexdigest()
    return "heldout" if int(digest[:8], 16) % 1000 < heldout_per_mille else "train"


def draw(n: int, seed: str, split: str, cfg, sample: Callable[..., T], key: Callable[[T], str],
         split_of: Callable[..., str], what: str) -> List[T]:
    """``n`` items of ``split`` with distinct ``key``, from ``sample(rng, cfg)`` with
    ``random.Random(seed)`` (a string seed: stable across Python runs); deterministic in its arguments."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    cfg.validate()
    rng = random.Random(seed)
    seen, out = set(), []
    for _ in range(200 * n + 10_000):  # bounded: a tiny space must fail, not hang
        if len(out) == n:
            return out
        item = sample(rng, cfg)
        if key(item) not in seen and split_of(item, cfg) == split:
            seen.add(key(item))
            out.append(item)
    raise ValueError(f"could draw only {len(out)} distinct {split} {what} of {n}; widen the {type(cfg).__name__}")


def write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_splits(out_dir, lines: Dict[str, Sequence[str]]) -> Dict[str, str]:
    """Write ``{split}.jsonl`` with the given lines per split; return the paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for split, rows in lines.items():
        write_text(out_dir / f"{split}.jsonl", "".join(line + "\n" for line in rows))
        paths[split] = str(out_dir / f"{split}.jsonl")
    return paths


def read_rows(path) -> List[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def write_json(path: Path, obj) -> None:
    write_text(path, json.dumps(obj, indent=2) + "\n")


def read_json(path: Path) -> Optional[dict]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def tmp_dir(final: Path) -> Path:
    """A temporary sibling of ``final`` to build into (see :func:`replace_dir`)."""
    return final.with_name(f".{final.name}.tmp{os.getpid()}")


def replace_dir(tmp: Path, final: Path) -> None:
    """Swap a finished temporary folder into place (the old one is only removed once the new
    one is complete)."""
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
