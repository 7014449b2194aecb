"""The agentic toy world: tool-calling lookups (:mod:`opsd.toy.agent_task`), built by the shared
toy-world builder (:mod:`opsd.toy.world`).

    python recipes/toy/world.py --world agent --out artifacts/agent_toy    # ~50 min on 2 busy CPU cores
    python recipes/toy/world.py --world agent --out /tmp/agent --quick     # seconds; untrained, for tests

What this world supplies: episode rows (question, answer, the episode's facts; held-out question
texts disjoint from train by hash); gold transcripts for SFT; a teacher and a deliberately weaker
student -- fewer SFT steps and one wrong habit in its data (Misconception: asked for weight, it
looks up height); and an evaluation of both, episodes played through ``opsd.rollout.agent``:
accuracies, mistake kinds, and the student's T=1 tokens by role.

The gold transcripts are laid out exactly as the agent loop lays out a rollout: the prompt is
the loop's rendering of the episode, each assistant turn is ``encode(turn + <|im_end|>)`` and the
ids between turns are the loop's own ``tool_turn_ids`` of the tool response; the SFT loss is on
the assistant turns only (tool responses and template glue are context, never targets).
"""
from __future__ import annotations

import dataclasses
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional

import torch

from opsd.environment import ToolCall
from opsd.toy import agent_tokenizer as atok
from opsd.toy.agent_env import LookupEnv, LookupEpisode
from opsd.toy.agent_task import (ARG, ATTRIBUTES, NAMES, AgentTaskConfig, Question, expected_lines, gold_turns,
                                 make_questions, sample_question, split_of, tool_call_text)
from opsd.toy.rows import read_rows
from opsd.toy.world import (IGNORE, BuildConfig, Legacy, ModelSpec, ToyWorld, batches, rollouts, tiny_specs,
                            token_batches, train_items)


@dataclass(frozen=True)
class Misconception:
    """A systematic wrong habit in SFT data: each call for attribute ``asked`` becomes, with
    probability ``rate``, a call for ``called`` on the same entity -- a target like any other turn --
    and the final arithmetic uses the value that call fetched. The model learns to make that call
    with probability ~``rate``: a confident mistake (low entropy, high divergence from a teacher
    that calls ``asked``), TIP's Q3 quadrant."""

    asked: str = "weight"
    called: str = "height"
    rate: float = 0.9

    def validate(self) -> None:
        if self.asked not in ATTRIBUTES or self.called not in ATTRIBUTES or self.asked == self.called:
            raise ValueError(f"Misconception: asked and called must be two different tools of {ATTRIBUTES}, "
                             f"got {self.asked!r}, {self.called!r}")
        if not 0.0 <= self.rate <= 1.0:
            raise ValueError(f"Misconception: rate must be in [0, 1], got {self.rate}")

    def apply(self, q: Question, rng: random.Random) -> Question:
        """``q`` as the habit answers it: the same prompt, other facts fetched and combined."""
        needed = tuple(_fact(q, self.called, f.who) if f.attr == self.asked and rng.random() < self.rate else f
                       for f in q.needed)
        return dataclasses.replace(q, needed=needed)


def _fact(q: Question, attr: str, who: str):
    return next(f for f in q.facts if f.attr == attr and f.who == who)


@dataclass
class AgentWorldConfig(BuildConfig):
    """Everything that decides the built world (its fingerprint keys the cached parts)."""

    task: AgentTaskConfig = field(default_factory=AgentTaskConfig)
    teacher: ModelSpec = field(default_factory=lambda: ModelSpec(
        layers=4, hidden=128, heads=4, kv_heads=2, intermediate=384, steps=1200, batch_size=32, lr=3e-3))
    student: ModelSpec = field(default_factory=lambda: ModelSpec(  # the teacher's shape, 5/6 of its SFT
        layers=4, hidden=128, heads=4, kv_heads=2, intermediate=384, steps=1000, batch_size=32, lr=3e-3))
    n_train: int = 2048  # OPD draws from these rows; SFT draws fresh questions
    no_think_fraction: float = 0.2
    max_new_tokens: int = 32  # per assistant turn (a gold call is 10 tokens, the answer <= 10)
    # SFT share of gold episodes with one wrong call (an unknown name, another entity, or another
    # attribute) before a right one: the call is context, not a target, and the tool's answer to it
    # (an error text or an unasked fact) is followed by the right call. A teacher that never saw a
    # failed call has no useful distribution on the student's episodes after one -- which is where
    # on-policy distillation spends most of its tokens on this world.
    recovery_fraction: float = 0.3
    # The student's SFT data carries one habit the teacher's lacks: asked for one attribute, it
    # mostly looks up another and computes with what it fetched (see Misconception). Without it a
    # student trained on the same data as the teacher makes almost only uncertain mistakes (the
    # digits of a sum; Q3 was 0.1 % of its tokens), and Table 7's rules cannot differ.
    student_misconception: Optional[Misconception] = field(default_factory=Misconception)
    max_turns: int = 4  # evaluation episodes: the limits of recipes/toy/agent.yaml
    max_episode_tokens: int = 128


