"""The paper's tables at CPU scale: TIP rules × seeds on the embedded default, in the paper's layout.

    python recipes/toy/tip_sweep.py --tables 3,4,5,6,8           # make cpu-tables (an hour or more)
    python recipes/toy/tip_sweep.py --rules all:1.0,soft_or:0.2 --seeds 0 --steps 10
    python recipes/toy/tip_sweep.py --tables 3 --seeds 0 --steps 2 --world /tmp/quick   # smoke
    python recipes/toy/tip_sweep.py --tables 7                   # Table 7 on the agentic toy world

Table 7 (multi-turn tool calling, DeepPlanning in the paper) runs on the agentic toy world
(``opsd.toy.agent_build``, ``recipes/toy/agent.yaml``) and on its own (``--tables 7``): its score is
the trainer's greedy held-out episode accuracy after OPD (an episode is right or wrong as a whole; no
``eval.run`` pass), and its report adds the TIP quadrant shares per token role (tool call / free
text / final answer), which show where the Q3 tokens of agentic rollouts sit.

Rows: ``--tables`` takes the same rules and retention ratios as ``recipes/paper/table*.sh`` (the
union over the tables; every table also needs the all-token baseline); ``--rules RULE:RATIO,...``
picks them by hand instead. Every (rule, ratio, seed) is one fresh ``python -m opsd.train`` on
``recipes/toy/opd.yaml`` with ``tip.rule``/``tip.ratio``/``train.seed`` overrides (rule ``all`` also
goes through the ``tip`` section, which keeps every token like plain OPD and logs the quadrants),
then ``python -m eval.run --bench toy`` (mean@n at T = 1, fixed evaluation seed 0) on its export.

Seeds: ``train.seed`` changes the order of the training prompts, the rollout sampling and the TIP
selector's sampling (``tip.seed`` defaults to ``train.seed``); it does not change the world (the
teacher, the student's starting weights and the prompt files are those of ``--world``), nor the
held-out problems or the evaluation's sampling seed. So the spread over seeds is the spread of OPD
itself on one fixed world.

Resumable: a run whose folder holds its export and metrics is not retrained, a complete results
file is not re-evaluated; interrupt and rerun the same command to continue. The report (Markdown,
``OUT/report.md``) has one table per paper table in ``eval.compare``'s layout, each cell the mean ±
SE over seeds, the paired difference to the all-token baseline (per seed, then mean ± SE) and the
paper's numbers in rows of their own; a per-rule summary (greedy accuracy before/after, TIP
quadrants, kept share per quadrant, kept tokens, wall time); every run's numbers; the claim lines
(``claims``); and ``OUT/accuracy_vs_ratio.png`` (Figure 1's shape). ``--readme docs/cpu-tables.md`` rewrites
the block between the ``cpu-tables`` markers of that file with the claim lines.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from eval import metrics
from opsd.config import load_config

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_RULES = "all:1.0,entropy_sample:0.5,soft_or:0.5,soft_or:0.2,q3:0.2"
PAIR = "toy"  # the pair tag of every run (eval.compare groups by it)
BENCH = "toy"
# The paper's rows per table, as recipes/paper/table*.sh run them (rule, retention ratio).
TABLE_ROWS: Dict[str, List[Tuple[str, float]]] = {
    "3": [("all", 1.0), ("entropy_sample", 0.5), ("entropy_sample", 0.2), ("entropy_sample", 0.1)],
    "4": [("all", 1.0), ("q3", 0.2), ("q3", 0.1)],
    "5": [("all", 1.0), ("entropy_sample", 0.5), ("entropy_sample", 0.2), ("soft_or", 0.5), ("soft_or", 0.2)],
    "6": [("all", 1.0), ("soft_or", 0.5), ("soft_or_bottom", 0.5)],
    "8": [("all", 1.0)] + [(r, q) for r in ("entropy_sample", "adaptive_kl") for q in (0.5, 0.2, 0.1)],
}
# Table 7 on the agentic toy world: the rows of recipes/paper/table7.sh.
TABLE7_ROWS: List[Tuple[str, float]] = [("all", 1.0), ("entropy_sample", 0.5), ("entropy_sample", 0.2),
                                        ("q3", 0.2), ("soft_or", 0.5), ("soft_or", 0.2)]
AGENT_RECIPE, AGENT_WORLD = "recipes/toy/agent.yaml", "artifacts/agent_toy"
ROLES = ("tool_call", "text", "answer")  # opsd.rollout.agent.ROLE_NAMES
README_BEGIN, README_END = "<!-- cpu-tables:begin -->", "<!-- cpu-tables:end -->"
AGENT_BEGIN, AGENT_END = "<!-- cpu-table7:begin -->", "<!-- cpu-table7:end -->"

Rule = Tuple[str, float]


# ---------------------------------------------------------------------------------------------
# what to run


def parse_rules(text: str) -> List[Rule]:
    out = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        rule, _, ratio = item.partition(":")
        try:
            out.append((rule, float(ratio or 1.0)))
        except ValueError:
            raise SystemExit(f"--rules: {item!r} is not RULE:RATIO (e.g. soft_or:0.2)")
    return out


def rules_for_tables(tables: Sequence[str]) -> List[Rule]:
    """The union of the tables' rows, all-token baseline first, each once."""
    if "7" in tables:
        if list(tables) != ["7"]:
            raise SystemExit("--tables: Table 7 runs on the agentic toy world; run `--tables 7` on its own")
        return list(TABLE7_ROWS)
    bad = [t for t in tables if t not in TABLE_ROWS]
    if bad:
        raise SystemExit(f"--tables: {bad} not among the CPU tables {sorted(TABLE_ROWS) + ['7']}")
    rows = [("all", 1.0)] + [r for t in tables for r in TABLE_ROWS[t]]
    return list(dict.fromkeys(rows))


