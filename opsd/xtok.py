"""A teacher with another tokenizer: byte-prefix marginalization (BPM) onto the student's rows.

The student's tokens stay the rows (what was sampled, what gets gradients, what TIP ranks). For each
rollout the conversation is rendered with the *teacher's* chat template, the student's response is
re-tokenized by the teacher, the teacher runs once on its own ids (last hidden states cached, as in
:mod:`opsd.teacher`), and teacher positions are aligned to student rows by byte offsets.

The map. Every token of both vocabularies is read as bytes (:func:`token_bytes`: byte-level BPE,
SentencePiece ``▁`` and ``<0xNN>`` byte fallback, or literal text). Control tokens are not text:
they map to the student's control token of the same content (and EOS to EOS, PAD to PAD). A text
token ``t`` of the teacher maps to the longest student text token that is a byte-prefix of it; a
teacher token with none goes to a residual bucket. ``coverage`` = share of the teacher's vocabulary
that reaches a student token.

A row. Student row ``i`` predicts the token that starts at byte ``B`` of the response. The teacher
token ``j`` holding byte ``B`` starts at ``C <= B``; ``e`` = the bytes ``[C, B)`` already emitted
inside it (empty at a teacher boundary). The row's target over the student's vocabulary is
``q(v) = sum p_T(t | .) / P_T(prefix e)`` over the teacher tokens ``t`` at position ``j`` that start
with ``e`` and whose remaining bytes ``t[len e:]`` have ``v`` as their longest student prefix: the
teacher's next-student-token distribution, read off one teacher position. The residual (tokens with
no student prefix, and ``t == e``, whose continuation lives at the next teacher position) is logged
per row and the target renormalised over the student's vocabulary. The row is **exact** when the
sampled student token ends inside teacher token ``j`` (its bytes never cross a teacher boundary),
**bound** otherwise: a student token spanning a teacher boundary has a probability that needs two
teacher positions, so the one-position target under-weights it. Bound rows are left out of the loss
and of TIP's ranking (their ``loss_mask`` set to 0) unless ``loss.keep_bound_rows``.

Lookback. The teacher's distribution at position ``j`` is conditioned on its *canonical* previous
token ``t_{j-1}`` (bytes ``prev``): a tokenizer that would have written the next bytes inside a
longer previous token (``'. '`` then ``'A'`` is written ``'. Answer: '``) gives them almost no mass at
``j``, although the teacher puts mass on them one position earlier. So when a teacher token longer
than ``prev`` starts with ``prev + e`` (:meth:`VocabMap.lookback`), the row's target is the byte-level
marginal over both positions: ``q(v) ∝ p_{j-1}(prev) · m_j(v) + sum p_{j-1}(t)`` over those longer
``t`` whose bytes after ``prev + e`` map to ``v``, normalised by ``p_{j-1}(prev) · P_j(e) +
P_{j-1}(starts with prev + e, longer than prev)``, where ``m_j`` is the one-position mass above.
Without a longer token the second term is empty and the target is the one-position one. One
token back only (the previous token's own start is taken as final), within a text run of the
response, ``bpm`` mode only (``strict`` is the baseline without it); counted as
``xtok/lookback_rows``.

Residual bound. A row inside a teacher token whose emitted bytes ``e`` are themselves a teacher
token the teacher favours (after ``'. '`` it wants ``'. '`` and another step; the student wrote the
``'A'`` of ``'. Answer: '``) has that mass on a continuation the forward never computed; renormalised
away, the rest reads as certainty (``P('A') = 1``). Such rows (residual above
``loss.max_row_residual``) are bound rows. On the toy pair this is what makes BPM teach; without it
the student drifts into answering after one step (docs/cross-tokenizer.md, the ablation).

Reverse KL (and the TIP statistics: student entropy, reverse KL to this target) are then exact on
exact rows w.r.t. this target. Forward KL and JSD use the same target: they measure the
student against the teacher's next-student-token distribution, with the residual mass renormalised
away (logged as ``xtok/residual_mass``). A student token no teacher token reaches gets probability
``exp(FLOOR_LOGP)`` (the reverse KL would be infinite).

Modes (``loss.cross_tokenizer``): ``bpm`` (above); ``strict``: only rows whose student token is
exactly one teacher token (same start and end), target = the teacher's probabilities of the shared
sub-vocabulary (tokens with the same bytes on both sides) renormalised; ``uld``: the sorted
teacher probabilities laid onto the student's own ranking (ULD-style, ignores which token is
which), a research peer that needs the student (:meth:`CrossTokenizerTeacher.attach_student`).

Known traps, handled on purpose: control tokens (never matched as text; a literal ``<|im_end|>``
typed as characters is tokenized by the teacher as characters, ``split_special_tokens``),
multi-byte characters (a byte-level teacher may split a UTF-8 character: rows are aligned by bytes,
not characters; a student run that is not valid UTF-8 leaves its rows from the first bad byte out),
whitespace (teacher tokens carry their leading space, so ``' 16'`` maps to the student's ``' '``
and the student row of ``'1'`` conditions on the emitted ``' '``), and tokenizers that normalize
text (if the teacher's tokens do not spell the response's bytes, that run's rows are left out and
counted as ``xtok/unaligned_rows``).
"""
from __future__ import annotations

