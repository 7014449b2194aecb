"""Tool-call parsers: the assistant text of one turn -> tool calls, per model family.

A parser knows how a chat template writes a tool call (its markers) and

- :meth:`ToolParser.parse` turns a turn's decoded text into :class:`opsd.environment.ToolCall`
  objects (malformed ones carry ``error``; parsing never raises on model text);
- :meth:`ToolParser.call_spans` marks which of the turn's *sampled ids* belong to a tool call, for
  the per-role metrics; it works on ids, so nothing is re-encoded.

Registered by name (``rollout.tool_parser``); ``register_parser`` adds one for another family.
"""
from __future__ import annotations

import json
import re
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from opsd.environment import ToolCall


class ToolParser:
    """Base class. ``start``/``end``: the call markers as they appear in the text."""

    start: str = ""
    end: str = ""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self._start_id = _single_token_id(tokenizer, self.start)
        self._end_id = _single_token_id(tokenizer, self.end)

    def parse(self, text: str) -> List[ToolCall]:
        raise NotImplementedError

    def call_spans(self, ids: Sequence[int]) -> List[Tuple[int, int]]:
        """``[(begin, end), ...]`` index ranges of ``ids`` (end exclusive) inside a tool call,
        markers included. Uses the marker ids when each marker is one token, else per-token
        character offsets (one decode per token prefix: slower, same result)."""
        if self._start_id is not None and self._end_id is not None:
            spans, begin = [], None
            for i, t in enumerate(ids):
                if t == self._start_id and begin is None:
                    begin = i
                elif t == self._end_id and begin is not None:
                    spans.append((begin, i + 1))
                    begin = None
            if begin is not None:  # unterminated call: up to the end of the turn
                spans.append((begin, len(ids)))
            return spans
        return self._spans_by_offsets(ids)

    def _spans_by_offsets(self, ids: Sequence[int]) -> List[Tuple[int, int]]:
        ends = token_char_ends(self.tokenizer, ids)
        text = self.tokenizer.decode(list(ids), skip_special_tokens=False)
        out = []
        for m in re.finditer(re.escape(self.start) + r".*?(?:" + re.escape(self.end) + r"|$)", text, re.S):
            b = next(i for i, e in enumerate(ends) if e > m.start())
            e = next((i for i, e in enumerate(ends) if e >= m.end()), len(ids) - 1)
            out.append((b, e + 1))
        return out


class HermesToolParser(ToolParser):
    """Qwen2.5 / Qwen3 / Hermes: ``<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>``,
    any number per turn."""

    start, end = "<tool_call>", "</tool_call>"

    def parse(self, text: str) -> List[ToolCall]:
        calls = []
        pattern = re.escape(self.start) + r"(.*?)(" + re.escape(self.end) + r"|$)"
        for m in re.finditer(pattern, text, re.S):
            body, closed = m.group(1).strip(), bool(m.group(2))
            calls.append(_call_from_json(body, m.group(0)) if closed else
                         ToolCall(None, {}, m.group(0), error=f"unterminated {self.start} (no {self.end})"))
        return calls


def _call_from_json(body: str, raw: str) -> ToolCall:
    try:
        obj = json.loads(body)
    except json.JSONDecodeError as e:
        return ToolCall(None, {}, raw, error=f"tool call is not valid JSON ({e.msg} at char {e.pos})")
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return ToolCall(None, {}, raw, error='tool call must be a JSON object with a string "name"')
    args = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(args, str):  # some models write the arguments as a JSON string
        try:
            args = json.loads(args) if args.strip() else {}
        except json.JSONDecodeError:
            return ToolCall(obj["name"], {}, raw, error='"arguments" is a string that is not a JSON object')
    if not isinstance(args, dict):
        return ToolCall(obj["name"], {}, raw, error='"arguments" must be a JSON object')
    return ToolCall(obj["name"], args, raw)


def _single_token_id(tokenizer, text: str) -> Optional[int]:
    if not text:
        return None
    ids = tokenizer.encode(text, add_special_tokens=False)
    return ids[0] if len(ids) == 1 and ids[0] != tokenizer.unk_token_id else None


def token_char_ends(tokenizer, ids: Sequence[int]) -> List[int]:
    """Character offset where each token's text ends in ``decode(ids)``; a token that completes a
    multi-byte character gets the offset after it."""
    return [len(tokenizer.decode(list(ids[: i + 1]), skip_special_tokens=False)) for i in range(len(ids))]


_PARSERS: Dict[str, Callable] = {"qwen3": HermesToolParser, "qwen2.5": HermesToolParser, "hermes": HermesToolParser}


def register_parser(name: str, cls: Callable) -> None:
    """Make ``rollout.tool_parser=name`` build ``cls(tokenizer)``."""
    _PARSERS[name] = cls


def parser_names() -> List[str]:
    return sorted(_PARSERS)


def make_parser(name: str, tokenizer) -> ToolParser:
    """The parser named by ``rollout.tool_parser`` (a registered name or ``module:Class``)."""
    if ":" in name:
        import importlib

        mod, _, cls = name.partition(":")
        return getattr(importlib.import_module(mod), cls)(tokenizer)
    if name not in _PARSERS:
        raise ValueError(f"rollout.tool_parser={name!r} is unknown; choose one of {parser_names()} or 'module:Class'")
    return _PARSERS[name](tokenizer)
