"""Token-budget micro-batches and sequence packing (opsd/batching.py, opsd/packing.py): the plan covers every sequence
once within the budget; a packed micro-batch gives the padded one's loss, gradients, statistics and
TIP selections; packed rows on sdpa run per-sequence attention (opsd/varlen_attention.py) without a
dense mask and equal the dense-mask result; one update by token budget and/or packed equals the
sequence-count update; ranks with fewer micro-batches are padded with empty ones; bad options are
named."""
import json
import math
import random

import pytest
import torch

from opsd import batching, packing, varlen_attention
from opsd.config import ConfigError, load_config
from opsd.batching import build_sequences
from opsd.rollout.base import RolloutBackend, Rollouts

from _runs import run_overrides
from _teardown import assert_clean_teardown


class LongTailRollouts(RolloutBackend):
    """Responses of fixed, long-tailed lengths (most short, a few long), tokens seeded by prompt."""

    name = "long-tail"

    def __init__(self, vocab_ids, eos_id, lengths=(2, 3, 2, 14, 4, 2, 3, 9)):
        self.vocab_ids, self.eos_id, self.lengths = list(vocab_ids), eos_id, lengths

    def generate(self, prompt_ids, sampling):
        out = Rollouts([], [], [], [])
        for i, p in enumerate(prompt_ids):
            for j in range(sampling.n):
                rng = random.Random(hash((tuple(p), j)) % (2 ** 31))
                n = self.lengths[(sum(p) + j) % len(self.lengths)]
                out.prompt_ids.append(list(p))
                out.response_ids.append([rng.choice(self.vocab_ids) for _ in range(n)] + [self.eos_id])
                out.finished.append(True)
                out.prompt_index.append(i)
        return out


# ------------------------------------------------------------------ plans and layouts


