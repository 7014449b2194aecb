"""The agent loop (opsd.rollout.agent): token fidelity, masks, roles, bad model output, cuts."""
import pytest

from _agent_fakes import FlakyScoreEnv, KeyValueEnv, ScriptedBackend, build_tool_tokenizer, call_text, rows_of
from opsd.batching import build_sequences
from opsd.environment import check_arguments, function_schema, load_environment
from opsd.config import ConfigError
from opsd.rollout.agent import (ROLE_ANSWER, ROLE_TEMPLATE, ROLE_TEXT, ROLE_TOOL_CALL, AgentConfig, episode_metrics,
                                run_episodes)
from opsd.rollout.base import SamplingConfig
from opsd.rollout.tool_parsers import HermesToolParser, make_parser


@pytest.fixture(scope="module")
def tok():
    return build_tool_tokenizer()


def _play(tok, script, keys="a", cfg=None, env=None, n=1):
    backend = ScriptedBackend(tok, script)
    out = run_episodes(backend, tok, env or KeyValueEnv(), rows_of(keys), SamplingConfig(n=n),
                       cfg or AgentConfig(max_turns=4, max_episode_tokens=400, max_new_tokens=200, tool_timeout_s=2))
    return out, backend


def _enc(tok, text):
    return tok.encode(text, add_special_tokens=False)


def test_two_turn_episode_ids_mask_and_roles_exactly(tok):
    turns = [call_text("get", key="a"), "answer 5"]
    out, backend = _play(tok, lambda ctx, t: turns[t])
    eos = tok.eos_token_id
    t1, t2 = _enc(tok, turns[0]) + [eos], _enc(tok, turns[1]) + [eos]
    tool = _enc(tok, "\n<|im_start|>user\n<tool_response>\n5\n</tool_response><|im_end|>\n<|im_start|>assistant\n")
    assert out.response_ids[0] == t1 + tool + t2
    assert out.response_mask[0] == [1] * len(t1) + [0] * len(tool) + [1] * len(t2)
    # the call span (markers included) is a tool call; its end-of-turn token is free text
    assert out.token_roles[0] == [ROLE_TOOL_CALL] * (len(t1) - 1) + [ROLE_TEXT] + [ROLE_TEMPLATE] * len(tool) + \
        [ROLE_ANSWER] * len(t2)
    # the whole sequence is exactly the template's rendering of the conversation
    msgs = [*KeyValueEnv().reset(rows_of("a")[0]).messages, {"role": "assistant", "content": turns[0]},
            {"role": "tool", "content": "5"}, {"role": "assistant", "content": turns[1]}]
    ep = KeyValueEnv().reset(rows_of("a")[0])
    full = tok.apply_chat_template(msgs, tools=ep.tools, tokenize=False).rstrip("\n")
    assert out.prompt_ids[0] + out.response_ids[0] == _enc(tok, full)
    # the second turn was generated from exactly the ids that are trained
    assert backend.calls[1] == out.prompt_ids[0] + t1 + tool
    rec = out.episodes[0]
    assert (rec.turns, rec.calls_ok, rec.calls_failed, rec.score.reward) == (2, 1, 0, 1.0)
    assert rec.transcript.final_text.startswith("answer 5") and rec.transcript.cut is None


def test_sampled_ids_survive_where_decode_encode_would_change_them(tok):
    o, k = tok.convert_tokens_to_ids("o"), tok.convert_tokens_to_ids("k")
    odd = [o, k] + _enc(tok, " " + call_text("get", key="b")) + [tok.eos_token_id]  # "ok" sampled as o, k
    assert _enc(tok, tok.decode(odd)) != odd  # precondition: the round trip changes the ids
    last = [o, k, tok.eos_token_id]
    out, backend = _play(tok, lambda ctx, t: odd if t == 0 else last, keys="b")
    ids, mask = out.response_ids[0], out.response_mask[0]
    assert ids[:len(odd)] == odd and ids[-3:] == last
    assert backend.calls[1][-len(ids) + 3:] == ids[:-3]  # the context of turn 2 kept o, k as sampled
    seq = build_sequences(out.prompt_ids, out.response_ids, tok.pad_token_id, tok.eos_token_id,
                          response_masks=out.response_mask)
    p = len(out.prompt_ids[0])
    row = seq["input_ids"][0, : p + len(ids)].tolist()
    assert row == out.prompt_ids[0] + ids
    # logits position q predicts token q + 1: trained exactly where the student sampled
    expect = [0] * (p - 1) + mask + [0]
    assert seq["loss_mask"][0, : p + len(ids)].long().tolist() == expect
    assert int(seq["loss_mask"].sum()) == sum(mask) == seq["response_lengths"][0]


