"""Build the agentic toy world: tokenizer, episode rows, and a trained teacher and student.

    python -m opsd.toy.agent_build --out artifacts/agent_toy       # ~50 min on 2 busy CPU cores
    python -m opsd.toy.agent_build --out /tmp/agent --quick        # seconds; untrained, for tests

Layout of ``--out``::

    tokenizer/        char-level HF tokenizer + tool-aware chat template (opsd.toy.agent_tokenizer)
    train.jsonl       episode rows (question, answer, the episode's facts): the trainer's data
    heldout.jsonl     held-out episodes (question texts disjoint from train by hash)
    teacher/          Qwen3ForCausalLM + tokenizer, SFT-trained on gold transcripts
    student/          Qwen3ForCausalLM + tokenizer, SFT-trained, deliberately weaker: fewer steps and
                      one wrong habit in its data (Misconception: asked for weight, it looks up height)
    build_info.json   accuracies (episodes played through opsd.rollout.agent), mistake kinds,
                      TIP quadrants per token role, sizes, wall time, the config used

The gold transcripts are laid out exactly as the agent loop lays out a rollout: the prompt is
the loop's rendering of the episode, each assistant turn is ``encode(turn + <|im_end|>)`` and the
ids between turns are the loop's own ``tool_turn_ids`` of the tool response; the SFT loss is on
the assistant turns only (tool responses and template glue are context, never targets).

Idempotent like ``opsd.toy.build``: each part is checked by content or fingerprint, rebuilt only
when missing or stale, and written to a temporary name first.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import random
import shutil
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence

import torch

from opsd.toy import agent_tokenizer as atok
from opsd.toy.agent_env import LookupEnv, LookupEpisode
from opsd.environment import ToolCall
from opsd.toy.agent_task import (ARG, ATTRIBUTES, NAMES, AgentTaskConfig, Question, expected_lines, gold_turns,
                                 make_questions, sample_question, split_of, tool_call_text, write_rows)
from opsd.toy.build import (IGNORE, ModelSpec, _read_json, _replace_dir, _write_json, lr_at, minmax, model_size,
                            pad_right, response_logprobs)


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
class AgentWorldConfig:
    """Everything that decides the built world (its fingerprint keys the cached parts)."""

    seed: int = 0
    task: AgentTaskConfig = field(default_factory=AgentTaskConfig)
    n_train: int = 2048  # rows in train.jsonl (OPD draws from these; SFT draws fresh questions)
    n_heldout: int = 256  # rows in heldout.jsonl (the evaluation set)
    teacher: ModelSpec = field(default_factory=lambda: ModelSpec(
        layers=4, hidden=128, heads=4, kv_heads=2, intermediate=384, steps=1200, batch_size=32, lr=3e-3))
    student: ModelSpec = field(default_factory=lambda: ModelSpec(  # the teacher's shape, 5/6 of its SFT
        layers=4, hidden=128, heads=4, kv_heads=2, intermediate=384, steps=1000, batch_size=32, lr=3e-3))
    no_think_fraction: float = 0.2  # SFT share rendered with enable_thinking=False
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
    max_new_tokens: int = 32  # per assistant turn (a gold call is 10 tokens, the answer <= 10)
    gen_batch_size: int = 256
    quadrant_batch_size: int = 64  # episodes per min-max normalization, like a trainer batch
    entropy_threshold: float = 0.5
    kl_threshold: float = 0.5
    evaluate: bool = True
    threads: int = 2

    def fingerprint(self, *keys: str) -> str:
        """Hash of the named fields (all but ``threads`` when none: the thread count does not change
        the world) plus the tokenizer alphabet and template."""
        d = asdict(self)
        d = {k: d[k] for k in keys} if keys else {k: v for k, v in d.items() if k != "threads"}
        d["_alphabet"], d["_pieces"], d["_template"] = atok.ALPHABET, list(atok.PIECES), atok.CHAT_TEMPLATE
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def quick_config() -> AgentWorldConfig:
    """A tiny, barely trained world that builds in seconds (tests, smoke runs)."""
    tiny = dict(layers=1, hidden=32, heads=2, kv_heads=1, intermediate=64, steps=2, batch_size=4, warmup_steps=1)
    return AgentWorldConfig(n_train=32, n_heldout=8, teacher=ModelSpec(**tiny), student=ModelSpec(**tiny),
                            max_turns=2, max_new_tokens=8, quadrant_batch_size=4)


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


def sft_batches(tok, cfg: AgentWorldConfig, spec: ModelSpec, seed: int,
                misconception: Optional[Misconception] = None) -> Iterator[Dict[str, torch.Tensor]]:
    """Endless right-padded batches of train-split gold episodes (fresh, or from a fixed pool of
    ``spec.sft_pool`` questions seen for many epochs), answered with ``misconception``'s habit if given."""
    rng = random.Random(f"agent-sft-{seed}")
    layouts = {False: GoldLayout(tok, cfg, None), True: GoldLayout(tok, cfg, False)}
    pool = make_questions(spec.sft_pool, seed, "train", cfg.task) if spec.sft_pool else None
    while True:
        rows = []
        while len(rows) < spec.batch_size:
            q = rng.choice(pool) if pool else sample_question(rng, cfg.task)
            if split_of(q, cfg.task) == "train":
                layout = layouts[rng.random() < cfg.no_think_fraction]
                wrong = rng.randrange(len(q.needed)) if rng.random() < cfg.recovery_fraction else None
                answered = misconception.apply(q, rng) if misconception else None
                rows.append(layout.example(q, wrong, rng, answered))
        yield {"input_ids": pad_right([r[0] for r in rows], tok.pad_token_id),  # (B, L)
               "labels": pad_right([r[1] for r in rows], IGNORE)}  # (B, L)


