"""The embedded default world (opsd.toy): task, tokenizer, the shared builder (opsd.toy.world: SFT,
fingerprints) and a quick (untrained) build through ``recipes/toy/world.py``."""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest

from _tiny_world import saved_tokenizer, toy_recipe

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from opsd.toy import tokenizer as toytok
from opsd.toy.task import (TaskConfig, extract_answer, make_problems, reward, solution_text, split_of,
                           write_prompt_files)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return saved_tokenizer(toytok.save_tokenizer, tmp_path_factory.mktemp("tok"))


# --- task -------------------------------------------------------------------------------------


def test_problems_are_deterministic_and_seeded():
    a = make_problems(50, seed=3, split="train")
    assert a == make_problems(50, seed=3, split="train")
    assert a != make_problems(50, seed=4, split="train")
    assert len({p.expression for p in a}) == 50


def test_solutions_are_correct_and_short():
    cfg = TaskConfig()
    for p in make_problems(300, seed=0, split="train") + make_problems(100, seed=0, split="heldout"):
        # The written expression must mean the chain of steps (parentheses placed right).
        assert eval(p.expression) == int(p.answer), p.expression
        assert all(0 <= s.result <= cfg.max_value for s in p.steps)
        assert cfg.min_steps <= len(p.steps) <= cfg.max_steps
        assert len(p.prompt) <= 40 and len(solution_text(p)) <= 60
        assert extract_answer(solution_text(p)) == p.answer


def test_train_and_heldout_are_disjoint():
    train = make_problems(3000, seed=0, split="train")
    held = make_problems(256, seed=0, split="heldout")
    assert not {p.expression for p in train} & {p.expression for p in held}
    assert all(split_of(p) == "heldout" for p in held) and all(split_of(p) == "train" for p in train)
    with pytest.raises(ValueError, match="split"):
        make_problems(1, seed=0, split="test")


def test_reward():
    assert reward("7+5=12. 12*3=36. Answer: 36", "36") == 1.0
    assert reward("7+5=12. 12*3=35. Answer: 35", "36") == 0.0
    assert reward("7+5=12. 12*3=36.", "36") == 0.0  # no extractable answer
    assert reward("", "36") == 0.0
    assert reward("Answer: 3 Answer: 36", "36") == 1.0  # the last answer counts
    assert reward("Answer: 360", "36") == 0.0
    assert extract_answer("no answer here") is None


def test_write_prompt_files(tmp_path):
    paths = write_prompt_files(tmp_path, n_train=20, n_heldout=8, seed=0)
    rows = [json.loads(line) for line in open(paths["train"])]
    assert len(rows) == 20 and set(rows[0]) == {"prompt", "answer"}
    assert rows[0]["prompt"] == make_problems(20, seed=0, split="train")[0].prompt
    assert sum(1 for _ in open(paths["heldout"])) == 8


# --- tokenizer ----------------------------------------------------------------------------------


def test_tokenizer_round_trip(tok):
    assert 40 <= len(tok) <= 64 and toytok.padded_vocab_size() % 64 == 0
    assert tok.pad_token == "<|endoftext|>" and tok.eos_token == "<|im_end|>"
    for p in make_problems(100, seed=1, split="train"):
        for text in (p.prompt, solution_text(p)):
            ids = tok.encode(text, add_special_tokens=False)
            assert len(ids) == len(text)  # one token per character
            assert tok.decode(ids) == text
    assert tok.decode(tok.encode("a<|im_end|>", add_special_tokens=False)) == "a<|im_end|>"
    assert tok.encode("\u00e9", add_special_tokens=False) == [tok.unk_token_id]


