"""Agentic OPD in the trainer: episodes from the environment, the loss on sampled tokens only, the
teacher scoring the same ids at the same positions, metrics, TIP per token role."""
import pytest
import torch

from _agent_fakes import ScriptedBackend, lookup_policy, rows_of
from _runs import read_metrics
from opsd.config import load_config
from opsd.batching import build_sequences
from opsd.rollout.agent import ROLE_NAMES
from opsd.rollout.base import SamplingConfig
from opsd.trainer import Trainer


def agent_overrides(w, out, steps, extra=()):
    return [f"model.student={w['student']}", f"model.teacher={w['teacher']}", f"data.train_files={w['train']}",
            f"train.output_dir={out}", f"train.max_steps={steps}", "train.prompts_per_step=4", "rollout.n=2",
            "rollout.environment=_agent_fakes:KeyValueEnv", "rollout.max_turns=3", "rollout.max_new_tokens=80",
            "rollout.max_episode_tokens=300", "engine.micro_batch_size=3", "optim.lr=0.01",
            "logging.progress=false", "train.export=false", "engine.zero_stage=0", *extra]


def _trainer(w, out, steps, extra=()):
    tr = Trainer(load_config(None, agent_overrides(w, out, steps, extra))).setup()
    tr.loop.backend = ScriptedBackend(tr.tokenizer, lookup_policy)
    return tr


def test_agentic_run_trains_on_sampled_tokens_and_logs_episode_metrics(agent_world, tmp_path):
    tr = _trainer(agent_world, tmp_path / "run", 2, ["train.eval_files=" + agent_world["heldout"]])
    sampled, rollout = [], tr.rollout  # sampled tokens of each training step's rollouts

    def counting_rollout(items):
        out = rollout(items)
        sampled.append(sum(map(sum, out[0].response_mask)))
        return out

    tr.rollout = counting_rollout
    try:
        summary = tr.train()
    finally:
        tr.cleanup()
    m = read_metrics(tmp_path / "run")
    steps = [r for r in m if "loss" in r]
    assert len(steps) == 2 and all(torch.isfinite(torch.tensor(r["loss"])) for r in steps)
    for r in steps:
        assert r["agent/turns"] == 2 and r["agent/tool_calls_ok"] == 1 and r["agent/tool_calls_failed"] == 0
        assert r["agent/reward"] == 1.0 and r["accuracy"] == 1.0 and r["agent/cut"] == 0
        assert 0.2 < r["agent/masked_share"] < 0.9  # tool turns are context, not trained
    # the loss covers exactly the sampled tokens: tokens == sampled tokens of the step
    assert [r["tokens"] for r in steps] == sampled and min(sampled) > 0
    assert summary["accuracy_before"] == summary["accuracy_after"] == 1.0  # scripted policy: always right


def test_loss_positions_are_the_sampled_ids_and_teacher_aligns(agent_world, tmp_path):
    """The statistics the hook sees at each loss position equal a direct full-logits computation
    on the same ids: student and teacher score the same ids at the same positions, and every loss
    position predicts a token the student sampled."""
    tr = _trainer(agent_world, tmp_path / "run", 1)
    try:
        roll = tr.loop.run(rows_of("abd"), SamplingConfig(n=1))
        seq = build_sequences(roll.prompt_ids, roll.response_ids, tr.tokenizer.pad_token_id,
                              tr.tokenizer.eos_token_id, response_masks=roll.response_mask,
                              token_groups=roll.token_roles)
        ids, am, lm = seq["input_ids"], seq["attention_mask"], seq["loss_mask"]
        for b in range(len(roll)):  # the position before each sampled token, nothing else
            p = len(roll.prompt_ids[b])
            sampled = [p + t for t, f in enumerate(roll.response_mask[b]) if f]
            assert lm[b].nonzero().flatten().tolist() == [q - 1 for q in sampled]
            assert (seq["token_groups"][b][lm[b]] > 0).all()  # every trained token has a role
        captured = {}
        from opsd import hooks

        orig = hooks.select_tokens
        hooks.select_tokens = lambda s: (captured.setdefault("stats", s), orig(s))[1]
        try:
            src = tr.teacher.score(ids, am, lm, tr.vocab_size)
            tr.engine(ids, am, lm, src, None, token_groups=seq["token_groups"])
        finally:
            hooks.select_tokens = orig
        stats = captured["stats"]
        with torch.no_grad():
            s_lp = torch.log_softmax(tr.student(input_ids=ids, attention_mask=am).logits[..., :tr.vocab_size].float(), -1)
            t_lp = torch.log_softmax(tr.teacher.model(input_ids=ids, attention_mask=am).logits[..., :tr.vocab_size].float(), -1)
        s_lp, t_lp = s_lp[lm], t_lp[lm]  # (N, V) at the loss positions
        rkl = (s_lp.exp() * (s_lp - t_lp)).sum(-1)
        torch.testing.assert_close(stats.reverse_kl, rkl, atol=1e-5, rtol=1e-4)
        assert stats.token_group.tolist() == seq["token_groups"][lm].tolist()
        assert stats.group_names == ROLE_NAMES
    finally:
        tr.cleanup()


