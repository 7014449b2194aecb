"""The agentic toy world (opsd.toy.agent_*): task, tokenizer + tool template, environment, the
gold layout against the agent loop, and a quick (untrained) build."""
from __future__ import annotations

import json
import os
import random

import pytest

from _tiny_world import saved_tokenizer, toy_recipe

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from opsd.environment import ToolCall, ToolError, Transcript, Turn, check_arguments, load_environment
from opsd.rollout.base import Rollouts, RolloutBackend, SamplingConfig
from opsd.toy import agent_tokenizer as atok
from opsd.toy import tokenizer as mathtok
from opsd.toy.agent_env import LookupEnv, lookup_tools
from opsd.toy.agent_task import (ATTRIBUTES, AgentTaskConfig, extract_answer, final_text, gold_turns, make_questions,
                                 sample_question, split_of, tool_call_text)



@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return saved_tokenizer(atok.save_tokenizer, tmp_path_factory.mktemp("agent_tok"))


def _value(row, who, attr):
    return next(f["value"] for f in row["facts"] if f["who"] == who and f["attr"] == attr)


# --- task -------------------------------------------------------------------------------------


def test_questions_are_deterministic_correct_and_disjoint():
    train = make_questions(500, seed=0, split="train")
    held = make_questions(200, seed=0, split="heldout")
    assert train == make_questions(500, seed=0, split="train")
    assert train != make_questions(500, seed=1, split="train")
    assert not {q.prompt for q in train} & {q.prompt for q in held}
    assert all(split_of(q) == "heldout" for q in held)
    cfg = AgentTaskConfig()
    for q in train + held:
        row = q.row()
        # The answer is the question evaluated on the episode's own database, left to right.
        expr = row["prompt"].rstrip("?")
        for f in row["needed"]:
            expr = expr.replace(f"{f['attr']} of {f['who']}", str(_value(row, f["who"], f["attr"])), 1)
        assert eval(expr) == int(row["answer"]), (row["prompt"], expr)
        assert all(0 <= s[3] <= cfg.max_value for s in q.steps)
        assert cfg.min_facts <= len(q.needed) <= cfg.max_facts
        assert extract_answer(final_text(q)) == q.answer
    with pytest.raises(ValueError, match="split"):
        make_questions(1, seed=0, split="test")


def test_values_differ_between_episodes():
    # Facts are per episode: the same (entity, attribute) takes many values over the train split,
    # so no model can answer from memory.
    seen = {}
    for q in make_questions(2000, seed=0, split="train"):
        for f in q.facts:
            seen.setdefault((f.who, f.attr), set()).add(f.value)
    assert max(len(v) for v in seen.values()) > 2


def test_extract_answer():
    assert extract_answer("12+7=19") == "19"
    assert extract_answer("12+7=19. 19-3=16") == "16"
    assert extract_answer("19") is None and extract_answer(None) is None and extract_answer("") is None


# --- tokenizer and chat template ----------------------------------------------------------------