def test_several_calls_per_turn_and_merged_tool_turn(tok):
    turn0 = call_text("get", key="a") + "\n" + call_text("get", key="c")
    out, _ = _play(tok, lambda ctx, t: turn0 if t == 0 else "answer 16")
    rec = out.episodes[0]
    assert rec.calls_ok == 2 and rec.transcript.turns[0].results == ["5", "11"]
    text = tok.decode(out.response_ids[0])
    assert "<|im_start|>user\n<tool_response>\n5\n</tool_response>\n<tool_response>\n11\n</tool_response><|im_end|>" \
        in text


@pytest.mark.parametrize("turn0,needle", [
    ('<tool_call>{"name": "get", "arguments": {"key": </tool_call>', "not valid JSON"),
    ('<tool_call>{"arguments": {}}</tool_call>', 'string "name"'),
    (call_text("fly", to="moon"), "unknown tool 'fly'"),
    (call_text("get"), "missing required argument"),
    (call_text("get", key=3), "must be string"),
    (call_text("get", key="zz"), "no key 'zz'"),
    (call_text("boom"), "RuntimeError: kaboom"),
    (call_text("slow"), "did not answer within 0.2 s"),
    ('<tool_call>{"name": "get", "arguments": {"key": "a"}}', "unterminated"),
])
def test_bad_tool_calls_become_error_responses(tok, turn0, needle):
    cfg = AgentConfig(max_turns=3, max_episode_tokens=600, max_new_tokens=300, tool_timeout_s=0.2)
    out, backend = _play(tok, lambda ctx, t: turn0 if t == 0 else "answer 5", cfg=cfg, env=KeyValueEnv(slow_s=5))
    rec = out.episodes[0]
    assert rec.calls_failed == 1 and rec.calls_ok == 0
    result = rec.transcript.turns[0].results[0]
    assert result.startswith("Error: ") and needle in result, result
    assert needle in tok.decode(backend.calls[1])  # the model sees the error as the tool's response
    assert rec.turns == 2 and rec.score.reward == 1.0


def test_episode_ends_at_max_turns_and_token_budget(tok):
    loop_forever = lambda ctx, t: call_text("get", key="a")  # noqa: E731
    out, _ = _play(tok, loop_forever, cfg=AgentConfig(max_turns=3, max_episode_tokens=2000, max_new_tokens=200))
    rec = out.episodes[0]
    assert rec.transcript.cut == "max_turns" and rec.turns == 3 and rec.calls_ok == 2
    assert rec.score.reward == 0.0 and out.finished == [False]
    assert out.response_mask[0][-1] == 1  # the last (unanswered) call was sampled and is trained

    out, _ = _play(tok, loop_forever, cfg=AgentConfig(max_turns=50, max_episode_tokens=120, max_new_tokens=200))
    rec = out.episodes[0]
    assert rec.transcript.cut == "token_budget" and len(out.response_ids[0]) <= 120
    assert out.response_mask[0][-1] == 1  # cut before inserting a tool turn that does not fit

    long = "x" * 80
    out, _ = _play(tok, lambda ctx, t: long, cfg=AgentConfig(max_turns=2, max_episode_tokens=500, max_new_tokens=30))
    assert out.episodes[0].transcript.cut == "max_new_tokens" and len(out.response_ids[0]) == 30


