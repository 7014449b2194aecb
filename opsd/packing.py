"""Micro-batch formation: by a sequence count or a token budget; padded rows or packed rows.

``build_sequences`` returns this rank's step as one right-padded ``(B, L)`` batch. The trainer cuts it
into micro-batches here:

- **plan** (which sequences go together): :func:`plan_by_count` (``engine.micro_batch_size``
  sequences in batch order, the default) or :func:`plan_by_tokens` (``engine.micro_batch_tokens``:
  sequences sorted by length and grouped under a token budget, so that a micro-batch of short
  responses holds many of them and one near the length cap holds few);
- **collate** (how they are laid out): padded rows trimmed to the micro-batch's own longest
  sequence, or (``engine.packing``) all of them concatenated in one row without padding, with
  ``position_ids`` restarting at 0 for each sequence and no ``attention_mask``. Attention stays
  inside each sequence (:func:`prepare_attention`): flash-attention 2/3 runs varlen from the position
  ids; sdpa models are switched to :mod:`opsd.varlen_attention` (causal sdpa sequence by sequence,
  no mask: the cost of attention is ``sum L_i^2``, not ``(sum L_i)^2``); eager and flex attention
  get transformers' block-diagonal causal mask built from the position ids
  (``transformers.masking_utils.find_packed_sequence_indices``).

The loss does not depend on the plan (trainer docstring, "Loss aggregation"): every micro-batch is
weighted by its share of the step's response tokens. Under data parallelism every rank must run the
same number of micro-batches (each forward and backward holds collectives: ZeRO-3 gathers, the
kept-token count, global TIP selection), so the trainer pads the shorter plans with empty
micro-batches (one padding token, no loss position) up to the longest plan over the ranks.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch

from opsd.config import PACKING_ATTENTION, ConfigError


def plan_by_count(n: int, size: int) -> List[List[int]]:
    """``size`` consecutive sequences per micro-batch (the last one may hold fewer)."""
    return [list(range(s, min(n, s + size))) for s in range(0, n, size)]


def plan_by_tokens(lengths: Sequence[int], budget: int, packed: bool) -> Tuple[List[List[int]], List[int]]:
    """Group sequences of ``lengths`` (tokens, prompt + response) into micro-batches of at most
    ``budget`` tokens each; returns ``(plan, oversize)``.

    A micro-batch's cost is what its forward computes on: ``rows x longest`` when padded,
    ``sum of lengths`` when packed. Sequences are taken longest first, so that sequences of
    similar length share a micro-batch (little padding); packed micro-batches are filled
    first-fit (a short sequence goes into the first one with room). A sequence longer than the
    budget gets a micro-batch of its own and is listed in ``oversize`` (the caller logs it).
    Within a micro-batch sequences keep their batch order.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    plan: List[List[int]] = []
    used: List[int] = []  # packed: tokens of each micro-batch so far
    oversize = [i for i in order if lengths[i] > budget]
    for i in order:
        n = lengths[i]
        if n > budget:
            plan.append([i])
            used.append(budget)  # full: nothing else joins it
        elif packed:
            slot = next((k for k, u in enumerate(used) if u + n <= budget), None)
            if slot is None:
                plan.append([i])
                used.append(n)
            else:
                plan[slot].append(i)
                used[slot] += n
        elif plan and (len(plan[-1]) + 1) * lengths[plan[-1][0]] <= budget:
            plan[-1].append(i)  # longest first: the micro-batch's first sequence sets its width
        else:
            plan.append([i])
            used.append(n)
    return [sorted(rows) for rows in plan], oversize


def collate(seq: Dict, rows: Sequence[int], pad_id: int, packed: bool) -> Dict:
    """The micro-batch of ``seq``'s ``rows``: every ``(B, L)`` tensor of ``seq`` cut to them.

    Padded: ``(b, l)`` tensors, ``l`` = the longest of the rows, ``position_ids`` None.
    Packed: ``(1, T)`` tensors, ``T`` = the rows' total length, ``attention_mask`` None and
    ``position_ids (1, T)`` restarting at 0 per sequence. ``rows = []`` gives an empty
    micro-batch: one padding token without loss position. ``"rows"`` holds the row indices.
    """
    batch_shape = seq["input_ids"].shape
    keys = [k for k, v in seq.items() if isinstance(v, torch.Tensor) and v.shape == batch_shape]
    if not rows:
        out = {k: seq[k].new_zeros((1, 1)) for k in keys}
        out["input_ids"].fill_(pad_id)
        out["attention_mask"] = None if packed else out["attention_mask"].fill_(1)
        return {**out, "position_ids": out["input_ids"].new_zeros((1, 1)) if packed else None, "rows": []}
    idx = torch.as_tensor(list(rows), dtype=torch.long)
    lengths = seq["attention_mask"][idx].sum(dim=1)  # (b,) real tokens per row (right padding)
    if not packed:
        width = int(lengths.max())
        out = {k: seq[k][idx, :width] for k in keys}
        return {**out, "position_ids": None, "rows": list(rows)}
    keep = seq["attention_mask"][idx].bool()  # (b, L) the real tokens, row by row
    out = {k: seq[k][idx][keep].unsqueeze(0) for k in keys}  # (1, T)
    out["attention_mask"] = None
    out["position_ids"] = torch.cat([torch.arange(int(n)) for n in lengths]).unsqueeze(0)  # (1, T)
    return {**out, "rows": list(rows)}


def padding_tokens(mb: Dict) -> Tuple[int, int]:
    """``(padding, total)`` token slots of a collated micro-batch (an empty one counts 1 padding)."""
    total = mb["input_ids"].numel()
    real = total if mb["attention_mask"] is None else int(mb["attention_mask"].sum())
    return (total if not mb["rows"] else total - real), total


def row_slices(loss_mask: torch.Tensor) -> List[slice]:
    """Per row of a ``(B, L)`` loss mask, its slice of the flat row-major ``(N,)`` loss tokens."""
    ends = loss_mask.sum(dim=1).cumsum(0).tolist()
    starts = [0] + ends[:-1]
    return [slice(int(s), int(e)) for s, e in zip(starts, ends)]


def take_tokens(flat: Optional[torch.Tensor], slices: Sequence[slice], rows: Sequence[int]) -> Optional[torch.Tensor]:
    """The entries of a flat per-loss-token tensor ``(N,)`` for ``rows``, in row order."""
    if flat is None:
        return None
    if not rows:
        return flat[:0]
    return torch.cat([flat[slices[r]] for r in rows])


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
