"""The embedded default world (opsd.toy): task, tokenizer, and a quick (untrained) build."""
from __future__ import annotations

import json
import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from opsd.toy import tokenizer as toytok
from opsd.toy.task import (TaskConfig, extract_answer, make_problems, reward, solution_text, split_of,
                           write_prompt_files)


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    from transformers import AutoTokenizer

    path = tmp_path_factory.mktemp("tok")
    toytok.save_tokenizer(path)
    return AutoTokenizer.from_pretrained(str(path))


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


def test_minmax_constant_is_zero_not_nan():
    import torch

    from opsd.toy.build import minmax

    assert torch.equal(minmax(torch.full((5,), 3.0)), torch.zeros(5))
    assert torch.allclose(minmax(torch.tensor([1.0, 2.0, 3.0])), torch.tensor([0.0, 0.5, 1.0]))


# --- quick build ---------------------------------------------------------------------------------


def test_quick_world_builds_loads_and_is_idempotent(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from opsd.toy.build import build, ensure_world, quick_config

    cfg = quick_config()
    info = build(tmp_path, cfg)
    paths = ensure_world(tmp_path, cfg)  # second call: everything valid, nothing rebuilt
    assert set(paths) >= {"tokenizer", "teacher", "student", "train", "heldout", "build_info"}
    assert json.load(open(paths["build_info"])) == info
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


def test_stale_model_is_rebuilt(tmp_path):
    import dataclasses

    from opsd.toy.build import build, model_fingerprint, model_valid, quick_config
    from pathlib import Path

    cfg = dataclasses.replace(quick_config(), evaluate=False)
    build(tmp_path, cfg)
    other = dataclasses.replace(cfg, seed=1)
    assert not model_valid(Path(tmp_path) / "student", model_fingerprint(other, "student"))
    build(tmp_path, other)
    assert model_valid(Path(tmp_path) / "student", model_fingerprint(other, "student"))


def test_changing_the_student_spec_rebuilds_only_the_student(tmp_path):
    import dataclasses
    from pathlib import Path

    from opsd.toy.build import build, quick_config

    cfg = dataclasses.replace(quick_config(), evaluate=False)
    build(tmp_path, cfg)
    weights = {role: Path(tmp_path) / role / "model.safetensors" for role in ("teacher", "student")}
    before = {role: (p.stat().st_mtime_ns, p.read_bytes()) for role, p in weights.items()}
    other = dataclasses.replace(cfg, student=dataclasses.replace(cfg.student, steps=cfg.student.steps + 1))
    build(tmp_path, other)
    assert (weights["teacher"].stat().st_mtime_ns, weights["teacher"].read_bytes()) == before["teacher"]
    assert weights["student"].read_bytes() != before["student"][1]
    info = json.loads((Path(tmp_path) / "student" / "sft_info.json").read_text())
    assert info["spec"]["steps"] == cfg.student.steps + 1


def test_constant_lr_schedule_has_no_decay():
    from opsd.toy.build import ModelSpec, lr_at

    spec = ModelSpec(layers=1, hidden=8, heads=1, kv_heads=1, intermediate=8, steps=100, warmup_steps=10,
                     min_lr_ratio=1.0)
    assert lr_at(4, spec) == 0.5 and all(lr_at(s, spec) == 1.0 for s in (10, 50, 99))


def test_constant_lr_checkpoint_equals_a_shorter_build(tok):
    """With min_lr_ratio=1 the weights after k steps of a longer SFT run are those of a run with
    steps=k (same data stream, same lr sequence): a run's checkpoints are candidate students."""
    import dataclasses

    import torch

    from opsd.toy.build import quick_config, train_sft

    cfg = quick_config()
    long = dataclasses.replace(cfg.student, steps=5, warmup_steps=2, min_lr_ratio=1.0)
    seen = {}
    train_sft("s", long, tok, cfg, 1, callback=lambda step, m: seen.setdefault(step, {
        k: v.detach().clone() for k, v in m.state_dict().items()}))
    short, _ = train_sft("s", dataclasses.replace(long, steps=3), tok, cfg, 1)
    assert all(torch.equal(seen[3][k], v) for k, v in short.state_dict().items())
    assert not all(torch.equal(seen[5][k], v) for k, v in short.state_dict().items())
