"""The agent loop: multi-turn, tool-calling rollouts over any :class:`RolloutBackend`.

A layer of its own over the rollout engine (DESIGN.md, "Agentic rollouts"): the backend only
generates; this loop parses tool calls, runs them in the environment and appends their results.

    episode rows -> env.reset(row): initial messages + tool schemas -> prompt ids (chat template)
    per turn, all live episodes together:
        backend.generate(context ids)             ids kept exactly as sampled
        tool calls parsed from the turn's text    (rollout.tool_parser)
        calls checked and run by the episode      errors become the tool's response text
        tool messages rendered by the template    their ids appended after the sampled end of turn
    until a turn without a tool call, rollout.max_turns, or rollout.max_episode_tokens
    -> episode.score(transcript): reward in [0, 1] and named sub-scores

Token fidelity. The trained sequence is ``prompt ids + [sampled turn ids | template ids]*``: the
sampled ids are never decoded and re-encoded (the decoded text is only *read*, to find tool
calls); the ids between turns are the chat template's rendering of the tool messages, computed
once as a text delta and encoded alone, and are exactly the ids the backend was given as context
for the next turn. ``response_mask`` is 1 on sampled ids only (reasoning, tool calls, answer),
0 on tool responses and template glue; ``token_roles`` tells which kind each sampled id is.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

from opsd.environment import (Environment, Episode, EpisodeScore, ToolCall, ToolError, Transcript, Turn,
                              check_arguments)
from opsd.config import RolloutConfig
from opsd.rollout.base import RolloutBackend, RolloutLoop, Rollouts, SamplingConfig
from opsd.rollout.tool_parsers import ToolParser, make_parser

log = logging.getLogger(__name__)

# Per-token roles of a response (``AgentRollouts.token_roles``); 0 = not sampled (never trained).
ROLE_TEMPLATE, ROLE_TEXT, ROLE_TOOL_CALL, ROLE_ANSWER = 0, 1, 2, 3
ROLE_NAMES = {ROLE_TEXT: "text", ROLE_TOOL_CALL: "tool_call", ROLE_ANSWER: "answer"}


@dataclass
class AgentConfig:
    """The loop's limits; defaults and meaning are those of :class:`opsd.config.RolloutConfig`."""

    max_turns: int = RolloutConfig.max_turns
    max_episode_tokens: int = RolloutConfig.max_episode_tokens  # after the initial prompt: sampled + inserted ids
    max_new_tokens: int = RolloutConfig.max_new_tokens  # per assistant turn
    tool_timeout_s: float = RolloutConfig.tool_timeout_s
    tool_parser: str = RolloutConfig.tool_parser
    enable_thinking: Optional[bool] = None
    max_score_error_share: float = RolloutConfig.max_score_error_share

    @classmethod
    def from_rollout(cls, r, enable_thinking: Optional[bool] = None) -> "AgentConfig":
        return cls(r.max_turns, r.max_episode_tokens, r.max_new_tokens, r.tool_timeout_s, r.tool_parser,
                   enable_thinking, r.max_score_error_share)


@dataclass
class EpisodeRecord:
    """What one episode did, for metrics and for the environment's scorer."""

    transcript: Transcript
    score: EpisodeScore
    turns: int
    calls_ok: int
    calls_failed: int
    score_error: Optional[str] = None  # the scorer raised: reward 0, counted in the metrics


@dataclass
class AgentRollouts(Rollouts):
    """:class:`Rollouts` of whole episodes: ``response_ids`` is everything after the initial
    prompt (sampled turns and inserted tool turns); ``response_mask[i][t]`` is 1 where token t was
    sampled by the student; ``token_roles`` as ``ROLE_*``; ``episodes[i]`` its record."""

    episodes: List[EpisodeRecord] = field(default_factory=list)


class _Live:
    """Mutable state of one running episode."""

    def __init__(self, episode: Episode, prompt: List[int], index: int):
        self.episode, self.prompt, self.index = episode, prompt, index
        self.messages = [dict(m) for m in episode.messages]
        self.ids: List[int] = []  # response ids so far
        self.mask: List[int] = []
        self.roles: List[int] = []
        self.turns: List[Turn] = []
        self.final_text: Optional[str] = None
        self.cut: Optional[str] = None
        self.done = False