def test_token_ids_are_stable_and_math_world_untouched(tok):
    v = atok.vocab()
    assert [v[t] for t in ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>", "<unk>")] == list(range(6))
    assert [v[t] for t in atok.TOOL_TOKENS] == [6, 7, 8, 9]
    assert v["\n"] == 10 and len(v) == 10 + len(atok.ALPHABET) + len(atok.PIECES) <= atok.padded_vocab_size()
    assert [v[p] for p in atok.PIECES] == list(range(10 + len(atok.ALPHABET), len(v)))
    assert set(ATTRIBUTES) <= set(atok.PIECES)  # every tool name is one token
    assert tok.eos_token == "<|im_end|>" and tok.pad_token_id == 0
    # The math world's tokenizer keeps its own ids.
    assert mathtok.vocab()["<|im_end|>"] == 2 and mathtok.vocab()["\n"] == 6


def test_tool_call_text_round_trips(tok):
    text = tool_call_text("height", "kim") + "<|im_end|>"
    ids = tok.encode(text, add_special_tokens=False)
    assert ids[0] == tok.convert_tokens_to_ids("<tool_call>") and ids[-2] == tok.convert_tokens_to_ids("</tool_call>")
    assert ids[-1] == tok.eos_token_id
    assert tok.unk_token_id not in ids
    assert tok.decode(ids) == text
    # The JSON glue, the tool name and the argument name are word pieces; the value is characters.
    pieces = ['{"name":"', "height", '","arguments":{"', "who", '":"', "k", "i", "m", '"}}']
    assert tok.convert_ids_to_tokens(ids[1:-2]) == pieces
    assert all(ch in atok.ALPHABET for ch in '{}":,_[]')
    # The markers are not "special": skip_special_tokens keeps the call readable (as in Qwen3).
    assert tok.decode(ids, skip_special_tokens=True) == tool_call_text("height", "kim")


def test_character_spellings_decode_like_pieces_but_are_other_ids(tok):
    """The BPE-like property the agent loop must respect: a model may sample a piece character by
    character; decoding then re-encoding gives different ids (so the loop never re-encodes)."""
    v = atok.vocab()
    spelled = [v["a"], v["g"], v["e"]]
    assert tok.decode(spelled) == "age"
    assert tok.encode(tok.decode(spelled), add_special_tokens=False) == [v["age"]] != spelled


def test_template_renders_tools_and_tool_messages(tok):
    tools = lookup_tools()
    msgs = [{"role": "user", "content": "age of bob + height of kim?"},
            {"role": "assistant", "content": tool_call_text("age", "bob")},
            {"role": "tool", "content": "12"}, {"role": "tool", "content": "Error: no"}]
    text = tok.apply_chat_template(msgs, tools=tools, tokenize=False, add_generation_prompt=True)
    assert text == ("<|im_start|>system\n# tools\nage(who)\nheight(who)\nweight(who)<|im_end|>\n"
                    "<|im_start|>user\nage of bob + height of kim?<|im_end|>\n"
                    "<|im_start|>assistant\n" + tool_call_text("age", "bob") + "<|im_end|>\n"
                    "<|im_start|>user\n<tool_response>12</tool_response>\n<tool_response>Error: no</tool_response>"
                    "<|im_end|>\n<|im_start|>assistant\n")
    # A system message goes first, with the tools after it; no tools and no system -> no system turn.
    sys_text = tok.apply_chat_template([{"role": "system", "content": "be brief"}] + msgs[:1], tools=tools,
                                       tokenize=False)
    assert sys_text.startswith("<|im_start|>system\nbe brief\n# tools\nage(who)")
    assert tok.apply_chat_template(msgs[:1], tokenize=False).startswith("<|im_start|>user\n")
    # Structured tool calls (OpenAI style, arguments as dict or JSON string) render as the models write them.
    for args in ({"who": "bob"}, '{"who":"bob"}'):
        structured = [msgs[0], {"role": "assistant", "content": "",
                                "tool_calls": [{"type": "function", "function": {"name": "age", "arguments": args}}]}]
        assert tok.apply_chat_template(structured, tokenize=False) == tok.apply_chat_template(msgs[:2], tokenize=False)
    assert tok.apply_chat_template(msgs[:1], tokenize=False, add_generation_prompt=True,
                                   enable_thinking=False).endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")


def test_template_appends_tool_turns_without_rewriting_history(tok):
    from opsd.rollout.agent import AgentConfig, AgentLoop

    loop = AgentLoop(None, tok, LookupEnv(), AgentConfig())
    ids = loop.tool_turn_ids([{"role": "tool", "content": "7"}])
    assert tok.decode(ids) == "\n<|im_start|>user\n<tool_response>7</tool_response><|im_end|>\n<|im_start|>assistant\n"


# --- environment --------------------------------------------------------------------------------


def _row(seed=0):
    return sample_question(random.Random(seed)).row()


def test_env_tools_and_errors():
    env = load_environment("opsd.toy.agent_env:LookupEnv")
    row = _row()
    ep = env.reset(row)
    assert ep.messages == [{"role": "user", "content": row["prompt"]}]
    assert [t["function"]["name"] for t in ep.tools] == ["age", "height", "weight"]
    who = row["needed"][0]["who"]
    assert ep.call_tool("weight", {"who": who}) == str(_value(row, who, "weight"))
    with pytest.raises(ToolError, match="no entity named 'zzz'"):
        ep.call_tool("age", {"who": "zzz"})
    with pytest.raises(ToolError, match="unknown tool"):
        ep.call_tool("salary", {"who": who})
    assert check_arguments(ep.tools[0], {"who": 3}) is not None  # the loop rejects mistyped arguments
    bad = dict(row)
    del bad["facts"]
    with pytest.raises(ValueError, match="'facts'"):
        env.reset({**bad, "source_file": "x.jsonl", "source_row": 4})
    with pytest.raises(ValueError, match="x.jsonl row 4"):
        env.reset({**row, "facts": [{"who": "a"}], "source_file": "x.jsonl", "source_row": 4})


def _transcript(ep, row, calls, final, cut=None):
    turns = []
    for name, who in calls:
        call = ToolCall(name, {"who": who}, "")
        try:
            result, ok = ep.call_tool(name, {"who": who}), True
        except ToolError as e:
            result, ok = f"Error: {e}", False
        turns.append(Turn("", [call], [result], [ok]))
    if final is not None:
        turns.append(Turn(final))
    return Transcript(list(ep.messages), turns, final if cut is None else None, cut)


def test_env_scores():
    row = _row(3)
    ep = LookupEnv().reset(row)
    needed = [(f["attr"], f["who"]) for f in row["needed"]]
    gold = gold_turns(sample_question(random.Random(3)))[-1]
    s = ep.score(_transcript(ep, row, needed, gold))
    assert s.reward == 1.0 and s.scores == {"answered": 1.0, "used_all_facts": 1.0, "clean_calls": 1.0}
    s = ep.score(_transcript(ep, row, needed, f"1+1={int(row['answer']) + 1}"))  # wrong final step
    assert s.reward == 0.0 and s.scores["answered"] == 1.0 and s.scores["used_all_facts"] == 1.0
    other = "height" if needed[0][0] != "height" else "age"  # wrong tool: a real but unasked fact
    s = ep.score(_transcript(ep, row, [(other, needed[0][1])] + needed[1:], gold))
    assert s.scores["used_all_facts"] == 0.0 and s.info["extra"] and s.reward == 1.0  # right answer, by luck or not
    s = ep.score(_transcript(ep, row, [(needed[0][0], "zzz")] + needed[1:], "no idea"))  # wrong argument
    assert s.reward == 0.0 and s.scores == {"answered": 0.0, "used_all_facts": 0.0, "clean_calls": 0.0}
    s = ep.score(_transcript(ep, row, needed, None, cut="max_turns"))
    assert s.reward == 0.0 and s.scores["answered"] == 0.0


# --- the gold layout is the agent loop's layout --------------------------------------------------


class _Scripted(RolloutBackend):
    """Plays fixed assistant turns (texts) per prompt, in order, as ids."""

    def __init__(self, tok, turns_by_prompt, spell=()):
        self.tok, self.turns, self.pos, self.spell = tok, turns_by_prompt, {}, set(spell)

    def generate(self, prompt_ids, sampling):
        out = Rollouts([], [], [], [])
        for i, p in enumerate(prompt_ids):
            key = next(k for k in self.turns if p[:len(k)] == list(k))  # which episode (its prompt prefix)
            n = self.pos.get(key, 0)
            self.pos[key] = n + 1
            ids = self.tok.encode(self.turns[key][n] + self.tok.eos_token, add_special_tokens=False)
            ids = [c for i in ids for c in self._spelled(i)]
            out.prompt_ids.append(list(p)), out.response_ids.append(ids), out.finished.append(True)
            out.prompt_index.append(i)
        return out

    def _spelled(self, i):
        """A piece in ``spell`` as its character ids (a spelling a model may sample)."""
        piece = self.tok.convert_ids_to_tokens(i)
        return self.tok.convert_tokens_to_ids(list(piece)) if piece in self.spell else [i]


def test_gold_episodes_through_the_agent_loop_match_the_sft_layout(tok):
    from opsd.toy.agent_build import AgentWorldConfig, GoldLayout, agent_loop

    cfg = AgentWorldConfig()
    qs = make_questions(6, seed=0, split="heldout")
    layout = GoldLayout(tok, cfg, None)
    loop = agent_loop(tok, cfg)
    script = {tuple(loop.prompt_ids(LookupEnv().reset(q.row()))): gold_turns(q) for q in qs}
    loop.backend = _Scripted(tok, script)
    out = loop.run([q.row() for q in qs], SamplingConfig(temperature=0.0, max_new_tokens=64))
    assert out.rewards == [1.0] * len(qs)
    for q, p, r, m in zip(qs, out.prompt_ids, out.response_ids, out.response_mask):
        ids, labels = layout.example(q)
        assert p + r == ids  # same ids, same positions
        assert [int(x != -100) for x in labels[len(p):]] == m  # trained = sampled, nothing else
    for q, rec in zip(qs, out.episodes):
        assert rec.turns == len(q.needed) + 1 and rec.calls_failed == 0
        assert rec.score.scores == {"answered": 1.0, "used_all_facts": 1.0, "clean_calls": 1.0}
    assert max(len(r) for r in out.response_ids) < 100 and max(len(p) + len(r) for p, r in zip(out.prompt_ids, out.response_ids)) < 128


def test_recovery_episodes_match_the_loop_and_train_only_the_right_calls(tok):
    """A gold episode with a wrong call first (SFT's recovery examples) is laid out exactly as the
    loop lays out a student that makes that call: same ids, the same tool answer (an error text or
    an unasked fact); the wrong call is context (IGNORE), the right calls and the answer are targets."""
    import random

    from opsd.toy.agent_build import AgentWorldConfig, GoldLayout, agent_loop, wrong_call
    from opsd.toy.agent_task import tool_call_text

    cfg = AgentWorldConfig()
    qs = make_questions(9, seed=2, split="heldout")
    layout, loop = GoldLayout(tok, cfg, None), agent_loop(tok, cfg)
    wrong, script, kinds = {}, {}, set()
    for i, q in enumerate(qs):
        k = i % len(q.needed)
        attr, who = wrong_call(q, k, random.Random(i))
        assert (attr, who) not in {(f.attr, f.who) for f in q.needed}
        kinds.add("error" if who not in {f.who for f in q.facts} else "fact")
        wrong[i] = (k, attr, who)
        turns = gold_turns(q)
        script[tuple(loop.prompt_ids(LookupEnv().reset(q.row())))] = turns[:k] + [tool_call_text(attr, who)] + turns[k:]
    assert kinds == {"error", "fact"}
    loop.backend = _Scripted(tok, script)
    out = loop.run([q.row() for q in qs], SamplingConfig(temperature=0.0, max_new_tokens=64))
    assert out.rewards == [1.0] * len(qs)
    for i, (q, p, r) in enumerate(zip(qs, out.prompt_ids, out.response_ids)):
        k, attr, who = wrong[i]
        ids, labels = layout.example(q, k, random.Random(i))
        assert p + r == ids
        targets = tok.decode([x for x, y in zip(ids, labels) if y != -100])
        assert tool_call_text(attr, who) not in targets
        assert all(tool_call_text(f.attr, f.who) in targets for f in q.needed)
    assert max(len(r) for r in out.response_ids) <= cfg.max_episode_tokens


def test_misconception_is_the_students_habit_only_and_matches_the_loop(tok):
    """The student's SFT habit (asked for weight, look up height) is laid out exactly as the loop
    lays out a student that makes those calls: the wrong tool is a target, the arithmetic uses the
    fetched values; the teacher's fingerprint ignores it, the student's does not."""
    import dataclasses
    import random

    from opsd.toy.agent_build import WORLD, AgentWorldConfig, GoldLayout, Misconception, agent_loop
    from opsd.toy.agent_task import extract_answer, tool_call_text

    cfg = AgentWorldConfig()
    habit = Misconception(asked="weight", called="height", rate=1.0)
    qs = [q for q in make_questions(40, seed=3, split="heldout") if any(f.attr == "weight" for f in q.needed)][:6]
    answered = [habit.apply(q, random.Random(0)) for q in qs]
    for q, a in zip(qs, answered):
        assert a.prompt != q.prompt  # a Question's prompt derives from its facts ...
        assert [f.attr for f in a.needed] == ["height" if f.attr == "weight" else f.attr for f in q.needed]
        assert all(f in q.facts for f in a.needed)  # ... so example() keeps q's prompt and a's turns
    layout, loop = GoldLayout(tok, cfg, None), agent_loop(tok, cfg)
    loop.backend = _Scripted(tok, {tuple(loop.prompt_ids(LookupEnv().reset(q.row()))): gold_turns(a)
                                   for q, a in zip(qs, answered)})
    out = loop.run([q.row() for q in qs], SamplingConfig(temperature=0.0, max_new_tokens=64))
    for q, a, p, r, m, rec in zip(qs, answered, out.prompt_ids, out.response_ids, out.response_mask, out.episodes):
        ids, labels = layout.example(q, None, None, a)
        assert p + r == ids and [int(x != -100) for x in labels[len(p):]] == m
        targets = tok.decode([x for x, y in zip(ids, labels) if y != -100])
        assert all(tool_call_text(f.attr, f.who) in targets for f in a.needed)
        assert extract_answer(rec.transcript.final_text) == a.answer and rec.calls_failed == 0
        assert rec.score.reward == float(a.answer == q.answer)
    assert Misconception(rate=0.0).apply(qs[0], random.Random(0)) == qs[0]
    other = dataclasses.replace(cfg, student_misconception=None)
    assert WORLD.fingerprint(other, "teacher") == WORLD.fingerprint(cfg, "teacher")
    assert WORLD.fingerprint(other, "student") != WORLD.fingerprint(cfg, "student")
    with pytest.raises(ValueError, match="two different tools"):
        Misconception(asked="weight", called="weight").validate()


def test_sampled_spellings_are_trained_as_sampled(tok):
    """A student that spells a tool name character by character makes a valid call; the trained
    ids are the spelled ones (decode -> encode would turn them into the piece's one id)."""
    from opsd.toy.agent_build import AgentWorldConfig, agent_loop

    cfg = AgentWorldConfig()
    qs = make_questions(4, seed=1, split="heldout")
    loop = agent_loop(tok, cfg)
    script = {tuple(loop.prompt_ids(LookupEnv().reset(q.row()))): gold_turns(q) for q in qs}
    loop.backend = _Scripted(tok, script, spell=ATTRIBUTES)
    out = loop.run([q.row() for q in qs], SamplingConfig(temperature=0.0, max_new_tokens=64))
    assert out.rewards == [1.0] * len(qs)
    pieces = {tok.convert_tokens_to_ids(a) for a in ATTRIBUTES}
    for q, r, m in zip(qs, out.response_ids, out.response_mask):
        assert not pieces & set(r)  # the spelled ids stayed
        sampled = [i for i, keep in zip(r, m) if keep]
        for f in q.needed:  # the spelling of each looked-up name sits in the trained ids
            spelled = tok.convert_tokens_to_ids(list(f.attr))
            assert any(sampled[k:k + len(spelled)] == spelled for k in range(len(sampled)))
        assert tok.encode(tok.decode(r), add_special_tokens=False) != r  # a re-encode would differ


# --- quick build --------------------------------------------------------------------------------


def test_quick_build_is_complete_and_idempotent(tmp_path, capsys):
    from opsd.toy.agent_build import quick_config, read_rows

    cfg = quick_config()
    build = toy_recipe("world").main  # make world-agent, quick
    info = build(["--world", "agent", "--out", str(tmp_path), "--quick"])
    assert "TIP quadrants of student T=1 tokens" in capsys.readouterr().out
    for name in ("tokenizer", "teacher", "student", "train.jsonl", "heldout.jsonl", "build_info.json"):
        assert (tmp_path / name).exists(), name
    rows = read_rows(tmp_path / "heldout.jsonl")
    assert len(rows) == cfg.n_heldout and set(rows[0]) == {"prompt", "answer", "facts", "needed"}
    assert 0.0 <= info["teacher_acc_greedy"] <= 1.0 and "all" in info["quadrants"]
    mtime = (tmp_path / "teacher" / "model.safetensors").stat().st_mtime_ns
    assert build(["--world", "agent", "--out", str(tmp_path), "--quick"]) == info  # nothing rebuilt
    assert (tmp_path / "teacher" / "model.safetensors").stat().st_mtime_ns == mtime
    (tmp_path / "heldout.jsonl").write_text("")  # a damaged part is rewritten
    build(["--world", "agent", "--out", str(tmp_path), "--quick"])
    assert len(read_rows(tmp_path / "heldout.jsonl")) == cfg.n_heldout


@pytest.mark.slow
def test_demo_runs_multi_turn_opd_with_tip(tmp_path, monkeypatch, capsys):
    """``make demo-agent``'s entry point end to end on a quick world: teacher accuracy, before, after."""
    from opsd.toy import agent_build

    demo, ensure = toy_recipe("demo"), toy_recipe("world").ensure
    world = tmp_path / "world"

    def quick_world(name):
        assert name == "agent"
        return ensure(name, str(world), agent_build.quick_config())

    monkeypatch.setattr(demo.world, "ensure", quick_world)
    rc = demo.main(["--world", "agent", f"model.student={world}/student", f"model.teacher={world}/teacher",
                    f"data.train_files=[{world}/train.jsonl]", f"train.eval_files=[{world}/heldout.jsonl]",
                    "train.max_steps=2", f"train.output_dir={tmp_path}/run", "logging.progress=false",
                    "tip.rule=q3", "tip.ratio=0.2"])
    assert rc == 0
    out = capsys.readouterr().out
    last = json.loads(out.strip().splitlines()[-1])
    assert {"teacher", "accuracy_before", "accuracy_after", "gap_closed"} <= set(last) and last["heldout"] == 8
    q3 = json.loads((world / "build_info.json").read_text())["quadrants"]["all"]["Q3"]
    assert last["q3_share"] == q3 and f"Q3 (confident mistakes) {q3:.1%}" in out  # printed from the build
    steps = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl") if '"agent/turns"' in line]
    assert len(steps) == 2 and all("tip/tool_call/q3_frac" in s for s in steps)


def test_recipe_loads_with_tip_overrides():
    from opsd.config import load_config

    cfg = load_config("recipes/toy/agent.yaml", ["tip.rule=q3", "tip.ratio=0.2"])
    assert cfg.rollout.environment == "opsd.toy.agent_env:LookupEnv"
    assert load_environment(cfg.rollout.environment, cfg.rollout.environment_options).reset(_row()).tools
    from opsd.toy.agent_build import AgentWorldConfig

    # The build's held-out evaluation uses the recipe's episode limits, so its numbers compare.
    w = AgentWorldConfig()
    assert (w.max_turns, w.max_episode_tokens, w.max_new_tokens) == (
        cfg.rollout.max_turns, cfg.rollout.max_episode_tokens, cfg.rollout.max_new_tokens)
