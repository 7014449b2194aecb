"""Chunked per-token divergences between student and teacher, over the full vocabulary.

Two passes use this module (DESIGN.md, "The data path of one training step"):

1. the **statistics pass** (no gradient): :func:`stats_from_hidden` computes per-token student
   entropy, reverse KL, forward KL and teacher entropy, ``chunk_size`` rows at a time, so no
   full ``(N, V)`` float32 tensor exists at once;
2. the **grad pass**: :func:`selected_loss_sum` computes grad-carrying logits for the rows the
   loss hook kept, and returns the (weighted) sum of their divergences.

Logits are produced on demand from last hidden states and the output-embedding matrix
(``logits = hidden @ W.T``), so the teacher's contribution can be cached as its hidden states
``(N, d_T)`` (small) or as its top-k log-probabilities (:class:`TeacherTopK`).

Vocabulary alignment: teacher and student may pad their logit widths differently (Qwen2.5-1.5B
151,936 vs 7B/14B 152,064). Both are sliced to ``vocab_size`` = the shared tokenizer length; the
padded rows beyond it are never sampled.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional, Union

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from opsd.hooks import TokenStats

EXTRA_TOPK = 16  # teacher top-k of the adaptive-KL term KL(q~_T || pi_S) (EQUATIONS.md, App. B.1)


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
        return out.float()


@dataclass
class DenseLogits:
    """Rows of a materialized ``(N, V_pad)`` logits tensor (tests, small models)."""

    logits: torch.Tensor
    vocab_size: int

    def __len__(self) -> int:
        return self.logits.shape[0]

    def rows(self, idx) -> torch.Tensor:
        return self.logits[idx, : self.vocab_size].float()


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
    s_lp = logp_s.gather(-1, idx)  # (n, k)

    def with_tail(lp):
        mass = lp.exp().sum(-1, keepdim=True).clamp(max=1.0)
        tail = torch.log1p(-mass.clamp(max=1 - 1e-7))  # log(1 - sum_k p); clamp keeps it finite
        return torch.cat([lp, tail], dim=-1)

    return with_tail(s_lp), with_tail(t_lp.float())


def topk_forward_kl(logp_s: torch.Tensor, t_logits_or_topk, k: int = EXTRA_TOPK) -> torch.Tensor:
    """KL(q~_T || pi_S) over the teacher's top-k renormalized (q~_T), the adaptive-KL extra term.

    ``t_logits_or_topk``: teacher log-probs ``(n, V)`` or a ``(logprobs (n,k'), indices)`` pair.
    """
    if isinstance(t_logits_or_topk, tuple):
        t_lp, idx = t_logits_or_topk
        t_lp, idx = t_lp[:, :k], idx[:, :k]
    else:
        t_lp, idx = t_logits_or_topk.topk(min(k, t_logits_or_topk.shape[-1]), dim=-1)
    q = torch.log_softmax(t_lp.float(), dim=-1)  # renormalize over the top-k
    return (q.exp() * (q - logp_s.gather(-1, idx))).sum(-1)


# ------------------------------------------------------------------ statistics pass

def _teacher_chunk(teacher: TeacherSource, rows, logp_s: torch.Tensor):
    """(logp_s', logp_t) for a chunk: full-vocabulary, or bucketed for a top-k teacher."""
    if isinstance(teacher, TeacherTopK):
        return _bucketize(logp_s, teacher, rows)
    return logp_s, torch.log_softmax(teacher.rows(rows), dim=-1)


@torch.no_grad()
def stats_from_sources(student, teacher: TeacherSource, chunk_size: int = 512) -> TokenStats:
    """Per-token statistics ``(N,)`` without gradient, ``chunk_size`` rows at a time.

    With a :class:`TeacherTopK` teacher, the divergences and teacher entropy are those of the
    (k + 1)-bucket distributions (a lower bound of the exact values); student entropy stays exact.
    """
    if chunk_size <= 0:
        raise ValueError(f"loss.chunk_size must be > 0, got {chunk_size}")
    n = len(student)
    parts = {k: [] for k in ("entropy", "reverse_kl", "forward_kl", "teacher_entropy", "teacher_topk_kl")}
    for s in range(0, n, chunk_size):
        rows = slice(s, min(n, s + chunk_size))
        logp_s = torch.log_softmax(student.rows(rows), dim=-1)  # (n, V)
        parts["entropy"].append(_entropy(logp_s))
        ls, lt = _teacher_chunk(teacher, rows, logp_s)
        parts["reverse_kl"].append(_kl(ls, lt).clamp_min(0))
        parts["forward_kl"].append(_kl(lt, ls).clamp_min(0))
        parts["teacher_entropy"].append(_entropy(lt))
        if isinstance(teacher, TeacherTopK):
            extra = (teacher.logprobs[rows].to(logp_s.device), teacher.indices[rows].to(logp_s.device))
        else:
            extra = lt
        parts["teacher_topk_kl"].append(topk_forward_kl(logp_s, extra).clamp_min(0))
        del logp_s, ls, lt, extra  # free the (n, V) chunk before the next one (extra may be lt)
    dev = student.hidden.device if isinstance(student, HiddenLogits) else student.logits.device
    out = {k: (torch.cat(v) if v else torch.zeros(0, device=dev)) for k, v in parts.items()}
    return TokenStats(**out)


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
    logp_s = torch.log_softmax((h.to(weight.dtype) @ weight[:vocab_size].T).float(), dim=-1)  # (n, V)
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


def selected_loss_sum(student_hidden: torch.Tensor, student_weight: torch.Tensor, teacher: TeacherSource,
                      indices: torch.Tensor, vocab_size: int, loss_type: str = "reverse_kl", beta: float = 0.5,
                      weights: Optional[torch.Tensor] = None, extra_weights: Optional[torch.Tensor] = None,
                      chunk_size: int = 512, recompute: bool = False) -> torch.Tensor:
    """Sum over the kept rows of ``weights * divergence (+ extra_weights * top-k forward KL)``,
    with gradient into ``student_hidden (N, d)`` and ``student_weight (V_pad, d)``.

    Only ``len(indices)`` rows get grad-carrying logits; without ``recompute`` autograd keeps
    their ``(K, V)`` log-probabilities until backward (memory grows with K, as in the paper);
    with ``recompute`` each chunk is recomputed in backward (memory ~ ``chunk_size x V``).
    The caller divides by the global normalizer (token-mean over the global batch).
    """
    total = student_hidden.new_zeros((), dtype=torch.float32)
    k = int(indices.numel())
    for s in range(0, k, chunk_size):
        idx = indices[s: s + chunk_size]
        h = student_hidden[idx]  # (n, d), carries grad
        w = weights[s: s + chunk_size].float() if weights is not None else torch.ones(len(idx), device=h.device)
        ew = extra_weights[s: s + chunk_size].float() if extra_weights is not None else None
        if recompute:
            # The teacher's part is computed inside the checkpoint: as a checkpoint input, each
            # chunk's (n, V) teacher log-probs would stay alive until backward (memory ~ K x V).
            total = total + checkpoint(_chunk_loss_recomputed, h, student_weight, vocab_size, teacher, idx,
                                       loss_type, beta, w, ew, use_reentrant=False)
        else:
            total = total + _chunk_loss(h, student_weight, vocab_size, _teacher_part(teacher, idx, h.device),
                                        loss_type, beta, w, ew)
    return total


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
