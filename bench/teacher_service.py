"""The teacher as a service: bytes on the wire per scored token and tokens scored per second,
hidden-state mode vs top-k mode vs the in-process teacher, on the toy world (CPU); then a
paper-scale estimate from formulas (Llama-3.3-70B teacher on its own 8-GPU node).

    # the servers (vLLM environment), one per mode:
    PYTHONPATH=. .venv-vllm/bin/python -m opsd.teacher_service serve --model artifacts/toy/teacher --port 8100
    PYTHONPATH=. .venv-vllm/bin/python -m opsd.teacher_service serve --model artifacts/toy/teacher --port 8101 \\
        --output topk
    # the benchmark (main environment):
    python bench/teacher_service.py --hidden-url http://127.0.0.1:8100 --topk-url http://127.0.0.1:8101
    python bench/teacher_service.py --estimate-only

The workload is one toy step's worth of sequences (``--seqs`` of ``--len`` random tokens; the loss
on the second half, as a response after its prompt) in micro-batches of ``--micro`` as the toy
recipe. Each repeat scores a whole step the way the trainer does (every micro-batch sent at once,
:meth:`score_phase`, then every source read); the median over repeats is reported. "scored token"
= a loss position; the service also returns the prompt positions (vLLM pools every token), which
the bytes include. In-process: nothing crosses a wire (the hidden states stay in memory).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def workload(n: int, length: int, micro: int, seed: int = 0) -> list:
    """Right-padded micro-batches (as :func:`opsd.batching.collate`) of ``n`` random sequences."""
    g = torch.Generator().manual_seed(seed)
    batches = []
    for s in range(0, n, micro):
        b = min(micro, n - s)
        ids = torch.randint(3, 64, (b, length), generator=g)
        lm = torch.zeros(b, length, dtype=torch.long)
        lm[:, length // 2:length - 1] = 1
        batches.append({"input_ids": ids, "attention_mask": torch.ones_like(ids), "loss_mask": lm,
                        "position_ids": None, "rows": list(range(s, s + b))})
    return batches


def run(teacher, batches, vocab: int, repeats: int) -> dict:
    times, wire = [], []
    for _ in range(repeats + 1):  # the first is a warm-up
        teacher.metrics()
        t = time.time()
        for src in teacher.score_phase(batches, vocab, None):
            src.rows(slice(0, len(src))) if not hasattr(src, "logprobs") else src.logprobs
        times.append(time.time() - t)
        wire.append(teacher.metrics().get("teacher/bytes", 0.0))
    scored = sum(int(b["loss_mask"].sum()) for b in batches)
    sec = statistics.median(times[1:])
    positions = sum(int(b["attention_mask"].sum()) for b in batches)
    return {"bytes_per_token": statistics.median(wire[1:]) / scored, "tokens_per_s": scored / sec, "step_s": sec,
            "scored": scored, "bytes_per_position": statistics.median(wire[1:]) / positions}


def measure(args) -> list:
    from opsd.teacher import Teacher
    from opsd.teacher_service import ServedTeacher, checkpoint_dtype, fingerprint, load_head
    from transformers import AutoModelForCausalLM

    teacher_dir = str(ROOT / "artifacts" / "toy" / "teacher")
    batches = workload(args.seqs, args.len, args.micro)
    torch.set_num_threads(args.threads)
    rows = []
    model = AutoModelForCausalLM.from_pretrained(teacher_dir, dtype=torch.float32)
    vocab = model.get_output_embeddings().weight.shape[0]
    rows.append(("in-process", run(Teacher(model, torch.device("cpu")), batches, vocab, args.repeats)))
    w, b, sha, config = load_head(teacher_dir)
    if args.hidden_url:
        t = ServedTeacher(args.hidden_url, torch.device("cpu"), "hidden", head=(w, b),
                          expect=fingerprint(config, sha, checkpoint_dtype(config)))
        rows.append(("server, hidden states", run(t, batches, vocab, args.repeats)))
        t.close()
    if args.topk_url:
        t = ServedTeacher(args.topk_url, torch.device("cpu"), "topk", topk=args.k)
        rows.append((f"server, top-{args.k} (JSON)", run(t, batches, vocab, args.repeats)))
        t.close()
    return rows


def estimate(a) -> str:
    """Per-step bytes and network time of a served 70B teacher vs the sharded in-process teacher."""
    tokens = a.p_seqs * a.p_len
    gib = 2 ** 30
    hidden = tokens * a.p_d * 2  # bf16 hidden states, every position (vLLM pools all of them)
    logits = tokens * a.p_vocab * 2  # what a full-logit service would send
    topk = tokens * a.p_k * a.p_entry_bytes  # JSON top-k, every position (vLLM returns prompt log-probs for all)
    lines = [f"paper-scale estimate: {a.p_seqs} sequences x {a.p_len} tokens = {tokens:,} tokens per step; "
             f"Llama-3.3-70B d_T={a.p_d}, V={a.p_vocab:,}, bf16; served on its own 8-GPU node",
             "| what crosses the network per step | GiB | s at 100 Gb/s | s at 400 Gb/s |",
             "|---|---:|---:|---:|"]
    for name, b in [("hidden states (exact, this mode)", hidden), (f"top-{a.p_k} log-probs, JSON", topk),
                    ("full logits (not offered)", logits)]:
        lines.append(f"| {name} | {b / gib:,.1f} | {b * 8 / 100e9:,.2f} | {b * 8 / 400e9:,.2f} |")
    params = a.p_params * 2
    per_rank = params / a.p_ranks
    gathered = a.p_micro_steps * params * (a.p_ranks - 1) / a.p_ranks
    lines += ["",
              f"against the sharded in-process teacher (recipes/paper/llama-70b-8b.yaml, ZeRO-3 over {a.p_ranks} "
              f"ranks): {per_rank / gib:.1f} GiB of teacher parameters per training rank (+ 2.0 GiB head replica), "
              f"and each of the {a.p_micro_steps} teacher forwards per rank per step all-gathers the other ranks' "
              f"partitions: {gathered / gib:,.0f} GiB received per rank per step (intra-node, NVLink). Served: "
              f"0 GiB of teacher parameters on the training node except the head replica "
              f"({a.p_vocab * a.p_d * 2 / gib:.1f} GiB) and {hidden / a.p_ranks / gib:.1f} GiB of hidden states "
              "per rank per step over the network."]
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--hidden-url")
    p.add_argument("--topk-url")
    p.add_argument("--k", type=int, default=16)
    p.add_argument("--seqs", type=int, default=64, help="sequences per step (toy recipe: 16 prompts x 4)")
    p.add_argument("--len", type=int, default=128, help="tokens per sequence (toy: 64 prompt + 64 response)")
    p.add_argument("--micro", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="torch threads of the in-process teacher")
    p.add_argument("--estimate-only", action="store_true")
    # paper-scale assumptions (recipes/paper/llama-70b-8b.yaml: 8 prompts x 16 rollouts, 2048 + 8192 tokens)
    p.add_argument("--p-seqs", type=int, default=128)
    p.add_argument("--p-len", type=int, default=10240)
    p.add_argument("--p-d", type=int, default=8192)
    p.add_argument("--p-vocab", type=int, default=128256)
    p.add_argument("--p-k", type=int, default=64)
    p.add_argument("--p-params", type=float, default=70.55e9)
    p.add_argument("--p-ranks", type=int, default=8)
    p.add_argument("--p-micro-steps", type=int, default=8)
    p.add_argument("--p-entry-bytes", type=float, default=69.0,
                   help="JSON bytes per returned top-k entry and position (the toy measurement's last column)")
    a = p.parse_args(argv)
    if not a.estimate_only:
        rows = measure(a)
        print(f"toy world: {a.seqs} sequences x {a.len} tokens, micro-batches of {a.micro}, median of {a.repeats}")
        print("| teacher | bytes on the wire / scored token | bytes / position sent | scored tokens / s | "
              "step scoring s |")
        print("|---|---:|---:|---:|---:|")
        for name, r in rows:
            print(f"| {name} | {r['bytes_per_token']:,.0f} | {r['bytes_per_position']:,.0f} | "
                  f"{r['tokens_per_s']:,.0f} | {r['step_s']:.3f} |")
        print(f"(top-{a.k}: {dict(rows)[f'server, top-{a.k} (JSON)']['bytes_per_position'] / a.k:.0f} JSON bytes per "
              "entry and position)" if a.topk_url else "")
        print()
    print(estimate(a))


if __name__ == "__main__":
    main()