def run_name(rule: str, ratio: float, seed: int) -> str:
    return f"{rule}-{ratio:g}-s{seed}"


def read_metrics(path: Path) -> List[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def trained(out: Path) -> bool:
    return (out / "export" / "config.json").exists() and (out / "metrics.jsonl").exists()


def evaluated(out: Path) -> bool:
    try:
        return json.loads((out / "eval_toy.json").read_text()).get("status") == "complete"
    except (OSError, ValueError):
        return False


def run_key(args, world: Path) -> dict:
    """What a finished run's numbers depend on besides its rule and seed: the world (its build
    fingerprint) and the sweep's settings. A run recorded with another key is stale."""
    try:
        fingerprint = json.loads((world / "build_info.json").read_text()).get("fingerprint")
    except (OSError, ValueError):
        fingerprint = None
    return {"world": fingerprint, **{k: getattr(args, k, None) for k in ("steps", "eval_limit", "n")},
            "override": list(getattr(args, "override", None) or [])}


def stale(out: Path, key: dict) -> bool:
    """True if ``out`` holds a run made for another world or other settings. A run without a
    record (made before records were kept) counts as current."""
    try:
        return json.loads((out / "sweep_run.json").read_text()) != key
    except (OSError, ValueError):
        return False


def set_aside(out: Path) -> Path:
    """Move a stale run to OUT/stale/<name>-<n> (kept, never deleted) and return its new place."""
    k = 0
    while (out.parent / "stale" / f"{out.name}-{k}").exists():
        k += 1
    dest = out.parent / "stale" / f"{out.name}-{k}"
    dest.parent.mkdir(parents=True, exist_ok=True)
    out.rename(dest)
    return dest


def _timing(out: Path) -> dict:
    try:
        return json.loads((out / "timing.json").read_text())
    except (OSError, ValueError):
        return {}


def _record_time(out: Path, key: str, seconds: float) -> None:
    t = _timing(out)
    t[key] = round(seconds, 1)
    (out / "timing.json").write_text(json.dumps(t) + "\n")


def train_one(args, world: Path, rule: str, ratio: float, seed: int, out: Path) -> None:
    recipe = AGENT_RECIPE if args.agent else "recipes/toy/opd.yaml"
    cmd = [sys.executable, "-m", "opsd.train", "--config", str(ROOT / recipe),
           f"model.student={world / 'student'}", f"model.teacher={world / 'teacher'}",
           f"data.train_files=[{world / 'train.jsonl'}]", f"train.eval_files=[{world / 'heldout.jsonl'}]",
           f"train.output_dir={out}", f"train.seed={seed}", f"train.max_steps={args.steps}",
           f"train.eval_limit={args.eval_limit}", "train.resume=never", "logging.progress=false",
           f"tip.rule={rule}", f"tip.ratio={ratio}", *args.override]
    t0 = time.time()
    subprocess.run(cmd, check=True, cwd=ROOT)
    _record_time(out, "train_s", time.time() - t0)


def eval_one(args, world: Path, model: Path, res: Path, tags: Sequence[str]) -> None:
    res.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "eval.run", "--model", str(model), "--bench", BENCH, "--n", str(args.n),
           "--temperature", "1.0", "--limit", str(args.eval_limit), "--seed", "0", "--out", str(res),
           "--no-progress", *[x for t in tags for x in ("--tag", t)]]
    t0 = time.time()
    subprocess.run(cmd, check=True, cwd=ROOT, env={**os.environ, "OPSD_TOY_DIR": str(world)})
    _record_time(res.parent, "eval_s", time.time() - t0)


