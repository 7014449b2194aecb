"""Metrics: hand-computed cases and brute-force checks of the estimators."""
import itertools
import math

import pytest

from eval import metrics


def brute_pass_at_k(correct, k):
    subsets = list(itertools.combinations(range(len(correct)), k))
    return sum(any(correct[i] for i in s) for s in subsets) / len(subsets)


@pytest.mark.parametrize("n", [1, 2, 5, 7])
def test_pass_at_k_matches_brute_force(n):
    for c in range(n + 1):
        correct = [True] * c + [False] * (n - c)
        for k in range(1, n + 1):
            assert metrics.pass_at_k_single(n, c, k) == pytest.approx(brute_pass_at_k(correct, k), abs=1e-12)


def test_pass_at_k_hand_case():
    # n=4, c=1, k=2: 1 - C(3,2)/C(4,2) = 1 - 3/6
    assert metrics.pass_at_k_single(4, 1, 2) == pytest.approx(0.5)
    assert metrics.pass_at_k_single(16, 0, 16) == 0.0
    assert metrics.pass_at_k_single(16, 1, 16) == 1.0
    with pytest.raises(ValueError, match="k=5"):
        metrics.pass_at_k_single(4, 1, 5)


def test_pass_at_k_large_n_no_overflow():
    assert 0 < metrics.pass_at_k_single(1000, 3, 10) < 1


def test_mean_at_k_and_standard_errors():
    correct = [[1, 0, 0, 1], [1, 1, 1, 1]]
    est = metrics.mean_at_k(correct)
    assert est.value == pytest.approx(0.75)
    # per-problem 0.5 and 1.0: sd = 0.35355, / sqrt(2)
    assert est.stderr == pytest.approx(math.sqrt(0.125) / math.sqrt(2))
    # runs j: 1, .5, .5, 1 -> sd = sqrt(1/12), / sqrt(4)
    assert est.stderr_sampling == pytest.approx(math.sqrt(1 / 12) / 2)
    assert metrics.mean_at_k([[1, 0]]).stderr is None  # one problem: undefined, not NaN


def test_pass_at_k_aggregate():
    correct = [[1, 0, 0, 0], [0, 0, 0, 0], [1, 1, 1, 1]]
    est = metrics.pass_at_k(correct, 2)
    assert est.value == pytest.approx((0.5 + 0 + 1) / 3)


def test_majority_vote_hand_cases():
    assert metrics.majority_score(["a", "a", "b", None], [True, True, False, False]) == 1.0
    assert metrics.majority_score(["a", "b", "b", None], [True, False, False, False]) == 0.0
    assert metrics.majority_score(["a", "b"], [True, False]) == 0.5  # tie split evenly
    assert metrics.majority_score([None, None], [False, False]) == 0.0  # all abstain


def test_maj_at_k_subsets_match_brute_force():
    keys = ["a", "b", "a", "c", "b", "a"]
    correct = [k == "a" for k in keys]
    subsets = list(itertools.combinations(range(6), 3))
    brute = sum(metrics.majority_score([keys[i] for i in s], [correct[i] for i in s]) for s in subsets) / len(subsets)
    assert metrics.maj_at_k_single(keys, correct, 3) == pytest.approx(brute)
    assert metrics.maj_at_k_single(keys, correct, 6) == 1.0


def test_compute_metrics_keys():
    correct = [[True, False, True, True]] * 3
    keys = [["1", "2", "1", "1"]] * 3
    out = metrics.compute_metrics(correct, keys)
    assert set(out) == {"mean@4", "pass@1", "pass@2", "pass@4", "maj@4"}
    assert "maj@4" not in metrics.compute_metrics(correct, [[None] * 4] * 3)


def test_mixed_n_is_an_error():
    with pytest.raises(ValueError, match="different sample counts"):
        metrics.mean_at_k([[True, False], [True]])


def test_paired_difference():
    a = {"p1": 1.0, "p2": 0.5, "p3": 0.0}
    b = {"p1": 0.5, "p2": 0.5, "p3": 0.5}
    est = metrics.paired_difference(a, b)
    # d = 0.5, 0, -0.5: mean 0, sd 0.5, se 0.5/sqrt(3)
    assert est.value == pytest.approx(0.0)
    assert est.stderr == pytest.approx(0.5 / math.sqrt(3))
    with pytest.raises(ValueError, match="same problems"):
        metrics.paired_difference({"p1": 1.0}, {"p2": 1.0})


def test_pass_at_k_of_float_zero_one_scores():
    """Rewards of a scorer come as floats: 0.0 / 1.0 on every sample is still pass@k, not a crash."""
    from eval import metrics as m

    assert m.per_problem([[0.0, 0.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]], "pass", 2) == \
        m.per_problem([[0, 0, 0, 0], [1, 0, 0, 0]], "pass", 2) == [0.0, 0.5]