import bisect
import json
import logging
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Dict, List, Optional, Sequence

import torch

from opsd.config import ConfigError

log = logging.getLogger("opsd")

FLOOR_LOGP = -69.0  # log-probability of a student token no teacher token reaches (about 1e-30)
EXACT, BOUND, UNALIGNED = 0, 1, 2


# ------------------------------------------------------------------ tokens as bytes

@lru_cache(maxsize=1)
def _byte_decoder() -> Dict[str, int]:
    """GPT-2's byte-level alphabet: printable unicode character -> the byte it stands for."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


def _decoder_kind(tok) -> str:
    spec = json.loads(tok.backend_tokenizer.to_str())
    kinds = []

    def walk(d):
        if isinstance(d, dict):
            if "type" in d:
                kinds.append(d["type"])
            for v in d.values():
                walk(v)
        elif isinstance(d, list):
            for v in d:
                walk(v)

    walk(spec.get("decoder"))
    walk(spec.get("pre_tokenizer"))
    if "ByteLevel" in kinds:
        return "byte_level"
    if "ByteFallback" in kinds or "Metaspace" in kinds:
        return "sentencepiece"
    if "WordPiece" in kinds:
        raise ConfigError("cross-tokenizer: WordPiece tokenizers ('##' continuation pieces) are not supported")
    return "literal"


def control_tokens(tok) -> Dict[int, str]:
    """id -> content of the tokenizer's control tokens (special added tokens and the named specials)."""
    out = {int(i): str(t.content) for i, t in tok.added_tokens_decoder.items() if t.special}
    for i in tok.all_special_ids:
        out.setdefault(int(i), tok.convert_ids_to_tokens(int(i)))
    return out


def token_bytes(tok) -> List[Optional[bytes]]:
    """The bytes of every token id (``None`` for a control token)."""
    kind, controls = _decoder_kind(tok), control_tokens(tok)
    added = {int(i): str(t.content) for i, t in tok.added_tokens_decoder.items()}
    dec = _byte_decoder()
    out: List[Optional[bytes]] = []
    for i, s in enumerate(tok.convert_ids_to_tokens(list(range(len(tok))))):
        if i in controls:
            out.append(None)
        elif i in added:
            out.append(added[i].encode("utf-8"))
        elif s is None:
            out.append(None)
        elif kind == "byte_level":
            out.append(bytes(dec[c] for c in s) if all(c in dec for c in s) else s.encode("utf-8"))
        elif kind == "sentencepiece" and len(s) == 6 and s.startswith("<0x") and s.endswith(">"):
            out.append(bytes([int(s[3:5], 16)]))
        elif kind == "sentencepiece":
            out.append(s.replace("\u2581", " ").encode("utf-8"))
        else:
            out.append(s.encode("utf-8"))
    return out


# ------------------------------------------------------------------ the map

def _successor(e: bytes) -> Optional[bytes]:
    """The smallest byte string above every string that starts with ``e`` (None: no bound)."""
    e = e.rstrip(b"\xff")
    return e[:-1] + bytes([e[-1] + 1]) if e else None


