"""The frozen teacher: forward on the student's rollouts, cached as last hidden states.

Only the teacher's last hidden state ``(N, d_T)`` at response positions is kept per
micro-batch (small), plus its output-embedding matrix; full-vocabulary logits are recomputed in
chunks when the losses need them.

Placement (``engine.teacher_placement``). ``resident``: the teacher stays on the device.
``offload``: the teacher body moves to CPU after scoring all micro-batches of a step (two-phase, as
upstream) and comes back before the next step's scoring; the head matrix stays on the device.

Sharding (``engine.teacher_sharding``). ``none``: a full teacher per rank. ``zero3``: the teacher
is partitioned over the data-parallel ranks with DeepSpeed ZeRO-3, inference only (no optimizer):
each rank holds ``1/world`` of every parameter, and the forward gathers each module's parameters
just before it runs and frees them right after (DeepSpeed's parameter hooks). Loading builds the
model under ``deepspeed.zero.Init`` (rank 0 reads the checkpoint layer by layer and the ranks keep
their slices), so no rank ever holds the full teacher. Every rank must call :meth:`Teacher.score`
the same number of times (the gathers are collectives): the trainer gives every rank the same
number of micro-batches. With ``offload`` the partitions live in host memory
(ZeRO-3 ``offload_param``) and each module's slice is copied to the device for its forward only;
the load/offload calls between phases are then no-ops.

The head, sharded: the losses compute teacher logits from the cached hidden states during the
student's update, chunk by chunk and a different number of chunks per rank, so a per-chunk gather
(a collective) would need every rank in step. Instead the head matrix is gathered once at setup
into a full replica per rank (``V x d_T``: 2.0 GiB for Llama-3.3-70B in bf16, against its 16.4 GiB
parameter shard at 8 ranks) that stays on the device, as for the unsharded teacher.

The teacher interface (all the trainer calls; :class:`Teacher` is the in-process teacher, a served
teacher (:mod:`opsd.teacher_service`) and a teacher with another tokenizer (:mod:`opsd.xtok`) wrap or
replace it; :func:`opsd.trainer.build_teacher` picks one from the config):

- ``width``: the logit rows of the teacher's sources (the trainer aligns the vocabulary with it);
- ``prepare(packing)``: once after setup (packed attention, logging);
- ``score_phase(batches, vocab_size, meta) -> sources``: one logit source per micro-batch
  (:class:`~opsd.losses.HiddenLogits`, :class:`~opsd.losses.TeacherTopK`, or anything with
  ``__len__`` and ``rows(idx)``), consumed chunk by chunk during the student's update, so a source
  may still be arriving when this returns (such a source has ``resolve()``: the trainer calls it on
  every rank before the micro-batch's forward, so a failure stops all ranks alike); ``meta[j]`` is the data row of the step's sequence ``j``
  (``batch["rows"]`` indexes it). It may zero ``loss_mask`` entries of a batch (rows it cannot
  score exactly): the trainer counts tokens after it, and the source then has one row per
  remaining loss position;
- ``after_update()``, ``metrics() -> dict`` (merged into the step's metrics), ``close()``.
"""
from __future__ import annotations

import contextlib
import logging

import torch
from torch import nn

from opsd.losses import HiddenLogits, TeacherTopK

log = logging.getLogger("opsd")


class _Body(nn.Module):
    """The transformer body up to the last hidden state; the root module that ZeRO-3 hooks, so
    the LM head (unused here: logits come from :class:`HiddenLogits`) is never gathered."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask=None, position_ids=None):
        # use_cache=False: with a KV cache (config.use_cache) transformers ignores packed position ids
        out = self.model.base_model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                                    use_cache=False)
        return out.last_hidden_state  # (B, L, d_T)


class Teacher:
    def __init__(self, model, device: torch.device, placement: str = "resident", topk=None,
                 chunk_size: int = 512, sharding: str = "none", ds_config: dict = None):
        self.model = model.eval().requires_grad_(False)
        self.device = device
        self.placement = placement
        self.sharding = sharding
        self.topk = topk
        self.chunk_size = chunk_size
        head, sharded = model.get_output_embeddings(), sharding == "zero3"
        with _gathered(head, sharded):  # sharded: copy the gathered head before it is released
            self.head_weight = _keep(head.weight, device, sharded)  # (V_T, d_T), kept on the device
            bias = getattr(head, "bias", None)
            self.head_bias = None if bias is None else _keep(bias, device, sharded)  # (V_T,)
        self.width = self.head_weight.shape[0]
        if sharding == "zero3":
            import deepspeed

            self.body, *_ = deepspeed.initialize(model=_Body(self.model), config=ds_config or zero3_config(device))
            self.body.eval()
        else:
            self.body = _Body(self.model)
            self.model.to(device if placement == "resident" else "cpu")

    def prepare(self, packing: bool) -> None:
        """Packed micro-batches need attention that honours packed position ids
        (:func:`opsd.packing.prepare_attention`); logs a sharded teacher's share on this rank."""
        if packing:
            from opsd.packing import prepare_attention

            prepare_attention(self.model, "teacher")
        if self.sharding == "zero3":
            import torch.distributed as dist

            local, full = self.param_bytes()
            head = self.head_weight.numel() * self.head_weight.element_size()
            log.info("teacher: ZeRO-3 sharded over %d ranks; %.3f of %.3f GiB of parameters on this rank "
                     "(+ %.3f GiB head replica)", dist.get_world_size() if dist.is_initialized() else 1,
                     local / 2 ** 30, full / 2 ** 30, head / 2 ** 30)

    def score_phase(self, batches: list, vocab_size: int, meta=None) -> list:
        """Score every micro-batch of the step first (two-phase); the teacher may then be offloaded."""
        self.load()
        sources = [self.score(b["input_ids"], b["attention_mask"], b["loss_mask"], vocab_size, b["position_ids"])
                   for b in batches]
        self.offload()
        return sources

    def after_update(self) -> None:
        """Back on the device for the next step's scoring phase (no-op if resident)."""
        self.load()

    def metrics(self) -> dict:
        return {}

    def close(self) -> None:
        """Release a sharded teacher's DeepSpeed engine (its hooks; see Trainer.cleanup)."""
        if self.sharding == "zero3" and hasattr(self.body, "destroy"):
            self.body.destroy()

    def load(self) -> None:
        """Bring the teacher body to the device for the scoring phase."""
        if self.placement == "offload" and self.sharding == "none":
            self.model.to(self.device)

    def offload(self) -> None:
        """Free device memory for the student's training phase."""
        if self.placement == "offload" and self.sharding == "none" and self.device.type != "cpu":
            self.model.to("cpu")
            torch.cuda.empty_cache()

    @torch.no_grad()
    def score(self, input_ids: torch.Tensor, attention_mask, loss_mask: torch.Tensor, vocab_size: int,
              position_ids=None):
        """Teacher source for the loss positions of one micro-batch: hidden states, or top-k.
        Packed micro-batches (:mod:`opsd.batching`) pass ``position_ids`` and no attention mask."""
        dev = self.device
        hidden = self.body(input_ids.to(dev), _to(attention_mask, dev), _to(position_ids, dev))  # (B, L, d_T)
        hidden = hidden[loss_mask.to(dev).bool()]  # (N, d_T)
        src = HiddenLogits(hidden, self.head_weight, vocab_size, self.head_bias)
        if self.topk:
            return TeacherTopK.from_logits(src, self.topk, self.chunk_size)
        return src

    def param_bytes(self) -> tuple:
        """``(this rank's, the full teacher's)`` parameter bytes, read from the parameters (under
        ZeRO-3: the size of each partition this rank holds, ``ds_tensor``); the head replica is
        not counted (it is ``head_weight.numel() * element_size()`` more)."""
        local = full = 0
        for p in self.model.parameters():
            part = getattr(p, "ds_tensor", None)
            local += (p.numel() if part is None else part.numel()) * p.element_size()
            full += getattr(p, "ds_numel", p.numel()) * p.element_size()
        return local, full


