"""A few steps of the toy recipe (recipes/toy/opd.yaml on artifacts/toy) in the dtype given; writes
what tests/test_bf16.py compares.

Usage: python tests/_bf16_worker.py OUT FIXED_STEPS SAMPLED_STEPS [overrides]
(under torchrun for world size 2; run from the repository root: the recipe's paths are relative).

The first FIXED_STEPS steps train on rollouts that do not depend on the rank that generates them
(``_fakes.FixedRollouts``), so world size 2 must equal world size 1 on the same global batch; the
next SAMPLED_STEPS steps use the configured backend (HF generate, or vLLM), sampled per rank, which
are only checked for being finite. ``opsd.distill.loss_and_stats`` is wrapped to record the dtypes
that go into and come out of the divergences. Rank 0 writes ``run.json`` (per-step metrics and the
dtypes) and ``weights.pt`` (the full student after the FIXED_STEPS steps, before any sampled one).
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
import conftest  # noqa: F401,E402  (offline env)
import _teardown  # noqa: E402
import torch  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def record_dtypes(seen: set):
    """Wrap the one-pass loss of the default hook; ``seen`` gets ``(input dtypes -> output dtypes)``."""
    import opsd.distill as distill

    real = distill.loss_and_stats

    def wrapped(hidden, weight, teacher, *a, **k):
        loss, stats = real(hidden, weight, teacher, *a, **k)
        teacher_in = getattr(teacher, "hidden", None)
        seen.add((str(hidden.dtype), str(weight.dtype), str(getattr(teacher_in, "dtype", None)),
                  str(loss.dtype), str(stats.reverse_kl.dtype), str(stats.entropy.dtype)))
        return loss, stats

    distill.loss_and_stats = wrapped


def main():
    out, fixed_steps, sampled_steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    from _fakes import FixedRollouts
    from opsd.config import load_config
    from opsd.trainer import Trainer

    cfg = load_config(os.path.join(ROOT, "recipes/toy/opd.yaml"), [
        f"train.output_dir={out}", f"train.max_steps={fixed_steps + sampled_steps}", "train.prompts_per_step=4",
        "rollout.n=2", "rollout.max_new_tokens=8", "engine.micro_batch_size=4", "train.eval_files=[]",
        "train.export=false", "train.save_every=0", "data.shuffle=false", "logging.progress=false",
        "optim.warmup_steps=0"] + sys.argv[4:])
    dtypes: set = set()
    record_dtypes(dtypes)
    tr = Trainer(cfg).setup()
    sampled = tr.backend
    digits = tr.tokenizer.convert_tokens_to_ids(list("0123456789+=-*"))
    tr.backend = FixedRollouts(digits, tr.tokenizer.eos_token_id, max_len=8)
    metrics, state = [], None
    for i in range(fixed_steps + sampled_steps):
        if i == fixed_steps:
            state = {n: t.detach().clone() for n, t in tr.named_student_weights()}  # collective (ZeRO-3)
            tr.backend = sampled
        m = tr.train_step()
        tr.step += 1
        metrics.append({k: v for k, v in m.items() if isinstance(v, (int, float))})
    if state is None:
        state = {n: t.detach().clone() for n, t in tr.named_student_weights()}
    tr.backend = sampled  # cleanup closes it
    if tr.rank == 0:
        torch.save(state, os.path.join(out, "weights.pt"))
        with open(os.path.join(out, "run.json"), "w") as f:
            json.dump({"metrics": metrics, "dtypes": sorted(dtypes),
                       "param_dtypes": sorted({str(p.dtype) for p in tr.student.parameters()})}, f)
    tr.cleanup()
    return out


if __name__ == "__main__":
    _teardown.end_worker(main())  # after main: the trainer is out of scope, its groups can go
