"""eval.run end to end with a fake backend: results, metrics, resume, refusals, CLI errors."""
import json

import pytest

from _eval_fakes import AIME_ROWS, MATH_ROWS, CharTokenizer, FakeBackend, fake_response
from eval import run
from eval.results import ResultsError

ANSWERS = dict(MATH_ROWS + AIME_ROWS)


def make_args(tmp_path, **kw):
    base = dict(model=str(tmp_path / "model"), out=str(tmp_path / "results.json"),
                bench=["math500", "aime25"], n=4, batch_size=2, progress=False,
                tags={"pair": "toy", "rule": "all", "ratio": "1"})
    base.update(kw)
    return run.RunArgs(**base)


def expected_correct(problem, answer, n):
    return [fake_response(answer, problem, j).endswith(f"\\boxed{{{answer}}}") for j in range(n)]


def test_end_to_end(tiny_data, tmp_path):
    tok = CharTokenizer()
    results = run.evaluate(make_args(tmp_path), FakeBackend(ANSWERS, tok), tok)
    on_disk = json.loads((tmp_path / "results.json").read_text())
    assert on_disk == results and results["status"] == "complete"
    assert results["tags"] == {"pair": "toy", "rule": "all", "ratio": "1"}
    math = results["benchmarks"]["math500"]
    assert math["version"].startswith("sha256:") and math["num_problems"] == 6
    assert "Please reason step by step" in math["settings"]["template"]
    for rec, (q, a) in zip(math["problems"], MATH_ROWS):
        assert rec["answer"] == a and q in rec["prompt"]
        assert [s["correct"] for s in rec["samples"]] == expected_correct(q, a, 4)
    want = sum(sum(expected_correct(q, a, 4)) for q, a in MATH_ROWS) / 24
    assert math["metrics"]["mean@4"]["value"] == pytest.approx(want)
    assert set(math["metrics"]) == {"mean@4", "pass@1", "pass@2", "pass@4", "maj@4"}
    assert not list(tmp_path.glob(".results.json.tmp*"))  # atomic writes leave nothing behind