class VocabMap:
    """Teacher vocabulary -> student vocabulary by longest byte-prefix (plus the residual bucket,
    index ``n_student``); built once per pair (:func:`vocab_map` caches it)."""

    def __init__(self, teacher_tok, student_tok):
        # control tokens: same content, else the same role (eos, pad)
        t_ctl, s_ctl = control_tokens(teacher_tok), control_tokens(student_tok)
        s_by_content = {c: i for i, c in sorted(s_ctl.items(), reverse=True)}
        t_control = {}
        for i, c in t_ctl.items():
            j = s_by_content.get(c)
            for role in ("eos_token_id", "pad_token_id"):
                if j is None and i == getattr(teacher_tok, role) and getattr(student_tok, role) is not None:
                    j = getattr(student_tok, role)
            t_control[i] = j
        self._build(token_bytes(teacher_tok), token_bytes(student_tok), t_control, s_ctl)

    @classmethod
    def from_bytes(cls, t_bytes, s_bytes, t_control: Optional[dict] = None, s_controls: Optional[dict] = None):
        """A map between two vocabularies given as bytes (``None`` = control token; benchmarks)."""
        self = cls.__new__(cls)
        self._build(list(t_bytes), list(s_bytes), dict(t_control or {}), dict(s_controls or {}))
        return self

    def _build(self, t_bytes, s_bytes, t_control: dict, s_controls: dict) -> None:
        self.t_bytes, self.s_bytes = t_bytes, s_bytes
        self.n_teacher, self.n_student = len(self.t_bytes), len(self.s_bytes)
        self.residual = self.n_student
        self.s_index: Dict[bytes, int] = {}
        for i, b in enumerate(self.s_bytes):
            if b:
                self.s_index.setdefault(b, i)
        self.s_maxlen = max((len(b) for b in self.s_index), default=0)
        self.student_controls, self.t_control = s_controls, t_control
        self.s_control = {}  # student control id -> teacher control id
        for i, j in sorted(self.t_control.items(), reverse=True):
            if j is not None:
                self.s_control[j] = i
        bpm = [self.longest(b) if b is not None else self.t_control.get(i) for i, b in enumerate(self.t_bytes)]
        self.bpm = torch.tensor([self.residual if j is None else j for j in bpm], dtype=torch.long)  # (V_T,)
        same = [self.s_index.get(b) if b is not None else self.t_control.get(i) for i, b in enumerate(self.t_bytes)]
        self.shared = torch.tensor([self.residual if j is None else j for j in same], dtype=torch.long)  # (V_T,)
        self.coverage = float((self.bpm != self.residual).double().mean()) if self.n_teacher else 0.0
        text = [(b, i) for i, b in enumerate(self.t_bytes) if b]
        text.sort()
        self.sorted_keys = [b for b, _ in text]
        self.sorted_ids = torch.tensor([i for _, i in text], dtype=torch.long)
        self._cond: Dict[bytes, tuple] = {}
        self._look: Dict[tuple, Optional[tuple]] = {}

    def longest(self, b: bytes) -> Optional[int]:
        """The student text token that is the longest byte-prefix of ``b`` (None: no such token)."""
        for n in range(min(len(b), self.s_maxlen), 0, -1):
            j = self.s_index.get(b[:n])
            if j is not None:
                return j
        return None

    def _range(self, e: bytes) -> tuple:
        """``(lo, hi)``: the sorted teacher text tokens that start with ``e``."""
        lo = bisect.bisect_left(self.sorted_keys, e)
        succ = _successor(e)
        return lo, len(self.sorted_keys) if succ is None else bisect.bisect_left(self.sorted_keys, succ)

    def lookback(self, prev: bytes, e: bytes) -> Optional[tuple]:
        """For a row after teacher token bytes ``prev`` (and ``e`` emitted inside the current one): the
        teacher tokens at the previous position that are ``prev`` (``eq_ids``), those that start with
        ``prev + e`` and are longer than ``prev`` (``pre_ids``: they already spell the row's next bytes),
        the ones among them longer than ``prev + e`` (``c_ids``) and the student token (or residual)
        their bytes after ``prev + e`` map to (``c_tgt``). None when no token extends ``prev`` so:
        then the previous position adds nothing (the one-position target is the marginal)."""
        key = (prev, e)
        if key in self._look:
            return self._look[key]
        lo, hi = self._range(prev + e)
        pre = [(k, i) for k, i in zip(self.sorted_keys[lo:hi], self.sorted_ids[lo:hi].tolist()) if len(k) > len(prev)]
        hit = None
        if pre and prev:
            elo, ehi = self._range(prev)
            eq = [i for k, i in zip(self.sorted_keys[elo:ehi], self.sorted_ids[elo:ehi].tolist()) if k == prev]
            n = len(prev + e)
            cand = [(i, self.longest(k[n:])) for k, i in pre if len(k) > n]
            hit = (torch.tensor(eq, dtype=torch.long), torch.tensor([i for _, i in pre], dtype=torch.long),
                   torch.tensor([i for i, _ in cand], dtype=torch.long),
                   torch.tensor([self.residual if j is None else j for _, j in cand], dtype=torch.long))
        self._look[key] = hit
        return hit

    def conditioned(self, e: bytes) -> tuple:
        """For emitted bytes ``e`` inside a teacher token: ``(prefix_ids, cand_ids, cand_targets)`` --
        the teacher tokens starting with ``e`` (the conditioning event), those longer than ``e``, and
        the student token (or residual) their remaining bytes map to."""
        hit = self._cond.get(e)
        if hit is None:
            lo, hi = self._range(e)
            ids = self.sorted_ids[lo:hi]
            cand = [(int(i), self.longest(k[len(e):])) for k, i in zip(self.sorted_keys[lo:hi], ids.tolist())
                    if len(k) > len(e)]
            c_ids = torch.tensor([i for i, _ in cand], dtype=torch.long)
            c_tgt = torch.tensor([self.residual if j is None else j for _, j in cand], dtype=torch.long)
            hit = self._cond[e] = (ids, c_ids, c_tgt)
        return hit


_MAPS: Dict[tuple, VocabMap] = {}


def vocab_map(teacher_tok, student_tok) -> VocabMap:
    """The pair's :class:`VocabMap`, built once per process and pair (keyed by both vocabularies)."""
    key = (teacher_tok.name_or_path, len(teacher_tok), hash(tuple(sorted(teacher_tok.get_vocab().items()))),
           student_tok.name_or_path, len(student_tok), hash(tuple(sorted(student_tok.get_vocab().items()))))
    if key not in _MAPS:
        _MAPS[key] = VocabMap(teacher_tok, student_tok)
    return _MAPS[key]


# ------------------------------------------------------------------ alignment

@dataclass
class Alignment:
    """One response: the teacher's response ids and, per student response token, the teacher
    response position that predicts it, the bytes emitted inside that teacher token, its flag,
    and whether its span equals that teacher token's (strict mode's rows)."""

    teacher_ids: List[int]
    position: List[int] = field(default_factory=list)
    emitted: List[bytes] = field(default_factory=list)
    flag: List[int] = field(default_factory=list)
    one_to_one: List[bool] = field(default_factory=list)
    prev: List[Optional[bytes]] = field(default_factory=list)  # the previous teacher token's bytes (same text run)


