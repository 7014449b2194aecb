"""Cross-tokenizer distillation (opsd/xtok.py): the byte-prefix map against a brute-force oracle,
row flags both ways round, a fuzz over multi-byte characters, whitespace runs and control tokens,
identity with today's path, the teacher interface and the config errors."""
import math
import random

import pytest
import torch

from _xtok_helpers import (SPECIALS, brute_flags, brute_lookback, brute_marginal, control_counterparts, multi_bpe,
                           multi_char, random_text, student_ids, toy_bpe, toy_char)

from opsd import xtok
from opsd.config import ConfigError

RESPONSES = ["2*8=16. 16+7=23. 23+7=30. Answer: 30", "13-6=7. 7*9=63. Answer: 63", "Answer: 5", "  1 +  2 ==3"]


def _check_rows(teacher_tok, student_tok, ids, seed=0, max_rows=None):
    """Align ``ids`` (student), draw teacher log-probs, compare every row with the oracle; returns
    the alignment."""
    vmap = xtok.vocab_map(teacher_tok, student_tok)
    al = xtok.align_response(ids, vmap, teacher_tok)
    assert len(al.position) == len(ids)
    g = torch.Generator().manual_seed(seed)
    lp = torch.log_softmax(3 * torch.randn(len(ids), len(teacher_tok), generator=g, dtype=torch.float64), -1)
    rows = [r for r in range(len(ids)) if al.flag[r] != xtok.UNALIGNED][:max_rows]
    # the previous teacher position of every row after a text token (its own draw)
    lp_prev = torch.log_softmax(3 * torch.randn(len(ids), len(teacher_tok), generator=g, dtype=torch.float64), -1)
    lookback = {k: (lp_prev[r], al.prev[r]) for k, r in enumerate(rows) if al.prev[r] is not None}
    target, residual = xtok.bpm_logprobs(lp[rows], [al.emitted[r] for r in rows], vmap, lookback=lookback)
    torch.testing.assert_close(target.exp().sum(-1), torch.ones(len(rows), dtype=torch.float64), atol=1e-9, rtol=0)
    controls = control_counterparts(teacher_tok, student_tok)
    for k, r in enumerate(rows):
        if al.prev[r] is None:
            want = brute_marginal(lp[r], al.emitted[r], vmap.t_bytes, vmap.s_bytes, controls)
        else:
            want = brute_lookback(lp_prev[r], lp[r], al.prev[r], al.emitted[r], vmap.t_bytes, vmap.s_bytes, controls)
        got = target[k].exp()
        got = torch.where(got < 1e-25, torch.zeros_like(got), got)  # the floor of unreachable tokens
        torch.testing.assert_close(got, want, atol=1e-9, rtol=1e-7)
    assert bool((residual >= 0).all()) and bool((residual <= 1).all())
    al.looked_back = sum(1 for k in lookback if vmap.lookback(lookback[k][1], al.emitted[rows[k]]) is not None)
    return al, vmap


def _text_runs(ids, vmap):
    runs, cur = [], []
    for i in ids:
        if vmap.s_bytes[i] is None:
            if cur:
                runs.append(cur)
            runs.append([i])
            cur = []
        else:
            cur.append(i)
    return runs + ([cur] if cur else [])


def _expected_flags(ids, vmap, teacher_tok):
    """Flags from spans: per text run, the teacher's tokens of the run text; control tokens exact
    when the teacher has a counterpart."""
    out = []
    for run in _text_runs(ids, vmap):
        if vmap.s_bytes[run[0]] is None:
            out.append(xtok.EXACT if run[0] in vmap.s_control else xtok.UNALIGNED)
            continue
        pieces = [vmap.s_bytes[i] for i in run]
        text = b"".join(pieces).decode("utf-8")
        t_ids = teacher_tok(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]
        out += brute_flags(pieces, [vmap.t_bytes[t] for t in t_ids])
    return out


def test_token_bytes_spell_the_text_for_every_tokenizer():
    rng = random.Random(0)
    for tok in (toy_char(), toy_bpe(), multi_bpe(), multi_char()):
        tb = xtok.token_bytes(tok)
        texts = RESPONSES if tok in (toy_char(), toy_bpe()) else [random_text(rng, 40) for _ in range(20)]
        for text in texts:
            ids = tok(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]
            assert b"".join(tb[i] for i in ids) == text.encode("utf-8"), (tok.name_or_path, text)
        assert tb[tok.eos_token_id] is None  # control tokens are not text


