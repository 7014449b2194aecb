"""The OPD training loop: ``setup()`` -> ``train()`` -> ``cleanup()``.

One optimizer step (DESIGN.md, "The data path of one training step"):

1. ``rollout``: this rank's prompts -> student samples (HF generate or vLLM)
2. ``reward``: optional verifiable reward per sample (accuracy; reward-weighted distillation)
3. ``teacher_phase``: frozen teacher scores every micro-batch (then may be offloaded)
4. ``update``: per micro-batch, :class:`opsd.distill.DistillModule` does the student forward,
   the statistics pass, the loss hook and the grad pass; backward; one optimizer step
5. weight sync to the rollout engine, metrics, checkpoint

Loss aggregation. The loss is the token-mean over the **global** batch (all ranks and
micro-batches), not a mean of per-rank means: ranks hold different numbers of response tokens.
Each micro-batch contributes ``(N_mb / N) * sum_{t in S_mb} w_t d_t / |S_mb|`` with counts summed
over ranks (N: response tokens of the step, N_mb: of this micro-batch index, S_mb: tokens the hook
kept); with the default hook (all tokens, w = 1) this is exactly ``sum_t d_t / N`` (TIP Eq. 1).
DeepSpeed averages gradients over ranks and we call ``backward(scale_wrt_gas=False)``, so the
local loss is multiplied by the world size to turn that average into the sum. How sequences are
grouped into micro-batches (:mod:`opsd.packing`: a sequence count or a token budget, padded or
packed) therefore does not change the default hook's loss or gradient; a selecting hook ranks
tokens within each micro-batch index, so its choice depends on the grouping.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import time
from pathlib import Path
from typing import List, Optional

import torch
import torch.distributed as dist

from opsd import checkpoint, hooks
from opsd.config import Config, ConfigError
from opsd.engine import all_gather_host, all_reduce_host, build_engine, init_distributed, pick_device, rank, world_size
from opsd.losses import take_fallback_rows
from opsd.metrics import MetricsLogger, format_line, peak_memory_gb, reset_peak_memory
from opsd.rollout import RolloutEngineError, SamplingConfig, WeightSyncError, make_backend

log = logging.getLogger("opsd")


def _seed(*parts) -> int:
    return int(hashlib.sha256(repr(parts).encode()).hexdigest()[:8], 16)


def load_reward_fn(spec: Optional[str]):
    """``"module:function"`` -> callable(response_text, answer) -> float."""
    if not spec:
        return None
    import importlib

    mod, _, fn = spec.partition(":")
    try:
        return getattr(importlib.import_module(mod), fn)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"loss.reward_fn={spec!r} cannot be imported ({e}); expected 'module:function'") from None


class TrainingAborted(RuntimeError):
    """The run stopped on a rollout-engine or weight-sync failure; the message names the step and
    the checkpoint to resume from (``opsd.train`` prints it and exits with status 1)."""


class Trainer:
    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.step = 0
        self.resumed_from: Optional[Path] = None
        self._backend_asleep = False
        self.plugin_handles = []

    # ------------------------------------------------------------------ setup

    def setup(self) -> "Trainer":
        from opsd import data, models
        from opsd.distill import DistillModule
        from opsd.teacher import build_teacher

        cfg = self.cfg
        self.device = pick_device(cfg.engine.device)
        init_distributed(self.device)
        self.rank, self.world = rank(), world_size()
        self._check_batch_shape()
        self.out_dir = Path(cfg.train.output_dir)
        self._activate_plugins()

        tok_path = cfg.model.tokenizer or cfg.model.student
        self.tokenizer = models.load_tokenizer(tok_path, cfg.model.trust_remote_code)
        models.check_same_tokenizer(self.tokenizer, cfg.model.teacher, cfg.model.trust_remote_code)
        self.env, self.agent = None, None
        if cfg.rollout.environment:  # agentic rollouts: rows go to the environment (opsd.environment)
            from opsd.environment import load_environment

            self.env = load_environment(cfg.rollout.environment, cfg.rollout.environment_options)
        self.train_data = self._prompts(cfg.data.train_files)
        self.sampler = data.PromptSampler(len(self.train_data), cfg.train.prompts_per_step, self.rank, self.world,
                                          seed=cfg.train.seed, shuffle=cfg.data.shuffle)
        self.eval_data = self._prompts(cfg.train.eval_files) if cfg.train.eval_files else None
        self.reward_fn = load_reward_fn(cfg.loss.reward_fn)

        student = models.load_causal_lm(cfg.model.student, cfg.model.dtype, cfg.model.attn_implementation,
                                        cfg.model.trust_remote_code)
        if cfg.model.gradient_checkpointing:
            student.gradient_checkpointing_enable()
        self.teacher = build_teacher(cfg, self.device, lambda: models.load_causal_lm(
            cfg.model.teacher, cfg.model.dtype, cfg.model.attn_implementation, cfg.model.trust_remote_code))
        self.vocab_size = models_vocab(student, self.teacher.model, self.tokenizer)
        self._check_layout(student)
        module = DistillModule(student.to(self.device), self.vocab_size, cfg.loss.type, cfg.loss.jsd_beta,
                               cfg.loss.chunk_size, cfg.loss.impl, cfg.engine.zero_stage)
        self.engine, self.optimizer, self.scheduler = build_engine(module, cfg, self.grad_accum)
        self.student = self.engine.module.model
        self.backend = make_backend(cfg.rollout, self.student, self.tokenizer, cfg.model.student,
                                    dtype=cfg.model.dtype, seed=cfg.train.seed)
        self.sampling = SamplingConfig(cfg.rollout.temperature, cfg.rollout.top_p, cfg.rollout.top_k,
                                       cfg.rollout.max_new_tokens, cfg.rollout.n)
        if self.env is not None:
            from opsd.rollout.agent import ROLE_NAMES, AgentConfig, AgentLoop

            self.engine.module.group_names = dict(ROLE_NAMES)

            try:
                self.agent = AgentLoop(self.backend, self.tokenizer, self.env,
                                       AgentConfig.from_rollout(cfg.rollout, cfg.data.enable_thinking))
            except ValueError as e:  # unknown parser, a template without tool support
                raise ConfigError(f"rollout.environment={cfg.rollout.environment}: {e}") from None

        resume_from = checkpoint.find_resume(str(self.out_dir), cfg.train.resume)
        self.logger = MetricsLogger(str(self.out_dir), cfg.to_dict(), enabled=self.rank == 0,
                                    use_wandb=cfg.logging.wandb, project=cfg.logging.wandb_project,
                                    run_name=cfg.logging.run_name or self.out_dir.name,
                                    resume=resume_from is not None)
        if self.rank == 0:
            cfg.save(self.out_dir / "config.yaml")
        if resume_from is not None:
            self._resume(resume_from)
        log.info("selector: %s | world size %d | %d micro-batches/step | ZeRO-%d | device %s",
                 hooks.active_selector_name(), self.world, self.grad_accum, cfg.engine.zero_stage, self.device)
        return self

    def _prompts(self, files):
        from opsd.data import EpisodeRows, PromptDataset

        if self.env is not None:
            return EpisodeRows.from_files(files)
        d = self.cfg.data
        return PromptDataset.from_files(files, self.tokenizer, d.max_prompt_length, prompt_field=d.prompt_field,
                                        answer_field=d.answer_field, messages_field=d.messages_field,
                                        system_prompt=d.system_prompt, prompt_template=d.prompt_template,
                                        enable_thinking=d.enable_thinking)

    def _check_batch_shape(self) -> None:
        t, r, e = self.cfg.train, self.cfg.rollout, self.cfg.engine
        if t.prompts_per_step % self.world:
            raise ConfigError(f"train.prompts_per_step={t.prompts_per_step} must be divisible by the world "
                              f"size {self.world}")
        if r.backend == "vllm" and self.world % r.tensor_parallel_size:
            raise ConfigError(f"rollout.tensor_parallel_size={r.tensor_parallel_size} does not divide the "
                              f"world size {self.world}")
        self.seqs_per_rank = t.prompts_per_step // self.world * r.n
        # with engine.micro_batch_tokens the count varies by step; update() sets the step boundary
        self.grad_accum = math.ceil(self.seqs_per_rank / e.micro_batch_size)

    def _check_layout(self, student) -> None:
        """``engine.packing`` needs attention that honours packed position ids, checked on the loaded
        models (transformers picks one when model.attn_implementation is unset; sdpa is switched to
        per-sequence sdpa, :mod:`opsd.varlen_attention`); logs the sharded teacher's share of
        parameter bytes on this rank."""
        from opsd import packing

        if self.cfg.engine.packing:
            packing.prepare_attention(student, "student")
            packing.prepare_attention(self.teacher.model, "teacher")
        if self.teacher.sharding == "zero3":
            local, full = self.teacher.param_bytes()
            head = self.teacher.head_weight.numel() * self.teacher.head_weight.element_size()
            log.info("teacher: ZeRO-3 sharded over %d ranks; %.3f of %.3f GiB of parameters on this rank "
                     "(+ %.3f GiB head replica)", self.world, local / 2 ** 30, full / 2 ** 30, head / 2 ** 30)

    def _activate_plugins(self) -> None:
        from opsd.plugins import registry

        for name, section in self.cfg.plugins.items():
            self.plugin_handles.append(registry().sections[name].activate(section, self.cfg))

    def _resume(self, path: Path) -> None:
        state = checkpoint.load(path, self.engine)
        self.step = state["step"]
        self.resumed_from = path
        self.sampler.load_state_dict(state["sampler"])
        extra = path / "extra_state.pt"
        if extra.is_file() and hasattr(hooks.select_tokens, "load_state_dict"):
            hooks.select_tokens.load_state_dict(torch.load(extra, weights_only=False)["hook"])
        self.logger.truncate_after(self.step)
        log.info("resumed from %s at step %d", path, self.step)

    # ------------------------------------------------------------------ the loop

    def train(self) -> dict:
        from tqdm.auto import tqdm

        cfg = self.cfg
        summary = {}
        if self.eval_data is not None and self.step == 0:
            summary["accuracy_before"] = self.evaluate()
            self.logger.log({"step": 0, "eval/accuracy": summary["accuracy_before"]})
        bar = tqdm(total=cfg.train.max_steps, initial=self.step, disable=not (cfg.logging.progress and self.rank == 0),
                   desc="opd", dynamic_ncols=True)
        while self.step < cfg.train.max_steps:
            with self._engine_guard(f"step {self.step + 1}"):
                metrics = self.train_step()
            self.step += 1
            metrics["step"] = self.step
            if self.eval_data is not None and cfg.train.eval_every and self.step % cfg.train.eval_every == 0:
                metrics["eval/accuracy"] = self.evaluate()
            self.logger.log(metrics)
            bar.update(1)
            bar.set_postfix(loss=f"{metrics['loss']:.4f}", acc=metrics.get("accuracy", float("nan")))
            if self.rank == 0 and cfg.logging.log_every and self.step % cfg.logging.log_every == 0:
                bar.write(format_line(metrics))
            if (cfg.train.save_every and self.step % cfg.train.save_every == 0) or self.step == cfg.train.max_steps:
                self.save()
        bar.close()
        if self.eval_data is not None:
            summary["accuracy_after"] = self.evaluate()
            self.logger.log({"step": self.step, "eval/accuracy": summary["accuracy_after"]})
        if cfg.train.export:
            checkpoint.export_hf(self.student, self.tokenizer, str(self.out_dir / "export"), cfg.engine.zero_stage)
        return summary

    def train_step(self) -> dict:
        t0 = time.time()
        reset_peak_memory(self.device)
        items = self.train_data.batch(self.sampler.next_batch())
        rollouts, gen_s = self.rollout(items)
        answers = [items[i].get("answer") for i in rollouts.prompt_index]
        rewards = self.reward(rollouts, answers)
        agent_metrics = self._agent_metrics(rollouts) if self.agent is not None else {}
        if agent_metrics:
            self._check_score_errors(rollouts, agent_metrics["agent/score_errors"])
        metrics = self.update(rollouts, rewards)
        metrics.update(gen_time_s=gen_s, step_time_s=time.time() - t0, peak_mem_gb=peak_memory_gb(self.device),
                       lr=self.scheduler.get_last_lr()[0],
                       response_len=rollouts.num_response_tokens / max(1, len(rollouts)))
        if rewards is not None:
            acc = all_reduce_host(torch.tensor([sum(rewards), len(rewards)], dtype=torch.float64))
            metrics["accuracy"] = (acc[0] / acc[1].clamp_min(1)).item()
        metrics.update(agent_metrics)
        return metrics

    def _agent_metrics(self, rollouts) -> dict:
        """Episode metrics over all ranks: per-episode means of turns, tool calls (ok / failed), cut
        episodes, reward and sub-scores; the share of response tokens that are not trained."""
        from opsd.rollout.agent import episode_metrics

        local = episode_metrics(rollouts)
        keys = sorted(local)
        if self.world > 1:  # sub-score names may differ between ranks: agree on the union first
            names = [None] * self.world
            dist.all_gather_object(names, keys)
            keys = sorted(set(k for ks in names for k in ks))
        tot = all_reduce_host(torch.tensor([local.get(k, 0.0) for k in keys], dtype=torch.float64))
        m = dict(zip(keys, tot.tolist()))
        n = max(m.pop("episodes"), 1.0)
        sampled, total = m.pop("sampled_tokens"), m.pop("response_tokens")
        scored = {k[len("scored/"):]: m.pop(k) for k in list(m) if k.startswith("scored/")}
        out = {f"agent/{k}": v / (scored[k[6:]] if k.startswith("score/") else n) for k, v in m.items()}
        out.update({f"agent/score_missing/{k}": 1.0 - c / n for k, c in scored.items()})
        out["agent/masked_share"] = 1.0 - sampled / total if total else 0.0
        return out

    def _check_score_errors(self, rollouts, share: float) -> None:
        """Past ``rollout.max_score_error_share`` of episodes whose scorer raised, stop (every rank
        sees the same all-reduced share, so every rank stops) before the step trains on them."""
        limit = self.cfg.rollout.max_score_error_share
        if share <= limit:
            return
        errors = [e.score_error for e in rollouts.episodes if e.score_error is not None]
        raise TrainingAborted(
            f"step {self.step + 1}: the environment's scorer raised on {share:.1%} of the episodes, more than "
            f"rollout.max_score_error_share={limit:g}" + (f" (first on this rank: {errors[0]})" if errors else "")
            + f"\nStopped without training step {self.step + 1}; {self._resume_hint()}")

    def rollout(self, items: List[dict]):
        """Samples of the current policy for this rank's prompts (seeded per step and rank)."""
        t = time.time()
        torch.manual_seed(_seed(self.cfg.train.seed, self.step, self.rank))
        self.sampling.seed = _seed(self.cfg.train.seed, self.step, self.rank)

        def generate():
            self._wake_backend()
            if self.agent is not None:
                return self.agent.run(items, self.sampling)
            return self.backend.generate([it["prompt_ids"] for it in items], self.sampling)

        rollouts = self._on_every_rank(generate)
        return rollouts, time.time() - t

    _FAILURES = (RolloutEngineError, WeightSyncError)

    def _on_every_rank(self, fn):
        """Run ``fn``; a rollout-engine or weight-sync failure on any rank is raised on every rank
        (one small all-gather per call when the world is > 1), so that no rank is left waiting in
        the next collective while another one stops. Inside vLLM's own collectives (TP > 1) a dead
        worker can still hang its TP group: there the launcher's timeout is the backstop."""
        err, out = None, None
        try:
            out = fn()
        except self._FAILURES as e:
            err = e
        if self.world > 1:
            code = 0 if err is None else 1 if isinstance(err, RolloutEngineError) else 2  # _FAILURES[code - 1]
            codes = [int(c.item()) for c in all_gather_host(torch.tensor([code], dtype=torch.long))]
            failed = [(r, c) for r, c in enumerate(codes) if c]
            if failed and err is None:
                r, c = failed[0]
                raise self._FAILURES[c - 1](f"on rank {r} of {self.world} (its own log has the cause); "
                                            f"rank {self.rank} stops with it")
        if err is not None:
            raise err
        return out

    def reward(self, rollouts, answers) -> Optional[List[float]]:
        if self.agent is not None:  # the environment scored each episode
            return rollouts.rewards
        if self.reward_fn is None:
            return None
        texts = self.tokenizer.batch_decode(rollouts.response_ids, skip_special_tokens=True)
        return [float(self.reward_fn(t, a)) if a is not None else 0.0 for t, a in zip(texts, answers)]

    def update(self, rollouts, rewards) -> dict:
        from opsd.data import build_sequences

        agentic = self.agent is not None
        seq = build_sequences(rollouts.prompt_ids, rollouts.response_ids, self.tokenizer.pad_token_id,
                              self.tokenizer.eos_token_id, response_masks=rollouts.response_mask if agentic else None,
                              token_groups=rollouts.token_roles if agentic else None)
        seq["loss_mask"] = seq["loss_mask"].long()
        batches = self.micro_batches(seq)
        counts = torch.tensor([float(b["loss_mask"].sum()) for b in batches], dtype=torch.float64)
        counts = all_reduce_host(counts)  # (n_micro,) response tokens per micro-batch index, all ranks
        n_step = float(counts.sum())
        metrics = {"empty_responses": seq["num_empty_responses"]}
        if seq["num_empty_responses"]:  # documented skip: such samples contribute no loss position
            log.info("step %d: %d empty responses have no loss tokens", self.step + 1, seq["num_empty_responses"])
        if n_step == 0:  # documented skip: nothing to learn from, no optimizer step
            log.warning("step %d: every response token is masked (empty responses); step skipped", self.step + 1)
            return {**metrics, "loss": 0.0, "skipped": 1}
        token_w = self.reward_token_weights(seq["loss_mask"], rewards, n_step)

        from opsd.packing import padding_tokens, row_slices, take_tokens

        row_tokens = row_slices(seq["loss_mask"])  # each row's part of the flat token weights
        self._sleep_backend()  # training phase: teacher forward + student update
        sources = self.teacher_phase(batches)
        totals, diag_parts = torch.zeros(8, dtype=torch.float64), []
        skipped_before = self.engine.skipped_steps
        for i, (b, src) in enumerate(zip(batches, sources)):
            dev = self.device
            # One optimizer step per update, at the last micro-batch: their number varies by step
            # with a token budget, while DeepSpeed's gradient_accumulation_steps is fixed at setup.
            self.engine.set_gradient_accumulation_boundary(i == len(batches) - 1)
            loss_sum, stats, sel, kept = self.engine(b["input_ids"].to(dev), _to(b["attention_mask"], dev),
                                                     b["loss_mask"].to(dev), src,
                                                     take_tokens(token_w, row_tokens, b["rows"]),
                                                     token_groups=_to(b.get("token_groups"), dev),
                                                     position_ids=_to(b["position_ids"], dev))
            scale = float(counts[i]) / (n_step * max(kept, 1))
            self.engine.backward(loss_sum * scale * self.world, scale_wrt_gas=False)
            self.engine.step()
            totals += torch.tensor([loss_sum.item() * scale, stats.reverse_kl.sum().item(),
                                    stats.entropy.sum().item(), stats.teacher_entropy.sum().item(), len(sel.indices),
                                    *padding_tokens(b), not b["rows"]], dtype=torch.float64)
            diag_parts.append((sel.diagnostics, float(counts[i]) / n_step))
        self.teacher.load()  # back on the device for the next step's scoring phase (no-op if resident)
        # totals[8]: rows the closed-form loss redid by autograd (opsd.losses, warned once there)
        totals = all_reduce_host(torch.cat([totals, totals.new_tensor([take_fallback_rows()])]))
        metrics.update(micro_batches=len(batches), empty_micro_batches=int(totals[7].item()),
                       padding_frac=totals[5].item() / max(totals[6].item(), 1.0),  # of all ranks' token slots
                       loss_fallback_rows=int(totals[8].item()))
        self._on_every_rank(self._sync_weights)
        grad_norm = self.engine.get_global_grad_norm()
        metrics.update(loss=totals[0].item(), reverse_kl=totals[1].item() / n_step, entropy=totals[2].item() / n_step,
                       teacher_entropy=totals[3].item() / n_step, kept_frac=totals[4].item() / n_step,
                       tokens=n_step, grad_norm=float(grad_norm) if grad_norm is not None else float("nan"),
                       skipped=int(self.engine.skipped_steps > skipped_before),
                       **hooks.aggregate_diagnostics(diag_parts))
        if metrics["skipped"]:
            log.warning("step %d: non-finite gradient norm; optimizer step skipped", self.step + 1)
        return metrics

    def micro_batches(self, seq: dict) -> list:
        """This rank's micro-batches of the step (:mod:`opsd.packing`): ``engine.micro_batch_size``
        sequences or ``engine.micro_batch_tokens`` tokens each, padded or packed. Every rank gets the
        same number (empty micro-batches fill up the shorter plans): each forward and backward
        holds collectives."""
        from opsd import packing

        e = self.cfg.engine
        lengths = seq["attention_mask"].sum(dim=1).tolist()  # (B,) prompt + response tokens
        if e.micro_batch_tokens:
            plan, oversize = packing.plan_by_tokens(lengths, e.micro_batch_tokens, e.packing)
            if oversize:
                log.info("step %d: %d sequence(s) longer than engine.micro_batch_tokens=%d (longest %d tokens) "
                         "got a micro-batch of their own", self.step + 1, len(oversize), e.micro_batch_tokens,
                         max(lengths[i] for i in oversize))
        else:
            plan = packing.plan_by_count(len(lengths), e.micro_batch_size)
        n = int(all_reduce_host(torch.tensor([len(plan)]), op=dist.ReduceOp.MAX).item())
        plan += [[] for _ in range(n - len(plan))]
        return [packing.collate(seq, rows, self.tokenizer.pad_token_id, e.packing) for rows in plan]

    def teacher_phase(self, batches: list) -> list:
        """Teacher scores every micro-batch first (two-phase); the teacher may then be offloaded."""
        self.teacher.load()
        sources = [self.teacher.score(b["input_ids"], b["attention_mask"], b["loss_mask"], self.vocab_size,
                                      b["position_ids"]) for b in batches]
        self.teacher.offload()
        return sources

    def reward_token_weights(self, loss_mask: torch.Tensor, rewards, n_step: float) -> Optional[torch.Tensor]:
        """Reward-weighted distillation: per-sample ``w_i = B softmax(r / beta)_i`` over the global
        batch, sample loss = its token mean, batch loss = sum_i w_i L_i / sum_i w_i. Expressed as
        per-token weights ``w_i * N / (T_i * B)`` so the token-mean machinery computes it exactly.
        Samples without a loss token (empty responses) have no L_i: they are left out of the
        softmax and of B, so they do not dilute the batch loss."""
        beta = self.cfg.loss.reward_beta
        if beta is None or rewards is None:
            return None
        local = torch.tensor(rewards, dtype=torch.float64)
        all_r = _gather_varlen(local)
        has = _gather_varlen((loss_mask.sum(dim=1) > 0).double())  # (B_global,) 1 = has a loss token
        # softmax over the samples with a loss only (same ratios; no 0/0 if the rest underflows)
        w_all = has.sum() * torch.softmax((all_r / beta).masked_fill(has == 0, float("-inf")), dim=0)
        offset = _rank_offset(len(local))
        w = w_all[offset:offset + len(local)]
        t_i = loss_mask.sum(dim=1).double().clamp_min(1)  # (B,) tokens per sample
        per_sample = w * n_step / (t_i * has.sum())
        return per_sample.repeat_interleave(loss_mask.sum(dim=1)).float()

    def _sync_weights(self) -> None:
        weights = self.named_student_weights()
        try:
            self.backend.sync_weights(weights)
        finally:  # a sync that stopped part-way finishes the ZeRO-3 gathers in step with the other ranks
            for _ in weights:
                pass

    def named_student_weights(self):
        from opsd.checkpoint import _iter_full_params

        return _iter_full_params(self.student, self.cfg.engine.zero_stage)

    # ------------------------------------------------------------------ rollout engine phases, failures

    def _sleep_backend(self) -> None:
        """Free the rollout engine's memory for the training phase (``rollout.sleep_level`` 0: never).
        The HF backend's sleep is a no-op; vLLM's sleep mode runs only on GPU (the CPU worker has
        none, so CPU tests exercise this call order with a fake backend, not the memory release)."""
        if self.cfg.rollout.sleep_level > 0 and not self._backend_asleep:
            self.backend.sleep()
            self._backend_asleep = True

    def _wake_backend(self) -> None:
        """Before any ``generate``: undo :meth:`_sleep_backend`. The weight sync of the step already
        ran while asleep (vLLM wakes just the weights for it, GPU-only)."""
        if self._backend_asleep:
            self.backend.wake()
            self._backend_asleep = False

    @contextlib.contextmanager
    def _engine_guard(self, where: str):
        """Rollout-engine and weight-sync failures -> :class:`TrainingAborted` naming ``where`` and the
        checkpoint to resume from. Nothing is saved after such a failure: the failed step's optimizer
        update exists only in memory and the engine may hold partly synced weights. With several
        ranks, :meth:`_on_every_rank` raises a failure seen by one rank on all of them."""
        try:
            yield
        except self._FAILURES as e:
            what = "the rollout engine failed" if isinstance(e, RolloutEngineError) else "weight sync failed"
            raise TrainingAborted(f"{where}: {what}: {e}\nStopped without saving {where}; "
                                  f"{self._resume_hint()}") from e

    def _resume_hint(self) -> str:
        found = checkpoint.list_complete(self.out_dir / "checkpoints")
        last = found[-1] if found else self.resumed_from
        if last is None:
            return ("no checkpoint was written before the failure (train.save_every=N writes one every N "
                    "steps); rerunning starts from step 0")
        return (f"the last intact checkpoint is {last}; rerun the same command to resume from it "
                f"(train.resume=auto picks the latest, or set train.resume={last})")

    # ------------------------------------------------------------------ eval, save, cleanup

    def evaluate(self, model_backend=None) -> float:
        """Accuracy (mean reward) on the held-out prompts, greedy, over all ranks."""
        from opsd.evaluate import accuracy, episode_accuracy

        if self.reward_fn is None and self.agent is None:
            raise ConfigError("train.eval_files needs loss.reward_fn to score answers")
        with self._engine_guard(f"evaluation at step {self.step}"):
            if model_backend is None:
                self._wake_backend()
            if self.agent is not None:
                loop = self.agent if model_backend is None else self.agent.with_backend(model_backend)
                return episode_accuracy(loop, self.eval_data, self.cfg.train.eval_limit, self.rank, self.world,
                                        progress=self.cfg.logging.progress and self.rank == 0)
            return accuracy(model_backend or self.backend, self.tokenizer, self.eval_data, self.reward_fn,
                            max_new_tokens=self.cfg.rollout.max_new_tokens, limit=self.cfg.train.eval_limit,
                            rank=self.rank, world=self.world,
                            progress=self.cfg.logging.progress and self.rank == 0)

    def save(self) -> None:
        state = {"step": self.step, "sampler": self.sampler.state_dict()}
        path = checkpoint.save(str(self.out_dir), self.step, self.engine, state, self.cfg.train.keep_checkpoints)
        if self.rank == 0 and hasattr(hooks.select_tokens, "state_dict"):
            tmp = path / ".extra_state.pt.tmp"
            torch.save({"hook": hooks.select_tokens.state_dict()}, tmp)
            tmp.replace(path / "extra_state.pt")

    def cleanup(self) -> None:
        for handle in reversed(self.plugin_handles):
            handle.remove()
        self.plugin_handles.clear()
        if getattr(self, "backend", None) is not None:  # setup may have failed before the backend
            try:
                self.backend.close()
            except Exception as e:  # a dead engine may fail to shut down; keep the real error visible
                log.warning("closing the rollout backend failed: %s: %s", type(e).__name__, e)
        if getattr(self, "env", None) is not None:
            self.env.close()
        if hasattr(self, "logger"):
            self.logger.close()
        # DeepSpeed's engines hold autograd hooks (C++ objects that reference Python closures over
        # the engine, its parameters and process groups): a reference cycle the garbage collector
        # cannot see, which kept the process groups' gloo threads alive until interpreter exit
        # (opsd.engine.shutdown_distributed). destroy() removes the hooks.
        if getattr(self, "engine", None) is not None and not getattr(self, "_engines_destroyed", False):
            self.engine.destroy()
            if getattr(self, "teacher", None) is not None:
                self.teacher.close()
            self._engines_destroyed = True


def models_vocab(student, teacher, tokenizer) -> int:
    from opsd.losses import align_vocab
    from opsd.teacher import output_rows  # the teacher's head may be ZeRO-3 partitioned

    return align_vocab(output_rows(student), output_rows(teacher), len(tokenizer))


def _to(t: Optional[torch.Tensor], device) -> Optional[torch.Tensor]:
    return None if t is None else t.to(device)


def _gather_varlen(x: torch.Tensor) -> torch.Tensor:
    """Concatenate a 1-D tensor of possibly different lengths from every rank, in rank order."""
    sizes = all_gather_host(torch.tensor([len(x)]))
    m = int(max(s.item() for s in sizes))
    buf = all_gather_host(torch.cat([x, x.new_zeros(m - len(x))]))
    return torch.cat([b[: int(s.item())] for b, s in zip(buf, sizes)])


def _rank_offset(n_local: int) -> int:
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return 0
    sizes = all_gather_host(torch.tensor([n_local]))
    return int(sum(s.item() for s in sizes[: dist.get_rank()]))
