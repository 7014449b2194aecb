"""Loading the student, the teacher and their shared tokenizer."""
from __future__ import annotations

import logging
from pathlib import Path

import torch

from opsd.config import ConfigError  # a ValueError; `python -m opsd.train` exits 2 with its message

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def load_tokenizer(path: str, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise FileNotFoundError(f"cannot load a tokenizer from {path!r}: {e}") from None
    if tok.pad_token_id is None:  # generation and padding need one; EOS is the usual stand-in
        tok.pad_token = tok.eos_token
    return tok


def load_causal_lm(path: str, dtype: str = "float32", attn_implementation=None, trust_remote_code=False):
    from transformers import AutoModelForCausalLM

    kwargs = dict(dtype=DTYPES[dtype], trust_remote_code=trust_remote_code)
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    try:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except (OSError, ValueError) as e:
        raise FileNotFoundError(f"cannot load a causal LM from {path!r}: {e}") from None
    check_plain_head(model, path)
    return model


def check_plain_head(model, name: str) -> None:
    """The chunked losses compute ``logits = hidden @ W.T (+ b)``; refuse models whose logits
    are post-processed (soft-capping, scaling), where that identity does not hold."""
    cfg = model.config
    for attr in ("final_logit_softcapping", "logit_scale", "output_multiplier_scale"):
        val = getattr(cfg, attr, None)
        if val not in (None, 1, 1.0):
            raise NotImplementedError(f"{name}: config.{attr}={val} post-processes the logits, "
                                      "which the chunked losses do not support yet")


def check_same_tokenizer(student_tok, teacher_path: str, trust_remote_code: bool = False) -> None:
    """Token-level distillation needs one vocabulary: the same token ids for the same strings."""
    try:
        teacher_tok = load_tokenizer(teacher_path, trust_remote_code)
    except FileNotFoundError:
        log.warning("teacher %s has no tokenizer of its own; assuming it shares the student's", teacher_path)
        return
    s_vocab, t_vocab = student_tok.get_vocab(), teacher_tok.get_vocab()
    if s_vocab != t_vocab:
        student = getattr(student_tok, "name_or_path", None) or "(in-memory tokenizer)"
        diff = [f"{t!r}: {s_vocab.get(t)} vs {t_vocab.get(t)}" for t in sorted(set(s_vocab) | set(t_vocab), key=str)
                if s_vocab.get(t) != t_vocab.get(t)][:5]
        raise ConfigError(
            f"model.teacher: student {student} and teacher {teacher_path} use different tokenizers "
            f"({len(s_vocab)} vs {len(t_vocab)} tokens; first differences, student id vs teacher id: "
            f"{'; '.join(diff)}); token-level distillation needs a shared vocabulary "
            "(a padded logit width alone is fine)")


def is_dir_model(path: str) -> bool:
    return Path(path).is_dir() and (Path(path) / "config.json").is_file()
