"""One trainer with vLLM rollouts (ZeRO-3) per rank; writes what tests/test_vllm_multirank.py checks.

Usage: python tests/_vllm_multirank_worker.py STUDENT TEACHER TRAIN OUT TP [overrides]
(under torchrun for world size 2; plain python is world size 1). Runs in the vLLM venv.

Each rank builds ``opsd.trainer.Trainer`` with ``rollout.backend=vllm`` (so the engine is built,
fed and synced exactly as in training: ``external_launcher`` at world size 2, TP groups of ``TP``
ranks) and records, for the same 8 prompts sharded over the ranks as the trainer shards them:
1. greedy rollouts of the engine and of HF generate from the same (initial) weights;
2. seeded sampling, the same call twice (must repeat) and the rollouts of a seeded call;
3. one training step (vLLM rollouts, teacher, ZeRO-3 update, weight sync), then the engine's prompt
   log-probs and greedy rollouts against HF from the gathered updated weights, and how far the
   weights moved (HF log-probs before vs after: the check's power).
Rank 0 writes ``result.json`` (per-rank records in rank order).
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
from _vllm_world import greedy_mismatches, hf_logprobs, max_diff, vllm_env  # noqa: E402

for _k, _v in vllm_env().items():  # before vLLM is imported
    os.environ.setdefault(_k, _v)

import _teardown  # noqa: E402
import torch  # noqa: E402

N_PROMPTS = 8
EVALS = ["<|im_start|>user\nwhat is 12+30?<|im_end|>\n<|im_start|>assistant\n42<|im_end|>",
         "the quick brown fox jumps over the lazy dog"]


def hf_model(path, state=None):
    """A plain float32 HF student (eager attention), with ``state`` (full gathered tensors) loaded."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="eager").eval()
    if state is not None:
        missing, unexpected = model.load_state_dict(state, strict=False)
        assert not missing and not [u for u in unexpected if "rotary_emb" not in u], (missing, unexpected)
    return model


def greedy_record(tr, model, prompts, greedy):
    from opsd.rollout.hf import HFGenerateBackend

    v = tr.backend.generate(prompts, greedy).response_ids
    h = HFGenerateBackend(model, tr.tokenizer, batch_size=8).generate(prompts, greedy).response_ids
    return {"vllm": v, "hf": h, "mismatches": greedy_mismatches(model, prompts, v, h)}


def main():
    student, teacher, train, out, tp = sys.argv[1:6]
    from opsd.config import load_config
    from opsd.rollout.base import SamplingConfig
    from opsd.trainer import Trainer

    cfg = load_config(None, [
        f"model.student={student}", f"model.teacher={teacher}", f"data.train_files={train}",
        f"train.output_dir={out}", "train.max_steps=1", "train.prompts_per_step=4", "rollout.n=2",
        "rollout.max_new_tokens=8", "rollout.backend=vllm", f"rollout.tensor_parallel_size={tp}",
        "rollout.enforce_eager=true", "engine.zero_stage=3", "engine.micro_batch_size=4", "optim.lr=0.01",
        "optim.warmup_steps=0", "train.export=false", "train.save_every=0", "data.shuffle=false",
        "logging.progress=false", "loss.reward_fn=_rewards:toy_reward"] + sys.argv[6:])
    tr = Trainer(cfg).setup()
    rank, world = tr.rank, tr.world
    evals = [tr.tokenizer(s, add_special_tokens=False)["input_ids"] for s in EVALS]
    mine = list(range(rank, N_PROMPTS, world))  # this rank's prompts, as a sampler would deal them
    prompts = [it["prompt_ids"] for it in tr.train_data.batch(mine)]
    greedy = SamplingConfig(temperature=0, max_new_tokens=12)
    rec = {"rank": rank, "world": world, "tp": int(tp), "dp_size": tr.backend.dp_size, "prompt_index": mine,
           "per_request_seeds": tr.backend.per_request_seeds}

    before = hf_model(student)
    rec["greedy_before"] = greedy_record(tr, before, prompts, greedy)

    seeded = SamplingConfig(temperature=1.0, top_k=0, max_new_tokens=8, n=2, seed=1234)
    calls = tr.backend._calls
    first = tr.backend.generate(prompts, seeded).response_ids
    tr.backend._calls = calls  # the same call again: per-request seeds depend on the call count
    rec["seeded"] = [first, tr.backend.generate(prompts, seeded).response_ids]

    old_lp = hf_logprobs(before, evals)
    rec["step_metrics"] = tr.train_step()  # rollouts by vLLM, ZeRO-3 update, weight sync
    tr.step += 1
    state = {n: t.detach().clone() for n, t in tr.named_student_weights()}  # collective (ZeRO-3 gather)
    after = hf_model(student, state)
    new_lp = hf_logprobs(after, evals)
    rec["weights_moved"] = max_diff(old_lp, new_lp)
    rec["synced_diff"] = max_diff(tr.backend.prompt_logprobs(evals), new_lp)
    rec["last_sync"] = tr.backend.last_sync
    rec["greedy_after"] = greedy_record(tr, after, prompts, greedy)

    import torch.distributed as dist

    recs = [None] * world
    if world > 1:
        dist.all_gather_object(recs, rec)
    else:
        recs = [rec]
    if rank == 0:
        with open(os.path.join(out, "result.json"), "w") as f:
            json.dump(recs, f)
    tr.cleanup()
    return out


if __name__ == "__main__":
    _teardown.end_worker(main())  # after main: the trainer is out of scope, its groups can go
