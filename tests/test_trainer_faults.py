"""Fault paths of the trainer on tiny worlds: a non-finite gradient norm skips the optimizer step
(logged, weights untouched, the run goes on), reward-weighted distillation follows
EQUATIONS.md, a batch without any response token is skipped cleanly, tokenizer mismatches are
refused while padded logit widths are accepted, and config errors exit with code 2."""
import logging
import math
import shutil
import string
from dataclasses import dataclass
from types import SimpleNamespace

import pytest
import torch

from _runs import read_metrics as _metrics, run_overrides as _overrides

from opsd import hooks, models
from opsd.hooks import TokenSelection
from opsd.rollout import SingleTurn
from opsd.train import main
from opsd.trainer import Trainer


def _snapshot_weights(monkeypatch):
    """Record the student's weights after every optimizer step: ``snaps[k]`` = after step k."""
    snaps = []
    real_step = Trainer.train_step

    def recording(self):
        if not snaps:
            snaps.append({k: v.detach().clone() for k, v in self.student.state_dict().items()})
        out = real_step(self)
        snaps.append({k: v.detach().clone() for k, v in self.student.state_dict().items()})
        return out

    monkeypatch.setattr(Trainer, "train_step", recording)
    return snaps


def _same(a, b):
    return all(torch.equal(a[k], b[k]) for k in a)


def parity_reward(text, answer):
    """A reward with both outcomes on a random student: even-length responses are 'correct'."""
    return float(len(text) % 2 == 0)


# ---------------------------------------------------------------- 1. non-finite gradient norm

@pytest.mark.parametrize("zero_stage", [2, 0])
def test_nonfinite_grad_norm_skips_the_step_and_the_run_goes_on(tiny_world, tmp_path, monkeypatch, caplog,
                                                                zero_stage):
    """An importance weight of inf in one micro-batch of step 2 (p_t -> 0 in weighted sampling)
    makes the gradient non-finite: the optimizer step must be skipped (ZeRO-2: DeepSpeed's overflow
    check; ZeRO-0: opsd's own, DeepSpeed steps the bare optimizer there), the trainer must log it,
    and steps 1 and 3 must update the weights."""
    calls = {"n": 0}

    def poisoned(stats):
        calls["n"] += 1
        sel = hooks.select_all(stats)
        w = torch.ones(len(sel.indices), device=stats.entropy.device)
        if calls["n"] == 5:  # step 2 (micro-batches 4-6), its second micro-batch
            w[0] = float("inf")
        return TokenSelection(indices=sel.indices, weights=w)

    monkeypatch.setattr(hooks, "select_tokens", poisoned)
    snaps = _snapshot_weights(monkeypatch)
    out = tmp_path / "run"
    with caplog.at_level(logging.WARNING, logger="opsd"):
        assert main(_overrides(tiny_world, out, 3, [f"engine.zero_stage={zero_stage}"])) == 0
    assert calls["n"] == 9
    m = _metrics(out)
    assert [r["step"] for r in m] == [1, 2, 3]
    assert [r["skipped"] for r in m] == [0, 1, 0]
    assert math.isfinite(m[0]["grad_norm"]) and math.isfinite(m[2]["grad_norm"])
    assert not isinstance(m[1]["grad_norm"], float) or not math.isfinite(m[1]["grad_norm"])
    assert "step 2: non-finite gradient norm; optimizer step skipped" in caplog.text
    assert m[1]["lr"] == m[0]["lr"] != m[2]["lr"], "a skipped step must not advance the lr schedule"
    assert len(snaps) == 4  # initial + after each of the 3 steps
    assert not _same(snaps[0], snaps[1]), "step 1 should update the weights"
    assert _same(snaps[1], snaps[2]), "the skipped step 2 changed the weights"
    assert not _same(snaps[2], snaps[3]), "step 3 should update the weights again"
    assert all(torch.isfinite(v).all() for v in snaps[3].values())


# ---------------------------------------------------------------- 2. reward-weighted distillation

def _reward_weights(rewards, tokens_per_sample, beta):
    """Trainer.reward_token_weights on a (B, L) loss mask with the given tokens per row."""
    width = max(tokens_per_sample) + 2
    mask = torch.zeros(len(rewards), width, dtype=torch.long)
    for i, t in enumerate(tokens_per_sample):
        mask[i, 1:1 + t] = 1
    fake = SimpleNamespace(cfg=SimpleNamespace(loss=SimpleNamespace(reward_beta=beta)))
    return Trainer.reward_token_weights(fake, mask, rewards, float(sum(tokens_per_sample)))


