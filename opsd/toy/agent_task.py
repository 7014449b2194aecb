"""The agentic toy task: facts reachable only through tools, fetched and combined into an answer.

Every episode has its own small random "database": a few entities (one capital letter each) with three
numeric attributes each (age, height, weight in [1, 25]). The question names two (by default;
``max_facts`` allows more) (attribute, entity) pairs joined by + or -::

    user:       weight of D + height of V?
    assistant:  <tool_call>{"name":"weight","arguments":{"who":"D"}}</tool_call>
    tool:       18
    assistant:  <tool_call>{"name":"height","arguments":{"who":"V"}}</tool_call>
    tool:       25
    assistant:  18+25=43

One tool per attribute (``age``, ``height``, ``weight``, each with one argument ``who``), one call
per turn, then the arithmetic left to right (``a+b=c. c-d=e`` with three facts); the answer is the
integer after the last ``=`` of the final reply, scored by exact match. The values are drawn per
episode, so nothing can be memorized: without the tools the answer is a guess. Running results
stay in [0, 50] (no negatives, at most two digits), so a tiny character-level model can learn the
sums. A gold episode is ~70 prompt tokens + ~165 after it (two calls, two tool turns, the answer).
Names are single letters because a tiny model learns to copy one token from the question far
faster than a string (three-letter names left a 3-layer teacher at ~2 % after 300 SFT steps).

Mistakes a weak model makes here: the wrong tool (attribute), a wrong argument (another entity,
or a name not in the database: the tool answers with an error), and a wrong final step (a digit of a sum) -- early ones ruin the
rest of the episode.

Rows (``train.jsonl`` / ``heldout.jsonl``) carry everything the environment needs::

    {"prompt": question, "answer": "43",
     "facts": [{"who": "D", "attr": "age", "value": 7}, ...],   # every attribute of every entity
     "needed": [{"who": "D", "attr": "weight"}, ...]}           # in question order

Train and held-out questions are disjoint by construction (split = hash of the question text).
"""
from __future__ import annotations

import json
import random
import re
import string
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

from opsd.toy.rows import draw, hash_split

ATTRIBUTES = ("age", "height", "weight")
ARG = "who"  # the one argument of every tool
NAMES = string.ascii_uppercase
_ANSWER_RE = re.compile(r"=\s*(-?\d+)")


@dataclass(frozen=True)
class AgentTaskConfig:
    """Difficulty knobs of the lookup task."""

    min_facts: int = 2  # (attribute, entity) pairs per question
    max_facts: int = 2
    distractors: int = 1  # extra entities in the episode's database (not asked about)
    max_value_fact: int = 25  # attribute values drawn from [1, max_value_fact]
    max_value: int = 50  # every running result stays in [0, max_value]
    heldout_per_mille: int = 100  # share of the question space (by hash) reserved for held-out

    def validate(self) -> None:
        if not 1 <= self.min_facts <= self.max_facts:
            raise ValueError(f"AgentTaskConfig: need 1 <= min_facts <= max_facts, got {self.min_facts}, {self.max_facts}")
        if self.distractors < 0:
            raise ValueError(f"AgentTaskConfig: distractors must be >= 0, got {self.distractors}")
        if not 1 <= self.max_value_fact <= self.max_value:
            raise ValueError("AgentTaskConfig: need 1 <= max_value_fact <= max_value")
        if not 0 < self.heldout_per_mille < 1000:
            raise ValueError("AgentTaskConfig: heldout_per_mille must be in (0, 1000)")


@dataclass(frozen=True)
class Fact:
    who: str
    attr: str
    value: int


@dataclass(frozen=True)
class Question:
    """One episode: its database, the asked facts in order and the operators between them."""

    facts: Tuple[Fact, ...]  # the whole database of the episode
    needed: Tuple[Fact, ...]  # asked facts, in question order
    ops: Tuple[str, ...]  # len(needed) - 1 operators, each + or -

    @property
    def prompt(self) -> str:
        """The user message, e.g. ``age of B + height of K?``."""
        parts = [f"{self.needed[0].attr} of {self.needed[0].who}"]
        for op, f in zip(self.ops, self.needed[1:]):
            parts.append(f"{op} {f.attr} of {f.who}")
        return " ".join(parts) + "?"

    @property
    def steps(self) -> List[Tuple[int, str, int, int]]:
        """``(left, op, right, result)`` per operator, left to right."""
        out, value = [], self.needed[0].value
        for op, f in zip(self.ops, self.needed[1:]):
            result = value + f.value if op == "+" else value - f.value
            out.append((value, op, f.value, result))
            value = result
        return out

    @property
    def answer(self) -> str:
        steps = self.steps
        return str(steps[-1][3] if steps else self.needed[0].value)

    def row(self) -> dict:
        """The jsonl row the environment reads (see the module docstring)."""
        return {"prompt": self.prompt, "answer": self.answer,
                "facts": [{"who": f.who, "attr": f.attr, "value": f.value} for f in self.facts],
                "needed": [{"who": f.who, "attr": f.attr} for f in self.needed]}


