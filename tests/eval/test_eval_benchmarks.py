"""Benchmark loaders (row counts on the shared data), versions, templates, errors, the toy task."""
import json

import pytest

from eval import templates
from eval.benchmarks import BenchmarkError, load_benchmark

MANIFEST_SHA = {  # ../shared/data/MANIFEST.json
    "math500": "35dc41080a3680858b27fa7e0533d2d547825316fc5dafe5d316f4ccc5a06132",
    "aime24": "26139847601a5037c237d5928b195e7260ca8074cf4f264b794af42847f79ccf",
    "aime25": "b4e273c02d3e7fe1b74b59eae768fc8230bfb0f79539890cb56f4361caac0331",
}


@pytest.mark.parametrize("name, rows", [("math500", 500), ("aime24", 30), ("aime25", 30)])
def test_row_counts_and_versions(shared_data, name, rows):
    bench = load_benchmark(name, data_dir=str(shared_data))
    assert len(bench.problems) == rows
    assert len({p.id for p in bench.problems}) == rows
    assert bench.version == "sha256:" + MANIFEST_SHA[name]


def test_answers_come_from_the_answer_column(shared_data):
    math = load_benchmark("math500", data_dir=str(shared_data))
    assert math.problems[0].answer == r"\left( 3, \frac{\pi}{2} \right)"
    aime24 = load_benchmark("aime24", data_dir=str(shared_data))
    assert [p.answer for p in aime24.problems][:8] == ["204", "113", "371", "385", "110", "104", "721", "025"]
    aime25 = load_benchmark("aime25", data_dir=str(shared_data))
    assert aime25.problems[0].answer == "70"  # an int in the jsonl, a string here
    assert all(0 <= int(p.answer) <= 999 for p in aime24.problems + aime25.problems)


def test_data_dir_from_env_and_limit(tiny_data):
    bench = load_benchmark("math500", limit=2)
    assert [p.id for p in bench.problems] == ["test/x/0.json", "test/x/1.json"]
    assert str(bench.path).startswith(str(tiny_data))


def test_missing_file_names_path_and_fix(tmp_path):
    with pytest.raises(BenchmarkError, match=r"MATH-500/test.jsonl not found.*eval.prepare"):
        load_benchmark("math500", data_dir=str(tmp_path))
    with pytest.raises(BenchmarkError, match="dapo.*eval.prepare"):
        load_benchmark("dapo", data_dir=str(tmp_path))
    with pytest.raises(BenchmarkError, match="unknown"):
        load_benchmark("gsm8k")


def test_bad_aime_gold_names_the_row(tiny_data):
    path = tiny_data / "AIME_2025" / "train.jsonl"
    path.write_text(json.dumps({"problem": "p", "answer": 1234, "id": "0"}) + "\n")
    with pytest.raises(BenchmarkError, match=r"train.jsonl row 0: answer 1234 is outside"):
        load_benchmark("aime25")
    path.write_text("{not json\n")
    with pytest.raises(BenchmarkError, match=r"train.jsonl:1: not valid JSON"):
        load_benchmark("aime25")


def test_templates():
    boxed = templates.render("boxed", "What is 1+1?")
    assert boxed == "What is 1+1?\nPlease reason step by step, and put your final answer within \\boxed{}."
    assert templates.render("plain", "Q") == "Q"
    assert templates.render("Problem: {problem} Go.", "Q") == "Problem: Q Go."
    dapo = templates.render("dapo", "Q")
    assert templates.strip_dapo_instruction(dapo) == "Q"
    with pytest.raises(ValueError, match="--template"):
        templates.render("fancy", "Q")


def test_toy_benchmark_graded_by_the_toy_task(tmp_path, monkeypatch):
    task = pytest.importorskip("opsd.toy.task")
    task.write_prompt_files(tmp_path, n_train=4, n_heldout=5, seed=0)
    monkeypatch.setenv("OPSD_TOY_DIR", str(tmp_path))
    bench = load_benchmark("toy")
    assert len(bench.problems) == 5 and bench.spec.template == "plain"
    p = bench.problems[0]
    right = bench.grade(f"1+1=2. Answer: {p.answer}", p.answer, grader=None)
    wrong = bench.grade("Answer: -1", p.answer, grader=None)
    assert right.correct and right.extracted == p.answer
    assert not wrong.correct


def test_toy_missing_names_the_build_step(tmp_path, monkeypatch):
    monkeypatch.setenv("OPSD_TOY_DIR", str(tmp_path / "nope"))
    with pytest.raises(BenchmarkError, match="recipes/toy/world.py --world toy"):
        load_benchmark("toy")
