"""Rollout-engine faults and memory phases in the trainer, with a fake backend (no vLLM needed).

The fake wraps the real HF backend (real rollouts, so runs resume exactly) and records every call;
it can die in ``generate`` the way ``VLLMBackend`` does (:class:`RolloutEngineError`) and check
synced tensors with the vLLM backend's own shape checker (:class:`WeightSyncError`). What only a
GPU exercises (vLLM's sleep mode, CUDA ``load_weights``, TP > 1) is covered by the call order here
and by ``tests/test_vllm.py`` on CPU for everything else.
"""

import pytest
import torch

from _runs import read_metrics as _metrics, run_overrides as _overrides

import opsd.teacher
import opsd.trainer
from opsd.rollout import RolloutBackend, RolloutEngineError
from opsd.rollout.hf import HFGenerateBackend
from opsd.rollout.vllm_backend import _ShapeChecked
from opsd.train import main


class RecordingBackend(RolloutBackend):
    """HF generate plus a call log; ``die_at``: the n-th ``generate`` raises like a dead vLLM engine;
    ``bad_shape``: ``(name, shape, at_sync)`` makes the ``at_sync``-th sync see a wrong engine shape."""

    name = "recording"

    def __init__(self, model, tokenizer, log, die_at=None, bad_shape=None):
        self.inner = HFGenerateBackend(model, tokenizer, batch_size=8)
        self.model, self.log, self.die_at, self.bad_shape = self.inner.model, log, die_at, bad_shape
        self.generates = self.syncs = 0
        self.weights_seen = []  # student weights at each sampling generate (= the policy sampled)

    def generate(self, prompt_ids, sampling):
        self.log.append("generate(eval)" if sampling.temperature == 0 else "generate")
        if sampling.temperature != 0:
            self.generates += 1
            self.weights_seen.append({k: v.detach().clone() for k, v in self.model.state_dict().items()})
            if self.generates == self.die_at:
                raise RolloutEngineError("vLLM engine died during generate: RuntimeError: simulated worker "
                                         "crash; the last checkpoint is intact (resume from it)")
        return self.inner.generate(prompt_ids, sampling)

    def sync_weights(self, named_tensors):
        self.log.append("sync")
        self.syncs += 1
        expected = {k: tuple(v.shape) for k, v in self.model.state_dict().items()}
        if self.bad_shape and self.syncs == self.bad_shape[2]:
            expected[self.bad_shape[0]] = self.bad_shape[1]
        for _ in _ShapeChecked(named_tensors, expected, "fake-engine"):  # the vLLM backend's checker
            pass

    def sleep(self):
        self.log.append("sleep")

    def wake(self):
        self.log.append("wake")


@pytest.fixture
def fake(monkeypatch):
    """``fake(**kw)`` makes the trainer build a :class:`RecordingBackend`; returns the call log and
    a list that receives the backend instance."""
    def install(**kw):
        log, made = [], []

        def make(cfg, model, tokenizer, model_path=None, dtype="auto", seed=0):
            made.append(RecordingBackend(model, tokenizer, log, **kw))
            made[-1].made_with = (model_path, dtype, seed)
            return made[-1]

        monkeypatch.setattr(opsd.trainer, "make_backend", make)
        return log, made
    return install


def _steps(out):
    return [r["step"] for r in _metrics(out) if "loss" in r]


def test_engine_death_at_step_2_stops_cleanly_and_resumes(tiny_world, tmp_path, fake, capsys):
    out = tmp_path / "run"
    _, made = fake(die_at=2)
    assert main(_overrides(tiny_world, out, 3, ["train.save_every=1"])) == 1
    err = capsys.readouterr().err
    ck = out / "checkpoints" / "step_1"
    assert "error: step 2: the rollout engine failed: vLLM engine died during generate" in err
    assert f"Stopped without saving step 2; the last intact checkpoint is {ck}" in err
    assert "Traceback" not in err
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_1"]  # nothing partial
    assert (ck / "COMPLETE").is_file() and _steps(out) == [1]
    after_step_1 = made[0].weights_seen[1]

    _, made = fake()  # a healthy engine: the same command resumes from step_1
    assert main(_overrides(tiny_world, out, 3, ["train.save_every=1"])) == 0
    assert _steps(out) == [1, 2, 3]
    resumed = made[0].weights_seen[0]  # the policy step 2 samples from, restored from step_1
    assert all(torch.equal(after_step_1[k], resumed[k]) for k in after_step_1)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_2", "step_3"]


