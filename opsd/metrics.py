"""Run logging: console lines and a progress bar, a JSONL metrics file, optional wandb, and
peak memory per step (CUDA max allocated on GPU, peak RSS on CPU)."""
from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Optional

import torch

log = logging.getLogger("opsd")


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    else:
        try:  # Linux: writing 5 to clear_refs resets the peak RSS (VmHWM) of this process
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            pass


def peak_memory_gb(device: torch.device) -> float:
    """Peak since the last reset: CUDA max allocated, or the process's peak RSS on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 30
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 2 ** 20  # kB -> GiB
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20


class MetricsLogger:
    """Rank 0 writes ``metrics.jsonl`` (one JSON object per step) and, when enabled, wandb."""

    def __init__(self, output_dir: str, cfg_dict: dict, enabled: bool = True, use_wandb: bool = False,
                 project: str = "opsd", run_name: Optional[str] = None, resume: bool = False):
        self.enabled = enabled
        self.path = Path(output_dir) / "metrics.jsonl"
        self.wandb = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not resume and self.path.exists():
            self.path.unlink()
        if use_wandb:
            try:
                import wandb
            except ImportError:
                raise ImportError("logging.wandb=true needs `pip install wandb`") from None
            # Offline unless the user configured an account; never block a run on the network.
            if not os.environ.get("WANDB_API_KEY") and "WANDB_MODE" not in os.environ:
                os.environ["WANDB_MODE"] = "offline"
            self.wandb = wandb.init(project=project, name=run_name, config=cfg_dict, dir=output_dir,
                                    resume="allow" if resume else None)

    def truncate_after(self, step: int) -> None:
        """On resume, drop lines of steps after the checkpoint (they will be recomputed)."""
        if not (self.enabled and self.path.exists()):
            return
        keep = [l for l in self.path.read_text().splitlines() if l.strip() and json.loads(l).get("step", 0) <= step]
        self.path.write_text("".join(k + "\n" for k in keep))

    def log(self, metrics: dict) -> None:
        if not self.enabled:
            return
        row = {"time": round(time.time(), 3), **{k: _plain(v) for k, v in metrics.items()}}
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        if self.wandb is not None:
            self.wandb.log(row, step=int(metrics.get("step", 0)))

    def close(self) -> None:
        if self.wandb is not None:
            self.wandb.finish()


def combine_ranks(per_rank: list) -> dict:
    """One step's figures of every rank -> the run's: counts (keys ending in ``bytes``, ``tokens``,
    ``sequences``) add up; seconds (``_s``) take the slowest rank; anything else (shares, means)
    is the mean over the ranks that report it. For the components' own metrics (a served teacher's,
    a teacher pool's, a cross-tokenizer teacher's row shares), which each rank computes alone."""
    out = {}
    for k in sorted({k for m in per_rank for k in m}):
        vals = [float(m[k]) for m in per_rank if k in m]
        if k.endswith(("bytes", "tokens", "sequences")):
            out[k] = sum(vals)
        elif k.endswith("_s"):
            out[k] = max(vals)
        else:
            out[k] = sum(vals) / len(vals)
    return out


def gather_metrics(local: dict) -> dict:
    """:func:`combine_ranks` over all ranks (a collective: every rank calls it); a world of one
    returns ``local``."""
    import torch.distributed as dist

    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return local
    per_rank = [None] * dist.get_world_size()
    dist.all_gather_object(per_rank, local)
    return combine_ranks(per_rank)


def _plain(v):
    if isinstance(v, torch.Tensor):
        return v.item() if v.numel() == 1 else v.tolist()
    if isinstance(v, float):
        return round(v, 6) if v == v and abs(v) != float("inf") else str(v)
    return v


def format_line(m: dict) -> str:
    keys = [("step", "{:d}"), ("loss", "{:.4f}"), ("reverse_kl", "{:.4f}"), ("accuracy", "{:.3f}"),
            ("grad_norm", "{:.3f}"), ("lr", "{:.2e}"), ("kept_frac", "{:.2f}"), ("peak_mem_gb", "{:.2f}"),
            ("step_time_s", "{:.1f}")]
    return "  ".join(f"{k}={fmt.format(m[k])}" for k, fmt in keys if isinstance(m.get(k), (int, float)))