def test_resume_after_interruption(tiny_data, tmp_path):
    tok = CharTokenizer()
    args = make_args(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        run.evaluate(args, FakeBackend(ANSWERS, tok, fail_after=2), tok)
    partial = json.loads((tmp_path / "results.json").read_text())
    assert partial["status"] == "partial"
    assert len(partial["benchmarks"]["math500"]["problems"]) == 4  # two batches of two were saved

    backend = FakeBackend(ANSWERS, tok)
    resumed = run.evaluate(args, backend, tok)
    assert backend.prompts_seen == [q for q, _ in MATH_ROWS[4:] + AIME_ROWS]  # only what was missing
    assert resumed["status"] == "complete"

    fresh = run.evaluate(make_args(tmp_path, out=str(tmp_path / "fresh.json")), FakeBackend(ANSWERS, tok), tok)
    for bench in ("math500", "aime25"):
        by_id = lambda r: {p["id"]: p["samples"] for p in r["benchmarks"][bench]["problems"]}
        assert by_id(resumed) == by_id(fresh)
        assert resumed["benchmarks"][bench]["metrics"] == fresh["benchmarks"][bench]["metrics"]


def test_a_backend_short_of_samples_is_an_error(tiny_data, tmp_path):
    """The shared loop (eval.results.run_resumable) checks each problem's sample count before
    anything is saved."""

    class Short(FakeBackend):
        def generate(self, prompt_ids, sampling):
            out = super().generate(prompt_ids, sampling)
            for column in (out.prompt_ids, out.response_ids, out.finished, out.prompt_index):
                column.pop()  # the last problem's last sample
            return out

    tok = CharTokenizer()
    with pytest.raises(RuntimeError, match=r"math500: got 3 samples for problem .*, expected --n 4"):
        run.evaluate(make_args(tmp_path), Short(ANSWERS, tok), tok)
    assert not (tmp_path / "results.json").exists() or \
        not json.loads((tmp_path / "results.json").read_text())["benchmarks"]["math500"]["problems"]


def test_rerun_of_a_complete_file_generates_nothing(tiny_data, tmp_path):
    tok = CharTokenizer()
    run.evaluate(make_args(tmp_path), FakeBackend(ANSWERS, tok), tok)
    backend = FakeBackend(ANSWERS, tok)
    run.evaluate(make_args(tmp_path, batch_size=3), backend, tok)  # batch size is not part of the config
    assert backend.calls == 0


def test_config_mismatch_is_refused(tiny_data, tmp_path):
    tok = CharTokenizer()
    run.evaluate(make_args(tmp_path, bench=["aime25"]), FakeBackend(ANSWERS, tok), tok)
    with pytest.raises(ResultsError, match=r"results.json was written by a different.*temperature: 1.0 -> 0.7"):
        run.evaluate(make_args(tmp_path, bench=["aime25"], temperature=0.7), FakeBackend(ANSWERS, tok), tok)
    with pytest.raises(ResultsError, match=r"'aime25' was evaluated with other settings \(max_new_tokens: 8192 -> 5\)"):
        run.evaluate(make_args(tmp_path, bench=["aime25"], max_new_tokens=5), FakeBackend(ANSWERS, tok), tok)


def test_benchmark_version_mismatch_is_refused(tiny_data, tmp_path):
    tok = CharTokenizer()
    run.evaluate(make_args(tmp_path, bench=["aime25"]), FakeBackend(ANSWERS, tok), tok)
    with open(tiny_data / "AIME_2025" / "train.jsonl", "a") as f:
        f.write(json.dumps({"problem": "AIME five", "answer": 5, "id": "9"}) + "\n")
    with pytest.raises(ResultsError, match=r"benchmark 'aime25' was evaluated on version sha256:"):
        run.evaluate(make_args(tmp_path, bench=["aime25"]), FakeBackend(ANSWERS, tok), tok)


def test_template_change_is_refused(tiny_data, tmp_path):
    tok = CharTokenizer()
    run.evaluate(make_args(tmp_path, bench=["aime25"]), FakeBackend(ANSWERS, tok), tok)
    with pytest.raises(ResultsError, match="'aime25' was evaluated with other settings .template"):
        run.evaluate(make_args(tmp_path, bench=["aime25"], template="plain"), FakeBackend(ANSWERS, tok), tok)
    # naming the default template explicitly is the same evaluation: it resumes
    run.evaluate(make_args(tmp_path, bench=["aime25"], template="boxed"), FakeBackend(ANSWERS, tok), tok)


def test_cli_missing_benchmark_file(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("OPSD_DATA_DIR", str(tmp_path / "empty"))
    rc = run.main(["--model", str(tmp_path), "--bench", "math500", "--out", str(tmp_path / "r.json")])
    assert rc == 2
    assert "MATH-500/test.jsonl not found" in capsys.readouterr().err


def test_cli_model_without_tokenizer(tiny_data, tmp_path, capsys):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    rc = run.main(["--model", str(model), "--bench", "aime25", "--out", str(tmp_path / "r.json")])
    assert rc == 2
    err = capsys.readouterr().err
    assert f"--model {model} has no tokenizer" in err and "--tokenizer" in err


def test_cli_bad_options(tiny_data, tmp_path, capsys):
    assert run.main(["--model", str(tmp_path), "--out", "x.json", "--tag", "nokey"]) == 2
    assert "--tag 'nokey'" in capsys.readouterr().err
    assert run.main(["--model", str(tmp_path), "--out", "x.json", "--n", "0"]) == 2
    assert "--n must be >= 1" in capsys.readouterr().err
    assert run.main(["--model", str(tmp_path), "--out", "x.json", "--tag", "rule=soft-or"]) == 2
    assert "--tag rule=soft-or: choose one of" in capsys.readouterr().err
    assert run.main(["--model", str(tmp_path), "--out", "x.json", "--tag", "ratio=50"]) == 2
    assert "--tag ratio=50: must be in (0, 1]" in capsys.readouterr().err


def test_vllm_backend_missing_is_a_clear_error(tmp_path):
    try:
        import opsd.rollout.vllm_backend  # noqa: F401
        pytest.skip("the vLLM backend is installed")
    except ImportError:
        pass
    args = make_args(tmp_path, backend="vllm")
    with pytest.raises(RuntimeError, match="--backend vllm: opsd.rollout.vllm_backend is not available"):
        run.build_backend(args, CharTokenizer())


def test_cli_real_hf_backend_on_the_toy_task(tmp_path, monkeypatch, capsys):
    """The whole CLI path: HF tokenizer + tiny random Qwen3 + HFGenerateBackend + toy grading."""
    pytest.importorskip("opsd.rollout.hf")
    task = pytest.importorskip("opsd.toy.task")
    toytok = pytest.importorskip("opsd.toy.tokenizer")
    from transformers import Qwen3Config, Qwen3ForCausalLM

    tok = toytok.build_tokenizer()
    cfg = Qwen3Config(vocab_size=toytok.padded_vocab_size(), hidden_size=32, intermediate_size=64,
                      num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1, head_dim=16,
                      max_position_embeddings=256, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    model_dir = tmp_path / "student"
    Qwen3ForCausalLM(cfg).save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    task.write_prompt_files(tmp_path / "toy", n_train=2, n_heldout=3, seed=0)
    monkeypatch.setenv("OPSD_TOY_DIR", str(tmp_path / "toy"))
    out = tmp_path / "toy.json"
    rc = run.main(["--model", str(model_dir), "--bench", "toy", "--n", "2", "--max-new-tokens", "6",
                   "--batch-size", "2", "--out", str(out), "--no-progress", "--tag", "pair=toy"])
    assert rc == 0, capsys.readouterr().err
    res = json.loads(out.read_text())
    probs = res["benchmarks"]["toy"]["problems"]
    assert res["status"] == "complete" and len(probs) == 3
    assert all(len(p["samples"]) == 2 and p["prompt"].startswith("Compute") for p in probs)
    assert all(s["num_tokens"] <= 6 for p in probs for s in p["samples"])