def test_tip_runs_on_agentic_episodes_with_quadrants_per_role(agent_world, tmp_path):
    tr = _trainer(agent_world, tmp_path / "run", 2, ["tip.rule=q3", "tip.ratio=0.2"])
    try:
        tr.train()
    finally:
        tr.cleanup()
    rows = [r for r in read_metrics(tmp_path / "run") if "loss" in r]
    for r in rows:
        for role in ("text", "tool_call", "answer"):
            shares = [r[f"tip/{role}/q{i}_frac"] for i in range(1, 5)]
            assert sum(shares) == pytest.approx(1.0)  # every token of a role is in one quadrant
        assert sum(r[f"tip/{role}/frac"] for role in ("text", "tool_call", "answer")) == pytest.approx(1.0)
        assert r["kept_frac"] == pytest.approx(0.2, abs=0.05)


def test_agentic_config_errors(agent_world, tmp_path):
    from opsd.config import ConfigError

    with pytest.raises(ConfigError, match="rollout.tool_parser='nope'"):
        Trainer(load_config(None, agent_overrides(agent_world, tmp_path / "r", 1, ["rollout.tool_parser=nope"]))).setup()
    with pytest.raises(ConfigError, match="rollout.environment='_agent_fakes:Missing' cannot be imported"):
        Trainer(load_config(None, agent_overrides(agent_world, tmp_path / "r", 1,
                                                  ["rollout.environment=_agent_fakes:Missing"]))).setup()


def test_scorer_errors_are_metrics_and_stop_the_run_past_the_share(agent_world, tmp_path):
    from opsd.trainer import TrainingAborted

    from _agent_fakes import write_rows

    # four rows, keys a, b, c, d, all of them in every step: the scorer raises on b's episodes (1/4)
    rows = write_rows(tmp_path / "abcd.jsonl", 4)
    env = ["rollout.environment=_agent_fakes:FlakyScoreEnv", f"data.train_files={rows}"]
    tr = _trainer(agent_world, tmp_path / "ok", 1, [*env, "rollout.max_score_error_share=0.5"])
    try:
        tr.train()
    finally:
        tr.cleanup()
    (r,) = [r for r in read_metrics(tmp_path / "ok") if "loss" in r]
    assert r["agent/score_errors"] == pytest.approx(0.25) and r["agent/reward"] == pytest.approx(0.75)
    assert r["agent/score/lookup"] == 1.0 and r["agent/score_missing/lookup"] == pytest.approx(0.25)
    tr = _trainer(agent_world, tmp_path / "stop", 2, [*env, "rollout.max_score_error_share=0.2", "train.save_every=1"])
    try:
        with pytest.raises(TrainingAborted, match=r"step 1: the environment's scorer raised on 25.0% of the episodes.*"
                                                  r"rollout.max_score_error_share=0.2 \(first on this rank: KeyError"):
            tr.train()
    finally:
        tr.cleanup()
    metrics = tmp_path / "stop" / "metrics.jsonl"  # nothing was trained on those episodes
    assert not metrics.exists() or not [r for r in read_metrics(tmp_path / "stop") if "loss" in r]
