"""TIP's four token quadrants (Table 1, Figure 2) and the per-step diagnostics logged with them.

Axes: normalized student entropy ``ĥ`` and normalized reverse KL ``δ̂`` (TIP Eq. 5).

    Q1: ĥ high, δ̂ high   (correct errors / consolidate fragile knowledge)
    Q2: ĥ high, δ̂ low    (stabilize underconfident predictions)
    Q3: ĥ low,  δ̂ high   (overconfident: break confident biases)
    Q4: ĥ low,  δ̂ low    (solved)

DECIDE (the paper does not state its thresholds): an axis is "high" when its normalized value is
**strictly above** the threshold. ``fixed`` (default) uses ``tip.entropy_threshold`` /
``tip.divergence_threshold`` (0.5 = the middle of each batch's range); ``median`` uses each
axis's per-batch median (the lower median for even N), which puts about half the tokens in
Q1+Q2 — close to the paper's reported 40–52 %. Quadrants only drive diagnostics and the
inspector; no selection rule depends on the thresholds.
"""
from __future__ import annotations

from typing import Dict, Tuple

import torch

from opsd.hooks import Ratio, TokenStats
from tip_patches.config import THRESHOLD_MODES  # noqa: F401 (torch-free home of the constant)


def thresholds(h_hat: torch.Tensor, d_hat: torch.Tensor, mode: str = "fixed",
               entropy_threshold: float = 0.5, divergence_threshold: float = 0.5) -> Tuple[float, float]:
    """The two thresholds on the normalized axes, per the module DECIDE."""
    if mode == "fixed":
        return float(entropy_threshold), float(divergence_threshold)
    if mode == "median":
        if h_hat.numel() == 0:
            return 0.0, 0.0
        return float(h_hat.median()), float(d_hat.median())
    raise ValueError(f"tip.quadrant_threshold={mode!r} is not one of {list(THRESHOLD_MODES)}")


@torch.no_grad()
def classify(h_hat: torch.Tensor, d_hat: torch.Tensor, entropy_threshold: float,
             divergence_threshold: float) -> torch.Tensor:
    """Quadrant 1..4 of each token, ``(N,)`` int64 (Table 1)."""
    high_h = (h_hat > entropy_threshold).long()
    high_d = (d_hat > divergence_threshold).long()
    return 4 - 2 * high_h - high_d  # (1,1)->1, (1,0)->2, (0,1)->3, (0,0)->4


def _mean_std(x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    if x.numel() == 0:
        z = x.new_zeros(())
        return z, z
    return x.mean(), x.std(unbiased=False)  # population std: defined for N = 1


@torch.no_grad()
def diagnostics(stats: TokenStats, quadrant: torch.Tensor, kept: torch.Tensor,
                entropy_threshold: float, divergence_threshold: float) -> Dict[str, float]:
    """Floats logged every step: ``tip/q{i}_frac`` (share of tokens in Qi), ``tip/q{i}_kept``
    (share of Qi's tokens the rule kept; 0 for an empty quadrant), ``tip/kept_frac``, student and
    teacher entropy mean/std (raw, nats) and the thresholds. ``kept`` is a ``(N,)`` bool mask.
    The shares are :class:`opsd.hooks.Ratio` (floats that carry their counts), so the trainer
    logs the exact share over a step's micro-batches."""
    n = quadrant.numel()
    counts = []
    for i in range(1, 5):
        in_q = quadrant == i
        counts += [in_q.sum(), (in_q & kept).sum()]
    counts.append(kept.sum())
    moments = []
    for x in (stats.entropy, stats.teacher_entropy):
        moments += list(_mean_std(x))
    flat = iter(torch.stack([torch.as_tensor(v, dtype=torch.float64, device=quadrant.device)
                             for v in counts + moments]).tolist())  # one device sync for all of them
    out: Dict[str, float] = {}
    for i in range(1, 5):
        in_q, kept_q = next(flat), next(flat)
        out[f"tip/q{i}_frac"] = Ratio(in_q, n)
        out[f"tip/q{i}_kept"] = Ratio(kept_q, in_q)
    out["tip/kept_frac"] = Ratio(next(flat), n)
    for name in ("student_entropy", "teacher_entropy"):
        out[f"tip/{name}_mean"], out[f"tip/{name}_std"] = next(flat), next(flat)
    out["tip/entropy_threshold"] = float(entropy_threshold)
    out["tip/divergence_threshold"] = float(divergence_threshold)
    out["tip/num_tokens"] = float(n)
    return out


@torch.no_grad()
def group_diagnostics(group: torch.Tensor, names: Dict[int, str], quadrant: torch.Tensor,
                      kept: torch.Tensor) -> Dict[str, float]:
    """Quadrant shares per token group (agentic rollouts: per token role), so a user sees where
    Q3 tokens sit: ``tip/{name}/q{i}_frac`` (share of the group's tokens in Qi),
    ``tip/{name}/kept_frac`` and ``tip/{name}/frac`` (the group's share of all tokens); all
    :class:`opsd.hooks.Ratio`. ``group``: ``(N,)`` int labels; labels without a name are skipped."""
    rows = []
    for label in names:
        in_g = group == int(label)
        rows.append(torch.stack([in_g.sum(), (in_g & kept).sum()] +
                                [(in_g & (quadrant == i)).sum() for i in range(1, 5)]))
    if not rows:
        return {}
    counts = torch.stack(rows).tolist()  # one device sync
    n = quadrant.numel()
    out: Dict[str, float] = {}
    for name, (tot, kept_n, *per_q) in zip(names.values(), counts):
        out[f"tip/{name}/frac"] = Ratio(tot, n)
        out[f"tip/{name}/kept_frac"] = Ratio(kept_n, tot)
        for i, c in enumerate(per_q, start=1):
            out[f"tip/{name}/q{i}_frac"] = Ratio(c, tot)
    return out
