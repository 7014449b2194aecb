"""Runs a few OPD steps (ZeRO-3) with fixed rollouts and writes losses and final weights.

Usage: python tests/_dist_worker.py STUDENT TEACHER TRAIN_FILE OUT_DIR [extra overrides]
(under torchrun for world size 2). Used by tests/test_distributed.py.
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
import conftest  # noqa: F401  (offline env)
import _teardown
import torch

from _fakes import FixedRollouts
from opsd.config import load_config
from opsd.trainer import Trainer


def main():
    student, teacher, train, out = sys.argv[1:5]
    cfg = load_config(None, [f"model.student={student}", f"model.teacher={teacher}", f"data.train_files={train}",
                             f"train.output_dir={out}", "train.max_steps=3", "train.prompts_per_step=4",
                             "rollout.n=2", "engine.micro_batch_size=2", "engine.zero_stage=3", "optim.lr=0.01",
                             "train.export=false", "train.save_every=0", "data.shuffle=false",
                             "logging.progress=false"] + sys.argv[5:])
    cfg.train.max_steps = 3
    uneven = cfg.rollout.environment and cfg.rollout.tool_parser.endswith("RankParser")
    if uneven:  # partition every student parameter (DeepSpeed keeps small ones whole by default), so
        import opsd.engine  # each generate forward gathers them: ranks must make the same calls

        real = opsd.engine.deepspeed_config

        def every_param_partitioned(c, grad_accum):
            ds = real(c, grad_accum)
            ds["zero_optimization"].update(stage3_param_persistence_threshold=0, stage3_model_persistence_threshold=0)
            return ds

        opsd.engine.deepspeed_config = every_param_partitioned
    tr = Trainer(cfg).setup()
    vocab = [i for i in range(10, 60)]
    if uneven:  # the real HF generate, ranks taking unequal turns
        from _agent_fakes import every_turn_finished

        every_turn_finished(tr.loop.backend)
    else:
        tr.backend = FixedRollouts(vocab, tr.tokenizer.eos_token_id)
        if cfg.rollout.environment:  # agentic episodes: a scripted policy, identical on every rank
            from _agent_fakes import ScriptedBackend, lookup_policy

            tr.loop.backend = ScriptedBackend(tr.tokenizer, lookup_policy)
    tr.save = lambda: None  # this test compares the updates, not checkpoints
    losses, metrics = [], []
    while tr.step < cfg.train.max_steps:
        m = tr.train_step()
        tr.step += 1
        losses.append(m["loss"])
        metrics.append(m)
    state = {n: t.detach().clone() for n, t in tr.named_student_weights()}
    if tr.rank == 0:
        torch.save(state, os.path.join(out, "weights.pt"))
        with open(os.path.join(out, "losses.json"), "w") as f:
            json.dump(losses, f)
        with open(os.path.join(out, "metrics.json"), "w") as f:
            json.dump(metrics, f)
    tr.cleanup()
    return out


if __name__ == "__main__":
    _teardown.end_worker(main())  # after main: the trainer is out of scope, its groups can go
