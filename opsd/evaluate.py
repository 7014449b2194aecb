"""Held-out accuracy of a policy (the trainer's before/after check): the mean reward of greedy
rollouts of any rollout loop (:class:`opsd.rollout.RolloutLoop`: single-turn answers scored by the
reward function, or episodes scored by their environment), one per row, over all ranks.

Benchmark evaluation with mean@k / pass@k lives in the top-level ``eval`` package; this is the
small in-loop version.
"""
from __future__ import annotations

import torch

from opsd.engine import all_reduce_host
from opsd.rollout.base import SamplingConfig


def accuracy(loop, rows, limit: int = 0, rank: int = 0, world: int = 1, progress: bool = False,
             batch_size: int = 64) -> float:
    """Mean reward of ``loop``'s greedy rollouts of the first ``limit`` rows (0: all), each rank
    taking a strided share."""
    from tqdm.auto import tqdm

    n = len(rows) if not limit else min(limit, len(rows))
    mine = list(range(rank, n, world))  # strided shard: every rank gets a near-equal share
    sampling = SamplingConfig(temperature=0.0, max_new_tokens=loop.max_new_tokens, n=1)
    total = 0.0
    for s in tqdm(range(0, len(mine), batch_size), disable=not progress, desc="eval", leave=False):
        out = loop.run([rows[i] for i in mine[s:s + batch_size]], sampling)
        total += sum(out.rewards)
    tot = all_reduce_host(torch.tensor([total, float(len(mine))], dtype=torch.float64))
    return (tot[0] / tot[1].clamp_min(1)).item()
