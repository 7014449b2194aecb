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
(statistics + selection hook), as a share of the step. The timing wrappers replace
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

DEFAULT_RATIOS = "1.0,0.5,0.2,0.1"

# Live (rows, V) float32 buffers, counted in opsd/losses.py (per row of the chunk / of the kept set):
# statistics pass, inside _kl: student and teacher log-probs, p, the log-ratio, p * ratio, the
# output of torch.where (its 0 is a scalar), and the bool mask p > 0 (1/4 of a float32).
STATS_LIVE = 6.25
# grad pass: autograd keeps log-probs, p, the log-ratio and the bool mask of every kept row until
# backward; the chunk being computed adds its teacher log-probs, p * ratio and the where output.
GRAD_SAVED, GRAD_CHUNK = 3.25, 3.0
# with loss.recompute_chunks: nothing vocabulary-wide is kept per row; backward re-runs one chunk
# at a time (its forward buffers plus the gradients of log-probs, p and the log-ratio).
RECOMPUTE_SAVED, RECOMPUTE_CHUNK = 0.0, 6.25


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
        module = DistillModule(student, a.vocab, "reverse_kl", chunk_size=a.chunk_size,
                               recompute_chunks=a.recompute)
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
        with C.Meter(device) as m:
            sel = update(student, teacher_src, batch, args)
        peaks.append(m.peak_bytes)
        times.append(m.seconds)
        scoring.append(marks["grad_pass"] - marks["stats_pass"])
    assert hooks.active_selector_name() == handle.selector.selector_name
    out = dict(ratio=args.one, kept=int(sel.indices.numel()), n=args.tokens, peak_mb=max(peaks) / C.MB,
               inputs_mb=inputs / C.MB, seconds=statistics.median(times),
               scoring_s=statistics.median(scoring), selector=handle.selector.selector_name)
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
                                 recompute=args.recompute)
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
    flags = [*C.shape_flags(args), "--rule", args.rule, "--repeats", str(args.repeats)]
    flags += ["--recompute"] if args.recompute else []
    print(f"# TIP update memory and time, rule={args.rule}"
          f"{', loss.recompute_chunks=true' if args.recompute else ''}\n\n{C.shape_line(args)}\n")
    res = [C.run_child(here, ["--one", repr(r), *flags, *(["--breakdown"] if r == ratios[-1] else [])],
                       args.threads) for r in ratios]
    ref = res[0]
    rows = []
    for r in res:
        rows.append([f"{r['ratio']:.2f}", f"{r['kept']:,}", f"{r['peak_mb']:,.0f}",
                     "—" if r is ref else C.pct(r["peak_mb"], ref["peak_mb"]), f"{r['seconds']:.2f}",
                     "—" if r is ref else C.pct(r["seconds"], ref["seconds"]),
                     f"{100 * r['scoring_s'] / r['seconds']:.0f} % ({r['scoring_s']:.2f} s)"])
    vs = f"vs {ref['ratio']:.1f}"
    print(C.table(["ratio", "kept tokens", "peak MB", f"peak {vs}", "step s", f"time {vs}", "scoring overhead"],
                  rows))
    print(f"\nselector: {res[-1]['selector']}; inputs (resident before the update, not in the peaks): "
          f"{ref['inputs_mb']:,.0f} MB")
    print(breakdown(args, res[-1], ref))
    return 0


def breakdown(args, low: dict, ref: dict) -> str:
    """Where the memory goes at the lowest ratio, from the shapes (float32 logits; --dtype for the rest)."""
    b = 2 if args.dtype == "bfloat16" else 4
    n, v, d, dt, k = args.tokens, args.vocab, args.hidden, args.teacher_hidden, low["kept"]
    row = v * 4 / C.MB  # MB of one float32 vocabulary row
    c_stats, c_grad = min(args.chunk_size, n), min(args.chunk_size, k)
    saved, chunk = (RECOMPUTE_SAVED, RECOMPUTE_CHUNK) if args.recompute else (GRAD_SAVED, GRAD_CHUNK)
    stats_mb, grad_mb = STATS_LIVE * c_stats * row, (saved * k + chunk * c_grad) * row
    grads_mb = (v * d + 2 * n * d) * b / C.MB
    stats_buf_mb = n * (5 * 4 + 2 * 8) / C.MB  # 5 float32 statistics + sample index, position (int64)
    # the two passes run one after the other; the gradients are allocated in backward (grad pass)
    est = max(stats_mb, grad_mb + grads_mb) + stats_buf_mb

    def line(what, mb, note=""):
        return f"  {what:<62} {mb:>10,.1f} MB{'  ' + note if note else ''}"

    recompute = " (loss.recompute_chunks)" if args.recompute else ""
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
           line(f"grad pass{recompute}: ~{saved:g} (V,) f32 per kept row + ~{chunk:g} per chunk row",
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
    p.add_argument("--recompute", action="store_true", help="loss.recompute_chunks=true (default: the trainer default, false)")
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