# ---------------------------------------------------------------------------------------------
# gold transcripts, laid out by the agent loop itself


def agent_loop(tok, cfg: AgentWorldConfig, enable_thinking: Optional[bool] = None, backend=None):
    from opsd.rollout.agent import AgentConfig, AgentLoop

    acfg = AgentConfig(max_turns=cfg.max_turns, max_episode_tokens=cfg.max_episode_tokens,
                       max_new_tokens=cfg.max_new_tokens, enable_thinking=enable_thinking)
    return AgentLoop(backend, tok, LookupEnv(), acfg)


class GoldLayout:
    """(input_ids, labels) of gold episodes; tool-turn ids cached per response text."""

    def __init__(self, tok, cfg: AgentWorldConfig, enable_thinking: Optional[bool]):
        self.tok, self.loop = tok, agent_loop(tok, cfg, enable_thinking)
        self._tool_ids: Dict[str, List[int]] = {}

    def _tool_turn(self, result: str) -> List[int]:
        if result not in self._tool_ids:
            self._tool_ids[result] = self.loop.tool_turn_ids([{"role": "tool", "content": result}])
        return self._tool_ids[result]

    def example(self, q: Question, wrong_before: Optional[int] = None, rng: Optional[random.Random] = None,
                answered: Optional[Question] = None):
        """The gold episode of ``q``; with ``wrong_before=k`` a wrong call (drawn with ``rng``) and
        the tool's answer to it precede the k-th right call, as context (labels IGNORE). ``answered``
        (a Misconception's version of ``q``: same prompt, other facts) gives the calls and the
        arithmetic that are trained instead of ``q``'s own."""
        ep = LookupEpisode(q.row())
        ids = self.loop.prompt_ids(ep)
        labels = [IGNORE] * len(ids)
        q_turns = answered or q
        for k, text in enumerate(gold_turns(q_turns)):
            if k == wrong_before:
                attr, who = wrong_call(q, k, rng or random.Random(0))
                turn = self.tok.encode(tool_call_text(attr, who) + atok.EOS, add_special_tokens=False)
                _, result = self.loop.run_tool(ep, ToolCall(attr, {ARG: who}, raw=""))  # the loop's own text
                context = turn + self._tool_turn(result)
                ids, labels = ids + context, labels + [IGNORE] * len(context)
            turn = self.tok.encode(text + atok.EOS, add_special_tokens=False)
            ids, labels = ids + turn, labels + turn
            if k < len(q.needed):  # a call: the loop inserts the tool turn (context, not a target)
                tool = self._tool_turn(ep.call_tool(q_turns.needed[k].attr, {ARG: q_turns.needed[k].who}))
                ids, labels = ids + tool, labels + [IGNORE] * len(tool)
        return ids, labels


def wrong_call(q: Question, k: int, rng: random.Random):
    """A wrong ``(attr, who)`` in place of the k-th asked fact: a name not in the database (the tool
    answers with an error), another entity of the database, or another attribute of the right one
    (the tool answers with an unasked fact) -- never a fact the question asks for."""
    right = q.needed[k]
    names = sorted({f.who for f in q.facts})
    asked = {(f.attr, f.who) for f in q.needed}
    kind = rng.randrange(3)
    if kind == 0:
        return right.attr, rng.choice([n for n in NAMES if n not in names])
    options = ([(right.attr, n) for n in names if n != right.who] if kind == 1
               else [(a, right.who) for a in ATTRIBUTES if a != right.attr])
    options = [o for o in options if o not in asked] or [(right.attr, rng.choice([n for n in NAMES if n not in names]))]
    return rng.choice(options)


def mistake_kinds(rollouts) -> Dict[str, float]:
    """Share of episodes by outcome: correct, or the first kind of mistake -- a failed call (bad
    JSON, unknown name), a wrong fact fetched (wrong tool or entity), a fact never fetched, wrong
    arithmetic with all facts in hand, or cut (turn/token limit)."""
    kinds: Counter = Counter()
    for rec in rollouts.episodes:
        ep_score, tr = rec.score, rec.transcript
        if ep_score.reward == 1.0:
            kinds["correct"] += 1
        elif tr.cut is not None:
            kinds["cut"] += 1
        elif rec.calls_failed:
            kinds["failed_call"] += 1
        elif ep_score.info.get("extra"):
            kinds["wrong_fact"] += 1
        elif ep_score.info.get("missing"):
            kinds["missing_fact"] += 1
        else:
            kinds["wrong_arithmetic"] += 1
    n = max(1, len(rollouts.episodes))
    return {k: kinds[k] / n for k in ("correct", "failed_call", "wrong_fact", "missing_fact", "wrong_arithmetic", "cut")}


