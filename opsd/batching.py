"""One step's batching: rollouts -> padded sequences -> micro-batches, with the token weights cut
alongside, and the step's named totals.

The one entry point is :func:`step_batches`:

1. **sequences** (:func:`build_sequences`): prompts and responses joined into right-padded
   ``(B, L)`` tensors with the shifted loss mask (below); responses of single-turn rollouts are cut
   after their first EOS (:func:`clean_response`), episodes are used as sampled, trained where
   ``response_mask`` is 1;
2. **plan** (which sequences go together): :func:`plan_by_count` (``engine.micro_batch_size``
   sequences in batch order, the default) or :func:`plan_by_tokens` (``engine.micro_batch_tokens``:
   sequences sorted by length and grouped under a token budget, so that a micro-batch of short
   responses holds many of them and one near the length cap holds few). Under data parallelism every
   rank runs the same number of micro-batches (each forward and backward holds collectives: ZeRO-3
   gathers, the kept-token count, global TIP selection): shorter plans are filled up with empty
   micro-batches (one padding token, no loss position);
3. **collate** (how they are laid out, :func:`collate`): padded rows trimmed to the micro-batch's
   own longest sequence, or (``engine.packing``) all of them concatenated in one row without
   padding, ``position_ids`` restarting at 0 per sequence and no ``attention_mask``
   (:mod:`opsd.packing` makes attention stay inside each sequence);
4. **token counts and weights**: the response tokens of every micro-batch index over all ranks
   (:meth:`StepBatches.count`: each micro-batch is weighted by its share of the step's tokens, so
   the loss does not depend on the plan), and optional per-token weights (reward-weighted
   distillation) cut to each micro-batch's rows (``batch["token_weights"]``).

:class:`StepTotals` holds what the update sums over micro-batches and ranks, by name.

Loss-mask convention (what the losses rely on)
----------------------------------------------
The mask lives on LOGITS positions, already shifted: logits at position p predict token p+1, so
``loss_mask[b, p]`` is True iff token ``p + 1`` of sample b is a trained token (a response token,
or an assistant token including its end-of-turn token)::

    logits = model(input_ids).logits             # (B, L, V); row p predicts input_ids[:, p + 1]
    per_token = divergence(logits, target_ids)   # (B, L); target_ids[:, p] == input_ids[:, p + 1]
    loss = per_token[loss_mask].mean()           # token-mean over response tokens

``loss_mask[:, -1]`` is always False (nothing follows the last token) and padding is never trained.
"""
from __future__ import annotations

from dataclasses import astuple, dataclass, fields
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

from opsd.engine import all_reduce_host, max_over_ranks


# --------------------------------------------------------------------------------------------
# 1. Sequences and the loss mask
# --------------------------------------------------------------------------------------------


def clean_response(response_ids: Sequence[int], pad_id: int, eos_id: Optional[int] = None) -> List[int]:
    """Drop what follows the first EOS (kept: the student must learn to stop) and trailing padding.

    When ``pad_id == eos_id`` only the cut after the first EOS applies, so a lone EOS stays a
    one-token response.
    """
    ids = [int(t) for t in response_ids]
    if eos_id is not None and eos_id in ids:
        ids = ids[:ids.index(eos_id) + 1]
    if pad_id != eos_id:
        while ids and ids[-1] == pad_id:
            ids.pop()
    return ids


