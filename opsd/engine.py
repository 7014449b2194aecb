"""The training engine: DeepSpeed ZeRO (stage 0-3, optional CPU offload) at any world size.

DeepSpeed runs on CPU with the gloo backend, so the single-process path (tests, the embedded
default) and the multi-GPU path are the same code. vLLM and DeepSpeed are imported lazily.
"""
from __future__ import annotations

import gc
import logging
import math
import os
import socket
import sys
import time

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("engine.device=cuda but no CUDA device is visible")
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_distributed(device: torch.device) -> None:
    """Join the process group set up by torchrun/deepspeed, or make a world of one."""
    if dist.is_initialized():
        return
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", os.path.join(os.path.expanduser("~"), ".cache", "opsd_torch_ext"))
    if "RANK" not in os.environ:  # plain `python -m opsd.train`: a world of one process
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=os.environ.get("MASTER_PORT", str(_free_port())))
    import deepspeed

    deepspeed.init_distributed(dist_backend="nccl" if device.type == "cuda" else "gloo",
                               auto_mpi_discovery=False, verbose=False)
    if device.type == "cuda":
        torch.cuda.set_device(device)


def shutdown_distributed(barrier: bool = True) -> int:
    """Tear the process groups down before the interpreter exits; returns how many gloo worker
    threads are still busy afterwards (0 = a clean teardown). ``opsd.train`` and every
    multi-process test child call this last, *after* their trainer is out of scope.

    Why (found in a core dump of a rank that aborted at exit with "terminate called without an
    active exception"): a gloo worker thread drops its last finished collective a moment after
    the caller has moved on; if that collective's tensors still have Python objects, dropping them
    takes the GIL, and when that happens while the interpreter is finalizing, the thread is forced
    to exit inside a C++ destructor -> std::terminate -> SIGABRT, after a run that succeeded. The
    threads stop only when their ProcessGroup object is destroyed, and ``dist.destroy_process_group``
    does not destroy a group that Python still references -- DeepSpeed does: its module globals,
    the engine and ZeRO optimizer, and every ZeRO-3 parameter (``ds_process_group``). So: barrier,
    then DeepSpeed's ``destroy_process_group`` (torch's, plus the release of DeepSpeed's globals)
    and of the references DeepSpeed ZeRO-3 keeps in module globals, then a garbage collection that
    frees the engines (``Trainer.cleanup`` destroyed their hooks) and parameters the caller has let
    go: the groups' destructors join their worker threads while the interpreter is fully alive.
    A group that something still references (DeepSpeed keeps the default group alive from C++
    after ``deepspeed.initialize``: not found from Python) keeps its threads until exit; for those
    we wait until each sleeps idle, having dropped its last collective, before returning.

    ``barrier``: wait until every rank is done first (after a clean run), so that no rank takes a
    group down while another still uses it; skip it after a failure, when a peer may never arrive."""
    if not (dist.is_available() and dist.is_initialized()):
        return _drain_gloo_workers() if gloo_worker_threads() else 0
    try:
        if barrier and dist.get_world_size() > 1:
            dist.barrier()
    finally:
        ds_comm = sys.modules.get("deepspeed.comm.comm")
        if ds_comm is not None and ds_comm.is_initialized():
            ds_comm.destroy_process_group()
        else:
            dist.destroy_process_group()
    _release_deepspeed_engines()
    gc.collect()
    busy = _drain_gloo_workers(DRAIN_TIMEOUT_S)
    if busy:
        log.warning("%d gloo worker thread(s) still busy %.0f s after the process-group teardown; the process "
                    "may abort at exit", busy, DRAIN_TIMEOUT_S)
    return busy


