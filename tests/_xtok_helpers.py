"""Tokenizer pairs and a brute-force byte-prefix marginal for the cross-tokenizer tests.

The oracle is written from the definition (opsd/xtok.py, "A row"), token by token and student
token by student token, with none of the module's tries, sorted ranges or log-space scatters.
"""
from __future__ import annotations

import functools
import random

import torch

from opsd.toy import tokenizer as toytok

# Text of the fuzz pair: ASCII, two-byte (é, ö, ß), three-byte (日, 本, 語, €) and four-byte (🙂) characters.
MULTI = "abcdeélöß日本語€🙂 \t\n.,:!0123456789"
CORPUS = ["héllo wörld 日本語 🙂 and   spaces\t\ttabs\n\nnew lines", "straße 123 € 45.6, naïve café",
          "日本 日本語 本語 🙂🙂 a b c", "    indented: ab cd ef  gh\n\t x"] * 20
SPECIALS = ("<pad>", "<|im_start|>", "<|im_end|>")
TEMPLATE = toytok.CHAT_TEMPLATE


@functools.lru_cache(maxsize=None)
def toy_char():
    """The arithmetic world's character-level student tokenizer."""
    return toytok.build_tokenizer()


@functools.lru_cache(maxsize=None)
def toy_bpe():
    """The project's byte-level BPE of the toy world (the quick corpus)."""
    from opsd.toy.xtok_world import build_bpe, quick_config

    return build_bpe(quick_config())


@functools.lru_cache(maxsize=None)
def multi_bpe():
    """A byte-level BPE over multilingual text: its merges split UTF-8 characters into byte tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=256 + 80, special_tokens=["<|im_end|>", "<pad>", "<|im_start|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    backend.train_from_iterator(CORPUS, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=backend, chat_template=TEMPLATE, pad_token="<pad>",
                                   eos_token="<|im_end|>", extra_special_tokens=["<|im_start|>"],
                                   clean_up_tokenization_spaces=False)


@functools.lru_cache(maxsize=None)
def multi_char():
    """Character-level over :data:`MULTI`, with multi-character pieces (some span BPE boundaries)."""
    pieces = ["日本", "  ", "ab", "é ", " 1", "🙂🙂", "\t\t"]
    tokens = list(SPECIALS) + ["<unk>"] + list(MULTI) + pieces
    return toytok.char_tokenizer(tokens, TEMPLATE, pieces=pieces, special=list(SPECIALS) + ["<unk>"], pad_token="<pad>",
                                 eos_token="<|im_end|>", clean_up_tokenization_spaces=False)


def random_text(rng: random.Random, n: int) -> str:
    """Random characters of MULTI with whitespace runs."""
    out = []
    for _ in range(n):
        r = rng.random()
        out.append(rng.choice([" " * rng.randint(2, 5), "\t" * rng.randint(1, 3), "\n\n"]) if r < 0.15
                   else rng.choice(MULTI))
    return "".join(out)


def student_ids(tok, text_parts) -> list:
    """Student ids of text parts and control tokens (a part in SPECIALS is a control token)."""
    ids = []
    for part in text_parts:
        if part in SPECIALS:
            ids.append(tok.convert_tokens_to_ids(part))
        else:
            ids += tok(part, add_special_tokens=False, split_special_tokens=True)["input_ids"]
    return ids


def control_counterparts(teacher_tok, student_tok) -> dict:
    """teacher control id -> student control id: same content, else EOS -> EOS."""
    s = {t.content: int(i) for i, t in student_tok.added_tokens_decoder.items() if t.special}
    out = {}
    for i, t in teacher_tok.added_tokens_decoder.items():
        if not t.special:
            continue
        j = s.get(t.content)
        if j is None and int(i) == teacher_tok.eos_token_id:
            j = student_tok.eos_token_id
        if j is not None:
            out[int(i)] = j
    return out


def brute_marginal(lp: torch.Tensor, emitted: bytes, t_bytes, s_bytes, controls: dict) -> torch.Tensor:
    """The byte-prefix marginal of one row, from the definition: ``(V_S,)`` probabilities."""
    p = lp.double().exp().tolist()
    q = [0.0] * len(s_bytes)
    denom = 0.0
    for t, b in enumerate(t_bytes):
        if b is None:
            if not emitted and t in controls:
                q[controls[t]] += p[t]
            if not emitted:
                denom += p[t]
            continue
        if not b.startswith(emitted):
            continue
        denom += p[t]
        rest = b[len(emitted):]
        best = None
        for v, s in enumerate(s_bytes):
            if s and rest.startswith(s) and (best is None or len(s) > len(s_bytes[best])):
                best = v
        if best is not None and rest:
            q[best] += p[t]
    q = torch.tensor(q, dtype=torch.float64) / denom
    return q / q.sum()


def brute_lookback(lp_prev: torch.Tensor, lp: torch.Tensor, prev: bytes, emitted: bytes, t_bytes, s_bytes,
                   controls: dict) -> torch.Tensor:
    """The byte-level marginal of a row over two teacher positions, from the definition: the paths
    that spell ``prev + emitted`` from the previous position are (a) the previous token is exactly
    ``prev``, then the row's own position (as :func:`brute_marginal`, unnormalized), and (b) a
    longer previous token that starts with ``prev + emitted``, whose next bytes are the row's."""
    pp, p = lp_prev.double().exp().tolist(), lp.double().exp().tolist()
    stay = sum(pp[t] for t, b in enumerate(t_bytes) if b == prev)
    q = [0.0] * len(s_bytes)
    denom = 0.0
    for t, b in enumerate(t_bytes):  # (a)
        if b is None:
            if not emitted:
                denom += stay * p[t]
                if t in controls:
                    q[controls[t]] += stay * p[t]
            continue
        if not b.startswith(emitted):
            continue
        denom += stay * p[t]
        best = _longest(b[len(emitted):], s_bytes)
        if best is not None and len(b) > len(emitted):
            q[best] += stay * p[t]
    spelled = prev + emitted
    for t, b in enumerate(t_bytes):  # (b)
        if b is None or not b.startswith(spelled) or len(b) <= len(prev):
            continue
        denom += pp[t]
        best = _longest(b[len(spelled):], s_bytes)
        if best is not None and len(b) > len(spelled):
            q[best] += pp[t]
    q = torch.tensor(q, dtype=torch.float64) / denom
    return q / q.sum()


def _longest(rest: bytes, s_bytes):
    best = None
    for v, s in enumerate(s_bytes):
        if s and rest.startswith(s) and (best is None or len(s) > len(s_bytes[best])):
            best = v
    return best


def brute_flags(s_pieces, t_pieces) -> list:
    """Per student piece (bytes): 0 if it lies inside one teacher piece, 1 if it crosses a boundary."""
    bounds, c = [], 0
    for p in t_pieces:
        bounds.append((c, c + len(p)))
        c += len(p)
    out, b = [], 0
    for p in s_pieces:
        inside = any(lo <= b and b + len(p) <= hi and lo < hi for lo, hi in bounds)
        out.append(0 if inside else 1)
        b += len(p)
    return out
