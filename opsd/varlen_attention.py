"""Packed rows on sdpa without a dense mask: causal attention run sequence by sequence.

A packed micro-batch (:mod:`opsd.batching`) is one row of several sequences whose position ids
restart at 0. transformers' own sdpa path keeps attention inside each of them with a block-diagonal
causal mask over the whole row: a ``(T, T)`` mask and a ``(T, T)`` score matrix per head, so a row of
sequences of lengths ``L_i`` costs ``(sum L_i)^2`` where the sequences need ``sum L_i^2``, and on CPU
the packed step was slower than the padded one. flash-attention varlen (GPU) runs each sequence on
its own from the sequence boundaries; this module does the same with torch's sdpa.

:data:`VARLEN_SDPA` names an attention implementation registered with transformers (its attention
and its mask function, ``AttentionInterface`` / ``AttentionMaskInterface``):

- the mask function builds no mask for a whole, unpadded, cache-free forward (``attention_mask``
  None, queries = keys, no offset, no window, no mask overlay): causal attention inside each run of
  consecutive position ids is then all there is to it, and the attention function does exactly that;
- the attention function, given no mask, cuts the row where the position ids do not go up by one
  (transformers' own rule, ``masking_utils.find_packed_sequence_indices``) and runs torch's causal
  sdpa per sequence (scaling, dropout and grouped-query heads as transformers' sdpa passes them),
  concatenating the outputs. A row that is one sequence is one causal sdpa call, as with plain sdpa.

Every other call (a padding mask, generation with a KV cache, a sliding window, a bidirectional or
overlaid mask) goes to transformers' sdpa mask and attention unchanged, so the student keeps
generating with it. :func:`use_varlen_sdpa` switches a loaded model to it; ``engine.packing`` does
that for sdpa models (:func:`opsd.packing.prepare_attention`).
"""
from __future__ import annotations

from typing import List

import torch

VARLEN_SDPA = "opsd_varlen_sdpa"


def segment_lengths(position_ids: torch.Tensor) -> List[int]:
    """Lengths of the runs of consecutive position ids of one row ``(T,)``: a new sequence starts
    wherever the id is not the previous one + 1. ``[0, 1, 2, 0, 1, 0]`` -> ``[3, 2, 1]``."""
    t = position_ids.numel()
    starts = (torch.diff(position_ids) != 1).nonzero().flatten() + 1  # (S-1,) the later sequences' starts
    bounds = [0, *starts.tolist(), t]
    return [b - a for a, b in zip(bounds[:-1], bounds[1:])]


def varlen_sdpa_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None,
                          is_causal=None, **kwargs):
    """An ``AttentionInterface`` function: ``query (B, H, T, D)``, ``key, value (B, H_kv, T, D)`` ->
    ``(B, T, H, D), None``. Without a mask (see the module docstring), causal sdpa per sequence of
    ``kwargs["position_ids"] (B, T)``; otherwise transformers' sdpa as is."""
    from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward, use_gqa_in_sdpa

    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    q_len = query.shape[2]
    if attention_mask is not None or not causal or q_len != key.shape[2] or q_len == 1:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    position_ids = kwargs.get("position_ids")
    if position_ids is None or kwargs.get("position_bias") is not None:  # cannot split: refuse, never cross
        raise RuntimeError(f"{VARLEN_SDPA}: {type(module).__name__} passes no position_ids (or a position bias) to "
                           "its attention function, which packed rows need; set model.attn_implementation=eager "
                           "or engine.packing=false")
    sdpa_kwargs = {}
    groups = getattr(module, "num_key_value_groups", 1)
    if groups > 1:  # grouped-query attention, as transformers' sdpa does it on this device
        if use_gqa_in_sdpa(None, key, value):
            sdpa_kwargs["enable_gqa"] = True
        else:
            key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    position_ids = position_ids.expand(query.shape[0], -1)  # (B, T); sometimes passed as (1, T)
    rows = []
    for b in range(query.shape[0]):
        lengths = segment_lengths(position_ids[b])
        # torch.split: views, and one gradient buffer per tensor in the backward (cheaper than slicing)
        parts = [torch.nn.functional.scaled_dot_product_attention(q, k, v, dropout_p=dropout, scale=scaling,
                                                                   is_causal=q.shape[2] > 1, **sdpa_kwargs)
                 for q, k, v in zip(*(t[b:b + 1].split(lengths, dim=2) for t in (query, key, value)))]
        rows.append(parts[0] if len(parts) == 1 else torch.cat(parts, dim=2))  # (1, H, T, D)
    out = rows[0] if len(rows) == 1 else torch.cat(rows, dim=0)  # (B, H, T, D)
    return out.transpose(1, 2).contiguous(), None  # (B, T, H, D)


def varlen_sdpa_mask(batch_size: int, q_length: int, kv_length: int, q_offset=0, kv_offset=0, mask_function=None,
                     attention_mask=None, local_size=None, allow_is_causal_skip: bool = True, use_vmap: bool = False,
                     **kwargs):
    """An ``AttentionMaskInterface`` function: None (no mask) for a whole, unpadded, cache-free causal
    forward, whose mask is causal within the runs of position ids; transformers' sdpa mask otherwise.
    ``use_vmap`` marks an or/and mask overlay, ``allow_is_bidirectional_skip`` a bidirectional mask."""
    from transformers.masking_utils import causal_mask_function, sdpa_mask

    whole = (attention_mask is None and local_size is None and not use_vmap and q_length == kv_length
             and _is_zero(q_offset) and _is_zero(kv_offset) and "allow_is_bidirectional_skip" not in kwargs)
    if whole:
        return None
    return sdpa_mask(batch_size, q_length, kv_length, q_offset, kv_offset, mask_function or causal_mask_function,
                     attention_mask, local_size=local_size, allow_is_causal_skip=allow_is_causal_skip,
                     use_vmap=use_vmap, **kwargs)


def _is_zero(offset) -> bool:
    return int(offset) == 0


def register() -> None:
    """Make :data:`VARLEN_SDPA` known to transformers (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(VARLEN_SDPA, varlen_sdpa_attention)
    AttentionMaskInterface.register(VARLEN_SDPA, varlen_sdpa_mask)


def use_varlen_sdpa(model) -> None:
    """Switch a loaded sdpa model (and its sub-models) to :data:`VARLEN_SDPA`."""
    register()
    model.set_attn_implementation(VARLEN_SDPA)
