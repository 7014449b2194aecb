"""Build the embedded default world: tokenizer, prompt files, and a trained teacher and student.

    python -m opsd.toy.build --out artifacts/toy            # ~5 min on 2 CPU cores
    python -m opsd.toy.build --out /tmp/toy --quick         # seconds; untrained, for tests

Layout of ``--out``::

    tokenizer/        char-level HF tokenizer + chat template (opsd.toy.tokenizer)
    train.jsonl       {"prompt", "answer"} lines: the trainer's prompts (train split)
    heldout.jsonl     256 held-out problems (disjoint from train by hash)
    teacher/          Qwen3ForCausalLM + tokenizer, SFT-trained (4 layers, hidden 128)
    student/          Qwen3ForCausalLM + tokenizer, SFT-trained, deliberately weaker
    build_info.json   accuracies, TIP quadrant fractions, wall time, the config used

Idempotent: each part is checked (content or config fingerprint) and rebuilt only when missing or
stale; each is written to a temporary name and renamed, so an interrupted build leaves no
half-written part. Both models are trained by plain-torch SFT on chat-formatted (prompt, solution)
pairs with the loss on the assistant tokens only (response + ``<|im_end|>``).
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import random
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence

import torch

from opsd.toy import tokenizer as toytok
from opsd.toy.task import Problem, TaskConfig, make_problems, sample_problem, solution_text, split_of, write_prompt_files

IGNORE = -100


@dataclass
class ModelSpec:
    """Architecture and SFT schedule of one toy model."""

    layers: int
    hidden: int
    heads: int
    kv_heads: int
    intermediate: int
    tie_embeddings: bool = True
    steps: int = 600  # optimizer steps
    batch_size: int = 64
    lr: float = 3e-3  # peak; linear warm-up then cosine to lr * min_lr_ratio
    warmup_steps: int = 30
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.01


@dataclass
class WorldConfig:
    """Everything that decides the built world (its fingerprint keys the cached parts)."""

    seed: int = 0
    task: TaskConfig = field(default_factory=TaskConfig)
    n_train: int = 4096  # prompts in train.jsonl
    n_heldout: int = 256  # prompts in heldout.jsonl (the evaluation set)
    teacher: ModelSpec = field(default_factory=lambda: ModelSpec(
        layers=4, hidden=128, heads=4, kv_heads=2, intermediate=384, steps=900, lr=3e-3))
    student: ModelSpec = field(default_factory=lambda: ModelSpec(
        layers=2, hidden=64, heads=2, kv_heads=1, intermediate=192, steps=500, lr=3e-3))
    no_think_fraction: float = 0.25  # SFT share rendered with enable_thinking=False (empty think block)
    max_new_tokens: int = 64
    gen_batch_size: int = 256
    quadrant_batch_size: int = 64  # rollouts per min-max normalization, like a trainer batch
    entropy_threshold: float = 0.5  # on min-max normalized student entropy
    kl_threshold: float = 0.5  # on min-max normalized reverse KL
    evaluate: bool = True
    threads: int = 2

    def fingerprint(self, *keys: str) -> str:
        """Hash of the named fields (all when none) plus the tokenizer alphabet."""
        d = asdict(self)
        d = {k: d[k] for k in keys} if keys else d
        d["_alphabet"] = toytok.ALPHABET
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def quick_config() -> WorldConfig:
    """A tiny, barely trained world that builds in seconds (tests, smoke runs)."""
    tiny = dict(layers=1, hidden=32, heads=2, kv_heads=1, intermediate=64, steps=2, batch_size=8, warmup_steps=1)
    return WorldConfig(n_train=64, n_heldout=16, teacher=ModelSpec(**tiny), student=ModelSpec(**tiny),
                       max_new_tokens=16, quadrant_batch_size=8)


# ---------------------------------------------------------------------------------------------
# chat formatting


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


def pad_right(rows: Sequence[Sequence[int]], value: int) -> torch.Tensor:
    width = max(len(r) for r in rows)
    return torch.tensor([list(r) + [value] * (width - len(r)) for r in rows])  # (B, L)


def sft_batches(tok, cfg: WorldConfig, spec: ModelSpec, seed: int) -> Iterator[Dict[str, torch.Tensor]]:
    """Endless right-padded batches of fresh train-split problems (never held-out ones)."""
    rng = random.Random(f"sft-{seed}")
    while True:
        rows = []
        while len(rows) < spec.batch_size:
            p = sample_problem(rng, cfg.task)
            if split_of(p, cfg.task) == "train":
                rows.append(sft_example(tok, p, rng.random() < cfg.no_think_fraction))
        ids = pad_right([r[0] for r in rows], tok.pad_token_id)  # (B, L)
        yield {"input_ids": ids, "attention_mask": (pad_right([[1] * len(r[0]) for r in rows], 0)),
               "labels": pad_right([r[1] for r in rows], IGNORE)}


# ---------------------------------------------------------------------------------------------
# models


def model_config(spec: ModelSpec, tok):
    from transformers import Qwen3Config

    return Qwen3Config(
        vocab_size=toytok.padded_vocab_size(), hidden_size=spec.hidden, intermediate_size=spec.intermediate,
        num_hidden_layers=spec.layers, num_attention_heads=spec.heads, num_key_value_heads=spec.kv_heads,
        head_dim=spec.hidden // spec.heads, max_position_embeddings=256, tie_word_embeddings=spec.tie_embeddings,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=None,
    )


def lr_at(step: int, spec: ModelSpec) -> float:
    """Linear warm-up, then cosine from 1 to min_lr_ratio (a multiplier of spec.lr)."""
    if step < spec.warmup_steps:
        return (step + 1) / spec.warmup_steps
    t = (step - spec.warmup_steps) / max(1, spec.steps - spec.warmup_steps)
    return spec.min_lr_ratio + (1 - spec.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t))


def train_sft(name: str, spec: ModelSpec, tok, cfg: WorldConfig, seed: int):
    """A freshly initialized Qwen3ForCausalLM trained by SFT; returns (model, final_loss)."""
    from tqdm.auto import tqdm
    from transformers import Qwen3ForCausalLM

    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(model_config(spec, tok))
    opt = torch.optim.AdamW(model.parameters(), lr=spec.lr, betas=(0.9, 0.98), weight_decay=spec.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_at(s, spec))
    batches = sft_batches(tok, cfg, spec, seed)
    model.train()
    ema = None
    bar = tqdm(range(spec.steps), desc=f"sft {name}", unit="step", mininterval=1.0)
    for _ in bar:
        loss = model(**next(batches)).loss  # mean over assistant tokens only (labels mask the rest)
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
# generation and scoring (a small local helper; the trainer's backend lives in opsd/rollout)


@torch.no_grad()
def generate(model, tok, prompts: Sequence[str], temperature: float, max_new_tokens: int,
             batch_size: int, seed: int):
    """Chat-formatted, left-padded batched ``model.generate``; returns (prompt_ids, response_ids).

    ``response_ids[i]`` stops at (and includes) the first EOS, like ``opsd.rollout.base.Rollouts``.
    temperature 0 = greedy.
    """
    torch.manual_seed(seed)
    prompt_ids = [tok.encode(chat_prompt(tok, p), add_special_tokens=False) for p in prompts]
    responses: List[List[int]] = []
    sampling = dict(do_sample=True, temperature=temperature, top_p=1.0, top_k=0) if temperature > 0 \
        else dict(do_sample=False, temperature=None, top_p=None, top_k=None)
    for i in range(0, len(prompts), batch_size):
        chunk = prompt_ids[i:i + batch_size]
        enc = tok.pad({"input_ids": chunk}, padding=True, padding_side="left", return_tensors="pt")
        out = model.generate(**enc, max_new_tokens=max_new_tokens, pad_token_id=tok.pad_token_id,
                             eos_token_id=tok.eos_token_id, **sampling)  # (B, P + T)
        for row in out[:, enc["input_ids"].shape[1]:].tolist():
            cut = row.index(tok.eos_token_id) + 1 if tok.eos_token_id in row else len(row)
            responses.append(row[:cut])
    return prompt_ids, responses


def decode_responses(tok, responses: Sequence[Sequence[int]]) -> List[str]:
    return tok.batch_decode(responses, skip_special_tokens=True)


@torch.no_grad()
def response_logprobs(model, prompt_ids, response_ids, vocab: int) -> List[torch.Tensor]:
    """Per sample, log-probs at the positions that predict its response tokens: (T_i, vocab)."""
    rows = [list(p) + list(r) for p, r in zip(prompt_ids, response_ids)]
    ids = pad_right(rows, 0)  # (B, L); right padding keeps positions 0..len-1 for real tokens
    mask = pad_right([[1] * len(r) for r in rows], 0)
    logits = model(input_ids=ids, attention_mask=mask).logits[..., :vocab].float()  # (B, L, V)
    logp = torch.log_softmax(logits, dim=-1)
    return [logp[i, len(p) - 1:len(p) - 1 + len(r)] for i, (p, r) in enumerate(zip(prompt_ids, response_ids))]


def minmax(x: torch.Tensor) -> torch.Tensor:
    """Min-max to [0, 1] (TIP Eq. 5); a constant batch maps to 0, never NaN."""
    span = x.max() - x.min()
    return torch.zeros_like(x) if span <= 0 else (x - x.min()) / span


def quadrant_fractions(student, teacher, prompt_ids, response_ids, vocab: int, cfg: WorldConfig) -> Dict[str, float]:
    """TIP quadrants of student rollout tokens (Table 1): Q1 h high/d high, Q2 h high/d low,
    Q3 h low/d high (confident mistakes), Q4 both low; h = student entropy, d = reverse KL to the
    teacher, each min-max normalized per batch of ``quadrant_batch_size`` rollouts."""
    counts = torch.zeros(4)
    kl_sum, n_tok = 0.0, 0
    for i in range(0, len(prompt_ids), cfg.quadrant_batch_size):
        p, r = prompt_ids[i:i + cfg.quadrant_batch_size], response_ids[i:i + cfg.quadrant_batch_size]
        ls = torch.cat(response_logprobs(student, p, r, vocab))  # (N, V)
        lt = torch.cat(response_logprobs(teacher, p, r, vocab))  # (N, V)
        entropy = -(ls.exp() * ls).sum(-1)  # (N,)  TIP Eq. 2
        rkl = (ls.exp() * (ls - lt)).sum(-1)  # (N,)  KL(pi_S || pi_T), TIP Eq. 1
        hi_h, hi_d = minmax(entropy) >= cfg.entropy_threshold, minmax(rkl) > cfg.kl_threshold
        counts += torch.stack([(hi_h & hi_d).sum(), (hi_h & ~hi_d).sum(), (~hi_h & hi_d).sum(),
                               (~hi_h & ~hi_d).sum()]).float()
        kl_sum, n_tok = kl_sum + rkl.sum().item(), n_tok + rkl.numel()
    fr = (counts / counts.sum().clamp(min=1)).tolist()
    return {"Q1": fr[0], "Q2": fr[1], "Q3": fr[2], "Q4": fr[3], "mean_reverse_kl": kl_sum / max(1, n_tok),
            "tokens": n_tok}
