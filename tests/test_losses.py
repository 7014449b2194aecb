"""Chunked divergences and statistics: properties and hand-computed cases."""
import math

import pytest
import torch

from opsd.losses import (DenseLogits, HiddenLogits, TeacherTopK, align_vocab, divergence, fallback_rows,
                         selected_loss_sum, stats_from_sources, take_fallback_rows, token_stats)

from _loss_checks import closed_form_only as _closed_form_only, no_fallback  # noqa: F401 (autouse)


def _ref(s, t):
    ls, lt = torch.log_softmax(s.double(), -1), torch.log_softmax(t.double(), -1)
    ps, pt = ls.exp(), lt.exp()
    return dict(entropy=-(ps * ls).sum(-1), reverse_kl=(ps * (ls - lt)).sum(-1),
                forward_kl=(pt * (lt - ls)).sum(-1), teacher_entropy=-(pt * lt).sum(-1))


@pytest.mark.parametrize("chunk", [1, 3, 7, 512])
def test_chunked_equals_unchunked(chunk):
    torch.manual_seed(0)
    s, t = torch.randn(20, 11) * 3, torch.randn(20, 11) * 3
    st, ref = token_stats(s, t, chunk_size=chunk), _ref(s, t)
    for k, v in ref.items():
        torch.testing.assert_close(getattr(st, k).double(), v, atol=1e-5, rtol=1e-5)


def test_identical_distributions_give_zero():
    s = torch.randn(9, 13) * 5
    st = token_stats(s, s.clone())
    assert st.reverse_kl.abs().max() < 1e-6 and st.forward_kl.abs().max() < 1e-6
    for kind in ("reverse_kl", "forward_kl", "jsd"):
        lp = torch.log_softmax(s, -1)
        assert divergence(lp, lp, kind).abs().max() < 1e-6


def test_hand_computed_two_token_case():
    # student p = (0.5, 0.5), teacher q = (0.9, 0.1)
    s = torch.log(torch.tensor([[0.5, 0.5]]))
    t = torch.log(torch.tensor([[0.9, 0.1]]))
    st = token_stats(s, t)
    rkl = 0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1)
    fkl = 0.9 * math.log(0.9 / 0.5) + 0.1 * math.log(0.1 / 0.5)
    assert st.reverse_kl.item() == pytest.approx(rkl, abs=1e-6)
    assert st.forward_kl.item() == pytest.approx(fkl, abs=1e-6)
    assert st.entropy.item() == pytest.approx(math.log(2), abs=1e-6)
    assert st.teacher_entropy.item() == pytest.approx(-(0.9 * math.log(0.9) + 0.1 * math.log(0.1)), abs=1e-6)
    # JSD(0.5) with m = (0.7, 0.3)
    jsd = 0.5 * (0.9 * math.log(0.9 / 0.7) + 0.1 * math.log(0.1 / 0.3)) + \
        0.5 * (0.5 * math.log(0.5 / 0.7) + 0.5 * math.log(0.5 / 0.3))
    assert divergence(s, t, "jsd", 0.5).item() == pytest.approx(jsd, abs=1e-6)


def test_zero_probabilities_never_nan():
    # both put zero mass on token 1: 0 * log(0/0) counts as 0, so everything stays finite
    s = torch.tensor([[0.0, -float("inf"), 0.0]])
    t = torch.tensor([[1.0, -float("inf"), 2.0]])
    st = token_stats(s, t)
    for v in (st.entropy, st.reverse_kl, st.forward_kl, st.teacher_entropy):
        assert torch.isfinite(v).all()
    # the teacher rules out a token the student samples: reverse KL is +inf, not NaN
    st = token_stats(s, torch.tensor([[1.0, 2.0, -float("inf")]]))
    assert st.reverse_kl.item() == float("inf")
    assert take_fallback_rows() == dict(loss=0, statistics=2)  # both rows: -inf logits are what it is for


def test_empty_batch_gives_empty_stats_and_zero_loss():
    st = token_stats(torch.zeros(0, 5), torch.zeros(0, 5))
    assert st.num_tokens == 0
    h = torch.zeros(0, 4, requires_grad=True)
    w = torch.randn(5, 4, requires_grad=True)
    loss = selected_loss_sum(h, w, DenseLogits(torch.zeros(0, 5), 5), torch.zeros(0, dtype=torch.long), 5)
    assert loss.item() == 0.0 and not torch.isnan(loss)