# ---------------------------------------------------------------------------------------------
# models


def model_config(spec: ModelSpec, tok):
    from transformers import Qwen3Config

    return Qwen3Config(
        vocab_size=atok.padded_vocab_size(), hidden_size=spec.hidden, intermediate_size=spec.intermediate,
        num_hidden_layers=spec.layers, num_attention_heads=spec.heads, num_key_value_heads=spec.kv_heads,
        head_dim=spec.hidden // spec.heads, max_position_embeddings=512, tie_word_embeddings=spec.tie_embeddings,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=None,
    )


def train_sft(name: str, spec: ModelSpec, tok, cfg: AgentWorldConfig, seed: int,
              misconception: Optional[Misconception] = None):
    """A freshly initialized Qwen3ForCausalLM trained on gold transcripts; returns (model, loss EMA)."""
    from tqdm.auto import tqdm
    from transformers import Qwen3ForCausalLM

    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(model_config(spec, tok))
    opt = torch.optim.AdamW(model.parameters(), lr=spec.lr, betas=(0.9, 0.98), weight_decay=spec.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_at(s, spec))
    batches = sft_batches(tok, cfg, spec, seed, misconception)
    model.train()
    ema = None
    bar = tqdm(range(spec.steps), desc=f"sft {name}", unit="step", mininterval=2.0)
    for _ in bar:
        # Right padding + a causal mask: real tokens never see the pads after them, so no
        # attention mask is needed (SDPA's fast is_causal kernel).
        loss = model(**next(batches)).loss  # mean over assistant tokens only
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        ema = loss.item() if ema is None else 0.95 * ema + 0.05 * loss.item()
        bar.set_postfix(loss=f"{ema:.3f}", refresh=False)
    model.eval()
    return model, ema


