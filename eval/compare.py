"""``python -m eval.compare``: results files side by side, in the paper's table layouts.

    python -m eval.compare BASELINE.json VARIANT.json ... [--table 3] --out report.md --plot fig.png

Each results file names its run through the tags given to ``eval.run --tag``: ``pair`` (a key of
``eval.paper_tables.PAIRS``, e.g. ``qwen3-8b-4b``, or any name such as ``toy``), ``rule`` (a
``tip_patches`` rule: all, entropy_sample, entropy_topk, soft_or, soft_or_bottom, q3,
adaptive_kl) and ``ratio`` (retention ratio; 1 for ``all``).

The report always has an overview (one row per file and benchmark: mean@n ± SE, pass@n, maj@n,
the difference to the baseline with its paired SE, and the paper's number when one matches).
``--table N`` (3-8) adds the paper's layout for Table N: each cell shows ours ± SE, the
difference to the pair's baseline, and the paper's value where pair and benchmark match.
The baseline of a pair is the first file when its pair matches, else that pair's ``rule=all``
run. Differences are paired (same problems, per-problem accuracies) when both runs cover the
same problems, else unpaired (SEs added in quadrature).

``--se problems`` (default) is the SE over problems; ``--se sampling`` holds the problems fixed
(see ``eval.metrics``), closer to what the paper's ± appear to be.

All runs must share n per benchmark and the benchmark version; otherwise the error names the
files. ``--plot`` writes accuracy vs retention ratio, one line per rule (the paper's Figure 1).
"""
from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from eval import metrics
from eval.paper_tables import (BENCH_LABELS, MATH_BENCHES, PAIRS, RULE_LABELS, T8_COLS, TABLES, T7_ROWS,
                               PaperCell, find)
from eval.results import ResultsError, load_results

SE_KINDS = ("problems", "sampling")


class CompareError(ValueError):
    """Runs that cannot be compared; the message names the files."""


@dataclass
class Value:
    mean: float  # in percent
    se: Optional[float]
    common: Optional[int] = None  # a difference over only the problems both runs finished (partial runs)

    def __str__(self) -> str:
        return f"{self.mean:.1f}" + (f" ± {self.se:.1f}" if self.se is not None else "")


@dataclass
class Run:
    path: Path
    data: dict

    @property
    def tags(self) -> Dict[str, str]:
        return self.data.get("tags", {})

    @property
    def label(self) -> str:
        return self.tags.get("name", self.path.stem)

    @property
    def pair(self) -> str:
        return self.tags.get("pair", "-")

    @property
    def rule(self) -> Optional[str]:
        return self.tags.get("rule")

    @property
    def ratio(self) -> Optional[float]:
        r = self.tags.get("ratio")
        try:
            return None if r is None else float(r.rstrip("%")) / (100 if r.endswith("%") else 1)
        except ValueError:
            raise CompareError(f"{self.path}: tag ratio={r!r} is not a number") from None

    @property
    def partial(self) -> bool:
        return self.data.get("status") != "complete"

    @property
    def benches(self) -> List[str]:
        return [b for b, e in self.data["benchmarks"].items() if e["problems"]]

    def entry(self, bench: str) -> Optional[dict]:
        e = self.data["benchmarks"].get(bench)
        return e if e and e["problems"] else None

    def n(self, bench: str) -> int:
        return len(self.entry(bench)["problems"][0]["samples"])

    def per_problem(self, bench: str, metric: str = "mean") -> Dict[str, float]:
        problems = self.entry(bench)["problems"]
        correct = [[s["correct"] for s in p["samples"]] for p in problems]
        keys = [[s["extracted"] for s in p["samples"]] for p in problems]
        n = metrics.uniform_n(correct)
        values = metrics.per_problem(correct, metric, n, keys)
        return {p["id"]: v for p, v in zip(problems, values)}

    def value(self, bench: str, metric: str = "mean", se_kind: str = "problems") -> Optional[Value]:
        if self.entry(bench) is None:
            return None
        est = metrics.mean_and_stderr(list(self.per_problem(bench, metric).values()))
        se = est.stderr
        if se_kind == "sampling" and metric == "mean":
            se = metrics.sampling_stderr([[s["correct"] for s in p["samples"]]
                                          for p in self.entry(bench)["problems"]])
        return Value(100 * est.value, None if se is None else 100 * se)


