"""The toy task: verifiable multi-step integer arithmetic with a short chain of thought.

A problem is a left-to-right chain of operations on small integers, written as one expression
with the parentheses that make left-to-right evaluation correct::

    prompt:    Compute (7+5)*3-4.
    solution:  7+5=12. 12*3=36. 36-4=32. Answer: 32

Every intermediate result stays in ``[0, max_value]`` (no negatives, no large products), so a
tiny character-level model can learn the facts it needs. The answer sits after the last
``Answer:`` and the reward is exact string match (1.0 / 0.0).

Why this task: each step has a few "decision" tokens (the digits of a result) among cheap copy
tokens, so a small student is uncertain on some digits and confidently wrong on others, while a
larger teacher gets most of them right; the accuracy of a chain compounds per step, which
widens the teacher-student gap.

Train and held-out problems are disjoint by construction: the split of a problem is a hash of its
expression text, so no seed or count can make them overlap.
"""
from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

from opsd.toy.rows import draw, hash_split, write_splits

ANSWER_RE = re.compile(r"Answer:\s*(-?\d+)")


@dataclass(frozen=True)
class TaskConfig:
    """Difficulty knobs of the arithmetic task."""

    min_steps: int = 2  # operations per problem (lower bound)
    max_steps: int = 3  # operations per problem (upper bound)
    max_start: int = 20  # first operand drawn from [1, max_start]
    max_operand: int = 9  # every later operand drawn from [1, max_operand]
    max_value: int = 99  # intermediate results stay in [0, max_value]
    heldout_per_mille: int = 100  # share of the problem space (by hash) reserved for held-out

    def validate(self) -> None:
        if not 1 <= self.min_steps <= self.max_steps:
            raise ValueError(f"TaskConfig: need 1 <= min_steps <= max_steps, got {self.min_steps}, {self.max_steps}")
        if self.max_start < 1 or self.max_operand < 2:
            raise ValueError("TaskConfig: max_start must be >= 1 and max_operand >= 2")
        if self.max_value < max(self.max_start, self.max_operand):
            raise ValueError("TaskConfig: max_value must be >= max_start and max_operand")
        if not 0 < self.heldout_per_mille < 1000:
            raise ValueError("TaskConfig: heldout_per_mille must be in (0, 1000)")


@dataclass(frozen=True)
class Step:
    left: int
    op: str  # one of + - *
    right: int
    result: int

    def text(self) -> str:
        return f"{self.left}{self.op}{self.right}={self.result}."


@dataclass(frozen=True)
class Problem:
    expression: str  # e.g. "(7+5)*3-4"
    steps: Tuple[Step, ...] = field(repr=False)

    @property
    def answer(self) -> str:
        return str(self.steps[-1].result)

    @property
    def prompt(self) -> str:
        """The user message (no chat template)."""
        return f"Compute {self.expression}."


def _apply(left: int, op: str, right: int) -> int:
    return left + right if op == "+" else left - right if op == "-" else left * right


def _legal_ops(value: int, right: int, cfg: TaskConfig) -> List[str]:
    """Operations that keep the result in [0, max_value]; x1 is excluded as a no-op step."""
    ops = [op for op in "+-" if 0 <= _apply(value, op, right) <= cfg.max_value]
    if right >= 2 and value * right <= cfg.max_value:
        ops.append("*")
    return ops


def sample_problem(rng: random.Random, cfg: TaskConfig = TaskConfig()) -> Problem:
    """One random problem; the rng alone decides it (deterministic given its state)."""
    value = rng.randint(1, cfg.max_start)
    expr, additive_on_top = str(value), False
    steps: List[Step] = []
    for _ in range(rng.randint(cfg.min_steps, cfg.max_steps)):
        right = rng.randint(1, cfg.max_operand)
        ops = _legal_ops(value, right, cfg) or ["+"]  # "+" may only fail for huge values; cfg forbids
        op = rng.choice(ops)
        # A product after a sum needs parentheses so that the written expression still means
        # "left to right"; "-" after "+" is already left-associative.
        if op == "*" and additive_on_top:
            expr = f"({expr})"
        expr += f"{op}{right}"
        additive_on_top = op in "+-"  # after "*" the sum (if any) is inside parentheses
        result = _apply(value, op, right)
        steps.append(Step(value, op, right, result))
        value = result
    return Problem(expr, tuple(steps))


def split_of(problem: Problem, cfg: TaskConfig = TaskConfig()) -> str:
    """'heldout' for a fixed hash-defined share of expressions, else 'train'."""
    return hash_split(problem.expression, cfg.heldout_per_mille)


def make_problems(n: int, seed: int, split: str = "train", cfg: TaskConfig = TaskConfig()) -> List[Problem]:
    """``n`` distinct problems of ``split``, deterministic in (n, seed, split, cfg)."""
    return draw(n, f"{seed}-{split}", split, cfg, sample_problem, lambda p: p.expression, split_of, "problems")


def solution_text(problem: Problem) -> str:
    """The chain-of-thought target, e.g. ``7+5=12. 12*3=36. 36-4=32. Answer: 32``."""
    return " ".join(s.text() for s in problem.steps) + f" Answer: {problem.answer}"


def extract_answer(response_text: str) -> Optional[str]:
    """The integer after the last ``Answer:``, or None when there is none."""
    matches = ANSWER_RE.findall(response_text)
    return matches[-1] if matches else None


def reward(response_text: str, gold_answer: str) -> float:
    """1.0 when the extracted answer equals the gold string exactly, else 0.0 (also no answer).

    Signature ``(response_text, answer) -> float``, so it plugs into ``loss.reward_fn`` as
    ``opsd.toy.task:reward``.
    """
    got = extract_answer(response_text)
    return float(got is not None and got == str(gold_answer).strip())


def prompt_lines(n_train: int, n_heldout: int, seed: int, cfg: TaskConfig = TaskConfig()) -> Dict[str, List[str]]:
    """The lines of ``train.jsonl`` and ``heldout.jsonl``: {"prompt", "answer"} per problem."""
    return {split: [json.dumps({"prompt": p.prompt, "answer": p.answer}) for p in make_problems(n, seed, split, cfg)]
            for split, n in (("train", n_train), ("heldout", n_heldout))}


def write_prompt_files(out_dir, n_train: int, n_heldout: int, seed: int,
                       cfg: TaskConfig = TaskConfig()) -> Dict[str, str]:
    """Write ``train.jsonl`` and ``heldout.jsonl`` (atomically); return their paths."""
    return write_splits(out_dir, prompt_lines(n_train, n_heldout, seed, cfg))