def test_oracle_bpe_teacher_char_student_all_rows_exact():
    """The toy pair: every mapped row equals the brute-force marginal and sums to 1; a char-level
    student never crosses a BPE boundary, so every row is exact, many conditioned on emitted bytes."""
    teacher, student = toy_bpe(), toy_char()
    conditioned = looked_back = 0
    for k, text in enumerate(RESPONSES):
        ids = student_ids(student, [text, "<|im_end|>"])
        al, vmap = _check_rows(teacher, student, ids, seed=k)
        assert al.flag == [xtok.EXACT] * len(ids)
        assert al.flag == _expected_flags(ids, vmap, teacher)
        conditioned += sum(1 for e in al.emitted if e)
        looked_back += al.looked_back
        assert al.teacher_ids[-1] == teacher.eos_token_id  # EOS aligned to the teacher's own
    assert conditioned > 10  # rows starting inside a teacher token (" " after "." of ". ") were exercised
    assert looked_back >= 3  # rows after ". " (which ". Answer: " extends) read the previous position too


def test_lookback_gives_the_bytes_a_longer_previous_token_spells():
    """The toy pair's trap: the teacher writes '. Answer: ' as one token. When the student writes
    '. ' and then another step ('1'), the teacher reads the token '. ', and its next position gives
    'A' no mass (after '. ' it has only ever seen steps). The row of that '1' reads the previous
    position too: P(A) = p('. Answer: ') / (p('. ') + p('. Answer: ')), P(1) the rest."""
    teacher, student = toy_bpe(), toy_char()
    vmap = xtok.vocab_map(teacher, student)
    ids = student_ids(student, ["30. 16+7=23"])
    al = xtok.align_response(ids, vmap, teacher)
    r = 4  # '3', '0', '.', ' ', '1'
    assert vmap.s_bytes[ids[r]] == b"1" and al.prev[r] == b". " and al.emitted[r] == b""
    dot_sp, dot_ans = teacher.convert_tokens_to_ids(".\u0120"), teacher.convert_tokens_to_ids(".\u0120Answer:\u0120")
    lp_prev = torch.full((len(teacher),), -40.0, dtype=torch.float64)
    lp_prev[dot_sp], lp_prev[dot_ans] = 0.0, 0.0  # half and half before the '. '
    lp = torch.full((len(teacher),), -40.0, dtype=torch.float64)
    lp[teacher.convert_tokens_to_ids("1")] = 0.0  # after the token '. ': another step, never 'A'
    lp_prev, lp = torch.log_softmax(lp_prev, -1), torch.log_softmax(lp, -1)
    plain, _ = xtok.bpm_logprobs(lp[None], [b""], vmap)
    looked, _ = xtok.bpm_logprobs(lp[None], [b""], vmap, lookback={0: (lp_prev, al.prev[r])})
    a, one = student.convert_tokens_to_ids("A"), student.convert_tokens_to_ids("1")
    assert plain[0, a].exp() < 1e-12 and plain[0, one].exp() == pytest.approx(1.0, abs=1e-9)  # one position
    assert looked[0, a].exp().item() == pytest.approx(0.5, abs=1e-9)
    assert looked[0, one].exp().item() == pytest.approx(0.5, abs=1e-9)
    # the strict baseline does not look back
    strict, _ = xtok.bpm_logprobs(lp[None], [b""], vmap, strict=True, lookback={0: (lp_prev, al.prev[r])})
    assert strict[0, a].exp() < 1e-12


def test_swapped_pair_flags_bound_rows():
    """Char-level teacher, BPE student: student tokens such as '16' or ' Answer' cross teacher
    boundaries and are flagged bound; the rest exact; the map is still the oracle's."""
    teacher, student = toy_char(), toy_bpe()
    bound = 0
    for k, text in enumerate(RESPONSES):
        ids = student_ids(student, [text, "<|im_end|>"])
        al, vmap = _check_rows(teacher, student, ids, seed=k)
        assert al.flag == _expected_flags(ids, vmap, teacher)
        for i, f in zip(ids, al.flag):  # bound iff the student token is longer than one character
            piece = vmap.s_bytes[i]
            assert f == (xtok.BOUND if piece is not None and len(piece) > 1 else xtok.EXACT)
        bound += al.flag.count(xtok.BOUND)
        assert all(e == b"" for e in al.emitted)  # a char teacher: every row starts at a boundary
    assert bound > 5


