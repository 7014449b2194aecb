"""The frozen teacher: forward on the student's rollouts, cached as last hidden states.

Only the teacher's last hidden state ``(N, d_T)`` at response positions is kept per
micro-batch (small), plus its output-embedding matrix; full-vocabulary logits are recomputed in
chunks when the losses need them. With ``teacher_placement=offload`` the teacher body moves to
CPU after scoring all micro-batches of a step (two-phase, as upstream) and comes back before the
next step's scoring; the head matrix stays on the device.
"""
from __future__ import annotations

import torch

from opsd.losses import HiddenLogits, TeacherTopK


class Teacher:
    def __init__(self, model, device: torch.device, placement: str = "resident", topk=None,
                 chunk_size: int = 512):
        self.model = model.eval().requires_grad_(False)
        self.device = device
        self.placement = placement
        self.topk = topk
        self.chunk_size = chunk_size
        head = model.get_output_embeddings()
        self.head_weight = head.weight.detach().to(device)  # (V_T, d_T), kept on the device
        self.head_bias = None if getattr(head, "bias", None) is None else head.bias.detach().to(device)
        self.width = self.head_weight.shape[0]
        self.model.to(device if placement == "resident" else "cpu")

    def load(self) -> None:
        """Bring the teacher body to the device for the scoring phase."""
        if self.placement == "offload":
            self.model.to(self.device)

    def offload(self) -> None:
        """Free device memory for the student's training phase."""
        if self.placement == "offload" and self.device.type != "cpu":
            self.model.to("cpu")
            torch.cuda.empty_cache()

    @torch.no_grad()
    def score(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, loss_mask: torch.Tensor,
              vocab_size: int):
        """Teacher source for the loss positions of one micro-batch: hidden states, or top-k."""
        out = self.model.base_model(input_ids=input_ids.to(self.device),
                                    attention_mask=attention_mask.to(self.device))
        hidden = out.last_hidden_state[loss_mask.to(self.device).bool()]  # (N, d_T)
        src = HiddenLogits(hidden, self.head_weight, vocab_size, self.head_bias)
        if self.topk:
            return TeacherTopK.from_logits(src, self.topk, self.chunk_size)
        return src
