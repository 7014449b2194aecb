"""Chunked per-token divergences between student and teacher, over the full vocabulary.

Two passes use this module (DESIGN.md, "The data path of one training step"):

1. the **statistics pass** (no gradient): :func:`stats_from_sources` computes per-token student
   entropy, reverse KL, forward KL and teacher entropy, ``chunk_size`` rows at a time, so no
   full ``(N, V)`` float32 tensor exists at once; each is a few row reductions of the raw logits
   (three live ``(chunk, V)`` buffers, see "row reductions");
2. the **grad pass**: :func:`selected_loss_sum` returns the (weighted) sum of the divergences of
   the rows the loss hook kept. ``loss.impl=fused`` (default, :class:`FusedDivergence`) computes
   the gradients w.r.t. the hidden rows and the head in the same chunked forward, from the
   closed-form gradient w.r.t. the logits; ``autograd`` and ``recompute`` let autograd do it.

When the hook keeps every token with weight 1 (the default hook), :func:`loss_and_stats` does
both in one pass.

Logits are produced on demand from last hidden states and the output-embedding matrix
(``logits = hidden @ W.T``), so the teacher's contribution can be cached as its hidden states
``(N, d_T)`` (small) or as its top-k log-probabilities (:class:`TeacherTopK`).

Vocabulary alignment: teacher and student may pad their logit widths differently (Qwen2.5-1.5B
151,936 vs 7B/14B 152,064). Both are sliced to ``vocab_size`` = the shared tokenizer length; the
padded rows beyond it are never sampled.
"""
from __future__ import annotations

import logging
import math
from collections import Counter
from dataclasses import dataclass
from typing import Optional, Union

import torch
from torch.utils.checkpoint import checkpoint

from opsd.config import LOSS_IMPLS, _choice
from opsd.hooks import TokenStats

EXTRA_TOPK = 16  # teacher top-k of the adaptive-KL term KL(q~_T || pi_S) (EQUATIONS.md, App. B.1)

log = logging.getLogger("opsd")


# ------------------------------------------------------------------ logit sources

@dataclass
class HiddenLogits:
    """Logits of rows of ``hidden (N, d)`` through an output embedding ``weight (V_pad, d)``."""

    hidden: torch.Tensor  # (N, d)
    weight: torch.Tensor  # (V_pad, d)
    vocab_size: int
    bias: Optional[torch.Tensor] = None  # (V_pad,)

    def __len__(self) -> int:
        return self.hidden.shape[0]

    def rows(self, idx) -> torch.Tensor:
        w = self.weight[: self.vocab_size]
        h = self.hidden[idx].to(w.dtype)
        out = h @ w.T  # (n, V)
        if self.bias is not None:
            out = out + self.bias[: self.vocab_size]
        return _upcast(out)


@dataclass
class DenseLogits:
    """Rows of a materialized ``(N, V_pad)`` logits tensor (tests, small models)."""

    logits: torch.Tensor
    vocab_size: int

    def __len__(self) -> int:
        return self.logits.shape[0]

    def rows(self, idx) -> torch.Tensor:
        # a copy, never a view: the passes overwrite the rows they get
        return _upcast(self.logits[idx, : self.vocab_size]).clone()


@dataclass
class TeacherTopK:
    """The teacher's top-k log-probabilities per position (what a vLLM teacher server returns
    with ``prompt_logprobs=k``). Divergences are then computed on the support of those k tokens
    plus one tail bucket holding the rest of the mass, on both sides.

    ``logprobs (N, k)`` are log-softmax values over the full teacher vocabulary; ``indices (N, k)``.
    """

    logprobs: torch.Tensor
    indices: torch.Tensor

    def __len__(self) -> int:
        return self.logprobs.shape[0]

    @classmethod
    def from_logits(cls, source, k: int, chunk_size: int = 512) -> "TeacherTopK":
        vals, idxs = [], []
        for s in range(0, len(source), chunk_size):
            lp = torch.log_softmax(source.rows(slice(s, s + chunk_size)), dim=-1)
            v, i = lp.topk(min(k, lp.shape[-1]), dim=-1)
            vals.append(v)
            idxs.append(i)
        if not vals:
            return cls(torch.zeros(0, k), torch.zeros(0, k, dtype=torch.long))
        return cls(torch.cat(vals), torch.cat(idxs))


TeacherSource = Union[HiddenLogits, DenseLogits, TeacherTopK]


def align_vocab(student_width: int, teacher_width: int, tokenizer_len: Optional[int] = None) -> int:
    """The logit width both sides are sliced to.

    >>> align_vocab(151936, 152064, 151665)
    151665
    """
    shared = min(student_width, teacher_width)
    if tokenizer_len is None:
        return shared
    if tokenizer_len > shared:
        raise ValueError(
            f"the tokenizer has {tokenizer_len} tokens but the logits are only {shared} wide "
            f"(student {student_width}, teacher {teacher_width}): student and teacher do not share "
            "this tokenizer")
    return tokenizer_len