def _keep(p, device, copy: bool) -> torch.Tensor:
    t = p.detach()
    return t.clone().to(device) if copy else t.to(device)


def _to(t, device):
    return None if t is None else t.to(device)


def _gathered(module, enabled: bool):
    if not enabled:
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(list(module.parameters(recurse=False)), modifier_rank=None)


def zero3_config(device: torch.device, dtype: str = "float32", offload: bool = False) -> dict:
    """DeepSpeed config of the sharded teacher: ZeRO-3 without optimizer. Every parameter is
    partitioned (persistence thresholds 0: by default DeepSpeed keeps parameters under 100k
    elements whole on every rank; for a teacher they are a negligible share, and partitioning them
    makes the per-rank bytes exactly ``1/world``). ``offload``: partitions in host memory
    (pinned), only on a GPU (on CPU they are in host memory already)."""
    zero = {"stage": 3, "stage3_param_persistence_threshold": 0, "stage3_model_persistence_threshold": 0}
    if offload and device.type != "cpu":
        zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    ds = {"train_micro_batch_size_per_gpu": 1, "zero_optimization": zero, "steps_per_print": 10 ** 9,
          "wall_clock_breakdown": False}
    if dtype == "bfloat16":
        ds["bf16"] = {"enabled": True}
    elif dtype == "float16":
        ds["fp16"] = {"enabled": True}
    return ds


class _ZeRO3Loading:
    """What ``transformers.integrations.deepspeed`` reads from its DeepSpeed-config object while a
    model loads (``is_zero3()``, ``config``): with it registered, ``from_pretrained`` builds the
    model under ``deepspeed.zero.Init`` and loads the checkpoint into the partitions. (Its own
    ``HfDeepSpeedConfig`` does the same but requires the ``accelerate`` package.)"""

    def __init__(self, config: dict):
        self.config = config

    def is_zero3(self) -> bool:
        return True


@contextlib.contextmanager
def sharded_loading(ds_config: dict):
    """Models loaded with ``from_pretrained`` inside this block are partitioned as they are built."""
    from transformers.integrations import deepspeed as hf_ds

    marker = _ZeRO3Loading(ds_config)  # transformers keeps a weak reference: hold it here
    hf_ds.set_hf_deepspeed_config(marker)
    try:
        yield
    finally:
        hf_ds.unset_hf_deepspeed_config()


def load_teacher(cfg, device: torch.device, path: str = None) -> Teacher:
    """The in-process teacher of ``cfg.engine`` (placement, sharding), loaded from ``path``
    (default ``model.teacher``)."""
    from opsd import models

    m = cfg.model

    def load():
        return models.load_causal_lm(path or m.teacher, m.dtype, m.attn_implementation, m.trust_remote_code)

    e = cfg.engine
    if e.teacher_sharding == "zero3":
        ds = zero3_config(device, cfg.model.dtype, offload=e.teacher_placement == "offload")
        with sharded_loading(ds):
            model = load()
        return Teacher(model, device, e.teacher_placement, cfg.loss.teacher_topk, cfg.loss.chunk_size,
                       sharding="zero3", ds_config=ds)
    return Teacher(load(), device, e.teacher_placement, cfg.loss.teacher_topk, cfg.loss.chunk_size)


def output_rows(model) -> int:
    """Rows of the output embedding (logit width), also when ZeRO-3 has partitioned it."""
    w = model.get_output_embeddings().weight
    return int(getattr(w, "ds_shape", w.shape)[0])