def test_vocab_alignment_slices_padding():
    torch.manual_seed(1)
    s, t = torch.randn(4, 10), torch.randn(4, 12)
    st = token_stats(s, t)
    ref = _ref(s, t[:, :10])
    torch.testing.assert_close(st.reverse_kl.double(), ref["reverse_kl"], atol=1e-5, rtol=1e-5)
    assert align_vocab(151936, 152064, 151665) == 151665
    with pytest.raises(ValueError, match="do not share"):
        align_vocab(100, 120, 150)


@pytest.mark.parametrize("loss_type", ["reverse_kl", "forward_kl", "jsd"])
@pytest.mark.parametrize("impl", ["fused", "autograd", "recompute"])
def test_grad_pass_matches_naive(loss_type, impl):
    torch.manual_seed(2)
    h = torch.randn(17, 6, requires_grad=True)
    w = torch.randn(13, 6, requires_grad=True)
    ht, wt = torch.randn(17, 5), torch.randn(15, 5)
    idx = torch.tensor([0, 3, 4, 9, 16])
    got = selected_loss_sum(h, w, HiddenLogits(ht, wt, 13), idx, 13, loss_type, chunk_size=2, impl=impl)
    got.backward()
    g_got = (h.grad.clone(), w.grad.clone())
    h.grad = w.grad = None
    ls = torch.log_softmax(h[idx] @ w.T, -1)
    lt = torch.log_softmax(ht[idx] @ wt[:13].T, -1)
    ref = divergence(ls, lt, loss_type).sum()
    ref.backward()
    assert got.item() == pytest.approx(ref.item(), rel=1e-5)
    _closed_form_only()  # fused: the closed form itself, not the direct formulas
    torch.testing.assert_close(g_got[0], h.grad)
    torch.testing.assert_close(g_got[1], w.grad)


def test_topk_teacher_converges_to_exact():
    torch.manual_seed(3)
    s, t = torch.randn(30, 50) * 2, torch.randn(30, 50) * 2
    exact = stats_from_sources(DenseLogits(s, 50), DenseLogits(t, 50))
    errs = []
    for k in (4, 16, 50):
        approx = stats_from_sources(DenseLogits(s, 50), TeacherTopK.from_logits(DenseLogits(t, 50), k))
        errs.append((approx.reverse_kl - exact.reverse_kl).abs().mean().item())
        assert (approx.entropy == exact.entropy).all()  # student entropy stays exact
    assert errs[0] > errs[1] > errs[2] and errs[2] < 1e-4


def test_recompute_keeps_no_teacher_logprobs_until_backward():
    """loss.impl=recompute: after the grad pass's forward no (chunk, V) tensor stays alive; the
    teacher log-probs used to be held as checkpoint inputs, one per chunk (memory ~ K x V)."""
    import gc

    torch.manual_seed(0)
    v, n = 997, 12
    h, w = torch.randn(n, 4, requires_grad=True), torch.randn(v, 4, requires_grad=True)
    loss = selected_loss_sum(h, w, HiddenLogits(torch.randn(n, 4), torch.randn(v, 4), v), torch.arange(n), v,
                             chunk_size=4, impl="recompute")
    gc.collect()
    assert not [t for t in gc.get_objects() if isinstance(t, torch.Tensor) and t.shape == (4, v)]
    loss.backward()
    assert torch.isfinite(h.grad).all() and torch.isfinite(w.grad).all()


def test_stats_pass_frees_each_chunk_before_the_next():
    """Only the current chunk's (chunk, V) log-probs are alive when the next teacher chunk is computed
    (the previous teacher log-probs used to stay referenced by the top-k term's argument)."""
    import gc

    alive = []

    class Counting(DenseLogits):
        def rows(self, idx):
            gc.collect()
            alive.append(sum(isinstance(t, torch.Tensor) and t.shape == (4, 11) for t in gc.get_objects()))
            return super().rows(idx)

    torch.manual_seed(0)
    stats_from_sources(DenseLogits(torch.randn(12, 11), 11), Counting(torch.randn(12, 11), 11), chunk_size=4)
    assert alive == [1, 1, 1]  # the student log-probs of the chunk being scored