def _encode_text(tok, text: str) -> List[int]:
    out = tok(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]
    return [int(i) for i in out]


def align_response(student_ids: Sequence[int], vmap: VocabMap, teacher_tok) -> Alignment:
    """Re-tokenize a student response for the teacher and align the two by bytes.

    The response is cut into runs of text tokens and single control tokens. A text run is decoded
    from its bytes, tokenized by the teacher, and each student token is given the teacher token
    holding its first byte; a control token is given the teacher's counterpart."""
    al = Alignment([])
    i, n = 0, len(student_ids)
    while i < n:
        sid = int(student_ids[i])
        if sid >= vmap.n_student:  # a padded logit row sampled: no token, nothing to align
            _add(al, len(al.teacher_ids), b"", UNALIGNED, False)
            i += 1
            continue
        if vmap.s_bytes[sid] is None:  # a control token
            t = vmap.s_control.get(sid)
            if t is None:  # the teacher has none: it reads the content as text; the row cannot be scored
                ids = _encode_text(teacher_tok, vmap.student_controls[sid])
                _add(al, len(al.teacher_ids), b"", UNALIGNED, False)
                al.teacher_ids += ids
            else:
                _add(al, len(al.teacher_ids), b"", EXACT, True)
                al.teacher_ids.append(t)
            i += 1
            continue
        j = i
        while j < n and int(student_ids[j]) < vmap.n_student and vmap.s_bytes[int(student_ids[j])] is not None:
            j += 1
        _align_run([int(s) for s in student_ids[i:j]], vmap, teacher_tok, al)
        i = j
    return al


def _add(al: Alignment, pos: int, emitted: bytes, flag: int, one: bool, prev: Optional[bytes] = None) -> None:
    al.position.append(pos)
    al.emitted.append(emitted)
    al.flag.append(flag)
    al.one_to_one.append(one)
    al.prev.append(prev)


def _align_run(run: List[int], vmap: VocabMap, teacher_tok, al: Alignment) -> None:
    pieces = [vmap.s_bytes[s] for s in run]
    data = b"".join(pieces)
    try:
        text, valid, tail = data.decode("utf-8"), len(data), ""
    except UnicodeDecodeError as err:  # e.g. a byte-level student cut a character: align the valid part
        valid = err.start
        text, tail = data[:valid].decode("utf-8"), data[valid:].decode("utf-8", errors="replace")
    base = len(al.teacher_ids)
    t_ids = _encode_text(teacher_tok, text)
    t_pieces = [vmap.t_bytes[t] for t in t_ids]
    tail_ids = _encode_text(teacher_tok, tail) if tail else []  # context only: its rows are not scored
    if any(p is None for p in t_pieces) or b"".join(t_pieces) != data[:valid]:
        for _ in run:  # the teacher's tokens do not spell these bytes (a normalizer): no alignment
            _add(al, base, b"", UNALIGNED, False)
        al.teacher_ids += t_ids + tail_ids
        return
    starts, c = [], 0
    for p in t_pieces:
        starts.append(c)
        c += len(p)
    b = 0
    for p in pieces:
        end = b + len(p)
        if end > valid:
            _add(al, base + max(0, len(t_ids) - 1), b"", UNALIGNED, False)
        else:
            j = bisect.bisect_right(starts, b) - 1
            t_end = starts[j] + len(t_pieces[j])
            _add(al, base + j, data[starts[j]:b], EXACT if end <= t_end else BOUND,
                 starts[j] == b and end == t_end, t_pieces[j - 1] if j > 0 else None)
        b = end
    al.teacher_ids += t_ids + tail_ids


# ------------------------------------------------------------------ the target rows

def _lse_scatter(lp: torch.Tensor, index: torch.Tensor, width: int) -> torch.Tensor:
    """``out[r, k] = logsumexp of lp[r, t] over t with index[t] == k``, ``(n, width)``; -inf if empty.
    In log space (two scatters), so tiny teacher probabilities do not underflow."""
    n = lp.shape[0]
    idx = index.to(lp.device).unsqueeze(0).expand(n, -1)
    mx = torch.full((n, width), float("-inf"), dtype=lp.dtype, device=lp.device)
    mx.scatter_reduce_(1, idx, lp, reduce="amax")
    safe = torch.where(torch.isfinite(mx), mx, torch.zeros_like(mx))
    s = torch.zeros_like(mx).scatter_add_(1, idx, (lp - safe.gather(1, idx)).exp())
    return s.log() + safe


