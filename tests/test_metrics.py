"""Step metrics that each rank computes alone, combined over the ranks (opsd.metrics)."""
import pytest

from opsd.metrics import combine_ranks, gather_metrics


def test_counts_add_up_seconds_take_the_slowest_rank_shares_average():
    ranks = [{"teachers/a/sequences": 3.0, "teacher/bytes": 100.0, "teacher/tokens": 7.0, "teacher/wait_s": 0.5,
              "teacher/score_s": 2.0, "xtok/exact_rows": 0.9, "xtok/residual_mass": 0.2},
             {"teachers/a/sequences": 5.0, "teacher/bytes": 50.0, "teacher/tokens": 9.0, "teacher/wait_s": 1.5,
              "teacher/score_s": 1.0, "xtok/exact_rows": 0.7}]
    m = combine_ranks(ranks)
    assert m["teachers/a/sequences"] == 8.0 and m["teacher/bytes"] == 150.0 and m["teacher/tokens"] == 16.0
    assert m["teacher/wait_s"] == 1.5 and m["teacher/score_s"] == 2.0
    assert m["xtok/exact_rows"] == pytest.approx(0.8)
    assert m["xtok/residual_mass"] == pytest.approx(0.2)  # only the ranks that report it


def test_a_world_of_one_keeps_its_own_figures():
    local = {"teacher/wait_s": 0.25, "teacher/bytes": 10.0}
    assert gather_metrics(local) == local
