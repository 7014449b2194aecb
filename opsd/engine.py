"""The training engine: DeepSpeed ZeRO (stage 0-3, optional CPU offload) at any world size.

DeepSpeed runs on CPU with the gloo backend, so the single-process path (tests, the embedded
default) and the multi-GPU path are the same code. vLLM and DeepSpeed are imported lazily.
"""
from __future__ import annotations

import math
import os
import socket

import torch
import torch.distributed as dist


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
        "gradient_clipping": cfg.optim.max_grad_norm,
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


def build_engine(module: torch.nn.Module, cfg, grad_accum: int):
    """Wrap ``module`` (an :class:`opsd.distill.DistillModule`) in a DeepSpeed engine with AdamW
    and a cosine schedule."""
    import deepspeed

    params = [p for p in module.parameters() if p.requires_grad]
    o = cfg.optim
    optimizer = torch.optim.AdamW(params, lr=o.lr, betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay)
    warmup = o.warmup_steps or int(o.warmup_ratio * cfg.train.max_steps)
    scheduler = cosine_with_warmup(optimizer, warmup, cfg.train.max_steps, o.min_lr_ratio)
    engine, optimizer, _, scheduler = deepspeed.initialize(
        model=module, optimizer=optimizer, lr_scheduler=scheduler, config=deepspeed_config(cfg, grad_accum))
    return engine, optimizer, scheduler
