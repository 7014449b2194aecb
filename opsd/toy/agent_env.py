"""The agentic toy world's environment: per-episode fact lookups, scored by the exact answer.

Named in a config as ``rollout.environment: opsd.toy.agent_env:LookupEnv`` (no options). Each
data row (see :mod:`opsd.toy.agent_task`) carries its own database; an episode offers one tool per
attribute (``age``/``height``/``weight``, argument ``who``) and scores the final reply:

- ``reward``: 1.0 when the integer after the last ``=`` equals the row's answer, else 0.0;
- ``scores``: ``answered`` (the episode ended with a reply holding an answer), ``used_all_facts``
  (every asked fact was fetched by a successful call), ``clean_calls`` (no failed call);
- ``info``: the extracted answer, the asked facts never fetched (``missing``), the facts fetched
  but not asked (``extra``: a wrong tool or entity), the number of failed calls.
"""
from __future__ import annotations

from typing import Any, Dict, List, Set, Tuple

from opsd.environment import Environment, Episode, EpisodeScore, ToolError, Transcript, function_schema
from opsd.toy.agent_task import ARG, ATTRIBUTES, extract_answer

TOOL_DESCRIPTIONS = {attr: f"The {attr} of an entity, by name." for attr in ATTRIBUTES}


def lookup_tools() -> List[dict]:
    """The episode's tool schemas (one per attribute)."""
    return [function_schema(attr, TOOL_DESCRIPTIONS[attr], {ARG: "string"},
                            descriptions={ARG: "the entity's name, as written in the question"})
            for attr in ATTRIBUTES]


def _where(row: Dict[str, Any]) -> str:
    src, idx = row.get("source_file"), row.get("source_row")
    return f"{src} row {idx}" if src is not None else "row"


class LookupEnv(Environment):
    """One object per run; :meth:`reset` reads the row's database."""

    def reset(self, row: Dict[str, Any]) -> "LookupEpisode":
        return LookupEpisode(row)


class LookupEpisode(Episode):
    def __init__(self, row: Dict[str, Any]):
        for key in ("prompt", "answer", "facts", "needed"):
            if row.get(key) is None:
                raise ValueError(f"{_where(row)}: LookupEnv needs a '{key}' column "
                                 "(rows as written by opsd.toy.agent_build)")
        try:
            self.db = {(str(f["who"]), str(f["attr"])): int(f["value"]) for f in row["facts"]}
            self.needed: List[Tuple[str, str]] = [(str(f["who"]), str(f["attr"])) for f in row["needed"]]
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{_where(row)}: bad 'facts'/'needed' entry ({type(e).__name__}: {e})") from None
        if any(pair not in self.db for pair in self.needed):
            raise ValueError(f"{_where(row)}: 'needed' names a fact that 'facts' lacks")
        self.answer = str(row["answer"]).strip()
        self.names: Set[str] = {who for who, _ in self.db}
        self.messages = [{"role": "user", "content": str(row["prompt"])}]
        self.tools = lookup_tools()

    def call_tool(self, name: str, arguments: Dict[str, Any]) -> str:
        if name not in ATTRIBUTES:  # the loop checks names against the schemas; this guards direct use
            raise ToolError(f"unknown tool {name!r}")
        who = arguments.get(ARG)
        if not isinstance(who, str):
            raise ToolError(f"{name} needs a string argument {ARG!r}")
        if who not in self.names:
            raise ToolError(f"no entity named {who!r}")
        return str(self.db[who, name])

    def score(self, transcript: Transcript) -> EpisodeScore:
        fetched = set()
        failed = 0
        for turn in transcript.turns:
            for call, ok in zip(turn.tool_calls, turn.ok):
                if ok and call.name in ATTRIBUTES:
                    fetched.add((call.arguments.get(ARG), call.name))
                failed += not ok
        got = extract_answer(transcript.final_text) if transcript.cut is None else None
        missing = [f"{attr} of {who}" for who, attr in self.needed if (who, attr) not in fetched]
        extra = sorted(f"{attr} of {who}" for who, attr in fetched - set(self.needed))
        return EpisodeScore(
            reward=float(got is not None and got == self.answer),
            scores={"answered": float(got is not None), "used_all_facts": float(not missing),
                    "clean_calls": float(failed == 0)},
            info={"answer": got, "missing": missing, "extra": extra, "failed_calls": failed, "cut": transcript.cut})
