"""Peak memory of ONE OPD loss forward + backward: naive full-vocabulary logits, opsd's chunked
paths, and a peer (Liger-Kernel's chunked fused-linear JSD loss), side by side.

    python bench/opd_memory.py                          # V=151,936, d=256, N=2,048 (make bench)
    python bench/opd_memory.py --modes naive,fused,liger --chunk-size 256
    python bench/opd_memory.py --device cuda --shape qwen3-4b   # GPU only (max_memory_allocated)

Rows (each in a fresh process, so one row's allocations cannot lower another's peak):

- ``naive``: student logits ``hidden @ W.T`` as a full ``(N, V)`` float32 tensor, full teacher
  logits, ``log_softmax`` of both, token-mean reverse KL ``KL(pi_S || pi_T)``, backward;
- ``fused``, ``autograd``, ``recompute``: what the trainer runs, :class:`opsd.distill.DistillModule`
  with the teacher source of :meth:`opsd.teacher.Teacher.score` (teacher last hidden states +
  head), default hook (every token kept), ``loss.impl`` = the row's name (``fused`` is the
  default: statistics and loss in one pass); loss = ``loss_sum / kept``. Statistics included;
- ``liger``: ``liger_kernel.chunked_loss.LigerFusedLinearJSDLoss`` with beta = 1 (reverse KL),
  ``compiled=False`` (as TRL uses it), no hard loss: the peer's loss alone, no statistics.
  Needs the ``bench`` extra (``pip install --no-deps -c constraints-cpu.txt liger-kernel`` on CPU).

A row name may carry its own chunk size, ``fused@1024``; without one a row uses ``--chunk-size``.
The default rows put ours and the peer at 1,024 and 512 rows per chunk and print the targets
(issue 14): peak <= 0.35x naive and <= 0.8x the peer at the same chunk, time <= the peer's.

The model is a stand-in (``bench/_common.py``): fixed last hidden states with grad and a real LM
head, so only the loss step is measured. Peak = peak RSS (VmHWM after ``/proc/self/clear_refs``)
or CUDA max allocated, minus the level right before the step, i.e. without the inputs, which are
reported on their own. The script fails if a loss differs from the naive one.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

MODES = {
    "naive": "naive: full (N, V) logits, log_softmax, mean KL",
    "fused": "fused: DistillModule, loss.impl=fused (default)",
    "autograd": "autograd: DistillModule, loss.impl=autograd",
    "recompute": "recompute: DistillModule, loss.impl=recompute",
    "liger": "liger: LigerFusedLinearJSDLoss(beta=1)",
}
DEFAULT_MODES = "naive,fused@1024,liger@1024,fused,autograd,recompute,liger@512"
PEAK_VS_NAIVE, PEAK_VS_PEER = 0.35, 0.8  # the targets of issue 14


def split_mode(mode: str, default_chunk: int):
    """``"fused@1024"`` -> ``("fused", 1024)``; ``"fused"`` -> ``("fused", default_chunk)``."""
    name, _, chunk = mode.partition("@")
    if name not in MODES:
        raise ValueError(f"--modes: {name!r} is not one of {list(MODES)} (optionally @CHUNK), in {mode!r}")
    try:
        size = int(chunk) if chunk else default_chunk
    except ValueError:
        raise ValueError(f"--modes: chunk size {chunk!r} of {mode!r} is not an integer") from None
    if size <= 0:
        raise ValueError(f"--modes: chunk size of {mode!r} must be > 0")
    return name, size


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


def liger_reverse_kl(student, teacher_src, batch: dict, vocab: int, chunk: int):
    """The peer: Liger's chunked fused-linear JSD at beta = 1, i.e. KL(pi_S || pi_T), token mean."""
    import torch

    try:
        from liger_kernel.chunked_loss import LigerFusedLinearJSDLoss
    except ImportError:
        sys.exit("the liger rows need liger-kernel (the bench extra): "
                 "pip install --no-deps -c constraints-cpu.txt liger-kernel")

    out = student.base_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    h = out.last_hidden_state[batch["loss_mask"].bool()]  # (N, d), with grad
    loss_fn = LigerFusedLinearJSDLoss(weight_hard_loss=0.0, weight_soft_loss=1.0, beta=1.0, compiled=False,
                                      chunk_size=chunk)
    labels = torch.zeros(h.shape[0], dtype=torch.long, device=h.device)  # no ignored token: mean over all N
    return loss_fn(h, student.get_output_embeddings().weight[:vocab], teacher_src.hidden,
                   teacher_src.weight[:vocab], labels)


def step(mode: str, student, teacher_src, batch: dict, args):
    """One loss forward + backward; returns the token-mean loss."""
    from opsd.distill import DistillModule

    if mode == "naive":
        loss = naive_reverse_kl(student, teacher_src, batch, args.vocab)
    elif mode == "liger":
        loss = liger_reverse_kl(student, teacher_src, batch, args.vocab, args.chunk_size)
    else:
        module = DistillModule(student, args.vocab, "reverse_kl", chunk_size=args.chunk_size, impl=mode)
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
    C.emit(dict(mode=args.one, chunk=args.chunk_size, peak_mb=m.peak_bytes / C.MB, inputs_mb=inputs / C.MB,
                seconds=m.seconds, loss=float(loss)))