class AgentLoop(RolloutLoop):
    """``AgentLoop(backend, tokenizer, env, cfg).run(rows, sampling)`` -> :class:`AgentRollouts`."""

    group_names = dict(ROLE_NAMES)

    def __init__(self, backend: RolloutBackend, tokenizer, env: Environment, cfg: AgentConfig,
                 parser: Optional[ToolParser] = None):
        self.backend, self.tokenizer, self.env, self.cfg = backend, tokenizer, env, cfg
        self.parser = parser or make_parser(cfg.tool_parser, tokenizer)
        self._template_kw = {} if cfg.enable_thinking is None else {"enable_thinking": cfg.enable_thinking}
        self._glue = _turn_glue(tokenizer, self._template_kw)
        self.think_end = _single_id(tokenizer, "</think>")

    @property
    def max_new_tokens(self) -> int:
        return self.cfg.max_new_tokens

    def load_rows(self, files):
        from opsd.data import EpisodeRows

        return EpisodeRows.from_files(files)

    def with_backend(self, backend: RolloutBackend) -> "AgentLoop":
        """The same loop generating with another backend (e.g. the teacher, for its accuracy)."""
        return AgentLoop(backend, self.tokenizer, self.env, self.cfg, self.parser)

    def close(self) -> None:
        self.env.close()

    def step_metrics(self, rollouts: "AgentRollouts", world: int) -> Dict[str, float]:
        """Episode metrics over all ranks: per-episode means of turns, tool calls (ok / failed), cut
        episodes, scorer errors, reward and sub-scores (over the episodes that have each); the share
        of response tokens that are not trained."""
        import torch

        from opsd.engine import all_reduce_host

        local = episode_metrics(rollouts)
        keys = sorted(local)
        if world > 1:  # sub-score names may differ between ranks: agree on the union first
            import torch.distributed as dist

            names = [None] * world
            dist.all_gather_object(names, keys)
            keys = sorted(set(k for ks in names for k in ks))
        tot = all_reduce_host(torch.tensor([local.get(k, 0.0) for k in keys], dtype=torch.float64))
        m = dict(zip(keys, tot.tolist()))
        n = max(m.pop("episodes"), 1.0)
        sampled, total = m.pop("sampled_tokens"), m.pop("response_tokens")
        scored = {k[len("scored/"):]: m.pop(k) for k in list(m) if k.startswith("scored/")}
        out = {f"agent/{k}": v / (scored[k[6:]] if k.startswith("score/") else n) for k, v in m.items()}
        out.update({f"agent/score_missing/{k}": 1.0 - c / n for k, c in scored.items()})
        out["agent/masked_share"] = 1.0 - sampled / total if total else 0.0
        return out

    def failure(self, rollouts: "AgentRollouts", metrics: Dict[str, float]) -> Optional[str]:
        """Past ``rollout.max_score_error_share`` of episodes whose scorer raised (every rank sees the
        same all-reduced share, so every rank stops)."""
        share, limit = metrics["agent/score_errors"], self.cfg.max_score_error_share
        if share <= limit:
            return None
        errors = [e.score_error for e in rollouts.episodes if e.score_error is not None]
        return (f"the environment's scorer raised on {share:.1%} of the episodes, more than "
                f"rollout.max_score_error_share={limit:g}" + (f" (first on this rank: {errors[0]})" if errors else ""))

    def run(self, rows: Sequence[Dict[str, Any]], sampling: SamplingConfig) -> AgentRollouts:
        """One episode per row, ``sampling.n`` times each (sample ``i * n + j`` is the j-th of row i)."""
        live = []
        for i, row in enumerate(rows):
            for _ in range(sampling.n):
                ep = self.env.reset(row)
                live.append(_Live(ep, self.prompt_ids(ep), i))
        for t in range(self.cfg.max_turns):
            active = [e for e in live if not e.done]
            if not self._any_rank_live(len(active)):
                break
            self._turn(active, sampling, last=t == self.cfg.max_turns - 1)
        out = self._collect(live)
        out.rows = [rows[i] for i in out.prompt_index]
        return out

    def prompt_ids(self, ep: Episode) -> List[int]:
        from opsd.data import _as_id_list

        out = self.tokenizer.apply_chat_template(list(ep.messages), tools=ep.tools or None,
                                                 add_generation_prompt=True, tokenize=True, **self._template_kw)
        return _as_id_list(out)

    # ------------------------------------------------------------------ one turn of every live episode

    def _any_rank_live(self, n: int) -> bool:
        """Whether a turn runs: live episodes here, or (a lockstep backend) on any rank."""
        if not self.backend.lockstep:
            return n > 0
        from opsd.engine import max_over_ranks

        return max_over_ranks(n) > 0

    def _turn(self, active: List[_Live], sampling: SamplingConfig, last: bool) -> None:
        limits = [min(self.cfg.max_new_tokens, self.cfg.max_episode_tokens - len(e.ids)) for e in active]
        turn_sampling = SamplingConfig(sampling.temperature, sampling.top_p, sampling.top_k,
                                       max(limits, default=self.cfg.max_new_tokens), 1, sampling.seed)
        out = self.backend.generate([e.prompt + e.ids for e in active], turn_sampling)
        by_prompt = {}
        for k, j in enumerate(out.prompt_index):
            by_prompt[j] = k
        for j, (e, limit) in enumerate(zip(active, limits)):
            k = by_prompt[j]
            ids, finished = list(out.response_ids[k][:limit]), out.finished[k] and len(out.response_ids[k]) <= limit
            self._after_turn(e, ids, finished, last)

    def _after_turn(self, e: _Live, ids: List[int], finished: bool, last: bool) -> None:
        text = self.tokenizer.decode(ids, skip_special_tokens=False)
        calls = self.parser.parse(text) if finished else []
        e.ids += ids
        e.mask += [1] * len(ids)
        e.roles += self._roles(ids, final=finished and not calls)
        e.messages.append({"role": "assistant", "content": _strip_eos(text, self.tokenizer.eos_token)})
        turn = Turn(text, calls)
        e.turns.append(turn)
        if not finished:  # ran out of tokens inside the turn
            e.done = True
            e.cut = "token_budget" if len(e.ids) >= self.cfg.max_episode_tokens else "max_new_tokens"
            return
        if not calls:
            e.done, e.final_text = True, text
            return
        if last:  # the last allowed turn asked for tools: nobody would read their results
            e.done, e.cut = True, "max_turns"
            return
        for call in calls:
            ok, result = self.run_tool(e.episode, call)
            turn.results.append(result)
            turn.ok.append(ok)
        tool_msgs = [{"role": "tool", "content": r} for r in turn.results]
        inserted = self.tool_turn_ids(tool_msgs)
        if len(e.ids) + len(inserted) >= self.cfg.max_episode_tokens:  # no room for the next turn
            e.done, e.cut = True, "token_budget"
            return
        e.messages += tool_msgs
        e.ids += inserted
        e.mask += [0] * len(inserted)
        e.roles += [ROLE_TEMPLATE] * len(inserted)

    def _roles(self, ids: List[int], final: bool) -> List[int]:
        roles = [ROLE_ANSWER if final else ROLE_TEXT] * len(ids)
        if final and self.think_end is not None and self.think_end in ids:
            last = len(ids) - 1 - ids[::-1].index(self.think_end)
            roles[: last + 1] = [ROLE_TEXT] * (last + 1)  # reasoning before the answer is free text
        for b, t in self.parser.call_spans(ids):
            roles[b:t] = [ROLE_TOOL_CALL] * (t - b)
        return roles

    def tool_turn_ids(self, tool_msgs: List[dict]) -> List[int]:
        """Template ids that follow a sampled end-of-turn token and carry ``tool_msgs`` up to the
        next generation prompt: the template's rendering of an anchor conversation with and without
        them, differenced as text, then encoded alone (it starts after a special token, so its
        tokenization does not depend on what precedes it)."""
        anchor = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
        head = self._render(anchor, False)
        full = self._render(anchor + tool_msgs, True)
        if not full.startswith(head):
            raise ValueError("the chat template renders earlier turns differently once tool messages follow; "
                             "tool turns cannot be appended without re-encoding")
        return self.tokenizer.encode(self._glue + full[len(head):], add_special_tokens=False)

    def _render(self, messages, add_generation_prompt: bool) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt,
                                                  **self._template_kw)

    # ------------------------------------------------------------------ tools

    def run_tool(self, episode: Episode, call: ToolCall):
        """``(ok, response text)``; every failure is a text for the model, never an exception."""
        if call.error:
            return False, f"Error: {call.error}"
        schema = next((t for t in episode.tools if t.get("function", t).get("name") == call.name), None)
        if schema is None:
            names = [t.get("function", t).get("name") for t in episode.tools]
            return False, f"Error: unknown tool {call.name!r}; available tools: {names}"
        problem = check_arguments(schema, call.arguments)
        if problem:
            return False, f"Error: {problem}"
        return _call_with_timeout(episode, call, self.cfg.tool_timeout_s)

    # ------------------------------------------------------------------ scoring and output

    def _collect(self, live: List[_Live]) -> AgentRollouts:
        out = AgentRollouts([], [], [], [], rewards=[], response_mask=[], token_roles=[])
        for e in live:
            transcript = Transcript(e.messages, e.turns, e.final_text, e.cut)
            score_error = None
            try:
                score = e.episode.score(transcript)
            except Exception as err:  # one scorer tripping on odd model output must not stop the run;
                # it is counted (agent/score_errors) and the trainer stops past a configured share
                score_error = f"{type(err).__name__}: {err}"
                log.warning("episode scoring failed (%s); reward 0, counted in agent/score_errors", score_error)
                score = EpisodeScore(0.0, info={"score_error": score_error})
            ok = sum(sum(t.ok) for t in e.turns)
            calls = sum(len(t.results) for t in e.turns)
            out.prompt_ids.append(e.prompt)
            out.response_ids.append(e.ids)
            out.finished.append(e.cut is None)
            out.prompt_index.append(e.index)
            out.response_mask.append(e.mask)
            out.token_roles.append(e.roles)
            out.episodes.append(EpisodeRecord(transcript, score, len(e.turns), ok, calls - ok, score_error))
            out.rewards.append(score.reward)
        return out


