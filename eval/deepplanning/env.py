"""DeepPlanning travel planning as an :class:`opsd.environment.Environment`.

    rollout:
      environment: eval.deepplanning.env:TravelPlanningEnv
      environment_options: {db_dir: /data/deepplanning/database_en, split_file: data/deepplanning/split.json}

Each data row is one task: ``{"id", "query", "meta_info"}`` (the rows of
``data/deepplanning/travel_{train,test}.jsonl``). An episode's messages are our system prompt
(:mod:`eval.deepplanning.prompts`) and the task's query; its tools are the 9 shipped schemas over
the task's database (loaded once per task and shared by its episodes). The final plan is the
``<plan>`` text after the last ``</think>`` of the final answer; it is parsed by the rule-based
parser and scored:

- ``reward``: fraction of the task's personalized hard constraints satisfied (Table 7's metric);
- ``scores``: ``personalized``, ``personalized_all`` (official 0/1), ``commonsense``,
  ``composite``, ``case_acc``, ``parsed_lines`` and one ``cs_<dimension>`` per commonsense
  dimension;
- ``info``: the failed constraints and checks with their reasons, the constraints not scored
  (unknown keys, as officially), the parser's problems, why a plan scored 0 (no final answer, no
  ``<plan>``, nothing parsed), and the split file's sha256.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional

from opsd.environment import Environment, Episode, EpisodeScore, ToolError, Transcript
from eval.deepplanning import files
from eval.deepplanning.database import DatabaseError, TaskDatabase, load_task, resolve_db_root
from eval.deepplanning.data import read_split
from eval.deepplanning.plan_parser import parse_plan
from eval.deepplanning.prompts import SYSTEM_PROMPT, extract_plan
from eval.deepplanning.scoring import DIMENSIONS, score_plan
from eval.deepplanning.tools import TOOL_NAMES, TravelTools, load_schemas


class TravelPlanningEnv(Environment):
    """Options: ``db_dir`` (folder of ``id_<N>/``), ``schema_file``, ``split_file`` (optional
    ``split.json``: recorded, and a row outside it is an error), ``system_prompt`` (default ours).
    The database folder and the schema default to :mod:`eval.deepplanning.files`' (the default data
    root's); ``data_dir`` names another data root for them."""

    def __init__(self, db_dir: Optional[str] = None, schema_file: Optional[str] = None,
                 split_file: Optional[str] = None, system_prompt: Optional[str] = None,
                 data_dir: Optional[str] = None):
        self.db_dir = resolve_db_root(db_dir or files.db_dir(data_dir))
        if not self.db_dir.is_dir():
            raise DatabaseError(f"DeepPlanning database folder {self.db_dir} is missing (db_dir option or "
                                f"${files.DB_ENV}: the unzipped database_en.zip of Qwen/DeepPlanning)")
        self.schemas = load_schemas(Path(schema_file) if schema_file else files.schema_file(data_dir))
        self.split = read_split(Path(split_file)) if split_file else None
        self.system_prompt = system_prompt or SYSTEM_PROMPT

    def reset(self, row: Dict[str, Any]) -> "TravelEpisode":
        missing = [k for k in ("id", "query", "meta_info") if k not in row]
        if missing:
            raise ValueError(f"DeepPlanning row {row.get('id', '?')}: missing column(s) {missing}")
        task_id = str(row["id"])
        if self.split is not None and task_id not in self.split["train"] + self.split["test"]:
            raise ValueError(f"task {task_id} is not in the split file")
        return TravelEpisode(task_id, row["query"], row["meta_info"], load_task(self.db_dir, task_id),
                             self.schemas, self.system_prompt,
                             self.split["sha256"] if self.split is not None else None)


class TravelEpisode(Episode):
    def __init__(self, task_id: str, query: str, meta: dict, db: TaskDatabase, schemas: List[dict],
                 system_prompt: str, split_sha: Optional[str] = None):
        self.task_id, self.meta, self.db, self.split_sha = task_id, meta, db, split_sha
        self.tools = schemas
        self.messages = [{"role": "system", "content": system_prompt}, {"role": "user", "content": query}]
        self._tools = TravelTools(db)

    def call_tool(self, name: str, arguments: Dict[str, Any]) -> str:
        if name not in TOOL_NAMES:
            raise ToolError(f"unknown tool {name!r}; the tools are {list(TOOL_NAMES)}")
        return self._tools.call(name, arguments)

    def score(self, transcript: Transcript) -> EpisodeScore:
        return score_answer(transcript.final_text, self.meta, self.db, transcript.cut, self.split_sha, self.task_id)


def _zero(reason: str, info: Dict[str, Any]) -> EpisodeScore:
    scores = {"personalized": 0.0, "personalized_all": 0.0, "commonsense": 0.0, "composite": 0.0,
              "case_acc": 0.0, "parsed_lines": 0.0, **{f"cs_{d}": 0.0 for d in DIMENSIONS}}
    return EpisodeScore(0.0, scores, {**info, "zero_reason": reason})


def score_answer(final_text: Optional[str], meta: dict, db: TaskDatabase, cut: Optional[str] = None,
                 split_sha: Optional[str] = None, task_id: Optional[str] = None) -> EpisodeScore:
    """Score one final answer text (the whole last assistant turn) for a task."""
    info: Dict[str, Any] = {"task_id": task_id, "split_sha256": split_sha}
    if final_text is None:
        return _zero(f"no final answer (episode cut: {cut})", info)
    plan_text = extract_plan(final_text)
    if plan_text is None:
        return _zero("no <plan>...</plan> after the last </think>", info)
    parsed = parse_plan(plan_text)
    info["parse_problems"], info["parse_notes"] = parsed.problems, parsed.notes
    if not parsed.ok:
        return _zero("the plan did not parse (no day could be read)", info)
    s = score_plan(parsed.plan, meta, db)
    info["hard_failures"] = {k: r for k, (ok, r) in s.hard.items() if ok is False}
    info["hard_unscored"] = {k: r for k, (ok, r) in s.hard.items() if ok is None}  # unknown keys
    info["commonsense_failures"] = {k: r for k, (ok, r) in s.checks.items() if not ok}
    scores = {"personalized": s.personalized, "personalized_all": s.personalized_all,
              "commonsense": s.commonsense, "composite": s.composite, "case_acc": s.case_acc,
              "parsed_lines": parsed.parsed_share, **{f"cs_{d}": v for d, v in s.dimensions.items()}}
    return EpisodeScore(s.personalized, scores, info)
