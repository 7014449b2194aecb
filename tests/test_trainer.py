"""End-to-end trainer on tiny random models: loss is Eq. 1 with the default hook, resume
continues with the same metrics, masked batches are skipped, bad options are named."""

import pytest
import torch

from _runs import read_metrics as _metrics, run_overrides as _overrides

from opsd import hooks
from opsd.config import ConfigError, load_config
from opsd.train import main


def test_default_hook_loss_is_token_mean_reverse_kl(tiny_world):
    """DistillModule with the default hook == naive full-logits token-mean reverse KL (Eq. 1)."""
    from opsd.distill import DistillModule
    from opsd.losses import HiddenLogits
    from opsd.models import load_causal_lm

    s, t = load_causal_lm(tiny_world["student"]), load_causal_lm(tiny_world["teacher"])
    v = min(s.config.vocab_size, t.config.vocab_size)
    torch.manual_seed(0)
    ids = torch.randint(5, 60, (3, 9))
    att = torch.ones_like(ids)
    mask = torch.zeros_like(ids)
    mask[0, 2:8], mask[1, 4:6], mask[2, 1:8] = 1, 1, 1
    with torch.no_grad():
        th = t.base_model(input_ids=ids, attention_mask=att).last_hidden_state[mask.bool()]
    mod = DistillModule(s, v, chunk_size=4)
    assert hooks.select_tokens is hooks.select_all
    loss_sum, stats, sel, kept = mod(ids, att, mask, HiddenLogits(th, t.lm_head.weight.detach(), v))
    assert kept == int(mask.sum()) == len(sel.indices)
    ls = torch.log_softmax(s(ids).logits[mask.bool()][:, :v], -1)
    lt = torch.log_softmax(t(ids).logits[mask.bool()][:, :v], -1).detach()
    naive = (ls.exp() * (ls - lt)).sum(-1).mean()
    assert (loss_sum / kept).item() == pytest.approx(naive.item(), rel=1e-5)
    g1 = torch.autograd.grad(loss_sum / kept, s.lm_head.weight, retain_graph=True)[0]
    g2 = torch.autograd.grad(naive, s.lm_head.weight)[0]
    torch.testing.assert_close(g1, g2, atol=1e-6, rtol=1e-4)


@pytest.mark.slow
def test_resume_continues_with_same_metrics(tiny_world, tmp_path, monkeypatch):
    from opsd.trainer import Trainer

    full, part = tmp_path / "full", tmp_path / "part"
    assert main(_overrides(tiny_world, full, 4, ["train.save_every=2"])) == 0
    real_step = Trainer.train_step

    def killed_at_3(self):  # the same run, killed during step 3
        if self.step == 2:
            raise KeyboardInterrupt("killed")
        return real_step(self)

    monkeypatch.setattr(Trainer, "train_step", killed_at_3)
    with pytest.raises(KeyboardInterrupt):
        main(_overrides(tiny_world, part, 4, ["train.save_every=2"]))
    monkeypatch.setattr(Trainer, "train_step", real_step)
    assert (part / "checkpoints" / "step_2" / "COMPLETE").is_file()
    (part / "checkpoints" / ".tmp-step_3").mkdir()  # a killed save: must be ignored by resume
    assert main(_overrides(tiny_world, part, 4, ["train.save_every=2"])) == 0
    a, b = _metrics(full), _metrics(part)
    assert [m["step"] for m in b] == [1, 2, 3, 4]
    for x, y in zip(a, b):
        assert x["loss"] == pytest.approx(y["loss"], rel=1e-5)
        assert x["accuracy"] == y["accuracy"]
    assert all(m["loss"] == m["loss"] for m in a)  # no NaN


def test_bad_options_are_named(tiny_world, tmp_path, capsys):
    assert main(_overrides(tiny_world, tmp_path, 1, ["loss.type=kl2"])) == 2
    assert "loss.type" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="data.train_files"):
        load_config(None, ["model.student=a", "model.teacher=b"])
    with pytest.raises(ConfigError, match="did you mean loss.chunk_size"):
        load_config(None, ["loss.chunk_sise=3"], validate=False)


def test_ratio_diagnostics_aggregate_as_ratio_of_sums():
    import copy
    import pickle

    r = hooks.Ratio(2, 4)
    assert r == 0.5 and isinstance(r, float) and (r.num, r.den) == (2.0, 4.0)
    assert hooks.Ratio(0, 0) == 0.0  # an empty share is 0, not NaN
    for clone in (pickle.loads(pickle.dumps(r)), copy.deepcopy(r)):
        assert clone == 0.5 and (clone.num, clone.den) == (2.0, 4.0)
    out = hooks.aggregate_diagnostics([({"share": hooks.Ratio(3, 3), "mean": 2.0}, 0.25),
                                       ({"share": hooks.Ratio(0, 0), "mean": 4.0}, 0.75),
                                       ({"share": hooks.Ratio(1, 3)}, 0.0)])
    assert out == {"share": pytest.approx(4 / 6), "mean": pytest.approx(3.5)}
    assert all(type(v) is float for v in out.values())


def test_step_diagnostics_weight_micro_batches_by_tokens(tiny_world, tmp_path, monkeypatch):
    """A share that is empty in one micro-batch is not pulled to 0; floats are token-weighted."""
    calls = []

    def hook(stats):
        calls.append(stats.num_tokens)
        first = len(calls) % 3 == 1  # 8 rollouts, micro-batches of 3: three calls per step
        return hooks.TokenSelection(indices=torch.arange(stats.num_tokens),
                                    diagnostics={"t/share": hooks.Ratio(stats.num_tokens if first else 0,
                                                                        stats.num_tokens if first else 0),
                                                 "t/n": float(stats.num_tokens)})

    monkeypatch.setattr(hooks, "select_tokens", hook)
    out = tmp_path / "run"
    assert main(_overrides(tiny_world, out, 2)) == 0
    rows = [r for r in _metrics(out) if "t/share" in r]
    assert len(rows) == 2 and len(calls) == 6
    for step, r in enumerate(rows):
        n = calls[3 * step:3 * step + 3]
        assert r["t/share"] == 1.0
        assert r["t/n"] == pytest.approx(sum(x * x for x in n) / sum(n))
