"""eval.compare: report rendering (overview and paper layouts), errors, the plot."""
import json

import pytest

from _eval_fakes import AIME_ROWS, MATH_ROWS, CharTokenizer, FakeBackend
from eval import compare, run
from eval.grading import Grader, GradingConfig

INLINE = Grader(GradingConfig(isolation="inline"))  # no worker start-up per run: fast tests
ANSWERS = dict(MATH_ROWS + AIME_ROWS)
RUNS = [("base", "all", "1", 0), ("ent50", "entropy_sample", "0.5", 1), ("ent20", "entropy_sample", "0.2", 2),
        ("sor50", "soft_or", "0.5", 1), ("q3_20", "q3", "0.2", 2), ("bot50", "soft_or_bottom", "0.5", 2),
        ("akl50", "adaptive_kl", "0.5", 1)]


def make_run(tmp_path, name, rule, ratio, shift, n=4, pair="qwen3-8b-4b", bench=("math500", "aime25")):
    tok = CharTokenizer()
    args = run.RunArgs(model="m", out=str(tmp_path / f"{name}.json"), bench=list(bench), n=n,
                       batch_size=3, progress=False, tags={"pair": pair, "rule": rule, "ratio": ratio})
    run.evaluate(args, FakeBackend(ANSWERS, tok, shift=shift), tok, INLINE)
    return str(tmp_path / f"{name}.json")


@pytest.fixture
def result_files(tiny_data, tmp_path):
    return [make_run(tmp_path, *spec) for spec in RUNS]


def test_overview_and_table3(result_files):
    runs = compare.load_runs(result_files)
    report = compare.render_report(runs, "3", "problems")
    base, ent50 = runs[0], runs[1]
    b, e = base.value("math500"), ent50.value("math500")
    assert f"| base | qwen3-8b-4b | all | 1.0 | math500 | 4 | {b} |" in report
    d = compare.delta(ent50, base, "math500", "problems")
    assert d.mean == pytest.approx(e.mean - b.mean)
    # Table 3 cell: ours, delta to the pair's baseline, and the paper's number beside it
    assert f"{e} ({d.mean:+.1f} ± {d.se:.1f}) · paper 78.6 ± 0.6 (T3)" in report
    assert "— · paper 21.9 ± 1.2 (T3)" in report  # AIME'24 was not evaluated: paper only


@pytest.mark.parametrize("table, expect", [
    ("4", "paper 75.7 ± 0.8 (T4)"), ("5", "paper 79.1 ± 0.8 (T5)"),
    ("6", "paper 72.3 ± 0.9 (T6)"), ("8", "paper 72.0 (T8)"), ("7", "| OPD + Q3-only 20% [avg@16] |")])
def test_each_paper_table_renders(result_files, table, expect):
    report = compare.render_report(compare.load_runs(result_files), table, "sampling")
    assert f"### Table {table}" in report and expect in report


def test_non_paper_pair_gets_the_layout_without_paper_numbers(tiny_data, tmp_path):
    files = [make_run(tmp_path, "t_base", "all", "1", 0, pair="toy", bench=("aime25",)),
             make_run(tmp_path, "t_e50", "entropy_sample", "0.5", 1, pair="toy", bench=("aime25",))]
    report = compare.render_report(compare.load_runs(files), "3", "problems")
    assert "| toy / AIME'25 |" in report and "paper" not in report.split("### Table 3")[1].split("Cells:")[0]


def test_mixed_n_is_refused(tiny_data, tmp_path):
    a = make_run(tmp_path, "a", "all", "1", 0, n=4)
    b = make_run(tmp_path, "b", "soft_or", "0.5", 1, n=3)
    with pytest.raises(compare.CompareError, match=rf"mixed n across runs on aime25: {a} n=4, {b} n=3.*--n"):
        compare.load_runs([a, b])
    assert compare.main([a, b, "--table", "3"]) == 2


def test_different_benchmark_version_is_refused(tiny_data, tmp_path):
    a = make_run(tmp_path, "a", "all", "1", 0, bench=("aime25",))
    with open(tiny_data / "AIME_2025" / "train.jsonl", "a") as f:
        f.write(json.dumps({"problem": "AIME one", "answer": 1, "id": "x"}) + "\n")
    b = make_run(tmp_path, "b", "soft_or", "0.5", 1, bench=("aime25",))
    with pytest.raises(compare.CompareError, match=rf"different versions of benchmark aime25: {a} .*{b}"):
        compare.load_runs([a, b])


def test_duplicate_tags_and_bad_inputs(result_files, tmp_path):
    with pytest.raises(compare.CompareError, match="same tags"):
        compare.load_runs([result_files[0], result_files[0]])
    with pytest.raises(compare.CompareError, match="no such results file"):
        compare.load_runs([str(tmp_path / "missing.json")])
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(compare.CompareError, match="schema"):
        compare.load_runs([str(tmp_path / "bad.json")])
    assert compare.main(result_files + ["--table", "9"]) == 2


def test_cli_writes_report_and_png(result_files, tmp_path):
    out, fig = tmp_path / "report.md", tmp_path / "fig.png"
    assert compare.main(result_files + ["--table", "3", "--out", str(out), "--plot", str(fig)]) == 0
    assert out.read_text().startswith("# Evaluation comparison")
    data = fig.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_plot_without_tags_still_writes_a_file(tiny_data, tmp_path):
    tok = CharTokenizer()
    args = run.RunArgs(model="m", out=str(tmp_path / "x.json"), bench=["aime25"], n=2, progress=False)
    run.evaluate(args, FakeBackend(ANSWERS, tok), tok, INLINE)
    compare.plot(compare.load_runs([args.out]), tmp_path / "p.png", "problems")
    assert (tmp_path / "p.png").stat().st_size > 0


def test_a_partial_run_is_paired_on_the_common_problems_and_the_report_says_so(result_files, tmp_path):
    data = json.loads(open(result_files[1]).read())
    problems = data["benchmarks"]["math500"]["problems"]
    kept = problems[: len(problems) // 2]  # an evaluation stopped halfway
    data["benchmarks"]["math500"]["problems"], data["status"] = kept, "partial"
    part = tmp_path / "partial.json"
    part.write_text(json.dumps(data))
    runs = compare.load_runs([result_files[0], str(part)])
    base, ent = runs
    ids = {p["id"] for p in kept}
    a, b = ent.per_problem("math500"), base.per_problem("math500")
    expect = 100 * sum(a[i] - b[i] for i in ids) / len(ids)
    for se_kind in ("problems", "sampling"):
        d = compare.delta(ent, base, "math500", se_kind)
        assert d.common == len(ids) and d.mean == pytest.approx(expect)
    report = compare.render_report(runs, "3", "problems")
    assert "**Partial report**" in report and f"finished {len(ids)} problems of math500" in report
    assert f"(partial: {len(ids)} common problems)" in report
    # a complete pair stays paired over all problems, unmarked
    assert compare.delta(runs[0], compare.load_runs([result_files[1]])[0], "math500", "problems").common is None
