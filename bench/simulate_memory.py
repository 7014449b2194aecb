"""Per-device memory and FLOPs of one OPD training step at the paper's shapes, without a GPU.

    python bench/simulate_memory.py --pair qwen3-8b-4b           # one pair: memory by path x ratio, phases, FLOPs
    python bench/simulate_memory.py --all                         # the three pairs of the paper's Table 3
    python bench/simulate_memory.py --validate                    # simulated vs measured peak at small shapes (CPU)
    python bench/simulate_memory.py --pair qwen2.5-14b-1.5b --paths default --ratios 1,0.5 --tokens 4096

How. The step runs under torch's ``FakeTensorMode``: every tensor has a shape, a dtype and a storage
size but no data, so the models are built from their real HF configs (``bench/model_configs/*.json``)
with random weights that never exist. ``torch.distributed._tools.mem_tracker.MemTracker`` (a
``TorchDispatchMode`` that counts the bytes of every live storage and labels it parameter, gradient,
optimizer state, activation or temporary) measures it; :class:`PhaseTracker` adds per-phase peaks.
The step is the trainer's own order and code: :class:`opsd.teacher.Teacher` scores the micro-batch,
then :class:`opsd.distill.DistillModule` runs the student forward (HF gradient checkpointing as the
recipe sets it), the statistics pass, ``opsd.hooks.select_tokens`` (TIP's ``soft_or`` through
``tip_patches.apply`` for ratios < 1) and the grad pass; then backward and an AdamW step.

Fake tensors cannot answer data-dependent questions (``mask.nonzero()``, ``x[bool_mask]``,
``.item()``). :class:`ConcreteIntegers` keeps the small integer and boolean tensors (token ids,
masks, positions) real, so those ops run on real values and their results are exact; only
floating-point work is fake. A scalar read from a fake float gets the benign answer: ``all()`` is
true and ``any()`` false (every value finite, no row needs a fallback), anything else 0 (logged
diagnostics); none of them decides a shape.

What is modelled rather than run (there is no DeepSpeed here; ``--help`` of each option says more):

- **ZeRO** at the paper's GPU count W (Table 9: 8, 8, 4): stage 2 keeps the bf16 student weights
  whole on every device and 1/W of the fp32 gradients, fp32 master weights and AdamW moments
  (12/W bytes per parameter of optimizer states, 4/W of gradients); stage 3 also keeps 1/W of the
  bf16 weights, plus a working set of the gathered LM head and two decoder layers; CPU offload
  (``engine.offload_*``) moves those shares off the device. A gradient is reduce-scattered the
  moment autograd has accumulated it (a post-accumulate-grad hook adds its 1/W share into the
  partition and frees the full bf16 gradient), and DeepSpeed's contiguous gradient bucket
  (``reduce_bucket_size``, default 5e8 elements, bf16) is resident. The model's own parameter
  tensors are shape carriers only (not counted); the device copies are flat buffers of the right
  size. The optimizer step is a real ``torch.optim.AdamW`` step on the (fake) flat fp32 partition.
- **Teacher**: full bf16 copy per device; ``offload`` placement frees its body after scoring (its LM
  head stays on the device, as ``Teacher.head_weight`` does). With
  ``engine.teacher_sharding=zero3`` (the Llama recipe): 1/W of it per device (none if offloaded:
  host memory), a replica of its LM head for the whole step, and while it scores its largest module
  and one decoder layer gathered. All micro-batches of the step are scored before the update (two-phase): the
  first is scored through ``Teacher.score``; the cached hidden states of the others are copies.
- **upstream-style** loss path (not opsd code; our reading of the common OPD implementation, the
  paper's repository was not available to read): the student's HF forward returns the full
  ``(B, L, V)`` bf16 logits with gradient, the teacher's response-position logits ``(N, V)`` bf16 are
  cached per micro-batch during scoring, statistics come from those logits, and the kept rows
  (all of them at ratio 1.0) get log-softmax and reverse KL chunk by chunk under autograd. Its
  engine is pinned per pair (``Pair.upstream_engine``: the recipes' ZeRO stage, offload and teacher
  options when the row was defined), so a leaner opsd recipe leaves the baseline as it was; where
  the opsd rows' engine differs, ``upstream-same`` (the same loss path on their engine) is added so
  that the loss path's own share can be read apart from the engine's.
- **autograd / recompute / fused**: opsd's ``loss.impl`` values, run through ``DistillModule``:
  chunked autograd over the kept rows, the same with each chunk recomputed in backward, and the
  fused closed-form divergence (``opsd.losses``); the table marks opsd's default.

Devices: fake tensors live on the CPU device (attention is then ``_scaled_dot_product_flash_attention_for_cpu``,
which like CUDA flash/efficient attention keeps no ``(L, L)`` matrix). Peaks are live tensor bytes,
as ``torch.cuda.max_memory_allocated`` counts them (no caching-allocator fragmentation, no CUDA
context, no NCCL buffers, no vLLM); GB = 2^30 bytes.

Device-dependent branches in opsd take their GPU form (:func:`gpu_branches`; the same memory).

FLOPs: ``torch.utils.flop_counter.FlopCounterMode`` over the same fake step, in a pass of its own
(its module tracker keeps checkpoint-recomputed tensors alive, which would spoil the memory pass);
it counts matrix multiplications and attention (dense, non-causal: its convention), not
elementwise work such as the softmax over the vocabulary. Teacher scoring is that of one
micro-batch, so the shares are per micro-batch.

Validation (``--validate``): the same step for real on CPU at two small float32 shapes, each in a
fresh process, peak RSS above what is resident before the step (``bench/_common.Meter``) with
glibc's mmap threshold pinned (:data:`PINNED_MALLOC`), against the simulated peak above its
resident part; ``tests/test_simulate_memory.py`` holds it to 10 %.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import inspect
import json
import math
import sys
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402
from torch.distributed._tools.mem_tracker import MemTracker, _MemRefType  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402
from torch.utils._pytree import tree_flatten  # noqa: E402
from torch.utils.weak import WeakIdKeyDictionary  # noqa: E402

CONFIG_DIR = Path(__file__).resolve().parent / "model_configs"
GB = 2 ** 30
REDUCE_BUCKET = int(5e8)  # DeepSpeed's default reduce_bucket_size (elements)
PATHS = ("upstream", "autograd", "recompute", "fused")  # upstream-style, then opsd's loss.impl values
RATIOS = (1.0, 0.5, 0.2, 0.1)
CATEGORIES = ("parameters", "gradients", "optimizer states", "activations", "temporaries")
# MemTracker's reference types -> the categories we print
_CATEGORY_OF = {_MemRefType.PARAM: "parameters", _MemRefType.BUFFER: "parameters", _MemRefType.GRAD: "gradients",
                _MemRefType.OPT: "optimizer states", _MemRefType.ACT: "activations", _MemRefType.TEMP: "temporaries",
                _MemRefType.OTH: "temporaries"}
PHASES = ("teacher scoring", "student forward", "statistics pass", "stats + loss pass", "selection", "grad pass",
          "backward", "optimizer step")  # "stats + loss pass": opsd's one pass (fused, all tokens)


@dataclass(frozen=True)
class Pair:
    teacher: str  # bench/model_configs/<name>.json
    student: str
    recipe: str
    gpus: int  # the paper's GPU count (Table 9)
    tokenizer_len: int  # the shared tokenizer's length (the width both logits are sliced to)
    paper_gb: dict  # Table 3: peak GB at retention ratio (entropy sampling)
    # The engine of the upstream-style row, pinned: the setup it was defined with (the recipes' engine
    # options when the simulator was written), so a leaner opsd recipe cannot shrink the baseline.
    upstream_engine: dict


_ZERO2_RESIDENT = dict(zero_stage=2, offload_optimizer=False, offload_params=False, teacher_placement="resident",
                       teacher_sharding="none")


PAIRS = {
    "qwen3-8b-4b": Pair("Qwen3-8B", "Qwen3-4B", "recipes/paper/qwen3-8b-4b.yaml", 8, 151_665,
                        {1.0: 72.0, 0.5: 38.1, 0.2: 35.5, 0.1: 35.3}, _ZERO2_RESIDENT),
    "llama-70b-8b": Pair("Llama-3.3-70B-Instruct", "Llama-3.1-8B-Instruct", "recipes/paper/llama-70b-8b.yaml", 8,
                         128_256, {1.0: 41.6, 0.5: 32.1, 0.2: 31.8, 0.1: 31.9},
                         dict(zero_stage=3, offload_optimizer=True, offload_params=True, teacher_placement="offload",
                              teacher_sharding="zero3")),
    "qwen2.5-14b-1.5b": Pair("Qwen2.5-14B-Instruct", "Qwen2.5-1.5B-Instruct", "recipes/paper/qwen2.5-14b-1.5b.yaml",
                             4, 151_665, {1.0: 35.8, 0.5: 19.7, 0.2: 15.0, 0.1: 14.9},
                             _ZERO2_RESIDENT),
}


@dataclass
class Setup:
    """Everything one simulated step depends on (from the recipe, the pair and the command line)."""

    student_cfg: dict
    teacher_cfg: dict
    vocab_size: int
    world: int = 1
    zero_stage: int = 2
    offload_optimizer: bool = False
    offload_params: bool = False
    teacher_placement: str = "resident"
    teacher_sharding: str = "none"  # engine.teacher_sharding: none | zero3
    gradient_checkpointing: bool = True
    seqs: int = 1  # sequences per micro-batch
    prompt_len: int = 256
    response_len: int = 2048  # per sequence
    n_micro: int = 1  # micro-batches per step (all scored by the teacher first)
    chunk_size: int = 512
    loss_type: str = "reverse_kl"
    dtype: str = "bfloat16"
    tip_rule: str = "soft_or"

    @property
    def tokens(self) -> int:
        return self.seqs * self.response_len

    def engine(self) -> dict:
        return {k: getattr(self, k) for k in _ZERO2_RESIDENT}

    def with_engine(self, engine: dict) -> "Setup":
        """A copy with the engine options in ``engine`` (keys of :data:`_ZERO2_RESIDENT`) replaced."""
        from dataclasses import replace

        bad = set(engine) - set(_ZERO2_RESIDENT)
        if bad:
            raise ValueError(f"engine options {sorted(bad)}: only {sorted(_ZERO2_RESIDENT)} can be set")
        return replace(self, **engine)


def load_config(name: str) -> dict:
    path = CONFIG_DIR / f"{name}.json"
    if not path.is_file():
        raise SystemExit(f"model config {path} is missing (known: {sorted(p.stem for p in CONFIG_DIR.glob('*.json'))})")
    cfg = json.loads(path.read_text())
    for key in ("model_type", "hidden_size", "num_hidden_layers", "vocab_size"):
        if key not in cfg:
            raise SystemExit(f"{path}: key {key!r} is missing")
    return cfg


def setup_for_pair(name: str, tokens: int = 8192, prompt_len: int = 256, seqs: Optional[int] = None) -> Setup:
    """The pair's models, the recipe's engine options and the paper's GPU count; ``tokens`` response
    tokens per micro-batch, split evenly over the recipe's micro-batch size (or ``seqs``)."""
    import yaml

    pair = PAIRS[name]
    recipe = yaml.safe_load((REPO / pair.recipe).read_text())
    eng, model, loss = recipe.get("engine", {}), recipe.get("model", {}), recipe.get("loss", {})
    train, rollout = recipe.get("train", {}), recipe.get("rollout", {})
    seqs = seqs or int(eng.get("micro_batch_size", 1))
    if tokens % seqs:
        raise SystemExit(f"--tokens {tokens} must be divisible by the micro-batch size {seqs}")
    per_rank = int(train.get("prompts_per_step", 8)) * int(rollout.get("n", 1)) // pair.gpus
    return Setup(student_cfg=load_config(pair.student), teacher_cfg=load_config(pair.teacher),
                 vocab_size=pair.tokenizer_len, world=pair.gpus, zero_stage=int(eng.get("zero_stage", 2)),
                 offload_optimizer=bool(eng.get("offload_optimizer", False)),
                 offload_params=bool(eng.get("offload_params", False)),
                 teacher_placement=eng.get("teacher_placement", "resident"),
                 teacher_sharding=str(eng.get("teacher_sharding", "none")),
                 gradient_checkpointing=bool(model.get("gradient_checkpointing", False)), seqs=seqs,
                 prompt_len=prompt_len, response_len=tokens // seqs,
                 n_micro=max(1, math.ceil(per_rank / seqs)), chunk_size=int(loss.get("chunk_size", 512)),
                 loss_type=loss.get("type", "reverse_kl"), dtype=model.get("dtype", "bfloat16"))