@pytest.mark.parametrize("direction", ["bpe->char", "char->bpe"])
def test_fuzz_multibyte_whitespace_and_control_tokens(direction):
    """Random strings of 1-4 byte characters, whitespace runs and control tokens in both
    directions: the teacher's ids spell the response, flags match the spans, rows match the oracle."""
    teacher, student = (multi_bpe(), multi_char()) if direction == "bpe->char" else (multi_char(), multi_bpe())
    rng = random.Random(1)
    seen = {"bound": 0, "conditioned": 0, "multibyte": 0}
    for case in range(12):
        parts = []
        for _ in range(rng.randint(1, 3)):
            parts.append(random_text(rng, rng.randint(1, 30)))
            if rng.random() < 0.6:
                parts.append(rng.choice(SPECIALS[1:]))
        ids = student_ids(student, parts)
        al, vmap = _check_rows(teacher, student, ids, seed=case, max_rows=25)
        assert al.flag == _expected_flags(ids, vmap, teacher)
        text_t = b"".join(vmap.t_bytes[t] for t in al.teacher_ids if vmap.t_bytes[t] is not None)
        assert text_t == b"".join(vmap.s_bytes[s] for s in ids if vmap.s_bytes[s] is not None)
        seen["bound"] += al.flag.count(xtok.BOUND)
        seen["conditioned"] += sum(1 for e in al.emitted if e)
        seen["multibyte"] += sum(1 for s in ids if vmap.s_bytes[s] and any(b >= 0x80 for b in vmap.s_bytes[s]))
    assert seen["multibyte"] > 10 and (seen["bound"] > 0 or seen["conditioned"] > 0), seen


def test_a_student_run_cut_inside_a_character_leaves_those_rows_out():
    """A byte-level student may sample half of a UTF-8 character: rows from the bad byte on are
    unaligned (never scored); the rows before stay exact."""
    student, teacher = multi_bpe(), multi_char()
    vmap = xtok.vocab_map(teacher, student)
    good = student("ab 日", add_special_tokens=False)["input_ids"]
    char_of = {b: c for c, b in xtok._byte_decoder().items()}
    lead = student.convert_tokens_to_ids(char_of[0xE6])  # a lone lead byte of 日
    al = xtok.align_response(good + [lead], vmap, teacher)
    assert al.flag[-1] == xtok.UNALIGNED and xtok.UNALIGNED not in al.flag[:-1]


def test_strict_map_is_the_shared_subvocabulary():
    teacher, student = toy_bpe(), toy_char()
    vmap = xtok.vocab_map(teacher, student)
    for t, s in enumerate(vmap.shared.tolist()):
        tb = vmap.t_bytes[t]
        if s == vmap.residual:
            assert tb is None and t not in control_counterparts(teacher, student) or tb not in vmap.s_index
        elif tb is not None:
            assert vmap.s_bytes[s] == tb
    lp = torch.log_softmax(torch.randn(3, len(teacher), dtype=torch.float64), -1)
    target, _ = xtok.bpm_logprobs(lp, [b""] * 3, vmap, strict=True)
    shared = vmap.shared != vmap.residual
    want = lp[:, shared].exp() / lp[:, shared].exp().sum(-1, keepdim=True)
    got = torch.zeros(3, vmap.n_student, dtype=torch.float64).index_add_(1, vmap.shared[shared], want)
    torch.testing.assert_close(torch.where(target.exp() < 1e-25, 0.0, target.exp()), got)


def test_uld_target_is_the_sorted_teacher_on_the_student_ranking():
    lp_t = torch.log_softmax(torch.randn(2, 7, dtype=torch.float64), -1)
    z_s = torch.randn(2, 5, dtype=torch.float64)
    out = xtok.uld_logprobs(lp_t, z_s).exp()
    p_sorted = lp_t.exp().sort(-1, descending=True).values
    for r in range(2):
        order = z_s[r].argsort(descending=True)
        torch.testing.assert_close(out[r, order[:4]], p_sorted[r, :4])
        torch.testing.assert_close(out[r, order[4]], p_sorted[r, 4:].sum())


# ------------------------------------------------------------------ the teacher interface