def set_generation_defaults(model, tok) -> None:
    """Saved generation config: pure sampling at T=1 (top_k=0 disables HF's default top-50)."""
    gc = model.generation_config
    gc.eos_token_id, gc.pad_token_id, gc.bos_token_id = tok.eos_token_id, tok.pad_token_id, None
    gc.do_sample, gc.temperature, gc.top_p, gc.top_k = True, 1.0, 1.0, 0
    gc.max_new_tokens = 64


# ---------------------------------------------------------------------------------------------
# evaluation: episodes played through the agent loop


def play(model, tok, rows: Sequence[dict], cfg: AgentWorldConfig, temperature: float):
    """Episodes of ``rows`` played by ``model`` through ``opsd.rollout.agent`` (an AgentRollouts)."""
    from opsd.rollout.base import SamplingConfig
    from opsd.rollout.hf import HFGenerateBackend

    torch.manual_seed(cfg.seed)
    loop = agent_loop(tok, cfg, None, HFGenerateBackend(model, tok, cfg.gen_batch_size))
    return loop.run(list(rows), SamplingConfig(temperature=temperature, max_new_tokens=cfg.max_new_tokens, n=1,
                                                seed=cfg.seed))


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


def quadrants_by_role(student, teacher, rollouts, vocab: int, cfg: AgentWorldConfig) -> Dict[str, object]:
    """TIP quadrants (Table 1) of the student's sampled tokens: Q1 h high/d high, Q2 h high/d low,
    Q3 h low/d high (confident mistakes), Q4 both low; h = student entropy, d = reverse KL to the
    teacher, min-max normalized per batch of ``quadrant_batch_size`` episodes over sampled tokens
    only. Shares overall and per token role (tool_call / text / answer)."""
    from opsd.rollout.agent import ROLE_NAMES

    counts: Dict[str, torch.Tensor] = {}
    for i in range(0, len(rollouts.prompt_ids), cfg.quadrant_batch_size):
        sl = slice(i, i + cfg.quadrant_batch_size)
        p, r = rollouts.prompt_ids[sl], rollouts.response_ids[sl]
        keep = torch.tensor([m for ms in rollouts.response_mask[sl] for m in ms], dtype=torch.bool)  # (N,)
        roles = torch.tensor([x for xs in rollouts.token_roles[sl] for x in xs])[keep]  # (K,)
        ls = torch.cat(response_logprobs(student, p, r, vocab))[keep]  # (K, V)
        lt = torch.cat(response_logprobs(teacher, p, r, vocab))[keep]  # (K, V)
        entropy = -(ls.exp() * ls).sum(-1)  # (K,)  TIP Eq. 2
        rkl = (ls.exp() * (ls - lt)).sum(-1)  # (K,)  KL(pi_S || pi_T), TIP Eq. 1
        hi_h, hi_d = minmax(entropy) >= cfg.entropy_threshold, minmax(rkl) > cfg.kl_threshold
        quad = torch.stack([hi_h & hi_d, hi_h & ~hi_d, ~hi_h & hi_d, ~hi_h & ~hi_d], -1).float()  # (K, 4)
        for role, name in [(None, "all"), *ROLE_NAMES.items()]:
            sel = quad if role is None else quad[roles == role]
            counts[name] = counts.get(name, torch.zeros(4)) + sel.sum(0)
    out: Dict[str, object] = {}
    for name, c in counts.items():
        if c.sum() > 0:
            fr = (c / c.sum()).tolist()
            out[name] = {"Q1": fr[0], "Q2": fr[1], "Q3": fr[2], "Q4": fr[3], "tokens": int(c.sum())}
    return out