def _release_deepspeed_engines() -> None:
    """Drop the references DeepSpeed ZeRO-3 keeps to every engine it built, so that the engines,
    their parameters and through them the process groups can be freed (DeepSpeed 0.18; neither is
    undone by ``engine.destroy()``): ``parameter_offload.FWD_MODULE_STACK``, a module-level list to
    which each ZeRO-3 engine's top module is appended at setup and never popped, and the
    ``lru_cache`` on ``PartitionedParameterCoordinator.__params_to_release``, a method cache whose
    keys hold the coordinators and modules. Called only at teardown, when no forward can run."""
    offload = sys.modules.get("deepspeed.runtime.zero.parameter_offload")
    if offload is not None and isinstance(getattr(offload, "FWD_MODULE_STACK", None), list):
        offload.FWD_MODULE_STACK.clear()
    coord = sys.modules.get("deepspeed.runtime.zero.partitioned_param_coordinator")
    fn = getattr(getattr(coord, "PartitionedParameterCoordinator", None),
                 "_PartitionedParameterCoordinator__params_to_release", None)
    for _ in range(3):  # the cache sits under DeepSpeed's nvtx wrapper (in its closure)
        if fn is None or hasattr(fn, "cache_clear"):
            break
        inner = [c.cell_contents for c in getattr(fn, "__closure__", None) or () if callable(c.cell_contents)]
        fn = getattr(fn, "__wrapped__", None) or (inner[0] if inner else None)
    if fn is not None and hasattr(fn, "cache_clear"):
        fn.cache_clear()


def _gloo_worker_states() -> list:
    """Scheduler state (``R``, ``S``, ...) of each thread of this process named ``pt_gloo_runloop``
    (a gloo process group's workers); Linux ``/proc``, an empty list elsewhere."""
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return []
    states = []
    for t in tasks:
        try:
            with open(f"/proc/self/task/{t}/comm") as f:
                if f.read().strip() != "pt_gloo_runloop":
                    continue
            with open(f"/proc/self/task/{t}/stat") as f:
                states.append(f.read().rsplit(")", 1)[1].split()[0])
        except (OSError, IndexError):  # the thread ended meanwhile
            pass
    return states


def gloo_worker_threads() -> int:
    """How many gloo worker threads this process still has."""
    return len(_gloo_worker_states())


DRAIN_TIMEOUT_S = 10.0


def _drain_gloo_workers(timeout_s: float = DRAIN_TIMEOUT_S, settle: int = 5) -> int:
    """Wait until every remaining gloo worker thread sleeps (``S``) in ``settle`` samples in a row,
    i.e. waits for work that will never come, having dropped its last finished collective; returns
    how many are still not idle at ``timeout_s``. For groups something still references after the
    teardown: their threads live until exit, and must not be holding a collective's tensors then."""
    deadline, calm = time.monotonic() + timeout_s, 0
    while time.monotonic() < deadline:
        busy = sum(st != "S" for st in _gloo_worker_states())
        calm = calm + 1 if busy == 0 else 0
        if calm >= settle:
            return 0
        time.sleep(0.01)  # without the GIL: a worker dropping its tensors can take it
    return sum(st != "S" for st in _gloo_worker_states())