def _collapse(log):
    return [x for i, x in enumerate(log) if i == 0 or log[i - 1] != x]


@pytest.mark.parametrize("level", [1, 0])
def test_sleep_before_training_phase_wake_before_next_rollout(tiny_world, tmp_path, fake, monkeypatch, level):
    log, made = fake()
    real_score = opsd.teacher.Teacher.score

    def score(self, *a, **k):
        log.append("teacher")
        return real_score(self, *a, **k)

    monkeypatch.setattr(opsd.teacher.Teacher, "score", score)
    extra = [f"rollout.sleep_level={level}", f"train.eval_files={tiny_world['heldout']}", "train.eval_limit=2",
             "train.seed=5"]
    assert main(_overrides(tiny_world, tmp_path / "run", 2, extra)) == 0
    assert made[0].made_with == (tiny_world["student"], "float32", 5)  # model.dtype, train.seed
    step = ["generate", "sleep", "teacher", "sync"]
    want = ["generate(eval)", *step, "wake", *step, "wake", "generate(eval)"]
    if level == 0:  # never sleeps, so never wakes
        want = [x for x in want if x not in ("sleep", "wake")]
    assert _collapse(log) == want


def test_weight_sync_error_names_parameter_and_checkpoint(tiny_world, tmp_path, fake, capsys):
    out = tmp_path / "run"
    fake(bad_shape=("model.norm.weight", (33,), 2))
    assert main(_overrides(tiny_world, out, 3, ["train.save_every=1"])) == 1
    err = capsys.readouterr().err
    assert "error: step 2: weight sync failed: weight sync: parameter 'model.norm.weight' has shape (32,)" in err
    assert "expects (33,)" in err
    assert f"the last intact checkpoint is {out / 'checkpoints' / 'step_1'}" in err
    assert "Traceback" not in err
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_1"]


def test_engine_death_before_any_checkpoint_says_so(tiny_world, tmp_path, fake, capsys):
    fake(die_at=1)
    assert main(_overrides(tiny_world, tmp_path / "run", 2)) == 1
    err = capsys.readouterr().err
    assert "step 1: the rollout engine failed" in err and "no checkpoint was written" in err
    assert not (tmp_path / "run" / "checkpoints").exists() or not any((tmp_path / "run" / "checkpoints").iterdir())


def test_make_backend_passes_dtype_and_seed_to_vllm(monkeypatch):
    import opsd.rollout.vllm_backend as vb
    from opsd.config import RolloutConfig
    from opsd.rollout import make_backend

    seen = {}

    class Stub:
        def __init__(self, model_path, tokenizer, cfg, **kw):
            seen.update(path=model_path, **kw)

    monkeypatch.setattr(vb, "VLLMBackend", Stub)
    make_backend(RolloutConfig(backend="vllm"), None, None, "some/model", dtype="bfloat16", seed=7)
    assert seen == {"path": "some/model", "dtype": "bfloat16", "seed": 7}


def test_vllm_temperature_above_2_rejected_by_config():
    from opsd.config import ConfigError, load_config

    base = ["model.student=s", "model.teacher=t", "data.train_files=x.jsonl"]
    with pytest.raises(ConfigError, match=r"rollout.temperature=2.5 is above 2.*rollout.backend=vllm"):
        load_config(None, base + ["rollout.backend=vllm", "rollout.temperature=2.5"])
    assert load_config(None, base + ["rollout.backend=vllm", "rollout.temperature=2"]).rollout.temperature == 2
    assert load_config(None, base + ["rollout.backend=hf", "rollout.temperature=2.5"]).rollout.temperature == 2.5
