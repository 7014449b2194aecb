"""`make cpu-tables` (recipes/toy/tip_sweep.py): rows, resume, seed aggregation, paper layout, claims.

Training and evaluation are replaced by fakes that write what the real commands write (an export
config, metrics.jsonl, an eval.run results file), so the logic runs in milliseconds.
"""
from __future__ import annotations

import importlib.util
import json
import random
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def sweep():
    spec = importlib.util.spec_from_file_location("tip_sweep", ROOT / "recipes/toy/tip_sweep.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["tip_sweep"] = mod  # dataclasses look their module up while the file executes
    spec.loader.exec_module(mod)
    return mod


def write_results(path: Path, correct_frac: float, n_problems: int = 40, n: int = 4, seed: int = 0) -> None:
    """An eval.run-shaped results file whose mean@n is exactly ``correct_frac``."""
    total = round(correct_frac * n_problems * n)
    flags = [i < total for i in range(n_problems * n)]
    random.Random(seed).shuffle(flags)
    problems = [{"id": f"p{i}", "answer": "1", "prompt": "", "num_correct": sum(flags[i * n:(i + 1) * n]),
                 "samples": [{"text": "", "correct": c, "extracted": "1" if c else "2", "finished": True,
                              "num_tokens": 3, "timed_out": False} for c in flags[i * n:(i + 1) * n]]}
                for i in range(n_problems)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"schema": "opsd-eval/1", "status": "complete", "config": {"temperature": 1.0},
                                "tags": {}, "benchmarks": {"toy": {"version": "v1", "problems": problems}}}))