# ------------------------------------------------------------------ dispatch modes

def _is_fake(t) -> bool:
    from torch._subclasses.fake_tensor import FakeTensor

    return isinstance(t, FakeTensor)


_SMALL_DTYPES = (torch.bool, torch.int8, torch.uint8, torch.int16, torch.int32, torch.int64)


class ConcreteIntegers(TorchDispatchMode):
    """Keeps integer and boolean bookkeeping real under a ``FakeTensorMode``: an op whose tensor
    inputs are all real (or an integer/bool factory) runs for real; a boolean mask that indexes a
    fake tensor becomes real integer indices (static output shape); a scalar read from a fake
    tensor returns a placeholder (counted in ``placeholders``)."""

    def __init__(self):
        super().__init__()
        self.placeholders = 0
        self._benign = WeakIdKeyDictionary()  # fake 0-d results of all() / any() -> the benign answer

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        from torch._subclasses.fake_tensor import unset_fake_temporarily

        kwargs = kwargs or {}
        tensors = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        if not any(_is_fake(t) for t in tensors):
            if tensors or kwargs.get("dtype") in _SMALL_DTYPES:
                with unset_fake_temporarily():
                    return func(*args, **kwargs)
        if func is torch.ops.aten._local_scalar_dense.default:
            self.placeholders += 1
            return self._benign.get(args[0], 0)
        if func is torch.ops.aten.index.Tensor and any(
                isinstance(i, torch.Tensor) and not _is_fake(i) and i.dtype == torch.bool for i in args[1]):
            idx = []
            for i in args[1]:
                if isinstance(i, torch.Tensor) and not _is_fake(i) and i.dtype == torch.bool:
                    with unset_fake_temporarily():
                        idx.extend(i.nonzero(as_tuple=True))
                else:
                    idx.append(i)
            return func(args[0], idx)
        out = func(*args, **kwargs)
        if func.overloadpacket in (torch.ops.aten.all, torch.ops.aten.any) and out.dim() == 0:
            self._benign[out] = func.overloadpacket is torch.ops.aten.all  # all finite; no bad row
        return out