@pytest.mark.parametrize("packed", [False, True])
def test_token_plan_covers_every_sequence_once_within_budget(packed):
    rng = random.Random(0)
    lengths = [rng.choice([5, 6, 8, 30, 7, 5, 90]) for _ in range(40)]
    plan, oversize = batching.plan_by_tokens(lengths, 64, packed)
    assert sorted(i for rows in plan for i in rows) == list(range(40))
    assert sorted(oversize) == [i for i, n in enumerate(lengths) if n > 64]
    for rows in plan:
        cost = sum(lengths[i] for i in rows) if packed else len(rows) * max(lengths[i] for i in rows)
        assert cost <= 64 or (len(rows) == 1 and rows[0] in oversize), (rows, cost)
        assert rows == sorted(rows)  # batch order inside a micro-batch
    # grouped by length: far fewer micro-batches than sequences; packed: first-fit decreasing is
    # within 11/9 of the fewest possible bins, which is at least the tokens / budget
    rest = sum(n for n in lengths if n <= 64)
    assert len(plan) <= (len(oversize) + math.ceil(11 / 9 * rest / 64) + 1 if packed else len(lengths) // 2)


def test_collate_packed_has_no_padding_and_positions_restart():
    seq = build_sequences([[5, 6], [7, 8, 9], [4]], [[10, 11, 12], [13], [14, 15]], pad_id=0)
    seq["loss_mask"] = seq["loss_mask"].long()
    padded = batching.collate(seq, [0, 2], pad_id=0, packed=False)
    packed = batching.collate(seq, [0, 2], pad_id=0, packed=True)
    assert padded["input_ids"].tolist() == [[5, 6, 10, 11, 12], [4, 14, 15, 0, 0]]
    assert packed["input_ids"].tolist() == [[5, 6, 10, 11, 12, 4, 14, 15]]
    assert packed["position_ids"].tolist() == [[0, 1, 2, 3, 4, 0, 1, 2]] and packed["attention_mask"] is None
    assert batching.padding_tokens(packed) == (0, 8) and batching.padding_tokens(padded) == (2, 10)
    # the loss positions, and the sequence / offset of each, are those of the padded layout
    assert padded["loss_mask"][padded["attention_mask"].bool()].tolist() == packed["loss_mask"][0].tolist()
    for a, b in zip(packing.sample_and_position(padded["loss_mask"], None),
                    packing.sample_and_position(packed["loss_mask"], packed["position_ids"])):
        assert a.tolist() == b.tolist()
    empty = batching.collate(seq, [], pad_id=0, packed=True)
    assert empty["loss_mask"].sum() == 0 and empty["rows"] == [] and batching.padding_tokens(empty) == (1, 1)


# ------------------------------------------------------------------ one micro-batch: padded == packed


def _micro_batch(tok, packed):
    prompts = [tok.encode(p) for p in ("1+2=", "7+8=", "3+3=")]
    responses = [tok.encode(r) for r in ("3 ok", "15", "6, six and more")]
    seq = build_sequences(prompts, responses, tok.pad_token_id, tok.eos_token_id)
    seq["loss_mask"] = seq["loss_mask"].long()
    return batching.collate(seq, [0, 1, 2], tok.pad_token_id, packed)


def _run_module(world, attn, packed, selector=None):
    from opsd.distill import DistillModule
    from opsd.models import load_causal_lm, load_tokenizer
    from opsd.teacher import Teacher

    tok = load_tokenizer(world["student"])
    student = load_causal_lm(world["student"], attn_implementation=attn)
    teacher = Teacher(load_causal_lm(world["teacher"], attn_implementation=attn), torch.device("cpu"))
    if packed:  # as Trainer.setup does with engine.packing: sdpa -> per-sequence sdpa
        for model, role in ((student, "student"), (teacher.model, "teacher")):
            want = varlen_attention.VARLEN_SDPA if attn == "sdpa" else attn
            assert packing.prepare_attention(model, role) == want == model.config._attn_implementation
    v = min(student.config.vocab_size, teacher.width)
    mb = _micro_batch(tok, packed)
    src = teacher.score(mb["input_ids"], mb["attention_mask"], mb["loss_mask"], v, mb["position_ids"])
    mod = DistillModule(student, v, chunk_size=4)
    loss_sum, stats, sel, kept = mod(mb["input_ids"], mb["attention_mask"], mb["loss_mask"], src,
                                     position_ids=mb["position_ids"])
    loss_sum.backward()
    grads = {n: p.grad.clone() for n, p in student.named_parameters()}
    return loss_sum.item(), stats, sel, grads


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_micro_batch_equals_padded(tiny_world, attn):
    """Same loss, gradients and statistics: attention stays inside each packed sequence."""
    l_pad, s_pad, _, g_pad = _run_module(tiny_world, attn, packed=False)
    l_pack, s_pack, _, g_pack = _run_module(tiny_world, attn, packed=True)
    assert l_pack == pytest.approx(l_pad, rel=1e-5)
    for f in ("entropy", "reverse_kl", "forward_kl", "teacher_entropy", "sample_index", "position"):
        torch.testing.assert_close(getattr(s_pack, f), getattr(s_pad, f), atol=1e-5, rtol=1e-5)
    for n in g_pad:
        torch.testing.assert_close(g_pack[n], g_pad[n], atol=1e-6, rtol=1e-4)


def test_packing_without_the_position_reset_would_differ(tiny_world):
    """The test above can fail: the same packed row seen as one sequence (no position restart, so
    attention crosses sequences) gives other statistics."""
    from opsd.models import load_causal_lm, load_tokenizer
    from opsd.teacher import Teacher

    tok = load_tokenizer(tiny_world["student"])
    teacher = Teacher(load_causal_lm(tiny_world["teacher"]), torch.device("cpu"))
    mb = _micro_batch(tok, packed=True)
    right = teacher.score(mb["input_ids"], None, mb["loss_mask"], teacher.width, mb["position_ids"]).hidden
    wrong = teacher.score(mb["input_ids"], None, mb["loss_mask"], teacher.width, None).hidden
    assert (right - wrong).abs().max() > 1e-3


@pytest.mark.parametrize("rule", ["soft_or", "q3", "entropy_topk", "entropy_sample"])
def test_tip_selections_equal_packed_and_padded(tiny_world, rule):
    import tip_patches

    picked = []
    for packed in (False, True):
        with tip_patches.patched(rule=rule, ratio=0.4, seed=3):
            loss, _, sel, _ = _run_module(tiny_world, "sdpa", packed)
        picked.append((loss, sel.indices.tolist()))
    assert picked[0][1] == picked[1][1] and 0 < len(picked[0][1]) < 30
    assert picked[1][0] == pytest.approx(picked[0][0], rel=1e-5)


# ------------------------------------------------------------------ per-sequence sdpa (opsd/varlen_attention.py)


def test_segment_lengths_follow_the_position_restarts():
    assert varlen_attention.segment_lengths(torch.tensor([0, 1, 2, 0, 1, 0])) == [3, 2, 1]
    assert varlen_attention.segment_lengths(torch.tensor([4, 5, 6])) == [3]  # one sequence, at any offset
    assert varlen_attention.segment_lengths(torch.tensor([0, 1, 0, 0, 1])) == [2, 1, 2]


def test_varlen_attention_equals_explicitly_masked_attention_float64():
    """Two rows packed differently, grouped-query heads: output and gradients equal softmax attention
    under an explicit mask (same sequence and not in the future), computed without sdpa."""
    class Attn:
        is_causal, num_key_value_groups = True, 2

    torch.manual_seed(0)
    pos = torch.tensor([[0, 1, 2, 3, 0, 1, 0, 0, 1, 2, 3, 4], [0, 1, 2, 3, 4, 5, 6, 7, 8, 0, 1, 2]])  # (B, T)
    q = torch.randn(2, 4, 12, 8, dtype=torch.float64, requires_grad=True)  # (B, H, T, D)
    k, v = (torch.randn(2, 2, 12, 8, dtype=torch.float64, requires_grad=True) for _ in range(2))  # (B, H_kv, T, D)
    out, _ = varlen_attention.varlen_sdpa_attention(Attn(), q, k, v, None, scaling=0.3, position_ids=pos)

    seq = (torch.diff(pos, prepend=pos[:, :1] - 1) != 1).cumsum(-1)  # (B, T) sequence number
    t = torch.arange(12)
    allowed = (seq[:, :, None] == seq[:, None, :]) & (t[:, None] >= t[None, :])  # (B, T, T)
    kk, vv = k.repeat_interleave(2, dim=1), v.repeat_interleave(2, dim=1)  # query head h reads kv head h // 2
    scores = (q @ kk.transpose(-1, -2) * 0.3).masked_fill(~allowed[:, None], float("-inf"))
    ref = (scores.softmax(-1) @ vv).transpose(1, 2)  # (B, T, H, D)
    torch.testing.assert_close(out, ref, atol=1e-12, rtol=1e-12)
    w = torch.randn_like(ref)
    for a, b in zip(torch.autograd.grad((out * w).sum(), (q, k, v)), torch.autograd.grad((ref * w).sum(), (q, k, v))):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-12)


