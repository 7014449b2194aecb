"""Peak memory of ONE OPD loss forward + backward: naive full-vocabulary logits vs opsd's chunked path.

    python bench/opd_memory.py                          # V=151,936, d=256, N=2,048 (make bench)
    python bench/opd_memory.py --tokens 4096 --chunk-size 256
    python bench/opd_memory.py --device cuda --shape qwen3-4b   # GPU only (max_memory_allocated)

Rows (each in a fresh process, so one row's allocations cannot lower another's peak):

- ``naive``: student logits ``hidden @ W.T`` as a full ``(N, V)`` float32 tensor, full teacher
  logits, ``log_softmax`` of both, token-mean reverse KL ``KL(pi_S || pi_T)``, backward;
- ``chunked``: what the trainer runs, :class:`opsd.distill.DistillModule` with the teacher source
  of :meth:`opsd.teacher.Teacher.score` (teacher last hidden states + head), default hook (every
  token kept), ``loss.recompute_chunks=false`` (the default); loss = ``loss_sum / kept``;
- ``recompute``: the same with ``loss.recompute_chunks=true`` (each chunk's logits recomputed in
  backward).

The model is a stand-in (``bench/_common.py``): fixed last hidden states with grad and a real LM
head, so only the loss step is measured. Peak = peak RSS (VmHWM after ``/proc/self/clear_refs``)
or CUDA max allocated, minus the level right before the step, i.e. without the inputs, which are
reported on their own. The script fails if the chunked losses differ from the naive one.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

MODES = {
    "naive": "naive: full (N, V) logits, log_softmax, mean KL",
    "chunked": "chunked: DistillModule (trainer default)",
    "recompute": "chunked + loss.recompute_chunks=true",
}


def naive_reverse_kl(student, teacher_src, batch: dict, vocab: int):
    """Token-mean KL(pi_S || pi_T) written the direct way (TIP Eq. 1), every (N, V) tensor whole."""
    import torch

    out = student.base_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    h = out.last_hidden_state[batch["loss_mask"].bool()]  # (N, d), with grad
    w = student.get_output_embeddings().weight[:vocab]  # (V, d)
    logp_s = torch.log_softmax((h @ w.T).float(), dim=-1)  # (N, V)
    with torch.no_grad():
        t_logits = (teacher_src.hidden @ teacher_src.weight[:vocab].T).float()  # (N, V)
        logp_t = torch.log_softmax(t_logits, dim=-1)
        del t_logits
    return (logp_s.exp() * (logp_s - logp_t)).sum(-1).mean()


def step(mode: str, student, teacher_src, batch: dict, args):
    """One loss forward + backward; returns the token-mean loss."""
    from opsd.distill import DistillModule

    if mode == "naive":
        loss = naive_reverse_kl(student, teacher_src, batch, args.vocab)
    else:
        module = DistillModule(student, args.vocab, "reverse_kl", chunk_size=args.chunk_size,
                               recompute_chunks=mode == "recompute")
        loss_sum, _stats, _sel, kept = module(batch["input_ids"], batch["attention_mask"],
                                              batch["loss_mask"], teacher_src)
        loss = loss_sum / max(kept, 1)  # token mean over the kept (= all) tokens
    loss.backward()
    return loss


def child(args) -> None:
    import torch

    device = C.child_setup(args)
    C.check_peak_reset(device)
    tiny = C.tiny_copy(args)  # warm-up: lazy imports and one-time set-up stay out of the numbers
    step(args.one, *C.setup(tiny, device), tiny)
    before = C.current_bytes(device)
    student, teacher_src, batch = C.setup(args, device)
    inputs = C.current_bytes(device) - before
    with C.Meter(device) as m:
        loss = step(args.one, student, teacher_src, batch, args)
    assert student.lm_head.weight.grad is not None and torch.isfinite(loss)
    C.emit(dict(mode=args.one, peak_mb=m.peak_bytes / C.MB, inputs_mb=inputs / C.MB, seconds=m.seconds,
                loss=float(loss)))


def parent(args) -> int:
    here = Path(__file__).resolve()
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    bad = [m for m in modes if m not in MODES]
    if bad or "naive" not in modes:
        sys.exit(f"--modes: choose from {list(MODES)} and include naive, got {args.modes!r}")
    print(f"# OPD loss memory, one forward + backward\n\n{C.shape_line(args)}\n")
    res = {m: C.run_child(here, ["--one", m, *C.shape_flags(args)], args.threads) for m in modes}
    ref = res["naive"]
    full = C.full_logits_mb(args)
    rows = [[MODES[m], f"{r['peak_mb']:,.0f}", f"{r['peak_mb'] / full:.1f}", f"{r['peak_mb'] / ref['peak_mb']:.2f}",
             f"{r['seconds']:.2f}", f"{r['loss']:.6f}"] for m, r in res.items()]
    print(C.table(["path", "peak MB over inputs", "in (N, V) f32 tensors", "vs naive", "wall s", "loss"], rows))
    print(f"\ninputs (student hidden + LM head, teacher hidden + head; resident before the step, not in the "
          f"peaks): {ref['inputs_mb']:,.0f} MB")
    print(f"one (N, V) float32 tensor: {args.tokens:,} x {args.vocab:,} x 4 B = {full:,.0f} MB")
    ok = True
    for m, r in res.items():
        if m == "naive":
            continue
        diff = abs(r["loss"] - ref["loss"])
        agree = diff <= 1e-4 * max(1.0, abs(ref["loss"]))
        ok &= agree
        print(f"|loss({m}) - loss(naive)| = {diff:.3e}  ({'agree' if agree else 'DISAGREE'})")
    return 0 if ok else 1


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    C.add_shape_args(p)
    p.add_argument("--modes", default=",".join(MODES), help="rows to run, comma-separated (default %(default)s)")
    p.add_argument("--one", choices=sorted(MODES), help=argparse.SUPPRESS)  # child process: one row
    args = p.parse_args(argv)
    C.resolve_shape(args)
    if args.one:
        child(args)
        return 0
    return parent(args)


if __name__ == "__main__":
    sys.exit(main())
