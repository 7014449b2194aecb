"""The toy worlds' character-level tokenizers, saved as Hugging Face folders: one builder, and the
arithmetic world's definition.

One token per character of a small alphabet plus Qwen-style control tokens. Control tokens are
"added tokens", split off before the per-character pre-tokenizer runs, as in Qwen. The agentic
world (:mod:`opsd.toy.agent_tokenizer`) adds tool markers and word pieces; the tests' in-memory
tokenizer (``tests/_tiny_tokenizer.py``) uses :func:`char_tokenizer` too.

Token ids of the arithmetic world (stable, the models depend on them)::

    0 <|endoftext|>  pad        1 <|im_start|>     2 <|im_end|>  eos
    3 <think>                   4 </think>         5 <unk>
    6.. the characters of ALPHABET, in order

The chat template is Qwen3's shape: ``<|im_start|>{role}\\n{content}<|im_end|>\\n`` per message,
``<|im_start|>assistant\\n`` for ``add_generation_prompt``. Thinking switch, as in Qwen3:
``enable_thinking=False`` appends an empty ``<think>\\n\\n</think>\\n\\n`` to the generation
prompt; left unset (the default) or True adds nothing and the toy models answer directly, with no
think block -- the short default, because CPU generation is slow. The toy models are trained on
both renderings, so both work. Assistant turns are wrapped in ``{% generation %}`` so that
``return_assistant_tokens_mask=True`` marks what a multi-turn SFT would train on.
"""
from __future__ import annotations

import re
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence, Tuple

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

PAD, IM_START, EOS, THINK, END_THINK, UNK = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>", "<unk>")
SPECIAL_TOKENS = (PAD, IM_START, EOS, THINK, END_THINK, UNK)
# Task text, chat-role names and short system prompts; a character outside maps to <unk>.
ALPHABET = "\n " + string.digits + "+-*/()=.,:?!" + string.ascii_lowercase + "ACW"

# Qwen3's generation prompt, with its thinking switch (the tail of every toy template).
GENERATION_PROMPT = (
    "{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}"
    "{{- '<think>\\n\\n</think>\\n\\n' }}"
    "{%- endif %}"
    "{%- endif %}"
)

CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- if message['role'] == 'assistant' %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- generation %}{{- message['content'] + '<|im_end|>' }}{%- endgeneration %}"
    "{{- '\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    + GENERATION_PROMPT
)


def char_tokenizer(tokens: Sequence[str], chat_template: str, *, pieces: Sequence[str] = (),
                   special: Sequence[str] = (), markers: Sequence[str] = (), unk: str = UNK, **options):
    """A ``PreTrainedTokenizerFast`` (in memory) with one token per character.

    ``tokens``: every token in id order (a repeat keeps its first id); ``pieces``: multi-character
    tokens matched before single characters, longest first (like a BPE vocabulary); ``special``:
    control tokens, split off before pre-tokenization; ``markers``: split off the same way but not
    special (Qwen3's tool markers: ``decode(skip_special_tokens=True)`` keeps them); ``options``:
    the ``PreTrainedTokenizerFast`` arguments (pad and eos tokens, padding side, ...).
    """
    from transformers import PreTrainedTokenizerFast

    vocab: dict = {}
    for tok in tokens:
        vocab.setdefault(tok, len(vocab))
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=unk))
    # One pre-token per piece or else per character ([\s\S] also matches newlines); Fuse joins
    # them on decode, where the default decoder would put spaces between tokens.
    alternatives = [re.escape(p) for p in sorted(pieces, key=len, reverse=True)] + [r"[\s\S]"]
    backend.pre_tokenizer = pre_tokenizers.Split(Regex("|".join(alternatives)), behavior="isolated")
    backend.decoder = decoders.Fuse()
    if special:
        backend.add_special_tokens(list(special))
    if markers:
        backend.add_tokens([AddedToken(t, special=False, normalized=False) for t in markers])
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token=unk, chat_template=chat_template, **options)


@dataclass(frozen=True)
class ToyTokenizer:
    """One world's tokenizer: its vocabulary (control tokens, tool markers, characters, word
    pieces, in id order) and chat template -- all that decides the ids a model sees."""

    alphabet: str
    chat_template: str
    markers: Tuple[str, ...] = ()
    pieces: Tuple[str, ...] = ()
    model_max_length: int = 512

    def vocab(self) -> dict:
        """token -> id: control tokens, markers, the characters, then the pieces."""
        return {tok: i for i, tok in enumerate(SPECIAL_TOKENS + self.markers + tuple(self.alphabet) + self.pieces)}

    def identity(self) -> dict:
        """What decides the ids a model sees (the toy-world builder fingerprints it)."""
        return {"vocab": self.vocab(), "template": self.chat_template}

    def padded_vocab_size(self, multiple: int = 64) -> int:
        """The models' embedding rows: the vocab rounded up, so matmuls get aligned widths."""
        return (len(self.vocab()) + multiple - 1) // multiple * multiple

    def build(self):
        """The tokenizer as a ``PreTrainedTokenizerFast`` (in memory)."""
        return char_tokenizer(
            list(self.vocab()), self.chat_template, pieces=self.pieces, special=SPECIAL_TOKENS, markers=self.markers,
            pad_token=PAD, eos_token=EOS, extra_special_tokens=[IM_START, THINK, END_THINK],
            padding_side="left",  # generation pads on the left; training code pads explicitly
            clean_up_tokenization_spaces=False,  # "12. 12" must decode as written
            model_max_length=self.model_max_length)

    def save(self, out_dir) -> str:
        """Write the tokenizer folder (tokenizer.json, tokenizer_config.json, chat_template.jinja)."""
        self.build().save_pretrained(str(Path(out_dir)))
        return str(out_dir)


ARITHMETIC = ToyTokenizer(ALPHABET, CHAT_TEMPLATE)
vocab, padded_vocab_size = ARITHMETIC.vocab, ARITHMETIC.padded_vocab_size
build_tokenizer, save_tokenizer = ARITHMETIC.build, ARITHMETIC.save