def test_chat_template(tok):
    msgs = [{"role": "user", "content": "Compute 7+5."}]
    text = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    assert text == "<|im_start|>user\nCompute 7+5.<|im_end|>\n<|im_start|>assistant\n"
    no_think = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False, enable_thinking=False)
    assert no_think == text + "<think>\n\n</think>\n\n"
    enc = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True)
    ids = enc["input_ids"] if hasattr(enc, "keys") else enc  # transformers 5 returns a BatchEncoding
    assert ids == tok.encode(text, add_special_tokens=False)
    assert ids[0] == tok.convert_tokens_to_ids("<|im_start|>")
    conv = msgs + [{"role": "assistant", "content": "Answer: 12"}]
    out = tok.apply_chat_template(conv, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    kept = [i for i, m in zip(out["input_ids"], out["assistant_masks"]) if m]
    assert tok.decode(kept) == "Answer: 12<|im_end|>"


def test_sft_labels_cover_only_the_answer(tok):
    from opsd.toy.build import IGNORE, sft_example

    p = make_problems(1, seed=0, split="train")[0]
    for no_think in (False, True):
        ids, labels = sft_example(tok, p, no_think)
        kept = [i for i, lab in zip(ids, labels) if lab != IGNORE]
        assert tok.decode(kept) == solution_text(p) + "<|im_end|>"
        assert tok.decode(ids[:len(ids) - len(kept)]).endswith("assistant\n" + ("<think>\n\n</think>\n\n" if no_think else ""))


def test_quadrant_report_reads_the_losses_statistics_like_tip():
    """The build's quadrants: opsd's statistics read by tip_patches (min-max per batch, TIP Eq. 5;
    "high" strictly above the threshold); a constant batch is all Q4, never NaN."""
    import torch

    from opsd.hooks import TokenStats
    from tip_patches.report import quadrant_shares

    def stats(h, d, group=None):
        h, d = torch.tensor(h), torch.tensor(d)
        return TokenStats(h, d, d, h, token_group=None if group is None else torch.tensor(group),
                          group_names=None if group is None else {1: "text", 2: "tool_call"})

    # normalized (h, d): (1, 1) Q1, (1, 0) Q2, (0, 1) Q3, (0, 0) Q4, (0.5, 0.5) Q4 (not above 0.5)
    q = quadrant_shares([stats([2.0, 2.0, 0.0, 0.0, 1.0], [4.0, 0.0, 4.0, 0.0, 2.0])])
    assert q == {"Q1": 0.2, "Q2": 0.2, "Q3": 0.2, "Q4": 0.4, "tokens": 5, "mean_reverse_kl": 2.0}
    assert quadrant_shares([stats([3.0] * 4, [1.0] * 4)])["Q4"] == 1.0
    grouped = quadrant_shares([stats([1.0, 0.0], [0.0, 1.0], [1, 2]), stats([5.0], [5.0], [2])])
    assert list(grouped) == ["all", "text", "tool_call"] and grouped["all"]["tokens"] == 3
    assert grouped["text"]["Q2"] == 1.0 and grouped["tool_call"]["Q3"] == grouped["tool_call"]["Q4"] == 0.5


# --- quick build ---------------------------------------------------------------------------------


def test_quick_world_builds_loads_and_is_idempotent(tmp_path, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from opsd.toy.build import ensure_world, quick_config

    cfg = quick_config()
    info = toy_recipe("world").main(["--world", "toy", "--out", str(tmp_path), "--quick"])  # make world, quick
    assert "TIP quadrants of student T=1 tokens" in capsys.readouterr().out
    mtime = (tmp_path / "teacher" / "model.safetensors").stat().st_mtime_ns
    paths = toy_recipe("world").ensure("toy", str(tmp_path), cfg)  # second call: everything valid, nothing rebuilt
    assert set(paths) >= {"tokenizer", "teacher", "student", "train", "heldout", "build_info"}
    assert json.load(open(paths["build_info"])) == info
    assert (tmp_path / "teacher" / "model.safetensors").stat().st_mtime_ns == mtime
    assert ensure_world(tmp_path, cfg) == paths  # without the quadrant report too
    tok = AutoTokenizer.from_pretrained(paths["tokenizer"])
    for role in ("teacher", "student"):
        model = AutoModelForCausalLM.from_pretrained(paths[role])
        assert model.config.model_type == "qwen3"
        assert model.config.vocab_size == toytok.padded_vocab_size() >= len(tok)
        assert model.config.eos_token_id == tok.eos_token_id
        assert AutoTokenizer.from_pretrained(paths[role]).get_vocab() == tok.get_vocab()
    assert sum(1 for _ in open(paths["heldout"])) == cfg.n_heldout
    q = info["quadrants"]
    assert abs(q["Q1"] + q["Q2"] + q["Q3"] + q["Q4"] - 1) < 1e-6 and q["tokens"] > 0
    assert 0 <= info["student_acc_greedy"] <= 1


def test_a_world_without_quadrants_gets_them_when_a_report_asks(tmp_path):
    from opsd.toy.build import build, quick_config

    cfg = quick_config()
    assert "quadrants" not in build(tmp_path, cfg)  # opsd alone: no TIP reading
    mtime = (tmp_path / "student" / "model.safetensors").stat().st_mtime_ns
    toy_recipe("world").ensure("toy", str(tmp_path), cfg)
    assert "Q3" in json.loads((tmp_path / "build_info.json").read_text())["quadrants"]  # re-evaluated ...
    assert (tmp_path / "student" / "model.safetensors").stat().st_mtime_ns == mtime  # ... not retrained


def test_stale_model_is_rebuilt(tmp_path):
    from opsd.toy.build import WORLD, build, quick_config

    cfg = dataclasses.replace(quick_config(), evaluate=False)
    build(tmp_path, cfg)
    other = dataclasses.replace(cfg, seed=1)
    assert not WORLD.model_valid(tmp_path / "student", other, "student")
    build(tmp_path, other)
    assert WORLD.model_valid(tmp_path / "student", other, "student")


def test_changing_the_student_spec_rebuilds_only_the_student(tmp_path):
    from opsd.toy.build import build, quick_config

    cfg = dataclasses.replace(quick_config(), evaluate=False)
    build(tmp_path, cfg)
    weights = {role: tmp_path / role / "model.safetensors" for role in ("teacher", "student")}
    before = {role: (p.stat().st_mtime_ns, p.read_bytes()) for role, p in weights.items()}
    other = dataclasses.replace(cfg, student=dataclasses.replace(cfg.student, steps=cfg.student.steps + 1))
    build(tmp_path, other)
    assert (weights["teacher"].stat().st_mtime_ns, weights["teacher"].read_bytes()) == before["teacher"]
    assert weights["student"].read_bytes() != before["student"][1]
    info = json.loads((tmp_path / "student" / "sft_info.json").read_text())
    assert info["spec"]["steps"] == cfg.student.steps + 1


# --- fingerprints: everything that changes a part, nothing that does not -------------------------


def test_fingerprints_hash_the_tokenizer_not_the_thread_count(monkeypatch):
    from opsd.toy.build import WORLD, WorldConfig

    cfg = WorldConfig()
    stamps = {role: WORLD.fingerprint(cfg, role) for role in (None, "teacher", "student")}
    assert stamps == {role: WORLD.fingerprint(dataclasses.replace(cfg, threads=1), role) for role in stamps}
    assert WORLD.fingerprint(dataclasses.replace(cfg, n_heldout=9)) != stamps[None]
    assert WORLD.fingerprint(dataclasses.replace(cfg, n_heldout=9), "teacher") == stamps["teacher"]
    # A chat template that renders prompts otherwise changes every part (the build before the
    # shared one did not hash it), and the stamps of that build are then no longer accepted.
    monkeypatch.setattr(WORLD, "tokenizer", dataclasses.replace(WORLD.tokenizer, chat_template="{{ messages }}"))
    for role, stamp in stamps.items():
        assert WORLD.fingerprint(cfg, role) != stamp and WORLD.accepted(cfg, role) == {WORLD.fingerprint(cfg, role)}


def test_the_thread_count_does_not_change_sft(tok):
    """Why ``threads`` is not fingerprinted: the student's first SFT steps are bitwise the same on
    1 and 2 threads (its real shape: the matmuls are wide enough to be split)."""
    import torch

    from opsd.toy.build import WORLD, WorldConfig

    cfg = WorldConfig()
    cfg = dataclasses.replace(cfg, student=dataclasses.replace(cfg.student, steps=3))
    weights, before = [], torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            weights.append(WORLD.train_sft(tok, cfg, "student")[0].state_dict())
    finally:
        torch.set_num_threads(before)
    assert all(torch.equal(v, weights[1][k]) for k, v in weights[0].items())


def test_committed_worlds_are_current_without_a_rebuild():
    """The committed worlds were stamped by the builders before the shared one (other hash
    inputs); their config and tokenizer are unchanged, so every part is still accepted."""
    from opsd.toy import agent_build, build

    for world, folder in ((build.WORLD, "artifacts/toy"), (agent_build.WORLD, "artifacts/agent_toy")):
        root, cfg = ROOT / folder, world.default_config()
        assert json.loads((root / "build_info.json").read_text())["fingerprint"] in world.accepted(cfg)
        assert all(world.model_valid(root / role, cfg, role) for role in ("teacher", "student"))
        changed = dataclasses.replace(cfg, seed=1)
        assert not any(world.model_valid(root / role, changed, role) for role in ("teacher", "student"))


# --- SFT ------------------------------------------------------------------------------------------


def test_constant_lr_schedule_has_no_decay():
    from opsd.toy.world import ModelSpec, lr_at

    spec = ModelSpec(layers=1, hidden=8, heads=1, kv_heads=1, intermediate=8, steps=100, warmup_steps=10,
                     min_lr_ratio=1.0)
    assert lr_at(4, spec) == 0.5 and all(lr_at(s, spec) == 1.0 for s in (10, 50, 99))


def test_constant_lr_checkpoint_equals_a_shorter_build(tok):
    """With min_lr_ratio=1 the weights after k steps of a longer SFT run are those of a run with
    steps=k (same data stream, same lr sequence): a run's checkpoints are candidate students."""
    import torch

    from opsd.toy.build import WORLD, quick_config

    cfg = quick_config()
    long = dataclasses.replace(cfg, student=dataclasses.replace(cfg.student, steps=5, warmup_steps=2, min_lr_ratio=1.0))
    seen = {}
    WORLD.train_sft(tok, long, "student", callback=lambda step, m: seen.setdefault(step, {
        k: v.detach().clone() for k, v in m.state_dict().items()}))
    short = WORLD.train_sft(tok, dataclasses.replace(long, student=dataclasses.replace(long.student, steps=3)),
                            "student")[0]
    assert all(torch.equal(seen[3][k], v) for k, v in short.state_dict().items())
    assert not all(torch.equal(seen[5][k], v) for k, v in short.state_dict().items())
