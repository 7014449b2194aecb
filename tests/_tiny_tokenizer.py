"""A tiny character-level tokenizer with a Qwen-style chat template, built in memory for tests.

Every printable ASCII character (plus newline and tab) is one token; the chat control strings
(``<|im_start|>``, ``<|im_end|>``, ``<think>``, ``</think>``) are added tokens, so they are split
off before the per-character pre-tokenizer runs, as in Qwen. No files, no network. Built by the toy
worlds' builder (:func:`opsd.toy.tokenizer.char_tokenizer`), with ids and options of its own.
"""
from __future__ import annotations

import string

from transformers import PreTrainedTokenizerFast

from opsd.toy.tokenizer import GENERATION_PROMPT, char_tokenizer

SPECIAL = ["<pad>", "<unk>", "<|im_start|>", "<|im_end|>"]
ADDED = ["<think>", "</think>"]

# Qwen3-like: the generation prompt gets an empty think block when thinking is switched off.
QWEN_STYLE_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    + GENERATION_PROMPT
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
    return char_tokenizer(SPECIAL + ADDED + chars, chat_template, markers=ADDED, unk="<unk>", pad_token="<pad>",
                          eos_token="<|im_end|>", additional_special_tokens=["<|im_start|>"])
