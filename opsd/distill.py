"""One micro-batch of the OPD update, as an ``nn.Module`` the DeepSpeed engine wraps.

``forward`` runs the data path of DESIGN.md after the teacher: student forward to the last
hidden state (with grad) -> statistics pass (no grad, chunked) -> ``hooks.select_tokens`` ->
grad-carrying logits and divergences for the kept rows only (``loss.impl``). When the hook keeps
every token (``keeps_all_tokens``, the default hook) and ``loss.impl=fused``, the statistics come
out of the loss pass itself: one pass over the vocabulary instead of two.

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
from opsd.losses import HiddenLogits, loss_and_stats, selected_loss_sum, stats_from_sources
from opsd.packing import sample_and_position


@dataclass
class MicroBatchOutput:
    loss_sum: torch.Tensor  # sum over this rank's kept tokens of weight * divergence, with grad
    stats: TokenStats
    selection: TokenSelection
    kept_global: int  # kept tokens of this micro-batch over all ranks


class DistillModule(nn.Module):
    def __init__(self, model: nn.Module, vocab_size: int, loss_type: str = "reverse_kl", jsd_beta: float = 0.5,
                 chunk_size: int = 512, impl: str = "fused", zero_stage: int = 0):
        super().__init__()
        self.model = model
        self.vocab_size = vocab_size
        self.loss_type, self.jsd_beta = loss_type, jsd_beta
        self.chunk_size, self.impl = chunk_size, impl  # impl: loss.impl (fused | autograd | recompute)
        head = model.get_output_embeddings()
        if getattr(head, "bias", None) is not None:
            raise NotImplementedError("an LM head with a bias is not supported by the chunked losses")
        if zero_stage == 3:
            import deepspeed

            deepspeed.zero.register_external_parameter(self, head.weight)

    group_names: Optional[dict] = None  # names of the token_groups labels (set by the trainer)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, loss_mask: torch.Tensor,
                teacher, token_weights: Optional[torch.Tensor] = None, token_groups: Optional[torch.Tensor] = None,
                position_ids: Optional[torch.Tensor] = None):
        """``input_ids, attention_mask, loss_mask``: ``(B, L)``; ``loss_mask`` marks logits
        positions that predict a response token. ``teacher``: a losses teacher source for those
        positions (in row-major order). ``token_weights``: optional ``(N,)`` per-token weights
        (reward weighting). ``token_groups``: optional ``(B, L)`` int labels on the same positions
        as ``loss_mask`` (agentic: each token's role), passed to the hook as ``stats.token_group``.
        ``position_ids``: packed micro-batches (:mod:`opsd.batching`): ``(1, T)`` restarting at 0 per
        sequence, with ``attention_mask`` None. Returns ``(loss_sum, stats, selection, kept_global)``
        as described by :class:`MicroBatchOutput`."""
        # use_cache=False: transformers would otherwise build a KV cache (config.use_cache), and with a
        # cache it ignores packed position ids when masking (attention would cross packed sequences)
        out = self.model.base_model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                                    use_cache=False)
        mask = loss_mask.bool()
        hidden = out.last_hidden_state[mask]  # (N, d), with grad
        weight = self.model.get_output_embeddings().weight  # (V_pad, d)

        hook = hooks.select_tokens  # looked up at call time: patches take effect
        topk_kl = bool(getattr(hook, "needs_topk_kl", False))  # a top-k over V per token: only when asked
        one_pass = self.impl == "fused" and bool(getattr(hook, "keeps_all_tokens", False))
        if one_pass:  # every token, weight 1: the statistics come out of the loss pass (one pass over V)
            tw = token_weights.to(hidden.device) if token_weights is not None else None
            loss_sum, stats = loss_and_stats(hidden, weight, teacher, self.vocab_size, self.loss_type, self.jsd_beta,
                                             tw, self.chunk_size, topk_kl)
        else:
            stats = stats_from_sources(HiddenLogits(hidden.detach(), weight.detach(), self.vocab_size),
                                       teacher, self.chunk_size, topk_kl)
        stats.sample_index, stats.position = sample_and_position(mask, position_ids)  # packed or not: same values
        if token_groups is not None:
            stats.token_group, stats.group_names = token_groups[mask], self.group_names
        selection = hook(stats)
        if one_pass:
            _check_keeps_all(selection, len(hidden))
        else:
            w = selection.weights
            if token_weights is not None:
                tw = token_weights[selection.indices].to(hidden.device)
                w = tw if w is None else w * tw
            loss_sum = selected_loss_sum(hidden, weight, teacher, selection.indices, self.vocab_size,
                                         self.loss_type, self.jsd_beta, w, selection.extra_loss_weight,
                                         self.chunk_size, self.impl)
        # Keep the graph connected when nothing is kept, so every rank's backward runs the same
        # collectives (ZeRO) and the step stays finite: a zero, not a NaN.
        loss_sum = loss_sum + hidden.sum() * 0.0 + weight.sum() * 0.0
        # A plain tuple (not a dataclass): ZeRO-3 walks module outputs to hook the backward pass.
        return loss_sum, stats, selection, _global_count(len(selection.indices), hidden.device)


def _check_keeps_all(selection: TokenSelection, n: int) -> None:
    """A hook that declares ``keeps_all_tokens`` had its loss computed before it ran: hold it to that."""
    idx, w = selection.indices, selection.weights
    same = idx.numel() == n and bool((idx.cpu() == torch.arange(n)).all())
    if not same or selection.extra_loss_weight is not None or (w is not None and not bool((w == 1).all())):
        raise RuntimeError(f"the loss hook {hooks.active_selector_name()!r} sets keeps_all_tokens but did not "
                           f"return every token with weight 1 (kept {idx.numel()} of {n}); unset the attribute "
                           f"or return hooks.select_all(stats)")


def _global_count(n: int, device) -> int:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        t = torch.tensor([n], dtype=torch.long, device=device)
        dist.all_reduce(t)
        return int(t.item())
    return n