def bpm_logprobs(lp_t: torch.Tensor, emitted: Sequence[bytes], vmap: VocabMap, strict: bool = False,
                 lookback: Optional[Dict[int, tuple]] = None):
    """Target log-probabilities over the student's vocabulary ``(n, V_S)`` and the residual mass
    ``(n,)``, from the teacher's log-probabilities ``lp_t (n, V_T)`` at the aligned positions and
    the bytes emitted inside each position's teacher token (module docstring). ``lookback``:
    ``{row: (lp_prev (V_T,), prev bytes)}``, the previous teacher position of rows whose previous
    teacher token has extensions (:meth:`VocabMap.lookback`; module docstring, "Lookback")."""
    n, vs = lp_t.shape[0], vmap.n_student
    out = torch.empty(n, vs + 1, dtype=lp_t.dtype, device=lp_t.device)
    plain = [r for r, e in enumerate(emitted) if not e]
    if plain:
        rows = torch.tensor(plain, device=lp_t.device)
        out[rows] = _lse_scatter(lp_t[rows], vmap.shared if strict else vmap.bpm, vs + 1)
    log_e = torch.zeros(n, dtype=lp_t.dtype, device=lp_t.device)  # log P_T(next token starts with e)
    for r, e in enumerate(emitted):
        if not e:
            continue
        if strict:
            raise ValueError("strict rows start at a teacher boundary")
        ids, c_ids, c_tgt = vmap.conditioned(e)
        row = lp_t[r]
        log_e[r] = torch.logsumexp(row[ids.to(row.device)], 0)
        out[r] = _lse_scatter(row[c_ids.to(row.device)].unsqueeze(0), c_tgt, vs + 1)[0] - log_e[r]
    for r, (lp_prev, prev) in (lookback or {}).items():
        hit = None if strict else vmap.lookback(prev, emitted[r])
        if hit is None:
            continue
        eq, pre, c_ids, c_tgt = (t.to(lp_t.device) for t in hit)
        stay = torch.logsumexp(lp_prev[eq], 0) if eq.numel() else lp_t.new_tensor(float("-inf"))
        a = stay + out[r] + log_e[r]  # the previous token is ``prev``: this position's (unnormalized) mass
        b = _lse_scatter(lp_prev[c_ids].unsqueeze(0), c_tgt, vs + 1)[0]  # a longer previous token spells the row
        norm = torch.logaddexp(stay + log_e[r], torch.logsumexp(lp_prev[pre], 0))
        out[r] = torch.logaddexp(a, b) - norm
    mapped = torch.logsumexp(out[:, :vs], dim=-1)  # log of the mass that reached a student token
    residual = (1 - mapped.exp()).clamp_min(0)
    target = (out[:, :vs] - mapped[:, None]).clamp_min(FLOOR_LOGP)
    return target, residual


def uld_logprobs(lp_t: torch.Tensor, z_s: torch.Tensor) -> torch.Tensor:
    """ULD-style target: the teacher's probabilities sorted, laid onto the student's tokens in the
    student's own order (its k-th likeliest token gets the teacher's k-th largest probability);
    ``(n, V_S)``. A longer teacher vocabulary's tail is folded into the last place."""
    vs = z_s.shape[-1]
    p = lp_t.exp().sort(dim=-1, descending=True).values
    if p.shape[-1] >= vs:
        p = torch.cat([p[:, : vs - 1], p[:, vs - 1:].sum(-1, keepdim=True)], dim=-1)
    else:
        p = torch.cat([p, p.new_zeros(p.shape[0], vs - p.shape[-1])], dim=-1)
    order = z_s.argsort(dim=-1, descending=True)
    out = torch.empty_like(p).scatter_(1, order, p)
    return out.log().clamp_min(FLOOR_LOGP)


class CrossTokenizerLogits:
    """A logit source (``len``, ``rows(idx)``) over the student's vocabulary from the teacher's cached
    hidden states at the aligned positions; the target is computed per chunk (no ``(N, V)`` tensor).
    Residual masses are recorded into ``residual (N,)`` as rows are read."""

    def __init__(self, hidden, weight, bias, vocab_size: int, emitted: List[bytes], vmap: VocabMap, mode: str,
                 student=None, prev_hidden=None, prev: Optional[Dict[int, bytes]] = None):
        self.hidden, self.weight, self.bias = hidden, weight, bias  # (N, d_T), (V_T, d_T), (V_T,) | None
        self.vocab_size, self.emitted, self.vmap, self.mode = vocab_size, emitted, vmap, mode
        self.student = student  # uld: (hidden (N, d_S), head weight (V, d_S))
        # lookback rows: row -> (index into prev_hidden (M, d_T), the previous teacher token's bytes)
        self.prev_hidden, self.prev = prev_hidden, dict(prev or {})
        self.residual = torch.full((len(emitted),), float("nan"))

    def _logprobs(self, h) -> torch.Tensor:
        w = self.weight
        z = h.to(w.dtype) @ w.T  # (n, V_T)
        if self.bias is not None:
            z = z + self.bias
        return torch.log_softmax(z.float() if z.dtype not in (torch.float32, torch.float64) else z, dim=-1)

    def __len__(self) -> int:
        return self.hidden.shape[0]

    def rows(self, idx) -> torch.Tensor:
        lp = self._logprobs(self.hidden[idx])
        sel = range(len(self))[idx] if isinstance(idx, slice) else [int(i) for i in torch.as_tensor(idx).tolist()]
        if self.mode == "uld":
            hs, ws = self.student
            zs = (hs[idx].to(ws.dtype) @ ws[: self.vocab_size].T).to(lp.dtype)
            return uld_logprobs(lp, zs)
        look = [(k, self.prev[i]) for k, i in enumerate(sel) if i in self.prev] if self.mode == "bpm" else []
        lookback = {}
        if look:
            lp_prev = self._logprobs(self.prev_hidden[torch.tensor([m for _, (m, _) in look], dtype=torch.long,
                                                                   device=self.prev_hidden.device)])
            lookback = {k: (lp_prev[a], b) for a, (k, (_, b)) in enumerate(look)}
        target, residual = bpm_logprobs(lp, [self.emitted[i] for i in sel], self.vmap, self.mode == "strict", lookback)
        self.residual[torch.as_tensor(list(sel), dtype=torch.long)] = residual.detach().cpu().to(self.residual.dtype)
        if target.shape[-1] < self.vocab_size:  # the student's padded rows: never sampled
            target = torch.cat([target, target.new_full((target.shape[0], self.vocab_size - target.shape[-1]),
                                                        FLOOR_LOGP)], dim=-1)
        return target[:, : self.vocab_size]


