"""Peak memory and step time of one OPD update with TIP token selection, by retention ratio.

    python bench/tip_memory.py                           # soft_or at 1.0/0.5/0.2/0.1 (make bench)
    python bench/tip_memory.py --rule entropy_sample --ratios 1,0.5 --repeats 3
    python bench/tip_memory.py --device cuda --shape qwen3-4b   # GPU only (max_memory_allocated)

One update = what :class:`opsd.distill.DistillModule` runs after the teacher: the statistics pass
(no grad, chunked), the loss hook (here the TIP selector installed by ``tip_patches.apply``), the
grad-carrying pass over the kept rows, and backward (no optimizer step). Each ratio runs in a fresh
process on the same stand-in inputs as ``bench/opd_memory.py`` (fixed last hidden states with grad,
real LM heads; teacher = :meth:`opsd.teacher.Teacher.score`, i.e. hidden states + head).

Columns: peak = peak RSS (VmHWM after ``/proc/self/clear_refs``) or CUDA max allocated during the
update, above the level right before it (the inputs are not in it, see the breakdown); step time =
wall time of forward + backward (median of ``--repeats``; one warm-up call at a tiny shape first);
scoring overhead = time from the start of the statistics pass to the start of the grad pass
(statistics + selection hook), as a share of the step; none at ratio 1, where the TIP selector
keeps every token and ``loss.impl=fused`` computes the statistics inside the loss pass. After the
table: the naive path and the peer (``bench/opd_memory.py`` rows) and the targets of issue 14. The
timing wrappers replace
``opsd.distill.stats_from_sources`` / ``selected_loss_sum`` by timed pass-throughs; the hook
itself is left as ``tip_patches.apply`` installed it.

After the table, a breakdown of the lowest ratio: the resident inputs and what the update adds,
estimated from the shapes (live ``(rows, V)`` float32 buffers counted in ``opsd/losses.py``) and
measured for the two passes alone, to show why the saving is less than proportional.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402
import opd_memory  # noqa: E402

DEFAULT_RATIOS = "1.0,0.5,0.2,0.1"

# Live (rows, V) float32 buffers, counted in opsd/losses.py (per row of the chunk / of the kept set).
# Statistics pass (opsd.losses._chunk, row reductions of the raw logits): student logits, teacher
# logits (overwritten by their difference) and one exp buffer. Before issue 14 the direct formulas
# held 6.25 (log-probs of both sides, p, the log-ratio, p * ratio, a where output, a bool mask).
STATS_LIVE = 3.0
# Grad pass, per loss.impl: (kept for backward per kept row, live per chunk row).
# - fused: nothing kept (the gradients are computed in the forward); the chunk's three stats
#   buffers, the gradient w.r.t. the logits being written into the teacher's buffer;
# - autograd: log-probs, p, the log-ratio and the bool mask of every kept row stay until backward;
#   the chunk being computed adds its teacher log-probs, p * ratio and the where output;
# - recompute: nothing kept; backward re-runs one chunk at a time (its forward buffers plus the
#   gradients of log-probs, p and the log-ratio).
GRAD_LIVE = {"fused": (0.0, 3.0), "autograd": (3.25, 3.0), "recompute": (0.0, 6.25)}


def child(args) -> None:
    import opsd.distill as distill
    import tip_patches
    from opsd import hooks
    from opsd.distill import DistillModule

    device = C.child_setup(args)
    C.check_peak_reset(device)
    handle = tip_patches.apply(tip_patches.TipConfig(rule=args.rule, ratio=args.one, seed=args.seed))
    marks = _install_timers(distill, C.Meter(device).sync)

    def update(student, teacher_src, batch, a):
        module = DistillModule(student, a.vocab, "reverse_kl", chunk_size=a.chunk_size, impl=a.impl)
        loss_sum, _stats, sel, kept = module(batch["input_ids"], batch["attention_mask"], batch["loss_mask"],
                                             teacher_src)
        (loss_sum / max(kept, 1)).backward()  # token mean over the kept tokens (TIP Eq. 7)
        return sel

    tiny = C.tiny_copy(args)  # warm-up: lazy imports and one-time set-up stay out of the numbers
    update(*C.setup(tiny, device), tiny)
    before = C.current_bytes(device)
    student, teacher_src, batch = C.setup(args, device)
    inputs = C.current_bytes(device) - before
    peaks, times, scoring = [], [], []
    for _ in range(args.repeats):
        student.zero_grad(set_to_none=True)  # every repeat allocates its gradients like a fresh step
        marks.clear()
        with C.Meter(device) as m:
            sel = update(student, teacher_src, batch, args)
        peaks.append(m.peak_bytes)
        times.append(m.seconds)
        # one pass (a hook that keeps every token, loss.impl=fused): no separate statistics pass
        scoring.append(marks["grad_pass"] - marks["stats_pass"] if "stats_pass" in marks else None)
    assert hooks.active_selector_name() == handle.selector.selector_name
    out = dict(ratio=args.one, kept=int(sel.indices.numel()), n=args.tokens, peak_mb=max(peaks) / C.MB,
               inputs_mb=inputs / C.MB, seconds=statistics.median(times),
               scoring_s=None if None in scoring else statistics.median(scoring),
               selector=handle.selector.selector_name)
    if args.breakdown:
        out.update(_measure_passes(student, teacher_src, sel, args, device))
    handle.remove()
    C.emit(out)


def _install_timers(distill, sync) -> dict:
    """Timed pass-throughs for the two passes DistillModule looks up in its module namespace."""
    marks = {}

    def timed(name, fn):
        def wrapper(*a, **k):
            sync()
            marks[name] = time.perf_counter()
            return fn(*a, **k)
        return wrapper

    distill.stats_from_sources = timed("stats_pass", distill.stats_from_sources)
    distill.selected_loss_sum = timed("grad_pass", distill.selected_loss_sum)
    return marks


def _measure_passes(student, teacher_src, sel, args, device) -> dict:
    """Peak of the statistics pass alone and of the grad pass + backward alone (same selection)."""
    from opsd.losses import HiddenLogits, selected_loss_sum, stats_from_sources

    hidden = student.base_model.hidden[0]  # (N, d), a view of the leaf: gradient flows into it
    weight = student.lm_head.weight
    with C.Meter(device) as ms:
        stats_from_sources(HiddenLogits(hidden.detach(), weight.detach(), args.vocab), teacher_src, args.chunk_size)
    student.zero_grad(set_to_none=True)
    with C.Meter(device) as mg:
        loss = selected_loss_sum(hidden, weight, teacher_src, sel.indices, args.vocab, chunk_size=args.chunk_size,
                                 impl=args.impl)
        (loss / max(len(sel.indices), 1)).backward()
    return dict(stats_pass_mb=ms.peak_bytes / C.MB, grad_pass_mb=mg.peak_bytes / C.MB)


# ------------------------------------------------------------------ parent

def parent(args) -> int:
    here = Path(__file__).resolve()
    try:
        ratios = sorted({float(r) for r in args.ratios.split(",") if r.strip()}, reverse=True)
    except ValueError:
        sys.exit(f"--ratios must be comma-separated numbers, got {args.ratios!r}")
    if not ratios or not all(0 < r <= 1 for r in ratios):
        sys.exit(f"--ratios must be in (0, 1], got {args.ratios!r}")
    flags = [*C.shape_flags(args), "--rule", args.rule, "--repeats", str(args.repeats), "--impl", args.impl]
    print(f"# TIP update memory and time, rule={args.rule}, loss.impl={args.impl}\n\n{C.shape_line(args)}\n")
    res = [C.run_child(here, ["--one", repr(r), *flags, *(["--breakdown"] if r == ratios[-1] else [])],
                       args.threads) for r in ratios]
    refs = {} if args.no_reference else {m: opd_memory.run_row(m, args) for m in ("naive", "liger")
                                         if m == "naive" or C.has_liger()}
    ref = res[0]
    rows = []
    for r in res:
        rows.append([f"{r['ratio']:.2f}", f"{r['kept']:,}", f"{r['peak_mb']:,.0f}",
                     "—" if r is ref else C.pct(r["peak_mb"], ref["peak_mb"]), f"{r['seconds']:.2f}",
                     "—" if r is ref else C.pct(r["seconds"], ref["seconds"]),
                     "— (one pass: statistics inside the loss pass)" if r["scoring_s"] is None else
                     f"{100 * r['scoring_s'] / r['seconds']:.0f} % ({r['scoring_s']:.2f} s)"])
    vs = f"vs {ref['ratio']:.1f}"
    print(C.table(["ratio", "kept tokens", "peak MB", f"peak {vs}", "step s", f"time {vs}", "scoring overhead"],
                  rows))
    print(f"\nselector: {res[-1]['selector']}; inputs (resident before the update, not in the peaks): "
          f"{ref['inputs_mb']:,.0f} MB")
    if refs:
        print(reference_lines(res, refs, args))
    print(breakdown(args, res[-1], ref))
    return 0


def reference_lines(res: list, refs: dict, args) -> str:
    """The naive path and the peer (bench/opd_memory.py rows, same shape and chunk) and the targets
    of issue 14 per ratio: peak <= 0.35x naive and <= 0.8x the peer, time <= the peer's."""
    naive, peer = refs["naive"], refs.get("liger")
    out = [f"\nreferences (bench/opd_memory.py, fresh processes): naive {naive['peak_mb']:,.0f} MB, "
           f"{naive['seconds']:.2f} s; " + (f"liger (LigerFusedLinearJSDLoss, beta=1, chunk {peer['chunk']}, all tokens, "
                                             f"no statistics) {peer['peak_mb']:,.0f} MB, {peer['seconds']:.2f} s"
                                             if peer else "liger skipped (liger-kernel not installed)"),
           f"targets: peak <= {opd_memory.PEAK_VS_NAIVE}x naive, <= {opd_memory.PEAK_VS_PEER}x liger, "
           "time <= liger's (statistics pass and selection included)"]
    for r in res:
        if naive["peak_mb"] <= 0 or (peer and (peer["peak_mb"] <= 0 or peer["seconds"] <= 0)):
            out.append(f"  ratio {r['ratio']:.2f}: no ratio (a reference peak stays inside pages already touched "
                       "at this shape)")
            continue
        a = r["peak_mb"] / naive["peak_mb"]
        line = f"  ratio {r['ratio']:.2f}: {a:.2f}x naive ({'ok' if a <= opd_memory.PEAK_VS_NAIVE else 'MISSED'})"
        if peer:
            b, t = r["peak_mb"] / peer["peak_mb"], r["seconds"] / peer["seconds"]
            line += (f", {b:.2f}x liger ({'ok' if b <= opd_memory.PEAK_VS_PEER else 'MISSED'}), "
                     f"time {t:.2f}x liger ({'ok' if t <= 1.0 else 'MISSED'})")
        out.append(line)
    return "\n".join(out)


