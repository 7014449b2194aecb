"""Atomic checkpoints, resume, and export to a plain HF folder.

A checkpoint is written into ``checkpoints/.tmp-step_N`` and renamed to ``checkpoints/step_N``
only once every rank has finished writing; resume only considers ``step_N`` folders that hold
the ``COMPLETE`` marker, so a killed save never leaves a half checkpoint that resume picks up.
"""
from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.distributed as dist

from opsd.weight_sync import iter_hf_weights

STEP_RE = re.compile(r"^step_(\d+)$")
MARKER = "COMPLETE"


def _barrier():
    if dist.is_initialized():
        dist.barrier()


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(root: str, step: int, engine, trainer_state: dict, keep: int = 2) -> Path:
    """Write ``root/checkpoints/step_{step}`` atomically on all ranks; returns its path."""
    ckdir = Path(root) / "checkpoints"
    final, tmp = ckdir / f"step_{step}", ckdir / f".tmp-step_{step}"
    if _rank() == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    _barrier()
    engine.save_checkpoint(str(tmp), tag="engine")  # model, optimizer, scheduler (every rank's shard)
    torch.save(rng_state(), tmp / f"rng_rank{_rank()}.pt")
    if _rank() == 0:
        (tmp / "trainer_state.json").write_text(json.dumps(trainer_state, indent=1))
    _barrier()
    if _rank() == 0:
        (tmp / MARKER).write_text(str(step))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)  # atomic on one file system
        _prune(ckdir, keep)
    _barrier()
    return final


def _prune(ckdir: Path, keep: int) -> None:
    for old in list_complete(ckdir)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)


def list_complete(ckdir: Path) -> list:
    if not ckdir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in ckdir.iterdir()
             if (m := STEP_RE.match(p.name)) and (p / MARKER).is_file()]
    return [p for _, p in sorted(found)]


def find_resume(root: str, resume: str) -> Optional[Path]:
    """The checkpoint to resume from: ``auto`` = latest complete one, ``never`` = none."""
    if resume == "never":
        return None
    if resume != "auto":
        p = Path(resume)
        if not (p / MARKER).is_file():
            raise FileNotFoundError(f"train.resume={resume}: not a complete checkpoint (no {MARKER} marker)")
        return p
    found = list_complete(Path(root) / "checkpoints")
    return found[-1] if found else None


def load(path: Path, engine) -> dict:
    """Restore engine (model, optimizer, scheduler) and this rank's RNG; return trainer state."""
    engine.load_checkpoint(str(path), tag="engine", load_optimizer_states=True, load_lr_scheduler_states=True)
    rng_file = path / f"rng_rank{_rank()}.pt"
    if rng_file.is_file():
        set_rng_state(torch.load(rng_file, weights_only=False))
    return json.loads((path / "trainer_state.json").read_text())


def export_hf(model, tokenizer, out_dir: str, zero_stage: int) -> None:
    """Write the student as a plain HF folder (rank 0), gathering ZeRO-3 shards module by module
    (:func:`opsd.weight_sync.iter_hf_weights`, collective: every rank runs it). The files hold what
    a plain ``save_pretrained`` writes: one name per tied parameter, no non-persistent buffers."""
    state = {}
    for name, tensor in iter_hf_weights(model, zero_stage, include_tied=False):
        if _rank() == 0:
            state[name] = tensor.detach().cpu().clone()
    if _rank() == 0:
        tmp = Path(str(out_dir) + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(tmp, state_dict=state)
        tokenizer.save_pretrained(tmp)
        shutil.rmtree(out_dir, ignore_errors=True)
        os.replace(tmp, out_dir)
    _barrier()