class AgentWorld(ToyWorld):
    name, unit = "agentic world", "episodes"
    default_out = "artifacts/agent_toy"
    tokenizer = atok.AGENT
    max_positions = 512
    # The builder before the shared one hashed the alphabet, pieces and template, not the ids of the
    # control tokens and tool markers; the committed world carries its stamps.
    legacy = Legacy(extra=("alphabet", "pieces", "template"), threads=False, tokenizer="f9116d7f6e2f7681")

    def default_config(self) -> AgentWorldConfig:
        return AgentWorldConfig()

    def quick_config(self) -> AgentWorldConfig:
        return AgentWorldConfig(n_train=32, n_heldout=8, **tiny_specs(batch_size=4), max_turns=2, max_new_tokens=8,
                                quadrant_batch_size=4)

    def validate(self, cfg: AgentWorldConfig) -> None:
        cfg.task.validate()
        if cfg.student_misconception is not None:
            cfg.student_misconception.validate()

    def row_lines(self, cfg: AgentWorldConfig) -> Dict[str, List[str]]:
        return expected_lines(cfg.n_train, cfg.n_heldout, cfg.seed, cfg.task)

    def model_keys(self, role: str):
        return ("no_think_fraction", "recovery_fraction", *(("student_misconception",) if role == "student" else ()))

    def sft_batches(self, tok, cfg: AgentWorldConfig, role: str, seed: int) -> Iterator[Dict[str, torch.Tensor]]:
        """Train-split gold episodes, a share with a wrong call first (recovery), answered with the
        student's misconception where it has one."""
        spec, rng = getattr(cfg, role), random.Random(f"agent-sft-{seed}")
        misconception = cfg.student_misconception if role == "student" else None
        layouts = {False: GoldLayout(tok, cfg, None), True: GoldLayout(tok, cfg, False)}
        pool = make_questions(spec.sft_pool, seed, "train", cfg.task) if spec.sft_pool else None

        def example(q: Question):
            layout = layouts[rng.random() < cfg.no_think_fraction]
            wrong = rng.randrange(len(q.needed)) if rng.random() < cfg.recovery_fraction else None
            return layout.example(q, wrong, rng, misconception.apply(q, rng) if misconception else None)

        items = train_items(rng, pool, lambda r: sample_question(r, cfg.task), lambda q: split_of(q, cfg.task))
        return batches(map(example, items), spec.batch_size, tok.pad_token_id)

    def evaluate(self, teacher, student, tok, cfg: AgentWorldConfig, paths):
        """Held-out accuracies (greedy and T=1) of episodes played through the agent loop, their
        mistake kinds; the student's T=1 sampled tokens, grouped by role."""
        from opsd.rollout.agent import ROLE_NAMES

        rows, res = read_rows(paths["heldout"]), {}
        for name, model in (("teacher", teacher), ("student", student)):
            for label, temp in (("greedy", 0.0), ("t1", 1.0)):
                t0 = time.time()
                ro = rollouts(model, tok, cfg, temp, lambda backend, sampling: agent_loop(tok, cfg, None, backend).run(
                    rows, sampling))
                res[f"{name}_acc_{label}"] = sum(ro.rewards) / max(1, len(ro.rewards))
                res[f"{name}_mistakes_{label}"] = mistake_kinds(ro)
                res[f"{name}_play_{label}_s"] = round(time.time() - t0, 1)
                if name == "student" and label == "t1":
                    student_t1, res["student_t1_examples"] = ro, [tok.decode(x) for x in ro.response_ids[:3]]
        res["episode_tokens_mean"] = sum(map(len, student_t1.response_ids)) / max(1, len(student_t1.response_ids))
        return res, token_batches(student, teacher, student_t1, len(tok), cfg.quadrant_batch_size, ROLE_NAMES)

    def summary_lines(self, info) -> List[str]:
        return [f"{key}: " + "  ".join(f"{k} {v:.3f}" for k, v in info[key].items())
                for key in ("teacher_mistakes_greedy", "student_mistakes_greedy", "student_mistakes_t1")]


WORLD = AgentWorld()
quick_config, build, ensure_world, world_paths = WORLD.quick_config, WORLD.build, WORLD.ensure, WORLD.paths