def run_episodes(backend: RolloutBackend, tokenizer, env: Environment, rows: Sequence[Dict[str, Any]],
                 sampling: SamplingConfig, cfg: AgentConfig, parser: Optional[ToolParser] = None) -> AgentRollouts:
    """Play one episode per row (``sampling.n`` each) to the end; see the module docstring."""
    return AgentLoop(backend, tokenizer, env, cfg, parser).run(rows, sampling)


def _call_with_timeout(episode: Episode, call: ToolCall, timeout: float):
    """Run the tool in a daemon thread: a hung tool is abandoned after ``timeout`` seconds (a daemon
    thread does not keep the process alive at exit) and reported to the model."""
    box: Dict[str, Any] = {}

    def target():
        try:
            box["result"] = str(episode.call_tool(call.name, call.arguments))
        except ToolError as e:
            box["error"] = str(e)
        except Exception as e:  # a tool bug is reported like a wrong call; the run goes on
            box["error"] = f"{call.name} failed: {type(e).__name__}: {e}"

    t = threading.Thread(target=target, daemon=True, name=f"tool-{call.name}")
    t.start()
    t.join(timeout)
    if t.is_alive():
        return False, f"Error: {call.name} did not answer within {timeout:g} s"
    if "error" in box:
        return False, f"Error: {box['error']}"
    return True, box["result"]


