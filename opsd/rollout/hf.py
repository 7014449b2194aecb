"""Hugging Face ``generate`` backend: the CPU rollout engine and the reference for tests.

It samples from the trainer's own student module, so weights never need syncing.
"""
from __future__ import annotations

from typing import List, Sequence

import torch

from opsd.engine import max_over_ranks
from opsd.rollout.base import Rollouts, RolloutBackend, SamplingConfig


class HFGenerateBackend(RolloutBackend):
    """Batched sampling with left padding; stops each sample at EOS.

    ``model``: a HF causal LM (or a DeepSpeed engine wrapping one; ``.module`` is unwrapped).
    """

    name = "hf"

    def __init__(self, model, tokenizer, batch_size: int = 64):
        self.model = getattr(model, "module", model)
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        eos = self.model.generation_config.eos_token_id if self.model.generation_config else None
        eos = eos if eos is not None else tokenizer.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, (list, tuple)) else [eos])
        if None in self.eos_ids or self.pad_id is None:
            raise ValueError("HF backend: the tokenizer/model defines no EOS or pad token")
        # ZeRO-3 partitions the student: every forward all-gathers its parameters, so every rank must
        # run the same number of forwards. generate stops early on a rank whose samples all ended and
        # the others then wait forever; synced_gpus keeps each rank stepping until all are done.
        # (transformers turns it on by itself only while its own DeepSpeed config is registered,
        # which opsd's engine never is.)
        # The number of generate calls must agree too (ranks with fewer prompts, an agent turn with
        # no live episode here): see generate.
        self.lockstep = (torch.distributed.is_available() and torch.distributed.is_initialized()
                         and torch.distributed.get_world_size() > 1
                         and any(hasattr(p, "ds_id") for p in self.model.parameters()))

    @torch.no_grad()
    def generate(self, prompt_ids: Sequence[Sequence[int]], sampling: SamplingConfig) -> Rollouts:
        out = Rollouts([], [], [], [])
        was_training = self.model.training
        self.model.eval()
        try:
            starts = list(range(0, len(prompt_ids), self.batch_size))
            # lockstep: as many batches as the rank with the most (agreed on before any forward);
            # an extra one here joins the others' forwards and what it samples is dropped
            extra = max_over_ranks(len(starts)) - len(starts) if self.lockstep else 0
            for start in starts:
                self._generate_batch(prompt_ids[start:start + self.batch_size], start, sampling, out)
            for _ in range(extra):
                self._generate_batch([[self.pad_id]], 0, sampling, Rollouts([], [], [], []))
        finally:
            self.model.train(was_training)
        return out

    def _generate_batch(self, prompts, offset: int, sampling: SamplingConfig, out: Rollouts) -> None:
        device = next(self.model.parameters()).device
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, p in enumerate(prompts):  # left padding: generation continues from the right edge
            ids[i, width - len(p):] = torch.tensor(p, dtype=torch.long)
            mask[i, width - len(p):] = 1
        greedy = sampling.temperature == 0
        kwargs = dict(do_sample=not greedy, max_new_tokens=sampling.max_new_tokens,
                      num_return_sequences=sampling.n, pad_token_id=self.pad_id,
                      eos_token_id=sorted(self.eos_ids), synced_gpus=self.lockstep)
        if not greedy:  # explicit values so a model's generation_config defaults never leak in
            kwargs.update(temperature=sampling.temperature, top_p=sampling.top_p, top_k=sampling.top_k or None)
        else:
            kwargs.update(temperature=None, top_p=None, top_k=None)
        seqs = self.model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), **kwargs)
        for row, seq in enumerate(seqs[:, width:].tolist()):
            i = row // sampling.n
            resp, finished = self._cut(seq)
            out.prompt_ids.append(list(prompts[i]))
            out.response_ids.append(resp)
            out.finished.append(finished)
            out.prompt_index.append(offset + i)

    def _cut(self, seq: List[int]):
        """Response up to and including the first EOS; padding after it is dropped."""
        for j, tok in enumerate(seq):
            if tok in self.eos_ids:
                return seq[: j + 1], True
        return seq, False