class PhaseTracker(MemTracker):
    """``MemTracker`` plus: storages to ignore (the models' own parameter tensors, which are shape
    carriers here), ``track_as`` (count a tensor under a given category), per-phase peaks
    (``set_phase``), and backward-phase allocations labelled temporaries. Uses MemTracker's private
    state (``_peak_mem``, ``_curr_mem_snap``); written against torch 2.13."""

    def __init__(self):
        super().__init__()
        self._ignored = weakref.WeakSet()
        self.phase: Optional[str] = None
        self.phase_peaks: dict = {}  # phase -> (peak bytes, {category: bytes at that peak})

    def ignore(self, *modules) -> None:
        for m in modules:
            for t in list(m.parameters()) + list(m.buffers()):
                self._ignored.add(t.untyped_storage())

    def _skip(self, t) -> bool:
        return t is None or any(st in self._ignored for st in _storages(t))

    def _track(self, reftype, t):
        if self._skip(t):
            return
        if self.phase == "backward" and reftype == _MemRefType.ACT:
            reftype = _MemRefType.TEMP  # checkpoint recomputation and loss-side backward buffers
        super()._track(reftype, t)

    def _update_and_maybe_create_winfos(self, t, reftype, update_existing=False):
        if self._skip(t):
            return set()
        return super()._update_and_maybe_create_winfos(t, reftype, update_existing)

    def _track_module_params_and_buffers(self, module, install_grad_hooks=True):
        return super()._track_module_params_and_buffers(module, install_grad_hooks=False)

    def track_as(self, t: torch.Tensor, reftype) -> torch.Tensor:
        self._update_and_maybe_create_winfos(t, reftype)
        return t

    def current(self) -> tuple:
        return _flatten_snap(self._curr_mem_snap)

    def set_phase(self, name: Optional[str]) -> None:
        """Close the running phase (record its peak) and open ``name`` with the peak reset to now."""
        if self.phase is not None:
            self.phase_peaks[self.phase] = _flatten_snap(self._phase_peak_snap)
        self.phase = name
        self._phase_peak_snap = {d: dict(s) for d, s in self._curr_mem_snap.items()}

    def _update_peak_stats(self, peak_state) -> None:
        # The global and per-phase peaks only: MemTracker's per-module peaks walk every module on
        # every op (most of the run time at 36 layers) and are not printed here.
        now = self._curr_mem_snap
        total = _total(now)
        for dev, dev_snap in now.items():
            if self._peak_mem.get(dev, 0) < dev_snap["Total"]:
                self._peak_mem[dev] = dev_snap["Total"]
                self._peak_mem_snap[dev] = dict(dev_snap)
        if self.phase is not None and total > _total(self._phase_peak_snap):
            self._phase_peak_snap = {d: dict(s) for d, s in now.items()}


def _storages(t) -> list:
    from torch.distributed._tools.common_utils import get_untyped_storages

    return list(get_untyped_storages(t))


def _total(snap: dict) -> int:
    return sum(s.get("Total", 0) for s in snap.values())


def _flatten_snap(snap: dict) -> tuple:
    """(total bytes, {category: bytes}) summed over devices."""
    cats = dict.fromkeys(CATEGORIES, 0)
    for dev_snap in snap.values():
        for ref, b in dev_snap.items():
            if ref in _CATEGORY_OF:
                cats[_CATEGORY_OF[ref]] += b
    return _total(snap), cats


# ------------------------------------------------------------------ models and ZeRO