def breakdown(args, low: dict, ref: dict) -> str:
    """Where the memory goes at the lowest ratio, from the shapes (float32 logits; --dtype for the rest)."""
    b = 2 if args.dtype == "bfloat16" else 4
    n, v, d, dt, k = args.tokens, args.vocab, args.hidden, args.teacher_hidden, low["kept"]
    row = v * 4 / C.MB  # MB of one float32 vocabulary row
    c_stats, c_grad = min(args.chunk_size, n), min(args.chunk_size, k)
    saved, chunk = GRAD_LIVE[args.impl]
    stats_mb, grad_mb = STATS_LIVE * c_stats * row, (saved * k + chunk * c_grad) * row
    grads_mb = (v * d + 2 * n * d) * b / C.MB
    stats_buf_mb = n * (5 * 4 + 2 * 8) / C.MB  # 5 float32 statistics + sample index, position (int64)
    # the two passes run one after the other; the gradients are allocated in backward (grad pass)
    est = max(stats_mb, grad_mb + grads_mb) + stats_buf_mb

    def line(what, mb, note=""):
        return f"  {what:<62} {mb:>10,.1f} MB{'  ' + note if note else ''}"

    impl = f" (loss.impl={args.impl})"
    out = [f"\nWhere the memory goes at ratio {low['ratio']:g} (K = {k:,} of N = {n:,} tokens), from the shapes:",
           "resident inputs (not in the peaks):",
           line(f"student hidden states (N, d) = ({n}, {d})", n * d * b / C.MB),
           line(f"student LM head weight (V, d) = ({v}, {d})", v * d * b / C.MB),
           line(f"teacher hidden states (N, d_T) = ({n}, {dt})", n * dt * b / C.MB),
           line(f"teacher LM head weight (V, d_T) = ({v}, {dt})", v * dt * b / C.MB),
           "added by the update:",
           line("LM head weight grad (V, d) + hidden-state grads 2 x (N, d)", grads_mb),
           line("statistics buffers (N,) x 7", stats_buf_mb),
           line(f"statistics pass: ~{STATS_LIVE:g} live (chunk, V) f32, chunk = {c_stats}", stats_mb,
                f"measured alone: {low['stats_pass_mb']:,.0f} MB"),
           line(f"grad pass{impl}: ~{saved:g} (V,) f32 per kept row + ~{chunk:g} per chunk row",
                grad_mb, f"measured alone (+ backward): {low['grad_pass_mb']:,.0f} MB"),
           line("estimate: max(statistics pass, grad pass + grads) + statistics", est,
                f"measured update: {low['peak_mb']:,.0f} MB"),
           f"The statistics pass costs the same at every ratio (it scores all N tokens, chunk_size rows at a "
           f"time), so once the grad pass of the K kept rows is smaller than it, the peak stops falling; "
           f"the LM head gradient ({v * d * b / C.MB:,.0f} MB) is also paid at every ratio. At ratio "
           f"{ref['ratio']:.1f} the grad pass + grads is ~{(saved * ref['kept'] + chunk * min(args.chunk_size, ref['kept'])) * row + grads_mb:,.0f}"
           f" MB. A smaller loss.chunk_size lowers the statistics-pass floor."]
    return "\n".join(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    C.add_shape_args(p)
    p.add_argument("--rule", default="soft_or", help="tip.rule (default %(default)s)")
    p.add_argument("--ratios", default=DEFAULT_RATIOS, help="retention ratios, comma-separated (default %(default)s)")
    p.add_argument("--repeats", type=int, default=1, help="updates per ratio; time = median (default %(default)s)")
    p.add_argument("--impl", choices=("fused", "autograd", "recompute"), default="fused",
                   help="loss.impl (default: the trainer default, %(default)s)")
    p.add_argument("--no-reference", action="store_true",
                   help="skip the naive and liger reference rows (bench/opd_memory.py; liger needs the bench extra)")
    p.add_argument("--one", type=float, help=argparse.SUPPRESS)  # child process: one ratio
    p.add_argument("--breakdown", action="store_true", help=argparse.SUPPRESS)  # child: measure the passes alone
    args = p.parse_args(argv)
    C.resolve_shape(args)
    if args.repeats < 1:
        sys.exit(f"--repeats must be >= 1, got {args.repeats}")
    if args.one is not None:
        child(args)
        return 0
    return parent(args)


if __name__ == "__main__":
    sys.exit(main())
