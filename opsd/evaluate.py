"""Held-out accuracy of a policy on prompts with gold answers (the trainer's before/after check).

Benchmark evaluation with mean@k / pass@k lives in the top-level ``eval`` package; this is the
small in-loop version: greedy decoding, one sample, mean reward over all ranks.
"""
from __future__ import annotations

import torch

from opsd.engine import all_reduce_host
from opsd.rollout.base import SamplingConfig


def accuracy(backend, tokenizer, dataset, reward_fn, max_new_tokens: int = 256, limit: int = 0,
             rank: int = 0, world: int = 1, progress: bool = False, batch_size: int = 64) -> float:
    n = len(dataset) if not limit else min(limit, len(dataset))
    mine = list(range(rank, n, world))  # strided shard: every rank gets a near-equal share
    sampling = SamplingConfig(temperature=0.0, max_new_tokens=max_new_tokens, n=1)
    correct = 0.0
    from tqdm.auto import tqdm

    for s in tqdm(range(0, len(mine), batch_size), disable=not progress, desc="eval", leave=False):
        items = [dataset[i] for i in mine[s:s + batch_size]]
        out = backend.generate([it["prompt_ids"] for it in items], sampling)
        texts = tokenizer.batch_decode(out.response_ids, skip_special_tokens=True)
        correct += sum(float(reward_fn(t, items[j]["answer"])) for t, j in zip(texts, out.prompt_index))
    tot = all_reduce_host(torch.tensor([correct, float(len(mine))], dtype=torch.float64))
    return (tot[0] / tot[1].clamp_min(1)).item()


def episode_accuracy(loop, rows, limit: int = 0, rank: int = 0, world: int = 1, progress: bool = False,
                     batch_size: int = 64) -> float:
    """Agentic version: mean episode reward of greedy episodes (``loop``: an
    :class:`opsd.rollout.agent.AgentLoop`) on the held-out rows, over all ranks."""
    from tqdm.auto import tqdm

    n = len(rows) if not limit else min(limit, len(rows))
    mine = list(range(rank, n, world))
    sampling = SamplingConfig(temperature=0.0, max_new_tokens=loop.cfg.max_new_tokens, n=1)
    total = 0.0
    for s in tqdm(range(0, len(mine), batch_size), disable=not progress, desc="eval", leave=False):
        out = loop.run([rows[i] for i in mine[s:s + batch_size]], sampling)
        total += sum(out.rewards)
    tot = all_reduce_host(torch.tensor([total, float(len(mine))], dtype=torch.float64))
    return (tot[0] / tot[1].clamp_min(1)).item()