def test_reward_token_weights_match_equations_by_hand():
    """EQUATIONS.md: w_i = B softmax(r / beta)_i; L_i = token mean of sample i;
    batch loss = sum_i w_i L_i / sum_i w_i. The trainer folds this into per-token weights of its
    token-mean loss (1/N) sum_t w_t d_t."""
    rewards, t_i, beta = [1.0, 0.0, 0.0, 1.0], [2, 3, 1, 4], 0.5
    e2 = math.exp(2.0)  # exp(r / beta) for r = 1; exp(0) = 1 for r = 0
    w_hi, w_lo = 4 * e2 / (2 * e2 + 2), 4 * 1 / (2 * e2 + 2)  # B = 4, sum_i w_i = 4
    assert w_hi == pytest.approx(1.7615942, rel=1e-6) and w_lo == pytest.approx(0.2384058, rel=1e-6)
    n = 10
    expected = ([w_hi * n / (2 * 4)] * 2 + [w_lo * n / (3 * 4)] * 3 + [w_lo * n / (1 * 4)] * 1
                + [w_hi * n / (4 * 4)] * 4)
    tw = _reward_weights(rewards, t_i, beta)
    assert tw.shape == (n,)
    torch.testing.assert_close(tw.double(), torch.tensor(expected, dtype=torch.float64), rtol=1e-6, atol=0)

    d = torch.tensor([0.3, 1.1, 0.2, 0.5, 0.9, 2.0, 0.1, 0.4, 0.7, 0.05], dtype=torch.float64)
    trainer_loss = (tw.double() * d).sum() / n
    w = torch.tensor([w_hi, w_lo, w_lo, w_hi], dtype=torch.float64)
    per_sample = torch.stack([c.mean() for c in d.split(t_i)])
    assert trainer_loss.item() == pytest.approx(((w * per_sample).sum() / w.sum()).item(), rel=1e-6)
    # equal rewards -> every sample counts the same: the mean of per-sample token means
    tw_eq = _reward_weights([1.0, 1.0, 1.0, 1.0], t_i, beta).double()
    assert ((tw_eq * d).sum() / n).item() == pytest.approx(per_sample.mean().item(), rel=1e-6)


def test_reward_weights_ignore_samples_without_tokens():
    """An empty response has no L_i: it must not dilute sum_i w_i L_i / sum_i w_i."""
    rewards, t_i, beta = [1.0, 0.0, 0.0], [2, 0, 3], 1.0
    tw = _reward_weights(rewards, t_i, beta).double()
    assert tw.shape == (5,) and torch.isfinite(tw).all()
    d = torch.tensor([0.3, 1.1, 0.2, 0.5, 0.9], dtype=torch.float64)
    w = 3 * torch.softmax(torch.tensor(rewards, dtype=torch.float64) / beta, 0)
    l0, l2 = d[:2].mean(), d[2:].mean()
    expected = (w[0] * l0 + w[2] * l2) / (w[0] + w[2])
    assert ((tw * d).sum() / 5).item() == pytest.approx(expected.item(), rel=1e-6)
    # a sharp beta where only the empty sample is rewarded: the others still carry the loss
    tw = _reward_weights([0.0, 1.0, 0.0], [2, 0, 3], 1e-3).double()
    assert torch.isfinite(tw).all()
    assert ((tw * d).sum() / 5).item() == pytest.approx(((l0 + l2) / 2).item(), rel=1e-6)


def test_reward_weighted_run_logs_batch_accuracy_each_step(tiny_world, tmp_path, monkeypatch):
    seen = {"rewards": [], "weights": []}
    real_run, real_weights = SingleTurn.run, Trainer.reward_token_weights

    def spy_run(self, rows, sampling):
        out = real_run(self, rows, sampling)
        if sampling.temperature > 0:  # the training rollouts, not an evaluation
            seen["rewards"].append(out.rewards)
        return out

    def spy_weights(self, loss_mask, rewards, n_step):
        tw = real_weights(self, loss_mask, rewards, n_step)
        seen["weights"].append((tw, n_step))
        return tw

    monkeypatch.setattr(SingleTurn, "run", spy_run)
    monkeypatch.setattr(Trainer, "reward_token_weights", spy_weights)
    out = tmp_path / "run"
    assert main(_overrides(tiny_world, out, 2, [f"loss.reward_fn={__name__}:parity_reward",
                                                "loss.reward_beta=0.5"])) == 0
    m = _metrics(out)
    assert [r["step"] for r in m] == [1, 2]
    assert len(seen["rewards"]) == 2 and len(seen["weights"]) == 2
    for row, rewards, (tw, n_step) in zip(m, seen["rewards"], seen["weights"]):
        assert len(rewards) == 8  # 4 prompts x 2 samples
        assert row["accuracy"] == pytest.approx(sum(rewards) / len(rewards))
        assert isinstance(row["loss"], float) and math.isfinite(row["loss"])
        assert tw is not None and tw.shape == (int(n_step),) and torch.isfinite(tw).all()
        assert row["tokens"] == n_step
    # the parity reward gives both outcomes somewhere, so the weighting is not uniform
    assert any(0 < sum(r) < len(r) for r in seen["rewards"])