def comm_device() -> torch.device:
    """Where a tensor must live for the default process group to communicate it: the current GPU
    under NCCL (which cannot send CPU tensors), the CPU under gloo. Host-side bookkeeping
    collectives (token counts, rewards, accuracies) go through :func:`all_reduce_host`."""
    if dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_host(t: torch.Tensor, op=None) -> torch.Tensor:
    """All-reduce a small tensor over all ranks (a no-op for a world of one); returns a tensor on
    ``t``'s device (a new one under NCCL, ``t`` itself reduced in place otherwise)."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return t
    x = t.to(comm_device())
    dist.all_reduce(x, op=op or dist.ReduceOp.SUM)
    if x is not t:
        t.copy_(x)
    return t


def max_over_ranks(n: int) -> int:
    """The largest ``n`` of all ranks (a collective; ``n`` itself for a world of one): how many
    micro-batches, generate batches or agent turns every rank runs so that their collectives pair up."""
    return int(all_reduce_host(torch.tensor([n], dtype=torch.long), dist.ReduceOp.MAX).item())


def all_gather_host(t: torch.Tensor) -> list:
    """All-gather equally shaped small tensors from every rank, in rank order, on ``t``'s device."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return [t]
    x = t.to(comm_device())
    out = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(out, x)
    return [o.to(t.device) for o in out]


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def cosine_with_warmup(optimizer, warmup: int, total: int, min_ratio: float = 0.0):
    """Linear warm-up to the peak lr, then cosine decay to ``min_ratio * lr`` at ``total``."""

    def factor(step: int) -> float:
        if warmup > 0 and step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def deepspeed_config(cfg, grad_accum: int) -> dict:
    """DeepSpeed JSON config from the typed config (dtype, ZeRO stage, offload, clipping)."""
    e = cfg.engine
    zero = {"stage": e.zero_stage}
    if e.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
    if e.offload_params:
        zero["offload_param"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
    ds = {
        "train_micro_batch_size_per_gpu": e.micro_batch_size,
        "gradient_accumulation_steps": grad_accum,
        # ZeRO-0 in float32: DeepSpeed steps the bare optimizer; _SkippingAdamW clips instead
        "gradient_clipping": 0.0 if _owns_clipping(cfg) else cfg.optim.max_grad_norm,
        "zero_optimization": zero,
        "zero_allow_untested_optimizer": True,  # a plain torch AdamW runs on CPU and GPU alike
        "zero_force_ds_cpu_optimizer": False,
        "steps_per_print": 10 ** 9,
        "wall_clock_breakdown": False,
    }
    if cfg.model.dtype == "bfloat16":
        ds["bf16"] = {"enabled": True}
    elif cfg.model.dtype == "float16":
        ds["fp16"] = {"enabled": True, "initial_scale_power": 16}
    return ds


class _SkippingAdamW(torch.optim.AdamW):
    """AdamW that clips by the global gradient norm and skips a step whose norm is not finite.

    ZeRO-1/2/3 and the fp16/bf16 wrappers do this inside DeepSpeed; with ZeRO-0 in float32
    DeepSpeed steps the bare optimizer, and a NaN/inf gradient would be written into the weights.
    After each step DeepSpeed reads ``overflow`` (counted in ``engine.skipped_steps``, no lr
    schedule step) and ``_global_grad_norm`` (``engine.get_global_grad_norm()``), as for its own
    optimizers. Gradients are already all-reduced when ``step`` runs, so every rank agrees."""

    def __init__(self, params, max_grad_norm: float = 0.0, **kw):
        super().__init__(params, **kw)
        self.max_grad_norm = max_grad_norm
        self.overflow = False
        self._global_grad_norm = None

    def step(self, closure=None):
        params = [p for g in self.param_groups for p in g["params"] if p.grad is not None]
        max_norm = self.max_grad_norm if self.max_grad_norm > 0 else float("inf")  # inf: norm only
        norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm)) if params else 0.0
        self._global_grad_norm = norm
        self.overflow = not math.isfinite(norm)
        return None if self.overflow else super().step(closure)


def _owns_clipping(cfg) -> bool:
    return cfg.engine.zero_stage == 0 and cfg.model.dtype == "float32"


def build_engine(module: torch.nn.Module, cfg, grad_accum: int):
    """Wrap ``module`` (an :class:`opsd.distill.DistillModule`) in a DeepSpeed engine with AdamW
    and a cosine schedule."""
    import deepspeed

    params = [p for p in module.parameters() if p.requires_grad]
    o = cfg.optim
    kw = dict(lr=o.lr, betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay)
    optimizer = (_SkippingAdamW(params, max_grad_norm=o.max_grad_norm, **kw) if _owns_clipping(cfg)
                 else torch.optim.AdamW(params, **kw))
    warmup = o.warmup_steps or int(o.warmup_ratio * cfg.train.max_steps)
    scheduler = cosine_with_warmup(optimizer, warmup, cfg.train.max_steps, o.min_lr_ratio)
    engine, optimizer, _, scheduler = deepspeed.initialize(
        model=module, optimizer=optimizer, lr_scheduler=scheduler, config=deepspeed_config(cfg, grad_accum))
    return engine, optimizer, scheduler