def run_all(args, world: Path, out_root: Path, rules: Sequence[Rule], seeds: Sequence[int],
            train: Callable = train_one, evaluate: Callable = eval_one) -> int:
    """Train and evaluate what is not done yet; returns how many steps (train or eval) ran."""
    ran, key = 0, run_key(args, world)
    before = out_root / "before"
    if before.exists() and stale(before, key):
        print(f"[0] before: made for another world or other settings, moved to {set_aside(before)}", flush=True)
    if getattr(args, "agent", False):  # the trainer's own greedy evaluation (before and after) is the score
        evaluate = None
    elif not evaluated(before):
        print("[0] the student before OPD", flush=True)
        evaluate(args, world, world / "student", before / "eval_toy.json", [f"pair={PAIR}-before"])
        (before / "sweep_run.json").write_text(json.dumps(key) + "\n")
        ran += 1
    total = len(rules) * len(seeds)
    for k, (rule, ratio, seed) in enumerate(((r, q, s) for r, q in rules for s in seeds), 1):
        d = out_root / run_name(rule, ratio, seed)
        if d.exists() and stale(d, key):
            print(f"[{k}/{total}] {d.name}: made for another world or other settings, moved to "
                  f"{set_aside(d)}", flush=True)
        state = "done" if trained(d) and (evaluate is None or evaluated(d)) else "running"
        print(f"[{k}/{total}] {d.name} ({state})", flush=True)
        if not trained(d):
            train(args, world, rule, ratio, seed, d)
            (d / "sweep_run.json").write_text(json.dumps(key) + "\n")
            ran += 1
        if evaluate is not None and not evaluated(d):
            evaluate(args, world, d / "export", d / "eval_toy.json",
                     [f"pair={PAIR}", f"rule={rule}", f"ratio={ratio:g}", f"seed={seed}"])
            ran += 1
    return ran


# ---------------------------------------------------------------------------------------------
# collecting and aggregating


@dataclass
class RunResult:
    rule: str
    ratio: float
    seed: int
    mean_at_n: float  # percent, mean@n at T = 1 on the held-out problems
    greedy_before: Optional[float]  # percent, the trainer's own greedy evaluation
    greedy_after: Optional[float]
    kept_tokens: float  # tokens that entered the loss, summed over steps
    tokens: float  # response tokens seen, summed over steps
    wall_s: Optional[float]  # training + evaluation
    quadrants: Dict[str, float] = field(default_factory=dict)  # q1..q4 fraction (mean over steps)
    kept_share: Dict[str, float] = field(default_factory=dict)  # q1..q4 kept share (token-weighted)
    roles: Dict[str, Dict[str, float]] = field(default_factory=dict)  # agentic: role -> q1..q4, share, kept


def mean_at_n(results_path: Path) -> float:
    """mean@n in percent, computed by eval.compare from the results file."""
    from eval.compare import Run
    from eval.results import load_results

    v = Run(results_path, load_results(results_path)).value(BENCH)
    if v is None:
        raise SystemExit(f"{results_path}: no problems of benchmark {BENCH!r}")
    return v.mean


def collect_run(d: Path, rule: str, ratio: float, seed: int, agent: bool = False) -> Optional[RunResult]:
    """One run's numbers; ``agent``: the score is the greedy accuracy after OPD (no eval.run file)."""
    if not (trained(d) and (agent or evaluated(d))):
        return None
    m = read_metrics(d / "metrics.jsonl")
    evals = [100 * r["eval/accuracy"] for r in m if "eval/accuracy" in r]
    steps = [r for r in m if "tokens" in r and "kept_frac" in r]
    quad, kept = {}, {}
    tip = [r for r in steps if "tip/q1_frac" in r]
    for q in "1234":
        if tip:
            quad[f"q{q}"] = statistics.mean(r[f"tip/q{q}_frac"] for r in tip)
            w = [r[f"tip/q{q}_frac"] * r["tokens"] for r in tip]
            if sum(w) > 0:  # token-weighted over steps (an empty quadrant logs kept share 0)
                kept[f"q{q}"] = sum(r[f"tip/q{q}_kept"] * x for r, x in zip(tip, w)) / sum(w)
    t = _timing(d)
    wall = sum(t.values()) if t else None
    after = evals[-1] if len(evals) > 1 else None
    if agent and after is None:
        raise SystemExit(f"{d}/metrics.jsonl: no evaluation after training (train.eval_files unset?)")
    score = after if agent else mean_at_n(d / "eval_toy.json")
    return RunResult(rule, ratio, seed, score, evals[0] if evals else None, after,
                     sum(r["kept_frac"] * r["tokens"] for r in steps), sum(r["tokens"] for r in steps), wall,
                     quad, kept, role_quadrants(tip))


def role_quadrants(tip_steps: Sequence[dict]) -> Dict[str, Dict[str, float]]:
    """Per token role: mean over steps of its quadrant shares, its share of tokens and kept share."""
    out = {}
    for role in ROLES:
        rows = [r for r in tip_steps if f"tip/{role}/q1_frac" in r]
        if rows:
            keys = [f"q{q}_frac" for q in "1234"] + ["frac", "kept_frac"]
            out[role] = {k: statistics.mean(r[f"tip/{role}/{k}"] for r in rows) for k in keys}
    return out


Agg = Dict[Rule, Dict[int, RunResult]]


