"""One agentic OPD step of opsd's trainer in the travel environment: rows of the split file go to
TravelPlanningEnv, episodes call the fixture's tools, the reward is the plan's personalized score."""
import json

import pytest

from eval.deepplanning import fixture as F
from _agent_fakes import ScriptedBackend, call_text
from _runs import read_metrics

# Satisfies 2 of task 0's 5 constraints: its trains, and the budget (540 <= 3000): reward 0.4.
SHORT_PLAN = """Day 1:
Current City: from Hefei to Nanjing
Accommodation: -
08:00-09:00 | travel_intercity_public | train G7798, Hefei South Station - Nanjing South Station, 90/person
Day 2:
Current City: from Nanjing to Hefei
16:30-17:30 | travel_intercity_public | train G3031, Nanjing South Station - Hefei South Station, 90/person
"""


def policy(context, turn):
    if turn == 0:
        return "<think>trains first</think>" + call_text(
            "query_train_info", origin="Hefei", destination="Nanjing", depDate="2025-11-12")
    return f"<think>done</think><plan>\n{SHORT_PLAN}</plan>"


def test_one_agentic_training_step_in_the_travel_env(agent_world, fixture_paths, tmp_path):
    from opsd.config import load_config
    from opsd.trainer import Trainer

    rows = tmp_path / "travel_train.jsonl"
    rows.write_text("".join(json.dumps({"id": "0", "query": F.QUERY["0"], "meta_info": F.META["0"]}) + "\n"
                            for _ in range(2)))
    options = json.dumps({"db_dir": str(fixture_paths["database"]), "schema_file": str(fixture_paths["schema"]),
                          "system_prompt": "Plan the trip with the tools; answer inside <plan></plan>."})
    overrides = [f"model.student={agent_world['student']}", f"model.teacher={agent_world['teacher']}",
                 f"data.train_files={rows}", "data.prompt_field=query", "data.max_prompt_length=8192",
                 f"train.output_dir={tmp_path / 'run'}", "train.max_steps=1", "train.prompts_per_step=2",
                 "rollout.n=1", "rollout.environment=eval.deepplanning.env:TravelPlanningEnv",
                 f"rollout.environment_options={options}", "rollout.max_turns=3", "rollout.max_new_tokens=600",
                 "rollout.max_episode_tokens=4000", "engine.micro_batch_size=1", "logging.progress=false",
                 "train.export=false", "engine.zero_stage=0"]
    tr = Trainer(load_config(None, overrides)).setup()
    tr.loop.backend = ScriptedBackend(tr.tokenizer, policy)
    try:
        tr.train()
    finally:
        tr.cleanup()
    step = next(r for r in read_metrics(tmp_path / "run") if "loss" in r)
    assert step["agent/reward"] == pytest.approx(0.4) and step["agent/tool_calls_ok"] == 1
    assert step["agent/score/personalized"] == pytest.approx(0.4) and step["accuracy"] == pytest.approx(0.4)
    assert step["agent/score/commonsense"] < 1.0
