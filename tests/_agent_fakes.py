"""Agentic test doubles: a BPE tokenizer with a Qwen3-like tool template, a key-value environment,
and a scripted backend that plays fixed turns (as ids) through the agent loop.

The tokenizer has merges ("ok", "an", "er", ...), so a sampled split like ["o", "k"] decodes to
"ok", which re-encodes to the single merged id: the round trip changes the ids.
"""
from __future__ import annotations

import hashlib
import json
import string
import time
from typing import Callable, Dict, List, Sequence, Union

from tokenizers import Tokenizer, decoders, models
from transformers import PreTrainedTokenizerFast

from opsd.environment import Environment, Episode, EpisodeScore, ToolCall, ToolError, function_schema
from opsd.rollout.base import Rollouts, RolloutBackend
from opsd.rollout.tool_parsers import HermesToolParser

SPECIAL = ["<pad>", "<unk>", "<|im_start|>", "<|im_end|>", "<think>", "</think>", "<tool_call>", "</tool_call>"]
MERGES = [("o", "k"), ("a", "n"), ("e", "r"), ("t", "h"), ("th", "e")]

TOOL_TEMPLATE = (
    "{%- if tools %}"
    "{{- '<|im_start|>system\\n' }}"
    "{%- if messages[0].role == 'system' %}{{- messages[0].content + '\\n\\n' }}{%- endif %}"
    "{{- 'Tools:\\n' }}{%- for t in tools %}{{- t | tojson + '\\n' }}{%- endfor %}"
    "{{- '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message.role == 'system' %}"
    "{%- if not tools %}{{- '<|im_start|>system\\n' + message.content + '<|im_end|>\\n' }}{%- endif %}"
    "{%- elif message.role == 'tool' %}"
    "{%- if loop.first or messages[loop.index0 - 1].role != 'tool' %}{{- '<|im_start|>user' }}{%- endif %}"
    "{{- '\\n<tool_response>\\n' + message.content + '\\n</tool_response>' }}"
    "{%- if loop.last or messages[loop.index0 + 1].role != 'tool' %}{{- '<|im_end|>\\n' }}{%- endif %}"
    "{%- else %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def build_tool_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {tok: i for i, tok in enumerate(SPECIAL)}
    for ch in string.printable:
        vocab.setdefault(ch, len(vocab))
    for a, b in MERGES:
        vocab.setdefault(a + b, len(vocab))
    backend = Tokenizer(models.BPE(vocab=vocab, merges=list(MERGES), unk_token="<unk>"))
    backend.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", unk_token="<unk>",
                                  eos_token="<|im_end|>",
                                  additional_special_tokens=["<|im_start|>", "<think>", "</think>",
                                                             "<tool_call>", "</tool_call>"])
    tok.chat_template = TOOL_TEMPLATE
    return tok


def call_text(name: str, **arguments) -> str:
    return "<tool_call>" + json.dumps({"name": name, "arguments": arguments}) + "</tool_call>"


class KeyValueEnv(Environment):
    """Rows ``{"key": "a", "answer": "5"}``; tool ``get(key)`` reads a fixed table. Extra tools for
    the fault tests: ``boom()`` raises, ``slow()`` sleeps ``slow_s``."""

    TABLE = {"a": "5", "b": "7", "c": "11", "d": "2"}

    def __init__(self, slow_s: float = 0.0):
        self.slow_s = slow_s

    def reset(self, row):
        return KeyValueEpisode(row, self.slow_s)


class KeyValueEpisode(Episode):
    def __init__(self, row, slow_s):
        self.row, self.slow_s = row, slow_s
        self.messages = [{"role": "user", "content": f"value of {row['key']}?"}]
        self.tools = [function_schema("get", "Read a value.", {"key": "string"}),
                      function_schema("boom", "Always fails.", {}),
                      function_schema("slow", "Takes a while.", {})]

    def call_tool(self, name, arguments):
        if name == "get":
            if arguments["key"] not in KeyValueEnv.TABLE:
                raise ToolError(f"no key {arguments['key']!r}")
            return KeyValueEnv.TABLE[arguments["key"]]
        if name == "boom":
            raise RuntimeError("kaboom")
        time.sleep(self.slow_s)
        return "late"

    def score(self, transcript):
        answered = transcript.final_text is not None
        right = answered and str(self.row["answer"]) in transcript.final_text
        return EpisodeScore(float(right), {"answered": float(answered)})


