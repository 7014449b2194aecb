"""The TIP paper's result tables (arXiv 2604.14084 v3, Tables 3-8), transcribed as data.

Source: ``../shared/paper/tip-2604.14084.txt``. Its ± signs were lost in extraction, so
"76.7 0.7" there is 76.7 ± 0.7 here. Every number is a :class:`PaperCell` that records the table,
the paper's row and column labels, and the (pair, benchmark, rule, ratio) key that
``eval.compare`` matches against the tags of a results file. ``tests/eval/test_eval_paper_tables.py``
re-reads the paper text and checks every transcribed row against it.

Rule names are ``tip_patches.selectors.RULES``. Notes on the transcription:

- Table 5's "Entropy-only" columns hold exactly Table 3's entropy-sampling numbers (78.6, 74.1,
  ...); the project maps "Entropy-only" to ``entropy_topk`` (Eq. 6 with δ̂ = 0), so those cells
  also match ``entropy_sample`` results (``also_rules``).
- Table 7 (DeepPlanning, Avg@16) lost every number in extraction; the cells below come from the
  text of §7.5, §8 and App. B.2 (Best@16, Figure 4). Cells the text does not give are omitted.
- Table 8 (adaptive KL, App. B.1) states no model pair (its 70.7 MATH-500 baseline matches none of
  Table 3's) and no ± values: pair ``unstated``, se None. It runs under entropy sampling.
- Peak-memory rows of Tables 3 and 4 are kept with ``metric="peak_mem_gb"``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

PAIRS: Dict[str, str] = {
    "qwen3-8b-4b": "Qwen3-8B (GRPO) → Qwen3-4B",
    "llama-70b-8b": "Llama-3.3-70B → Llama-3.1-8B",
    "qwen2.5-14b-1.5b": "Qwen2.5-14B (thinking) → Qwen2.5-1.5B",
    "qwen3-14b-1.7b": "Qwen3-14B → Qwen3-1.7B (agentic)",
    "qwen3-32b-1.7b": "Qwen3-32B → Qwen3-1.7B (agentic)",
    "unstated": "pair not stated in the paper",
}
BENCH_LABELS = {"math500": "MATH-500", "aime24": "AIME'24", "aime25": "AIME'25",
                "dapo": "MATH-DAPO", "deepplanning_travel": "DeepPlanning Travel", "-": "-"}
RULE_LABELS = {"all": "all tokens", "entropy_sample": "entropy sampling",
               "entropy_topk": "entropy-only Top-K", "soft_or": "Soft-OR Top-K",
               "soft_or_bottom": "Soft-OR Bottom-K", "q3": "Q3-only", "adaptive_kl": "adaptive KL"}
MATH_BENCHES = ("math500", "aime24", "aime25")


@dataclass(frozen=True)
class PaperCell:
    table: str
    pair: str
    benchmark: str
    rule: str
    ratio: float
    mean: Optional[float]
    se: Optional[float]
    row: str
    col: str
    metric: str = "mean@16"
    also_rules: Tuple[str, ...] = ()
    note: str = ""

    def matches(self, pair: str, benchmark: str, rule: str, ratio: float) -> bool:
        return (self.pair == pair and self.benchmark == benchmark
                and rule in (self.rule,) + self.also_rules and abs(self.ratio - ratio) < 1e-9)


@dataclass(frozen=True)
class Column:
    label: str
    rule: str
    ratio: float
    pair: Optional[str] = None  # for tables whose columns are model pairs (Table 6)
    also_rules: Tuple[str, ...] = ()


@dataclass(frozen=True)
class PaperTable:
    number: str
    title: str
    columns: Tuple[Column, ...]
    cells: Tuple[PaperCell, ...]

    def cell(self, pair: str, benchmark: str, rule: str, ratio: float,
             metric: str = "mean@16") -> Optional[PaperCell]:
        hits = [c for c in self.cells if c.metric == metric and c.pair == pair
                and c.benchmark == benchmark and c.rule == rule and abs(c.ratio - ratio) < 1e-9]
        return hits[0] if hits else None

    @property
    def pairs(self) -> List[str]:
        return list(dict.fromkeys(c.pair for c in self.cells))


Values = Sequence[Optional[Tuple[float, Optional[float]]]]


def _grid(table: str, columns: Sequence[Column], rows: Sequence[Tuple[str, str, Values]],
          metric: str = "mean@16", note: str = "") -> Tuple[PaperCell, ...]:
    """Cells of a rows × columns grid; a row is (pair or "*", benchmark, one value per column)."""
    cells = []
    for pair, bench, values in rows:
        assert len(values) == len(columns), (table, pair, bench)
        for col, v in zip(columns, values):
            if v is None:
                continue
            p = col.pair or pair
            cells.append(PaperCell(table, p, bench, col.rule, col.ratio, v[0], v[1],
                                   row=f"{PAIRS.get(pair, pair)} / {BENCH_LABELS[bench]}"
                                   if pair != "*" else BENCH_LABELS[bench],
                                   col=col.label, metric=metric, also_rules=col.also_rules, note=note))
    return tuple(cells)


def _mem(pair: str, values: Sequence[float]):
    return (pair, "-", [(v, None) for v in values])


# ---------------------------------------------------------------- Table 3: entropy sampling
T3_COLS = (Column("100%", "all", 1.0), Column("50%", "entropy_sample", 0.5),
           Column("20%", "entropy_sample", 0.2), Column("10%", "entropy_sample", 0.1))
T3_ROWS = [
    ("qwen3-8b-4b", "math500", [(76.7, 0.7), (78.6, 0.6), (74.1, 0.9), (70.8, 1.0)]),
    ("qwen3-8b-4b", "aime24", [(21.9, 1.2), (23.8, 1.3), (22.5, 1.1), (21.1, 1.2)]),
    ("qwen3-8b-4b", "aime25", [(19.4, 1.1), (20.7, 1.3), (21.5, 1.2), (19.2, 1.0)]),
    ("llama-70b-8b", "math500", [(71.0, 0.7), (74.0, 0.8), (73.6, 0.7), (72.5, 0.8)]),
    ("llama-70b-8b", "aime24", [(21.5, 1.1), (25.3, 1.5), (18.8, 1.3), (20.6, 1.4)]),
    ("llama-70b-8b", "aime25", [(4.9, 0.9), (7.5, 1.1), (10.0, 1.2), (9.3, 1.0)]),
    ("qwen2.5-14b-1.5b", "math500", [(55.1, 0.9), (54.9, 0.9), (54.0, 0.9), (55.1, 0.9)]),
    ("qwen2.5-14b-1.5b", "aime24", [(2.4, 0.7), (3.3, 1.4), (4.6, 1.3), (2.7, 1.1)]),
    ("qwen2.5-14b-1.5b", "aime25", [(2.1, 0.9), (1.0, 0.5), (1.0, 0.6), (1.3, 0.8)]),
]
T3_MEM = [_mem("qwen3-8b-4b", [72.0, 38.1, 35.5, 35.3]), _mem("llama-70b-8b", [41.6, 32.1, 31.8, 31.9]),
          _mem("qwen2.5-14b-1.5b", [35.8, 19.7, 15.0, 14.9])]

# ---------------------------------------------------------------- Table 4: Q3-only
T4_COLS = (Column("Baseline (100%)", "all", 1.0), Column("Q3 20%", "q3", 0.2), Column("Q3 10%", "q3", 0.1))
T4_ROWS = [
    ("qwen3-8b-4b", "math500", [(76.7, 0.7), (75.7, 0.8), (76.1, 0.9)]),
    ("qwen3-8b-4b", "aime24", [(21.9, 1.2), (20.2, 1.1), (21.5, 1.3)]),
    ("qwen3-8b-4b", "aime25", [(19.4, 1.1), (19.2, 1.1), (17.1, 1.0)]),
    ("llama-70b-8b", "math500", [(71.0, 0.7), (71.8, 1.0), (70.4, 1.1)]),
    ("llama-70b-8b", "aime24", [(21.5, 1.1), (20.2, 1.2), (20.8, 1.1)]),
    ("llama-70b-8b", "aime25", [(4.9, 0.9), (4.5, 0.7), (4.1, 0.7)]),
    ("qwen2.5-14b-1.5b", "math500", [(55.1, 0.9), (54.6, 0.9), (54.1, 0.9)]),
    ("qwen2.5-14b-1.5b", "aime24", [(2.4, 0.7), (2.5, 0.9), (3.3, 1.4)]),
    ("qwen2.5-14b-1.5b", "aime25", [(2.1, 0.9), (3.3, 1.4), (0.8, 0.4)]),
]
T4_MEM = [_mem("qwen3-8b-4b", [72.0, 36.4, 36.2]), _mem("llama-70b-8b", [41.6, 32.5, 32.4]),
          _mem("qwen2.5-14b-1.5b", [35.8, 19.7, 19.6])]

# ---------------------------------------------------------------- Table 5: Soft-OR vs entropy-only
T5_COLS = (Column("Baseline 100%", "all", 1.0),
           Column("Entropy-only 50%", "entropy_topk", 0.5, also_rules=("entropy_sample",)),
           Column("Entropy-only 20%", "entropy_topk", 0.2, also_rules=("entropy_sample",)),
           Column("Soft-OR 50%", "soft_or", 0.5), Column("Soft-OR 20%", "soft_or", 0.2))
T5_ROWS = [
    ("qwen3-8b-4b", "math500", [(76.7, 0.7), (78.6, 0.6), (74.1, 0.9), (79.1, 0.8), (77.6, 0.7)]),
    ("qwen3-8b-4b", "aime24", [(21.9, 1.2), (23.8, 1.3), (22.5, 1.1), (25.7, 1.4), (24.5, 1.2)]),
    ("qwen3-8b-4b", "aime25", [(19.4, 1.1), (20.7, 1.3), (21.5, 1.2), (21.9, 1.2), (23.2, 1.2)]),
    ("llama-70b-8b", "math500", [(71.0, 0.7), (74.0, 0.8), (73.6, 0.7), (74.7, 1.0), (74.2, 0.7)]),
    ("llama-70b-8b", "aime24", [(21.5, 1.1), (25.3, 1.5), (18.8, 1.3), (26.0, 1.4), (21.0, 1.5)]),
    ("llama-70b-8b", "aime25", [(4.9, 0.9), (7.5, 1.1), (10.0, 1.2), (11.5, 1.1), (10.9, 1.4)]),
    ("qwen2.5-14b-1.5b", "math500", [(55.1, 0.9), (54.9, 0.9), (54.0, 0.9), (56.2, 1.2), (55.8, 0.9)]),
    ("qwen2.5-14b-1.5b", "aime24", [(2.4, 0.7), (3.3, 1.4), (4.6, 1.3), (3.8, 1.2), (5.0, 1.3)]),
    ("qwen2.5-14b-1.5b", "aime25", [(2.1, 0.9), (1.0, 0.5), (1.0, 0.6), (1.5, 0.7), (1.8, 0.6)]),
]

# ---------------------------------------------------------------- Table 6: Soft-OR top vs bottom 50%
T6_COLS = tuple(Column(f"{label} {which}", rule, 0.5, pair=pair)
                for pair, label in (("qwen3-8b-4b", "Qwen3-8B→4B"), ("llama-70b-8b", "Llama-70B→8B"),
                                    ("qwen2.5-14b-1.5b", "Qwen2.5-14B→1.5B"))
                for which, rule in (("Top 50%", "soft_or"), ("Bot. 50%", "soft_or_bottom")))
T6_ROWS = [
    ("*", "math500", [(79.1, 0.8), (72.3, 0.9), (74.7, 1.0), (67.4, 1.1), (56.2, 1.2), (50.3, 1.0)]),
    ("*", "aime24", [(25.7, 1.4), (15.5, 1.3), (26.0, 1.4), (17.2, 1.3), (3.8, 1.2), (1.5, 0.7)]),
    ("*", "aime25", [(21.9, 1.2), (12.8, 1.2), (11.5, 1.1), (2.9, 0.8), (1.5, 0.7), (0.8, 0.5)]),
]

# ---------------------------------------------------------------- Table 7: DeepPlanning (from text)
T7_COLS = (Column("Teacher 14B", "*", 0.0, pair="qwen3-14b-1.7b"),
           Column("Teacher 32B", "*", 0.0, pair="qwen3-32b-1.7b"))
T7_ROWS = [  # (row label, rule, ratio, metric, 14B value, 32B value, source)
    ("OPD, all tokens (100%)", "all", 1.0, "avg@16", 11.7, 12.8, "§7.5 text"),
    ("+ Entropy-only 50%", "entropy_topk", 0.5, "avg@16", 12.1, 13.1, "§7.5 text"),
    ("OPD + Q3-only 20%", "q3", 0.2, "avg@16", 12.6, 13.6, "§7.5 text, App. B.2"),
    ("OPD, all tokens (100%)", "all", 1.0, "best@16", 18.9, 19.7, "App. B.2 text (Figure 4)"),
    ("OPD + Soft-OR 20%", "soft_or", 0.2, "best@16", 20.3, None, "App. B.2 text (Figure 4)"),
    ("OPD + Q3-only 20%", "q3", 0.2, "best@16", None, 20.1, "App. B.2 text (Figure 4)"),
]


def _table7_cells() -> Tuple[PaperCell, ...]:
    cells = []
    for row, rule, ratio, metric, v14, v32, src in T7_ROWS:
        for col, v in zip(T7_COLS, (v14, v32)):
            if v is not None:
                cells.append(PaperCell("7", col.pair, "deepplanning_travel", rule, ratio, v, None,
                                       row=f"{row} [{metric}]", col=col.label, metric=metric,
                                       also_rules=("entropy_sample",) if rule == "entropy_topk" else (),
                                       note=f"table cells lost in extraction; value from {src}"))
    return tuple(cells)


# ---------------------------------------------------------------- Table 8: adaptive KL (App. B.1)
T8_COLS = (Column("Baseline", "all", 1.0), Column("Ratio 0.5", "*", 0.5),
           Column("Ratio 0.2", "*", 0.2), Column("Ratio 0.1", "*", 0.1))
T8_ROWS = [  # (benchmark, standard [base, .5, .2, .1], adaptive [.5, .2, .1])
    ("math500", (70.7, 72.6, 68.1, 64.8), (72.0, 69.7, 62.6)),
    ("aime24", (17.9, 19.8, 18.5, 17.1), (18.1, 16.5, 16.5)),
    ("aime25", (15.4, 16.7, 17.5, 15.2), (18.5, 17.1, 15.6)),
    ("dapo", (42.6, 43.1, 42.0, 40.4), (43.0, 42.3, 39.6)),
]


def _table8_cells() -> Tuple[PaperCell, ...]:
    cells = []
    note = "model pair not stated; no ± given"
    for bench, standard, adaptive in T8_ROWS:
        row = BENCH_LABELS[bench]
        for col, v in zip(T8_COLS, standard):
            rule = "all" if col.ratio == 1.0 else "entropy_sample"
            cells.append(PaperCell("8", "unstated", bench, rule, col.ratio, v, None,
                                   row=f"{row} / Standard (reverse KL)", col=col.label, note=note))
        for col, v in zip(T8_COLS[1:], adaptive):
            cells.append(PaperCell("8", "unstated", bench, "adaptive_kl", col.ratio, v, None,
                                   row=f"{row} / Adaptive KL", col=col.label, note=note))
    return tuple(cells)


TABLES: Dict[str, PaperTable] = {
    "3": PaperTable("3", "Entropy-based sampling at retention ratios (mean@16)", T3_COLS,
                    _grid("3", T3_COLS, T3_ROWS) + _grid("3", T3_COLS, T3_MEM, metric="peak_mem_gb")),
    "4": PaperTable("4", "Q3-only (overconfident tokens) selection (mean@16)", T4_COLS,
                    _grid("4", T4_COLS, T4_ROWS) + _grid("4", T4_COLS, T4_MEM, metric="peak_mem_gb")),
    "5": PaperTable("5", "Soft-OR vs entropy-only selection (mean@16)", T5_COLS, _grid("5", T5_COLS, T5_ROWS)),
    "6": PaperTable("6", "Soft-OR top 50% vs bottom 50% (mean@16)", T6_COLS, _grid("6", T6_COLS, T6_ROWS)),
    "7": PaperTable("7", "DeepPlanning travel planning, Qwen3-1.7B student (Avg@16 / Best@16)", T7_COLS,
                    _table7_cells()),
    "8": PaperTable("8", "Adaptive KL vs standard reverse KL under entropy sampling (mean@16)", T8_COLS,
                    _table8_cells()),
}


def all_cells() -> List[PaperCell]:
    return [c for t in TABLES.values() for c in t.cells]


def find(pair: str, benchmark: str, rule: str, ratio: float, table: Optional[str] = None,
         metric: str = "mean@16") -> List[PaperCell]:
    """Paper cells for a (pair, benchmark, rule, ratio). Table 8's cells (pair not stated) are
    only returned when table 8 is asked for by name."""
    tables = [TABLES[table]] if table else list(TABLES.values())
    return [c for t in tables for c in t.cells if c.metric == metric
            and c.matches("unstated" if t.pairs == ["unstated"] and table else pair, benchmark, rule, ratio)]