def build_sequences(prompt_ids_list: Sequence[Sequence[int]], response_ids_list: Sequence[Sequence[int]],
                    pad_id: int, eos_id: Optional[int] = None,
                    response_masks: Optional[Sequence[Sequence[int]]] = None,
                    token_groups: Optional[Sequence[Sequence[int]]] = None) -> Dict[str, Any]:
    """Right-padded prompt+response batch with the shifted loss mask (module docstring).

    Returns ``input_ids``, ``target_ids`` (long), ``attention_mask`` (long), ``loss_mask`` (bool),
    all ``(B, L)``; ``prompt_lengths`` and ``response_lengths`` ``(B,)`` (response after
    :func:`clean_response`); ``num_empty_responses`` (int): samples whose response is empty or all
    padding, or (agentic) has no sampled token; they have no loss position and the trainer logs
    them as skipped.

    ``response_masks`` (agentic episodes): per response token 1 = sampled by the student (trained),
    0 = inserted (tool responses, template glue; context only). The responses are then used as
    given -- an episode holds one end-of-turn token per turn, so nothing is cut at the first EOS.
    ``token_groups`` (optional, same shapes): an int label per response token (e.g. its role),
    returned as ``token_groups (B, L)`` on the same shifted positions as ``loss_mask``.
    """
    if len(prompt_ids_list) != len(response_ids_list):
        raise ValueError(f"{len(prompt_ids_list)} prompts but {len(response_ids_list)} responses")
    ids, trained, groups, prompt_lens, response_lens = [], [], [], [], []
    for b, (prompt, response) in enumerate(zip(prompt_ids_list, response_ids_list)):
        if response_masks is None:
            response = clean_response(response, pad_id, eos_id)
            flags = [1] * len(response)
        else:
            response, flags = [int(t) for t in response], [int(f) for f in response_masks[b]]
            if len(flags) != len(response):
                raise ValueError(f"sample {b}: response mask length {len(flags)} != response length {len(response)}")
        ids.append([int(t) for t in prompt] + response)
        trained.append([0] * len(prompt) + flags)
        if token_groups is not None:
            groups.append(shift_token_mask([0] * len(prompt) + [int(g) for g in token_groups[b]]))
        prompt_lens.append(len(prompt))
        response_lens.append(len(response) if response_masks is None else sum(flags))
    batch = pad_batch(ids, [shift_token_mask(t) for t in trained], pad_id)
    if token_groups is not None:
        batch["token_groups"] = torch.zeros_like(batch["input_ids"])  # (B, L)
        for b, g in enumerate(groups):
            batch["token_groups"][b, :len(g)] = torch.tensor(g, dtype=torch.long)
    batch["prompt_lengths"] = torch.tensor(prompt_lens, dtype=torch.long)  # (B,)
    batch["response_lengths"] = torch.tensor(response_lens, dtype=torch.long)  # (B,)
    batch["num_empty_responses"] = sum(n == 0 for n in response_lens)
    return batch


def shift_token_mask(trained_tokens: Sequence[int]) -> List[int]:
    """Per-token "is trained" flags -> loss mask on logits positions: ``mask[p] = trained[p + 1]``."""
    return [int(t) for t in trained_tokens[1:]] + [0] if len(trained_tokens) else []


def pad_batch(ids_list: Sequence[Sequence[int]], loss_mask_list: Sequence[Sequence[int]],
              pad_id: int) -> Dict[str, torch.Tensor]:
    """Right-pad sequences and their (already shifted) loss masks into ``(B, L)`` tensors.

    Use it to batch :func:`build_multiturn_sample` outputs; padding gets attention 0 and no loss.
    """
    width = max([len(ids) for ids in ids_list] + [1])
    input_ids = torch.full((len(ids_list), width), pad_id, dtype=torch.long)  # (B, L)
    attention_mask = torch.zeros((len(ids_list), width), dtype=torch.long)  # (B, L)
    loss_mask = torch.zeros((len(ids_list), width), dtype=torch.bool)  # (B, L)
    for b, (ids, mask) in enumerate(zip(ids_list, loss_mask_list)):
        if len(mask) != len(ids):
            raise ValueError(f"sample {b}: loss mask length {len(mask)} != sequence length {len(ids)}")
        input_ids[b, :len(ids)] = torch.tensor(ids, dtype=torch.long)
        attention_mask[b, :len(ids)] = 1
        loss_mask[b, :len(ids)] = torch.tensor(mask, dtype=torch.bool)
    target_ids = torch.full_like(input_ids, pad_id)  # (B, L); target_ids[:, p] = input_ids[:, p + 1]
    target_ids[:, :-1] = input_ids[:, 1:]
    return {"input_ids": input_ids, "target_ids": target_ids, "attention_mask": attention_mask,
            "loss_mask": loss_mask}

