"""TravelPlanningEnv: messages, tools, scoring of final answers, and a scripted policy playing whole
episodes through the agent loop (opsd.rollout.agent.run_episodes)."""
import json

import pytest

from eval.deepplanning import fixture as F
from eval.deepplanning.database import DatabaseError
from eval.deepplanning.env import TravelPlanningEnv
from eval.deepplanning.prompts import SYSTEM_PROMPT
from opsd.environment import ToolError, Transcript, check_arguments, load_environment


@pytest.fixture
def env(fixture_paths):
    return TravelPlanningEnv(db_dir=str(fixture_paths["database"]), schema_file=str(fixture_paths["schema"]))


def _row(task):
    return {"id": task, "query": F.QUERY[task], "meta_info": F.META[task]}


def _final(text):
    return Transcript(messages=[], turns=[], final_text=text)


def test_reset_gives_instructions_query_and_the_nine_tools(env):
    ep = env.reset(_row("0"))
    assert ep.messages[0] == {"role": "system", "content": SYSTEM_PROMPT}
    assert ep.messages[1] == {"role": "user", "content": F.QUERY["0"]}
    assert "<plan></plan>" in SYSTEM_PROMPT and "**Budget Summary**" in SYSTEM_PROMPT
    assert len(ep.tools) == 9
    assert json.loads(ep.call_tool("search_location", {"place_name": "Laomendong"}))["latitude"] == "32.012000"
    with pytest.raises(ToolError, match="unknown tool"):
        ep.call_tool("nope", {})


def test_load_by_name_like_the_config(fixture_paths):
    env = load_environment("eval.deepplanning.env:TravelPlanningEnv",
                           {"db_dir": str(fixture_paths["database"]), "schema_file": str(fixture_paths["schema"])})
    assert env.reset(_row("1")).meta["org"] == "Harbin"


@pytest.mark.parametrize("task", ["0", "1"])
def test_gold_answer_scores_one(env, task):
    s = env.reset(_row(task)).score(_final(F.answer(F.GOLD[task])))
    assert s.reward == 1.0 and s.scores["commonsense"] == 1.0 and s.scores["case_acc"] == 1.0
    assert s.scores["parsed_lines"] == 1.0 and s.info["parse_problems"] == []
    assert all(0 <= v <= 1 for v in s.scores.values())


def test_variant_reward_and_recorded_failure(env):
    _, check, text = F.variant_text("wrong_train")
    s = env.reset(_row("0")).score(_final(F.answer(text)))
    assert s.reward == pytest.approx(0.8) and s.scores["personalized_all"] == 0.0
    assert "G7798" in s.info["hard_failures"]["train_seat_status"]


@pytest.mark.parametrize("text,reason", [
    (None, "no final answer (episode cut: max_turns)"),
    ("<think>thinking</think>I could not finish.", "no <plan>...</plan> after the last </think>"),
    ("<think><plan>Day 1:</plan></think>", "no <plan>...</plan> after the last </think>"),
    ("<plan>I would go to Nanjing.</plan>", "the plan did not parse (no day could be read)"),
])
def test_unusable_answers_score_zero_with_the_reason(env, text, reason):
    t = Transcript(messages=[], turns=[], final_text=text, cut="max_turns" if text is None else None)
    s = env.reset(_row("0")).score(t)
    assert s.reward == 0.0 and s.info["zero_reason"] == reason and set(s.scores.values()) == {0.0}


def test_bad_options_and_rows_are_named(fixture_paths, tmp_path, env):
    with pytest.raises(DatabaseError, match="database folder .*missing"):
        TravelPlanningEnv(db_dir=str(tmp_path / "none"), schema_file=str(fixture_paths["schema"]))
    with pytest.raises(ValueError, match=r"row 0: missing column\(s\) \['meta_info'\]"):
        env.reset({"id": "0", "query": "q"})
    with pytest.raises(DatabaseError, match="task 5: database folder"):
        env.reset({"id": "5", "query": "q", "meta_info": {}})


def test_split_file_is_recorded_and_enforced(fixture_paths, tmp_path):
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"train": ["0"], "test": ["1"]}))
    env = TravelPlanningEnv(db_dir=str(fixture_paths["database"]), schema_file=str(fixture_paths["schema"]),
                            split_file=str(split))
    s = env.reset(_row("0")).score(_final(F.answer(F.GOLD["0"])))
    assert len(s.info["split_sha256"]) == 64
    with pytest.raises(ValueError, match="not in the split"):
        env.reset({"id": "2", "query": "q", "meta_info": {}})


# ------------------------------------------------------------------------- through the agent loop

def scripted_policy(task):
    """Tool calls a planner would make (names/coordinates from earlier results), then the plan.
    The fixture tokenizer knows printable ASCII only, so the plan's yuan signs are dropped (the
    parser reads bare numbers too)."""
    from _agent_fakes import call_text

    calls = {"0": [[call_text("query_train_info", origin="Hefei", destination="Nanjing", depDate="2025-11-12"),
                    call_text("query_train_info", origin="Nanjing", destination="Hefei", depDate="2025-11-13")],
                   [call_text("query_hotel_info", destination="Nanjing", checkinDate="2025-11-12",
                              checkoutDate="2025-11-13", hotelStar="3")],
                   [call_text("search_location", place_name="Laomendong")],
                   [call_text("recommend_restaurants", latitude="32.012000", longitude="118.786000"),
                    call_text("query_road_route_info", origin="32.013000,118.787000",
                              destination="32.012000,118.786000")]]}[task]
    plan = F.answer(F.GOLD[task].replace("¥", ""))

    def script(context, turn):
        return f"<think>step {turn}</think>" + "".join(calls[turn]) if turn < len(calls) else plan
    return script, len(calls)


def test_scripted_episode_through_the_agent_loop(env):
    from _agent_fakes import ScriptedBackend, build_tool_tokenizer
    from opsd.rollout.agent import AgentConfig, episode_metrics, run_episodes
    from opsd.rollout.base import SamplingConfig

    tok = build_tool_tokenizer()
    script, n_calls = scripted_policy("0")
    backend = ScriptedBackend(tok, script)
    cfg = AgentConfig(max_turns=8, max_episode_tokens=60000, max_new_tokens=4000, tool_timeout_s=5)
    out = run_episodes(backend, tok, env, [_row("0")], SamplingConfig(n=2), cfg)
    assert len(out.episodes) == 2
    rec = out.episodes[0]
    assert rec.turns == n_calls + 1 and rec.calls_failed == 0 and rec.calls_ok == 6
    assert rec.transcript.cut is None
    results = [r for t in rec.transcript.turns for r in t.results]
    assert json.loads(results[0])[0][0]["Segment 1"]["marketingTransportNo"] == "G7798"
    assert "Six Dynasties Pine Teahouse" in results[4]
    assert json.loads(results[5])["duration_in_minutes"] == 10
    assert rec.score.reward == 1.0 and rec.score.scores["commonsense"] == 1.0
    m = episode_metrics(out)
    assert m["reward"] == 2.0 and m["score/personalized"] == 2.0 and m["tool_calls_ok"] == 12
    # the tool responses went back to the model as context (masked out of the loss)
    assert sum(out.response_mask[0]) < len(out.response_mask[0])


def test_schema_checks_reject_bad_calls_before_the_tools(env):
    ep = env.reset(_row("0"))
    schema = next(s for s in ep.tools if s["function"]["name"] == "query_train_info")
    assert "missing required" in check_arguments(schema, {"origin": "Hefei"})