def write_run(out: Path, kept_frac: float = 1.0, steps: int = 3) -> None:
    (out / "export").mkdir(parents=True, exist_ok=True)
    (out / "export" / "config.json").write_text("{}")
    rows = [{"step": 0, "eval/accuracy": 0.2}]
    rows += [{"step": s, "tokens": 100.0, "kept_frac": kept_frac, "tip/q1_frac": 0.1, "tip/q2_frac": 0.2,
              "tip/q3_frac": 0.05, "tip/q4_frac": 0.65, "tip/q1_kept": 1.0, "tip/q2_kept": 1.0,
              "tip/q3_kept": 1.0, "tip/q4_kept": kept_frac} for s in range(1, steps + 1)]
    rows += [{"step": steps, "eval/accuracy": 0.5}]
    (out / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    (out / "timing.json").write_text(json.dumps({"train_s": 10.0}))


# accuracy (fraction) per (rule, ratio) and seed: entropy 50 % beats all, bottom is far below top.
ACC = {("all", 1.0): [0.50, 0.55, 0.45], ("entropy_sample", 0.5): [0.60, 0.65, 0.575],
       ("soft_or", 0.5): [0.60, 0.60, 0.60], ("soft_or_bottom", 0.5): [0.20, 0.25, 0.15]}


def fakes(acc):
    calls = []

    def train(args, world, rule, ratio, seed, out):
        calls.append(("train", out.name))
        write_run(out, kept_frac=ratio)

    def evaluate(args, world, model, res, tags):
        calls.append(("eval", res.parent.name))
        key = next(((r, q) for r, q in acc if res.parent.name.startswith(f"{r}-{q:g}-")), None)
        seed = int(res.parent.name.rsplit("-s", 1)[1]) if key else 0
        write_results(res, acc[key][seed] if key else 0.2, seed=seed)

    return calls, train, evaluate


def test_rows_follow_the_paper_tables(sweep):
    rows = sweep.rules_for_tables(["3", "4", "5", "6", "8"])
    assert rows[0] == ("all", 1.0) and len(rows) == len(set(rows)) == 12
    assert ("soft_or_bottom", 0.5) in rows and ("adaptive_kl", 0.1) in rows and ("q3", 0.1) in rows
    assert sweep.rules_for_tables(["6"]) == [("all", 1.0), ("soft_or", 0.5), ("soft_or_bottom", 0.5)]
    assert sweep.rules_for_tables(["7"]) == sweep.TABLE7_ROWS  # the agentic toy world's rows
    with pytest.raises(SystemExit, match="Table 7"):
        sweep.rules_for_tables(["3", "7"])


def test_finished_runs_are_not_redone(sweep, tmp_path):
    rules = list(ACC)
    calls, train, evaluate = fakes(ACC)
    args = SimpleNamespace()
    assert sweep.run_all(args, tmp_path, tmp_path / "out", rules, [0, 1, 2], train, evaluate) == 1 + 2 * 12
    assert sweep.run_all(args, tmp_path, tmp_path / "out", rules, [0, 1, 2], train, evaluate) == 0
    # an interrupted evaluation (partial results file) is evaluated again, its training is kept
    res = tmp_path / "out" / "q3-0.2-s0"
    (tmp_path / "out" / "soft_or-0.5-s1" / "eval_toy.json").write_text('{"status": "partial"}')
    calls.clear()
    assert sweep.run_all(args, tmp_path, tmp_path / "out", rules, [0, 1, 2], train, evaluate) == 1
    assert calls == [("eval", "soft_or-0.5-s1")] and not res.exists()


def test_runs_of_another_world_or_other_settings_are_redone_and_kept_aside(sweep, tmp_path):
    rules = list(ACC)[:2]
    calls, train, evaluate = fakes(ACC)
    world, out = tmp_path / "world", tmp_path / "out"
    world.mkdir()
    (world / "build_info.json").write_text(json.dumps({"fingerprint": "aaaa"}))
    args = SimpleNamespace(steps=3, eval_limit=40, n=4, override=[])
    assert sweep.run_all(args, world, out, rules, [0, 1], train, evaluate) == 1 + 2 * 4
    assert sweep.run_all(args, world, out, rules, [0, 1], train, evaluate) == 0
    (world / "build_info.json").write_text(json.dumps({"fingerprint": "bbbb"}))  # the world was rebuilt
    assert sweep.run_all(args, world, out, rules, [0, 1], train, evaluate) == 1 + 2 * 4
    assert sorted(p.name for p in (out / "stale").iterdir())[:2] == ["all-1-s0-0", "all-1-s1-0"]
    assert (out / "stale" / "before-0" / "eval_toy.json").exists()  # computed results are kept
    args.steps = 5  # other settings: stale too
    assert sweep.run_all(args, world, out, rules, [0, 1], train, evaluate) == 1 + 2 * 4
    assert (out / "stale" / "all-1-s0-1").is_dir()
    (out / "all-1-s0" / "sweep_run.json").unlink()  # a run from before records were kept counts as current
    assert sweep.run_all(args, world, out, rules, [0, 1], train, evaluate) == 0


def test_seed_aggregates_and_paired_difference(sweep, tmp_path):
    _, train, evaluate = fakes(ACC)
    sweep.run_all(SimpleNamespace(), tmp_path, tmp_path, list(ACC), [0, 1, 2], train, evaluate)
    agg = sweep.collect(tmp_path, list(ACC), [0, 1, 2])
    base = sweep.accuracy(agg, ("all", 1.0))
    assert base.mean == pytest.approx(50.0) and base.se == pytest.approx(5.0 / 3 ** 0.5) and base.k == 3
    d = sweep.paired(agg, ("entropy_sample", 0.5), ("all", 1.0))  # per seed +10, +10, +12.5
    assert d.mean == pytest.approx(32.5 / 3) and d.se == pytest.approx((6.25 / 3) ** 0.5 / 3 ** 0.5)
    r = agg[("soft_or", 0.5)][0]
    assert r.kept_tokens == pytest.approx(150.0) and r.tokens == 300.0 and r.wall_s == pytest.approx(10.0)
    assert r.greedy_before == pytest.approx(20.0) and r.greedy_after == pytest.approx(50.0)
    assert r.quadrants["q3"] == pytest.approx(0.05) and r.kept_share["q4"] == pytest.approx(0.5)


def test_paper_layout_and_claims(sweep, tmp_path):
    _, train, evaluate = fakes(ACC)
    sweep.run_all(SimpleNamespace(), tmp_path, tmp_path, list(ACC), [0, 1, 2], train, evaluate)
    agg = sweep.collect(tmp_path, list(ACC), [0, 1, 2])
    t3 = sweep.render_table("3", agg)
    ours = next(line for line in t3.splitlines() if "ours" in line)
    assert "| 50.0 ± 2.9 | 60.8 ± 2.2 (+10.8 ± 0.8) | — | — |" in ours
    assert "paper: Qwen3-8B (GRPO) → Qwen3-4B / MATH-500 | 76.7 ± 0.7 | 78.6 ± 0.6 (+1.9)" in t3
    t6 = sweep.render_table("6", agg)
    assert "| 60.0 ± 0.0 (+10.0 ± 2.9) | 20.0 ± 2.9 (-30.0 ± 0.0) |" in t6 and "79.1 ± 0.8" in t6
    t8 = sweep.render_table("8", agg)
    assert "paper (pair not stated) / MATH-500 / Adaptive KL | — | 72.0 (+1.3)" in t8
    assert "| **toy world (ours), held-out mean@n** / Adaptive KL | — | — | — | — |" in t8
    lines = sweep.claims(agg)
    assert len(lines) == 5
    assert lines[0].startswith("50 % entropy sampling") and "— holds: Δ(entropy 50 % − all) = +10.8 ± 0.8" in lines[0]
    assert "beyond 2 SE" in lines[0]
    assert "— holds: Δ(top − bottom) = +40.0 ± 2.9" in lines[3]
    assert "not run yet" in lines[1] and "not run yet" in lines[2] and "not run yet" in lines[4]
    # a bottom half as good as the top half fails "≫"
    flat = {**ACC, ("soft_or_bottom", 0.5): [0.60, 0.61, 0.59]}
    _, train, evaluate = fakes(flat)
    sweep.run_all(SimpleNamespace(), tmp_path, tmp_path / "flat", list(flat), [0, 1, 2], train, evaluate)
    assert "does not hold" in sweep.claims(sweep.collect(tmp_path / "flat", list(flat), [0, 1, 2]))[3]
    # a "≥" claim fails only beyond noise: entropy 50 % clearly below all tokens
    worse = {**ACC, ("entropy_sample", 0.5): [0.30, 0.36, 0.24]}
    _, train, evaluate = fakes(worse)
    sweep.run_all(SimpleNamespace(), tmp_path, tmp_path / "worse", list(worse), [0, 1, 2], train, evaluate)
    line = sweep.claims(sweep.collect(tmp_path / "worse", list(worse), [0, 1, 2]))[0]
    assert "— does not hold: Δ(entropy 50 % − all) = -20.0" in line and "beyond 2 SE" in line


def test_report_plot_and_readme_block(sweep, tmp_path):
    _, train, evaluate = fakes(ACC)
    sweep.run_all(SimpleNamespace(), tmp_path, tmp_path, list(ACC), [0, 1, 2], train, evaluate)
    args = SimpleNamespace(seeds=[0, 1, 2], steps=3, n=4, eval_limit=40)
    text = sweep.report(args, tmp_path, list(ACC), ["3", "6"], wall_s=12.0)
    assert "### Table 3 (CPU)" in text and "### Table 6 (CPU)" in text and "| soft_or_bottom-0.5-s2 |" in text
    assert (tmp_path / "accuracy_vs_ratio.png").stat().st_size > 0
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\n{sweep.README_BEGIN}\nstale claims\n{sweep.README_END}\ntail\n")
    agg = sweep.collect(tmp_path, list(ACC), [0, 1, 2])
    sweep.update_readme(readme, sweep.readme_block(agg, [0, 1, 2], 3, 4, 600.0))
    text = readme.read_text()
    assert "stale claims" not in text and text.endswith(f"{sweep.README_END}\ntail\n") and text.count("\n- ") == 5
    assert "10 min" in text
    empty = sweep.readme_block({}, [0], 3, 4, 0.0)
    assert "Not yet run" in empty
    readme.write_text("no markers\n")
    with pytest.raises(SystemExit, match="cpu-tables"):
        sweep.update_readme(readme, empty)


# --- Table 7 on the agentic toy world -------------------------------------------------------------

AGENT_ACC = {("all", 1.0): [0.40, 0.44, 0.42], ("q3", 0.2): [0.46, 0.47, 0.45], ("soft_or", 0.2): [0.30, 0.50, 0.40]}


def agent_fake(acc):
    calls = []

    def train(args, world, rule, ratio, seed, out):
        calls.append(out.name)
        write_run(out, kept_frac=ratio)
        rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
        for r in rows:
            if "tokens" in r:  # the trainer's per-role quadrant shares
                for role, share in (("tool_call", 0.6), ("answer", 0.3), ("text", 0.1)):
                    r.update({f"tip/{role}/frac": share, f"tip/{role}/kept_frac": ratio,
                              **{f"tip/{role}/q{i}_frac": 0.25 for i in "1234"}})
                r["tip/answer/q3_frac"] = 0.4
        rows[-1]["eval/accuracy"] = acc[(rule, ratio)][seed]  # greedy accuracy after OPD
        (out / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")

    return calls, train


def test_table7_runs_on_the_agent_world_without_eval_run(sweep, tmp_path):
    calls, train = agent_fake(AGENT_ACC)

    def no_eval(*a):
        raise AssertionError("the agentic sweep scores with the trainer's own evaluation")

    args = SimpleNamespace(agent=True, seeds=[0, 1, 2], steps=3, n=1, eval_limit=8)
    rules = list(AGENT_ACC)
    assert sweep.run_all(args, tmp_path, tmp_path, rules, [0, 1, 2], train, no_eval) == 9
    assert sweep.run_all(args, tmp_path, tmp_path, rules, [0, 1, 2], train, no_eval) == 0  # resumable
    agg = sweep.collect(tmp_path, rules, [0, 1, 2], agent=True)
    assert sweep.accuracy(agg, ("all", 1.0)).mean == pytest.approx(42.0)
    d = sweep.paired(agg, ("q3", 0.2), ("all", 1.0))  # +6, +3, +3
    assert d.mean == pytest.approx(4.0) and d.se == pytest.approx(1.0)
    r = agg[("q3", 0.2)][1]
    assert r.roles["answer"]["q3_frac"] == pytest.approx(0.4) and r.roles["tool_call"]["frac"] == pytest.approx(0.6)
    t7 = sweep.render_table7(agg)
    assert "| q3 | 0.2 | 46.0 ± 0.6 (+4.0 ± 1.0) | 12.6 / 13.6 | — / 20.1 |" in t7
    assert "| all | 1 | 42.0 ± 1.2 | 11.7 / 12.8 | 18.9 / 19.7 |" in t7 and "| entropy_sample | 0.5 | — |" in t7
    roles = sweep.render_roles(agg, rules)
    assert "| q3 | 0.2 | answer | 0.30 | 0.25 / 0.25 / 0.40 / 0.25 | 0.20 |" in roles
    claims = sweep.agent_claims(agg)
    assert "holds: Δ(Q3 20 % − all) = +4.0 ± 1.0 points (beyond 2 SE" in claims[0]
    assert "undecided, within noise: Δ(Soft-OR 20 % − all) = -2.0 ± 4.6 points (within 2 SE" in claims[1]  # -10, +6, -2
    text = sweep.report(args, tmp_path, rules, ["7"], wall_s=5.0)
    assert "### Table 7 (CPU, agentic toy world)" in text and "TIP quadrants per token role" in text
    readme = tmp_path / "README.md"
    readme.write_text(f"{sweep.README_BEGIN}\nmath\n{sweep.README_END}\n{sweep.AGENT_BEGIN}\nstale rows\n{sweep.AGENT_END}\n")
    sweep.update_readme(readme, sweep.agent_readme_block(agg, [0, 1, 2], 3, 60.0))
    out = readme.read_text()
    assert "stale rows" not in out and "\nmath\n" in out and "9 runs on the agentic toy world" in out


def _agg(deltas):
    """An aggregate with per-seed accuracies (points) for (rule, ratio) -> [per seed]."""
    return {rule: {s: SimpleNamespace(mean_at_n=v) for s, v in enumerate(vals)} for rule, vals in deltas.items()}


def test_near_and_no_better_claims_hold_only_inside_the_margin(sweep):
    all_ = [50.0, 50.0, 50.0]
    # Table 4: Q3 20 % per-seed Δ -1, -1, -1 (tight, inside ±2 points) holds; Q3 10 % Δ +3, -3, 0 is
    # noisy (|Δ| = 0 ≤ 2 SE, which the old rule read as "near") and must stay undecided.
    agg = _agg({("all", 1.0): all_, ("q3", 0.2): [49.0, 49.0, 49.0], ("q3", 0.1): [53.0, 47.0, 50.0],
                ("entropy_sample", 0.5): [50.0, 50.0, 50.0], ("entropy_sample", 0.2): [50.0, 50.0, 50.0],
                ("entropy_sample", 0.1): [50.0, 50.0, 50.0], ("adaptive_kl", 0.5): [51.0, 50.0, 50.5],
                ("adaptive_kl", 0.2): [54.0, 47.0, 50.0], ("adaptive_kl", 0.1): [56.0, 56.5, 55.5]})
    agg[("q3", 0.2)] = {s: SimpleNamespace(mean_at_n=v) for s, v in enumerate([49.0, 48.9, 49.1])}
    t4, t8 = sweep.claims(agg)[1], sweep.claims(agg)[4]
    assert "20% holds: Δ(Q3 − all) = -1.0" in t4, t4
    assert "10% undecided, within noise: Δ(Q3 − all) = +0.0" in t4, t4
    # Table 8: "no better" holds when Δ + 2 SE ≤ 2, undecided when the interval crosses 2 (old rule:
    # holds, since Δ is within 2 SE), fails when the whole interval is above it.
    assert "50% holds: Δ(adaptive − sampling) = +0.5" in t8, t8
    assert "20% undecided, within noise: Δ(adaptive − sampling) = +0.3" in t8, t8
    assert "10% does not hold: Δ(adaptive − sampling) = +6.0" in t8, t8
    # one seed decides nothing
    one = {rule: {0: by_seed[0]} for rule, by_seed in agg.items()}
    assert "20% undecided, one seed" in sweep.claims(one)[1]


def test_a_near_claim_gets_harder_to_pass_with_noise(sweep):
    E = sweep.Estimate
    assert sweep._verdict_within(E(0.5, 0.2, 3), -2, 2, "Δ =").startswith("holds")
    assert sweep._verdict_within(E(0.5, 5.0, 3), -2, 2, "Δ =").startswith("undecided")  # the old rule: holds
    assert sweep._verdict_within(E(9.0, 1.0, 3), -2, 2, "Δ =").startswith("does not hold")
