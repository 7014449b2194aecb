"""The loss hook: which response tokens the grad pass trains on.

The trainer calls ``hooks.select_tokens(stats)`` through the module attribute, looked up at
call time, so replacing the attribute (a monkey-patch, e.g. ``tip_patches.apply``) changes the
selection without touching the trainer. The hook sees per-token statistics (never logits) and
returns a :class:`TokenSelection`.

The default keeps every token with weight 1; the step is then plain token-mean OPD (Eq. 1).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import torch


@dataclass
class TokenStats:
    """Per-token statistics of one micro-batch, flattened over response tokens.

    All tensors have shape ``(N,)``, N = number of response tokens (after the loss mask) of this
    rank's micro-batch, and carry no gradient.

    - ``entropy``: student entropy h_t (TIP Eq. 2)
    - ``reverse_kl``: KL(pi_S || pi_T), the OPD loss and TIP's divergence axis (Eq. 1, 3)
    - ``forward_kl``: KL(pi_T || pi_S), used by the Q3 score (TIP §7.3)
    - ``teacher_entropy``: H(pi_T), diagnostics and adaptive KL (TIP App. B.1)
    - ``sample_index``: which sequence of the micro-batch each token belongs to (int64)
    - ``position``: position of the token inside its response (int64)
    - ``teacher_topk_kl``: optional KL(q~_T || pi_S) over the teacher's renormalized top-k
      (adaptive-KL variant); ``None`` unless the hook asks for it (``needs_topk_kl``, below)
    - ``process_group``: the data-parallel group, for selectors that reduce statistics across
      ranks (``None`` = the default group when torch.distributed is initialized)
    - ``token_group``: optional int label per token (agentic rollouts: the token's role, e.g. tool
      call / free text / final answer), with ``group_names`` {label: name}; selectors may report
      their diagnostics per group
    """

    entropy: torch.Tensor
    reverse_kl: torch.Tensor
    forward_kl: torch.Tensor
    teacher_entropy: torch.Tensor
    sample_index: Optional[torch.Tensor] = None
    position: Optional[torch.Tensor] = None
    teacher_topk_kl: Optional[torch.Tensor] = None
    process_group: Optional[object] = None
    token_group: Optional[torch.Tensor] = None
    group_names: Optional[dict] = None

    @property
    def num_tokens(self) -> int:
        return int(self.entropy.numel())


class Ratio(float):
    """A diagnostic share ``num / den`` (0.0 when ``den`` is 0) that is also a plain float; the
    trainer aggregates it over micro-batches as ``sum(num) / sum(den)``."""

    def __new__(cls, num, den):
        num, den = float(num), float(den)
        self = super().__new__(cls, num / den if den else 0.0)
        self.num, self.den = num, den
        return self

    def __reduce__(self):
        return Ratio, (self.num, self.den)


def aggregate_diagnostics(parts) -> dict:
    """Combine the diagnostics of a step's micro-batches: ``parts`` is a list of
    ``(diagnostics, weight)`` (weight: the micro-batch's share of the step's response tokens)."""
    out, sums = {}, {}
    for diag, w in parts:
        for k, v in diag.items():
            if isinstance(v, Ratio):
                a, b = sums.get(k, (0.0, 0.0))
                sums[k] = (a + v.num, b + v.den)
            else:
                out[k] = out.get(k, 0.0) + float(v) * w
    out.update({k: (a / b if b else 0.0) for k, (a, b) in sums.items()})
    return out


@dataclass
class TokenSelection:
    """What the hook returns.

    - ``indices``: sorted int64 indices into the N tokens of :class:`TokenStats`, shape ``(K,)``
    - ``weights``: optional per-token loss weights for the kept tokens, shape ``(K,)``
      (importance-weighted sampling); ``None`` = weight 1
    - ``extra_loss_weight``: optional ``(K,)`` weights of an additional per-token loss term
      (the adaptive-KL term); ``None`` = no extra term
    - ``diagnostics``: small dict of floats logged with the step (quadrant fractions, thresholds).
      A step has several micro-batches: a plain float is averaged over them weighted by their
      response-token counts; a :class:`Ratio` (a share, e.g. "kept tokens of Q3 / tokens in Q3")
      is logged as the ratio of the summed numerators and denominators, so an empty micro-batch
      does not pull it towards 0.
    """

    indices: torch.Tensor
    weights: Optional[torch.Tensor] = None
    extra_loss_weight: Optional[torch.Tensor] = None
    diagnostics: dict = field(default_factory=dict)


def select_all(stats: TokenStats) -> TokenSelection:
    """Default hook: every response token, weight 1 (plain OPD)."""
    n = stats.num_tokens
    return TokenSelection(indices=torch.arange(n, device=stats.entropy.device))


select_all.selector_name = "all"  # type: ignore[attr-defined]
# Optional flags a hook may carry (read by opsd.distill.DistillModule):
# - keeps_all_tokens: it returns every token with weight 1 whatever the statistics, so with
#   loss.impl=fused the statistics come out of the loss pass (one pass over the vocabulary);
# - needs_topk_kl: it reads stats.teacher_topk_kl (a top-k over V per token, otherwise skipped).
select_all.keeps_all_tokens = True  # type: ignore[attr-defined]

# The live hook. Always call it as ``hooks.select_tokens(stats)`` so a patch takes effect.
select_tokens: Callable[[TokenStats], TokenSelection] = select_all


def active_selector_name() -> str:
    """Name of the installed selector, logged with every run."""
    return getattr(select_tokens, "selector_name", getattr(select_tokens, "__name__", "custom"))
