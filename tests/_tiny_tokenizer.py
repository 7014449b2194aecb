"""A tiny character-level tokenizer with a Qwen-style chat template, built in memory for tests.

Every printable ASCII character (plus newline and tab) is one token; the chat control strings
(``<|im_start|>``, ``<|im_end|>``, ``<think>``, ``</think>``) are added tokens, so they are split
off before the per-character pre-tokenizer runs, as in Qwen. No files, no network.
"""
from __future__ import annotations

import string

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

SPECIAL = ["<pad>", "<unk>", "<|im_start|>", "<|im_end|>"]
ADDED = ["<think>", "</think>"]

# Qwen3-like: the generation prompt gets an empty think block when thinking is switched off.
QWEN_STYLE_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}"
    "{{- '<think>\\n\\n</think>\\n\\n' }}"
    "{%- endif %}"
    "{%- endif %}"
)

# Same turns, but the LAST message is rendered differently from earlier ones (like templates that
# drop the reasoning of past assistant turns): rendering a prefix of a conversation is then not a
# prefix of rendering the whole conversation.
NOT_PREFIX_STABLE_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if loop.last %}{{- '[last]' }}{%- endif %}"
    "{{- message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

# A template that does not know about the thinking switch.
PLAIN_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- message['role'] + ': ' + message['content'] + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- 'assistant: ' }}{%- endif %}"
)


def build_tiny_tokenizer(chat_template: str = QWEN_STYLE_TEMPLATE, chars=None) -> PreTrainedTokenizerFast:
    """Char-level ``PreTrainedTokenizerFast``; eos = ``<|im_end|>``, pad = ``<pad>``. ``chars``:
    the characters in id order (default ``string.printable``, which includes "\n", "\t", " ")."""
    chars = list(string.printable if chars is None else chars)
    vocab = {tok: i for i, tok in enumerate(SPECIAL + ADDED)}
    for ch in chars:
        vocab.setdefault(ch, len(vocab))
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    # One pre-token per character ([\s\S] also matches newlines); Fuse joins them back on decode.
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    backend.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        unk_token="<unk>",
        eos_token="<|im_end|>",
        additional_special_tokens=["<|im_start|>"],
    )
    tok.add_tokens(ADDED)
    tok.chat_template = chat_template
    return tok
