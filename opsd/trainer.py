"""The OPD training loop: ``setup()`` -> ``train()`` -> ``cleanup()``.

One optimizer step (DESIGN.md, "The data path of one training step"):

1. ``rollout``: this rank's data rows -> scored student rollouts, through the rollout loop the
   config picks (:class:`opsd.rollout.RolloutLoop`: single-turn generation with an optional
   verifiable reward, or the agent loop's episodes scored by their environment), on the rollout
   backend (HF generate or vLLM)
2. ``update``: rollouts -> micro-batches (:func:`opsd.batching.step_batches`); the teacher scores
   every micro-batch (``teacher_phase``, :mod:`opsd.teacher`: in process, served or with another
   tokenizer); per micro-batch, :class:`opsd.distill.DistillModule` does the student forward, the
   statistics pass, the loss hook and the grad pass; backward; one optimizer step
3. weight sync to the rollout engine, metrics, checkpoint

Loss aggregation. The loss is the token-mean over the **global** batch (all ranks and
micro-batches), not a mean of per-rank means: ranks hold different numbers of response tokens.
Each micro-batch contributes ``(N_mb / N) * sum_{t in S_mb} w_t d_t / |S_mb|`` with counts summed
over ranks (N: response tokens of the step, N_mb: of this micro-batch index, S_mb: tokens the hook
kept); with the default hook (all tokens, w = 1) this is exactly ``sum_t d_t / N`` (TIP Eq. 1).
DeepSpeed averages gradients over ranks and we call ``backward(scale_wrt_gas=False)``, so the
local loss is multiplied by the world size to turn that average into the sum. How sequences are
grouped into micro-batches (:mod:`opsd.batching`: a sequence count or a token budget, padded or
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
from opsd.metrics import MetricsLogger, format_line, gather_metrics, peak_memory_gb, reset_peak_memory
from opsd.rollout import RolloutEngineError, SamplingConfig, WeightSyncError, make_backend, make_loop

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
        self.loop, self._backend = None, None

    @property
    def backend(self):
        """The rollout engine: the rollout loop generates with it, the weight sync and the sleep /
        wake calls go to it. Setting it sets the loop's too (``trainer.loop.backend`` alone changes
        only what generates)."""
        return self._backend

    @backend.setter
    def backend(self, engine) -> None:
        self._backend = engine
        if getattr(self, "loop", None) is not None:
            self.loop.backend = engine

    # ------------------------------------------------------------------ setup

    def setup(self) -> "Trainer":
        from opsd import data, models
        from opsd.distill import DistillModule

        cfg = self.cfg
        self.device = pick_device(cfg.engine.device)
        init_distributed(self.device)
        self.rank, self.world = rank(), world_size()
        self._check_batch_shape()
        self.out_dir = Path(cfg.train.output_dir)
        self._activate_plugins()

        tok_path = cfg.model.tokenizer or cfg.model.student
        self.tokenizer = models.load_tokenizer(tok_path, cfg.model.trust_remote_code)
        self.reward_fn = load_reward_fn(cfg.loss.reward_fn)
        self.loop = make_loop(cfg, self.tokenizer, self.reward_fn)  # single-turn or episodes (opsd.rollout)
        self.train_data = self._prompts(cfg.data.train_files)
        self.sampler = data.PromptSampler(len(self.train_data), cfg.train.prompts_per_step, self.rank, self.world,
                                          seed=cfg.train.seed, shuffle=cfg.data.shuffle)
        self.eval_data = self._prompts(cfg.train.eval_files) if cfg.train.eval_files else None
        if cfg.teachers:  # several teachers: every row's teacher is known before any loads
            from opsd.teachers import routing

            routing(cfg).check_rows(self.train_data)

        student = models.load_causal_lm(cfg.model.student, cfg.model.dtype, cfg.model.attn_implementation,
                                        cfg.model.trust_remote_code)
        if cfg.model.gradient_checkpointing:
            student.gradient_checkpointing_enable()
        self.teacher = build_teacher(cfg, self.device, self.tokenizer)
        self.vocab_size = models_vocab(student, self.teacher.width, self.tokenizer)
        self._check_layout(student)
        module = DistillModule(student.to(self.device), self.vocab_size, cfg.loss.type, cfg.loss.jsd_beta,
                               cfg.loss.chunk_size, cfg.loss.impl, cfg.engine.zero_stage)
        self.engine, self.optimizer, self.scheduler = build_engine(module, cfg, self.grad_accum)
        self.student = self.engine.module.model
        self.backend = make_backend(cfg.rollout, self.student, self.tokenizer, cfg.model.student,
                                    dtype=cfg.model.dtype, seed=cfg.train.seed)
        self.group_names = dict(self.loop.group_names)  # token groups (roles; teachers: opsd.teachers)
        if hasattr(self.teacher, "group_names"):
            self.group_names = self.teacher.group_names(self.group_names)
        self.engine.module.group_names = self.group_names
        self.sampling = SamplingConfig(cfg.rollout.temperature, cfg.rollout.top_p, cfg.rollout.top_k,
                                       cfg.rollout.max_new_tokens, cfg.rollout.n)

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
        """The data set of ``files`` as the rollout loop reads it (prompts, or episode rows)."""
        return self.loop.load_rows(files)

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
        self.teacher.prepare(self.cfg.engine.packing)

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
        loop_metrics = self.loop.step_metrics(rollouts, self.world)
        why = self.loop.failure(rollouts, loop_metrics)
        if why:  # every rank sees the same all-reduced metrics, so every rank stops
            raise TrainingAborted(f"step {self.step + 1}: {why}\nStopped without training step {self.step + 1}; "
                                  f"{self._resume_hint()}")
        metrics = self.update(rollouts)
        metrics.update(gen_time_s=gen_s, step_time_s=time.time() - t0, peak_mem_gb=peak_memory_gb(self.device),
                       lr=self.scheduler.get_last_lr()[0],
                       response_len=rollouts.num_response_tokens / max(1, len(rollouts)))
        if rollouts.rewards is not None:
            acc = all_reduce_host(torch.tensor([sum(rollouts.rewards), len(rollouts.rewards)], dtype=torch.float64))
            metrics["accuracy"] = (acc[0] / acc[1].clamp_min(1)).item()
        metrics.update(loop_metrics)
        return metrics

    def rollout(self, items: List[dict]):
        """Samples of the current policy for this rank's prompts (seeded per step and rank)."""
        t = time.time()
        torch.manual_seed(_seed(self.cfg.train.seed, self.step, self.rank))
        self.sampling.seed = _seed(self.cfg.train.seed, self.step, self.rank)

        def generate():
            self._wake_backend()
            return self.loop.run(items, self.sampling)

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

    def update(self, rollouts) -> dict:
        """One optimizer step on the rollouts: micro-batches, teacher scoring, forward/backward per
        micro-batch, the step's totals over all ranks, weight sync."""
        from opsd.batching import StepTotals, padding_tokens, step_batches

        step = step_batches(rollouts, self.tokenizer.pad_token_id, self.tokenizer.eos_token_id, self.cfg.engine,
                            lambda mask, n: self.reward_token_weights(mask, rollouts.rewards, n))
        if step.oversize:
            log.info("step %d: %d sequence(s) longer than engine.micro_batch_tokens=%d got a micro-batch of "
                     "their own", self.step + 1, len(step.oversize), self.cfg.engine.micro_batch_tokens)
        metrics = {"empty_responses": step.num_empty_responses}
        if step.num_empty_responses:  # documented skip: such samples contribute no loss position
            log.info("step %d: %d empty responses have no loss tokens", self.step + 1, step.num_empty_responses)
        if step.tokens == 0:  # documented skip: nothing to learn from, no optimizer step
            log.warning("step %d: every response token is masked (empty responses); step skipped", self.step + 1)
            return {**metrics, "loss": 0.0, "skipped": 1}

        self._sleep_backend()  # training phase: teacher forward + student update
        sources = self.teacher_phase(step.batches, rollouts.rows)
        if step.count() == 0:  # counted again: the teacher may have left rows out (opsd.teacher)
            log.warning("step %d: the teacher left no response token to train on; step skipped", self.step + 1)
            self.teacher.after_update()
            return {**metrics, "loss": 0.0, "skipped": 1}

        totals, diag_parts, dev = StepTotals(), [], self.device
        groups = GroupTotals(self.group_names)
        skipped_before = self.engine.skipped_steps
        for i, (b, src) in enumerate(zip(step.batches, sources)):
            if hasattr(src, "resolve"):  # still arriving (a served teacher): a failure stops every rank here,
                self._on_every_rank(src.resolve)  # not inside the forward's collectives
            # One optimizer step per update, at the last micro-batch: their number varies by step
            # with a token budget, while DeepSpeed's gradient_accumulation_steps is fixed at setup.
            self.engine.set_gradient_accumulation_boundary(i == len(step.batches) - 1)
            loss_sum, stats, sel, kept = self.engine(b["input_ids"].to(dev), _to(b["attention_mask"], dev),
                                                     b["loss_mask"].to(dev), src, b["token_weights"],
                                                     token_groups=_to(b.get("token_groups"), dev),
                                                     position_ids=_to(b["position_ids"], dev))
            scale = float(step.counts[i]) / (step.tokens * max(kept, 1))
            self.engine.backward(loss_sum * scale * self.world, scale_wrt_gas=False)
            self.engine.step()
            padding, slots = padding_tokens(b)
            totals.add(loss=loss_sum.item() * scale, reverse_kl=stats.reverse_kl.sum().item(),
                       entropy=stats.entropy.sum().item(), teacher_entropy=stats.teacher_entropy.sum().item(),
                       kept=len(sel.indices), padding=padding, slots=slots, empty_micro_batches=float(not b["rows"]))
            diag_parts.append((sel.diagnostics, step.share(i)))
            groups.add(stats)
        self.teacher.after_update()
        redone = take_fallback_rows()  # rows the closed-form loss redid by autograd (warned there)
        totals.add(loss_fallback_rows=redone["loss"], stats_fallback_rows=redone["statistics"])
        totals = totals.all_reduced()
        self._on_every_rank(self._sync_weights)
        grad_norm = self.engine.get_global_grad_norm()
        n = step.tokens
        metrics.update(loss=totals.loss, reverse_kl=totals.reverse_kl / n, entropy=totals.entropy / n,
                       teacher_entropy=totals.teacher_entropy / n, kept_frac=totals.kept / n, tokens=n,
                       micro_batches=len(step.batches), empty_micro_batches=int(totals.empty_micro_batches),
                       padding_frac=totals.padding / max(totals.slots, 1.0),  # of all ranks' token slots
                       loss_fallback_rows=int(totals.loss_fallback_rows),
                       stats_fallback_rows=int(totals.stats_fallback_rows),
                       grad_norm=float(grad_norm) if grad_norm is not None else float("nan"),
                       skipped=int(self.engine.skipped_steps > skipped_before),
                       **hooks.aggregate_diagnostics(diag_parts), **groups.all_reduced(),
                       **gather_metrics(self.teacher.metrics()))
        if metrics["skipped"]:
            log.warning("step %d: non-finite gradient norm; optimizer step skipped", self.step + 1)
        return metrics

    def teacher_phase(self, batches: list, meta: list) -> list:
        """The teacher's logit source of every micro-batch (:meth:`opsd.teacher.Teacher.score_phase`);
        ``meta[j]``: the data row of the step's sequence j."""
        return self.teacher.score_phase(batches, self.vocab_size, meta)

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
        from opsd.weight_sync import iter_hf_weights

        return iter_hf_weights(self.student, self.cfg.engine.zero_stage)

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
            what = getattr(e, "what", None) or (
                "the rollout engine failed" if isinstance(e, RolloutEngineError) else "weight sync failed")
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
        from opsd.evaluate import accuracy

        if not self.loop.scored:
            raise ConfigError("train.eval_files needs loss.reward_fn to score answers")
        with self._engine_guard(f"evaluation at step {self.step}"):
            if model_backend is None:
                self._wake_backend()
            loop = self.loop if model_backend is None else self.loop.with_backend(model_backend)
            return accuracy(loop, self.eval_data, self.cfg.train.eval_limit, self.rank, self.world,
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
        if self.backend is not None:  # setup may have failed before the backend
            try:
                self.backend.close()
            except Exception as e:  # a dead engine may fail to shut down; keep the real error visible
                log.warning("closing the rollout backend failed: %s: %s", type(e).__name__, e)
        if self.loop is not None:
            self.loop.close()
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


class GroupTotals:
    """Per token group (an agent loop's token roles, several teachers' labels: ``group_names``),
    the step's response tokens and their reverse KL, summed over micro-batches and ranks:
    ``group/NAME/tokens`` and ``group/NAME/reverse_kl`` (the group's token mean)."""

    def __init__(self, names: dict):
        self.names = dict(names)
        self.sums = torch.zeros(max(self.names, default=-1) + 1, 2, dtype=torch.float64)

    def add(self, stats) -> None:
        if not self.names or stats.token_group is None or not stats.token_group.numel():
            return
        g = stats.token_group.detach().long().cpu()
        ok = (g >= 0) & (g < self.sums.shape[0])
        vals = torch.stack([torch.ones_like(stats.reverse_kl), stats.reverse_kl.detach()], 1).double().cpu()
        self.sums.index_add_(0, g[ok], vals[ok])

    def all_reduced(self) -> dict:
        if not self.names:
            return {}
        s = all_reduce_host(self.sums.clone())
        out = {}
        for label, name in self.names.items():
            n, kl = s[label].tolist()
            out[f"group/{name}/tokens"] = n
            out[f"group/{name}/reverse_kl"] = kl / n if n else 0.0
        return out


def build_teacher(cfg, device: torch.device, tokenizer):
    """The teacher of ``cfg`` behind :mod:`opsd.teacher`'s interface: several (``teachers:``, :mod:`opsd.teachers`),
    served (``engine.teacher_placement=server``,
    :mod:`opsd.teacher_service`), with another tokenizer (``model.teacher_tokenizer``,
    :mod:`opsd.xtok`), or in process (:func:`load_teacher`, the student's tokenizer checked)."""
    if cfg.teachers:
        from opsd.teachers import build_pool

        return build_pool(cfg, device, tokenizer, build_teacher)
    if cfg.engine.teacher_placement == "server":
        if cfg.model.teacher_tokenizer:
            raise ConfigError("model.teacher_tokenizer (a teacher with another tokenizer) is not supported with "
                              "engine.teacher_placement=server yet: serve a teacher that shares the student's "
                              "tokenizer, or run the other-tokenizer teacher in process")
        from opsd.teacher_service import build_served_teacher

        return build_served_teacher(cfg, device, tokenizer)
    if cfg.model.teacher_tokenizer:
        from opsd.xtok import build_cross_tokenizer_teacher

        return build_cross_tokenizer_teacher(cfg, device, tokenizer)
    from opsd import models
    from opsd.teacher import load_teacher

    models.check_same_tokenizer(tokenizer, cfg.model.teacher, cfg.model.trust_remote_code)
    return load_teacher(cfg, device)


def models_vocab(student, teacher_width: int, tokenizer) -> int:
    from opsd.losses import align_vocab
    from opsd.teacher import output_rows  # the student's head may be ZeRO-3 partitioned

    return align_vocab(output_rows(student), teacher_width, len(tokenizer))


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
