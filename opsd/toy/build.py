"""The embedded default world: multi-step arithmetic (:mod:`opsd.toy.task`), built by the shared
toy-world builder (:mod:`opsd.toy.world`).

    python recipes/toy/world.py --world toy --out artifacts/toy          # 15-45 min on 2 CPU cores (the teacher)
    python recipes/toy/world.py --world toy --out /tmp/toy --quick       # seconds; untrained, for tests

What this world supplies: ``train.jsonl`` / ``heldout.jsonl`` with {"prompt", "answer"} lines
(256 held-out problems); SFT pairs (a chat-formatted problem, its step-by-step solution: the loss
on the solution and ``<|im_end|>`` only); a teacher (4 layers, hidden 128) and a deliberately
weaker student (3 layers, hidden 96, SFT cut short); and an evaluation of both on the held-out
problems, greedy and at T = 1, graded by :func:`opsd.toy.task.reward`.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional

import torch

from opsd.toy import tokenizer as toytok
from opsd.toy.task import (Problem, TaskConfig, make_problems, prompt_lines, reward, sample_problem, solution_text,
                           split_of)
from opsd.toy.world import (IGNORE, BuildConfig, Legacy, ModelSpec, ToyWorld, batches, rollouts, tiny_specs,
                            token_batches, train_items)


@dataclass
class WorldConfig(BuildConfig):
    """Everything that decides the built world (its fingerprint keys the cached parts)."""

    task: TaskConfig = field(default_factory=TaskConfig)
    teacher: ModelSpec = field(default_factory=lambda: ModelSpec(
        layers=4, hidden=128, heads=4, kv_heads=2, intermediate=384, steps=900, lr=3e-3))
    # The student has room to learn arithmetic (3L d96, 330k params) but its SFT stops mid-learning-curve
    # (constant lr, no anneal): greedy ~0.38, so OPD has a gap to close (~60% in 100 steps at lr 1e-3).
    # The 2L d64 student of before barely moved under OPD (0.13 -> 0.15) and collapsed at higher lr.
    student: ModelSpec = field(default_factory=lambda: ModelSpec(
        layers=3, hidden=96, heads=3, kv_heads=1, intermediate=288, steps=350, lr=3e-3, min_lr_ratio=1.0))
    n_train: int = 4096
    no_think_fraction: float = 0.25
    max_new_tokens: int = 64


def chat_prompt(tok, prompt: str, enable_thinking: Optional[bool] = None) -> str:
    """The generation prompt of one user message, rendered by the tokenizer's chat template."""
    kw = {} if enable_thinking is None else {"enable_thinking": enable_thinking}
    return tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                   add_generation_prompt=True, **kw)


def sft_example(tok, problem: Problem, no_think: bool):
    """(input_ids, labels) for one SFT pair; labels are IGNORE outside the assistant answer."""
    prompt_ids = tok.encode(chat_prompt(tok, problem.prompt, False if no_think else None), add_special_tokens=False)
    answer_ids = tok.encode(solution_text(problem) + toytok.EOS, add_special_tokens=False)
    return prompt_ids + answer_ids, [IGNORE] * len(prompt_ids) + answer_ids


class ArithmeticWorld(ToyWorld):
    name, unit = "world", "problems"
    default_out = "artifacts/toy"
    tokenizer = toytok.ARITHMETIC
    max_positions = 256
    # The builder before the shared one hashed the alphabet (not the template) and, in build_info's
    # stamp, threads; the committed world carries its stamps.
    legacy = Legacy(extra=("alphabet",), threads=True, tokenizer="176f431a00099444")

    def default_config(self) -> WorldConfig:
        return WorldConfig()

    def quick_config(self) -> WorldConfig:
        return WorldConfig(n_train=64, n_heldout=8, **tiny_specs(batch_size=8), max_new_tokens=8,
                           quadrant_batch_size=4)

    def row_lines(self, cfg: WorldConfig) -> Dict[str, List[str]]:
        return prompt_lines(cfg.n_train, cfg.n_heldout, cfg.seed, cfg.task)

    def model_keys(self, role: str):
        return ("no_think_fraction",)

    def sft_batches(self, tok, cfg: WorldConfig, role: str, seed: int) -> Iterator[Dict[str, torch.Tensor]]:
        """Chat-formatted train-split problems and their solutions, a share without thinking."""
        spec, rng = getattr(cfg, role), random.Random(f"sft-{seed}")
        pool = make_problems(spec.sft_pool, seed, "train", cfg.task) if spec.sft_pool else None
        items = train_items(rng, pool, lambda r: sample_problem(r, cfg.task), lambda p: split_of(p, cfg.task))
        examples = (sft_example(tok, p, rng.random() < cfg.no_think_fraction) for p in items)
        return batches(examples, spec.batch_size, tok.pad_token_id)

    def evaluate(self, teacher, student, tok, cfg: WorldConfig, paths):
        """Held-out accuracies (greedy and T=1); the student's T=1 tokens."""
        problems = make_problems(cfg.n_heldout, cfg.seed, "heldout", cfg.task)
        prompt_ids = [tok.encode(chat_prompt(tok, p.prompt), add_special_tokens=False) for p in problems]
        res: Dict[str, object] = {}
        for name, model in (("teacher", teacher), ("student", student)):
            for label, temp in (("greedy", 0.0), ("t1", 1.0)):
                ro = rollouts(model, tok, cfg, temp, lambda backend, sampling: backend.generate(prompt_ids, sampling))
                texts = tok.batch_decode(ro.response_ids, skip_special_tokens=True)
                res[f"{name}_acc_{label}"] = sum(map(reward, texts, (p.answer for p in problems))) / max(1, len(problems))
                if name == "student" and label == "t1":
                    student_t1, res["student_t1_examples"] = ro, texts[:4]
        return res, token_batches(student, teacher, student_t1, len(tok), cfg.quadrant_batch_size)


WORLD = ArithmeticWorld()
quick_config, build, ensure_world, world_paths = WORLD.quick_config, WORLD.build, WORLD.ensure, WORLD.paths
