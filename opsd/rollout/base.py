"""The generation-backend interface shared by the HF (CPU/reference) and vLLM backends."""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

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
    Single-turn and agentic rollouts share this type (:class:`RolloutLoop`): the trainer reads the
    same fields from both.
    """

    prompt_ids: List[List[int]]
    response_ids: List[List[int]]
    finished: List[bool]
    prompt_index: List[int]  # which input prompt each sample came from
    # Filled by a rollout loop (:class:`RolloutLoop`), not by a backend:
    rewards: Optional[List[float]] = None  # per sample; None: no reward function
    response_mask: Optional[List[List[int]]] = None  # per response token 1 = sampled (trained); None: all
    token_roles: Optional[List[List[int]]] = None  # per response token, an int role label (metrics per role)
    rows: Optional[List[dict]] = None  # per sample, the data row its prompt came from

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
    # True where every rank must make the same generate calls, each with the same number of batches
    # (a ZeRO-3-partitioned student gathers its parameters in every forward). The agent loop then runs
    # a turn on every rank while any rank has a live episode, with an empty prompt list where none is
    # left; such a backend accepts an empty list and still joins the other ranks' forwards.
    lockstep: bool = False

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


class RolloutLoop(ABC):
    """A kind of rollout: data rows -> :class:`Rollouts` with rewards (and, for episodes, response
    masks and token roles). The trainer picks one from the config (:func:`opsd.rollout.make_loop`)
    and never asks which kind it runs: single-turn generation (:class:`SingleTurn`) and the agent
    loop (:class:`opsd.rollout.agent.AgentLoop`) are two of them; a third kind is one new class.

    ``backend`` is set after construction (the trainer builds the rollout engine after the student).
    """

    backend: Optional[RolloutBackend] = None
    group_names: Dict[int, str] = {}  # names of ``token_roles`` labels (per-group loss metrics)
    max_new_tokens: int = 256
    scored: bool = True  # run() fills ``rewards`` (what accuracy needs)

    @abstractmethod
    def load_rows(self, files: Sequence[str]):
        """The data set of ``files`` as this kind reads it: ``len()`` and ``batch(indices) -> rows``."""

    @abstractmethod
    def run(self, rows: Sequence[dict], sampling: SamplingConfig) -> Rollouts:
        """``sampling.n`` rollouts per row (sample ``i * n + j`` is the j-th of row i), scored."""

    @abstractmethod
    def with_backend(self, backend: RolloutBackend) -> "RolloutLoop":
        """The same loop generating with another backend (e.g. the teacher, for its accuracy)."""

    def step_metrics(self, rollouts: Rollouts, world: int) -> Dict[str, float]:
        """Metrics of the step's rollouts over all ``world`` ranks (collective: every rank calls it)."""
        return {}

    def failure(self, rollouts: Rollouts, metrics: Dict[str, float]) -> Optional[str]:
        """Why the step must not train on these rollouts (the trainer stops with it), or None."""
        return None

    def close(self) -> None:
        """Free what the loop holds (an environment's sandbox); the backend is closed by its owner."""


class SingleTurn(RolloutLoop):
    """One response per prompt, scored by ``reward_fn(text, answer)`` (rows without an answer: 0)."""

    def __init__(self, tokenizer, reward_fn: Optional[Callable[[str, str], float]], max_new_tokens: int,
                 load_rows: Optional[Callable] = None, backend: Optional[RolloutBackend] = None):
        self.tokenizer, self.reward_fn, self.max_new_tokens = tokenizer, reward_fn, max_new_tokens
        self._load_rows, self.backend = load_rows, backend
        self.scored = reward_fn is not None

    def load_rows(self, files):
        return self._load_rows(files)

    def run(self, rows, sampling):
        out = self.backend.generate([r["prompt_ids"] for r in rows], sampling)
        out.rows = [rows[i] for i in out.prompt_index]
        if self.reward_fn is not None:
            texts = self.tokenizer.batch_decode(out.response_ids, skip_special_tokens=True)
            answers = [r.get("answer") for r in out.rows]
            out.rewards = [float(self.reward_fn(t, a)) if a is not None else 0.0 for t, a in zip(texts, answers)]
        return out

    def with_backend(self, backend):
        return SingleTurn(self.tokenizer, self.reward_fn, self.max_new_tokens, self._load_rows, backend)
