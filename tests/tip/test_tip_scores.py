"""Scores: min-max and running normalization, Soft-OR (Eq. 5), Q3 (§7.3), K = ceil(ratio N)."""
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tip_patches.scores import RunningMinMax, minmax, num_kept, q3_score, soft_or

T = lambda *x: torch.tensor(x, dtype=torch.float32)  # noqa: E731

finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, width=32)


def test_minmax_hand():
    assert torch.allclose(minmax(T(1.0, 2.0, 3.0)), T(0.0, 0.5, 1.0))
    assert torch.allclose(minmax(T(4.0, 0.0, 1.0, 2.0)), T(1.0, 0.0, 0.25, 0.5))


@pytest.mark.parametrize("x", [T(2.0, 2.0, 2.0), T(7.0), T(0.0, 0.0)])
def test_minmax_degenerate_is_zero(x):
    out = minmax(x)
    assert out.shape == x.shape and torch.equal(out, torch.zeros_like(out))


def test_minmax_empty():
    out = minmax(torch.zeros(0))
    assert out.shape == (0,)


def test_minmax_explicit_range_clamps():
    assert torch.allclose(minmax(T(-1.0, 0.0, 5.0, 10.0, 20.0), lo=0.0, hi=10.0), T(0.0, 0.0, 0.5, 1.0, 1.0))


@settings(max_examples=60, deadline=None)
@given(st.lists(finite, min_size=0, max_size=40))
def test_minmax_in_unit_interval_never_nan(xs):
    out = minmax(torch.tensor(xs, dtype=torch.float32))
    assert not out.isnan().any()
    assert ((out >= 0) & (out <= 1)).all()
    if len(xs) and max(xs) > min(xs):
        assert out.max() == 1 and out.min() == 0


def test_scores_carry_no_gradient():
    h = T(0.1, 0.5, 2.0).requires_grad_()
    d = T(1.0, 0.0, 0.3).requires_grad_()
    assert not soft_or(h, d).requires_grad
    assert not q3_score(h, d).requires_grad
    assert not minmax(h).requires_grad


def test_soft_or_hand():
    # ĥ = [0, .5, 1, .5], δ̂ = [0, 1, 0, .5]  ->  s = ĥ + δ̂ - ĥδ̂ = [0, 1, 1, .75]
    s = soft_or(T(0.0, 1.0, 2.0, 1.0), T(0.0, 2.0, 0.0, 1.0))
    assert torch.allclose(s, T(0.0, 1.0, 1.0, 0.75))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(min_value=0, max_value=1, width=32), min_size=1, max_size=20))
def test_soft_or_is_exact_on_the_edges(xs):
    from tip_patches.scores import soft_or_from_normalized as f

    x, one, zero = torch.tensor(xs), torch.ones(len(xs)), torch.zeros(len(xs))
    assert (f(x, one) == 1).all() and (f(one, x) == 1).all()  # either axis at its max -> the max score
    assert torch.equal(f(x, zero), x) and torch.equal(f(zero, x), x)
    assert torch.allclose(f(x, x.flip(0)), x + x.flip(0) - x * x.flip(0))  # Eq. 5


def test_soft_or_degenerate_axis_falls_back_to_the_other():
    d = T(0.0, 3.0, 1.5)
    assert torch.allclose(soft_or(T(0.7, 0.7, 0.7), d), minmax(d))
    assert soft_or(T(1.0), T(2.0)).tolist() == [0.0]
    assert soft_or(torch.zeros(0), torch.zeros(0)).shape == (0,)


def test_q3_hand():
    # ĥ = [0, 1, .5]; q = (1 - ĥ) f with f raw (not normalized)
    q = q3_score(T(0.0, 2.0, 1.0), T(3.0, 3.0, 1.0))
    assert torch.allclose(q, T(3.0, 0.0, 0.5))


def test_q3_degenerate_entropy_ranks_by_divergence():
    f = T(0.2, 5.0, 1.0)
    assert torch.allclose(q3_score(T(1.0, 1.0, 1.0), f), f)
    assert q3_score(torch.zeros(0), torch.zeros(0)).shape == (0,)


def test_running_minmax_ema_and_state():
    norm = RunningMinMax(momentum=0.5)
    assert torch.allclose(norm(T(0.0, 5.0, 10.0)), T(0.0, 0.5, 1.0))  # first call: the batch range
    out = norm(T(0.0, 10.0, 20.0))  # hi = 0.5 * 10 + 0.5 * 20 = 15
    assert (norm.lo, norm.hi) == (0.0, 15.0)
    assert torch.allclose(out, T(0.0, 10 / 15, 1.0))  # 20 > hi is clamped
    norm(torch.zeros(0))  # an empty batch leaves the state alone
    assert norm.updates == 2
    other = RunningMinMax(0.9)
    other.load_state_dict(norm.state_dict())
    assert other.state_dict() == norm.state_dict()
    assert torch.equal(other(T(3.0, 6.0)), norm(T(3.0, 6.0)))


def test_running_minmax_damps_an_outlier():
    batch, outlier = T(0.0, 1.0, 2.0), T(0.0, 1.0, 100.0)
    norm = RunningMinMax(0.9)
    norm(batch)
    norm(outlier)
    # with per-batch min-max the outlier squashes the ordinary tokens to ~0; the EMA does not
    assert norm(batch)[1] > 5 * minmax(outlier)[1]


@pytest.mark.parametrize("m", [-0.1, 1.0, 2.0])
def test_running_momentum_range(m):
    with pytest.raises(ValueError, match="tip.running_momentum"):
        RunningMinMax(m)


@pytest.mark.parametrize("ratio,n,k", [(0.1, 30, 3), (0.2, 10, 2), (0.3, 10, 3), (0.5, 7, 4), (0.01, 5, 1),
                                       (1.0, 9, 9), (0.7, 0, 0), (1e-9, 1, 1)])
def test_num_kept(ratio, n, k):
    assert num_kept(ratio, n) == k


@settings(max_examples=100, deadline=None)
@given(st.floats(min_value=1e-6, max_value=1.0), st.integers(min_value=1, max_value=10**6))
def test_num_kept_is_ceil(ratio, n):
    k = num_kept(ratio, n)
    assert 1 <= k <= n
    assert k in (math.ceil(ratio * n), math.ceil(ratio * n) - 1)  # minus one only for float noise
