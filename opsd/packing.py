"""Packed rows (``engine.packing``): attention that stays inside each sequence, and where each loss
position sits. Micro-batches themselves are formed in :mod:`opsd.batching`.

Attention stays inside each packed sequence (:func:`prepare_attention`): flash-attention 2/3 runs
varlen from the position ids; sdpa models are switched to :mod:`opsd.varlen_attention` (causal sdpa
sequence by sequence, no mask: the cost of attention is ``sum L_i^2``, not ``(sum L_i)^2``); eager
and flex attention get transformers' block-diagonal causal mask built from the position ids
(``transformers.masking_utils.find_packed_sequence_indices``).
"""
from __future__ import annotations

from typing import Optional

import torch

from opsd.config import PACKING_ATTENTION, ConfigError


def sample_and_position(loss_mask: torch.Tensor, position_ids: Optional[torch.Tensor]):
    """For each loss position of a micro-batch (row-major order): which of its sequences it
    belongs to, and its offset from that sequence's first loss position; both ``(N,)`` int64.

    Padded (``position_ids`` None): the sequence is the row. Packed: a sequence starts wherever
    the position id is 0, numbered across rows. A packed micro-batch therefore gives the same
    values as the padded one of the same sequences (what selectors that look at them need)."""
    mask = loss_mask.bool()
    rows, cols = mask.nonzero(as_tuple=True)
    if position_ids is None:
        seq = rows
    else:
        starts = (position_ids.to(mask.device) == 0).flatten().long().cumsum(0) - 1  # (B*L,)
        seq = starts.view(mask.shape)[rows, cols]
    flat = rows * mask.shape[1] + cols  # (N,) position in the flattened micro-batch
    n_seq = int(seq.max()) + 1 if seq.numel() else 0
    first = flat.new_full((n_seq,), mask.numel()).scatter_reduce(0, seq, flat, reduce="amin")
    return seq, flat - first[seq]


def prepare_attention(model, role: str) -> str:
    """Make a loaded model attend within packed sequences (``engine.packing``); returns the
    implementation it now runs. ``role`` names the model (student, teacher) in the error.

    The check is on the loaded model, whose implementation may have been chosen by transformers
    (``model.attn_implementation`` unset). sdpa is switched to
    :data:`opsd.varlen_attention.VARLEN_SDPA`, which runs packed rows sequence by sequence and
    everything else (padded batches, generation) as sdpa; the others honour packed position ids
    themselves."""
    from opsd import varlen_attention

    attn = getattr(model.config, "_attn_implementation", None)
    if attn == "sdpa":
        varlen_attention.use_varlen_sdpa(model)
        return varlen_attention.VARLEN_SDPA
    if attn not in PACKING_ATTENTION and attn != varlen_attention.VARLEN_SDPA:
        raise ConfigError(
            f"engine.packing=true: the {role} runs attention {attn!r}, which does not honour packed position "
            f"ids; set model.attn_implementation to one of {list(PACKING_ATTENTION)}, or engine.packing=false")
    return attn