def test_many_episodes_turn_by_turn_and_metrics(tok):
    def script(ctx, t):
        key = ctx.split("value of ", 1)[1][0]
        if key == "d":
            return "answer 2"  # answers at once, without a tool
        return call_text("get", key=key) if t == 0 else "answer " + KeyValueEnv.TABLE[key]

    out, backend = _play(tok, script, keys="abcd", n=2)
    assert len(out) == 8 and out.prompt_index == [0, 0, 1, 1, 2, 2, 3, 3]
    assert [e.turns for e in out.episodes] == [2] * 6 + [1] * 2
    assert len(backend.calls) == 8 + 6  # turn 2 only for the episodes still live
    m = episode_metrics(out)
    assert m["episodes"] == 8 and m["turns"] == 14 and m["tool_calls_ok"] == 6 and m["reward"] == 8
    assert m["score/answered"] == 8 and m["cut"] == 0
    assert 0 < m["sampled_tokens"] < m["response_tokens"]


def test_parser_and_schema_checks(tok):
    p = make_parser("qwen3", tok)
    assert isinstance(p, HermesToolParser)
    calls = p.parse('hi <tool_call>{"name": "a", "arguments": "{\\"x\\": 1}"}</tool_call> <tool_call>\n'
                    '{"name": "b", "arguments": {}}\n</tool_call>')
    assert [(c.name, c.arguments, c.error) for c in calls] == [("a", {"x": 1}, None), ("b", {}, None)]
    with pytest.raises(ValueError, match="rollout.tool_parser='nope'"):
        make_parser("nope", tok)
    s = function_schema("f", "d", {"n": "integer", "flag": "boolean"}, required=["n"])
    assert check_arguments(s, {"n": 1}) is None
    assert "must be integer" in check_arguments(s, {"n": True})
    assert "unknown argument" in check_arguments(s, {"n": 1, "m": 2})
    assert "JSON object" in check_arguments(s, [1])


def test_load_environment_errors():
    with pytest.raises(ConfigError, match="module:Class"):
        load_environment("nocolon")
    with pytest.raises(ConfigError, match="cannot be imported"):
        load_environment("_agent_fakes:Nope")
    with pytest.raises(ConfigError, match="environment_options do not fit"):
        load_environment("_agent_fakes:KeyValueEnv", {"bogus": 1})
    assert isinstance(load_environment("_agent_fakes:KeyValueEnv", {"slow_s": 1.0}), KeyValueEnv)


def test_readme_environment_example_runs_through_the_loop(tok):
    """docs/agentic.md's minimal environment, executed as written, through the agent loop."""
    import re
    from pathlib import Path

    readme = (Path(__file__).parents[1] / "docs" / "agentic.md").read_text()
    code = next(b for b in re.findall(r"```python\n(.*?)```", readme, re.S) if "class Capitals(" in b)
    ns = {}
    exec(code, ns)
    turns = [call_text("capital", country="peru"), "lima it is"]
    out = run_episodes(ScriptedBackend(tok, lambda ctx, t: turns[t]), tok, ns["Capitals"](),
                       [{"country": "peru", "answer": "lima"}], SamplingConfig(), AgentConfig())
    rec = out.episodes[0]
    assert rec.transcript.turns[0].results == ["lima"] and rec.score.reward == 1.0
    assert rec.score.scores == {"answered": 1.0}


def test_scorer_errors_are_counted_and_missing_sub_scores_are_not_zeros(tok):
    def script(ctx, t):
        key = ctx.split("value of ", 1)[1][0]
        if key == "d":
            return "answer 2"  # no tool call: its "lookup" sub-score is missing
        return call_text("get", key=key) if t == 0 else "answer " + KeyValueEnv.TABLE[key]

    out, _ = _play(tok, script, keys="abcd", env=FlakyScoreEnv(fail_keys="b"))
    errs = [e.score_error for e in out.episodes]
    assert errs[1] == "KeyError: 'plan_total'" and errs[0] is errs[2] is errs[3] is None
    assert out.rewards == [1.0, 0.0, 1.0, 1.0]
    m = episode_metrics(out)
    assert m["score_errors"] == 1 and m["episodes"] == 4
    # "lookup" exists for a and c only (b's scorer raised, d made no call): 2 of 4, both 1.0
    assert m["score/lookup"] == 2 and m["scored/lookup"] == 2
    assert m["score/answered"] == 3 and m["scored/answered"] == 3