# ---------------------------------------------------------------------------------------------
# Loading and consistency
# ---------------------------------------------------------------------------------------------

def load_runs(paths: Sequence[str]) -> List[Run]:
    runs = []
    for p in paths:
        path = Path(p)
        if not path.is_file():
            raise CompareError(f"{path}: no such results file")
        try:
            runs.append(Run(path, load_results(path)))
        except ResultsError as e:
            raise CompareError(str(e)) from e
        if runs[-1].partial:
            print(f"warning: {path} is a partial evaluation: its differences are paired over the problems "
                  "both runs finished, and the report says so", file=sys.stderr)
    check_consistency(runs)
    return runs


def check_consistency(runs: Sequence[Run]) -> None:
    """Same n and same benchmark version for every benchmark across runs."""
    benches = sorted({b for r in runs for b in r.benches})
    for bench in benches:
        having = [r for r in runs if r.entry(bench)]
        ns = {r.n(bench) for r in having}
        if len(ns) > 1:
            listing = ", ".join(f"{r.path} n={r.n(bench)}" for r in having)
            raise CompareError(f"mixed n across runs on {bench}: {listing}; evaluate every run with "
                               "the same eval.run --n")
        versions = {r.entry(bench)["version"] for r in having}
        if len(versions) > 1:
            listing = ", ".join(f"{r.path} ({r.entry(bench)['version'][:19]})" for r in having)
            raise CompareError(f"different versions of benchmark {bench}: {listing}")
    seen: Dict[tuple, Path] = {}
    for r in runs:
        if r.rule is None:
            continue
        key = (r.pair, r.rule, r.ratio)
        if key in seen:
            raise CompareError(f"{seen[key]} and {r.path} have the same tags pair={r.pair} "
                               f"rule={r.rule} ratio={r.ratio}; tag them apart (--tag name=...)")
        seen[key] = r.path


def baseline_for(runs: Sequence[Run], pair: str) -> Optional[Run]:
    first = runs[0]
    if first.pair == pair or first.pair == "-":
        return first
    return next((r for r in runs if r.pair == pair and r.rule == "all"), None)


def delta(run: Run, base: Optional[Run], bench: str, se_kind: str) -> Optional[Value]:
    """run - base on ``bench`` (percent points), paired over problems when possible. When the two
    cover different problems (a partial run), the difference is paired over the problems both
    finished, and says so (``Value.common``): a difference of means over two different problem
    sets would mix the problems' difficulty into the rule's effect."""
    if base is None or base is run or not (run.entry(bench) and base.entry(bench)):
        return None
    a, b = run.per_problem(bench), base.per_problem(bench)
    if set(a) != set(b):
        common = set(a) & set(b)
        if not common:
            return None
        est = metrics.paired_difference({k: a[k] for k in common}, {k: b[k] for k in common})
        return Value(100 * est.value, None if est.stderr is None else 100 * est.stderr, common=len(common))
    if se_kind == "problems":
        est = metrics.paired_difference(a, b)
        return Value(100 * est.value, None if est.stderr is None else 100 * est.stderr)
    va, vb = run.value(bench, se_kind=se_kind), base.value(bench, se_kind=se_kind)
    se = math.hypot(va.se, vb.se) if va.se is not None and vb.se is not None else None
    return Value(va.mean - vb.mean, se)


def _signed(v: Optional[Value]) -> str:
    if v is None:
        return ""
    return (f"{v.mean:+.1f}" + (f" ± {v.se:.1f}" if v.se is not None else "")
            + (f" (partial: {v.common} common problems)" if v.common is not None else ""))


def _paper(cells: Sequence[PaperCell]) -> str:
    if not cells:
        return ""
    c = cells[0]
    return f"{c.mean:.1f}" + (f" ± {c.se:.1f}" if c.se is not None else "") + f" (T{c.table})"