def collect(out_root: Path, rules: Sequence[Rule], seeds: Sequence[int], agent: bool = False) -> Agg:
    agg: Agg = {}
    for rule, ratio in rules:
        for seed in seeds:
            r = collect_run(out_root / run_name(rule, ratio, seed), rule, ratio, seed, agent)
            if r is not None:
                agg.setdefault((rule, ratio), {})[seed] = r
    return agg


@dataclass
class Estimate:
    mean: float
    se: Optional[float]  # standard error over seeds (None with one seed)
    k: int  # seeds

    def __str__(self) -> str:
        return f"{self.mean:.1f}" + (f" ± {self.se:.1f}" if self.se is not None else "")

    def signed(self) -> str:
        return f"{self.mean:+.1f}" + (f" ± {self.se:.1f}" if self.se is not None else "")


def estimate(xs: Sequence[float]) -> Optional[Estimate]:
    """Mean ± SE over seeds (``eval.metrics``' estimate, over seeds instead of problems)."""
    xs = [x for x in xs if x is not None]
    if not xs:
        return None
    e = metrics.mean_and_stderr(xs)
    return Estimate(e.value, e.stderr, e.num_problems)


def accuracy(agg: Agg, rule: Rule) -> Optional[Estimate]:
    return estimate([r.mean_at_n for r in agg.get(rule, {}).values()])


def paired(agg: Agg, a: Rule, b: Rule) -> Optional[Estimate]:
    """a − b in points, per seed (seeds both have), then mean ± SE over seeds."""
    ra, rb = agg.get(a, {}), agg.get(b, {})
    seeds = sorted(set(ra) & set(rb))
    if not seeds:
        return None
    e = metrics.paired_difference({s: ra[s].mean_at_n for s in seeds}, {s: rb[s].mean_at_n for s in seeds})
    return Estimate(e.value, e.stderr, e.num_problems)


# ---------------------------------------------------------------------------------------------
# rendering: eval.compare's paper layouts, cells from the seed aggregates


@dataclass
class _Stub:
    """What eval.compare's layout builders read from a run: its pair and benchmarks."""

    pair: str
    benches: List[str]


def _layout(number: str):
    from eval import compare
    from eval.paper_tables import MATH_BENCHES, TABLES

    stubs = [_Stub(PAIR, [BENCH])]
    if number != "8":  # Table 8's layout already adds the paper's benchmarks (pair not stated)
        stubs += [_Stub(p, list(MATH_BENCHES)) for p in TABLES[number].pairs]
    builders = {"6": compare.layout_table6, "8": compare.layout_table8}
    return builders[number](stubs) if number in builders else compare.layout_pair_rows(number, stubs)


def _paper_cell(slot) -> str:
    from eval.paper_tables import TABLES

    c = slot.paper
    if c is None:
        return "—"
    base = TABLES[c.table].cell(c.pair, c.benchmark, "all", 1.0)
    d = f" ({c.mean - base.mean:+.1f})" if base is not None and c.rule != "all" else ""
    return f"{c.mean:.1f}" + (f" ± {c.se:.1f}" if c.se is not None else "") + d


def _our_cell(slot, agg: Agg) -> str:
    rule = next(((r, slot.ratio) for r in (slot.rule,) + tuple(slot.also_rules) if (r, slot.ratio) in agg), None)
    if rule is None:
        return "—"
    d = paired(agg, rule, ("all", 1.0)) if rule != ("all", 1.0) else None
    return f"{accuracy(agg, rule)}" + (f" ({d.signed()})" if d else "")


