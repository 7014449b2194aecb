"""Multi-turn training samples for tests: a whole conversation rendered with the chat template,
trained on the assistant turns only (the loss-mask convention of :mod:`opsd.batching`).

Test-only: the trainer trains on its own rollouts (:mod:`opsd.batching`); these render a fixed
conversation to check templates and the mask convention against it.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import List, Optional, Sequence, Tuple

from opsd.batching import shift_token_mask
from opsd.data import encode_chat


def build_multiturn_sample(tokenizer, messages: Sequence[Mapping],
                           enable_thinking: Optional[bool] = None) -> Tuple[List[int], List[int]]:
    """``(input_ids, loss_mask)`` of a whole conversation, training only the assistant turns.

    Each assistant message i is located by rendering incrementally: its span starts where the
    rendering of ``messages[:i]`` + generation prompt stops agreeing with that of ``messages[:i+1]``
    (so the ``<|im_start|>assistant\\n`` header, and e.g. an empty think block the generation prompt
    adds, are not trained) and ends after its end-of-turn token (trailing whitespace-only template
    glue such as the newline after ``<|im_end|>`` is not trained). Each span must appear unchanged
    in the rendering of the whole conversation; templates that rewrite earlier turns (e.g. Qwen3
    dropping the reasoning of past assistant turns) raise a ValueError naming the message.
    ``loss_mask`` follows the module's convention: ``loss_mask[p] = 1`` iff token p+1 is trained.
    """
    if not messages:
        raise ValueError("empty conversation")
    full = encode_chat(tokenizer, messages, add_generation_prompt=False, enable_thinking=enable_thinking)
    trained = [0] * len(full)
    for i, message in enumerate(messages):
        if message.get("role") == "assistant":
            start, end = _assistant_span(tokenizer, messages, i, full, enable_thinking)
            trained[start:end] = [1] * (end - start)
    return full, shift_token_mask(trained)


def _assistant_span(tokenizer, messages: Sequence[Mapping], i: int, full: List[int],
                    enable_thinking: Optional[bool]) -> Tuple[int, int]:
    """Token range ``[start, end)`` of assistant message i inside ``full``."""
    def render(msgs, add_generation_prompt):
        return encode_chat(tokenizer, msgs, add_generation_prompt, enable_thinking)

    upto = render(messages[:i + 1], False)
    end = _strip_trailing_whitespace(tokenizer, upto)
    start = 0
    if i > 0:
        before, header = render(messages[:i], False), render(messages[:i], True)
        if upto[:len(before)] != before:
            raise _not_prefix_stable(i, messages, "rendering messages[:i] is not a prefix of messages[:i+1]")
        start = max(len(before), _common_prefix_length(header, upto))
    if full[:end] != upto[:end]:
        raise _not_prefix_stable(i, messages, "its rendering differs inside the whole conversation")
    return start, max(start, end)


def _strip_trailing_whitespace(tokenizer, ids: List[int]) -> int:
    end = len(ids)
    while end > 0 and not tokenizer.decode([ids[end - 1]]).strip():
        end -= 1
    return end


def _common_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def _not_prefix_stable(i: int, messages: Sequence[Mapping], detail: str) -> ValueError:
    return ValueError(
        f"chat template is not prefix-stable at message {i} (role '{messages[i].get('role')}'): {detail}. "
        f"Assistant spans cannot be located; remove fields the template rewrites in later turns "
        f"(e.g. reasoning_content of earlier assistant turns) or use a prefix-stable template."
    )
