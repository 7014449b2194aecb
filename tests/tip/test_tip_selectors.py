"""Selection rules: hand-computed cases, properties, sampling, importance weights, adaptive KL."""
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tip_patches import RULES, select
from tip_patches.scores import minmax

TOPK_RULES = ["entropy_topk", "soft_or", "soft_or_bottom", "q3"]
SAMPLE_RULES = ["entropy_sample", "adaptive_kl"]
gen = lambda seed=0: torch.Generator().manual_seed(seed)  # noqa: E731
values = st.lists(st.floats(min_value=0, max_value=20, allow_nan=False, width=32), min_size=1, max_size=40)


def ratio_for(rule, ratio):
    return 1.0 if rule == "all" else ratio


# ------------------------------------------------------------------ hand-computed

def test_soft_or_top_and_bottom_hand(make_stats):
    s = make_stats([0.0, 1.0, 2.0, 1.0], [0.0, 2.0, 0.0, 1.0])  # scores [0, 1, 1, .75]
    assert select(s, "soft_or", 0.5).indices.tolist() == [1, 2]
    assert select(s, "soft_or", 0.75).indices.tolist() == [1, 2, 3]
    assert select(s, "soft_or_bottom", 0.5).indices.tolist() == [0, 3]


def test_entropy_topk_hand(make_stats):
    s = make_stats([3.0, 1.0, 2.0, 0.0], [9.0, 9.0, 0.0, 9.0])
    assert select(s, "entropy_topk", 0.5).indices.tolist() == [0, 2]  # divergence ignored


def test_q3_hand(make_stats):
    s = make_stats([0.0, 2.0, 1.0], [0.0, 0.0, 0.0], forward_kl=[3.0, 3.0, 1.0])  # q = [3, 0, .5]
    assert select(s, "q3", 1 / 3).indices.tolist() == [0]
    assert select(s, "q3", 2 / 3).indices.tolist() == [0, 2]


@pytest.mark.parametrize("rule,expected", [("soft_or", [0, 1]), ("soft_or_bottom", [3, 4]),
                                           ("entropy_topk", [0, 1]), ("q3", [0, 1])])
def test_ties_break_by_position(make_stats, rule, expected):
    s = make_stats([1.0] * 5, [2.0] * 5)  # every score equal
    assert select(s, rule, 0.4).indices.tolist() == expected


def test_ties_among_the_best_break_by_position(make_stats):
    s = make_stats([0.0, 5.0, 1.0, 5.0, 5.0], [0.0] * 5)
    assert select(s, "entropy_topk", 0.4).indices.tolist() == [1, 3]


def test_q3_prefers_low_entropy_high_divergence(make_stats):
    #            Q1    Q2    Q3    Q4
    h = [3.0, 2.8, 0.0, 0.1]
    f = [4.0, 0.1, 4.0, 0.0]
    s = make_stats(h, f, forward_kl=f)
    assert select(s, "q3", 0.25).indices.tolist() == [2]
    assert 2 not in select(s, "entropy_topk", 0.5).indices.tolist()  # the entropy blind spot (Prop. 2)
    assert 2 in select(s, "soft_or", 0.5).indices.tolist()  # Soft-OR recovers it (Remark 2)
    assert select(s, "soft_or_bottom", 0.25).indices.tolist() == [3]  # Q4 is what Bottom-K keeps


# ------------------------------------------------------------------ properties

@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("n", [1, 2, 17])
def test_ratio_one_is_no_selection(rand_stats, rule, n):
    s = rand_stats(n, seed=n)
    sel = select(s, rule, 1.0, gen(), importance_weighted=rule in SAMPLE_RULES)
    assert sel.indices.tolist() == list(range(n))
    assert sel.weights is None or torch.allclose(sel.weights, torch.ones(n))


@pytest.mark.parametrize("rule", RULES)
def test_empty_batch_is_empty_selection(make_stats, rule):
    sel = select(make_stats([], []), rule, ratio_for(rule, 0.3), gen())
    assert sel.indices.dtype == torch.int64 and sel.indices.numel() == 0


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("h,d", [([2.0] * 6, [0.5] * 6), ([0.3], [4.0]), ([0.0] * 4, [0.0] * 4)])
def test_degenerate_batches_are_defined(make_stats, rule, h, d):
    sel = select(make_stats(h, d), rule, ratio_for(rule, 0.5), gen(), importance_weighted=rule in SAMPLE_RULES)
    k = len(h) if rule == "all" else math.ceil(0.5 * len(h))
    assert len(sel.indices) == k
    assert all(math.isfinite(v) for v in sel.diagnostics.values())
    if sel.weights is not None:
        assert torch.isfinite(sel.weights).all()