def render_table(number: str, agg: Agg) -> str:
    from eval.paper_tables import TABLES

    cols, rows = _layout(number)
    out = [f"### Table {number} (CPU): {TABLES[number].title}", "",
           "| | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for label, slots in rows:
        ours = any(s is not None and s.pair == PAIR and s.bench == BENCH for s in slots)
        if ours:  # Table 8's rows go on with the method ("toy / toy / Adaptive KL")
            label = "**toy world (ours), held-out mean@n**" + "".join(" / " + p for p in label.split(" / ")[2:])
        elif label.startswith("toy / "):  # Table 8: the paper's benchmarks under our pair's rows
            label = "paper (pair not stated) / " + label[len("toy / "):]
        else:
            label = "paper: " + label
        cells = [("—" if s is None else _our_cell(s, agg) if s.pair == PAIR and s.bench == BENCH else _paper_cell(s))
                 for s in slots]
        if ours or any(c != "—" for c in cells):
            out.append(f"| {label} | " + " | ".join(cells) + " |")
    out += ["", "Ours: mean ± SE over seeds (paired Δ to all tokens, per seed, mean ± SE). Paper: value ± its "
            "± (Δ to the pair's all-token baseline)."]
    return "\n".join(out)


def render_table7(agg: Agg) -> str:
    """Table 7's rows on the agentic toy: greedy held-out episode accuracy after OPD (mean ± SE over
    seeds, paired Δ to all tokens) beside the paper's DeepPlanning Avg@16 / Best@16 (14B / 32B teacher)."""
    from eval.paper_tables import TABLES

    def paper(rule: str, ratio: float, metric: str) -> str:
        vals = []
        for pair in ("qwen3-14b-1.7b", "qwen3-32b-1.7b"):
            hits = [c for c in TABLES["7"].cells if c.pair == pair and c.metric == metric
                    and rule in (c.rule,) + tuple(c.also_rules) and abs(c.ratio - ratio) < 1e-9]
            vals.append(f"{hits[0].mean:.1f}" if hits else "—")
        return " / ".join(vals)

    out = [f"### Table 7 (CPU, agentic toy world): {TABLES['7'].title}", "",
           "| rule | ratio | ours: greedy episode accuracy after OPD (Δ vs all) | paper Avg@16 (14B / 32B) | "
           "paper Best@16 (14B / 32B) |", "|---|---|---|---|---|"]
    for rule in TABLE7_ROWS:
        d = paired(agg, rule, ("all", 1.0)) if rule != ("all", 1.0) else None
        ours = "—" if rule not in agg else f"{accuracy(agg, rule)}" + (f" ({d.signed()})" if d else "")
        out.append(f"| {rule[0]} | {rule[1]:g} | {ours} | {paper(*rule, 'avg@16')} | {paper(*rule, 'best@16')} |")
    out += ["", "Ours: percent, mean ± SE over seeds (paired Δ to all tokens, per seed). Paper: DeepPlanning "
            "travel, Qwen3-1.7B student (values from the paper's text; its table cells were lost in extraction)."]
    return "\n".join(out)


def render_roles(agg: Agg, rules: Sequence[Rule]) -> str:
    """TIP quadrants per token role (mean over steps and seeds): where the Q3 tokens sit."""
    lines = ["| rule | ratio | role | share of tokens | Q1 / Q2 / Q3 / Q4 | kept |", "|---|---|---|---|---|---|"]
    for rule in rules:
        runs = list(agg.get(rule, {}).values())
        for role in ROLES:
            rs = [r.roles[role] for r in runs if role in r.roles]
            if not rs:
                continue
            m = {k: statistics.mean(x[k] for x in rs) for k in rs[0]}
            q = " / ".join(f"{m[f'q{i}_frac']:.2f}" for i in "1234")
            lines.append(f"| {rule[0]} | {rule[1]:g} | {role} | {m['frac']:.2f} | {q} | {m['kept_frac']:.2f} |")
    return "\n".join(lines)


def agent_claims(agg: Agg) -> List[str]:
    """Table 7's claim, tested on the agentic toy."""
    d = paired(agg, ("q3", 0.2), ("all", 1.0))
    lines = ["Q3-only 20 % ≥ all tokens on multi-turn tool use (Table 7) — " +
             _verdict_ge(d, "Δ(Q3 20 % − all) =")]
    d = paired(agg, ("soft_or", 0.2), ("all", 1.0))
    lines.append("Soft-OR 20 % ≥ all tokens on multi-turn tool use (Table 7, Best@16) — " +
                 _verdict_ge(d, "Δ(Soft-OR 20 % − all) ="))
    return lines


def render_summary(agg: Agg, rules: Sequence[Rule], n: int, score: Optional[str] = None) -> str:
    """One row per rule; ``score`` names the column the paired Δ is taken on (default mean@n at T=1)."""
    lines = [f"| rule | ratio | seeds | greedy before | greedy after | {score or f'mean@{n} (T=1)'} | Δ vs all (paired) | "
             "Q1 / Q2 / Q3 / Q4 fraction | kept share Q1 / Q2 / Q3 / Q4 | kept tokens / run | wall s / run |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for rule in rules:
        runs = list(agg.get(rule, {}).values())
        if not runs:
            lines.append(f"| {rule[0]} | {rule[1]:g} | 0 | not run yet | | | | | | | |")
            continue
        d = paired(agg, rule, ("all", 1.0)) if rule != ("all", 1.0) else None
        qf = " / ".join(f"{statistics.mean(r.quadrants[q] for r in runs):.2f}" for q in ("q1", "q2", "q3", "q4")) \
            if all(r.quadrants for r in runs) else "n/a"
        kf = " / ".join(_mean_str([r.kept_share.get(q) for r in runs], 2) for q in ("q1", "q2", "q3", "q4"))
        lines.append(f"| {rule[0]} | {rule[1]:g} | {len(runs)} | {estimate([r.greedy_before for r in runs])} | "
                     f"{estimate([r.greedy_after for r in runs])} | {accuracy(agg, rule)} | "
                     f"{d.signed() if d else '—'} | {qf} | {kf} | "
                     f"{statistics.mean(r.kept_tokens for r in runs):,.0f} | {_mean_str([r.wall_s for r in runs], 0)} |")
    return "\n".join(lines)


def _mean_str(xs, digits: int) -> str:
    xs = [x for x in xs if x is not None]
    return f"{statistics.mean(xs):.{digits}f}" if xs else "n/a"


def render_runs(agg: Agg, score: str = "mean@n") -> str:
    lines = [f"| run | {score} | greedy before → after | kept tokens | of tokens | wall s |", "|---|---|---|---|---|---|"]
    for rule, by_seed in agg.items():
        for seed, r in sorted(by_seed.items()):
            ga = f"{r.greedy_before:.1f} → {r.greedy_after:.1f}" if r.greedy_after is not None else "n/a"
            lines.append(f"| {run_name(rule[0], rule[1], seed)} | {r.mean_at_n:.1f} | {ga} | {r.kept_tokens:,.0f} | "
                         f"{r.tokens:,.0f} | {_mean_str([r.wall_s], 0)} |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# the paper's claims, tested on the toy


def _verdict(d: Optional[Estimate], holds: bool, what: str) -> str:
    if d is None:
        return "not run yet"
    sig = d.se is not None and abs(d.mean) > 2 * d.se
    noise = "beyond 2 SE" if sig else "within 2 SE" if d.se is not None else "one seed, no SE"
    return f"{'holds' if holds else 'does not hold'}: {what} {d.signed()} points ({noise}, {d.k} seeds)"


def _verdict_ge(d: Optional[Estimate], what: str) -> str:
    """An "A ≥ B" claim: holds or fails only when Δ is beyond 2 SE (by its sign with one seed);
    a Δ within 2 SE neither confirms nor refutes it at this scale, and says so."""
    if d is None or d.se is None or abs(d.mean) > 2 * d.se:
        return _verdict(d, d is not None and d.mean >= 0, what)
    return f"undecided, within noise: {what} {d.signed()} points (within 2 SE, {d.k} seeds)"


def _verdict_within(d: Optional[Estimate], lo: float, hi: float, what: str) -> str:
    """A claim that Δ lies in [lo, hi] ("near": [-m, m]; "no better": (-inf, m]). It holds only when
    the whole interval Δ ± 2 SE lies inside, fails only when the whole interval lies outside, and is
    undecided otherwise -- so noisier runs make it harder, not easier, to pass. One seed (no SE)
    decides nothing."""
    if d is None:
        return "not run yet"
    if d.se is None:
        return f"undecided, one seed: {what} {d.signed()} points (no SE, {d.k} seed)"
    low, high = d.mean - 2 * d.se, d.mean + 2 * d.se
    if lo <= low and high <= hi:
        return f"holds: {what} {d.signed()} points (Δ ± 2 SE inside the margin, {d.k} seeds)"
    if high < lo or low > hi:
        return f"does not hold: {what} {d.signed()} points (Δ ± 2 SE outside the margin, {d.k} seeds)"
    return f"undecided, within noise: {what} {d.signed()} points (Δ ± 2 SE crosses the margin, {d.k} seeds)"


def claims(agg: Agg, margin: float = 2.0) -> List[str]:
    """One line per claim of the paper, with its verdict on the toy, from the seed aggregates."""
    all_ = ("all", 1.0)
    lines = []
    d = paired(agg, ("entropy_sample", 0.5), all_)
    lines.append("50 % entropy sampling ≥ all tokens (Table 3) — " +
                 _verdict_ge(d, "Δ(entropy 50 % − all) ="))
    parts = []
    for q in (0.2, 0.1):
        d = paired(agg, ("q3", q), all_)
        parts.append(f"{q:.0%} " + _verdict_within(d, -margin, margin, "Δ(Q3 − all) ="))
    lines.append(f"Q3-only at 10–20 % near all tokens (Table 4; near = Δ ± 2 SE inside ±{margin:g} points) — "
                 + "; ".join(parts))
    d = paired(agg, ("soft_or", 0.2), ("entropy_sample", 0.2))
    lines.append("Soft-OR ≥ entropy-only at 20 % (Table 5) — " +
                 _verdict_ge(d, "Δ(Soft-OR − entropy) ="))
    d = paired(agg, ("soft_or", 0.5), ("soft_or_bottom", 0.5))
    lines.append("top 50 % ≫ bottom 50 % by Soft-OR (Table 6; ≫ = positive beyond 2 SE) — " +
                 _verdict(d, d is not None and d.se is not None and d.mean > 2 * d.se, "Δ(top − bottom) ="))
    parts = []
    for q in (0.5, 0.2, 0.1):
        d = paired(agg, ("adaptive_kl", q), ("entropy_sample", q))
        parts.append(f"{q:.0%} " + _verdict_within(d, -math.inf, margin, "Δ(adaptive − sampling) ="))
    lines.append(f"adaptive KL no better than sampling (Table 8; no better = Δ + 2 SE ≤ {margin:g} points) — "
                 + "; ".join(parts))
    return lines


def _claims_block(markers: Tuple[str, str], agg: Agg, runs: str, seeds: Sequence[int], score: str,
                  wall_s: float, lines: List[str], empty: str) -> str:
    """The generated block between ``markers``: what was run (``runs`` after the run count), then
    one line per claim; ``empty``: what the block will hold once run."""
    head = (f"Generated by `make cpu-tables` ({runs.format(sum(len(v) for v in agg.values()))}, seeds "
            f"{', '.join(map(str, seeds))}, {score}; total wall time {wall_s / 60:.0f} min). "
            "Paired Δ over seeds, ± one SE:") if agg else f"Not yet run: `make cpu-tables` writes {empty} here."
    return "\n".join([markers[0], head, ""] + [f"- {c}" for c in lines] + [markers[1]])


def readme_block(agg: Agg, seeds: Sequence[int], steps: int, n: int, wall_s: float) -> str:
    return _claims_block((README_BEGIN, README_END), agg, f"{{}} runs: {steps} OPD steps each", seeds,
                         f"mean@{n} at T = 1 on the held-out problems", wall_s, claims(agg), "the claim lines")


def agent_readme_block(agg: Agg, seeds: Sequence[int], steps, wall_s: float) -> str:
    return _claims_block((AGENT_BEGIN, AGENT_END), agg,
                         f"Table 7: {{}} runs on the agentic toy world, {steps} OPD steps each", seeds,
                         "greedy held-out episode accuracy", wall_s, agent_claims(agg), "the Table 7 claim lines")


def update_readme(path: Path, block: str) -> None:
    """Replace the block whose markers open and close ``block`` (its first and last line)."""
    begin, end = block.splitlines()[0], block.splitlines()[-1]
    text = path.read_text()
    if begin not in text or end not in text:
        raise SystemExit(f"{path}: no '{begin}' … '{end}' block to replace")
    head, rest = text.split(begin, 1)
    tail = rest.split(end, 1)[1]
    path.write_text(head + block + tail)


# ---------------------------------------------------------------------------------------------
# the figure


def plot(agg: Agg, path: Path) -> None:
    """Accuracy vs retention ratio per rule, ours (mean ± SE over seeds) and the paper's Qwen3-8B→4B
    MATH-500 (Figure 1's shape)."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    from eval.paper_tables import RULE_LABELS, find

    fig, (ax, axp) = plt.subplots(1, 2, figsize=(9.5, 3.6))
    base = accuracy(agg, ("all", 1.0))
    rules = list(dict.fromkeys(r for r, _ in agg if r != "all"))
    for k, rule in enumerate(rules):
        pts = sorted((q, accuracy(agg, (rule, q))) for r, q in agg if r == rule)
        ax.errorbar([q for q, _ in pts], [e.mean for _, e in pts], yerr=[e.se or 0 for _, e in pts],
                    marker="o", capsize=3, color=f"C{k}", label=RULE_LABELS.get(rule, rule))
        paper = sorted({(c.ratio, c.mean) for q in (0.1, 0.2, 0.5) for c in find("qwen3-8b-4b", "math500", rule, q)})
        if rule == "adaptive_kl":
            paper = sorted({(c.ratio, c.mean) for q in (0.1, 0.2, 0.5)
                            for c in find("unstated", "math500", rule, q, table="8")})
        if paper:
            axp.plot(*zip(*paper), marker="x", linestyle="--", color=f"C{k}", label=RULE_LABELS.get(rule, rule))
    if base:
        ax.axhline(base.mean, color="gray", linestyle=":", label="all tokens")
        ax.axhspan(base.mean - (base.se or 0), base.mean + (base.se or 0), color="gray", alpha=0.15)
    axp.axhline(76.7, color="gray", linestyle=":", label="all tokens")
    ax.set_title("toy world (ours): held-out mean@n", fontsize=9)
    axp.set_title("paper: Qwen3-8B→4B, MATH-500 (adaptive KL: Table 8)", fontsize=9)
    for a in (ax, axp):
        a.set_xlabel("retention ratio")
        a.set_ylabel("accuracy (%)")
        a.grid(alpha=0.3)
        a.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------


def report(args, out_root: Path, rules: Sequence[Rule], tables: Sequence[str], wall_s: float) -> str:
    if getattr(args, "agent", False):
        return report_agent(args, out_root, rules, wall_s)
    agg = collect(out_root, rules, args.seeds)
    before = out_root / "before" / "eval_toy.json"
    total_run_s = sum(r.wall_s or 0 for v in agg.values() for r in v.values())
    parts = ["# The paper's tables at CPU scale (embedded default)", "",
             f"{len(args.seeds)} seed(s) per row ({', '.join(map(str, args.seeds))}), {args.steps} OPD steps per "
             f"run, mean@{args.n} at T = 1 on {args.eval_limit} held-out problems. Seeds change prompt order, "
             "rollout sampling and selection sampling, not the world.",
             f"Wall time: this invocation {wall_s:.0f} s; all runs' training + evaluation {total_run_s:.0f} s.", ""]
    if evaluated(out_root / "before"):
        parts += [f"The student before OPD: mean@{args.n} {mean_at_n(before):.1f} %.", ""]
    parts += ["## Claims", ""] + [f"- {c}" for c in claims(agg)] + [""]
    for t in tables:
        parts += [render_table(t, agg), ""]
    parts += ["## Per rule", "", render_summary(agg, rules, args.n), "", "## Per run", "", render_runs(agg), "",
              "![accuracy vs retention ratio](accuracy_vs_ratio.png)", ""]
    if agg:
        plot(agg, out_root / "accuracy_vs_ratio.png")
    return "\n".join(parts)


def report_agent(args, out_root: Path, rules: Sequence[Rule], wall_s: float) -> str:
    agg = collect(out_root, rules, args.seeds, agent=True)
    total_run_s = sum(r.wall_s or 0 for v in agg.values() for r in v.values())
    parts = ["# Table 7 at CPU scale (agentic toy world)", "",
             f"{len(args.seeds)} seed(s) per row ({', '.join(map(str, args.seeds))}), {args.steps} OPD steps per run "
             f"(recipes/toy/agent.yaml), greedy accuracy on {args.eval_limit} held-out episodes played through the "
             "agent loop. Seeds change prompt order, rollout sampling and selection sampling, not the world.",
             f"Wall time: this invocation {wall_s:.0f} s; all runs' training {total_run_s:.0f} s.", "",
             "## Claims", ""] + [f"- {c}" for c in agent_claims(agg)] + [""]
    parts += [render_table7(agg), "", "## TIP quadrants per token role", "", render_roles(agg, rules), "",
              "## Per rule", "", render_summary(agg, rules, args.n, "score (= greedy after)"), "", "## Per run", "",
              render_runs(agg, "score"), ""]
    return "\n".join(parts)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--world", default=None, help="toy world folder, built if missing (default artifacts/toy; "
                    f"{AGENT_WORLD} with --tables 7)")
    ap.add_argument("--out", default=None, help="one sub-folder per run (default runs/cpu-tables with "
                    "--tables, runs/cpu-table7 with --tables 7, else runs/toy-sweep)")
    ap.add_argument("--tables", default=None, help="paper tables, e.g. 3,4,5,6,8 (their rows and layouts)")
    ap.add_argument("--rules", default=None, help=f"RULE:RATIO list instead of --tables (default {DEFAULT_RULES})")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=None, help="optimizer steps per run (default: the recipe's own, "
                    "200 for the math toy, 40 for the agentic toy)")
    ap.add_argument("--eval-limit", type=int, default=256, help="held-out problems scored")
    ap.add_argument("--n", type=int, default=4, help="samples per problem for mean@n")
    ap.add_argument("--report", default=None, help="Markdown report (default OUT/report.md)")
    ap.add_argument("--readme", default=None, help="rewrite the claim block between the cpu-tables markers")
    ap.add_argument("--report-only", action="store_true", help="render what is finished; train nothing")
    ap.add_argument("override", nargs="*", help="extra dotted overrides for every run")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    t0 = time.time()
    args = parse_args(argv)
    tables = [t.strip() for t in args.tables.split(",") if t.strip()] if args.tables else []
    rules = rules_for_tables(tables) if tables and not args.rules else parse_rules(args.rules or DEFAULT_RULES)
    args.agent = tables == ["7"]
    recipe = load_config(str(ROOT / (AGENT_RECIPE if args.agent else "recipes/toy/opd.yaml")), [])
    args.steps = args.steps or recipe.train.max_steps
    world = Path(args.world or (AGENT_WORLD if args.agent else "artifacts/toy")).resolve()
    if not all((world / n).exists() for n in ("student", "teacher", "train.jsonl", "heldout.jsonl")):
        if args.agent:  # a world that is present is used as it is
            from opsd.toy.agent_build import ensure_world
        else:
            from opsd.toy.build import ensure_world
        ensure_world(str(world))
    default_out = "runs/cpu-table7" if args.agent else "runs/cpu-tables" if tables else "runs/toy-sweep"
    out_root = Path(args.out or default_out).resolve()
    if not args.report_only:
        run_all(args, world, out_root, rules, args.seeds)
    wall = time.time() - t0
    text = report(args, out_root, rules, tables, wall)
    path = Path(args.report) if args.report else out_root / "report.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    if args.readme:
        agg = collect(out_root, rules, args.seeds, args.agent)
        walls = sum(r.wall_s or 0 for v in agg.values() for r in v.values())
        block = (agent_readme_block(agg, args.seeds, args.steps, walls) if args.agent
                 else readme_block(agg, args.seeds, args.steps, args.n, walls))
        update_readme(Path(args.readme), block)
    print(text)
    print(f"report: {path}\ntotal wall time: {time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
