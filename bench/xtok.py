"""Cross-tokenizer loss step: time and peak memory of the byte-prefix (BPM) source against the
same-tokenizer teacher source, at the README loss-step shape (V=151,936, d=256, N=2,048).

    python bench/xtok.py                                     # V=151,936 both sides, N=2,048
    python bench/xtok.py --conditioned 0.0,0.5 --tokens 512   # share of rows inside a teacher token
    python bench/xtok.py --toy-pair                           # coverage, exact-row share of the toy pair

Rows (each in a fresh process, as ``bench/opd_memory.py``; stand-in models of ``bench/_common.py``):

- ``same``: :class:`opsd.distill.DistillModule` (loss.impl=fused, default hook) with the teacher
  source of :meth:`opsd.teacher.Teacher.score` (hidden states + head): today's path;
- ``bpm@S``: the same step with :class:`opsd.xtok.CrossTokenizerLogits` over a synthetic pair of
  vocabularies of V tokens each (every single byte, then random byte strings of 2-10 characters,
  a third with a multi-byte character; teacher and student drawn with different seeds), a share
  ``S`` of the rows conditioned on bytes emitted inside a teacher token (the per-row path).

Also printed: the time to build the pair's map (once per pair), its coverage. The exact-row
share of a real pair comes from the trainer's ``xtok/exact_rows`` (docs/cross-tokenizer.md).
"""
from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

ALPHABET = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJ 0123456789.,;:!?-_()[]{}<>=+*/\n\t"
MULTI = "éüßñ日本語€中文한국🙂"


def vocab_bytes(n: int, seed: int) -> list:
    rng = random.Random(seed)
    out, seen = [bytes([b]) for b in range(256)], set()
    seen.update(out)
    while len(out) < n:
        k = rng.randint(2, 10)
        s = "".join(rng.choice(ALPHABET) for _ in range(k))
        if rng.random() < 0.33:
            i = rng.randrange(k)
            s = s[:i] + rng.choice(MULTI) + s[i + 1:]
        b = s.encode("utf-8")
        if b not in seen:
            seen.add(b)
            out.append(b)
    return out[:n]


def child(args) -> None:
    import torch

    from opsd.distill import DistillModule
    from opsd.xtok import CrossTokenizerLogits, VocabMap

    device = C.child_setup(args)
    C.check_peak_reset(device)

    def run(a, measure: bool):
        student, teacher_src, batch = C.setup(a, device)
        info = {}
        if args.one == "bpm":
            t0 = time.perf_counter()
            vmap = VocabMap.from_bytes(vocab_bytes(a.vocab, 1), vocab_bytes(a.vocab, 2))
            info["map_s"], info["coverage"] = time.perf_counter() - t0, vmap.coverage
            rng = random.Random(0)
            long = [b for b in vmap.t_bytes if b and len(b) > 1]
            def prefix(b):
                return b[:rng.randint(1, len(b) - 1)]

            emitted = [prefix(rng.choice(long)) if rng.random() < args.share else b"" for _ in range(a.tokens)]
            for e in set(emitted):  # the per-prefix tables are built once per pair and prefix: not in the step
                if e:
                    vmap.conditioned(e)
            # a share of rows after a teacher token that longer tokens extend: two teacher positions (lookback)
            look = [r for r in range(a.tokens) if rng.random() < args.lookback]
            prev = {r: (m, rng.choice(ALPHABET[:26]).encode()) for m, r in enumerate(look)}
            for _, (_, b) in prev.items():
                vmap.lookback(b, b"")
            prev_hidden = teacher_src.hidden[torch.tensor(look, dtype=torch.long)] if look else None
            teacher_src = CrossTokenizerLogits(teacher_src.hidden, teacher_src.weight, None, a.vocab, emitted, vmap,
                                               "bpm", prev_hidden=prev_hidden, prev=prev)
        module = DistillModule(student, a.vocab, "reverse_kl", chunk_size=a.chunk_size, impl="fused")
        if not measure:
            loss_sum, *_ = module(batch["input_ids"], batch["attention_mask"], batch["loss_mask"], teacher_src)
            loss_sum.backward()
            return None
        with C.Meter(device) as m:
            loss_sum, _stats, _sel, kept = module(batch["input_ids"], batch["attention_mask"], batch["loss_mask"],
                                                  teacher_src)
            loss = loss_sum / max(kept, 1)
            loss.backward()
        assert torch.isfinite(loss)
        return dict(info, peak_mb=m.peak_bytes / C.MB, seconds=m.seconds, loss=float(loss))

    tiny = C.tiny_copy(args)
    tiny.vocab = 512  # a few multi-byte strings beyond the 256 single bytes
    run(tiny, measure=False)  # warm-up
    C.emit(dict(mode=args.one, share=args.share, lookback=args.lookback, **run(args, measure=True)))


