"""``eval.run --bench deepplanning_travel``: the model as an agent on the held-out travel tasks.

    OPSD_DATA_DIR=data DEEPPLANNING_DB=/data/database_en \\
        python -m eval.run --model runs/x/export --bench deepplanning_travel --n 16 --backend vllm \\
        --enable-thinking true --out results.json

Each task of ``deepplanning/travel_test.jsonl`` (the held-out 20 %, see
:mod:`eval.deepplanning.data`) is played ``--n`` times through the agent loop
(:func:`opsd.rollout.agent.run_episodes`) in :class:`~eval.deepplanning.env.TravelPlanningEnv`.
A sample's ``correct`` is its reward, the fraction of the task's personalized constraints
satisfied, so the usual metrics read as Table 7's: ``mean@n`` = Avg@n, ``pass@n`` = Best@n
(:func:`eval.metrics.expected_max_at_k`). The other sub-scores (commonsense, composite, case
accuracy, official 0/1) are averaged into the entry's metrics too; each sample keeps its scores,
failures and parse problems.

A sample without a sub-score (its scorer raised: the agent loop then gives reward 0 and no
sub-scores) is left out of that sub-score's mean rather than counted as 0; the entry records
``missing_sub_scores`` (samples without each sub-score) and ``score_errors`` (samples whose scorer
raised), and each sub-score's metric its ``missing`` count. A sub-score no sample has gets no
metric.

Agent limits (recorded in the benchmark's settings, so a resumed run uses the same):
``--max-new-tokens`` per assistant turn (default 8192), ``$DEEPPLANNING_MAX_TURNS`` (default 40)
and ``$DEEPPLANNING_MAX_EPISODE_TOKENS`` (default 32768), both in :mod:`eval.deepplanning.files`.
Resuming is every benchmark's (:func:`eval.results.run_resumable`): the file is rewritten after
every batch of tasks and finished tasks are skipped.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from eval import metrics
from eval.benchmarks import Benchmark, read_rows
from eval.deepplanning import files
from eval.results import run_resumable

SCORE_KEYS = ("commonsense", "composite", "case_acc", "personalized_all", "parsed_lines")


def agent_settings(bench: Benchmark, args) -> Dict[str, Any]:
    from eval.deepplanning.prompts import SYSTEM_PROMPT

    return {"max_new_tokens": args.max_new_tokens or bench.spec.max_new_tokens, **files.agent_limits(),
            "system_prompt_sha256": hashlib.sha256(SYSTEM_PROMPT.encode()).hexdigest()[:16]}


def make_env(args):
    """The travel environment over the files :mod:`eval.deepplanning.files` finds for ``--data-dir``."""
    from eval.deepplanning.env import TravelPlanningEnv

    split = files.split_file(args.data_dir)
    return TravelPlanningEnv(split_file=str(split) if split else None, data_dir=args.data_dir)


def sample_record(rec, ids: List[int]) -> Dict[str, Any]:
    t = rec.transcript
    return {"text": t.final_text or "", "correct": rec.score.reward, "extracted": None,
            "finished": t.cut is None, "num_tokens": len(ids), "timed_out": False, "cut": t.cut,
            "turns": rec.turns, "tool_calls_ok": rec.calls_ok, "tool_calls_failed": rec.calls_failed,
            "scores": rec.score.scores, "info": rec.score.info, "score_error": rec.score_error}


def sub_score_mean(problems: List[Dict[str, Any]], key: str) -> Tuple[Optional[Dict[str, Any]], int]:
    """(metric, missing): the task mean of each task's mean over the samples that have the
    sub-score (tasks with none are left out; None when no sample has it), and how many samples
    lack it. Without missing samples this is :func:`eval.metrics.mean_at_k`."""
    values = [[s[key] for s in (x.get("scores") or {} for x in p["samples"]) if s.get(key) is not None]
              for p in problems]
    missing = sum(len(p["samples"]) for p in problems) - sum(map(len, values))
    if not missing:
        return {**vars(metrics.mean_at_k(values)), "missing": 0}, 0
    present = [v for v in values if v]
    if not present:
        return None, missing
    return {**vars(metrics.mean_and_stderr([sum(v) / len(v) for v in present])), "missing": missing}, missing


def update_metrics(entry: Dict[str, Any]) -> None:
    """mean@n (Avg@n), pass@k (expected best of k; pass@n = Best@n), the sub-score means (missing
    sub-scores left out and counted), and the number of scorer errors."""
    done = entry["problems"]
    if not done:
        return
    # 0.0 / 1.0 rewards as ints: eval.metrics' exact pass@k (taken when a task's rewards are all
    # 0 or 1) counts successes with range(), which a float count breaks
    correct = [[int(s["correct"]) if s["correct"] in (0, 1) else s["correct"] for s in p["samples"]] for p in done]
    out = {k: vars(v) for k, v in metrics.compute_metrics(correct).items()}
    n = metrics.uniform_n(correct)
    entry["missing_sub_scores"] = {}
    for key in SCORE_KEYS:
        metric, entry["missing_sub_scores"][key] = sub_score_mean(done, key)
        if metric is not None:
            out[f"{key}@{n}"] = metric
    entry["metrics"] = out
    entry["score_errors"] = sum(1 for p in done for s in p["samples"]
                                if s.get("score_error") or (s.get("info") or {}).get("score_error"))


def run_batch(rows: List[Dict[str, Any]], settings: Dict[str, Any], offset: int, args, backend, tokenizer,
              env) -> List[Dict[str, Any]]:
    from opsd.rollout.agent import AgentConfig, run_episodes
    from opsd.rollout.base import SamplingConfig

    cfg = AgentConfig(max_turns=settings["max_turns"], max_episode_tokens=settings["max_episode_tokens"],
                      max_new_tokens=settings["max_new_tokens"], enable_thinking=args.enable_thinking)
    sampling = SamplingConfig(temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
                              max_new_tokens=settings["max_new_tokens"], n=args.n, seed=args.seed + offset)
    out = run_episodes(backend, tokenizer, env, rows, sampling, cfg)
    records = [{"id": str(r["id"]), "answer": str(r["id"]), "prompt": r["query"], "samples": []} for r in rows]
    for ids, i, rec in zip(out.response_ids, out.prompt_index, out.episodes):
        records[i]["samples"].append(sample_record(rec, ids))
    return records


def evaluate_travel(bench: Benchmark, results: Dict[str, Any], args, backend, tokenizer,
                    env=None) -> Dict[str, Any]:
    """Run (or resume) the travel benchmark into ``results`` (:func:`eval.results.run_resumable`);
    see the module docstring."""
    settings = agent_settings(bench, args)
    by_id = {str(r["id"]): r for r in read_rows(bench.path)}
    env = env or make_env(args)
    try:
        return run_resumable(results, bench, settings, Path(args.out), args.batch_size, args.n,
                             lambda tasks, offset: run_batch([by_id[p.id] for p in tasks], settings, offset,
                                                             args, backend, tokenizer, env),
                             update_metrics, args.progress)
    finally:
        env.close()