# --------------------------------------------------------------------------------------------
# 2-3. Micro-batches: plan and collate
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# The entry point and the step's totals
# --------------------------------------------------------------------------------------------


@dataclass
class StepBatches:
    """This rank's micro-batches of one step (the same number on every rank) and the token counts."""

    batches: List[Dict[str, Any]]
    loss_mask: torch.Tensor  # (B, L) of the step's sequences, before any micro-batching
    num_empty_responses: int
    oversize: List[int]  # sequences longer than engine.micro_batch_tokens (a micro-batch each)
    counts: Optional[torch.Tensor] = None  # (n_micro,) response tokens per micro-batch index, all ranks
    tokens: float = 0.0  # all ranks' response tokens of the step

    def count(self) -> float:
        """All-reduce the response tokens per micro-batch index (again after a teacher left rows out)."""
        self.counts = all_reduce_host(torch.tensor([float(b["loss_mask"].sum()) for b in self.batches],
                                                   dtype=torch.float64))
        self.tokens = float(self.counts.sum())
        return self.tokens

    def share(self, i: int) -> float:
        """Micro-batch ``i``'s share of the step's response tokens (over all ranks)."""
        return float(self.counts[i]) / self.tokens


def step_batches(rollouts, pad_id: int, eos_id: Optional[int], engine,
                 token_weights: Optional[Callable[[torch.Tensor, float], Optional[torch.Tensor]]] = None
                 ) -> StepBatches:
    """Rollouts -> this rank's micro-batches (module docstring). ``engine``: the
    :class:`opsd.config.EngineConfig` (micro_batch_size / micro_batch_tokens, packing).
    ``token_weights(loss_mask (B, L), step_tokens) -> (N,) or None`` gives per-token loss weights,
    which are cut to each micro-batch's rows as ``batch["token_weights"]``."""
    seq = build_sequences(rollouts.prompt_ids, rollouts.response_ids, pad_id, eos_id,
                          response_masks=rollouts.response_mask, token_groups=rollouts.token_roles)
    seq["loss_mask"] = seq["loss_mask"].long()
    lengths = seq["attention_mask"].sum(dim=1).tolist()  # (B,) prompt + response tokens
    oversize: List[int] = []
    if engine.micro_batch_tokens:
        plan, oversize = plan_by_tokens(lengths, engine.micro_batch_tokens, engine.packing)
    else:
        plan = plan_by_count(len(lengths), engine.micro_batch_size)
    plan += [[] for _ in range(max_over_ranks(len(plan)) - len(plan))]
    out = StepBatches([collate(seq, rows, pad_id, engine.packing) for rows in plan], seq["loss_mask"],
                      seq["num_empty_responses"], oversize)
    out.count()
    weights = token_weights(seq["loss_mask"], out.tokens) if token_weights is not None and out.tokens else None
    slices = row_slices(seq["loss_mask"])
    for b in out.batches:
        b["token_weights"] = take_tokens(weights, slices, b["rows"])
    return out


@dataclass
class StepTotals:
    """What the update sums over its micro-batches, then over the ranks (:meth:`all_reduced`)."""

    loss: float = 0.0  # the step's loss (each micro-batch's term already scaled by its share)
    reverse_kl: float = 0.0  # sums over response tokens
    entropy: float = 0.0
    teacher_entropy: float = 0.0
    kept: float = 0.0  # tokens the loss hook kept
    padding: float = 0.0  # token slots: padding, and all of them
    slots: float = 0.0
    empty_micro_batches: float = 0.0
    loss_fallback_rows: float = 0.0  # rows the closed-form loss redid by autograd (opsd.losses), loss pass
    stats_fallback_rows: float = 0.0  # ... and statistics pass (TIP's two-pass steps)

    def add(self, **parts: float) -> None:
        for k, v in parts.items():
            setattr(self, k, getattr(self, k) + v)

    def all_reduced(self) -> "StepTotals":
        t = all_reduce_host(torch.tensor(astuple(self), dtype=torch.float64))
        return StepTotals(**dict(zip([f.name for f in fields(self)], t.tolist())))
