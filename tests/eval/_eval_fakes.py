"""Helpers of the eval tests: tiny benchmark files, a fake tokenizer and a fake rollout backend
(no model; deterministic answers). Named uniquely so it never shadows another test helper."""
from __future__ import annotations

import json
import zlib
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from opsd.rollout.base import Rollouts, RolloutBackend, SamplingConfig


REPO = Path(__file__).resolve().parents[2]
SHARED_DATA = REPO.parent / "shared" / "data"

# Small benchmarks for runner tests: (problem, answer). Answers exercise LaTeX and integers.
MATH_ROWS = [("What is 1/2 + 0?", "\\frac{1}{2}"), ("Compute 2+3.", "5"), ("Solve x+1=3.", "2"),
             ("What is sqrt(4)?", "2"), ("Give pi/2.", "\\frac{\\pi}{2}"), ("Compute 10-3.", "7")]
AIME_ROWS = [("AIME one", "33"), ("AIME two", "204"), ("AIME three", "7"), ("AIME four", "0")]


def write_tiny_data(root: Path) -> Path:
    """A data root holding a 6-problem MATH-500 and a 4-problem AIME 2025."""
    (root / "MATH-500").mkdir(parents=True, exist_ok=True)
    (root / "AIME_2025").mkdir(parents=True, exist_ok=True)
    with open(root / "MATH-500" / "test.jsonl", "w") as f:
        for i, (q, a) in enumerate(MATH_ROWS):
            f.write(json.dumps({"problem": q, "solution": "", "answer": a, "subject": "x",
                                "level": 1, "unique_id": f"test/x/{i}.json"}) + "\n")
    with open(root / "AIME_2025" / "train.jsonl", "w") as f:
        for i, (q, a) in enumerate(AIME_ROWS):
            f.write(json.dumps({"problem": q, "answer": int(a), "id": str(i)}) + "\n")
    return root


class CharTokenizer:
    """One id per character (its code point); no chat template, EOS id 0."""

    chat_template = None
    eos_token_id = 0

    def encode(self, text: str, add_special_tokens: bool = True) -> List[int]:
        return [ord(c) for c in text]

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return "".join(chr(i) for i in ids if not (skip_special_tokens and i == self.eos_token_id))


def fake_response(answer: str, problem: str, j: int, shift: int = 0) -> str:
    """Sample j of a problem: of every 3 consecutive j one is correct, one has no answer and one
    a wrong boxed answer (the phase depends on the problem and ``shift``). Deterministic."""
    r = (zlib.crc32(problem.encode()) + j + shift) % 3
    if r == 0:
        return "I am not sure."
    if r == 1:
        return f"Reasoning... so the answer is \\boxed{{{answer}}}"
    return "Reasoning... \\boxed{123456}"


class FakeBackend(RolloutBackend):
    """Answers from a problem->answer table; counts calls; can raise after ``fail_after`` calls."""

    name = "fake"

    def __init__(self, answers: Dict[str, str], tokenizer: CharTokenizer, fail_after: Optional[int] = None,
                 shift: int = 0):
        self.answers, self.tok, self.fail_after, self.shift = answers, tokenizer, fail_after, shift
        self.calls = 0
        self.prompts_seen: List[str] = []

    def generate(self, prompt_ids, sampling: SamplingConfig) -> Rollouts:
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise KeyboardInterrupt("simulated interruption")
        self.calls += 1
        out = Rollouts([], [], [], [])
        for i, ids in enumerate(prompt_ids):
            text = self.tok.decode(ids)
            problem = next(p for p in self.answers if p in text)
            self.prompts_seen.append(problem)
            for j in range(sampling.n):
                resp = self.tok.encode(fake_response(self.answers[problem], problem, j, self.shift)) + [0]
                out.prompt_ids.append(list(ids))
                out.response_ids.append(resp)
                out.finished.append(True)
                out.prompt_index.append(i)
        return out