def test_packed_rows_run_per_sequence_sdpa_without_a_dense_mask(tiny_world, monkeypatch):
    """On sdpa, transformers attends over a packed row through a (T, T) block-diagonal mask. Switched
    as engine.packing switches it, no mask is built, every sdpa call covers one sequence, and the
    hidden states and gradients equal the dense-mask ones (float64)."""
    import transformers.masking_utils as masking_utils

    from opsd.models import load_causal_lm, load_tokenizer

    tok = load_tokenizer(tiny_world["teacher"])
    model = load_causal_lm(tiny_world["teacher"], attn_implementation="sdpa").double()
    mb = _micro_batch(tok, packed=True)
    lengths, width = varlen_attention.segment_lengths(mb["position_ids"][0]), mb["input_ids"].shape[1]
    assert len(lengths) == 3 and sum(lengths) == width
    calls, sdpa = [], torch.nn.functional.scaled_dot_product_attention

    def spy(q, k, v, attn_mask=None, **kw):  # (query length, mask shape) of every sdpa call
        calls.append((q.shape[2], None if attn_mask is None else tuple(attn_mask.shape)))
        return sdpa(q, k, v, attn_mask=attn_mask, **kw)

    def forward_backward():
        model.zero_grad()
        hidden = model.base_model(input_ids=mb["input_ids"], position_ids=mb["position_ids"],
                                  use_cache=False).last_hidden_state  # (1, T, d)
        hidden.pow(2).sum().backward()
        return hidden.detach(), {n: p.grad.clone() for n, p in model.base_model.named_parameters()}

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    dense_h, dense_g = forward_backward()
    assert calls == [(width, (1, 1, width, width))] * model.config.num_hidden_layers  # what this replaces
    calls.clear()
    assert packing.prepare_attention(model, "teacher") == varlen_attention.VARLEN_SDPA
    monkeypatch.setattr(masking_utils, "sdpa_mask", lambda *a, **kw: pytest.fail("a mask was built for a packed row"))
    h, g = forward_backward()
    assert calls == [(n, None) for n in lengths] * model.config.num_hidden_layers
    torch.testing.assert_close(h, dense_h, atol=1e-12, rtol=1e-12)
    for n in dense_g:
        torch.testing.assert_close(g[n], dense_g[n], atol=1e-12, rtol=1e-10, msg=n)