# ------------------------------------------------------------------ the teacher

class CrossTokenizerTeacher:
    """The teacher interface (:mod:`opsd.teacher`) for a teacher with another tokenizer: wraps the
    in-process :class:`opsd.teacher.Teacher` (``inner``), run on the teacher's own ids.

    ``prompt_messages(row) -> messages``: the chat messages of a data row (``meta[j]``);
    ``enable_thinking``: the data option, passed to the teacher's template."""

    def __init__(self, inner, teacher_tok, student_tok, mode: str = "bpm", keep_bound_rows: bool = False,
                 prompt_messages=None, enable_thinking: Optional[bool] = None, max_residual: float = 0.1):
        if mode not in ("bpm", "strict", "uld"):
            raise ConfigError(f"loss.cross_tokenizer={mode!r} is not one of ['bpm', 'strict', 'uld']")
        self.inner, self.teacher_tok, self.student_tok = inner, teacher_tok, student_tok
        self.mode, self.keep_bound_rows, self.max_residual = mode, keep_bound_rows, max_residual
        self.prompt_messages, self.enable_thinking = prompt_messages, enable_thinking
        self.vmap = vocab_map(teacher_tok, student_tok)
        self.width = len(student_tok)  # the sources' rows are over the student's vocabulary
        self.t_width = len(teacher_tok)  # the teacher's logits are sliced to its tokenizer (padded rows dropped)
        self.student = None
        self._prompts: Dict[str, List[int]] = {}
        self._step: List[tuple] = []  # (source, counts) of the step's micro-batches

    def attach_student(self, model) -> None:
        """The student (an HF causal LM), for ``uld`` mode's ranking (a research peer: the trainer
        does not pass it; the comparison script does)."""
        self.student = model

    def prepare(self, packing: bool) -> None:
        """The teacher runs on its own, padded, ids: packing does not reach it."""
        self.inner.prepare(False)

    def after_update(self) -> None:
        self.inner.after_update()

    def close(self) -> None:
        self.inner.close()

    def teacher_prompt(self, row: dict) -> List[int]:
        from opsd.data import encode_chat

        messages = self.prompt_messages(row)
        key = json.dumps(messages, sort_keys=True)
        if key not in self._prompts:
            self._prompts[key] = encode_chat(self.teacher_tok, messages, True, self.enable_thinking)
        return self._prompts[key]

    def score_phase(self, batches: list, vocab_size: int, meta=None) -> list:
        if meta is None:
            raise ValueError("cross-tokenizer teacher: score_phase needs the step's data rows (meta) to render the "
                             "teacher's prompt")
        self.inner.load()
        self._step = []
        sources = [self.score(b, vocab_size, meta) for b in batches]
        self.inner.offload()
        return sources

    @torch.no_grad()
    def score(self, batch: dict, vocab_size: int, meta) -> CrossTokenizerLogits:
        """One micro-batch: align every sequence, run the teacher, zero the loss mask of rows left
        out, return the source of the rows that stay (row-major order of the loss mask)."""
        from opsd.packing import sample_and_position

        inner, dev = self.inner, self.inner.device
        mask = batch["loss_mask"]
        flat_mask = mask.reshape(-1).bool()
        flat = flat_mask.nonzero().squeeze(-1)  # (N,) loss positions, row-major
        targets = batch["input_ids"].reshape(-1)[flat + 1]  # the student token each row predicts
        seq, _ = sample_and_position(mask, batch["position_ids"])
        n_seq = int(seq.max()) + 1 if seq.numel() else 0
        ids, plen, aligns = [], [], []
        for k in range(n_seq):
            row = meta[batch["rows"][k]]
            prompt = self.teacher_prompt(row)
            al = align_response(targets[seq == k].tolist(), self.vmap, self.teacher_tok)
            ids.append(prompt + al.teacher_ids)
            plen.append(len(prompt))
            aligns.append(al)
        pad = self.teacher_tok.pad_token_id if self.teacher_tok.pad_token_id is not None else 0
        if not ids:  # an empty micro-batch: the teacher still runs (ZeRO-3's gathers are collectives)
            ids, plen = [[pad]], [1]
        width = max(map(len, ids))
        input_ids = torch.tensor([r + [pad] * (width - len(r)) for r in ids])
        attn = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in ids])
        hidden = inner.body(input_ids.to(dev), attn.to(dev), None)  # (b, L_T, d_T)
        rows_b, rows_p, emitted, flags, ones, prevs = [], [], [], [], [], []
        for k, al in enumerate(aligns):
            for pos, e, f, one, pv in zip(al.position, al.emitted, al.flag, al.one_to_one, al.prev):
                rows_b.append(k)
                rows_p.append(plen[k] + pos - 1)  # the logit that predicts teacher response token pos
                emitted.append(e)
                flags.append(f)
                ones.append(one)
                prevs.append(pv)
        heavy = self._unresolved(hidden, rows_b, rows_p, emitted, flags, prevs)
        for r in heavy:  # the emitted bytes' own token continues at a position not computed: a bound
            flags[r] = BOUND
        keep = [f == EXACT and (one or self.mode != "strict") or f == BOUND and (self.keep_bound_rows or self.mode == "uld")
                for f, one in zip(flags, ones)]
        keep_t = torch.tensor(keep, dtype=torch.bool)
        if len(keep_t) != len(flat):
            raise RuntimeError(f"cross-tokenizer teacher: {len(flat)} loss positions but {len(keep_t)} aligned rows")
        drop = flat[~keep_t]
        if len(drop):  # rows left out of the loss and of TIP's ranking
            mask.view(-1)[drop] = 0
            tw = batch.get("token_weights")  # per loss position (reward-weighted distillation): keep the rows kept
            if tw is not None and len(tw) == len(keep_t):
                batch["token_weights"] = tw[keep_t.to(tw.device)]
        kb = torch.tensor(rows_b, dtype=torch.long)[keep_t]
        kp = torch.tensor(rows_p, dtype=torch.long)[keep_t]
        h = hidden[kb.to(dev), kp.to(dev)]  # (N_kept, d_T)
        student = None
        if self.mode == "uld":
            student = self._student_rows(batch, mask)
        kept = [r for r, k in enumerate(keep) if k]
        src, look = self._source(hidden, h, rows_b, rows_p, emitted, prevs, kept, vocab_size, student)
        ft = torch.tensor(flags, dtype=torch.long)
        counts = dict(rows=len(flags), exact=int((ft == EXACT).sum()), bound=int((ft == BOUND).sum()),
                      unaligned=int((ft == UNALIGNED).sum()), kept=int(keep_t.sum()), lookback=look,
                      unresolved=len(heavy), one_to_one=sum(1 for a in aligns for o in a.one_to_one if o))
        self._step.append((src, counts))
        return src

    def _source(self, hidden, h, rows_b, rows_p, emitted, prevs, rows, vocab_size, student=None):
        """The logit source of ``rows`` (indices into the micro-batch's aligned rows; ``h``: their hidden
        states), with the previous position of its lookback rows; returns (source, lookback rows)."""
        dev = hidden.device
        # lookback rows (bpm): the previous teacher token could have been longer (VocabMap.lookback)
        look = [(n, r) for n, r in enumerate(rows) if self.mode == "bpm" and prevs[r] is not None
                and self.vmap.lookback(prevs[r], emitted[r]) is not None]
        prev_hidden = None
        if look:
            lb = torch.tensor([rows_b[r] for _, r in look], dtype=torch.long, device=dev)
            lp_ = torch.tensor([rows_p[r] - 1 for _, r in look], dtype=torch.long, device=dev)
            prev_hidden = hidden[lb, lp_]  # (M, d_T)
        inner = self.inner
        src = CrossTokenizerLogits(h, inner.head_weight[: self.t_width],
                                   None if inner.head_bias is None else inner.head_bias[: self.t_width], vocab_size,
                                   [emitted[r] for r in rows], self.vmap, self.mode, student, prev_hidden,
                                   {n: (m, prevs[r]) for m, (n, r) in enumerate(look)})
        return src, len(look)

    def _unresolved(self, hidden, rows_b, rows_p, emitted, flags, prevs) -> List[int]:
        """Exact rows inside a teacher token (``emitted`` not empty, bpm) whose residual mass is above
        ``max_residual``: the teacher puts that mass on a token that *is* the emitted bytes (after
        '. ' the teacher wants '. ' and another step, the student wrote 'A' of '. Answer: '), whose
        continuation lives at a teacher position this forward did not compute. Renormalised away, the
        rest would read as certainty (P('A') = 1); these rows are bounds."""
        cand = [r for r, (e, f) in enumerate(zip(emitted, flags)) if e and f == EXACT and self.mode == "bpm"]
        if not cand:
            return []
        dev = hidden.device
        h = hidden[torch.tensor([rows_b[r] for r in cand], device=dev), torch.tensor([rows_p[r] for r in cand],
                                                                                     device=dev)]
        src, _ = self._source(hidden, h, rows_b, rows_p, emitted, prevs, cand, self.vmap.n_student)
        for s in range(0, len(cand), self.inner.chunk_size):
            src.rows(slice(s, s + self.inner.chunk_size))
        return [r for r, res in zip(cand, src.residual.tolist()) if res > self.max_residual]

    def _student_rows(self, batch, mask):
        """ULD mode: the student's last hidden states at the kept rows and its head (no gradient)."""
        if self.student is None:
            raise ConfigError("loss.cross_tokenizer=uld ranks the student's own probabilities: the student must be "
                              "attached (CrossTokenizerTeacher.attach_student; recipes/toy/xtok_table.py does)")
        m = self.student
        p = next(m.parameters())
        out = m.base_model(input_ids=batch["input_ids"].to(p.device),
                           attention_mask=_to(batch["attention_mask"], p.device),
                           position_ids=_to(batch["position_ids"], p.device), use_cache=False).last_hidden_state
        h = out[mask.to(p.device).bool()]
        return h.detach(), m.get_output_embeddings().weight.detach()

    def metrics(self) -> dict:
        """The step's row shares and the mean residual mass of the rows the losses read."""
        if not self._step:
            return {}
        tot = {k: sum(c[k] for _, c in self._step) for k in self._step[0][1]}
        res = torch.cat([s.residual for s, _ in self._step])
        res = res[~res.isnan()]
        n = max(1, tot["rows"])
        out = {"xtok/exact_rows": tot["exact"] / n, "xtok/bound_rows": tot["bound"] / n,
               "xtok/unaligned_rows": tot["unaligned"] / n, "xtok/kept_rows": tot["kept"] / n,
               "xtok/one_to_one_rows": tot["one_to_one"] / n, "xtok/lookback_rows": tot["lookback"] / n,
               "xtok/unresolved_rows": tot["unresolved"] / n,
               "xtok/coverage": self.vmap.coverage}
        if len(res):
            out["xtok/residual_mass"] = float(res.mean())
        return out


