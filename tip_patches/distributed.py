"""Global selection under data parallelism.

DECIDE (EQUATIONS.md, "Normalization"): under data parallelism "the batch" is the **global**
batch. Each rank all-gathers the per-token statistics of every rank (padded to the largest N,
so gloo on CPU and NCCL on GPU both work), computes normalization, quadrants and the selection
on the concatenation ``[rank 0 tokens, rank 1 tokens, ...]`` with the same generator state, and
keeps its own contiguous part. The selection is then identical to the one a single process would
make on the whole batch, and ``K = ceil(ratio · N_global)``. Cost: one all-gather of ``4 · N``
floats per hook call, small next to the vocabulary-wide passes.

Every rank must call the hook the same number of times (it does: once per micro-batch) and start
from the same generator seed (``tip.seed``, defaulting to ``train.seed``).
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch
import torch.distributed as dist

from opsd.hooks import TokenStats, TokenSelection

FIELDS = ("entropy", "reverse_kl", "forward_kl", "teacher_entropy")


def group_info(stats: TokenStats) -> Tuple[Optional[object], int, int]:
    """``(group, world_size, rank)``; world size 1 when torch.distributed is not initialized."""
    if not (dist.is_available() and dist.is_initialized()):
        return None, 1, 0
    group = stats.process_group
    return group, dist.get_world_size(group), dist.get_rank(group)


def as_float(stats: TokenStats) -> TokenStats:
    """The four statistics in one float dtype (float64 if any is, else float32), so a single
    process and an all-gather see bit-identical values."""
    dtype = torch.float64 if any(getattr(stats, f).dtype == torch.float64 for f in FIELDS) else torch.float32
    vals = {f: getattr(stats, f).detach().to(dtype) for f in FIELDS}
    return TokenStats(**vals, process_group=stats.process_group, token_group=stats.token_group,
                      group_names=stats.group_names)


def _all_gather(t: torch.Tensor, group, world: int) -> List[torch.Tensor]:
    out = [torch.empty_like(t) for _ in range(world)]
    dist.all_gather(out, t.contiguous(), group=group)
    return out


def gather_stats(stats: TokenStats) -> Tuple[TokenStats, int]:
    """``(global_stats, offset)``: the concatenated statistics of all ranks and where this
    rank's tokens start in them. Without a process group of size > 1: ``(stats, 0)``."""
    group, world, rank = group_info(stats)
    if world == 1:
        return stats, 0
    cols = [getattr(stats, f) for f in FIELDS]
    if stats.token_group is not None:  # token roles ride along as a fifth column (exact as floats)
        cols.append(stats.token_group.to(cols[0].dtype))
    local = torch.stack(cols, dim=1)  # (N, 4 or 5)
    sizes = _all_gather(torch.tensor([local.shape[0]], device=local.device), group, world)
    sizes = [int(s) for s in sizes]
    pad = local.new_zeros(max(sizes), local.shape[1])  # (N_max, 4|5): all_gather needs equal shapes
    pad[: local.shape[0]] = local
    parts = [p[:n] for p, n in zip(_all_gather(pad, group, world), sizes)]
    full = torch.cat(parts)  # (N_global, 4)
    # contiguous columns: reductions over them then run in the same order as in one process
    glob = TokenStats(**{f: full[:, i].contiguous() for i, f in enumerate(FIELDS)},
                      process_group=stats.process_group, group_names=stats.group_names,
                      token_group=full[:, len(FIELDS)].long() if stats.token_group is not None else None)
    return glob, sum(sizes[:rank])


def localize(sel: TokenSelection, offset: int, n_local: int) -> TokenSelection:
    """The part of a global selection that falls in ``[offset, offset + n_local)``, re-indexed."""
    idx = sel.indices
    mask = (idx >= offset) & (idx < offset + n_local)
    pick = (lambda t: t[mask] if t is not None else None)
    return TokenSelection(indices=idx[mask] - offset, weights=pick(sel.weights),
                          extra_loss_weight=pick(sel.extra_loss_weight), diagnostics=sel.diagnostics)