def test_varlen_sdpa_leaves_padded_batches_and_generation_to_sdpa(tiny_world):
    """The student also generates (HF rollouts) and may see padded batches: those run as plain sdpa."""
    from opsd.models import load_causal_lm, load_tokenizer

    tok = load_tokenizer(tiny_world["student"])
    model = load_causal_lm(tiny_world["student"], attn_implementation="sdpa")
    mb = _micro_batch(tok, packed=False)
    prompts = [tok.encode(p) for p in ("1+2=", "17+28=")]
    width = max(map(len, prompts))
    ids = torch.tensor([[tok.pad_token_id] * (width - len(p)) + p for p in prompts])  # left padding
    gen_mask = (torch.arange(width)[None, :] >= torch.tensor([[width - len(p)] for p in prompts])).long()
    outs = []
    for switch in (False, True):
        if switch:
            varlen_attention.use_varlen_sdpa(model)
        with torch.no_grad():
            hidden = model.base_model(input_ids=mb["input_ids"], attention_mask=mb["attention_mask"],
                                      use_cache=False).last_hidden_state
            gen = model.generate(ids, attention_mask=gen_mask, max_new_tokens=6, do_sample=False)
        outs.append((hidden, gen))
    assert model.config._attn_implementation == varlen_attention.VARLEN_SDPA
    torch.testing.assert_close(outs[1][0], outs[0][0], atol=0, rtol=0)
    assert outs[1][1].tolist() == outs[0][1].tolist()


# ------------------------------------------------------------------ one update through the trainer


def _one_update(world, out, extra, pad_to=None):
    """One Trainer.update on the long-tailed rollouts of step 1; returns (metrics, gradients)."""
    from opsd import batching as batching_mod
    from opsd.trainer import Trainer

    cfg = load_config(None, run_overrides(world, out, 1, ["engine.zero_stage=0", "data.max_prompt_length=32",
                                                          "loss.reward_fn=null", *extra]))
    tr = Trainer(cfg).setup()
    try:
        tr.backend = LongTailRollouts(range(10, 60), tr.tokenizer.eos_token_id)
        grads, opt = {}, tr.engine.optimizer
        step = opt.step

        def recording_step(*a, **kw):  # the summed gradient of the update, before clipping
            grads.update({n: p.grad.clone() for n, p in tr.student.named_parameters()})
            return step(*a, **kw)

        opt.step = recording_step
        rollouts, _ = tr.rollout(tr.train_data.batch(tr.sampler.next_batch()))
        if pad_to is not None:  # another rank has more micro-batches: this one runs empty ones
            real = batching_mod.max_over_ranks
            batching_mod.max_over_ranks = lambda n: pad_to
        try:
            metrics = tr.update(rollouts)
        finally:
            if pad_to is not None:
                batching_mod.max_over_ranks = real
        metrics["attn"] = (tr.student.config._attn_implementation, tr.teacher.model.config._attn_implementation)
    finally:
        tr.cleanup()
    return metrics, grads


@pytest.mark.slow
def test_token_budget_and_packing_give_the_sequence_count_update(tiny_world, tmp_path):
    base_m, base_g = _one_update(tiny_world, tmp_path / "count", [])
    assert base_m["micro_batches"] == 3 and base_m["padding_frac"] > 0.05  # 8 sequences of 3, padded
    assert base_m["loss_fallback_rows"] == 0 and base_m["stats_fallback_rows"] == 0  # closed forms finite
    runs = {"budget": ["engine.micro_batch_tokens=64"],
            "packed": ["engine.packing=true"],
            "budget+packed": ["engine.micro_batch_tokens=64", "engine.packing=true"],
            "budget, padded with empty micro-batches": (["engine.micro_batch_tokens=64"], 9)}
    for name, extra in runs.items():
        extra, pad_to = extra if isinstance(extra, tuple) else (extra, None)
        m, g = _one_update(tiny_world, tmp_path / name.replace(" ", "_").replace(",", ""), extra, pad_to)
        print(name, {k: m[k] for k in ("loss", "micro_batches", "padding_frac")})
        assert m["loss"] == pytest.approx(base_m["loss"], rel=1e-5), name
        assert m["tokens"] == base_m["tokens"]
        for n in base_g:
            torch.testing.assert_close(g[n], base_g[n], atol=1e-6, rtol=1e-4, msg=f"{name}: {n}")
        if "packed" in name:
            assert m["padding_frac"] == 0.0
            assert m["attn"] == (varlen_attention.VARLEN_SDPA,) * 2, m["attn"]  # set up by Trainer._check_layout
        else:
            assert m["attn"] == ("sdpa", "sdpa"), m["attn"]
        if pad_to:
            assert m["micro_batches"] == pad_to
        elif "budget" in name:
            assert m["micro_batches"] != base_m["micro_batches"]


