"""The environment interface of agentic (multi-turn, tool-calling) rollouts.

``opsd`` owns the agent loop (:mod:`opsd.rollout.agent`) and this interface; concrete environments
live outside ``opsd``'s core (the agentic toy world in ``opsd.toy``, DeepPlanning in ``eval``) and
are named in the config like the reward function::

    rollout:
      environment: mypkg.envs:LookupEnv        # module:Class
      environment_options: {db: data/facts.json}   # passed as keyword arguments, once per run
      max_turns: 8

One :class:`Environment` object serves a whole run; :meth:`Environment.reset` starts one
:class:`Episode` per rollout (a prompt row times ``rollout.n``). An episode gives the initial chat
messages and the tools (OpenAI-style function schemas, rendered by the tokenizer's chat template),
executes tool calls, and scores the finished transcript.

A minimal environment::

    class Echo(Environment):
        def reset(self, row):
            return EchoEpisode(row)

    class EchoEpisode(Episode):
        def __init__(self, row):
            self.row = row
            self.messages = [{"role": "user", "content": row["prompt"]}]
            self.tools = [function_schema("echo", "Repeat a word.", {"word": "string"})]

        def call_tool(self, name, arguments):
            return arguments["word"]

        def score(self, transcript):
            ok = transcript.final_text is not None and self.row["answer"] in transcript.final_text
            return EpisodeScore(reward=float(ok), scores={"answered": float(transcript.final_text is not None)})

What the model writes is input: the loop checks every call against the episode's schemas (unknown
tool, missing or mistyped arguments) before :meth:`Episode.call_tool` runs, and turns a
:class:`ToolError` -- or any other exception, or a call that runs past ``rollout.tool_timeout_s``
-- into an error text returned to the model as the tool response. It never stops the run.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from opsd.config import ConfigError


class ToolError(Exception):
    """A tool was used wrongly (bad argument value, nothing found where that is an error); the
    message is shown to the model as the tool's response."""


@dataclass
class ToolCall:
    """One tool call parsed from an assistant turn. ``error`` is set when the call could not be
    parsed (malformed JSON, no name); ``name``/``arguments`` are then best effort."""

    name: Optional[str]
    arguments: Dict[str, Any]
    raw: str
    error: Optional[str] = None


@dataclass
class Turn:
    """One assistant turn of a transcript and the tool results that answered it."""

    text: str  # decoded assistant text (special tokens kept), as sampled
    tool_calls: List[ToolCall] = field(default_factory=list)
    results: List[str] = field(default_factory=list)  # one tool response per call, in order
    ok: List[bool] = field(default_factory=list)  # per call: ran without error


@dataclass
class Transcript:
    """A finished episode as the environment's scorer sees it.

    ``final_text`` is the text of the last assistant turn when it had no tool call (the answer);
    ``None`` when the episode was cut (``cut`` names why: ``max_turns`` or ``token_budget``).
    """

    messages: List[dict]  # initial messages + assistant and tool messages, as rendered
    turns: List[Turn]
    final_text: Optional[str]
    cut: Optional[str] = None


@dataclass
class EpisodeScore:
    """``reward`` in [0, 1] (the training reward and the logged accuracy); ``scores``: named
    sub-scores in [0, 1] (logged as step means); ``info``: anything else worth keeping (reasons)."""

    reward: float
    scores: Dict[str, float] = field(default_factory=dict)
    info: Dict[str, Any] = field(default_factory=dict)


class Episode:
    """One rollout of the environment. Subclasses set ``messages`` and ``tools`` and implement
    :meth:`call_tool` and :meth:`score`."""

    messages: List[dict]
    tools: List[dict]

    def call_tool(self, name: str, arguments: Dict[str, Any]) -> str:
        """Run one tool call (already checked against the schema) and return its text result;
        raise :class:`ToolError` for a wrong use (the message goes back to the model)."""
        raise NotImplementedError

    def score(self, transcript: Transcript) -> EpisodeScore:
        raise NotImplementedError


class Environment:
    """A task of episodes; one object per run, built as ``Class(**rollout.environment_options)``."""

    def reset(self, row: Dict[str, Any]) -> Episode:
        """A fresh episode for one data row (all of its columns, as read from the file)."""
        raise NotImplementedError

    def close(self) -> None:
        """Free resources at the end of the run."""


def function_schema(name: str, description: str, params: Dict[str, str],
                    required: Optional[List[str]] = None, descriptions: Optional[Dict[str, str]] = None) -> dict:
    """A small OpenAI-style function schema: ``params`` maps argument name -> JSON type
    (``string``, ``integer``, ``number``, ``boolean``, ``array``, ``object``); all are required
    unless ``required`` says otherwise."""
    props = {k: {"type": t, **({"description": descriptions[k]} if descriptions and k in descriptions else {})}
             for k, t in params.items()}
    return {"type": "function", "function": {
        "name": name, "description": description,
        "parameters": {"type": "object", "properties": props,
                       "required": list(params) if required is None else list(required)}}}


_JSON_TYPES = {"string": (str,), "integer": (int,), "number": (int, float), "boolean": (bool,),
               "array": (list,), "object": (dict,), "null": (type(None),)}


def check_arguments(schema: dict, arguments: Any) -> Optional[str]:
    """The first problem of ``arguments`` against a function schema (required keys, unknown keys
    when ``additionalProperties`` is false, JSON types, ``enum``), or ``None`` when they fit."""
    fn = schema.get("function", schema)
    params = fn.get("parameters") or {}
    if not isinstance(arguments, dict):
        return f"arguments must be a JSON object, got {type(arguments).__name__}"
    props = params.get("properties") or {}
    missing = [k for k in params.get("required") or [] if k not in arguments]
    if missing:
        return f"missing required argument(s) {missing} for {fn.get('name')}"
    for key, value in arguments.items():
        spec = props.get(key)
        if spec is None:
            if params.get("additionalProperties", True) is False or props:
                return f"unknown argument {key!r} for {fn.get('name')}; expected {sorted(props)}"
            continue
        types = spec.get("type")
        types = types if isinstance(types, list) else [types] if types else []
        allowed = tuple(t for name in types for t in _JSON_TYPES.get(name, (object,)))
        bad_bool = isinstance(value, bool) and "boolean" not in types and types
        if allowed and (not isinstance(value, allowed) or bad_bool):
            return f"argument {key!r} of {fn.get('name')} must be {'/'.join(types)}, got {json_type(value)}"
        if "enum" in spec and value not in spec["enum"]:
            return f"argument {key!r} of {fn.get('name')} must be one of {spec['enum']}, got {value!r}"
    return None


def json_type(value: Any) -> str:
    for name, types in _JSON_TYPES.items():
        if isinstance(value, types) and not (name in ("integer", "number") and isinstance(value, bool)):
            return name
    return type(value).__name__


def load_environment(spec: str, options: Optional[dict] = None) -> Environment:
    """``"module:Class"`` + options -> an :class:`Environment`, or a :class:`ConfigError` naming
    ``rollout.environment``."""
    mod, _, name = spec.partition(":")
    if not mod or not name:
        raise ConfigError(f"rollout.environment={spec!r}: expected 'module:Class'")
    try:
        cls = getattr(importlib.import_module(mod), name)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"rollout.environment={spec!r} cannot be imported ({e})") from None
    try:
        env = cls(**(options or {}))
    except TypeError as e:
        raise ConfigError(f"rollout.environment_options do not fit {spec}: {e}") from None
    if not hasattr(env, "reset"):
        raise ConfigError(f"rollout.environment={spec!r} has no reset(row) method")
    return env
