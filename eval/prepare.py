"""``python -m eval.prepare``: put the benchmark files into the data root and write the DAPO split.

    python -m eval.prepare                      # copy from ../shared/data into data/
    python -m eval.prepare --hub                # download with `datasets` (needs network)
    python -m eval.prepare --data-dir /x --source /y --seed 0 --val-fraction 0.2

Local branch: each file is copied verbatim (same relative path) from ``--source`` (default
``../shared/data``, beside the repository) and checked against the sha256 in its
``MANIFEST.json`` when there is one. Hub branch (``--hub``, or when the local copy is missing):
``datasets.load_dataset`` then ``to_json``/``to_parquet``. A Hub export is not byte-identical to
the shared copy, so its benchmark version id differs and its results are not mixed with results
on the shared copy (``eval.run`` refuses to resume across versions).

DAPO-Math-17k: the prompt is a one-message chat list and the answer is
``reward_model.ground_truth``. Rows are deduplicated on the whitespace-normalized user message
(``--dedup exact`` for byte-equal only; exact dedup gives the 17,398 rows of the public
``DAPO-Math-17k-dedup``); a prompt whose copies disagree on the answer is dropped entirely
(ambiguous gold). The rest is shuffled with ``--seed`` and split ``--val-fraction`` into
``dapo/train.jsonl`` and ``dapo/validation.jsonl``, rows ``{"prompt", "answer", "problem", "id"}``:
``prompt`` is the user message as DAPO wrote it (what the trainer reads with
``data.prompt_field=prompt``), ``problem`` the same text without DAPO's fixed instruction.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import sys
from collections import OrderedDict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence

from eval.benchmarks import BENCHMARKS, SHARED_DATA, HubSource, data_root, file_sha256, read_rows
from eval.deepplanning import data as travel
from eval.deepplanning import files as travel_files
from eval.templates import strip_dapo_instruction

DEFAULT_SOURCE = SHARED_DATA
DAPO_RELPATH = "DAPO-Math-17k/dapo-math-17k.parquet"
DAPO_HUB = HubSource("BytedTsinghua-SIA/DAPO-Math-17k", "train")
# Files copied/downloaded: benchmark name -> (relative path, hub source)
SOURCE_FILES = {name: (spec.relpath, spec.hub) for name, spec in BENCHMARKS.items() if spec.hub}
SOURCE_FILES["dapo"] = (DAPO_RELPATH, DAPO_HUB)
# DeepPlanning travel queries (local copy only): + the tool schema and the 80/20 split (eval.deepplanning.data)
SOURCE_FILES["deepplanning"] = (travel_files.QUERY_RELPATH, None)


class PrepareError(RuntimeError):
    pass


# ---------------------------------------------------------------------------------------------
# Fetching files
# ---------------------------------------------------------------------------------------------

def _manifest_sha(source: Path, relpath: str) -> Optional[str]:
    manifest = source / "MANIFEST.json"
    if not manifest.is_file():
        return None
    for entry in json.loads(manifest.read_text()):
        if entry.get("file") == relpath:
            return entry.get("sha256")
    return None


def copy_local(source: Path, relpath: str, dest_root: Path) -> Path:
    """Copy ``source/relpath`` to ``dest_root/relpath`` atomically; verify the manifest sha256."""
    src, dest = source / relpath, dest_root / relpath
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.copyfile(src, tmp)
    expected, got = _manifest_sha(source, relpath), file_sha256(tmp)
    if expected and expected != got:
        tmp.unlink()
        raise PrepareError(f"{src}: sha256 {got} differs from MANIFEST.json ({expected})")
    os.replace(tmp, dest)
    return dest


def download_hub(hub: HubSource, relpath: str, dest_root: Path) -> Path:
    """Download ``hub`` with `datasets` and export it to ``dest_root/relpath`` (jsonl or parquet)."""
    import datasets  # lazy: only the network branch needs it

    ds = datasets.load_dataset(hub.repo, split=hub.split)
    dest = dest_root / relpath
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".tmp")
    if dest.suffix == ".parquet":
        ds.to_parquet(str(tmp))
    else:
        ds.to_json(str(tmp), lines=True, force_ascii=False)
    os.replace(tmp, dest)
    return dest


def fetch(name: str, dest_root: Path, source: Path, hub: bool, force: bool) -> Path:
    relpath, hub_source = SOURCE_FILES[name]
    dest = dest_root / relpath
    if dest.is_file() and not force:
        return dest
    if not hub and (source / relpath).is_file():
        return copy_local(source, relpath, dest_root)
    if hub_source is None:
        raise PrepareError(f"{name}: no local copy at {source / relpath} and no Hub source")
    print(f"{name}: {'--hub given' if hub else f'no local copy at {source / relpath}'}; "
          f"downloading {hub_source.repo} ({hub_source.split})", file=sys.stderr)
    return download_hub(hub_source, relpath, dest_root)


# ---------------------------------------------------------------------------------------------
# DAPO-Math-17k: dedup and split
# ---------------------------------------------------------------------------------------------

@dataclass
class DapoRow:
    prompt: str
    answer: str
    problem: str
    id: str


@dataclass
class SplitInfo:
    source_rows: int
    distinct_prompts: int
    dropped_conflicting: int
    train: int
    validation: int
    seed: int
    val_fraction: float
    dedup: str
    source_sha256: str


def dapo_row(raw: Dict[str, Any], index: int) -> DapoRow:
    """The user message and gold of one DAPO row; malformed rows are errors naming the row."""
    messages = raw.get("prompt")
    if messages is None or len(messages) == 0:
        raise PrepareError(f"DAPO row {index}: 'prompt' is empty")
    users = [m for m in messages if m.get("role") == "user"]
    if len(users) != 1:
        raise PrepareError(f"DAPO row {index}: expected one user message, got {len(users)}")
    answer = (raw.get("reward_model") or {}).get("ground_truth")
    if answer is None:
        raise PrepareError(f"DAPO row {index}: reward_model.ground_truth is missing")
    content = users[0]["content"]
    row_id = (raw.get("extra_info") or {}).get("index", index)
    return DapoRow(prompt=content, answer=str(answer).strip(),
                   problem=strip_dapo_instruction(content), id=str(row_id))


def dedup_key(prompt: str, mode: str) -> str:
    return prompt if mode == "exact" else re.sub(r"\s+", " ", prompt).strip()


def deduplicate(rows: Iterable[DapoRow], mode: str = "normalized") -> tuple:
    """(distinct rows in first-seen order, number of prompts dropped for conflicting answers)."""
    groups: "OrderedDict[str, List[DapoRow]]" = OrderedDict()
    for row in rows:
        groups.setdefault(dedup_key(row.prompt, mode), []).append(row)
    kept = [g[0] for g in groups.values() if len({r.answer for r in g}) == 1]
    return kept, len(groups) - len(kept)


def split(rows: Sequence[DapoRow], val_fraction: float, seed: int) -> tuple:
    """(train, validation): a seeded shuffle, the last ``round(val_fraction * n)`` to validation."""
    if not 0 < val_fraction < 1:
        raise PrepareError(f"--val-fraction must be in (0, 1), got {val_fraction}")
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    n_val = round(val_fraction * len(rows))
    cut = len(rows) - n_val
    return [rows[i] for i in order[:cut]], [rows[i] for i in order[cut:]]


def write_jsonl(path: Path, rows: Iterable[DapoRow]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(asdict(row), ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def prepare_dapo(parquet: Path, out_dir: Path, seed: int = 0, val_fraction: float = 0.2,
                 dedup: str = "normalized", limit: Optional[int] = None) -> SplitInfo:
    """Dedup and split the DAPO parquet into ``out_dir/{train,validation}.jsonl``."""
    raw = read_rows(parquet)[:limit]
    rows, conflicting = deduplicate((dapo_row(r, i) for i, r in enumerate(raw)), dedup)
    train, val = split(rows, val_fraction, seed)
    write_jsonl(out_dir / "train.jsonl", train)
    write_jsonl(out_dir / "validation.jsonl", val)
    info = SplitInfo(len(raw), len(rows) + conflicting, conflicting, len(train), len(val), seed,
                     val_fraction, dedup, file_sha256(parquet))
    (out_dir / "split_info.json").write_text(json.dumps(asdict(info), indent=1) + "\n")
    return info


# ---------------------------------------------------------------------------------------------
# DeepPlanning: tool schema, split, database check
# ---------------------------------------------------------------------------------------------

def prepare_travel(query_file: Path, root: Path, source: Path, seed: int = 0, force: bool = False) -> str:
    """Copy the shipped tool schema beside the queries and write the 80/20 split
    (:mod:`eval.deepplanning.data`); returns a one-line summary."""
    relpath = travel_files.SCHEMA_RELPATH
    schema = Path(root) / relpath
    if force or not schema.is_file():
        if not (Path(source) / relpath).is_file():
            raise travel.TaskDataError(f"{Path(source) / relpath} is missing (the shipped travel tool schema)")
        copy_local(Path(source), relpath, Path(root))
    out = Path(root) / travel_files.SPLIT_DIR
    record = travel.write_split(query_file, out, seed)
    return (f"deepplanning split: {len(record['train'])} train / {len(record['test'])} test tasks (seed {seed}) "
            f"-> {out}; tool schema {schema}")


def check_travel_database(db_dir: str, root: Path, source: Optional[Path] = None) -> int:
    """``--deepplanning-db DIR``: print every problem of the folder against the 120 queries (or
    'OK') and the count of duplicated names; 1 when something is missing."""
    from eval.deepplanning.database import resolve_db_root

    ids = [str(t["id"]) for t in travel.load_queries(travel_files.query_file(str(root), source))]
    db_root = resolve_db_root(db_dir)
    problems = travel.check_database(db_root, ids)
    if problems:
        shown = problems[:50]
        print(f"deepplanning database {db_root}: {len(problems)} problem(s) for {len(ids)} tasks:", file=sys.stderr)
        print("\n".join(f"  {p}" for p in shown), file=sys.stderr)
        if len(problems) > len(shown):
            print(f"  ... and {len(problems) - len(shown)} more", file=sys.stderr)
    else:
        print(f"deepplanning database {db_root}: OK ({len(ids)} task folders, every CSV and column present)")
    print(f"deepplanning database {db_root}: {travel.duplicate_summary(db_root, ids)}")
    return int(bool(problems))


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------

def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m eval.prepare", description=__doc__.split("\n")[0])
    p.add_argument("--data-dir", help="output root (default: $OPSD_DATA_DIR or data/)")
    p.add_argument("--source", default=str(DEFAULT_SOURCE), help="local copy (default ../shared/data)")
    p.add_argument("--hub", action="store_true", help="download from the Hugging Face Hub")
    p.add_argument("--only", default=",".join(SOURCE_FILES), help="comma-separated subset")
    p.add_argument("--seed", type=int, default=0, help="DAPO and DeepPlanning split seed")
    p.add_argument("--val-fraction", type=float, default=0.2, help="DAPO validation fraction")
    p.add_argument("--dedup", choices=["normalized", "exact"], default="normalized")
    p.add_argument("--force", action="store_true", help="re-copy files that already exist")
    p.add_argument("--deepplanning-db", default=None,
                   help="check this DeepPlanning database folder (id_<N>/ per task) against the queries "
                        "and count duplicated names")
    return p.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> None:
    args = parse_args(argv)
    root, source = data_root(args.data_dir), Path(args.source)
    for name in filter(None, args.only.split(",")):
        if name not in SOURCE_FILES:
            raise SystemExit(f"--only: {name!r} is unknown; choose from {sorted(SOURCE_FILES)}")
        try:
            path = fetch(name, root, source, args.hub, args.force)
        except PrepareError as e:
            raise SystemExit(f"error: {e}") from e
        if name == "deepplanning":  # a JSON list, not rows: eval.deepplanning.data reads it
            try:
                print(prepare_travel(path, root, source, args.seed, args.force))
            except travel.TaskDataError as e:
                raise SystemExit(f"error: {e}") from e
            continue
        print(f"{name}: {path} ({len(read_rows(path))} rows, sha256 {file_sha256(path)[:12]}…)")
        if name == "dapo":
            info = prepare_dapo(path, root / "dapo", args.seed, args.val_fraction, args.dedup)
            print(f"dapo split: {info.train} train / {info.validation} validation from "
                  f"{info.source_rows} rows ({info.distinct_prompts} distinct, "
                  f"{info.dropped_conflicting} dropped for conflicting answers) -> {root / 'dapo'}")
    if args.deepplanning_db:
        try:
            bad = check_travel_database(args.deepplanning_db, root, source)
        except (travel.TaskDataError, FileNotFoundError) as e:  # e.g. no query file: one line, no traceback
            raise SystemExit(f"error: {e}") from None
        if bad:
            raise SystemExit(1)


if __name__ == "__main__":
    main()