@settings(max_examples=40, deadline=None)
@given(values, st.floats(min_value=0.01, max_value=1.0), st.sampled_from(TOPK_RULES + SAMPLE_RULES))
def test_indices_sorted_unique_int64_of_size_k(hs, ratio, rule):
    from opsd.hooks import TokenStats

    h = torch.tensor(hs)
    s = TokenStats(h, h.flip(0), h.roll(1), h)
    sel = select(s, rule, ratio, gen())
    idx = sel.indices
    assert idx.dtype == torch.int64
    assert len(idx) == math.ceil(round(ratio * len(hs), 9))
    assert torch.equal(idx, torch.unique(idx))  # unique and sorted
    assert idx.min() >= 0 and idx.max() < len(hs)


@settings(max_examples=40, deadline=None)
@given(values)
def test_bottom_and_top_half_cover_all_tokens(hs):
    from opsd.hooks import TokenStats

    h = torch.tensor(hs)
    s = TokenStats(h, h.roll(1) * 0.5, h, h)
    top = set(select(s, "soft_or", 0.5).indices.tolist())
    bottom = set(select(s, "soft_or_bottom", 0.5).indices.tolist())
    assert top | bottom == set(range(len(hs)))
    assert len(top & bottom) == len(hs) % 2  # disjoint for even N; one shared token for odd N


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(min_value=0, max_value=20, allow_nan=False, width=32), min_size=4, max_size=40, unique=True),
       st.randoms(use_true_random=False), st.floats(min_value=0.05, max_value=1.0))
def test_soft_or_keeps_the_first_of_entropy_and_divergence_rankings(hs, rnd, ratio):
    from opsd.hooks import TokenStats

    h = torch.tensor(hs)
    d = h[torch.tensor(rnd.sample(range(len(hs)), len(hs)))]  # an independent ranking
    s = TokenStats(h, d, d, h)
    kept = set(select(s, "soft_or", max(ratio, 2 / len(hs))).indices.tolist())
    first_h = select(s, "entropy_topk", 1 / len(hs)).indices.item()
    first_d = int(d.argmax())
    assert {first_h, first_d} <= kept


@settings(max_examples=30, deadline=None)
@given(values, st.floats(min_value=0.05, max_value=1.0))
def test_soft_or_never_drops_a_high_divergence_token_for_a_lower_scored_one(hs, ratio):
    from opsd.hooks import TokenStats
    from tip_patches.scores import soft_or

    h = torch.tensor(hs)
    d = torch.zeros_like(h)
    d[::2] = 5.0  # even positions: δ̂ = 1, so Soft-OR = 1 whatever their entropy (Remark 2)
    s = TokenStats(h, d, d, h)
    kept = select(s, "soft_or", ratio).indices
    if (soft_or(h, d)[kept] < 1).any():
        assert set(range(0, len(hs), 2)) <= set(kept.tolist())


# ------------------------------------------------------------------ errors

@pytest.mark.parametrize("ratio", [0, 0.0, -0.1, 1.5, float("nan"), "0.5", None, True])
def test_bad_ratio_names_the_option(make_stats, ratio):
    with pytest.raises(ValueError, match=r"tip\.ratio"):
        select(make_stats([1.0, 2.0], [1.0, 2.0]), "soft_or", ratio)


def test_rule_all_rejects_a_ratio(make_stats):
    with pytest.raises(ValueError, match=r"tip\.ratio=0\.5 has no effect with tip\.rule=all"):
        select(make_stats([1.0, 2.0], [1.0, 2.0]), "all", 0.5)


def test_unknown_rule(make_stats):
    with pytest.raises(ValueError, match=r"tip\.rule='top'"):
        select(make_stats([1.0], [1.0]), "top", 0.5)


def test_nan_stats_are_refused(make_stats):
    with pytest.raises(ValueError, match="reverse_kl contains NaN"):
        select(make_stats([1.0, 2.0], [float("nan"), 1.0]), "soft_or", 0.5)


# ------------------------------------------------------------------ sampling

def test_sampling_is_reproducible_from_the_seed(rand_stats):
    s = rand_stats(200)
    a = [select(s, "entropy_sample", 0.2, gen(3)).indices for _ in range(2)]
    assert torch.equal(a[0], a[1])
    assert not torch.equal(a[0], select(s, "entropy_sample", 0.2, gen(4)).indices)
    g = gen(3)
    first, second = select(s, "entropy_sample", 0.2, g).indices, select(s, "entropy_sample", 0.2, g).indices
    assert torch.equal(first, a[0]) and not torch.equal(first, second)  # the generator advances


def test_sampling_without_generator_uses_the_global_rng(rand_stats):
    s = rand_stats(100)
    torch.manual_seed(1)
    a = select(s, "entropy_sample", 0.3).indices
    torch.manual_seed(1)
    assert torch.equal(a, select(s, "entropy_sample", 0.3).indices)


