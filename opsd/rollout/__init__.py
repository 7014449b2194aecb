"""Rollout backends behind one interface (:class:`RolloutBackend`)."""
from opsd.rollout.base import Rollouts, RolloutBackend, SamplingConfig


def make_backend(cfg, model, tokenizer, model_path: str = None) -> RolloutBackend:
    """The backend named by ``cfg.backend`` (a :class:`opsd.config.RolloutConfig`)."""
    if cfg.backend == "hf":
        from opsd.rollout.hf import HFGenerateBackend

        return HFGenerateBackend(model, tokenizer, batch_size=cfg.batch_size)
    if cfg.backend == "vllm":
        try:
            from opsd.rollout.vllm_backend import VLLMBackend
        except ImportError as e:
            raise ImportError(f"rollout.backend=vllm needs vLLM installed ({e})") from e
        return VLLMBackend(model_path, tokenizer, cfg)
    raise ValueError(f"rollout.backend={cfg.backend!r} is unknown; choose hf or vllm")


__all__ = ["Rollouts", "RolloutBackend", "SamplingConfig", "make_backend"]
