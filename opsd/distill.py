"""One micro-batch of the OPD update, as an ``nn.Module`` the DeepSpeed engine wraps.

``forward`` runs the data path of DESIGN.md after the teacher: student forward to the last
hidden state (with grad) -> statistics pass (no grad, chunked) -> ``hooks.select_tokens`` ->
grad-carrying logits and divergences for the kept rows only.

It is a module (not a function) so that, under ZeRO-3, the output-embedding matrix used outside
the LM head's own ``forward`` is registered as an external parameter of this module and is
gathered for, and its gradient partitioned after, this forward.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as dist
from torch import nn

from opsd import hooks
from opsd.hooks import TokenSelection, TokenStats
from opsd.losses import HiddenLogits, selected_loss_sum, stats_from_sources


@dataclass
class MicroBatchOutput:
    loss_sum: torch.Tensor  # sum over this rank's kept tokens of weight * divergence, with grad
    stats: TokenStats
    selection: TokenSelection
    kept_global: int  # kept tokens of this micro-batch over all ranks


class DistillModule(nn.Module):
    def __init__(self, model: nn.Module, vocab_size: int, loss_type: str = "reverse_kl", jsd_beta: float = 0.5,
                 chunk_size: int = 512, recompute_chunks: bool = False, zero_stage: int = 0):
        super().__init__()
        self.model = model
        self.vocab_size = vocab_size
        self.loss_type, self.jsd_beta = loss_type, jsd_beta
        self.chunk_size, self.recompute_chunks = chunk_size, recompute_chunks
        head = model.get_output_embeddings()
        if getattr(head, "bias", None) is not None:
            raise NotImplementedError("an LM head with a bias is not supported by the chunked losses")
        if zero_stage == 3:
            import deepspeed

            deepspeed.zero.register_external_parameter(self, head.weight)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, loss_mask: torch.Tensor,
                teacher, token_weights: Optional[torch.Tensor] = None):
        """``input_ids, attention_mask, loss_mask``: ``(B, L)``; ``loss_mask`` marks logits
        positions that predict a response token. ``teacher``: a losses teacher source for those
        positions (in row-major order). ``token_weights``: optional ``(N,)`` per-token weights
        (reward weighting). Returns ``(loss_sum, stats, selection, kept_global)`` as described by
        :class:`MicroBatchOutput`."""
        out = self.model.base_model(input_ids=input_ids, attention_mask=attention_mask)
        mask = loss_mask.bool()
        hidden = out.last_hidden_state[mask]  # (N, d), with grad
        weight = self.model.get_output_embeddings().weight  # (V_pad, d)

        stats = stats_from_sources(HiddenLogits(hidden.detach(), weight.detach(), self.vocab_size),
                                   teacher, self.chunk_size)
        rows, cols = mask.nonzero(as_tuple=True)
        stats.sample_index, stats.position = rows, cols - cols.new_tensor(_first_loss_col(mask))[rows]
        selection = hooks.select_tokens(stats)  # looked up at call time: patches take effect

        w = selection.weights
        if token_weights is not None:
            tw = token_weights[selection.indices].to(hidden.device)
            w = tw if w is None else w * tw
        loss_sum = selected_loss_sum(hidden, weight, teacher, selection.indices, self.vocab_size,
                                     self.loss_type, self.jsd_beta, w, selection.extra_loss_weight,
                                     self.chunk_size, self.recompute_chunks)
        # Keep the graph connected when nothing is kept, so every rank's backward runs the same
        # collectives (ZeRO) and the step stays finite: a zero, not a NaN.
        loss_sum = loss_sum + hidden.sum() * 0.0 + weight.sum() * 0.0
        # A plain tuple (not a dataclass): ZeRO-3 walks module outputs to hook the backward pass.
        return loss_sum, stats, selection, _global_count(len(selection.indices), hidden.device)


def _first_loss_col(mask: torch.Tensor) -> list:
    """Column of the first loss position of each row (0 for rows without any)."""
    has = mask.any(dim=1)
    first = mask.float().argmax(dim=1)
    return torch.where(has, first, torch.zeros_like(first)).tolist()


def _global_count(n: int, device) -> int:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        t = torch.tensor([n], dtype=torch.long, device=device)
        dist.all_reduce(t)
        return int(t.item())
    return n
