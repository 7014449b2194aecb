"""TIP rules on the embedded default: several seeds per rule, then one table.

    python recipes/toy/tip_sweep.py                       # 5 rules x 3 seeds (the issue's set)
    python recipes/toy/tip_sweep.py --seeds 0 --rules all:1.0,soft_or:0.2 --steps 10

Every run is a fresh ``python -m opsd.train`` process on ``recipes/toy/opd.yaml`` with
``tip.rule``/``tip.ratio``/``train.seed`` overrides (``all`` keeps every token: plain OPD,
with the quadrants logged). After training, the exported student is scored by ``python -m eval.run
--bench toy`` (mean@n at temperature 1). A run whose folder already holds its results is not
repeated, so an interrupted sweep resumes. The report (Markdown) has, per rule: held-out greedy
accuracy before/after (mean ± sample std over seeds), mean@n, the TIP quadrant fractions of the
student's tokens (mean over steps and seeds) and the share of each quadrant's tokens the rule kept
(token-weighted over steps, mean over seeds),
and wall time; then ``eval.compare``'s table of the seed-0 runs against the ``all`` baseline.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

DEFAULT_RULES = "all:1.0,entropy_sample:0.5,soft_or:0.5,soft_or:0.2,q3:0.2"
ROOT = Path(__file__).resolve().parents[2]


def parse_rules(text: str):
    out = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        rule, _, ratio = item.partition(":")
        try:
            out.append((rule, float(ratio or 1.0)))
        except ValueError:
            raise SystemExit(f"--rules: {item!r} is not RULE:RATIO (e.g. soft_or:0.2)")
    return out


def run_name(rule: str, ratio: float, seed: int) -> str:
    return f"{rule}-{ratio:g}-s{seed}"


def read_metrics(path: Path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def train_one(args, world: Path, rule: str, ratio: float, seed: int, out: Path) -> float:
    if (out / "export" / "config.json").exists() and (out / "metrics.jsonl").exists():
        return 0.0  # done before
    cmd = [sys.executable, "-m", "opsd.train", "--config", str(ROOT / "recipes/toy/opd.yaml"),
           f"model.student={world / 'student'}", f"model.teacher={world / 'teacher'}",
           f"data.train_files=[{world / 'train.jsonl'}]", f"train.eval_files=[{world / 'heldout.jsonl'}]",
           f"train.output_dir={out}", f"train.seed={seed}", f"train.max_steps={args.steps}",
           f"train.eval_limit={args.eval_limit}", "train.resume=never", "logging.progress=false", *args.override]
    # rule `all` also goes through the tip section (same selection as no patch, tested in
    # tests/tip) so that its quadrant fractions are logged too.
    cmd += [f"tip.rule={rule}", f"tip.ratio={ratio}"]
    t0 = time.time()
    subprocess.run(cmd, check=True, cwd=ROOT)
    wall = time.time() - t0
    (out / "sweep_wall_s.txt").write_text(f"{wall:.1f}\n")
    return wall


def eval_one(args, world: Path, rule: str, ratio: float, seed: int, out: Path, model: Path = None) -> Path:
    res = out / "eval_toy.json"
    out.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "eval.run", "--model", str(model or out / "export"), "--bench", "toy",
           "--n", str(args.n), "--temperature", "1.0", "--limit", str(args.eval_limit), "--seed", "0",
           "--out", str(res), "--no-progress"]
    if model is None:  # a trained run (the untrained student carries no rule tags)
        cmd += ["--tag", f"rule={rule}", "--tag", f"ratio={ratio:g}", "--tag", f"seed={seed}"]
    subprocess.run(cmd, check=True, cwd=ROOT, env={**os.environ, "OPSD_TOY_DIR": str(world)})
    return res


def mean_std(xs, digits: int = 3):
    xs = [x for x in xs if x is not None]
    if not xs:
        return "n/a"
    sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return f"{statistics.mean(xs):.{digits}f} ± {sd:.{digits}f}"


def summarize(out_root: Path, rules, seeds, n: int) -> str:
    from eval.results import load_results  # noqa: F401  (fails early if eval is broken)

    lines = [f"| rule | ratio | seeds | greedy acc before | greedy acc after | mean@{n} (T=1) after | "
             "Q1 / Q2 / Q3 / Q4 fraction | kept share of Q1 / Q2 / Q3 / Q4 | train wall s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for rule, ratio in rules:
        before, after, meank, walls, quad, kept = [], [], [], [], {q: [] for q in "1234"}, {q: [] for q in "1234"}
        for seed in seeds:
            d = out_root / run_name(rule, ratio, seed)
            m = read_metrics(d / "metrics.jsonl")
            evals = [r["eval/accuracy"] for r in m if "eval/accuracy" in r]
            before.append(evals[0] if evals else None)
            after.append(evals[-1] if len(evals) > 1 else None)
            steps = [r for r in m if "tip/q1_frac" in r]
            for q in "1234":
                if steps:
                    quad[q].append(statistics.mean(r[f"tip/q{q}_frac"] for r in steps))
                    # token-weighted over steps (a step whose quadrant is empty logs kept share 0)
                    n_q = [r[f"tip/q{q}_frac"] * r.get("tokens", 1.0) for r in steps]
                    if sum(n_q) > 0:
                        kept[q].append(sum(r[f"tip/q{q}_kept"] * w for r, w in zip(steps, n_q)) / sum(n_q))
            res = json.loads((d / "eval_toy.json").read_text())
            meank.append(_mean_at_n(res))
            w = d / "sweep_wall_s.txt"
            walls.append(float(w.read_text()) if w.exists() else None)
        qf = " / ".join(f"{statistics.mean(quad[q]):.2f}" for q in "1234") if quad["1"] else "n/a"
        kf = " / ".join(f"{statistics.mean(kept[q]):.2f}" if kept[q] else "n/a" for q in "1234")
        lines.append(f"| {rule} | {ratio:g} | {len(seeds)} | {mean_std(before)} | {mean_std(after)} | "
                     f"{mean_std(meank)} | {qf} | {kf} | {mean_std(walls, 0)} |")
    return "\n".join(lines)


def _mean_at_n(res: dict):
    """mean@n of the toy benchmark from an eval.run results file."""
    bench = res["benchmarks"]["toy"] if "benchmarks" in res else res
    metrics = bench.get("metrics", bench)
    for key in ("mean@%d" % res.get("config", {}).get("n", 0), "mean"):
        if key in metrics:
            v = metrics[key]
            return v["value"] if isinstance(v, dict) else v
    for key, v in metrics.items():
        if key.startswith("mean@"):
            return v["value"] if isinstance(v, dict) else v
    return None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--world", default="artifacts/toy", help="toy world folder (built if missing)")
    ap.add_argument("--out", default="runs/toy-sweep", help="one sub-folder per run")
    ap.add_argument("--rules", default=DEFAULT_RULES, help=f"RULE:RATIO list (default {DEFAULT_RULES})")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=200, help="optimizer steps per run (the recipe's own)")
    ap.add_argument("--eval-limit", type=int, default=256, help="held-out problems scored")
    ap.add_argument("--n", type=int, default=4, help="samples per problem for mean@n")
    ap.add_argument("--report", default=None, help="Markdown report (default OUT/report.md)")
    ap.add_argument("override", nargs="*", help="extra dotted overrides for every run")
    args = ap.parse_args(argv)
    rules = parse_rules(args.rules)
    world = Path(args.world).resolve()
    if not all((world / n).exists() for n in ("student", "teacher", "train.jsonl", "heldout.jsonl")):
        from opsd.toy.build import ensure_world  # a world that is present is used as it is

        ensure_world(str(world))
    out_root = Path(args.out).resolve()
    print("[0] the student before OPD", flush=True)
    before = eval_one(args, world, "before", 0.0, 0, out_root / "before", model=world / "student")
    total = len(rules) * len(args.seeds)
    done = 0
    for rule, ratio in rules:
        for seed in args.seeds:
            d = out_root / run_name(rule, ratio, seed)
            done += 1
            print(f"[{done}/{total}] {d.name}", flush=True)
            train_one(args, world, rule, ratio, seed, d)
            eval_one(args, world, rule, ratio, seed, d)
    report = ["# TIP rules on the embedded default", "",
              f"{len(args.seeds)} seed(s) per rule, {args.steps} steps, {args.eval_limit} held-out problems; "
              f"`python recipes/toy/tip_sweep.py --seeds {' '.join(map(str, args.seeds))} --steps {args.steps}`", "",
              f"The student before OPD: mean@{args.n} (T=1) {_mean_at_n(json.loads(before.read_text())):.3f} "
              f"(same {args.eval_limit} problems, same sampling seed).", "",
              summarize(out_root, rules, args.seeds, args.n), ""]
    seed0 = [out_root / run_name(r, q, args.seeds[0]) / "eval_toy.json" for r, q in rules]
    if rules[0][0] == "all" and len(seed0) > 1:
        cmp = subprocess.run([sys.executable, "-m", "eval.compare", *map(str, seed0),
                              "--plot", str(out_root / "accuracy_vs_ratio.png")],
                             cwd=ROOT, capture_output=True, text=True)
        report += [f"## eval.compare, seed {args.seeds[0]} (baseline: all)", "", cmp.stdout.strip() or cmp.stderr.strip(), ""]
    text = "\n".join(report)
    path = Path(args.report) if args.report else out_root / "report.md"
    path.write_text(text)
    print(text)
    print(f"report: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