def _turn_glue(tokenizer, template_kw) -> str:
    """Text the template writes after an assistant turn's end-of-turn token (Qwen: a newline)."""
    eos = tokenizer.eos_token
    text = tokenizer.apply_chat_template([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
                                         tokenize=False, add_generation_prompt=False, **template_kw)
    cut = text.rfind(eos)
    if cut < 0:
        raise ValueError(f"the chat template does not end an assistant turn with the EOS token {eos!r}")
    return text[cut + len(eos):]


def _strip_eos(text: str, eos: str) -> str:
    return text[: -len(eos)] if eos and text.endswith(eos) else text


def _single_id(tokenizer, text: str) -> Optional[int]:
    ids = tokenizer.encode(text, add_special_tokens=False)
    return ids[0] if len(ids) == 1 and ids[0] != tokenizer.unk_token_id else None


def episode_metrics(rollouts: AgentRollouts) -> Dict[str, float]:
    """Per-step sums (the trainer all-reduces and divides by ``episodes``): turns, tool calls ok /
    failed, cut episodes, scorer errors, reward, sampled / all response tokens; and per sub-score
    ``score/<name>`` its sum with ``scored/<name>`` the number of episodes that have it (a sub-score
    an episode lacks is missing, not 0: its mean is over the episodes that have it)."""
    m: Dict[str, float] = {"episodes": float(len(rollouts.episodes)), "score_errors": 0.0}
    for rec in rollouts.episodes:
        m["turns"] = m.get("turns", 0.0) + rec.turns
        m["tool_calls_ok"] = m.get("tool_calls_ok", 0.0) + rec.calls_ok
        m["tool_calls_failed"] = m.get("tool_calls_failed", 0.0) + rec.calls_failed
        m["cut"] = m.get("cut", 0.0) + float(rec.transcript.cut is not None)
        m["score_errors"] += float(rec.score_error is not None)
        m["reward"] = m.get("reward", 0.0) + rec.score.reward
        for k, v in rec.score.scores.items():
            if v is None:
                continue
            m[f"score/{k}"] = m.get(f"score/{k}", 0.0) + float(v)
            m[f"scored/{k}"] = m.get(f"scored/{k}", 0.0) + 1.0
    m["sampled_tokens"] = float(sum(sum(x) for x in rollouts.response_mask))
    m["response_tokens"] = float(sum(len(x) for x in rollouts.response_mask))
    return m
