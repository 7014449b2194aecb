"""The transcription of the paper's Tables 3-8 is checked against the paper text itself."""
import pytest

from _eval_fakes import REPO
from eval import paper_tables as pt

PAPER = REPO.parent / "shared" / "paper" / "tip-2604.14084.txt"


@pytest.fixture(scope="module")
def paper_text():
    if not PAPER.is_file():
        pytest.skip(f"{PAPER} is not available")
    return PAPER.read_text()


def _fmt(mean, se):
    return f"{mean:.1f}" + (f" {se:.1f}" if se is not None else "")


def grid_rows(table):
    """The values of each paper row, in column order, as the extracted text prints them."""
    rows = {}
    for c in table.cells:
        rows.setdefault(c.row, []).append(_fmt(c.mean, c.se))
    return rows


@pytest.mark.parametrize("number", ["3", "4", "5", "6", "8"])
def test_every_row_appears_in_the_paper(paper_text, number):
    for row, values in grid_rows(pt.TABLES[number]).items():
        needle = " | ".join(values)
        assert needle in paper_text, f"Table {number}, row {row!r}: {needle!r} not in the paper text"


def test_row_and_cell_counts():
    counts = {n: len(t.cells) for n, t in pt.TABLES.items()}
    # 9 rows x 4 + 3 memory rows x 4; 9 x 3 + 3 x 3; 9 x 5; 3 x 6; text values; 4 x (4 + 3)
    assert counts == {"3": 48, "4": 36, "5": 45, "6": 18, "7": 10, "8": 28}


def test_table7_values_come_from_the_text(paper_text):
    for a, b in [("12.1", "11.7"), ("13.1", "12.8"), ("12.6", "11.7"), ("13.6", "12.8"),
                 ("20.3", "18.9"), ("20.1", "19.7")]:
        assert f"{a} vs. {b}" in paper_text or f"{a} and" in paper_text
    cell = pt.TABLES["7"].cell("qwen3-14b-1.7b", "deepplanning_travel", "q3", 0.2, "avg@16")
    assert cell.mean == 12.6 and "lost in extraction" in cell.note


def test_lookup():
    [t3] = [c for c in pt.find("qwen3-8b-4b", "math500", "entropy_sample", 0.5) if c.table == "3"]
    assert (t3.mean, t3.se, t3.col) == (78.6, 0.6, "50%")
    t5 = pt.find("llama-70b-8b", "aime25", "entropy_sample", 0.2, table="5")  # "Entropy-only" alias
    assert [c.mean for c in t5] == [10.0]
    assert pt.find("llama-70b-8b", "aime25", "soft_or_bottom", 0.5)[0].mean == 2.9
    assert pt.find("toy", "math500", "all", 1.0) == []
    # Table 8's pair is not stated: only reachable when table 8 is asked for
    assert pt.find("toy", "dapo", "adaptive_kl", 0.1) == []
    assert pt.find("toy", "dapo", "adaptive_kl", 0.1, table="8")[0].mean == 39.6