@pytest.mark.parametrize("alpha", [1.0, 2.0])
def test_sampling_probability_is_entropy_to_the_alpha(make_stats, alpha):
    s = make_stats([0.0, 1.0, 3.0], [0.0, 0.0, 0.0])  # ĥ = [0, 1/3, 1]; ĥ = 0 gets the floor
    g, trials = gen(0), 4000
    counts = torch.zeros(3)
    for _ in range(trials):
        counts[select(s, "entropy_sample", 1 / 3, g, entropy_alpha=alpha, sample_floor=1e-3).indices] += 1
    p = torch.tensor([1e-3, (1 / 3) ** alpha, 1.0])
    p = p / p.sum()
    se = (p * (1 - p) / trials).sqrt()
    assert ((counts / trials - p).abs() <= 4 * se + 1e-3).all(), (counts / trials, p)


def test_sampling_can_keep_more_tokens_than_have_nonzero_entropy(make_stats):
    sel = select(make_stats([0.0, 0.0, 0.0, 1.0], [1.0] * 4), "entropy_sample", 0.75, gen())
    assert len(sel.indices) == 3 and 3 in sel.indices.tolist()


def _mc_means(s, delta, ratio, weighted, trials, floor):
    g, out = gen(0), []
    for _ in range(trials):
        sel = select(s, "entropy_sample", ratio, g, importance_weighted=weighted, sample_floor=floor)
        w = sel.weights if weighted else torch.ones(len(sel.indices))
        out.append(float((w * delta[sel.indices]).sum()) / len(sel.indices))  # Eq. 7 with weights
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize("ratio", [0.25, 0.5])
def test_importance_weights_are_unbiased(make_stats, ratio):
    # divergence is largest where entropy is smallest: plain entropy sampling is biased low here
    h = torch.tensor([0.0, 0.2, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0], dtype=torch.float64)
    delta = 3.0 - h + torch.tensor([0.5, 0, 0.3, 0, 0.1, 0, 0.2, 0], dtype=torch.float64)
    s = make_stats(h, delta, dtype=torch.float64)
    true = float(delta.mean())
    est = _mc_means(s, delta, ratio, True, 3000, floor=0.05)
    se = float(est.std()) / math.sqrt(len(est))
    assert abs(float(est.mean()) - true) < 4 * se, (float(est.mean()), true, se)
    plain = _mc_means(s, delta, ratio, False, 1000, floor=0.05)
    assert true - float(plain.mean()) > 10 * float(plain.std()) / math.sqrt(len(plain))  # the test can fail


def test_importance_weights_sum_to_k_in_expectation(rand_stats):
    s = rand_stats(30, seed=5)
    g, sums = gen(1), []
    for _ in range(2000):
        sel = select(s, "entropy_sample", 0.2, g, importance_weighted=True, sample_floor=0.05)
        sums.append(float(sel.weights.sum()))
    sums = torch.tensor(sums, dtype=torch.float64)
    assert abs(float(sums.mean()) - 6) < 4 * float(sums.std()) / math.sqrt(len(sums))


def test_importance_weighted_and_plain_sample_the_same_tokens(rand_stats):
    s = rand_stats(50)
    a = select(s, "entropy_sample", 0.3, gen(2))
    b = select(s, "entropy_sample", 0.3, gen(2), importance_weighted=True)
    assert torch.equal(a.indices, b.indices) and a.weights is None and b.weights.shape == b.indices.shape
    assert (b.weights > 0).all()


# ------------------------------------------------------------------ adaptive KL

def test_adaptive_kl_extra_weight_is_alpha_times_teacher_entropy_indicator(make_stats):
    s = make_stats([1.0, 2.0, 3.0, 4.0], [1.0] * 4, teacher_entropy=[0.9, 0.1, 0.8, 2.0])
    sel = select(s, "adaptive_kl", 1.0, gen())
    assert sel.extra_loss_weight.tolist() == [1.0, 0.0, 1.0, 1.0]  # H^T >= τ = 0.8
    sel = select(s, "adaptive_kl", 1.0, gen(), adaptive_alpha=0.5, adaptive_tau=0.85)
    assert sel.extra_loss_weight.tolist() == [0.5, 0.0, 0.0, 0.5]


def test_adaptive_kl_indices_are_entropy_sampling(rand_stats):
    s = rand_stats(64)
    a, b = select(s, "adaptive_kl", 0.2, gen(9)), select(s, "entropy_sample", 0.2, gen(9))
    assert torch.equal(a.indices, b.indices)
    on = (s.teacher_entropy[a.indices] >= 0.8).float()
    assert torch.equal(a.extra_loss_weight, on)


def test_adaptive_kl_importance_weighted_extra_term(rand_stats):
    s = rand_stats(64)
    sel = select(s, "adaptive_kl", 0.2, gen(9), importance_weighted=True)
    on = (s.teacher_entropy[sel.indices] >= 0.8).float()
    assert torch.allclose(sel.extra_loss_weight, on * sel.weights)


def test_normalizers_are_pluggable(rand_stats):
    s = rand_stats(40)
    calls = []

    def spy(x):
        calls.append(len(x))
        return minmax(x)

    a = select(s, "soft_or", 0.3, normalizers=(spy, spy))
    assert calls == [40, 40] and torch.equal(a.indices, select(s, "soft_or", 0.3).indices)