# ------------------------------------------------------------------ per-chunk formulas

def _entropy(logp: torch.Tensor) -> torch.Tensor:
    # h = -sum p log p  (TIP Eq. 2); exp(-inf) * -inf would be NaN, so use xlogy-safe form
    p = logp.exp()
    return -(p * logp.clamp_min(torch.finfo(logp.dtype).min)).sum(-1)


def _kl(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """KL(p || q) per row for log-probabilities ``(n, V)``; 0 * (log 0 - x) counts as 0."""
    p = logp.exp()
    diff = logp - logq
    return torch.where(p > 0, p * diff, 0.0).sum(-1)


def _jsd(logp_s: torch.Tensor, logp_t: torch.Tensor, beta: float) -> torch.Tensor:
    # m = beta * pi_T + (1 - beta) * pi_S;  JSD = beta KL(T||m) + (1-beta) KL(S||m)
    log_m = torch.logsumexp(torch.stack([logp_t + math.log(beta), logp_s + math.log(1 - beta)]), dim=0)
    return beta * _kl(logp_t, log_m) + (1 - beta) * _kl(logp_s, log_m)


def divergence(logp_s: torch.Tensor, logp_t: torch.Tensor, loss_type: str, beta: float = 0.5) -> torch.Tensor:
    """Per-row divergence ``(n,)`` from log-probabilities ``(n, V)`` (gradient through ``logp_s``)."""
    if loss_type == "reverse_kl":  # TIP Eq. 1 / 3
        return _kl(logp_s, logp_t)
    if loss_type == "forward_kl":
        return _kl(logp_t, logp_s)
    if loss_type == "jsd":
        return _jsd(logp_s, logp_t, beta)
    raise ValueError(f"loss.type={loss_type!r} is unknown; choose reverse_kl, forward_kl or jsd")


def _bucketize(logp_s: torch.Tensor, top: TeacherTopK, rows) -> tuple:
    """Student and teacher log-probs on the teacher's top-k support plus a tail bucket: (n, k+1)."""
    t_lp, idx = top.logprobs[rows].to(logp_s.device), top.indices[rows].to(logp_s.device)
    return _with_tail(logp_s.gather(-1, idx)), _with_tail(_upcast(t_lp))


def topk_forward_kl(logp_s: torch.Tensor, t_logits_or_topk, k: int = EXTRA_TOPK) -> torch.Tensor:
    """KL(q~_T || pi_S) over the teacher's top-k renormalized (q~_T), the adaptive-KL extra term.

    ``t_logits_or_topk``: teacher log-probs ``(n, V)`` or a ``(logprobs (n,k'), indices)`` pair.
    """
    if isinstance(t_logits_or_topk, tuple):
        t_lp, idx = t_logits_or_topk
        t_lp, idx = t_lp[:, :k], idx[:, :k]
    else:
        t_lp, idx = t_logits_or_topk.topk(min(k, t_logits_or_topk.shape[-1]), dim=-1)
    return _topk_kl_gathered(logp_s.gather(-1, idx), t_lp)


# ------------------------------------------------------------------ row reductions
#
# The four statistics and the closed-form gradients need only row scalars (max, sum of exp,
# log-sum-exp) and row dot products of the raw logits z_S, z_T. With e = exp(z - max z), s = sum e:
#   lse = max z + log s,  p = e / s,  H(p) = lse - <p, z>,
#   KL(q_S || p_T) = <q_S, z_S - z_T> - (lse_S - lse_T),  KL(p_T || q_S) = <p_T, z_T - z_S> + (lse_S - lse_T),
# so a chunk holds three (n, V) buffers: z_S, z_T (overwritten by z_T - z_S) and one exp buffer.

def _upcast(x: torch.Tensor) -> torch.Tensor:
    """Half types to float32 (logits are reduced in float32); float64 stays float64 (tests)."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def _row_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise dot product ``(n,)`` of two ``(n, V)`` tensors without an ``(n, V)`` temporary."""
    if a.is_cuda:
        return torch.bmm(a.unsqueeze(1), b.unsqueeze(2)).view(-1)  # one batched GEMV launch
    # On CPU one BLAS dot per row is ~4x faster than bmm or (a * b).sum(-1) (measured at V = 151,936).
    return torch.stack([torch.dot(x, y) for x, y in zip(a, b)]) if len(a) else a.new_zeros(0)


def _exp_into(z: torch.Tensor, out: torch.Tensor):
    """``out <- exp(z - max z)`` row-wise; returns ``(lse (n,), s (n,))`` with softmax = out / s."""
    m = z.amax(-1, keepdim=True)
    torch.sub(z, m, out=out).exp_()
    s = out.sum(-1, keepdim=True)
    return (m + s.log()).squeeze(-1), s.squeeze(-1)


def _with_tail(lp: torch.Tensor) -> torch.Tensor:
    """``lp (n, k)`` log-probs of k tokens, plus a tail bucket log(1 - sum exp lp): ``(n, k + 1)``."""
    mass = lp.exp().sum(-1, keepdim=True).clamp(max=1.0)
    tail = torch.log1p(-mass.clamp(max=1 - 1e-7))  # log(1 - sum_k p); clamp keeps it finite
    return torch.cat([lp, tail], dim=-1)


def _topk_kl_gathered(s_lp: torch.Tensor, t_lp: torch.Tensor) -> torch.Tensor:
    """KL(q~_T || pi_S) from the student's log-probs ``s_lp (n, k)`` at the teacher's top-k tokens
    and the teacher's top-k log-probs ``t_lp (n, k)`` (renormalized here)."""
    q = torch.log_softmax(_upcast(t_lp), dim=-1)
    return (q.exp() * (q - s_lp)).sum(-1)


# ------------------------------------------------------------------ one chunk, closed form

@dataclass
class _Chunk:
    """What one chunk of rows yields (each ``(n,)`` unless said otherwise)."""

    stats: dict  # statistics name -> (n,)
    loss: Optional[torch.Tensor] = None  # w * divergence (+ ew * top-k KL), per row
    grad: Optional[torch.Tensor] = None  # d(sum loss) / d z_S, (n, V)


def _sparse_terms(zs, lse_s, terms, want_grad: bool):
    """Divergences that read the student's log-probs only at a few columns (a top-k teacher's buckets,
    the adaptive-KL term). ``terms``: ``(idx (n, k), fn(log-probs at idx) -> (n,), weight (n,))``.
    Returns the weighted per-row sum, and with ``want_grad`` the columns and the gradient
    ``(n, sum k)`` w.r.t. the student's log-probs there (autograd on these small tensors only)."""
    total, cols, grads = 0.0, [], []
    for idx, fn, w in terms:
        lp = (zs.gather(-1, idx) - lse_s[:, None]).requires_grad_(want_grad)  # (n, k)
        with torch.enable_grad():
            val = fn(lp) * w
            if want_grad:
                grads.append(torch.autograd.grad(val.sum(), lp)[0])
                cols.append(idx)
        total = total + val.detach()
    if not cols:
        return total, None, None
    return total, torch.cat(cols, 1), torch.cat(grads, 1)


def _chunk(zs, teacher: TeacherSource, rows, loss_type: str, beta: float, w, ew, want_topk_kl: bool) -> _Chunk:
    """Statistics, per-row loss and its gradient w.r.t. the student logits for one chunk of rows.

    ``zs (n, V)``: raw student logits, a fresh buffer that this function consumes (the gradient may
    be returned in it). ``w (n,)``: loss weights, ``None`` = statistics only. ``ew (n,)``: weights of
    the adaptive-KL term, or ``None``. At most three ``(n, V)`` buffers are alive (four for JSD).
    """
    want_grad, need_top = w is not None, want_topk_kl or ew is not None
    if isinstance(teacher, TeacherTopK):
        return _topk_teacher_chunk(zs, torch.empty_like(zs), teacher, rows, loss_type, beta, w, ew, want_topk_kl)
    zt = _upcast(teacher.rows(rows))  # (n, V), fresh
    buf = torch.empty_like(zs)
    t_top = zt.topk(min(EXTRA_TOPK, zt.shape[-1]), dim=-1) if need_top else None  # only when asked: a top-k over V
    lse_t, s_t = _exp_into(zt, buf)  # buf = e_T, p_T = e_T / s_T
    ez_t = _row_dot(buf, zt) / s_t  # E_pT[z_T]
    zt.sub_(zs)  # zt <- z_T - z_S (the log-ratio up to a row constant)
    fwd_raw = _row_dot(buf, zt) / s_t  # E_pT[z_T - z_S]
    lse_s, s_s = _exp_into(zs, buf)  # buf = e_S, q_S = e_S / s_S
    dl = lse_s - lse_t
    rkl = -_row_dot(buf, zt) / s_s - dl
    stats = dict(entropy=(lse_s - _row_dot(buf, zs) / s_s).clamp_min(0), reverse_kl=rkl.clamp_min(0),
                 forward_kl=(fwd_raw + dl).clamp_min(0), teacher_entropy=(lse_t - ez_t).clamp_min(0))
    terms = []
    if need_top:
        t_lp = t_top.values - lse_t[:, None]
        if want_topk_kl:
            s_lp = zs.gather(-1, t_top.indices) - lse_s[:, None]
            stats["teacher_topk_kl"] = _topk_kl_gathered(s_lp, t_lp).clamp_min(0)
        if ew is not None:
            terms.append((t_top.indices, lambda lp: _topk_kl_gathered(lp, t_lp), ew))
    if not want_grad:
        return _Chunk(stats)
    extra, cols, g = _sparse_terms(zs, lse_s, terms, True)
    sigma = g.sum(-1) if g is not None else None  # d/dz of a log-prob term: g at its column - q * sum g
    if loss_type == "reverse_kl":  # G = w q (log q - log p - KL) - sigma q, in zt's buffer
        div = rkl
        G = zt.add_((dl + rkl)[:, None]).mul_((-w / s_s)[:, None])
        G = (G if sigma is None else G.sub_((sigma / s_s)[:, None])).mul_(buf)
    elif loss_type == "forward_kl":  # G = w (q - p) - sigma q, in buf
        div = fwd_raw + dl
        zt.add_(zs).sub_(lse_t[:, None]).exp_()  # zt <- p_T
        G = buf.mul_(((w if sigma is None else w - sigma) / s_s)[:, None]).addcmul_(zt, w[:, None], value=-1.0)
    elif loss_type == "jsd":
        div, G = _jsd_grad(zs, zt, buf, lse_s, lse_t, s_s, beta, w, sigma)
    else:
        raise ValueError(f"loss.type={loss_type!r} is unknown; choose reverse_kl, forward_kl or jsd")
    if cols is not None:
        G.scatter_add_(1, cols, g)
    return _Chunk(stats, div * w + extra, G)


def _jsd_grad(zs, zt, buf, lse_s, lse_t, s_s, beta: float, w, sigma):
    """JSD(beta) per row and its gradient ``G = (1-beta) w q (log q - log m - KL(q || m)) - sigma q``
    (m = beta p_T + (1 - beta) q_S), from ``zs``, ``zt = z_T - z_S``, ``buf = e_S``; a fourth buffer
    holds log m. Returns ``(jsd (n,), G)`` with G in ``zs``'s buffer."""
    lb, l1b = math.log(beta), math.log(1 - beta)
    zs.sub_(lse_s[:, None])  # log q
    zt.add_(zs).add_((lse_s - lse_t)[:, None])  # log p_T
    log_m = torch.add(zt, lb - l1b)
    torch.logaddexp(log_m, zs, out=log_m).add_(l1b)  # log(beta p_T + (1 - beta) q)
    kl_qm = (_row_dot(buf, zs) - _row_dot(buf, log_m)) / s_s
    G = zs.sub_(log_m).sub_(kl_qm[:, None]).mul_(((1 - beta) * w / s_s)[:, None])
    G = (G if sigma is None else G.sub_((sigma / s_s)[:, None])).mul_(buf)
    torch.exp(zt, out=buf)  # p_T
    kl_tm = _row_dot(buf, zt) - _row_dot(buf, log_m)
    return beta * kl_tm + (1 - beta) * kl_qm, G


def _topk_teacher_chunk(zs, buf, teacher: TeacherTopK, rows, loss_type, beta, w, ew, want_topk_kl) -> _Chunk:
    """:func:`_chunk` for a top-k teacher: divergences on the k + 1 buckets (two (n, V) buffers)."""
    t_lp = _upcast(teacher.logprobs[rows].to(zs.device))  # (n, k)
    t_idx = teacher.indices[rows].to(zs.device)
    lse_s, s_s = _exp_into(zs, buf)  # buf = e_S
    stats = dict(entropy=(lse_s - _row_dot(buf, zs) / s_s).clamp_min(0))  # exact: the student is whole
    s_lp = zs.gather(-1, t_idx) - lse_s[:, None]
    ls, lt = _with_tail(s_lp), _with_tail(t_lp)
    stats.update(reverse_kl=_kl(ls, lt).clamp_min(0), forward_kl=_kl(lt, ls).clamp_min(0), teacher_entropy=_entropy(lt))
    t16 = (t_lp[:, :EXTRA_TOPK], t_idx[:, :EXTRA_TOPK])
    if want_topk_kl:
        stats["teacher_topk_kl"] = _topk_kl_gathered(s_lp[:, :EXTRA_TOPK], t16[0]).clamp_min(0)
    if w is None:
        return _Chunk(stats)
    terms = [(t_idx, lambda lp: divergence(_with_tail(lp), lt, loss_type, beta), w)]
    if ew is not None:
        terms.append((t16[1], lambda lp: _topk_kl_gathered(lp, t16[0]), ew))
    loss, cols, g = _sparse_terms(zs, lse_s, terms, True)
    G = buf.mul_((-g.sum(-1) / s_s)[:, None]).scatter_add_(1, cols, g)  # g at its columns - q * sum g
    return _Chunk(stats, loss, G)


def _reference_chunk(zs, teacher: TeacherSource, rows, loss_type, beta, w, ew, want_topk_kl) -> _Chunk:
    """The same quantities by the direct formulas and autograd; used for the rare rows where the
    closed form is not finite (logits of -inf: 0 * -inf in a row dot)."""
    zs = zs.detach().requires_grad_(w is not None)
    with torch.enable_grad():
        logp_s = torch.log_softmax(zs, dim=-1)
        ls, lt = _teacher_chunk(teacher, rows, logp_s)
        stats = dict(entropy=_entropy(logp_s.detach()), reverse_kl=_kl(ls, lt).detach().clamp_min(0),
                     forward_kl=_kl(lt, ls).detach().clamp_min(0), teacher_entropy=_entropy(lt.detach()))
        extra_src = _extra_source(teacher, rows, lt, zs.device)
        if want_topk_kl:
            stats["teacher_topk_kl"] = topk_forward_kl(logp_s.detach(), extra_src).clamp_min(0)
        if w is None:
            return _Chunk(stats)
        loss = divergence(ls, lt, loss_type, beta) * w
        if ew is not None:
            loss = loss + topk_forward_kl(logp_s, extra_src) * ew
        grad = torch.autograd.grad(loss.sum(), zs)[0]
    return _Chunk(stats, loss.detach(), grad)


def _extra_source(teacher: TeacherSource, rows, lt: torch.Tensor, device):
    if isinstance(teacher, TeacherTopK):
        return teacher.logprobs[rows].to(device), teacher.indices[rows].to(device)
    return lt.detach()


# ------------------------------------------------------------------ fallback to the direct formulas
#
# A row whose closed-form results are not finite is redone by the direct formulas and autograd
# (:func:`_reference_chunk`). Expected only for logits of -inf (0 * -inf in a row dot); a closed form
# that goes NaN for another reason would otherwise fall back without a word and cost that path's
# memory and time. So every such row is counted, per (pass, dtype of the head), and warned about once
# per (pass, dtype); the trainer logs the counts per step as ``loss_fallback_rows`` and ``stats_fallback_rows``.

_fallback_rows: Counter = Counter()  # (loss type or "statistics", head dtype) -> rows redone
_fallback_warned: set = set()


def fallback_rows() -> dict:
    """Rows redone by the direct formulas since the last :func:`take_fallback_rows`, by
    ``(loss type or "statistics", head dtype)`` (a copy)."""
    return dict(_fallback_rows)


def take_fallback_rows() -> dict:
    """Rows redone by the direct formulas since the last call, by pass — ``{"loss": n, "statistics": m}``
    (the loss pass of any loss type; the statistics pass that TIP's two-pass steps run first, so one
    row can appear in both) — and reset the count."""
    n = dict(loss=0, statistics=0)
    for (kind, _dtype), k in _fallback_rows.items():
        n["statistics" if kind == "statistics" else "loss"] += k
    _fallback_rows.clear()
    return n


def _note_fallback(n: int, loss_type: str, want_grad: bool, dtype) -> None:
    key = (loss_type if want_grad else "statistics", str(dtype).replace("torch.", ""))
    _fallback_rows[key] += n
    if key not in _fallback_warned:
        _fallback_warned.add(key)
        log.warning("opsd.losses: %d row(s) of the %s closed form (%s head) were not finite and were redone by "
                    "the direct formulas with autograd (more memory and time than loss.impl=fused); expected "
                    "only for logits of -inf. Counted per step as loss_/stats_fallback_rows; warned once per pass "
                    "and dtype.", n, key[0], key[1])


def _safe_chunk(zs_fn, teacher, rows, loss_type, beta, w, ew, want_topk_kl, dtype) -> _Chunk:
    """:func:`_chunk`, with the rows whose results are not finite redone by :func:`_reference_chunk`
    (counted and warned about: :func:`take_fallback_rows`). ``zs_fn(sub)``: fresh student logits of
    the chunk's rows ``sub`` (a slice or an index tensor). ``dtype``: the head's, for the warning."""
    out = _chunk(zs_fn(slice(None)), teacher, rows, loss_type, beta, w, ew, want_topk_kl)
    bad = torch.stack([v.isnan() for v in out.stats.values()]).any(0)  # NaN, not inf: a KL may be +inf
    if out.loss is not None:
        bad |= ~torch.isfinite(out.loss)
    if not bool(bad.any()):
        return out
    sub = bad.nonzero().squeeze(-1)
    _note_fallback(len(sub), loss_type, w is not None, dtype)
    t_rows = _rows_of(rows, sub)
    ref = _reference_chunk(zs_fn(sub), teacher, t_rows, loss_type, beta, _take(w, sub), _take(ew, sub), want_topk_kl)
    for k, v in ref.stats.items():
        out.stats[k][sub] = v.to(out.stats[k].dtype)
    if out.loss is not None:
        out.loss[sub] = ref.loss.to(out.loss.dtype)
        out.grad[sub] = ref.grad.to(out.grad.dtype)
    return out


def _take(x, sub):
    return None if x is None else x[sub]


def _rows_of(rows, sub: torch.Tensor):
    """Rows ``sub`` (positions inside the chunk) of the chunk ``rows`` (a slice or an index tensor)."""
    if isinstance(rows, slice):
        return sub + rows.start
    return rows[sub]


# ------------------------------------------------------------------ statistics pass

def _teacher_chunk(teacher: TeacherSource, rows, logp_s: torch.Tensor):
    """(logp_s', logp_t) for a chunk: full-vocabulary, or bucketed for a top-k teacher (the direct
    formulas, with autograd; the passes use the closed forms of :func:`_chunk`)."""
    if isinstance(teacher, TeacherTopK):
        return _bucketize(logp_s, teacher, rows)
    return logp_s, torch.log_softmax(_upcast(teacher.rows(rows)), dim=-1)


STAT_FIELDS = ("entropy", "reverse_kl", "forward_kl", "teacher_entropy")


def _head_dtype(student) -> torch.dtype:
    return student.weight.dtype if isinstance(student, HiddenLogits) else student.logits.dtype


def _stats_out(parts: dict, device, topk_kl: bool) -> TokenStats:
    out = {k: (torch.cat(v) if v else torch.zeros(0, device=device)) for k, v in parts.items()}
    if not topk_kl:
        out["teacher_topk_kl"] = None
    return TokenStats(**out)


@torch.no_grad()
def stats_from_sources(student, teacher: TeacherSource, chunk_size: int = 512, topk_kl: bool = False) -> TokenStats:
    """Per-token statistics ``(N,)`` without gradient, ``chunk_size`` rows at a time, three live
    ``(chunk, V)`` buffers (two with a top-k teacher; the direct formulas held ~6).

    With a :class:`TeacherTopK` teacher, the divergences and teacher entropy are those of the
    (k + 1)-bucket distributions (a lower bound of the exact values); student entropy stays exact.
    ``topk_kl``: also ``teacher_topk_kl`` (a top-k over V per token; only when the hook asks for it).
    """
    if chunk_size <= 0:
        raise ValueError(f"loss.chunk_size must be > 0, got {chunk_size}")
    n = len(student)
    parts = {k: [] for k in STAT_FIELDS + (("teacher_topk_kl",) if topk_kl else ())}
    for s in range(0, n, chunk_size):
        rows = slice(s, min(n, s + chunk_size))
        zs_fn = lambda sub, rows=rows: _upcast(student.rows(_rows_of(rows, sub) if isinstance(sub, torch.Tensor)
                                                            else rows))
        st = _safe_chunk(zs_fn, teacher, rows, "reverse_kl", 0.5, None, None, topk_kl, _head_dtype(student)).stats
        for k in parts:
            parts[k].append(st[k])
    dev = student.hidden.device if isinstance(student, HiddenLogits) else student.logits.device
    return _stats_out(parts, dev, topk_kl)


def token_stats(student_logits: torch.Tensor, teacher_logits: torch.Tensor, chunk_size: int = 512) -> TokenStats:
    """Per-token statistics from ``(N, V)`` student and teacher logits (widths may differ; both
    are sliced to the narrower one). Returns :class:`opsd.hooks.TokenStats` with ``(N,)``
    ``entropy`` (student), ``reverse_kl``, ``forward_kl``, ``teacher_entropy``."""
    if student_logits.dim() != 2 or teacher_logits.dim() != 2:
        raise ValueError(f"token_stats expects (N, V) logits, got {tuple(student_logits.shape)} "
                         f"and {tuple(teacher_logits.shape)}")
    if student_logits.shape[0] != teacher_logits.shape[0]:
        raise ValueError(f"student has {student_logits.shape[0]} rows, teacher {teacher_logits.shape[0]}")
    v = align_vocab(student_logits.shape[1], teacher_logits.shape[1])
    return stats_from_sources(DenseLogits(student_logits, v), DenseLogits(teacher_logits, v), chunk_size)


# ------------------------------------------------------------------ grad pass

def _chunk_loss(h: torch.Tensor, weight: torch.Tensor, vocab_size: int, t_part, loss_type: str, beta: float,
                w: torch.Tensor, extra_w: Optional[torch.Tensor]) -> torch.Tensor:
    """Weighted divergence sum of one chunk of kept rows; ``h (n, d)`` carries the gradient."""
    logp_s = torch.log_softmax(_upcast(h.to(weight.dtype) @ weight[:vocab_size].T), dim=-1)  # (n, V)
    if isinstance(t_part, tuple):  # top-k teacher: (logprobs (n,k), indices (n,k))
        top = TeacherTopK(*t_part)
        ls, lt = _bucketize(logp_s, top, slice(None))
        per_tok = divergence(ls, lt, loss_type, beta)
        extra_src = t_part
    else:
        per_tok = divergence(logp_s, t_part, loss_type, beta)
        extra_src = t_part
    total = (per_tok * w).sum()
    if extra_w is not None:
        total = total + (topk_forward_kl(logp_s, extra_src) * extra_w).sum()
    return total


@dataclass
class _Job:
    """What :class:`FusedDivergence` computes over the rows ``indices`` of the teacher source."""

    teacher: TeacherSource
    indices: torch.Tensor  # (K,) rows of the teacher source, one per row of the hidden states given
    vocab_size: int
    loss_type: str
    beta: float
    weights: torch.Tensor  # (K,)
    extra_weights: Optional[torch.Tensor]  # (K,) or None
    chunk_size: int
    stats: bool = False  # also return the statistics of these rows (the default hook's single pass)
    topk_kl: bool = False  # with ``stats``: also teacher_topk_kl


class FusedDivergence(torch.autograd.Function):
    """Loss ``sum_i w_i div_i (+ ew_i KL(q~_T || pi_S)_i)`` over rows ``h (K, d)`` with the head
    ``weight (V_pad, d)``, and its gradients computed in the same chunked forward: per chunk, the
    student logits, the divergence, its gradient ``G (n, V)`` w.r.t. the logits in closed form,
    then ``G W -> dL/dh`` and ``G^T h -> dL/dW`` (accumulated). Only these two gradients (the size
    of ``h`` and ``W``) are kept for backward: nothing ``(K, V)``, nothing recomputed.

    Under ZeRO-3 ``weight`` is the gathered parameter (DistillModule registers it as an external
    parameter); its gradient is returned from backward like any other, so DeepSpeed's hooks
    reduce and partition it as usual. Returns ``(loss, stats)``; ``stats (K, F)`` is empty unless
    ``job.stats`` (no gradient).
    """

    @staticmethod
    def forward(ctx, h, weight, job: _Job):
        loss, grad_h, grad_w, stats = _fused_pass(h.detach(), weight.detach(), job)
        ctx.grads = (grad_h, grad_w)
        ctx.mark_non_differentiable(stats)
        return loss, stats

    @staticmethod
    def backward(ctx, grad_loss, _grad_stats):
        if ctx.grads is None:
            raise RuntimeError("FusedDivergence: backward ran twice; its gradients are precomputed once")
        grad_h, grad_w = ctx.grads
        ctx.grads = None  # free them as soon as autograd has them
        # the caller scaled the loss (token mean, loss scaling): in place, no second (V, d) tensor
        return grad_h.mul_(grad_loss.to(grad_h.dtype)), grad_w.mul_(grad_loss.to(grad_w.dtype)), None


def _fused_pass(h, weight, job: _Job):
    """The chunk loop of :class:`FusedDivergence`: ``(loss, dL/dh, dL/dW, stats)``."""
    w_head = weight[: job.vocab_size]  # (V, d)
    grad_h = torch.zeros_like(h)
    grad_w = torch.zeros_like(weight)  # (V_pad, d); the padded rows get no gradient
    fields = STAT_FIELDS + (("teacher_topk_kl",) if job.topk_kl else ())
    loss, stats = None, []
    for s in range(0, h.shape[0], job.chunk_size):
        e = min(h.shape[0], s + job.chunk_size)
        hc = h[s:e].to(w_head.dtype)  # (n, d)
        ew = job.extra_weights[s:e] if job.extra_weights is not None else None
        if ew is not None and not bool(ew.any()):  # adaptive KL off on every row: skip its top-k over V
            ew = None
        out = _safe_chunk(lambda sub, hc=hc: _upcast(hc[sub] @ w_head.T), job.teacher, job.indices[s:e],
                          job.loss_type, job.beta, job.weights[s:e], ew, job.topk_kl, w_head.dtype)
        part = out.loss.sum()
        loss = part if loss is None else loss + part
        if job.stats:
            stats.append(torch.stack([out.stats[f] for f in fields], 1))
        g = out.grad.to(w_head.dtype)  # (n, V)
        del out
        grad_h[s:e] = (g @ w_head).to(h.dtype)  # (n, d)
        grad_w[: job.vocab_size].addmm_(g.T, hc)  # (V, d), accumulated in the head's dtype as autograd does
        del g
    if loss is None:
        loss = h.new_zeros((), dtype=_upcast(h.new_zeros(())).dtype)
    stats = torch.cat(stats) if stats else h.new_zeros((0, len(fields)))
    return loss, grad_h, grad_w, stats


def _job_weights(indices, weights, like):
    return weights.to(like.device, _upcast(like).dtype) if weights is not None else \
        torch.ones(len(indices), device=like.device, dtype=_upcast(like).dtype)


def selected_loss_sum(student_hidden: torch.Tensor, student_weight: torch.Tensor, teacher: TeacherSource,
                      indices: torch.Tensor, vocab_size: int, loss_type: str = "reverse_kl", beta: float = 0.5,
                      weights: Optional[torch.Tensor] = None, extra_weights: Optional[torch.Tensor] = None,
                      chunk_size: int = 512, impl: str = "fused") -> torch.Tensor:
    """Sum over the kept rows of ``weights * divergence (+ extra_weights * top-k forward KL)``,
    with gradient into ``student_hidden (N, d)`` and ``student_weight (V_pad, d)``.

    ``impl`` (``loss.impl``): ``fused`` (default) computes the gradients in the chunked forward
    (:class:`FusedDivergence`; memory ~ 3 ``chunk_size x V`` buffers, one pass); ``autograd`` keeps
    the ``(K, V)`` log-probabilities of the kept rows until backward (memory grows with K, as in
    the paper); ``recompute`` checkpoints each chunk and recomputes it in backward.
    The caller divides by the global normalizer (token-mean over the global batch).
    """
    _choice("loss.impl", impl, LOSS_IMPLS)  # loss.impl's one rule (LossConfig.validate), for direct callers
    if chunk_size <= 0:
        raise ValueError(f"loss.chunk_size must be > 0, got {chunk_size}")
    if impl == "fused":
        h = student_hidden[indices]  # (K, d); autograd scatters dL/dh back into the N rows
        job = _Job(teacher, indices, vocab_size, loss_type, beta, _job_weights(indices, weights, h), extra_weights,
                   chunk_size)
        return FusedDivergence.apply(h, student_weight, job)[0]
    total = student_hidden.new_zeros((), dtype=torch.float32)
    k = int(indices.numel())
    for s in range(0, k, chunk_size):
        idx = indices[s: s + chunk_size]
        h = student_hidden[idx]  # (n, d), carries grad
        dt = _upcast(h.new_zeros(())).dtype  # float32, or float64 in the float64 tests
        w = weights[s: s + chunk_size].to(dt) if weights is not None else torch.ones(len(idx), device=h.device, dtype=dt)
        ew = extra_weights[s: s + chunk_size].to(dt) if extra_weights is not None else None
        if impl == "recompute":
            # The teacher's part is computed inside the checkpoint: as a checkpoint input, each
            # chunk's (n, V) teacher log-probs would stay alive until backward (memory ~ K x V).
            total = total + checkpoint(_chunk_loss_recomputed, h, student_weight, vocab_size, teacher, idx,
                                       loss_type, beta, w, ew, use_reentrant=False)
        else:
            total = total + _chunk_loss(h, student_weight, vocab_size, _teacher_part(teacher, idx, h.device),
                                        loss_type, beta, w, ew)
    return total


def loss_and_stats(student_hidden: torch.Tensor, student_weight: torch.Tensor, teacher: TeacherSource,
                   vocab_size: int, loss_type: str = "reverse_kl", beta: float = 0.5,
                   weights: Optional[torch.Tensor] = None, chunk_size: int = 512, topk_kl: bool = False):
    """Every row kept (the default hook): the loss sum of :func:`selected_loss_sum` (fused) and the
    statistics of :func:`stats_from_sources`, from one pass over the vocabulary.
    Returns ``(loss_sum, TokenStats)``."""
    if chunk_size <= 0:
        raise ValueError(f"loss.chunk_size must be > 0, got {chunk_size}")
    n = student_hidden.shape[0]
    idx = torch.arange(n, device=student_hidden.device)
    job = _Job(teacher, idx, vocab_size, loss_type, beta, _job_weights(idx, weights, student_hidden), None,
               chunk_size, stats=True, topk_kl=topk_kl)
    loss, st = FusedDivergence.apply(student_hidden, student_weight, job)
    fields = STAT_FIELDS + (("teacher_topk_kl",) if topk_kl else ())
    return loss, _stats_out({f: [st[:, i].contiguous()] for i, f in enumerate(fields)}, student_hidden.device,
                            topk_kl)


def _teacher_part(teacher: TeacherSource, idx: torch.Tensor, device):
    """The teacher side of a chunk of kept rows: log-probs ``(n, V)`` without grad, or for a top-k
    teacher its ``(logprobs (n, k), indices (n, k))`` pair."""
    if isinstance(teacher, TeacherTopK):
        return teacher.logprobs[idx].to(device), teacher.indices[idx].to(device)
    with torch.no_grad():
        return torch.log_softmax(teacher.rows(idx), dim=-1)


def _chunk_loss_recomputed(h, weight, vocab_size, teacher, idx, loss_type, beta, w, extra_w) -> torch.Tensor:
    """:func:`_chunk_loss` with the teacher part computed inside (run under checkpoint)."""
    return _chunk_loss(h, weight, vocab_size, _teacher_part(teacher, idx, h.device), loss_type, beta, w, extra_w)