def evaluate_world(teacher, student, tok, cfg: AgentWorldConfig, rows: Sequence[dict]) -> Dict[str, object]:
    """Held-out accuracies (greedy and T=1), mistake kinds, and quadrants of the student's T=1 episodes."""
    res: Dict[str, object] = {}
    for name, model in (("teacher", teacher), ("student", student)):
        for label, temp in (("greedy", 0.0), ("t1", 1.0)):
            t0 = time.time()
            ro = play(model, tok, rows, cfg, temp)
            res[f"{name}_acc_{label}"] = sum(ro.rewards) / max(1, len(ro.rewards))
            res[f"{name}_mistakes_{label}"] = mistake_kinds(ro)
            res[f"{name}_play_{label}_s"] = round(time.time() - t0, 1)
            if name == "student" and label == "t1":
                student_t1 = ro
                res["student_t1_examples"] = [tok.decode(x) for x in ro.response_ids[:3]]
    res["episode_tokens_mean"] = sum(len(x) for x in student_t1.response_ids) / max(1, len(student_t1.response_ids))
    res["quadrants"] = quadrants_by_role(student, teacher, student_t1, len(tok), cfg)
    return res


# ---------------------------------------------------------------------------------------------
# the build


def tokenizer_valid(path: Path) -> bool:
    try:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(path))
    except Exception:  # any load failure means "rebuild", never "crash the build"
        return False
    return tok.get_vocab() == atok.vocab() and tok.chat_template == atok.CHAT_TEMPLATE


def ensure_tokenizer(path: Path):
    from transformers import AutoTokenizer

    if not tokenizer_valid(path):
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        atok.save_tokenizer(tmp)
        _replace_dir(tmp, path)
    return AutoTokenizer.from_pretrained(str(path))


def ensure_rows(out: Path, cfg: AgentWorldConfig) -> bool:
    """Write train/heldout jsonl unless both already hold exactly the expected lines; True if written."""
    expected = expected_lines(cfg.n_train, cfg.n_heldout, cfg.seed, cfg.task)
    try:
        if all((out / f"{s}.jsonl").read_text().splitlines() == list(lines) for s, lines in expected.items()):
            return False
    except OSError:
        pass
    write_rows(out, cfg.n_train, cfg.n_heldout, cfg.seed, cfg.task)
    return True


def model_fingerprint(cfg: AgentWorldConfig, role: str) -> str:
    keys = ("seed", "task", role, "no_think_fraction", "recovery_fraction")
    return cfg.fingerprint(*keys, *(("student_misconception",) if role == "student" else ()))


def ensure_model(path: Path, role: str, tok, cfg: AgentWorldConfig):
    """Load the model at ``path`` or train and save it; returns (model, trained_now)."""
    from transformers import AutoModelForCausalLM

    fp = model_fingerprint(cfg, role)
    info = _read_json(path / "sft_info.json")
    if info is not None and info.get("fingerprint") == fp and (path / "model.safetensors").exists():
        return AutoModelForCausalLM.from_pretrained(str(path)).eval(), False
    spec: ModelSpec = getattr(cfg, role)
    seed = cfg.seed + (0 if role == "teacher" else 1)
    t0 = time.time()
    model, loss = train_sft(role, spec, tok, cfg, seed, cfg.student_misconception if role == "student" else None)
    set_generation_defaults(model, tok)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    model.save_pretrained(str(tmp))
    tok.save_pretrained(str(tmp))
    _write_json(tmp / "sft_info.json", {"fingerprint": fp, "spec": asdict(spec), "seed": seed,
                                        "final_loss_ema": loss, "train_s": round(time.time() - t0, 1)})
    _replace_dir(tmp, path)
    return model, True


def world_paths(out_dir) -> Dict[str, str]:
    out = Path(out_dir)
    names = {"tokenizer": "tokenizer", "teacher": "teacher", "student": "student", "train": "train.jsonl",
             "heldout": "heldout.jsonl", "build_info": "build_info.json"}
    return {"root": str(out), **{k: str(out / v) for k, v in names.items()}}