def run_row(mode: str, args) -> dict:
    """One row in a fresh process (also used by ``tip_memory.py`` for its reference rows)."""
    name, chunk = split_mode(mode, args.chunk_size)
    flags = C.shape_flags(args)
    flags[flags.index("--chunk-size") + 1] = str(chunk)
    return C.run_child(Path(__file__).resolve(), ["--one", name, *flags], args.threads)


def row_label(r: dict) -> str:
    return MODES[r["mode"]] if r["mode"] == "naive" else f"{MODES[r['mode']]}, chunk {r['chunk']}"


def targets(res: dict, naive: dict) -> list:
    """Target lines for each opsd row that has a peer row at the same chunk size."""
    peers = {r["chunk"]: r for r in res.values() if r["mode"] == "liger"}
    out = []
    for r in res.values():
        if r["mode"] in ("naive", "liger"):
            continue
        if naive["peak_mb"] <= 0:
            out.append(f"{r['mode']} @ chunk {r['chunk']}: no ratio (the naive peak stays inside pages already "
                       "touched at this shape)")
            continue
        vs_naive = r["peak_mb"] / naive["peak_mb"]
        line = f"{r['mode']} @ chunk {r['chunk']}: peak {vs_naive:.2f}x naive ({'ok' if vs_naive <= PEAK_VS_NAIVE else 'MISSED'})"
        peer = peers.get(r["chunk"])
        if peer is not None and peer["peak_mb"] > 0 and peer["seconds"] > 0:
            vs_peer, t = r["peak_mb"] / peer["peak_mb"], r["seconds"] / peer["seconds"]
            line += (f"; {vs_peer:.2f}x liger's peak ({'ok' if vs_peer <= PEAK_VS_PEER else 'MISSED'})"
                     f"; {t:.2f}x liger's time ({'ok' if t <= 1.0 else 'MISSED'})")
        out.append(line)
    return out


def parent(args) -> int:
    try:
        modes = [m.strip() for m in args.modes.split(",") if m.strip()]
        for m in modes:
            split_mode(m, args.chunk_size)
    except ValueError as e:
        sys.exit(str(e))
    if "naive" not in modes:
        sys.exit(f"--modes must include naive (the reference), got {args.modes!r}")
    skipped = [m for m in modes if m.startswith("liger")] if not C.has_liger() else []
    modes = [m for m in modes if m not in skipped]
    print(f"# OPD loss memory, one forward + backward\n\n{C.shape_line(args)}\n")
    if skipped:
        print(f"(skipped {', '.join(skipped)}: liger-kernel is not installed; "
              "pip install --no-deps -c constraints-cpu.txt liger-kernel)\n")
    res = {m: run_row(m, args) for m in modes}
    ref = res["naive"]
    full = C.full_logits_mb(args)
    rows = [[row_label(r), f"{r['peak_mb']:,.0f}", f"{r['peak_mb'] / full:.1f}",
             C.ratio(r["peak_mb"], ref["peak_mb"]), f"{r['seconds']:.2f}", f"{r['loss']:.6f}"]
            for m, r in res.items()]
    print(C.table(["path", "peak MB over inputs", "in (N, V) f32 tensors", "vs naive", "wall s", "loss"], rows))
    print(f"\ninputs (student hidden + LM head, teacher hidden + head; resident before the step, not in the "
          f"peaks): {ref['inputs_mb']:,.0f} MB")
    print(f"one (N, V) float32 tensor: {args.tokens:,} x {args.vocab:,} x 4 B = {full:,.0f} MB")
    print("opsd rows include the statistics pass (one pass with loss.impl=fused and the default hook); "
          "liger's do not compute statistics")
    ok = True
    for m, r in res.items():
        if m == "naive":
            continue
        diff = abs(r["loss"] - ref["loss"])
        agree = diff <= 1e-4 * max(1.0, abs(ref["loss"]))
        ok &= agree
        print(f"|loss({m}) - loss(naive)| = {diff:.3e}  ({'agree' if agree else 'DISAGREE'})")
    lines = targets(res, ref)
    if lines:
        print(f"\ntargets: peak <= {PEAK_VS_NAIVE}x naive, <= {PEAK_VS_PEER}x liger at the same chunk, time <= liger's")
        print("\n".join("  " + line for line in lines))
    return 0 if ok else 1


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    C.add_shape_args(p)
    p.add_argument("--modes", default=DEFAULT_MODES,
                   help="rows to run, comma-separated, each MODE or MODE@CHUNK; MODE in " + ", ".join(MODES)
                   + " (default %(default)s)")
    p.add_argument("--one", choices=sorted(MODES), help=argparse.SUPPRESS)  # child process: one row
    args = p.parse_args(argv)
    C.resolve_shape(args)
    if args.one:
        child(args)
        return 0
    return parent(args)


if __name__ == "__main__":
    sys.exit(main())
