"""Data parallelism: two gloo ranks select exactly what one process selects on the whole batch.

Rank r holds the r-th contiguous part of a global batch; the union of the ranks' kept global
indices (and their weights) must equal the world-size-1 selection on the concatenation, call
after call (so the generators stay in step), for Top-K and for sampling rules.
"""
import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from opsd.hooks import TokenStats
from tip_patches import TipConfig, TipSelector

CONFIGS = [TipConfig(rule="soft_or", ratio=0.3),
           TipConfig(rule="soft_or", ratio=0.3, normalization="running", quadrant_threshold="median"),
           TipConfig(rule="entropy_sample", ratio=0.25, seed=5),
           TipConfig(rule="entropy_sample", ratio=0.4, seed=6, importance_weighted=True),
           TipConfig(rule="q3", ratio=0.1),
           TipConfig(rule="adaptive_kl", ratio=0.5, seed=2, adaptive_tau=0.5)]
# (sizes of rank 0 and rank 1) per call; a rank with no tokens must still join the collectives
SPLITS = [(23, 14), (9, 30), (0, 12), (5, 5), (0, 0)]


def global_stats(call: int, n: int) -> TokenStats:
    g = torch.Generator().manual_seed(100 + call)
    r = lambda: torch.rand(n, generator=g) ** 2 * 3  # noqa: E731
    return TokenStats(entropy=r(), reverse_kl=r(), forward_kl=r(), teacher_entropy=r())


def part(stats: TokenStats, start: int, stop: int) -> TokenStats:
    f = lambda t: t[start:stop].clone()  # noqa: E731
    return TokenStats(f(stats.entropy), f(stats.reverse_kl), f(stats.forward_kl), f(stats.teacher_entropy))


def run_calls(world: int, rank: int):
    """Every config over every split; returns [(global indices, weights, extra, diagnostics)]."""
    out = []
    for cfg in CONFIGS:
        selector = TipSelector(cfg)
        for call, sizes in enumerate(SPLITS):
            stats = global_stats(call, sum(sizes))
            start = sum(sizes[:rank]) if world > 1 else 0
            stop = start + sizes[rank] if world > 1 else sum(sizes)
            sel = selector(part(stats, start, stop))
            out.append((sel.indices + start, sel.weights, sel.extra_loss_weight, sel.diagnostics))
    return out


def _worker(rank: int, world: int, init_file: str, out_dir: str):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.save(run_calls(world, rank), os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _cat(parts):
    parts = [p for p in parts if p is not None]
    return torch.cat(parts) if parts else None


def test_two_ranks_select_like_one_process(tmp_path):
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    single = run_calls(1, 0)
    assert len(single) == len(ranks[0]) == len(CONFIGS) * len(SPLITS)
    for i, (idx, w, extra, diag) in enumerate(single):
        cfg, sizes = CONFIGS[i // len(SPLITS)], SPLITS[i % len(SPLITS)]
        where = f"{cfg.rule}@{cfg.ratio} call {i % len(SPLITS)} sizes {sizes}"
        got = [r[i] for r in ranks]
        assert torch.equal(torch.cat([g[0] for g in got]), idx), where  # ranks hold consecutive parts
        for r, g in enumerate(got):  # each rank only keeps its own tokens
            lo = sum(sizes[:r])
            assert ((g[0] >= lo) & (g[0] < lo + sizes[r])).all(), where
        if w is None:
            assert all(g[1] is None for g in got), where
        else:
            assert torch.equal(_cat([g[1] for g in got]), w), where
        if extra is not None:
            assert torch.equal(_cat([g[2] for g in got]), extra), where
        assert got[0][3] == got[1][3] == diag, where  # global diagnostics, identical on every rank
