"""Quadrant classification (Table 1) and the diagnostics logged with every selection."""
import pytest
import torch

from tip_patches import quadrants, select

T = lambda *x: torch.tensor(x)  # noqa: E731


def test_classify_hand():
    h = T(0.9, 0.9, 0.1, 0.1, 0.5)
    d = T(0.9, 0.1, 0.9, 0.1, 0.5)
    assert quadrants.classify(h, d, 0.5, 0.5).tolist() == [1, 2, 3, 4, 4]  # "high" is strictly above
    assert quadrants.classify(h, d, 0.4, 0.4).tolist() == [1, 2, 3, 4, 1]


def test_thresholds_fixed_and_median():
    h, d = T(0.0, 0.2, 0.4, 1.0), T(0.0, 0.1, 0.3, 1.0)
    assert quadrants.thresholds(h, d, "fixed", 0.3, 0.7) == (0.3, 0.7)
    th_h, th_d = quadrants.thresholds(h, d, "median")
    assert th_h == pytest.approx(0.2) and th_d == pytest.approx(0.1)  # lower median for even N
    q = quadrants.classify(h, d, th_h, th_d)
    assert (q <= 2).sum() == 2  # half the tokens have high entropy
    assert quadrants.thresholds(T(), T(), "median") == (0.0, 0.0)
    with pytest.raises(ValueError, match="tip.quadrant_threshold"):
        quadrants.thresholds(h, d, "mean")


def test_diagnostics_hand(make_stats):
    s = make_stats([1.0, 3.0, 2.0, 2.0, 2.0], [0.0] * 5, teacher_entropy=[0.5] * 5)
    quad = T(1, 2, 3, 4, 4)
    kept = T(True, False, True, False, False)
    diag = quadrants.diagnostics(s, quad, kept, 0.5, 0.25)
    assert [diag[f"tip/q{i}_frac"] for i in range(1, 5)] == pytest.approx([0.2, 0.2, 0.2, 0.4])
    assert [diag[f"tip/q{i}_kept"] for i in range(1, 5)] == pytest.approx([1.0, 0.0, 1.0, 0.0])
    assert diag["tip/kept_frac"] == pytest.approx(0.4)
    assert diag["tip/student_entropy_mean"] == pytest.approx(2.0)
    assert diag["tip/student_entropy_std"] == pytest.approx((0.4) ** 0.5)
    assert diag["tip/teacher_entropy_mean"] == pytest.approx(0.5) and diag["tip/teacher_entropy_std"] == 0
    assert (diag["tip/entropy_threshold"], diag["tip/divergence_threshold"]) == (0.5, 0.25)
    assert all(isinstance(v, float) for v in diag.values())


def test_empty_quadrant_kept_is_zero_not_nan(make_stats):
    s = make_stats([1.0, 2.0], [0.0, 0.0])
    diag = quadrants.diagnostics(s, T(4, 4), T(True, False), 0.5, 0.5)
    assert diag["tip/q1_kept"] == 0.0 and diag["tip/q4_kept"] == 0.5


def test_select_reports_quadrants_of_the_active_rule(make_stats):
    #            Q1    Q2    Q3    Q4
    s = make_stats([3.0, 2.8, 0.0, 0.1], [4.0, 0.1, 4.0, 0.0])
    diag = select(s, "soft_or", 0.5).diagnostics
    assert [diag[f"tip/q{i}_frac"] for i in range(1, 5)] == pytest.approx([0.25] * 4)
    assert [diag[f"tip/q{i}_kept"] for i in range(1, 5)] == pytest.approx([1, 0, 1, 0])
    diag = select(s, "entropy_topk", 0.5).diagnostics
    assert [diag[f"tip/q{i}_kept"] for i in range(1, 5)] == pytest.approx([1, 1, 0, 0])
    diag = select(s, "soft_or", 0.5, quadrant_threshold="median").diagnostics
    assert diag["tip/entropy_threshold"] == pytest.approx(float(torch.tensor([0.0, 0.1, 2.8, 3.0]).div(3).median()))


def test_median_threshold_splits_entropy_in_half(rand_stats):
    diag = select(rand_stats(1001), "soft_or", 0.2, quadrant_threshold="median").diagnostics
    assert diag["tip/q1_frac"] + diag["tip/q2_frac"] == pytest.approx(0.5, abs=1e-3)