# ---------------------------------------------------------------- 3. every response token masked

def _scripted_rollouts(tok, max_len):
    """Deterministic responses (tests/_fakes.py): call 1 has every response empty, call 2 the first
    micro-batch's three, later calls none."""
    from _fakes import FixedRollouts

    class Scripted(FixedRollouts):
        calls = 0

        def generate(self, prompt_ids, sampling):
            out = super().generate(prompt_ids, sampling)
            n_empty = [len(out), 3, 0][min(self.calls, 2)]
            self.calls += 1
            for i in range(n_empty):
                out.response_ids[i] = []
            return out

    digits = [tok.convert_tokens_to_ids(c) for c in string.digits]
    return Scripted(digits, tok.eos_token_id, max_len=max_len)


def test_fully_masked_batch_is_skipped_with_a_reason(tiny_world, tmp_path, monkeypatch, caplog):
    import opsd.trainer

    monkeypatch.setattr(opsd.trainer, "make_backend",
                        lambda cfg, model, tok, *a, **kw: _scripted_rollouts(tok, cfg.max_new_tokens))
    snaps = _snapshot_weights(monkeypatch)
    out = tmp_path / "run"
    with caplog.at_level(logging.INFO, logger="opsd"):
        assert main(_overrides(tiny_world, out, 3, ["rollout.max_new_tokens=1", "loss.reward_beta=1.0"])) == 0
    m = _metrics(out)
    assert [r["step"] for r in m] == [1, 2, 3]
    assert m[0]["skipped"] == 1 and m[0]["empty_responses"] == 8 and m[0]["loss"] == 0.0
    assert "step 1: every response token is masked (empty responses); step skipped" in caplog.text
    assert m[1]["skipped"] == 0 and m[1]["empty_responses"] == 3 and m[1]["tokens"] > 0
    assert "step 2: 3 empty responses have no loss tokens" in caplog.text
    assert m[2]["skipped"] == 0 and m[2]["empty_responses"] == 0
    for row in m:  # no NaN/inf anywhere (they would be logged as strings)
        assert all(not isinstance(v, str) for k, v in row.items()), row
        assert all(math.isfinite(v) for v in row.values() if isinstance(v, float)), row
    assert _same(snaps[0], snaps[1]), "the skipped step changed the weights"
    assert not _same(snaps[1], snaps[2]) and not _same(snaps[2], snaps[3])


# ---------------------------------------------------------------- 4. tokenizer mismatch

def _tokenizer_with_vocab(chars):
    """The tiny char tokenizer of tests/_tiny_tokenizer.py with the characters in another order."""
    from _tiny_tokenizer import build_tiny_tokenizer

    return build_tiny_tokenizer(chars=chars)


@pytest.fixture
def mismatched_teacher(tiny_world, tmp_path):
    """The teacher's weights with a tokenizer of the same size but other ids (reversed chars)."""
    path = tmp_path / "teacher_other_vocab"
    shutil.copytree(tiny_world["teacher"], path)
    tok = _tokenizer_with_vocab(list(reversed(string.printable)))
    assert len(tok) == len(models.load_tokenizer(tiny_world["student"]))
    tok.save_pretrained(path)
    return str(path)


def test_tokenizer_mismatch_is_refused_naming_both_models(tiny_world, mismatched_teacher):
    student_tok = models.load_tokenizer(tiny_world["student"])
    with pytest.raises(ValueError) as e:
        models.check_same_tokenizer(student_tok, mismatched_teacher)
    assert tiny_world["student"] in str(e.value) and mismatched_teacher in str(e.value)
    assert "different tokenizers" in str(e.value)
    models.check_same_tokenizer(student_tok, tiny_world["teacher"])  # the real pair passes


def test_trainer_setup_refuses_a_tokenizer_mismatch(tiny_world, mismatched_teacher, tmp_path):
    from opsd.config import load_config

    cfg = load_config(None, _overrides(tiny_world, tmp_path / "run", 1, [f"model.teacher={mismatched_teacher}"]))
    trainer = Trainer(cfg)
    with pytest.raises(ValueError) as e:
        trainer.setup()
    trainer.cleanup()  # after a failed setup: must not raise
    assert tiny_world["student"] in str(e.value) and mismatched_teacher in str(e.value)


