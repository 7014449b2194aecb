"""Rollouts: generation backends behind one interface (:class:`RolloutBackend`: HF generate, vLLM),
and kinds of rollout behind another (:class:`RolloutLoop`: single-turn, the agent loop)."""
from opsd.rollout.base import (RolloutBackend, RolloutEngineError, RolloutLoop, Rollouts, SamplingConfig, SingleTurn,
                               WeightSyncError)


def make_loop(cfg, tokenizer, reward_fn=None) -> RolloutLoop:
    """The kind of rollout of ``cfg`` (a :class:`opsd.config.Config`): the agent loop over the
    environment ``rollout.environment`` when it is set, else single-turn generation scored by
    ``reward_fn``. The backend is attached later (``loop.backend = ...``)."""
    from opsd.config import ConfigError

    r, d = cfg.rollout, cfg.data
    if r.environment:
        from opsd.environment import load_environment
        from opsd.rollout.agent import AgentConfig, AgentLoop

        env = load_environment(r.environment, r.environment_options)
        try:
            return AgentLoop(None, tokenizer, env, AgentConfig.from_rollout(r, d.enable_thinking))
        except ValueError as e:  # unknown parser, a template without tool support
            env.close()
            raise ConfigError(f"rollout.environment={r.environment}: {e}") from None
    from opsd.data import PromptDataset

    def load_rows(files):
        return PromptDataset.from_files(files, tokenizer, d.max_prompt_length, prompt_field=d.prompt_field,
                                        answer_field=d.answer_field, messages_field=d.messages_field,
                                        system_prompt=d.system_prompt, prompt_template=d.prompt_template,
                                        enable_thinking=d.enable_thinking,
                                        keep_fields=[d.teacher_field] if cfg.teachers else [])

    return SingleTurn(tokenizer, reward_fn, r.max_new_tokens, load_rows)


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


__all__ = ["Rollouts", "RolloutBackend", "RolloutEngineError", "RolloutLoop", "SamplingConfig", "SingleTurn",
           "WeightSyncError", "make_backend", "make_loop"]