def build_model(cfg: dict, dtype: torch.dtype):
    """An HF causal LM from a config dict (random init; under FakeTensorMode nothing is allocated)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = dict(cfg)
    model_type = cfg.pop("model_type")
    config = AutoConfig.for_model(model_type, **cfg)
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # build in the training dtype (no float32 copy first)
    try:
        return AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")
    finally:
        torch.set_default_dtype(old)


def _numel(model) -> int:
    return sum(p.numel() for p in model.parameters())


class ZeroShares:
    """The device-resident part of the student's weights, gradients and optimizer states under
    ZeRO stage ``stage`` at world size ``world`` (see the module docstring)."""

    def __init__(self, student, setup: Setup, tracker: Optional[PhaseTracker], dtype: torch.dtype,
                 teacher=None):
        self.params = [p for p in student.parameters() if p.requires_grad]
        n, w = sum(p.numel() for p in self.params), setup.world
        self.shard = math.ceil(n / w)
        self.dtype = dtype
        track = (lambda t, r: tracker.track_as(t, r)) if tracker is not None else (lambda t, r: t)
        self.resident = []
        self.teacher, self.teacher_head, self.teacher_gathered = self._teacher(teacher, setup, track, dtype)
        if setup.zero_stage < 3:
            self.resident.append(track(torch.empty(n, dtype=dtype), _MemRefType.PARAM))
        else:
            if not setup.offload_params:
                self.resident.append(track(torch.empty(self.shard, dtype=dtype), _MemRefType.PARAM))
            head = student.get_output_embeddings().weight.numel()
            layer = max(sum(p.numel() for p in lyr.parameters()) for lyr in student.model.layers)
            self.resident.append(track(torch.empty(head + 2 * layer, dtype=dtype), _MemRefType.PARAM))
        self.grad_part = None if setup.offload_optimizer else track(torch.zeros(self.shard), _MemRefType.GRAD)
        self.bucket = track(torch.empty(min(REDUCE_BUCKET, n), dtype=dtype), _MemRefType.GRAD)
        self.optimizer = None
        if not setup.offload_optimizer:
            self.master = torch.nn.Parameter(torch.zeros(self.shard))
            self.optimizer = torch.optim.AdamW([self.master], lr=1e-6, foreach=True)
            st = self.optimizer.state[self.master]  # steady state: moments exist from the first step on
            st["exp_avg"], st["exp_avg_sq"] = torch.zeros(self.shard), torch.zeros(self.shard)
            from torch._subclasses.fake_tensor import unset_fake_temporarily

            with unset_fake_temporarily():
                st["step"] = torch.tensor(1.0)  # real: AdamW reads it as a number (bias correction)
            for t in (self.master, st["exp_avg"], st["exp_avg_sq"]):
                track(t, _MemRefType.OPT)
        self._offsets, off = {}, 0
        for p in self.params:
            k = math.ceil(p.numel() / w)
            self._offsets[p], off = (off, k), off + k
        self._hooks = [p.register_post_accumulate_grad_hook(self._reduce_scatter) for p in self.params]
        self._track_grad = (lambda g: tracker.track_as(g, _MemRefType.GRAD)) if tracker is not None else None
        self._pre = [p.register_hook(self._label_grad) for p in self.params] if tracker is not None else []

    @staticmethod
    def _teacher(teacher, setup: Setup, track, dtype) -> tuple:
        """(body, head, gathered during scoring) bf16 buffers of the teacher on the device. Unsharded:
        the whole model, body and LM head (``offload`` moves the body off after scoring; the head
        stays, as ``Teacher.head_weight`` does). With ``engine.teacher_sharding=zero3``: 1/W of it
        (none with offload: host memory) plus a replica of its LM head, and while it scores the
        largest module and one decoder layer gathered (DeepSpeed's gather and prefetch)."""
        if teacher is None:
            return None, None, None
        n = _numel(teacher)
        head = teacher.get_output_embeddings().weight
        head_n = head.numel()  # tied or not: Teacher.head_weight keeps this storage on the device
        if setup.teacher_sharding != "zero3":
            return (track(torch.empty(n - head_n, dtype=dtype), _MemRefType.PARAM),
                    track(torch.empty(head_n, dtype=dtype), _MemRefType.PARAM), None)
        part = 0 if setup.teacher_placement == "offload" else math.ceil(n / setup.world)
        largest = max(sum(p.numel() for p in m.parameters(recurse=False)) for m in teacher.modules())
        layer = max(sum(p.numel() for p in lyr.parameters()) for lyr in teacher.model.layers)
        return (track(torch.empty(part, dtype=dtype), _MemRefType.PARAM),
                track(torch.empty(head.numel(), dtype=dtype), _MemRefType.PARAM),
                track(torch.empty(largest + layer, dtype=dtype), _MemRefType.PARAM))

    def _label_grad(self, g):
        self._track_grad(g)  # the full bf16 gradient, alive until _reduce_scatter frees it
        return g

    def _reduce_scatter(self, p) -> None:
        """This rank's 1/W of ``p.grad`` goes into the fp32 partition; the full gradient is freed."""
        off, k = self._offsets[p]
        if self.grad_part is not None:
            self.grad_part.narrow(0, off, k).add_(p.grad.reshape(-1)[:k].float())
        p.grad = None

    def step(self) -> None:
        """AdamW on the fp32 partition, then its bf16 copy (what is all-gathered into the weights)."""
        if self.optimizer is None:
            return  # offloaded: the step runs on the CPU
        self.master.grad = self.grad_part
        self.optimizer.step()
        self.master.grad = None
        del_me = self.master.detach().to(self.dtype)  # (shard,) the bf16 partition sent to the all-gather
        del del_me

    def remove(self) -> None:
        for h in self._hooks + self._pre:
            h.remove()


# ------------------------------------------------------------------ the step

@contextlib.contextmanager
def gpu_branches():
    """Device-dependent code in opsd takes its GPU form (the device being modelled): fake tensors
    live on the CPU device, where ``opsd.losses._row_dot`` would run one BLAS dot per row (the same
    memory, thousands of ops). Restored afterwards."""
    import opsd.losses as losses

    saved = getattr(losses, "_row_dot", None)
    if saved is not None:
        losses._row_dot = lambda a, b: torch.bmm(a.unsqueeze(1), b.unsqueeze(2)).view(-1)  # (n,)
    try:
        yield
    finally:
        if saved is not None:
            losses._row_dot = saved


class _PhaseMarks:
    """Switch the tracker's phase (and read the FLOP counter) where DistillModule calls the
    statistics pass, the hook and the grad pass: pass-through wrappers on ``opsd.distill``'s
    names, removed afterwards (the same trick as ``bench/tip_memory.py``'s timers)."""

    def __init__(self, on_phase):
        self.on_phase = on_phase
        self.saved = []

    def __enter__(self):
        import opsd.distill as distill

        def wrap(obj, name, phase, after=None):
            fn = getattr(obj, name)

            @functools.wraps(fn)
            def marked(*a, **k):
                self.on_phase(phase)
                out = fn(*a, **k)
                if after:
                    self.on_phase(after)
                return out

            self.saved.append((obj, name, fn))
            setattr(obj, name, marked)

        for name, phase, after in (("stats_from_sources", "statistics pass", "selection"),
                                   ("loss_and_stats", "stats + loss pass", "selection"),
                                   ("selected_loss_sum", "grad pass", None)):
            if hasattr(distill, name):
                wrap(distill, name, phase, after)
        return self

    def __exit__(self, *exc):
        for obj, name, fn in reversed(self.saved):
            setattr(obj, name, fn)
        return False


def make_batch(setup: Setup) -> dict:
    """A micro-batch of ``seqs`` sequences, prompt + response, no padding; ``loss_mask`` marks the
    logit positions that predict a response token (as opsd.batching.build_sequences does)."""
    g = torch.Generator().manual_seed(0)
    length = setup.prompt_len + setup.response_len
    ids = torch.randint(0, setup.vocab_size, (setup.seqs, length), generator=g)
    loss_mask = torch.zeros(setup.seqs, length, dtype=torch.long)
    loss_mask[:, setup.prompt_len - 1: length - 1] = 1
    return dict(input_ids=ids, attention_mask=torch.ones_like(ids), loss_mask=loss_mask)


def loss_impls() -> tuple:
    """(the loss implementations DistillModule offers, its default). opsd's ``loss.impl``
    (fused | autograd | recompute) when present; before it existed, ``recompute_chunks``."""
    from opsd.distill import DistillModule

    params = inspect.signature(DistillModule.__init__).parameters
    if "impl" in params:
        import opsd.losses as losses

        return tuple(getattr(losses, "IMPLS", ("fused", "autograd", "recompute"))), params["impl"].default
    return ("autograd", "recompute"), "autograd"


def _impl_kwargs(path: str) -> dict:
    from opsd.distill import DistillModule

    if "impl" in inspect.signature(DistillModule.__init__).parameters:
        return {"impl": path}
    if path not in ("autograd", "recompute"):
        raise ValueError(f"loss path {path!r}: this opsd has no such loss implementation")
    return {"recompute_chunks": path == "recompute"}


def _upstream_update(student, batch, teacher_logits, setup: Setup, on_phase):
    """The upstream-style update (see the module docstring): full logits from the HF forward,
    statistics from them, chunked reverse KL with autograd over the kept rows."""
    from opsd import hooks
    from opsd.losses import DenseLogits, stats_from_sources

    logits = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits  # (B, L, V_pad)
    rows = logits[batch["loss_mask"].bool()]  # (N, V_pad) bf16, with grad
    on_phase("statistics pass")
    stats = stats_from_sources(DenseLogits(rows.detach(), setup.vocab_size),
                               DenseLogits(teacher_logits, setup.vocab_size),
                               setup.chunk_size)
    on_phase("selection")
    sel = hooks.select_tokens(stats)
    on_phase("grad pass")
    total = rows.new_zeros((), dtype=torch.float32)
    for s in range(0, len(sel.indices), setup.chunk_size):
        idx = sel.indices[s: s + setup.chunk_size]
        logp_s = torch.log_softmax(rows[idx, : setup.vocab_size].float(), dim=-1)  # (n, V)
        logp_t = torch.log_softmax(teacher_logits[idx, : setup.vocab_size].float(), dim=-1)
        total = total + (logp_s.exp() * (logp_s - logp_t)).sum()  # reverse KL, TIP Eq. 1
    return total, len(sel.indices)


def run_step(student, teacher, setup: Setup, path: str, ratio: float, tracker=None, flops=None,
             zero: Optional[ZeroShares] = None) -> dict:
    """One training step in the trainer's order; returns per-phase FLOPs and selection size.
    ``tracker`` (a :class:`PhaseTracker`) and ``flops`` (a ``FlopCounterMode``) are optional."""
    from opsd.distill import DistillModule
    from opsd.teacher import Teacher

    flop_marks = {}

    def on_phase(name):
        if flops is not None:
            flop_marks[name] = flops.get_total_flops()
        if tracker is not None:
            tracker.set_phase(name)

    handle = None
    if ratio < 1.0:
        import tip_patches

        handle = tip_patches.apply(tip_patches.TipConfig(rule=setup.tip_rule, ratio=ratio, seed=0))
    try:
        batch = make_batch(setup)
        on_phase("teacher scoring")
        t = teacher if isinstance(teacher, Teacher) else Teacher(teacher, torch.device("cpu"), "resident", None,
                                                                  setup.chunk_size)
        teacher = t.model
        src = t.score(batch["input_ids"], batch["attention_mask"], batch["loss_mask"], setup.vocab_size)
        if path == "upstream":
            with torch.no_grad():
                src = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[
                    batch["loss_mask"].bool()]  # (N, V_T) bf16 kept for the update
            cache = [src.clone() for _ in range(setup.n_micro - 1)]
        else:
            cache = [src.hidden.clone() for _ in range(setup.n_micro - 1)]  # the other micro-batches' (N, d_T)
        if zero is not None:
            zero.teacher_gathered = None  # sharded teacher: its gathered modules are released
            if setup.teacher_placement == "offload" and setup.teacher_sharding != "zero3":
                zero.teacher = None  # the body off the device for the training phase (the head stays)
        on_phase("student forward")
        n_step = setup.tokens * setup.n_micro
        if path == "upstream":
            loss_sum, kept = _upstream_update(student, batch, src, setup, on_phase)
        else:
            module = DistillModule(student, setup.vocab_size, setup.loss_type, chunk_size=setup.chunk_size,
                                   zero_stage=0, **_impl_kwargs(path))
            with _PhaseMarks(on_phase):
                loss_sum, _stats, sel, kept = module(batch["input_ids"], batch["attention_mask"],
                                                     batch["loss_mask"], src)
        on_phase("backward")
        (loss_sum * (setup.tokens / (n_step * max(kept, 1)))).backward()
        del loss_sum
        on_phase("optimizer step")
        if zero is not None:
            zero.step()
        on_phase(None)
        del cache
        return dict(kept=kept, flop_marks=flop_marks)
    finally:
        if handle is not None:
            handle.remove()


def _dtype(setup: Setup) -> torch.dtype:
    return {"bfloat16": torch.bfloat16, "float32": torch.float32, "float16": torch.float16}[setup.dtype]


# ------------------------------------------------------------------ simulation

_CPU_SDPA_REGISTERED = False


def _register_cpu_sdpa_flops() -> None:
    """FlopCounterMode knows the CUDA attention kernels; count the CPU flash kernel the same way."""
    global _CPU_SDPA_REGISTERED
    if _CPU_SDPA_REGISTERED:
        return
    from torch.utils import flop_counter as fc

    aten = torch.ops.aten

    @fc.register_flop_formula(aten._scaled_dot_product_flash_attention_for_cpu, get_raw=True)
    def _fwd(query, key, value, *args, out_val=None, **kwargs) -> int:
        return fc.sdpa_flop_count(query.shape, key.shape, value.shape)

    @fc.register_flop_formula(aten._scaled_dot_product_flash_attention_for_cpu_backward, get_raw=True)
    def _bwd(grad_out, query, key, value, *args, out_val=None, **kwargs) -> int:
        return fc.sdpa_backward_flop_count(grad_out.shape, query.shape, key.shape, value.shape)

    _CPU_SDPA_REGISTERED = True


@dataclass
class SimResult:
    path: str
    ratio: float
    kept: int
    peak: int
    peak_phase: str
    categories: dict
    phases: dict  # phase -> (peak bytes, categories)
    base: int  # bytes resident before the step (weights, optimizer states, buffers)
    flops: dict  # phase -> FLOPs
    placeholders: int
    seconds: float


class Models:
    """Student and teacher built once under one FakeTensorMode (reused by every simulated row)."""

    def __init__(self, setup: Setup, fake: bool = True):
        from torch._subclasses.fake_tensor import FakeTensorMode

        self.fake_mode = FakeTensorMode(allow_non_fake_inputs=True) if fake else None
        with self.fake_mode or contextlib.nullcontext():
            self.student = build_model(setup.student_cfg, _dtype(setup)).train()
            self.teacher = build_model(setup.teacher_cfg, _dtype(setup)).eval().requires_grad_(False)
        if setup.gradient_checkpointing:
            self.student.gradient_checkpointing_enable()
        self.teacher = _teacher(self.teacher, setup.chunk_size, self.fake_mode)


def _teacher(model, chunk_size: int, fake_mode):
    """:class:`opsd.teacher.Teacher` on the (fake) CPU device. Its ``model.to(device)`` is a no-op
    here; with fake parameters ``Module.to`` would try to swap tensors, so it is skipped."""
    from opsd.teacher import Teacher

    model.to = lambda *a, **k: model
    try:
        with fake_mode or contextlib.nullcontext():
            return Teacher(model, torch.device("cpu"), "resident", None, chunk_size)
    finally:
        del model.to


def simulate(setup: Setup, path: str, ratio: float, models: Optional[Models] = None) -> SimResult:
    """One fake step under :class:`PhaseTracker` (memory only; FLOPs: :func:`count_flops`)."""
    models = models or Models(setup)
    t0 = time.perf_counter()
    tracker = PhaseTracker()
    tracker.ignore(models.student, models.teacher.model)
    ints = ConcreteIntegers()
    with models.fake_mode, tracker:
        tracker.set_phase("init")
        zero = ZeroShares(models.student, setup, tracker, _dtype(setup), models.teacher.model)
        base = tracker.current()[0]
        try:
            with ints, gpu_branches():
                out = run_step(models.student, models.teacher, setup, path, ratio, tracker, None, zero)
        finally:
            zero.remove()
            for p in models.student.parameters():
                p.grad = None
            tracker.set_phase(None)
    phases = {k: v for k, v in tracker.phase_peaks.items() if k in PHASES}
    peak_phase = max(phases, key=lambda k: phases[k][0])
    return SimResult(path=path, ratio=ratio, kept=out["kept"], peak=phases[peak_phase][0], peak_phase=peak_phase,
                     categories=phases[peak_phase][1], phases=phases, base=base, flops={},
                     placeholders=ints.placeholders, seconds=time.perf_counter() - t0)


def count_flops(setup: Setup, path: str, ratio: float, models: Optional[Models] = None) -> dict:
    """FLOPs per phase of one fake step (``FlopCounterMode``). A pass of its own: with
    ``FlopCounterMode``'s module tracker active, the tensors recomputed by gradient checkpointing
    stay referenced after backward, which would corrupt the memory figures."""
    from torch.utils.flop_counter import FlopCounterMode

    _register_cpu_sdpa_flops()
    models = models or Models(setup)
    flops = FlopCounterMode(display=False)
    with models.fake_mode:
        zero = ZeroShares(models.student, setup, None, _dtype(setup), models.teacher.model)
        try:
            with ConcreteIntegers(), gpu_branches(), flops:
                out = run_step(models.student, models.teacher, setup, path, ratio, None, flops, zero)
        finally:
            zero.remove()
            for p in models.student.parameters():
                p.grad = None
    marks = out["flop_marks"]
    order = [p for p in PHASES if p in marks]
    total = flops.get_total_flops()
    return {p: (marks[order[i + 1]] if i + 1 < len(order) else total) - marks[p] for i, p in enumerate(order)}


# ------------------------------------------------------------------ validation against a measured peak

TINY = dict(model_type="qwen3", hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, head_dim=64, vocab_size=32_000, tie_word_embeddings=True, rms_norm_eps=1e-6)
VALIDATION_SHAPES = {
    # name: (student overrides, teacher overrides, vocab, seqs, prompt, response, chunk)
    "v32k": (dict(), dict(hidden_size=384, tie_word_embeddings=False), 32_000, 2, 64, 512, 256),
    "v152k": (dict(vocab_size=151_936), dict(hidden_size=384, vocab_size=151_936, tie_word_embeddings=False),
              151_936, 1, 32, 512, 128),
}


def validation_setup(shape: str) -> Setup:
    """A small float32 CPU step (world size 1, gradient checkpointing on) for ``shape``."""
    s_over, t_over, vocab, seqs, prompt, response, chunk = VALIDATION_SHAPES[shape]
    return Setup(student_cfg={**TINY, **s_over}, teacher_cfg={**TINY, **t_over}, vocab_size=vocab, world=1,
                 seqs=seqs, prompt_len=prompt, response_len=response, n_micro=2, chunk_size=chunk, dtype="float32")


def simulated_step_bytes(setup: Setup, path: str, ratio: float) -> tuple:
    """(peak bytes the step adds above what is resident before it, the SimResult)."""
    res = simulate(setup, path, ratio)
    return res.peak - res.base, res


def measure_step_bytes(setup: Setup, path: str, ratio: float) -> float:
    """Real step on CPU in this process: peak RSS above the level right before the step
    (bench/_common.Meter: VmHWM after /proc/self/clear_refs). Call in a fresh process."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import _common as C

    torch.manual_seed(0)
    torch.set_num_threads(1)
    device = torch.device("cpu")
    C.check_peak_reset(device)
    models = Models(setup, fake=False)
    zero = ZeroShares(models.student, setup, None, _dtype(setup))
    tiny = Setup(**{**setup.__dict__, "prompt_len": 4, "response_len": 8, "chunk_size": 4})
    run_step(models.student, models.teacher, tiny, path, ratio, zero=zero)  # warm-up: lazy imports, kernels
    for p in models.student.parameters():
        p.grad = None
    with C.Meter(device) as m:
        run_step(models.student, models.teacher, setup, path, ratio, zero=zero)
    return m.peak_bytes


# glibc raises its mmap threshold up to 32 MB after the first large free, and freed heap blocks
# below it stay in RSS: the peak RSS then counts memory that is free. Pinning the threshold makes
# every tensor >= 128 KiB its own mapping, returned on free, so RSS follows the live tensors (what
# a GPU's max_memory_allocated counts). The default-allocator figure is printed beside it.
PINNED_MALLOC = {"MALLOC_MMAP_THRESHOLD_": "131072"}


def measure_in_child(shape: str, path: str, ratio: float, pinned: bool = True) -> float:
    """:func:`measure_step_bytes` in a fresh interpreter (1 thread)."""
    import os
    import subprocess

    env = {**os.environ, "OMP_NUM_THREADS": "1", **(PINNED_MALLOC if pinned else {})}
    if not pinned:
        env.pop("MALLOC_MMAP_THRESHOLD_", None)
    proc = subprocess.run([sys.executable, __file__, "--measure", shape, path, str(ratio)], capture_output=True,
                          text=True, env=env)
    line = [l for l in proc.stdout.splitlines() if l.startswith("MEASURED ")]
    if not line:
        raise SystemExit(f"measurement {shape} {path} {ratio} failed (exit {proc.returncode}):\n{proc.stdout}\n"
                         f"{proc.stderr[-3000:]}")
    return float(line[0].split()[1])


def validate(paths, ratios, shapes, default_malloc: bool = True) -> list:
    """Simulated vs measured (each measurement in a fresh process); returns rows for the table."""
    rows = []
    for shape in shapes:
        setup = validation_setup(shape)
        for path in paths:
            for ratio in ratios:
                sim, res = simulated_step_bytes(setup, path, ratio)
                meas = measure_in_child(shape, path, ratio)
                plain = measure_in_child(shape, path, ratio, pinned=False) if default_malloc else float("nan")
                rows.append(dict(shape=shape, path=path, ratio=ratio, simulated=sim, measured=meas,
                                 residual=(sim - meas) / meas, measured_default=plain, phase=res.peak_phase))
    return rows


# ------------------------------------------------------------------ report

def _gb(b: float) -> str:
    return f"{b / GB:.1f}"


def _table(header: list, rows: list) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---:" if i else "---" for i in range(len(header))) + "|"]
    return "\n".join(out + ["| " + " | ".join(str(c) for c in r) + " |" for r in rows])


def describe_engine(setup: Setup) -> str:
    off = [k for k, v in (("optimizer", setup.offload_optimizer), ("params", setup.offload_params)) if v]
    return (f"ZeRO-{setup.zero_stage}{' offload ' + '+'.join(off) if off else ''}, "
            f"teacher {setup.teacher_placement}{' sharded ZeRO-3' if setup.teacher_sharding == 'zero3' else ''}")


def describe(name: str, setup: Setup, models: Models) -> str:
    ns, nt = _numel(models.student), _numel(models.teacher.model)
    up = setup.with_engine(PAIRS[name].upstream_engine)
    return (f"## {name}: {PAIRS[name].teacher} ({nt / 1e9:.2f} B) -> {PAIRS[name].student} ({ns / 1e9:.2f} B)\n\n"
            f"{setup.world} GPUs, opsd rows: {describe_engine(setup)}; upstream-style row (pinned): "
            f"{describe_engine(up)}"
            + ("" if up.engine() == setup.engine() else "; upstream-same: the upstream-style loss path with the "
               "opsd rows' engine") + "; "
            f"gradient checkpointing {'on' if setup.gradient_checkpointing else 'off'}, "
            f"{setup.dtype}; micro-batch {setup.seqs} x ({setup.prompt_len} prompt + {setup.response_len} response) "
            f"= {setup.tokens:,} response tokens, {setup.n_micro} micro-batches per step scored first; "
            f"V = {setup.vocab_size:,}, chunk {setup.chunk_size}, {setup.loss_type}; TIP rule {setup.tip_rule}")


def report_pair(name: str, setup: Setup, paths, ratios, flop_ratios=()) -> dict:
    models = Models(setup)
    print(describe(name, setup, models), flush=True)
    impls, default = loss_impls()
    up_setup = setup.with_engine(PAIRS[name].upstream_engine)
    if "upstream" in paths and up_setup.engine() != setup.engine() and "upstream-same" not in paths:
        paths = list(paths) + ["upstream-same"]  # the same loss path on the opsd rows' engine, for the record
    results = {}
    for path in paths:
        if path not in ("upstream", "upstream-same") and path not in impls:
            print(f"\n(loss path {path!r}: not in this opsd; skipped)")
            continue
        for ratio in ratios:
            run = (up_setup, "upstream") if path == "upstream" else (setup, "upstream") if path == "upstream-same" \
                else (setup, path)
            results[path, ratio] = simulate(*run, ratio, models)

    def ref(key):  # (peak, training peak) of a reference row, or Nones
        return (results[key].peak, _training_peak(results[key])) if key in results else (None, None)

    (up1, up_train), (same1, _) = ref(("upstream", 1.0)), ref(("upstream-same", 1.0))
    rows = []
    for (path, ratio), r in results.items():
        label = path + (" (opsd default)" if path == default else "")
        paper = PAIRS[name].paper_gb.get(ratio, "")
        train = _training_peak(r)
        rows.append([label, ratio, f"{r.kept:,}", _gb(r.peak), paper, f"{r.peak / up1:.2f}" if up1 else "",
                     f"{r.peak / same1:.2f}" if same1 else "", r.peak_phase]
                    + [_gb(r.categories[c]) for c in CATEGORIES]
                    + [_gb(train), f"{train / up_train:.2f}" if up_train else ""])
    print("\nPer-device peak of the step (GB = 2^30 B); paper = Table 3 (entropy sampling, measured on H200); "
          "categories at the step's peak; training = the peak after teacher scoring; \"vs upstream-same\" = "
          "against the upstream-style loss path on the opsd rows' engine (when it differs from the pinned one):\n")
    print(_table(["loss path", "ratio", "kept", "peak GB", "paper GB", "vs upstream 1.0", "vs upstream-same 1.0",
                  "phase of peak"] + [f"{c} GB" for c in CATEGORIES]
                 + ["training peak GB", "training vs upstream 1.0"], rows))
    print("\nPeak by phase (GB):\n")
    shown = [k for k in results if k[1] in (1.0, 0.5)]
    phases = [p for p in PHASES if any(p in results[k].phases for k in shown)]
    print(_table(["loss path", "ratio"] + phases,
                 [[k[0], k[1]] + [_gb(results[k].phases[p][0]) if p in results[k].phases else "—" for p in phases]
                  for k in shown]))
    if flop_ratios:
        runs = [(default, r) for r in flop_ratios] + ([("autograd", 1.0)] if default != "autograd" else [])
        print_flops({k: count_flops(setup, k[0], k[1], models) for k in runs})
    slow = max(r.seconds for r in results.values())
    print(f"\n({len(results)} simulated steps, slowest {slow:.1f} s; scalars read from fake floats: "
          f"{max(r.placeholders for r in results.values())} at most)\n", flush=True)
    return results


def _training_peak(r: SimResult) -> int:
    """The peak after the teacher's scoring phase (student forward to optimizer step)."""
    return max(v[0] for k, v in r.phases.items() if k != "teacher scoring")


def print_flops(runs: dict) -> None:
    """Statistics pass + selection as a share of the step's FLOPs (teacher scoring included, and of
    the student's training alone), from :func:`count_flops` per (path, ratio)."""
    rows = []
    for (path, ratio), f in runs.items():
        total = sum(f.values())
        scoring = f.get("statistics pass", 0) + f.get("selection", 0)
        student = total - f.get("teacher scoring", 0)
        rows.append([path, ratio, f"{total / 1e12:.1f}", f"{f.get('teacher scoring', 0) / 1e12:.1f}",
                     f"{(f.get('student forward', 0) + f.get('backward', 0)) / 1e12:.1f}", f"{scoring / 1e12:.2f}",
                     f"{(f.get('grad pass', 0) + f.get('stats + loss pass', 0)) / 1e12:.2f}",
                     f"{100 * scoring / total:.1f} %", f"{100 * scoring / student:.1f} %"])
    print("\nFLOPs of the step (TFLOP; FlopCounterMode: matmuls and attention, counted dense; per micro-batch, "
          "teacher scoring of one micro-batch). \"stats pass + selection\" is the separate statistics pass; with "
          "all tokens, the fused path takes the statistics from its loss pass (none separate):\n")
    print(_table(["loss path", "ratio", "step", "teacher scoring", "student fwd + bwd (backbone, loss backward)",
                  "stats pass + selection", "loss pass fwd", "stats+sel share of step",
                  "share of student training"], rows))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pair", choices=sorted(PAIRS), action="append", help="model pair (repeatable)")
    p.add_argument("--all", action="store_true", help="all three pairs")
    p.add_argument("--paths", default=",".join(PATHS), help="loss paths, comma-separated (default %(default)s)")
    p.add_argument("--ratios", default=",".join(map(str, RATIOS)), help="retention ratios (default %(default)s)")
    p.add_argument("--tokens", type=int, default=8192, help="response tokens per micro-batch (default %(default)s)")
    p.add_argument("--prompt-len", type=int, default=256, help="prompt tokens per sequence (default %(default)s)")
    p.add_argument("--seqs", type=int, default=None, help="sequences per micro-batch (default: the recipe's)")
    p.add_argument("--zero-stage", type=int, choices=(2, 3), default=None,
                   help="what-if: override the recipe's engine.zero_stage")
    p.add_argument("--teacher-placement", choices=("resident", "offload"), default=None,
                   help="what-if: override the recipe's engine.teacher_placement")
    p.add_argument("--teacher-sharding", choices=("none", "zero3"), default=None,
                   help="what-if: override the recipe's engine.teacher_sharding")
    p.add_argument("--no-flops", action="store_true", help="skip the FLOP passes")
    p.add_argument("--validate", action="store_true", help="simulated vs measured peak at small CPU shapes")
    p.add_argument("--shapes", default=",".join(VALIDATION_SHAPES), help="validation shapes (default %(default)s)")
    p.add_argument("--measure", nargs=3, metavar=("SHAPE", "PATH", "RATIO"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.measure:
        shape, path, ratio = args.measure
        print(f"MEASURED {measure_step_bytes(validation_setup(shape), path, float(ratio))}")
        return
    paths = [x for x in args.paths.split(",") if x]
    bad = [x for x in paths if x not in PATHS + ("upstream-same",)]
    if bad:
        raise SystemExit(f"--paths: unknown {bad}; choose from {list(PATHS) + ['upstream-same']}")
    try:
        ratios = [float(x) for x in args.ratios.split(",") if x]
    except ValueError:
        raise SystemExit(f"--ratios: expected numbers, got {args.ratios!r}") from None
    if any(not 0 < r <= 1 for r in ratios):
        raise SystemExit(f"--ratios must be in (0, 1], got {ratios}")
    if args.validate:
        rows = validate(paths, ratios, [s for s in args.shapes.split(",") if s])
        print("Simulated vs measured peak of one step above what is resident before it (MB; CPU, float32, "
              "1 thread, fresh process per measurement; measured = peak RSS with glibc's mmap threshold pinned "
              "at 128 KiB, default malloc = the same with glibc's defaults):\n")
        print(_table(["shape", "loss path", "ratio", "phase of peak", "simulated MB", "measured MB", "residual",
                      "default malloc MB"],
                     [[r["shape"], r["path"], r["ratio"], r["phase"], f"{r['simulated'] / 2**20:,.0f}",
                       f"{r['measured'] / 2**20:,.0f}", f"{100 * r['residual']:+.1f} %",
                       f"{r['measured_default'] / 2**20:,.0f}"] for r in rows]))
        worst = max(abs(r["residual"]) for r in rows)
        print(f"\nlargest |residual|: {100 * worst:.1f} %")
        return
    names = sorted(PAIRS) if args.all else (args.pair or ["qwen3-8b-4b"])
    for name in names:
        setup = setup_for_pair(name, args.tokens, args.prompt_len, args.seqs)
        if args.zero_stage is not None:
            setup.zero_stage = args.zero_stage
        if args.teacher_placement is not None:
            setup.teacher_placement = args.teacher_placement
        if args.teacher_sharding is not None:
            setup.teacher_sharding = args.teacher_sharding
        report_pair(name, setup, paths, ratios, () if args.no_flops else ratios)


if __name__ == "__main__":
    main()