class FlakyScoreEnv(KeyValueEnv):
    """A scorer that raises on rows whose key is in ``fail_keys`` and gives the sub-score
    ``lookup`` only to episodes that made a tool call (missing, not 0, for the others)."""

    def __init__(self, fail_keys: str = "b", slow_s: float = 0.0):
        super().__init__(slow_s)
        self.fail_keys = fail_keys

    def reset(self, row):
        return FlakyScoreEpisode(row, self.slow_s, self.fail_keys)


class FlakyScoreEpisode(KeyValueEpisode):
    def __init__(self, row, slow_s, fail_keys):
        super().__init__(row, slow_s)
        self.fail_keys = fail_keys

    def score(self, transcript):
        if self.row["key"] in self.fail_keys:
            raise KeyError("plan_total")  # a scorer tripping on odd model output
        s = super().score(transcript)
        if any(t.results for t in transcript.turns):
            s.scores["lookup"] = 1.0
        return s


Turn = Union[str, List[int]]


class ScriptedBackend(RolloutBackend):
    """``script(context_text, turn_index) -> str | list[int]``: the next assistant turn (text is
    encoded canonically and gets EOS appended; a list of ids is used as given). ``calls`` records
    every prompt it was given (ids), to check what the loop fed back."""

    name = "scripted"

    def __init__(self, tokenizer, script: Callable[[str, int], Turn]):
        self.tok, self.script, self.calls = tokenizer, script, []

    def generate(self, prompt_ids: Sequence[Sequence[int]], sampling):
        out = Rollouts([], [], [], [])
        for i, p in enumerate(prompt_ids):
            self.calls.append(list(p))
            text = self.tok.decode(list(p), skip_special_tokens=False)
            turn = text.count("<|im_start|>assistant") - 1  # the generation prompt opens one
            nxt = self.script(text, turn)
            ids = (self.tok.encode(nxt, add_special_tokens=False) + [self.tok.eos_token_id]
                   if isinstance(nxt, str) else list(nxt))
            finished = bool(ids) and ids[-1] == self.tok.eos_token_id
            if len(ids) > sampling.max_new_tokens:
                ids, finished = ids[:sampling.max_new_tokens], False
            out.prompt_ids.append(list(p)); out.response_ids.append(ids)
            out.finished.append(finished); out.prompt_index.append(i)
        return out


def lookup_policy(context: str, turn: int) -> str:
    """Deterministic policy for the trainer tests: look the key up, then answer with some filler
    whose length depends on the context (so episodes differ in length)."""
    key = context.split("value of ", 1)[1][0]
    fill = "the " * (int(hashlib.sha256(context.encode()).hexdigest()[:2], 16) % 4)
    if turn == 0:
        return f"{fill}ok " + call_text("get", key=key)
    value = context.rsplit("<tool_response>\n", 1)[1].split("\n", 1)[0]
    return f"{fill}answer {value}"


def write_rows(path, n: int) -> str:
    keys = sorted(KeyValueEnv.TABLE)
    with open(path, "w") as f:
        for i in range(n):
            k = keys[i % len(keys)]
            f.write(json.dumps({"key": k, "answer": KeyValueEnv.TABLE[k]}) + "\n")
    return str(path)


def rows_of(keys: str) -> List[Dict[str, str]]:
    return [{"key": k, "answer": KeyValueEnv.TABLE.get(k, "?")} for k in keys]


class RankParser(HermesToolParser):
    """Test parser for uneven ranks: on rank 1 every turn calls ``get(key=a)``, on rank 0 none does,
    so rank 1's episodes run to rollout.max_turns while rank 0's end after one turn."""

    def parse(self, text):
        import torch.distributed as dist

        rank = dist.get_rank() if dist.is_initialized() else 0
        return [ToolCall("get", {"key": "a"}, text)] if rank == 1 else []


def every_turn_finished(backend):
    """Wrap ``backend.generate`` so every sampled turn counts as ended (a random tiny student rarely
    samples its end-of-turn token); the generate calls themselves are the real ones."""
    real = backend.generate

    def generate(prompt_ids, sampling):
        out = real(prompt_ids, sampling)
        out.finished = [True] * len(out.finished)
        return out

    backend.generate = generate