def read_rows(path) -> List[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def build(out_dir, cfg: Optional[AgentWorldConfig] = None, force: bool = False) -> Dict[str, object]:
    """Build what is missing or stale under ``out_dir``; returns the build info."""
    cfg = cfg or AgentWorldConfig()
    cfg.task.validate()
    if cfg.student_misconception is not None:
        cfg.student_misconception.validate()
    torch.set_num_threads(cfg.threads)
    t0 = time.time()
    out, paths = Path(out_dir), world_paths(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if force:
        for name in ("tokenizer", "teacher", "student", "build_info"):
            p = Path(paths[name])
            shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
    tok = ensure_tokenizer(Path(paths["tokenizer"]))
    ensure_rows(out, cfg)
    teacher, t_new = ensure_model(Path(paths["teacher"]), "teacher", tok, cfg)
    student, s_new = ensure_model(Path(paths["student"]), "student", tok, cfg)
    info = _read_json(Path(paths["build_info"]))
    if info is not None and info.get("fingerprint") == cfg.fingerprint() and not (t_new or s_new):
        return info  # everything present and valid
    info = {"fingerprint": cfg.fingerprint(), "config": asdict(cfg), "vocab": len(tok),
            "model_vocab_size": atok.padded_vocab_size(),
            "teacher_size": model_size(teacher, Path(paths["teacher"])),
            "student_size": model_size(student, Path(paths["student"]))}
    if cfg.evaluate:
        info.update(evaluate_world(teacher, student, tok, cfg, read_rows(paths["heldout"])))
    info["build_wall_s"] = round(time.time() - t0, 1)
    _write_json(Path(paths["build_info"]), info)
    return info


def ensure_world(out_dir="artifacts/agent_toy", cfg: Optional[AgentWorldConfig] = None) -> Dict[str, str]:
    """Build the world if needed and return its paths (root, tokenizer, teacher, student, train,
    heldout, build_info)."""
    build(out_dir, cfg)
    return world_paths(out_dir)


def summary(info: Dict[str, object]) -> str:
    lines = [f"teacher: {info['teacher_size']['params']:,} params, {info['teacher_size']['disk_mb']} MB",
             f"student: {info['student_size']['params']:,} params, {info['student_size']['disk_mb']} MB"]
    if "quadrants" in info:
        lines.append(f"held-out accuracy ({info['config']['n_heldout']} episodes): "
                     f"teacher greedy {info['teacher_acc_greedy']:.3f}  T=1 {info['teacher_acc_t1']:.3f} | "
                     f"student greedy {info['student_acc_greedy']:.3f}  T=1 {info['student_acc_t1']:.3f}")
        for key in ("teacher_mistakes_greedy", "student_mistakes_greedy", "student_mistakes_t1"):
            lines.append(f"{key}: " + "  ".join(f"{k} {v:.3f}" for k, v in info[key].items()))
        for role, q in info["quadrants"].items():
            lines.append(f"TIP quadrants of student T=1 {role} tokens ({q['tokens']}): Q1 {q['Q1']:.3f}  "
                         f"Q2 {q['Q2']:.3f}  Q3 {q['Q3']:.3f}  Q4 {q['Q4']:.3f}")
    lines.append(f"build wall time: {info['build_wall_s']} s")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="artifacts/agent_toy", help="output folder (default: artifacts/agent_toy)")
    ap.add_argument("--quick", action="store_true", help="tiny untrained world in seconds (tests, smoke runs)")
    ap.add_argument("--force", action="store_true", help="rebuild every part, even valid ones")
    ap.add_argument("--seed", type=int, default=None, help="world seed (default 0)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default 2)")
    ap.add_argument("--no-eval", action="store_true", help="skip the held-out evaluation and quadrants")
    args = ap.parse_args(argv)
    cfg = quick_config() if args.quick else AgentWorldConfig()
    cfg = dataclasses.replace(cfg, **{k: v for k, v in (("seed", args.seed), ("threads", args.threads))
                                      if v is not None}, evaluate=not args.no_eval)
    info = build(args.out, cfg, force=args.force)
    print(f"agentic world at {args.out}")
    print(summary(info))


if __name__ == "__main__":
    main()
