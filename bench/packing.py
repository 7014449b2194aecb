"""Padding share and step time of one OPD update: padded micro-batches (a sequence count) vs a token
budget vs packed sequences, on the same long-tailed rollouts.

    flock /tmp/opsd-heavy.lock python bench/packing.py --world toy
    flock /tmp/opsd-heavy.lock python bench/packing.py --world qwen3-wide

Rollouts: reasoning-like response lengths, most short and a few near the cap (``--cap``): 75 %
uniform in [4, cap/8], 15 % in [cap/8, cap/2], 10 % in [0.8 cap, cap]; tokens drawn at random from
the tokenizer's ordinary characters (the cost of a forward does not depend on which tokens).
Each mode runs ``opsd.trainer.Trainer.update`` (teacher scoring + student forward/backward + the
optimizer step; no generation) on the same rollouts in one process, modes interleaved over
``--repeats`` rounds after a warm-up round; the median time per mode is reported, wall-clock and the
process's CPU time (all its threads; less disturbed than wall-clock by other jobs on a shared machine).

- ``padded``: ``engine.micro_batch_size`` sequences per micro-batch, in batch order (the default);
- ``token-budget``: ``engine.micro_batch_tokens`` = the padded mode's largest micro-batch area
  (``micro_batch_size x (longest prompt + cap)``: the same peak activation size), sequences
  grouped by length, still padded;
- ``packed``: the same budget, sequences packed in one row without padding (``engine.packing``),
  attention per sequence (sdpa switched to ``opsd.varlen_attention``, as ``Trainer.setup`` does).

Worlds: ``toy`` = the embedded default (artifacts/toy: Qwen3-architecture student d=96 x 3 layers,
teacher d=128 x 4; the toy row of docs/scale-out.md reports its padding shares only: its earlier times were
measured with a d=64 x 2 student); ``qwen3-wide`` = random-weight Qwen3-architecture models built here (student
d=256 x 4 layers, teacher d=384 x 4, same character tokenizer), at a longer cap. ``padding`` is the
share of token slots of the forward passes that hold padding, out of all slots.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

WORLDS = {
    "toy": dict(cap=64, prompts=16, n=4, micro_batch_size=8),
    "qwen3-wide": dict(cap=256, prompts=8, n=4, micro_batch_size=4, student=(256, 4), teacher=(384, 4)),
}
MODES = ("padded", "token-budget", "packed")


def long_tail_lengths(count: int, cap: int, rng: random.Random) -> list:
    out = []
    for _ in range(count):
        u = rng.random()
        lo, hi = (4, cap // 8) if u < 0.75 else (cap // 8, cap // 2) if u < 0.9 else (int(0.8 * cap), cap)
        out.append(rng.randint(lo, max(lo, hi)))
    return out


def build_wide_models(root: Path, tok_path: str, student, teacher) -> tuple:
    """Random-weight Qwen3 student and teacher folders sharing the toy tokenizer."""
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from opsd.models import load_tokenizer

    tok = load_tokenizer(tok_path)
    paths = []
    for name, (d, layers), seed in (("student", student, 1), ("teacher", teacher, 2)):
        torch.manual_seed(seed)
        cfg = Qwen3Config(vocab_size=(len(tok) + 63) // 64 * 64, hidden_size=d, intermediate_size=3 * d,
                          num_hidden_layers=layers, num_attention_heads=d // 64, num_key_value_heads=max(1, d // 128),
                          head_dim=64, max_position_embeddings=4096, tie_word_embeddings=True,
                          pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=None)
        Qwen3ForCausalLM(cfg).save_pretrained(root / name)
        tok.save_pretrained(root / name)
        paths.append(str(root / name))
    return tuple(paths)


def make_trainer(world: str, spec: dict, out: Path):
    from opsd.config import load_config
    from opsd.trainer import Trainer

    toy = REPO / "artifacts" / "toy"
    student, teacher = str(toy / "student"), str(toy / "teacher")
    if world == "qwen3-wide":
        student, teacher = build_wide_models(out / "models", str(toy / "student"), spec["student"], spec["teacher"])
    cfg = load_config(None, [f"model.student={student}", f"model.teacher={teacher}",
                             f"data.train_files={toy / 'train.jsonl'}", "data.max_prompt_length=64",
                             f"rollout.n={spec['n']}", f"rollout.max_new_tokens={spec['cap']}",
                             f"train.prompts_per_step={spec['prompts']}", f"train.output_dir={out / 'run'}",
                             f"engine.micro_batch_size={spec['micro_batch_size']}", "engine.zero_stage=0",
                             "engine.device=cpu", "optim.lr=1e-9", "train.export=false", "logging.progress=false"])
    return Trainer(cfg).setup()


def long_tail_rollouts(tr, spec: dict, seed: int):
    from opsd.rollout.base import Rollouts

    rng = random.Random(seed)
    items = tr.train_data.batch(tr.sampler.next_batch())
    tok = tr.tokenizer
    ordinary = sorted(i for t, i in tok.get_vocab().items() if len(t) == 1 and t.isalnum())  # vocab order varies
    prompts = [it["prompt_ids"] for it in items for _ in range(spec["n"])]
    lengths = long_tail_lengths(len(prompts), spec["cap"], rng)
    responses = [[rng.choice(ordinary) for _ in range(n - 1)] + [tok.eos_token_id] for n in lengths]
    return Rollouts(prompts, responses, [True] * len(prompts), [i // spec["n"] for i in range(len(prompts))])


def set_mode(tr, mode: str, budget: int) -> None:
    """The engine options of ``mode``, and the attention a run with them gets at setup
    (``Trainer._check_layout``): packed -> per-sequence sdpa (opsd.varlen_attention), else sdpa."""
    from opsd import packing

    e = tr.cfg.engine
    e.micro_batch_tokens = None if mode == "padded" else budget
    e.packing = mode == "packed"
    for model, role in ((tr.student, "student"), (tr.teacher.model, "teacher")):
        if e.packing:
            packing.prepare_attention(model, role)
        else:
            model.set_attn_implementation("sdpa")


def run_world(world: str, repeats: int, seed: int) -> dict:
    spec = WORLDS[world]
    with tempfile.TemporaryDirectory(prefix="opsd-bench-packing-") as tmp:
        tr = make_trainer(world, spec, Path(tmp))
        try:
            rollouts = long_tail_rollouts(tr, spec, seed)
            longest_prompt = max(len(p) for p in rollouts.prompt_ids)
            budget = spec["micro_batch_size"] * (longest_prompt + spec["cap"])
            times, cpu = {m: [] for m in MODES}, {m: [] for m in MODES}
            metrics, attn = {}, {}
            for r in range(repeats + 1):  # round 0: warm-up, not timed
                for mode in MODES:
                    set_mode(tr, mode, budget)
                    t0, c0 = time.perf_counter(), time.process_time()
                    m = tr.update(rollouts)
                    if r:
                        times[mode].append(time.perf_counter() - t0)
                        cpu[mode].append(time.process_time() - c0)
                    metrics[mode], attn[mode] = m, tr.student.config._attn_implementation
        finally:
            tr.cleanup()
    lengths = [len(x) for x in rollouts.response_ids]
    base, base_cpu = statistics.median(times["padded"]), statistics.median(cpu["padded"])
    rows = {mode: dict(step_s=statistics.median(times[mode]), times=times[mode],
                       ratio=statistics.median(times[mode]) / base, cpu_s=statistics.median(cpu[mode]),
                       cpu_ratio=statistics.median(cpu[mode]) / base_cpu, padding=metrics[mode]["padding_frac"],
                       micro_batches=metrics[mode]["micro_batches"], loss=metrics[mode]["loss"], attention=attn[mode])
            for mode in MODES}
    return dict(world=world, sequences=len(lengths), cap=spec["cap"], budget=budget,
                response_tokens=sum(lengths), response_len_median=statistics.median(lengths),
                response_len_max=max(lengths), near_cap=sum(n >= 0.8 * spec["cap"] for n in lengths),
                micro_batch_size=spec["micro_batch_size"], repeats=repeats, modes=rows)


def report(res: dict) -> str:
    head = (f"world {res['world']}: {res['sequences']} sequences, responses median {res['response_len_median']} / "
            f"max {res['response_len_max']} tokens (cap {res['cap']}, {res['near_cap']} near it), "
            f"micro_batch_size {res['micro_batch_size']}, token budget {res['budget']}, "
            f"median of {res['repeats']} steps")
    lines = [head, "| mode | attention | micro-batches | padding | step time | vs padded | CPU time | vs padded | loss |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for mode, r in res["modes"].items():
        lines.append(f"| {mode} | {r['attention']} | {r['micro_batches']} | {100 * r['padding']:.1f} % | "
                     f"{r['step_s']:.2f} s | {r['ratio']:.2f}x | {r['cpu_s']:.2f} s | {r['cpu_ratio']:.2f}x | "
                     f"{r['loss']:.6f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--world", choices=[*WORLDS, "both"], default="both")
    p.add_argument("--repeats", type=int, default=3, help="timed steps per mode (after one warm-up round)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="also write the results to this file")
    args = p.parse_args(argv)
    if args.repeats <= 0:
        sys.exit(f"--repeats must be > 0, got {args.repeats}")
    for k, v in dict(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", WANDB_MODE="offline",
                     TOKENIZERS_PARALLELISM="false").items():
        os.environ.setdefault(k, v)
    import logging

    logging.basicConfig(level=logging.WARNING)
    results = []
    for world in (WORLDS if args.world == "both" else [args.world]):
        res = run_world(world, args.repeats, args.seed)
        results.append(res)
        print(report(res), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
