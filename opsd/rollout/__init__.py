"""Rollout backends behind one interface (:class:`RolloutBackend`)."""
from opsd.rollout.base import RolloutBackend, RolloutEngineError, Rollouts, SamplingConfig, WeightSyncError


def make_backend(cfg, model, tokenizer, model_path: str = None, dtype: str = "auto",
                 seed: int = 0) -> RolloutBackend:
    """The backend named by ``cfg.backend`` (a :class:`opsd.config.RolloutConfig`).

    ``dtype`` and ``seed`` matter for vLLM only (the HF backend samples from the trainer's own
    module and torch's global RNG): the engine's weight dtype (``model.dtype``; "auto" = the
    checkpoint's) must equal the student's, or synced weights are cast and rollouts drift off
    policy; ``seed`` is ``train.seed``, so two runs with the same config sample the same rollouts.
    """
    if cfg.backend == "hf":
        from opsd.rollout.hf import HFGenerateBackend

        return HFGenerateBackend(model, tokenizer, batch_size=cfg.batch_size)
    if cfg.backend == "vllm":
        try:
            from opsd.rollout.vllm_backend import VLLMBackend
        except ImportError as e:
            raise ImportError(f"rollout.backend=vllm needs vLLM installed ({e})") from e
        return VLLMBackend(model_path, tokenizer, cfg, dtype=dtype, seed=seed)
    raise ValueError(f"rollout.backend={cfg.backend!r} is unknown; choose hf or vllm")


__all__ = ["Rollouts", "RolloutBackend", "RolloutEngineError", "SamplingConfig", "WeightSyncError", "make_backend"]
