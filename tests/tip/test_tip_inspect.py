"""The token inspector on a tiny random Qwen3 pair (different logit widths, shared tokenizer)."""
import json

import pytest
import torch

from tip_patches import inspect as tip_inspect


def test_inspector_writes_report_scatter_and_summary(tiny_world, tmp_path):
    out = tmp_path / "inspect"
    summary = tip_inspect.main(["--student", tiny_world["student"], "--teacher", tiny_world["teacher"],
                                "--prompts", tiny_world["heldout"], "--out", str(out), "--n", "3",
                                "--max-new-tokens", "12", "--examples", "2", "--quadrant-threshold", "median"])
    report = (out / "report.md").read_text()
    for q in range(1, 5):
        assert f"## Q{q}:" in report
    assert "| rank | student token | p_S | teacher token | p_T |" in report and "⟦" in report
    assert (out / "quadrants.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads((out / "summary.json").read_text())
    assert saved == summary and summary["rollouts"] == 3 and summary["tokens"] > 0
    assert sum(summary[f"q{q}_frac"] for q in range(1, 5)) == pytest.approx(1.0)
    assert summary["q1_frac"] + summary["q2_frac"] == pytest.approx(0.5, abs=0.1)  # median split


def test_scores_match_opsd_token_stats(tiny_world):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from opsd.losses import token_stats

    tok = AutoTokenizer.from_pretrained(tiny_world["student"])
    student = AutoModelForCausalLM.from_pretrained(tiny_world["student"])
    teacher = AutoModelForCausalLM.from_pretrained(tiny_world["teacher"])
    prompt, resp = tip_inspect.encode_prompt(tok, "1+2="), tok("3<|im_end|>")["input_ids"]
    sc = tip_inspect.score_rollouts(student, teacher, [prompt], [resp], vocab_size=len(tok))
    assert sc.stats.num_tokens == len(resp) and sc.position.tolist() == list(range(len(resp)))
    with torch.no_grad():
        ids = torch.tensor([prompt + resp])
        ls = student(input_ids=ids).logits[0, len(prompt) - 1:-1, :len(tok)]
        lt = teacher(input_ids=ids).logits[0, len(prompt) - 1:-1, :len(tok)]
    ref = token_stats(ls, lt)
    assert torch.allclose(sc.stats.reverse_kl, ref.reverse_kl, atol=1e-5)
    assert torch.allclose(sc.s_top_p[:, 0], torch.softmax(ls, -1).max(-1).values, atol=1e-6)
    assert int(sc.t_top_i.max()) < len(tok)  # padded logit rows are never shown


def test_plain_generate_fallback(tiny_world):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_world["student"])
    model = AutoModelForCausalLM.from_pretrained(tiny_world["student"])
    out = tip_inspect._plain_generate(model, tok, [tip_inspect.encode_prompt(tok, "1+2=")], 5, 1.0)
    assert len(out) == 1 and 1 <= len(out[0]) <= 5


def test_bad_prompt_file_names_the_line(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "1+1="}\n{not json}\n')
    with pytest.raises(ValueError, match=r"p\.jsonl:2: not valid JSON"):
        tip_inspect.read_prompts(str(path), 5)
    path.write_text('{"question": "1+1="}\n')
    with pytest.raises(ValueError, match=r"p\.jsonl:1: no string 'prompt'"):
        tip_inspect.read_prompts(str(path), 5)
    path.write_text('{"prompt": "a"}\n{"messages": [{"role": "user", "content": "b"}]}\n{"prompt": "c"}\n')
    assert tip_inspect.read_prompts(str(path), 2) == ["a", [{"role": "user", "content": "b"}]]