def _batch(tok, prompts, responses, packed=False):
    from opsd.batching import build_sequences, collate
    from opsd.data import encode_chat

    p_ids = [encode_chat(tok, [{"role": "user", "content": p}]) for p in prompts]
    r_ids = [tok(r, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for r in responses]
    seq = build_sequences(p_ids, r_ids, tok.pad_token_id, tok.eos_token_id)
    seq["loss_mask"] = seq["loss_mask"].long()
    return collate(seq, list(range(len(prompts))), tok.pad_token_id, packed)


def _meta(prompts):
    return [{"prompt": p} for p in prompts]


def _messages(row):
    return [{"role": "user", "content": row["prompt"]}]


@pytest.mark.parametrize("packed", [False, True])
def test_identity_same_tokenizer_through_the_new_path(tiny_world, packed):
    """The same tokenizer through CrossTokenizerTeacher equals today's Teacher: losses and the TIP
    statistics at 1e-6, student and teacher of different logit widths (padded vocabularies)."""
    from opsd.distill import DistillModule
    from opsd.models import load_causal_lm
    from opsd.teacher import Teacher
    from transformers import AutoTokenizer

    from _tiny_world import make_tiny_lm

    tok = AutoTokenizer.from_pretrained(tiny_world["student"])
    s, t = load_causal_lm(tiny_world["student"]), make_tiny_lm(tok, hidden=48, layers=2, seed=2, vocab_pad=64).eval()
    assert s.config.vocab_size != t.config.vocab_size  # padded differently
    v = min(s.config.vocab_size, t.config.vocab_size, len(tok))
    prompts, responses = ["1+2=", "7+8=", "3+3="], ["3", "15 ok  fine", "6, 6"]
    today = Teacher(t, torch.device("cpu"))
    cross = xtok.CrossTokenizerTeacher(Teacher(t, torch.device("cpu")), tok, tok, prompt_messages=_messages)
    assert cross.width == len(tok)
    b1, b2 = _batch(tok, prompts, responses, packed), _batch(tok, prompts, responses, packed)
    src1 = today.score_phase([b1], v, _meta(prompts))[0]
    src2 = cross.score_phase([b2], v, _meta(prompts))[0]
    assert torch.equal(b1["loss_mask"], b2["loss_mask"]) and len(src1) == len(src2) == int(b1["loss_mask"].sum())
    mod = DistillModule(s, v, chunk_size=4)
    args = (b1["input_ids"], b1["attention_mask"], b1["loss_mask"])
    kw = {} if b1["position_ids"] is None else {"position_ids": b1["position_ids"]}
    l1, st1, *_ = mod(*args, src1, **kw)
    l2, st2, *_ = mod(*args, src2, **kw)
    assert abs(l1.item() - l2.item()) <= 1e-6 * max(1.0, abs(l1.item()))
    for f in ("entropy", "reverse_kl", "forward_kl", "teacher_entropy"):
        torch.testing.assert_close(getattr(st2, f), getattr(st1, f), atol=1e-6, rtol=1e-6)
    m = cross.metrics()
    assert m["xtok/exact_rows"] == 1.0 and m["xtok/one_to_one_rows"] == 1.0 and m["xtok/residual_mass"] < 1e-6


def _bpe_teacher(tmp_path):
    """A tiny random Qwen3 on the toy BPE, saved with its tokenizer."""
    from _tiny_world import make_tiny_lm

    tok = toy_bpe()
    model = make_tiny_lm(tok, hidden=32, layers=1, seed=5, vocab_pad=64)
    model.save_pretrained(tmp_path / "teacher")
    tok.save_pretrained(tmp_path / "teacher")
    return model, tok, str(tmp_path / "teacher")


@pytest.mark.parametrize("mode,keep", [("bpm", False), ("bpm", True), ("strict", False)])
def test_score_zeroes_rows_left_out_and_sources_match(tmp_path, mode, keep):
    """BPE student, char teacher (bound rows appear): the loss mask keeps exactly the scored rows;
    each source row equals the target computed from the teacher's own forward."""
    from _tiny_world import make_tiny_lm
    from opsd.teacher import Teacher

    student, teacher_tok = toy_bpe(), toy_char()
    t = make_tiny_lm(teacher_tok, hidden=32, layers=1, seed=3, vocab_pad=64)
    cross = xtok.CrossTokenizerTeacher(Teacher(t, torch.device("cpu")), teacher_tok, student, mode, keep,
                                       prompt_messages=_messages)
    prompts, responses = ["Compute 1+2.", "Compute 16+7."], ["1+2=3. Answer: 3", "16+7=23. Answer: 23"]
    b = _batch(student, prompts, responses)
    before = b["loss_mask"].clone()
    n0 = int(before.sum())
    b["token_weights"] = torch.arange(n0, dtype=torch.float32)  # reward-weighted distillation's per-row weights
    src = cross.score_phase([b], len(student), _meta(prompts))[0]
    after = b["loss_mask"]
    assert len(src) == int(after.sum()) and bool((after <= before).all())
    kept = after.view(-1)[before.view(-1).bool()].bool()
    assert torch.equal(b["token_weights"], torch.arange(n0, dtype=torch.float32)[kept])
    m = cross.metrics()
    assert m["xtok/bound_rows"] > 0
    left = int(before.sum() - after.sum())
    if mode == "bpm" and keep:
        assert left == 0
    elif mode == "bpm":
        assert left == round(m["xtok/bound_rows"] * int(before.sum()))
    else:
        assert left == int(before.sum()) - round(m["xtok/one_to_one_rows"] * int(before.sum()))
    # the first kept row of sequence 0, recomputed from scratch
    from opsd.data import encode_chat

    p_ids = encode_chat(teacher_tok, _messages({"prompt": prompts[0]}))
    r_ids = teacher_tok(responses[0], add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        lp = torch.log_softmax(t(torch.tensor([p_ids + r_ids])).logits[0, len(p_ids) - 1, :len(teacher_tok)], -1)
    want, _ = xtok.bpm_logprobs(lp[None], [b""], cross.vmap, mode == "strict")
    torch.testing.assert_close(src.rows(slice(0, 1)), want, atol=1e-5, rtol=1e-5)
    assert 0 <= cross.metrics()["xtok/residual_mass"] <= 1  # recorded as the losses read rows


def test_coverage_below_the_threshold_is_refused(tiny_world, tmp_path):
    from opsd.config import load_config
    from opsd.xtok import build_cross_tokenizer_teacher
    from transformers import AutoTokenizer

    _, tok, path = _bpe_teacher(tmp_path)
    student_tok = AutoTokenizer.from_pretrained(tiny_world["student"])
    cfg = load_config(None, [f"model.student={tiny_world['student']}", f"model.teacher={path}",
                             f"model.teacher_tokenizer={path}", f"data.train_files={tiny_world['train']}",
                             "loss.min_map_coverage=0.99"])
    with pytest.raises(ConfigError, match=r"covers 0\.\d+ of the teacher's vocabulary.*min_map_coverage=0.99"):
        build_cross_tokenizer_teacher(cfg, torch.device("cpu"), student_tok)
    cfg.loss.min_map_coverage, cfg.loss.teacher_topk = 0.0, 8
    with pytest.raises(ConfigError, match="teacher_topk"):
        build_cross_tokenizer_teacher(cfg, torch.device("cpu"), student_tok)
    with pytest.raises(ConfigError, match="cross_tokenizer"):
        load_config(None, [f"model.student={path}", f"model.teacher={path}", f"data.train_files={tiny_world['train']}",
                           "loss.cross_tokenizer=sorted"])


def test_opd_runs_end_to_end_from_a_bpe_teacher(tiny_world, tmp_path):
    """Two trainer steps from a teacher with the toy BPE (char-level student): the seam, the row
    metrics in metrics.jsonl."""
    from _runs import read_metrics, run_overrides

    from opsd.train import main

    _, _, path = _bpe_teacher(tmp_path)
    out = tmp_path / "run"
    main(run_overrides({**tiny_world, "teacher": path}, out, 2, [f"model.teacher_tokenizer={path}"]))
    rows = [r for r in read_metrics(out) if "xtok/exact_rows" in r]
    assert len(rows) == 2
    for r in rows:
        assert 0 < r["xtok/kept_rows"] <= 1 and r["xtok/coverage"] > 0.2 and r["loss"] == r["loss"]


@pytest.mark.parametrize("max_residual", [1.0, 0.05])
def test_scored_rows_read_both_teacher_positions_and_heavy_residual_rows_are_bounds(tmp_path, max_residual):
    """BPE teacher, char student, responses with '. ' followed by a step: every source row (lookback
    rows included) equals the target recomputed from one plain teacher forward, at the row's
    teacher position and, for lookback rows, the position before it. A row inside a teacher token
    whose recomputed residual exceeds loss.max_row_residual is left out (a bound), and only those."""
    from opsd.data import encode_chat
    from opsd.teacher import Teacher

    model, teacher_tok, _ = _bpe_teacher(tmp_path)
    student = toy_char()
    cross = xtok.CrossTokenizerTeacher(Teacher(model, torch.device("cpu")), teacher_tok, student,
                                       prompt_messages=_messages, max_residual=max_residual)
    prompts, responses = ["Compute 30+16+7."], ["30+16=46. 46+7=53. 53-1=52. Answer: 52"]
    b = _batch(student, prompts, responses)
    before = b["loss_mask"].clone()
    src = cross.score_phase([b], len(student), _meta(prompts))[0]
    m = cross.metrics()
    s_ids = b["input_ids"][0][b["attention_mask"][0].bool()].tolist()
    resp = s_ids[len(encode_chat(student, _messages({"prompt": prompts[0]}))):]
    vmap = cross.vmap
    al = xtok.align_response(resp, vmap, teacher_tok)
    p_ids = encode_chat(teacher_tok, _messages({"prompt": prompts[0]}))
    with torch.no_grad():
        z = model(torch.tensor([p_ids + al.teacher_ids])).logits[0, :, :len(teacher_tok)]
    lp = torch.log_softmax(z, -1)
    assert all(f == xtok.EXACT for f in al.flag) and len(al.flag) == len(resp)
    kept, looked, heavy = [], 0, 0
    for r in range(len(resp)):
        at = len(p_ids) + al.position[r] - 1
        look = {}
        if al.prev[r] is not None and vmap.lookback(al.prev[r], al.emitted[r]) is not None:
            look = {0: (lp[at - 1], al.prev[r])}
        want, residual = xtok.bpm_logprobs(lp[at][None], [al.emitted[r]], vmap, lookback=look)
        if al.emitted[r] and residual.item() > max_residual:
            heavy += 1
            continue
        looked += bool(look)
        kept.append(want)
    assert len(src) == len(kept) == int(b["loss_mask"].sum())
    torch.testing.assert_close(src.rows(slice(0, len(src))), torch.cat(kept), atol=1e-5, rtol=1e-5)
    assert m["xtok/unresolved_rows"] == pytest.approx(heavy / len(resp)) and m["xtok/kept_rows"] == len(kept) / len(resp)
    assert int(before.sum()) - int(b["loss_mask"].sum()) == heavy
    if max_residual == 1.0:
        assert heavy == 0 and looked == 2  # '4' after '46. ' and '5' after '53. ' read the previous position
    else:
        assert heavy > 0  # a random teacher leaves much mass on the emitted bytes' own tokens


def test_a_dominant_token_equal_to_the_emitted_bytes_is_residual_not_certainty():
    """The row of 'A' after '. ' (inside the teacher token '. Answer: '): where the teacher wants
    '. ' and another step (0.9) its target, renormalised, says P(A) = 1 with residual 0.9 -- the
    trainer leaves such a row out (loss.max_row_residual) instead of teaching the student to answer."""
    teacher, student = toy_bpe(), toy_char()
    vmap = xtok.vocab_map(teacher, student)
    lp = torch.full((len(teacher),), -40.0, dtype=torch.float64)
    lp[teacher.convert_tokens_to_ids(".\u0120")] = math.log(0.9)
    lp[teacher.convert_tokens_to_ids(".\u0120Answer:\u0120")] = math.log(0.1)
    target, residual = xtok.bpm_logprobs(torch.log_softmax(lp, -1)[None], [b". "], vmap)
    assert target[0, student.convert_tokens_to_ids("A")].exp().item() == pytest.approx(1.0, abs=1e-9)
    assert residual.item() == pytest.approx(0.9, abs=1e-9)


def test_the_committed_toy_pair_is_fresh():
    """artifacts/toy_xtok (the BPE teacher recipes/toy/xtok.yaml reads) was built from today's
    opsd.toy.xtok_world settings: change them and this fails until `python -m opsd.toy.xtok_world`
    rebuilds it."""
    from pathlib import Path

    from opsd.toy import xtok_world

    root = Path(__file__).resolve().parents[1] / "artifacts" / "toy_xtok"
    assert xtok_world.is_fresh(str(root))
    assert not xtok_world.is_fresh(str(root), xtok_world.quick_config())
