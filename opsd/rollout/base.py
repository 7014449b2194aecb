"""The generation-backend interface shared by the HF (CPU/reference) and vLLM backends."""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Iterable, List, Optional, Sequence, Tuple

import torch


class RolloutEngineError(RuntimeError):
    """The generation engine failed mid-run (dead worker, CUDA error, OOM). The trainer stops
    without checkpointing the failed step and names the last intact checkpoint to resume from."""


class WeightSyncError(ValueError):
    """A student tensor does not fit the engine's model (name or shape), or the engine's loader
    failed on it; the message names the parameter. The engine then holds partly updated weights."""


@dataclass
class SamplingConfig:
    """Sampling parameters, identical in meaning for every backend.

    ``top_k <= 0`` disables top-k; ``temperature == 0`` means greedy decoding.
    """

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 256
    n: int = 1  # samples per prompt
    seed: Optional[int] = None


@dataclass
class Rollouts:
    """Generated responses of a batch of prompts.

    Sample ``i * n + j`` is the j-th sample of prompt i. Token lists hold ids only (no padding);
    ``response_ids`` stops at (and includes) the first EOS token when one was generated.
    ``finished[i]`` tells whether sample i ended with EOS (False = cut at max_new_tokens).
    """

    prompt_ids: List[List[int]]
    response_ids: List[List[int]]
    finished: List[bool]
    prompt_index: List[int]  # which input prompt each sample came from

    def __len__(self) -> int:
        return len(self.response_ids)

    @property
    def num_response_tokens(self) -> int:
        return sum(len(r) for r in self.response_ids)


class RolloutBackend(ABC):
    """Generates samples from the current student policy.

    Lifecycle in the trainer, per step: ``generate`` -> ``sleep()`` (unless ``rollout.sleep_level``
    is 0) -> teacher forward and student update -> ``sync_weights(named_tensors)`` after the
    optimizer step (called while asleep: a backend must wake what it needs to load weights) ->
    [checkpoint] -> ``wake()`` right before the next ``generate`` (or an evaluation), so that
    ``generate`` is on-policy. A step skipped before the update (no response tokens) neither
    sleeps nor syncs. Engine failures raise :class:`RolloutEngineError`, sync failures
    :class:`WeightSyncError`; the trainer turns both into a clean stop.
    """

    name: str = "base"

    @abstractmethod
    def generate(self, prompt_ids: Sequence[Sequence[int]], sampling: SamplingConfig) -> Rollouts:
        """Sample ``sampling.n`` responses for each prompt (token ids, chat template applied)."""

    def sync_weights(self, named_tensors: Iterable[Tuple[str, torch.Tensor]]) -> None:
        """Load the student's updated weights (HF parameter names). No-op for backends that share
        the trainer's module."""

    def sleep(self) -> None:
        """Release generation memory for the training phase (no-op by default)."""

    def wake(self) -> None:
        """Undo :meth:`sleep` (no-op by default)."""

    def close(self) -> None:
        """Free resources."""
