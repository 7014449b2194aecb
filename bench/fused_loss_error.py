"""Float32 rounding error of the fused loss (``loss.impl=fused``) and of the naive formula, against a
float64 reference, per token: the figures of docs/performance.md after the loss-memory table.

    python bench/fused_loss_error.py              # V=151,936, d=256, N=2,048 rows (4 min, shared 2-core CPU)
    python bench/fused_loss_error.py --rows 64    # the first 64 of those rows (1 min)

Inputs: those of ``bench/opd_memory.py``'s rows (``bench/_common.py``: same ``--seed``, shape, the
tiny warm-up problem drawn first, stand-in student, the teacher source of
:meth:`opsd.teacher.Teacher.score`), of which the first ``--rows`` response tokens (default: all)
are scored; over all of them the token-mean losses printed are those of the ``naive`` and ``fused``
rows of the README's loss-memory table (12.318496, 12.318300). Per token, reverse KL(pi_S || pi_T):

- ``float64 reference``: the direct formula (log_softmax of both, ``sum p (log p - log q)``) on the
  same inputs upcast to float64, logits included;
- ``naive``: :func:`opd_memory.naive_reverse_kl`'s formula, float32 (bf16 inputs: float32 logits);
- ``fused``: :func:`opsd.losses.loss_and_stats` (what DistillModule runs with the default hook, one
  pass, ``--chunk-size`` rows at a time); per-token values from its statistics, whose sum must be
  its loss (checked).

Prints, per path, the mean signed error per token (value - reference), the mean and max absolute
error. No rows fall back to the direct formulas here (checked: the fused figure is the closed form's).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402


def reference_rkl(hs, ws, ht, wt, vocab: int, chunk: int):
    """Per-token KL(pi_S || pi_T) ``(n,)`` in float64, ``chunk`` rows at a time."""
    import torch

    out = []
    ws64, wt64 = ws[:vocab].double(), wt[:vocab].double()
    for s in range(0, hs.shape[0], chunk):
        ls = torch.log_softmax(hs[s:s + chunk].double() @ ws64.T, -1)
        lt = torch.log_softmax(ht[s:s + chunk].double() @ wt64.T, -1)
        out.append((ls.exp() * (ls - lt)).sum(-1))
        del ls, lt
    return torch.cat(out)


def naive_rkl(hs, ws, ht, wt, vocab: int, chunk: int):
    """Per-token KL(pi_S || pi_T) by the naive float32 formula of ``opd_memory.naive_reverse_kl``."""
    import torch

    out = []
    for s in range(0, hs.shape[0], chunk):
        ls = torch.log_softmax((hs[s:s + chunk] @ ws[:vocab].T).float(), -1)
        lt = torch.log_softmax((ht[s:s + chunk] @ wt[:vocab].T).float(), -1)
        out.append((ls.exp() * (ls - lt)).sum(-1))
        del ls, lt
    return torch.cat(out)


def measure(args) -> dict:
    import torch

    from opsd.losses import HiddenLogits, fallback_rows, loss_and_stats, take_fallback_rows

    device = C.child_setup(args)
    if not args.no_warmup_draws:  # opd_memory.py's child draws a tiny warm-up problem first
        C.setup(C.tiny_copy(args), device)
    student, teacher_src, _batch = C.setup(args, device)
    n = min(args.rows, args.tokens)
    with torch.no_grad():
        hs = student.base_model.hidden[0, :n].detach()  # (n, d): the loss positions are all tokens
        ws = student.get_output_embeddings().weight.detach()
        ht, wt = teacher_src.hidden[:n], teacher_src.weight
        ref = reference_rkl(hs, ws, ht, wt, args.vocab, args.ref_chunk)
        naive = naive_rkl(hs, ws, ht, wt, args.vocab, args.ref_chunk)
        take_fallback_rows()
        loss, st = loss_and_stats(hs, ws, HiddenLogits(ht, wt, args.vocab), args.vocab, "reverse_kl",
                                  chunk_size=args.chunk_size)
        if fallback_rows():
            sys.exit(f"rows fell back to the direct formulas: {fallback_rows()}; the fused figure would not be "
                     "the closed form's")
        fused = st.reverse_kl
        # the statistics are the per-row values the loss sums (reverse KL is >= 0: the clamp is a no-op)
        torch.testing.assert_close(fused.double().sum(), loss.double(), rtol=1e-6, atol=1e-6)

    def errs(x):
        d = x.double() - ref
        return dict(mean=d.mean().item(), mean_abs=d.abs().mean().item(), max_abs=d.abs().max().item(),
                    token_mean=x.double().mean().item())

    return dict(rows=n, ref_mean=ref.mean().item(), naive=errs(naive), fused=errs(fused))


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    C.add_shape_args(p)
    p.add_argument("--rows", type=int, default=None, help="score the first ROWS tokens (default: all --tokens)")
    p.add_argument("--ref-chunk", type=int, default=64,
                   help="rows per chunk of the float64 reference and the naive formula (default %(default)s)")
    p.add_argument("--no-warmup-draws", action="store_true",
                   help="skip the warm-up problem opd_memory.py draws first (other random inputs)")
    args = p.parse_args(argv)
    C.resolve_shape(args)
    args.rows = args.tokens if args.rows is None else args.rows
    if args.rows <= 0 or args.ref_chunk <= 0:
        sys.exit("--rows and --ref-chunk must be > 0")
    res = measure(args)
    print(C.shape_line(args))
    print(f"first {res['rows']:,} rows; float64 reference: token-mean reverse KL {res['ref_mean']:.6f}\n")
    print(C.table(["path", "mean error per token", "mean |error|", "max |error|", "token-mean loss"],
                  [[name, f"{res[k]['mean']:+.1e}", f"{res[k]['mean_abs']:.1e}", f"{res[k]['max_abs']:.1e}",
                    f"{res[k]['token_mean']:.6f}"]
                   for k, name in (("naive", f"naive {args.dtype}"), ("fused", f"loss.impl=fused {args.dtype}, "
                                                                              f"chunk {args.chunk_size}"))]))
    return res


if __name__ == "__main__":
    main()