# ---------------------------------------------------------------------------------------------
# Overview table
# ---------------------------------------------------------------------------------------------

def render_overview(runs: Sequence[Run], se_kind: str) -> str:
    head = ("| run | pair | rule | ratio | benchmark | n | mean@n | pass@n | maj@n | Δ vs baseline | paper |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    for run in runs:
        base = baseline_for(runs, run.pair)
        for bench in run.benches:
            n = run.n(bench)
            maj = run.value(bench, "maj") if any(s["extracted"] for p in run.entry(bench)["problems"]
                                                  for s in p["samples"]) else None
            paper = (find(run.pair, bench, run.rule, run.ratio) if run.rule and run.ratio else [])
            lines.append(f"| {run.label} | {run.pair} | {run.rule or '-'} | {run.ratio if run.ratio else '-'} "
                         f"| {bench} | {n} | {run.value(bench, se_kind=se_kind)} | {run.value(bench, 'pass')} "
                         f"| {maj or '-'} | {_signed(delta(run, base, bench, se_kind)) or '-'} "
                         f"| {_paper(paper) or '-'} |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Paper layouts
# ---------------------------------------------------------------------------------------------

@dataclass
class Slot:
    """One cell of a paper-layout table: what to look up among our runs, and the paper's cell."""

    pair: str
    bench: str
    rule: str
    ratio: float
    also_rules: Tuple[str, ...] = ()
    paper: Optional[PaperCell] = None
    metric: str = "mean"


Layout = Tuple[List[str], List[Tuple[str, List[Optional[Slot]]]]]


def _pairs(table_pairs: Sequence[str], runs: Sequence[Run]) -> List[str]:
    ours = list(dict.fromkeys(r.pair for r in runs))
    return [p for p in table_pairs if p in ours] + [p for p in ours if p not in table_pairs]


def _benches(pair: str, table_pairs: Sequence[str], runs: Sequence[Run]) -> List[str]:
    ours = list(dict.fromkeys(b for r in runs if r.pair == pair for b in r.benches))
    base = list(MATH_BENCHES) if pair in table_pairs else []
    return base + [b for b in ours if b not in base]


def _pair_label(pair: str) -> str:
    return PAIRS.get(pair, pair)


def layout_pair_rows(number: str, runs: Sequence[Run]) -> Layout:
    """Tables 3, 4, 5: rows (pair, benchmark), columns (rule, ratio)."""
    table = TABLES[number]
    rows = []
    for pair in _pairs(table.pairs, runs):
        for bench in _benches(pair, table.pairs, runs):
            slots = [Slot(pair, bench, c.rule, c.ratio, c.also_rules, table.cell(pair, bench, c.rule, c.ratio))
                     for c in table.columns]
            rows.append((f"{_pair_label(pair)} / {BENCH_LABELS.get(bench, bench)}", slots))
    return [c.label for c in table.columns], rows


def layout_table6(runs: Sequence[Run]) -> Layout:
    """Table 6: rows benchmark, columns (pair, top/bottom 50 %)."""
    table = TABLES["6"]
    pairs = _pairs(table.pairs, runs)
    cols = [(p, rule, which) for p in pairs
            for which, rule in (("Top 50%", "soft_or"), ("Bot. 50%", "soft_or_bottom"))]
    benches = list(dict.fromkeys([b for p in pairs for b in _benches(p, table.pairs, runs)]))
    rows = [(BENCH_LABELS.get(b, b),
             [Slot(p, b, rule, 0.5, (), table.cell(p, b, rule, 0.5)) for p, rule, _ in cols])
            for b in benches]
    return [f"{_pair_label(p)} {which}" for p, _, which in cols], rows


def layout_table7(runs: Sequence[Run]) -> Layout:
    """Table 7: rows method (and metric), columns teacher pair; DeepPlanning travel."""
    table = TABLES["7"]
    pairs = _pairs(table.pairs, runs)
    rows = []
    for label, rule, ratio, metric, *_ in T7_ROWS:
        ours = "mean" if metric == "avg@16" else "pass"
        rows.append((f"{label} [{metric}]",
                     [Slot(p, "deepplanning_travel", rule, ratio,
                           ("entropy_sample",) if rule == "entropy_topk" else (),
                           table.cell(p, "deepplanning_travel", rule, ratio, metric), ours) for p in pairs]))
    return [_pair_label(p) for p in pairs], rows


def layout_table8(runs: Sequence[Run]) -> Layout:
    """Table 8: rows (our pair, benchmark, method), columns baseline and ratios 0.5/0.2/0.1."""
    table = TABLES["8"]
    rows = []
    for pair in _pairs([], runs):
        benches = list(MATH_BENCHES) + ["dapo"]
        benches += [b for r in runs if r.pair == pair for b in r.benches if b not in benches]
        for bench in benches:
            for method, rule in (("Standard (reverse KL)", "entropy_sample"), ("Adaptive KL", "adaptive_kl")):
                slots = []
                for col in T8_COLS:
                    r = "all" if col.ratio == 1.0 else rule
                    slots.append(None if (r == "all" and rule == "adaptive_kl") else
                                 Slot(pair, bench, r, col.ratio, (), table.cell("unstated", bench, r, col.ratio)))
                rows.append((f"{_pair_label(pair)} / {BENCH_LABELS.get(bench, bench)} / {method}", slots))
    return [c.label for c in T8_COLS], rows


def find_run(runs: Sequence[Run], slot: Slot) -> Optional[Run]:
    for r in runs:
        if (r.pair == slot.pair and r.rule in (slot.rule,) + slot.also_rules and r.ratio is not None
                and abs(r.ratio - slot.ratio) < 1e-9 and r.entry(slot.bench)):
            return r
    return None


def render_slot(slot: Optional[Slot], runs: Sequence[Run], se_kind: str) -> str:
    if slot is None:
        return "—"
    run = find_run(runs, slot)
    ours = "—"
    if run is not None:
        ours = str(run.value(slot.bench, slot.metric, se_kind))
        d = delta(run, baseline_for(runs, slot.pair), slot.bench, se_kind)
        ours += f" ({_signed(d)})" if d else ""
    if slot.paper is not None:
        return f"{ours} · paper {_paper([slot.paper])}"
    return ours


def render_table(number: str, runs: Sequence[Run], se_kind: str) -> str:
    if number not in TABLES:
        raise CompareError(f"--table {number}: the paper's result tables are {sorted(TABLES)}")
    builders = {"6": layout_table6, "7": layout_table7, "8": layout_table8}
    cols, rows = builders[number](runs) if number in builders else layout_pair_rows(number, runs)
    table = TABLES[number]
    out = [f"### Table {number}: {table.title}", "",
           "| | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for label, slots in rows:
        out.append(f"| {label} | " + " | ".join(render_slot(s, runs, se_kind) for s in slots) + " |")
    notes = sorted({c.note for c in table.cells if c.note})
    out += ["", "Cells: ours ± SE (Δ to the pair's baseline ± SE) · paper value (table)."]
    out += [f"Paper note: {n}." for n in notes]
    return "\n".join(out)


def render_report(runs: Sequence[Run], table: Optional[str], se_kind: str) -> str:
    ns = sorted({r.n(b) for r in runs for b in r.benches})
    temps = sorted({r.data["config"].get("temperature") for r in runs})
    parts = ["# Evaluation comparison", "",
             f"Baseline: `{runs[0].path}`. SE: over {se_kind}. Values in percent. Ours: n = "
             f"{', '.join(map(str, ns))} samples per problem at temperature {', '.join(map(str, temps))}; "
             "the paper's: mean@16 at temperature 1.0.", "",
             render_overview(runs, se_kind)]
    partial = [r for r in runs if r.partial]
    if partial:
        parts[3:3] = [
            "**Partial report**: " + "; ".join(
                f"`{r.path}` finished " + ", ".join(f"{len(r.entry(b)['problems'])} problems of {b}" for b in r.benches)
                for r in partial)
            + ". Differences involving a partial run are paired over the problems both runs finished "
              "(marked with their count); its own mean is over its finished problems only.", ""]
    if table:
        parts += ["", render_table(table, runs, se_kind)]
    return "\n".join(parts) + "\n"


# ---------------------------------------------------------------------------------------------
# Plot: accuracy vs retention ratio per rule (Figure 1 shape)
# ---------------------------------------------------------------------------------------------

def plot(runs: Sequence[Run], out: Path, se_kind: str) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    tagged = [r for r in runs if r.rule and r.ratio is not None]
    pairs = list(dict.fromkeys(r.pair for r in tagged)) or ["-"]
    benches = list(dict.fromkeys(b for r in tagged for b in r.benches)) or ["-"]
    fig, axes = plt.subplots(len(pairs), len(benches), squeeze=False,
                             figsize=(4.2 * len(benches), 3.4 * len(pairs)))
    for i, pair in enumerate(pairs):
        for j, bench in enumerate(benches):
            _plot_panel(axes[i][j], [r for r in tagged if r.pair == pair], pair, bench, se_kind)
    if not tagged:
        axes[0][0].text(0.5, 0.5, "no run has rule= and ratio= tags", ha="center", va="center")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)


def _plot_panel(ax, runs: Sequence[Run], pair: str, bench: str, se_kind: str) -> None:
    base = next((r for r in runs if r.rule == "all" and r.entry(bench)), None)
    base_v = base.value(bench, se_kind=se_kind) if base else None
    rules = list(dict.fromkeys(r.rule for r in runs if r.rule != "all" and r.entry(bench)))
    for k, rule in enumerate(rules):
        color = f"C{k}"
        pts = sorted((r.ratio, r.value(bench, se_kind=se_kind)) for r in runs
                     if r.rule == rule and r.entry(bench))
        pts += [(1.0, base_v)] if base_v else []
        ax.errorbar([x for x, _ in pts], [v.mean for _, v in pts], yerr=[v.se or 0 for _, v in pts],
                    marker="o", color=color, capsize=3, label=RULE_LABELS.get(rule, rule))
        paper = sorted({(c.ratio, c.mean) for ratio in (0.1, 0.2, 0.5, 1.0)
                        for c in find(pair, bench, "all" if ratio == 1.0 else rule, ratio)})
        if paper:
            ax.plot(*zip(*paper), linestyle="--", marker="x", color=color, alpha=0.5,
                    label=f"{RULE_LABELS.get(rule, rule)} (paper)")
    if base_v:
        ax.axhline(base_v.mean, color="gray", linestyle=":", label="all tokens")
    ax.set_title(f"{_pair_label(pair)} · {BENCH_LABELS.get(bench, bench)}", fontsize=9)
    ax.set_xlabel("retention ratio")
    ax.set_ylabel("mean@n (%)")
    ax.grid(alpha=0.3)
    if rules or base_v:
        ax.legend(fontsize=7)


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------

def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m eval.compare", description=__doc__.split("\n")[0])
    p.add_argument("results", nargs="+", help="results files; the first is the baseline")
    p.add_argument("--table", default=None, help=f"paper table layout: {', '.join(sorted(TABLES))}")
    p.add_argument("--out", default=None, help="Markdown report (default: stdout)")
    p.add_argument("--plot", default=None, help="PNG: accuracy vs retention ratio per rule")
    p.add_argument("--se", default="problems", choices=SE_KINDS, help="standard error kind")
    return p.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    try:
        if args.table is not None and args.table not in TABLES:
            raise CompareError(f"--table {args.table}: the paper's result tables are {sorted(TABLES)}")
        runs = load_runs(args.results)
        report = render_report(runs, args.table, args.se)
        if args.plot:
            plot(runs, Path(args.plot), args.se)
    except CompareError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(report)
        print(f"wrote {args.out}" + (f" and {args.plot}" if args.plot else ""))
    else:
        print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