def toy_pair(n: int = 256) -> None:
    """Coverage and row shares of the toy pair, both ways round, on the held-out solutions (the
    student's tokenization of the gold step-by-step text, then EOS): tokenizers only, no model."""
    from transformers import AutoTokenizer

    from opsd import xtok
    from opsd.toy.build import WorldConfig
    from opsd.toy.task import make_problems, solution_text

    char, bpe = (AutoTokenizer.from_pretrained(str(C.REPO / p)) for p in ("artifacts/toy/teacher",
                                                                          "artifacts/toy_xtok/teacher"))
    w = WorldConfig()
    texts = [solution_text(p) for p in make_problems(n, w.seed, "heldout", w.task)]
    rows = []
    for name, t, s in (("BPE teacher -> char student", bpe, char), ("char teacher -> BPE student", char, bpe)):
        vm = xtok.vocab_map(t, s)
        flags, one, cond = [], 0, 0
        for text in texts:
            al = xtok.align_response(s(text, add_special_tokens=False)["input_ids"] + [s.eos_token_id], vm, t)
            flags += al.flag
            one += sum(al.one_to_one)
            cond += sum(1 for e in al.emitted if e)
        k = len(flags)
        rows.append([name, f"{vm.n_teacher} -> {vm.n_student}", f"{vm.coverage:.4f}", f"{k:,}",
                     f"{flags.count(xtok.EXACT) / k:.4f}", f"{flags.count(xtok.BOUND) / k:.4f}", f"{one / k:.4f}",
                     f"{cond / k:.4f}"])
    print(f"# Toy pair: {n} held-out solutions\n")
    print(C.table(["pair", "vocab", "coverage", "rows", "exact", "bound", "one-to-one (strict)",
                   "conditioned on emitted bytes"], rows))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    C.add_shape_args(p)
    p.add_argument("--conditioned", default="0.0,0.5", help="bpm rows: shares of rows inside a teacher token")
    p.add_argument("--toy-pair", action="store_true", help="only the toy pair's coverage and row shares "
                   "(needs artifacts/toy_xtok: python -m opsd.toy.xtok_world)")
    p.add_argument("--one", choices=("same", "bpm"), help=argparse.SUPPRESS)
    p.add_argument("--share", type=float, default=0.0, help=argparse.SUPPRESS)
    p.add_argument("--lookback", type=float, default=0.05, help="bpm rows: share of rows that read the previous "
                   "teacher position too (the toy run logs xtok/lookback_rows ~0.05)")
    args = p.parse_args(argv)
    C.resolve_shape(args)
    if args.toy_pair:
        toy_pair()
        return 0
    if args.one:
        child(args)
        return 0
    script, flags = Path(__file__).resolve(), C.shape_flags(args)
    res = [C.run_child(script, ["--one", "same", *flags], args.threads)]
    for s in [float(x) for x in args.conditioned.split(",")]:
        res.append(C.run_child(script, ["--one", "bpm", "--share", str(s), "--lookback", str(args.lookback), *flags],
                               args.threads))
    print(f"# Cross-tokenizer loss step, one forward + backward\n\n{C.shape_line(args)}\n")
    ref = res[0]
    rows = [[r["mode"] if r["mode"] == "same" else f"bpm, {r['share']:.0%} rows conditioned, {r['lookback']:.0%} lookback",
             f"{r['peak_mb']:,.0f}",
             C.ratio(r["peak_mb"], ref["peak_mb"]), f"{r['seconds']:.2f}", C.ratio(r["seconds"], ref["seconds"])]
            for r in res]
    print(C.table(["teacher source", "peak MB over inputs", "vs same", "wall s", "vs same"], rows))
    bpm = [r for r in res if r["mode"] == "bpm"]
    if bpm:
        print(f"\nmap build (once per pair): {bpm[0]['map_s']:.1f} s; coverage {bpm[0]['coverage']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