def test_cli_tokenizer_mismatch_exits_2_without_traceback(tiny_world, mismatched_teacher, tmp_path, capsys):
    from opsd.train import main

    rc = main(_overrides(tiny_world, tmp_path / "run", 1, [f"model.teacher={mismatched_teacher}"]))
    err = capsys.readouterr().err
    assert rc == 2
    assert "config error: model.teacher:" in err and "different tokenizers" in err and mismatched_teacher in err


def test_padded_vocab_widths_alone_are_accepted(tiny_world, tmp_path):
    """Same tokenizer, different logit widths (like Qwen2.5 1.5B 151,936 vs 7B 152,064): accepted,
    and both sides are sliced to the tokenizer's length."""
    from opsd.config import load_config
    from opsd.losses import align_vocab

    assert align_vocab(151936, 152064, 151665) == 151665
    wide = tmp_path / "teacher_wide"
    teacher = models.load_causal_lm(tiny_world["teacher"])
    n_tok = len(models.load_tokenizer(tiny_world["student"]))
    teacher.resize_token_embeddings(n_tok + 42, mean_resizing=False)
    teacher.save_pretrained(wide)
    models.load_tokenizer(tiny_world["teacher"]).save_pretrained(wide)

    cfg = load_config(None, _overrides(tiny_world, tmp_path / "run", 1, [f"model.teacher={wide}"]))
    trainer = Trainer(cfg)
    try:
        trainer.setup()
        s_w = trainer.student.get_output_embeddings().weight.shape[0]
        assert trainer.teacher.width == n_tok + 42 and s_w != trainer.teacher.width
        assert trainer.vocab_size == n_tok
        m = trainer.train_step()
        assert math.isfinite(m["loss"]) and m["skipped"] == 0
    finally:
        trainer.cleanup()


# ---------------------------------------------------------------- 5. config errors -> exit 2

@dataclass
class _ProbeSection:
    on: bool = True


def _probe_activate(section, cfg):
    """A plugin that patches the loss hook, to see that cleanup after a failure removes it."""
    prev = hooks.select_tokens

    def probe(stats):
        return hooks.select_all(stats)

    hooks.select_tokens = probe
    return SimpleNamespace(remove=lambda: setattr(hooks, "select_tokens", prev))


@pytest.fixture
def probe_plugin(monkeypatch):
    from opsd.plugins import SectionPlugin, registry

    monkeypatch.setattr(hooks, "select_tokens", hooks.select_all)  # restored even if cleanup is broken
    monkeypatch.setitem(registry().sections, "faultprobe", SectionPlugin("faultprobe", _ProbeSection,
                                                                         _probe_activate))


@pytest.mark.parametrize("override, option", [
    ("loss.reward_fn=no_such_module_xyz:score", "loss.reward_fn"),  # fails in setup, after plugins
    ("loss.reward_fn=_rewards:no_such_function", "loss.reward_fn"),
    ("loss.type=kl2", "loss.type"),  # fails while loading the config
    ("loss.reward_fn=", "train.eval_files"),  # fails in train(), after a complete setup
])
def test_config_errors_exit_2_naming_the_option(tiny_world, tmp_path, capsys, probe_plugin, override, option):
    extra = [override, "faultprobe.on=true", f"train.eval_files={tiny_world['heldout']}", "train.eval_limit=2"]
    code = main(_overrides(tiny_world, tmp_path / "run", 1, extra))
    err = capsys.readouterr().err
    assert code == 2, err
    errors = [line for line in err.splitlines() if line.startswith("config error:")]
    assert len(errors) == 1 and option in errors[0], err
    assert "Traceback" not in err
    assert hooks.select_tokens is hooks.select_all, "cleanup did not remove the plugin's patch"


@pytest.mark.parametrize("case", ["missing_file", "no_prompt_column"])
def test_cli_bad_data_exits_2_naming_the_file(tiny_world, tmp_path, capsys, case):
    from opsd.train import main

    path = tmp_path / "prompts.jsonl"
    if case == "no_prompt_column":
        path.write_text('{"question": "1+1"}\n')
    over = [o for o in _overrides(tiny_world, tmp_path / "run", 1) if not o.startswith("data.train_files=")]
    rc = main(over + [f"data.train_files={path}"])
    err = capsys.readouterr().err
    assert rc == 2 and str(path) in err, err
    assert ("not found" in err) if case == "missing_file" else ("no column 'prompt'" in err and "data.prompt_field" in err)
