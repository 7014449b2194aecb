"""The results file of ``eval.run``: format, config hash, atomic writes, resume checks.

One JSON file per evaluated model::

    {"schema": "opsd-eval/1", "status": "partial" | "complete",
     "config": {...}, "config_hash": "…",        # what decides the samples and their grades
     "model": "…", "tags": {"pair": …, "rule": …, "ratio": …},
     "benchmarks": {"math500": {"version": "sha256:…", "file": "…", "settings": {…},
                                "num_problems": 500, "metrics": {...},
                                "problems": [{"id", "answer", "prompt", "num_correct",
                                              "samples": [{"text", "correct", "extracted",
                                                           "finished", "num_tokens", "timed_out"}]}]}}}

``config_hash`` covers everything that changes the samples or their grades (model fingerprint,
sampling, chat template, grading); not the batch size, ``--limit`` or the tags (recorded under
``options`` and ``tags``),
so a run may resume with another batch size or a larger limit. A benchmark's version and its
settings (template text, max_new_tokens) are checked separately when it is resumed. The file is rewritten after every batch of problems
(write a temporary file, then ``os.replace``), so an interruption loses at most one batch: the
loop that does it, :func:`run_resumable`, is every benchmark's (eval.run's and DeepPlanning's).
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

SCHEMA = "opsd-eval/1"
SMALL_MODEL_BYTES = 64 << 20  # below this the weights are hashed in full
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")


class ResultsError(ValueError):
    """A results file does not fit the requested evaluation; the message names the file."""


@dataclass
class EvalConfig:
    """What decides the samples and their grades (hashed into ``config_hash``). The template and
    max_new_tokens are per benchmark (``settings`` of each benchmark entry, checked on resume)."""

    model: str
    model_fingerprint: str
    tokenizer: str
    backend: str
    n: int
    temperature: float
    top_p: float
    top_k: int
    seed: int
    chat_template: bool
    enable_thinking: Optional[bool]
    system_prompt: Optional[str]
    grading: Dict[str, Any] = field(default_factory=dict)

    def hash(self) -> str:
        blob = json.dumps(asdict(self), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def model_fingerprint(model: str) -> str:
    """Identity of a model folder: config.json, and the weight files' content when small (toy
    models) or their names, sizes and modification times when large (hashing GBs is too slow).
    A Hub id that is not a local folder is its own fingerprint."""
    path = Path(model)
    if not path.is_dir():
        return "hub:" + model
    h = hashlib.sha256()
    if (path / "config.json").is_file():
        h.update((path / "config.json").read_bytes())
    weights = sorted(p for p in path.iterdir() if p.suffix in WEIGHT_SUFFIXES)
    small = sum(p.stat().st_size for p in weights) <= SMALL_MODEL_BYTES
    for p in weights:
        h.update(p.name.encode())
        h.update(p.read_bytes() if small else f"{p.stat().st_size}:{p.stat().st_mtime_ns}".encode())
    return "sha256:" + h.hexdigest()[:16]


def new_results(config: EvalConfig, tags: Dict[str, str]) -> Dict[str, Any]:
    return {"schema": SCHEMA, "status": "partial", "config": asdict(config),
            "config_hash": config.hash(), "model": config.model, "tags": dict(tags),
            "options": {}, "benchmarks": {}}


def _config_diff(old: Dict[str, Any], new: Dict[str, Any]) -> List[str]:
    keys = sorted(set(old) | set(new))
    return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys if old.get(k) != new.get(k)]


def load_results(path: Path) -> Dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text())
    except json.JSONDecodeError as e:
        raise ResultsError(f"{path}: not a valid results JSON ({e})") from e
    if data.get("schema") != SCHEMA:
        raise ResultsError(f"{path}: schema {data.get('schema')!r} is not {SCHEMA!r}")
    return data


def open_results(path: Path, config: EvalConfig, tags: Dict[str, str], overwrite: bool = False) -> Dict[str, Any]:
    """A fresh results dict, or the partial one at ``path`` when its config hash matches."""
    if overwrite or not Path(path).exists():
        return new_results(config, tags)
    data = load_results(path)
    if data["config_hash"] != config.hash():
        diff = "; ".join(_config_diff(data["config"], asdict(config)))
        raise ResultsError(f"{path} was written by a different evaluation config ({diff}); "
                           "use another --out, or --overwrite to start over")
    data["tags"].update(tags)  # metadata only: later tags win
    return data


def benchmark_entry(results: Dict[str, Any], name: str, version: str, file: str,
                    settings: Dict[str, Any], num_problems: int, path: Path) -> Dict[str, Any]:
    """The results entry of one benchmark, created or checked against the loaded benchmark.

    ``settings`` are the per-benchmark generation choices (template text, max_new_tokens) that
    the global config leaves to each benchmark's default."""
    entry = results["benchmarks"].get(name)
    if entry is None:
        entry = {"version": version, "file": file, "settings": settings, "problems": [], "metrics": {}}
        results["benchmarks"][name] = entry
    elif entry["version"] != version:
        raise ResultsError(f"{path}: benchmark {name!r} was evaluated on version {entry['version']} "
                           f"({entry['file']}) but {file} is {version}; use another --out")
    elif entry["settings"] != settings:
        diff = "; ".join(_config_diff(entry["settings"], settings))
        raise ResultsError(f"{path}: benchmark {name!r} was evaluated with other settings ({diff}); "
                           "use another --out")
    entry["num_problems"] = num_problems
    return entry


def save_atomic(path: Path, results: Dict[str, Any]) -> None:
    """Write tmp then ``os.replace``: readers see the old file or the new one, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(results, f, ensure_ascii=False, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def run_resumable(results: Dict[str, Any], bench, settings: Dict[str, Any], out: Path, batch_size: int,
                  n: int, run_batch: Callable[[list, int], List[Dict[str, Any]]],
                  update_metrics: Callable[[Dict[str, Any]], None], progress: bool = True) -> Dict[str, Any]:
    """Run (or resume) one benchmark into ``results``: every benchmark's evaluation loop.

    The problems of ``bench`` not yet in its entry go to ``run_batch(problems, offset)`` in
    batches of ``batch_size`` (``offset``: the first one's index in the benchmark, for seeds); it
    returns one record per problem, each with ``n`` samples (checked here, and ``num_correct``
    filled in). After every batch ``update_metrics(entry)`` runs and the file is rewritten, so an
    interruption loses at most one batch and a rerun skips what is done."""
    from tqdm.auto import tqdm

    entry = benchmark_entry(results, bench.name, bench.version, str(bench.path), settings,
                            len(bench.problems), Path(out))
    done = {p["id"] for p in entry["problems"]}
    todo = [(i, p) for i, p in enumerate(bench.problems) if p.id not in done]
    with tqdm(total=len(bench.problems), initial=len(bench.problems) - len(todo), desc=bench.name,
              unit="problem", disable=not progress) as bar:
        for start in range(0, len(todo), batch_size):
            chunk = todo[start:start + batch_size]
            records = run_batch([p for _, p in chunk], chunk[0][0])
            for r in records:
                if len(r["samples"]) != n:
                    raise RuntimeError(f"{bench.name}: got {len(r['samples'])} samples for problem {r['id']}, "
                                       f"expected --n {n}")
                r["num_correct"] = sum(s["correct"] for s in r["samples"])
            entry["problems"].extend(records)
            update_metrics(entry)
            save_atomic(Path(out), results)
            bar.update(len(chunk))
    return entry