def random_name(rng: random.Random) -> str:
    return rng.choice(NAMES)


def sample_question(rng: random.Random, cfg: AgentTaskConfig = AgentTaskConfig()) -> Question:
    """One random episode; the rng alone decides it."""
    n = rng.randint(cfg.min_facts, cfg.max_facts)
    names: List[str] = []
    while len(names) < n + cfg.distractors:  # distinct names; a question may ask one entity twice
        name = random_name(rng)
        if name not in names:
            names.append(name)
    db = {(who, attr): rng.randint(1, cfg.max_value_fact) for who in names for attr in ATTRIBUTES}
    asked = names[:n]
    for _ in range(1000):  # redraw the pairs until every running result fits [0, max_value]
        pairs = [(rng.choice(asked), rng.choice(ATTRIBUTES)) for _ in range(n)]
        if len(set(pairs)) < n:
            continue
        value, ops = db[pairs[0]], []
        for pair in pairs[1:]:
            legal = [op for op in "+-" if 0 <= (value + db[pair] if op == "+" else value - db[pair]) <= cfg.max_value]
            if not legal:
                break
            ops.append(rng.choice(legal))
            value = value + db[pair] if ops[-1] == "+" else value - db[pair]
        else:
            facts = tuple(Fact(w, a, db[w, a]) for w in names for a in ATTRIBUTES)
            return Question(facts, tuple(Fact(w, a, db[w, a]) for w, a in pairs), tuple(ops))
    raise ValueError("AgentTaskConfig leaves no legal question; raise max_value or lower max_value_fact")


def split_of(question: Question, cfg: AgentTaskConfig = AgentTaskConfig()) -> str:
    """'heldout' for a fixed hash-defined share of question texts, else 'train'."""
    return hash_split(question.prompt, cfg.heldout_per_mille)


def make_questions(n: int, seed: int, split: str = "train", cfg: AgentTaskConfig = AgentTaskConfig()) -> List[Question]:
    """``n`` questions of ``split`` with distinct texts, deterministic in (n, seed, split, cfg)."""
    return draw(n, f"agent-{seed}-{split}", split, cfg, sample_question, lambda q: q.prompt, split_of, "questions")


def tool_call_text(attr: str, who: str) -> str:
    """One call as the models write it: compact JSON between the Qwen3/Hermes markers."""
    body = json.dumps({"name": attr, "arguments": {ARG: who}}, separators=(",", ":"))
    return f"<tool_call>{body}</tool_call>"


def final_text(question: Question) -> str:
    """The last reply: the arithmetic left to right, e.g. ``23+41=64. 64-7=57``."""
    steps = question.steps
    if not steps:
        return f"{question.needed[0].value}={question.needed[0].value}"
    return ". ".join(f"{a}{op}{b}={r}" for a, op, b, r in steps)


def gold_turns(question: Question) -> List[str]:
    """The assistant turns of the gold transcript (without the end-of-turn token)."""
    return [tool_call_text(f.attr, f.who) for f in question.needed] + [final_text(question)]


def extract_answer(text: Optional[str]) -> Optional[str]:
    """The integer after the last ``=`` of a final reply, or None."""
    if not text:
        return None
    matches = _ANSWER_RE.findall(text)
    return matches[-1] if matches else None


def expected_lines(n_train: int, n_heldout: int, seed: int, cfg: AgentTaskConfig) -> Dict[str, List[str]]:
    """The lines of ``train.jsonl`` and ``heldout.jsonl``: one :meth:`Question.row` per line."""
    return {split: [json.dumps(q.row()) for q in make_questions(n, seed, split, cfg)]
            for split, n in (("train", n_train), ("heldout", n_heldout))}