def _to(t, device):
    return None if t is None else t.to(device)


def same_vocabulary(a, b) -> bool:
    """Two tokenizers with the same token -> id map and control tokens (today's path applies)."""
    return a.get_vocab() == b.get_vocab() and control_tokens(a) == control_tokens(b)


def load_tokenizer(path: str, chat_template: Optional[str] = None, trust_remote_code: bool = False):
    """The teacher's tokenizer; ``chat_template``: a template file or the template itself."""
    from pathlib import Path

    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except Exception as err:
        raise ConfigError(f"model.teacher_tokenizer={path!r} could not be loaded: "
                          f"{type(err).__name__}: {err}") from None
    if chat_template:
        p = Path(chat_template)
        tok.chat_template = p.read_text() if p.is_file() else chat_template
    return tok


def build_cross_tokenizer_teacher(cfg, device: torch.device, tokenizer):
    """The teacher of ``cfg`` when ``model.teacher_tokenizer`` is set: today's teacher when the two
    tokenizers are the same, else a :class:`CrossTokenizerTeacher` (checked options, map coverage)."""
    from opsd import models
    from opsd.data import build_prompt_messages, load_prompt_dataset
    from opsd.teacher import load_teacher

    m, d, loss = cfg.model, cfg.data, cfg.loss
    t_tok = load_tokenizer(m.teacher_tokenizer, m.teacher_chat_template, m.trust_remote_code)
    if same_vocabulary(t_tok, tokenizer) and not m.teacher_chat_template:
        log.info("model.teacher_tokenizer has the student's vocabulary: the same-tokenizer path")
        models.check_same_tokenizer(tokenizer, m.teacher, m.trust_remote_code)
        return load_teacher(cfg, device)
    if loss.teacher_topk:
        raise ConfigError("loss.teacher_topk is not supported with model.teacher_tokenizer (the byte-prefix map needs "
                          "the teacher's whole distribution)")
    if cfg.rollout.environment:
        raise ConfigError("rollout.environment (agentic episodes) is not supported with model.teacher_tokenizer yet: "
                          "tool turns would need each model's own template per turn")
    if d.messages_field:
        raise ConfigError("data.messages_field (multi-turn rows) is not supported with model.teacher_tokenizer yet")
    vmap = vocab_map(t_tok, tokenizer)
    log.info("cross-tokenizer map %s -> student: coverage %.4f (%d of %d teacher tokens reach a student token), "
             "mode %s", m.teacher_tokenizer, vmap.coverage, int((vmap.bpm != vmap.residual).sum()), vmap.n_teacher,
             loss.cross_tokenizer)
    if vmap.coverage < loss.min_map_coverage:
        raise ConfigError(f"model.teacher_tokenizer={m.teacher_tokenizer!r}: the byte-prefix map covers "
                          f"{vmap.coverage:.4f} "
                          f"of the teacher's vocabulary, below loss.min_map_coverage={loss.min_map_coverage}")
    prompts = {}

    def prompt_messages(row):
        prompt = row.get("prompt")
        if prompt is None:  # the trainer's items hold ids; the text comes from the data files by row index
            if not prompts:
                prompts["all"] = load_prompt_dataset(d.train_files, d.prompt_field, d.answer_field)["prompt"]
            prompt = prompts["all"][row["index"]]
        return build_prompt_messages(prompt, d.system_prompt, d.prompt_template)

    return CrossTokenizerTeacher(load_teacher(cfg, device), t_tok, tokenizer, loss.cross_tokenizer,
                                 loss.keep_bound_rows, prompt_messages, d.enable_thinking, loss.max_row_residual)
