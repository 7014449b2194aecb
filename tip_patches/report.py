"""TIP quadrant shares of a model's tokens, for reports (the toy worlds' build_info, ``make demo``).

The per-token statistics are opsd's own (``opsd.losses``: student entropy, reverse KL to the
teacher), one :class:`opsd.hooks.TokenStats` per batch of rollouts -- the unit of TIP's min-max
normalization (Eq. 5), like a trainer batch. The reading is the selectors': :func:`scores.minmax`
and :func:`quadrants.classify` (Table 1; "high" is strictly above the threshold), so a report
counts exactly the tokens the trainer's ``tip/q*_frac`` diagnostics would.
"""
from __future__ import annotations

from typing import Dict, List, Sequence

import torch

from opsd.hooks import TokenStats
from tip_patches.quadrants import classify
from tip_patches.scores import minmax

QUADRANTS = ("Q1", "Q2", "Q3", "Q4")


def quadrant_shares(batches: Sequence[TokenStats], entropy_threshold: float = 0.5,
                    divergence_threshold: float = 0.5) -> Dict[str, object]:
    """Shares of Q1..Q4 over all tokens of ``batches``, their count and mean reverse KL:
    ``{"Q1", "Q2", "Q3", "Q4", "tokens", "mean_reverse_kl"}``. Where the statistics carry token
    groups (``token_group`` / ``group_names``: agentic token roles), one such dict for ``"all"``
    and one per group that has tokens."""
    counts: Dict[str, torch.Tensor] = {}  # name -> (4,) tokens per quadrant
    kl: Dict[str, float] = {}
    for stats in batches:
        quad = classify(minmax(stats.entropy), minmax(stats.reverse_kl), entropy_threshold,
                        divergence_threshold)  # (N,) in 1..4
        groups = {"all": torch.ones_like(quad, dtype=torch.bool)}
        for label, name in (stats.group_names or {}).items():
            groups[name] = stats.token_group == int(label)
        for name, sel in groups.items():
            per_quadrant = torch.bincount(quad[sel] - 1, minlength=4)  # (4,)
            counts[name] = counts.get(name, torch.zeros(4, dtype=torch.long)) + per_quadrant
            kl[name] = kl.get(name, 0.0) + stats.reverse_kl[sel].double().sum().item()
    out = {name: _shares(c, kl[name]) for name, c in counts.items() if c.sum() > 0}
    grouped = any(stats.group_names for stats in batches)
    return out if grouped else out.get("all", _shares(torch.zeros(4, dtype=torch.long), 0.0))


def _shares(counts: torch.Tensor, kl_sum: float) -> Dict[str, object]:
    n = int(counts.sum())
    shares = {q: int(c) / max(1, n) for q, c in zip(QUADRANTS, counts.tolist())}
    return {**shares, "tokens": n, "mean_reverse_kl": kl_sum / max(1, n)}


def overall(quadrants: Dict[str, object]) -> Dict[str, object]:
    """The all-token shares of a :func:`quadrant_shares` result, grouped or not."""
    return quadrants.get("all", quadrants)


def shares_text(q: Dict[str, object], fmt: str = ".1%") -> str:
    """``Q1 0.6%  Q2 2.9%  Q3 (confident mistakes) 0.8%  Q4 95.7%``."""
    return "  ".join(f"{k}{' (confident mistakes)' if k == 'Q3' else ''} {q[k]:{fmt}}" for k in QUADRANTS)


def quadrant_lines(quadrants: Dict[str, object], entropy_threshold: float, divergence_threshold: float) -> List[str]:
    """A build summary's lines: the thresholds, then the shares of all tokens and of each group."""
    groups = quadrants if "all" in quadrants else {"all": quadrants}
    head = (f"TIP quadrants of student T=1 tokens (normalized entropy > {entropy_threshold} / "
            f"reverse KL > {divergence_threshold}):")
    return [head] + [f"  {name} ({q['tokens']} tokens): {shares_text(q, '.3f')}" for name, q in groups.items()]