@pytest.mark.slow
def test_a_sequence_over_the_budget_gets_its_own_micro_batch_and_is_logged(tiny_world, tmp_path, caplog):
    base_m, _ = _one_update(tiny_world, tmp_path / "count", [])
    with caplog.at_level("INFO", logger="opsd"):
        m, _ = _one_update(tiny_world, tmp_path / "tight", ["engine.micro_batch_tokens=33"])
    msg = [r.getMessage() for r in caplog.records if "longer than engine.micro_batch_tokens=33" in r.getMessage()]
    assert msg and "got a micro-batch of their own" in msg[0], [r.getMessage() for r in caplog.records]
    assert m["micro_batches"] == 8  # 8 sequences of over 16 tokens: no two fit in 33 padded slots
    assert m["loss"] == pytest.approx(base_m["loss"], rel=1e-5)


@pytest.mark.slow
def test_token_budget_world_size_2_matches_world_size_1(tiny_world, tmp_path):
    """Ranks plan different numbers of micro-batches (their responses differ: at a budget of 54
    packed tokens, 3 vs 4 in steps 1 and 3); the shorter plan is padded with empty micro-batches,
    and the run equals world size 1 on the same global batch."""
    models = [tiny_world["student"], tiny_world["teacher"], tiny_world["train"]]
    (tmp_path / "w1").mkdir(), (tmp_path / "w2").mkdir()
    l1, w1 = run_dist_worker(models, 1, tmp_path / "w1", ["data.max_prompt_length=32"])  # count, padded
    l2, w2 = run_dist_worker(models, 2, tmp_path / "w2", ["data.max_prompt_length=32",
                                                          "engine.micro_batch_tokens=54", "engine.packing=true"])
    m2 = json.loads((tmp_path / "w2" / "metrics.json").read_text())
    print("losses ws=1", l1, "ws=2", l2, "empty micro-batches", [m["empty_micro_batches"] for m in m2])
    assert any(m["empty_micro_batches"] > 0 for m in m2)  # the ranks' plans differed
    for a, b in zip(l1, l2):
        assert a == pytest.approx(b, rel=1e-4, abs=1e-6)
    for k in w1:
        torch.testing.assert_close(w1[k], w2[k], atol=1e-5, rtol=1e-4)


def run_dist_worker(paths, nproc, out, overrides=()):
    """tests/_dist_worker.py (3 ZeRO-3 steps on fixed rollouts) at world size ``nproc`` with
    config ``overrides``; returns (losses, final weights) of rank 0."""
    import socket
    import subprocess
    import sys

    from test_distributed import HERE, _env

    cmd = [sys.executable, str(HERE / "_dist_worker.py")]
    if nproc > 1:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
               f"--master_port={port}", str(HERE / "_dist_worker.py")]
    r = subprocess.run(cmd + list(paths) + [str(out), *overrides], env=_env(), capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-4000:]
    assert_clean_teardown(out, nproc)
    return json.loads((out / "losses.json").read_text()), torch.load(out / "weights.pt")


# ------------------------------------------------------------------ bad input


def test_budget_smaller_than_the_longest_prompt_is_named():
    with pytest.raises(ConfigError, match=r"engine.micro_batch_tokens=100 is not larger than "
                                          r"data.max_prompt_length=128.*engine.micro_batch_size"):
        load_config(None, ["model.student=s", "model.teacher=t", "data.train_files=x.jsonl",
                           "data.max_prompt_length=128", "engine.micro_batch_tokens=100"])


def test_packing_with_attention_that_cannot_honour_it_is_named(tiny_world):
    with pytest.raises(ConfigError, match=r"engine.packing=true.*model.attn_implementation='paged\|sdpa'"
                                          r".*\['sdpa', 'eager', 'flex_attention', 'flash_attention_2'"):
        load_config(None, ["model.student=s", "model.teacher=t", "data.train_files=x.jsonl",
                           "engine.packing=true", "model.attn_implementation=paged|sdpa"])
    from opsd.models import load_causal_lm

    model = load_causal_lm(tiny_world["teacher"])
    model.config._attn_implementation = "paged|sdpa"  # as a kernel picked at load time would be
    with pytest.raises(ConfigError, match=r"the teacher runs attention 'paged\|sdpa'.*engine.packing=false"):
        packing.prepare_attention(model, "teacher")
