"""The toy world's character-level tokenizer, saved as a Hugging Face folder.

One token per character of a small alphabet (digits, the task's punctuation, lower-case letters
and the few capitals the task uses) plus Qwen-style control tokens. Control tokens are
"added tokens", split off before the per-character pre-tokenizer runs, as in Qwen.

Token ids (stable, the models depend on them)::

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

import string
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

PAD, IM_START, EOS, THINK, END_THINK, UNK = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>", "<unk>")
SPECIAL_TOKENS = [PAD, IM_START, EOS, THINK, END_THINK, UNK]
# Task text, chat-role names and short system prompts; a character outside maps to <unk>.
ALPHABET = "\n " + string.digits + "+-*/()=.,:?!" + string.ascii_lowercase + "ACW"

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
    "{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}"
    "{{- '<think>\\n\\n</think>\\n\\n' }}"
    "{%- endif %}"
    "{%- endif %}"
)


def vocab() -> dict:
    """token -> id, control tokens first."""
    return {tok: i for i, tok in enumerate(SPECIAL_TOKENS + list(ALPHABET))}


def padded_vocab_size(multiple: int = 64) -> int:
    """The models' embedding rows: the vocab rounded up, so matmuls get aligned widths."""
    n = len(vocab())
    return (n + multiple - 1) // multiple * multiple


def build_tokenizer():
    """The tokenizer as a ``PreTrainedTokenizerFast`` (in memory)."""
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel(vocab=vocab(), unk_token=UNK))
    # One pre-token per character ([\s\S] also matches newlines); Fuse joins them on decode,
    # where the default decoder would put spaces between tokens.
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    backend.decoder = decoders.Fuse()
    backend.add_special_tokens(SPECIAL_TOKENS)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=PAD, eos_token=EOS, unk_token=UNK,
        extra_special_tokens=[IM_START, THINK, END_THINK],
        chat_template=CHAT_TEMPLATE,
        padding_side="left",  # generation pads on the left; training code pads explicitly
        clean_up_tokenization_spaces=False,  # "12. 12" must decode as written
        model_max_length=512,
    )


def save_tokenizer(out_dir) -> str:
    """Write the tokenizer folder (tokenizer.json, tokenizer_config.json, chat_template.jinja)."""
    out_dir = Path(out_dir)
    build_tokenizer().save_pretrained(str(out_dir))
    return str(out_dir)
