"""The teacher as a service (opsd/teacher_service.py).

Without vLLM: the client's sequence split, config checks, connect-time verification and its faults
against a stand-in service (tests/_teacher_service_fakes.py). With vLLM (marker ``vllm``; the server
runs in the vLLM environment named by ``OPSD_VLLM_PYTHON``, default ``.venv-vllm/bin/python``, the
trainer in this one): one real server for the module, its hidden states against HF's, the toy
recipe with TIP through the trainer equal to the in-process teacher's, and a killed server: the run
stops with the error naming URL and step, and resumes with identical losses once it is back.

    OPSD_VLLM_PYTHON=.venv-vllm/bin/python .venv/bin/python -m pytest -m vllm tests/test_teacher_service.py
"""
import functools
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from opsd.config import ConfigError, load_config
from opsd.teacher_service import (FINGERPRINT_PREFIX, ServedTeacher, TeacherServiceError, fingerprint,
                                  fingerprint_name, load_head, sequences)
from _teacher_service_fakes import FakeService

ROOT = Path(__file__).resolve().parents[1]
TOY = ROOT / "artifacts" / "toy"
RECIPE = ROOT / "recipes" / "toy" / "opd.yaml"
FP32_TOL = 1e-5
LOGGED = 1e-6  # metrics.jsonl rounds to 6 decimals: one unit of the last logged digit
START_TIMEOUT_S = 420  # server start-up: ~100 s on 2 idle cores, more on busy ones
ENV = dict(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", WANDB_MODE="offline", TOKENIZERS_PARALLELISM="false",
           VLLM_CPU_KVCACHE_SPACE="1", VLLM_ENABLE_V1_MULTIPROCESSING="0")


# ------------------------------------------------------------------ without a server


def _seq(packed):
    from opsd.batching import collate

    torch.manual_seed(0)
    lengths = [5, 9, 3, 7]
    ids = torch.zeros(4, 9, dtype=torch.long)
    am = torch.zeros(4, 9, dtype=torch.long)
    lm = torch.zeros(4, 9, dtype=torch.long)
    for r, n in enumerate(lengths):
        ids[r, :n] = torch.randint(1, 60, (n,))
        am[r, :n] = 1
        lm[r, 2:n - 1] = 1
    return collate({"input_ids": ids, "attention_mask": am, "loss_mask": lm}, [0, 1, 3], 0, packed)


@pytest.mark.parametrize("packed", [False, True])
def test_sequences_give_the_loss_positions_in_the_in_process_order(packed):
    b = _seq(packed)
    seqs = sequences(b)
    assert [len(ids) for ids, _ in seqs] == [5, 9, 7]
    # the in-process teacher keeps hidden[loss_mask] of the (B, L) batch: the same tokens, same order
    served = torch.cat([torch.tensor(ids)[lm] for ids, lm in seqs])
    assert torch.equal(served, b["input_ids"][b["loss_mask"].bool()])


def test_config_checks_name_the_option():
    with pytest.raises(ConfigError, match="engine.teacher_url"):
        load_config(str(RECIPE), ["engine.teacher_placement=server"])
    with pytest.raises(ConfigError, match="loss.teacher_topk"):
        load_config(str(RECIPE), ["engine.teacher_placement=server", "engine.teacher_url=http://127.0.0.1:1",
                                  "engine.teacher_server_output=topk"])
    with pytest.raises(ConfigError, match="teacher_sharding"):
        load_config(str(RECIPE), ["engine.teacher_placement=server", "engine.teacher_url=http://127.0.0.1:1",
                                  "engine.teacher_sharding=zero3"])


@functools.lru_cache(maxsize=1)
def _local():
    w, b, sha, config = load_head(str(TOY / "teacher"))
    return w, b, fingerprint(config, sha, "float32")


def test_head_is_read_alone_and_equals_the_models():
    from transformers import AutoModelForCausalLM

    w, b, fp = _local()
    model = AutoModelForCausalLM.from_pretrained(str(TOY / "teacher"))
    assert torch.equal(w, model.get_output_embeddings().weight.detach()) and b is None
    assert fp == {"architecture": "Qwen3ForCausalLM", "hidden_size": 128, "vocab_size": 64,
                  "head_sha256": fp["head_sha256"], "dtype": "float32"}


def _client(url, head, expect, retries=2, timeout_s=2.0):
    return ServedTeacher(url, torch.device("cpu"), "hidden", head=head, expect=expect, timeout_s=timeout_s,
                         retries=retries, backoff_s=0.01)


def test_connect_checks_the_served_model_against_the_local_checkpoint():
    w, b, fp = _local()
    other = dict(fp, hidden_size=256, head_sha256="0" * 16)
    with FakeService(fingerprint_name(other), 256) as svc:
        with pytest.raises(ValueError) as e:
            _client(svc.url, (w, b), fp)
    msg = str(e.value)
    assert svc.url in msg and "256" in msg and "128" in msg and fp["head_sha256"] in msg
    with FakeService(fingerprint_name(fp), 96) as svc:  # right fingerprint, wrong probe width
        with pytest.raises(ValueError, match="96.*128"):
            _client(svc.url, (w, b), fp)
    with FakeService("teacher", 128) as svc:  # plain `vllm serve`: no fingerprint
        svc.fingerprint = "teacher"
        with pytest.raises(ValueError, match="opsd.teacher_service serve"):
            _client(svc.url, (w, b), fp)


def _batch():
    b = _seq(False)
    return b, int(b["loss_mask"].sum())


def test_good_answers_give_hidden_logits_of_every_loss_position():
    w, b, fp = _local()
    with FakeService(fingerprint_name(fp), 128) as svc:
        t = _client(svc.url, (w, b), fp)
        batch, n = _batch()
        (src,) = t.score_phase([batch], 64)
        assert len(src) == n and src.rows(slice(0, n)).shape == (n, 64)
        m = t.metrics()
        assert m["teacher/bytes"] == sum(len(ids) for ids, _ in sequences(batch)) * 128 * 4
        t.close()


@pytest.mark.parametrize("fault", ["down", "http500", "nan", "shape", "truncated", "slow"])
def test_faults_are_retried_then_one_error_naming_the_url(fault):
    w, b, fp = _local()
    with FakeService(fingerprint_name(fp), 128) as svc:
        t = _client(svc.url, (w, b), fp, retries=2, timeout_s=1.0)
        svc.fault = fault if fault != "down" else None
        if fault == "down":
            svc.httpd.shutdown()
            svc.httpd.server_close()
        before = svc.requests
        batch, n = _batch()
        t0 = time.time()
        (src,) = t.score_phase([batch], 64)
        with pytest.raises(TeacherServiceError) as e:
            src.rows(slice(0, n))
        assert time.time() - t0 < 30  # bounded: 3 tries of at most 1 s each, plus backoff
        t.close()
    msg = str(e.value)
    assert svc.url in msg and "after 3 tries" in msg, msg
    if fault != "down":
        assert svc.requests - before == 3


# ------------------------------------------------------------------ a real vLLM server


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _vllm_python():
    py = os.environ.get("OPSD_VLLM_PYTHON", str(ROOT / ".venv-vllm" / "bin" / "python"))
    if Path(py).is_file():
        return py
    reason = f"no vLLM environment at {py} (set OPSD_VLLM_PYTHON, or build it with bash .ci/vllm.sh)"
    if os.environ.get("CI") == "true":
        pytest.fail(f"under CI the teacher-service tests must run: {reason}")
    pytest.skip(reason)


def _remove_orphans(before):
    if not os.path.isdir("/dev/shm"):
        return
    new = [f for f in os.listdir("/dev/shm") if f.startswith("sem.mp-") and f not in before]
    if not new:
        return
    mapped = set()
    for pid in os.listdir("/proc"):
        try:
            mapped.update(f for f in new if f in Path(f"/proc/{pid}/maps").read_text())
        except (OSError, ValueError):
            pass
    for f in set(new) - mapped:
        Path("/dev/shm", f).unlink(missing_ok=True)


class Server:
    """``python -m opsd.teacher_service serve`` in the vLLM environment, on a free local port."""

    def __init__(self, py, log_path, output="hidden", model=TOY / "teacher", extra=()):
        self.py, self.log_path, self.port, self.proc, self.output = py, log_path, _free_port(), None, output
        self.model, self.extra = model, list(extra)
        self.url = f"http://127.0.0.1:{self.port}"

    def start(self):
        import httpx

        env = {**os.environ, **ENV, "PYTHONPATH": str(ROOT)}
        self.shm_before = set(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else set()
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([self.py, "-m", "opsd.teacher_service", "serve", "--model", str(self.model),
                                      "--port", str(self.port), "--max-model-len", "256", "--output", self.output,
                                      *self.extra],
                                     cwd=ROOT, env=env,
                                     stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + START_TIMEOUT_S
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the teacher server exited ({self.proc.returncode}); log: "
                                   f"{Path(self.log_path).read_text()[-3000:]}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(2)
        self.stop()
        raise RuntimeError(f"the teacher server did not answer within {START_TIMEOUT_S} s; log: "
                           f"{Path(self.log_path).read_text()[-3000:]}")

    def stop(self, crash=False):
        """SIGTERM to its process group (its own session: the server and its engine process, nothing
        else), SIGKILL after 30 s; ``crash``: SIGKILL at once. Semaphores in /dev/shm that a killed
        engine leaves behind (new since start, mapped by no process) are removed."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL if crash else signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=30)
            time.sleep(1)  # the engine process exits with its group
            _remove_orphans(self.shm_before)
        self.proc = None
        self.log.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = Server(_vllm_python(), tmp_path_factory.mktemp("server") / "server.log").start()
    yield s
    s.stop()


def _train(out, extra=(), timeout=600, check=True, recipe=RECIPE):
    cmd = [sys.executable, "-m", "opsd.train", "--config", str(recipe), "train.eval_files=[]", "logging.progress=false",
           f"train.output_dir={out}", "train.export=false", "tip.rule=soft_or", "tip.ratio=0.2", *extra]
    r = subprocess.run(cmd, cwd=ROOT, env={**os.environ, **ENV}, capture_output=True, text=True, timeout=timeout)
    if check:
        assert r.returncode == 0, r.stderr[-4000:]
    return r


def _metrics(out):
    return [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines() if line.strip()]


def _served(server, *extra):
    return ["engine.teacher_placement=server", f"engine.teacher_url={server.url}", *extra]


_NOT_COMPARED = ("time", "teacher/", "gen_time_s", "step_time_s", "peak_mem_gb")  # wall clock, memory, wire


def _assert_same(a, b, tol=FP32_TOL, tight=(), must=("loss", "tip/kept_frac", "tip/q4_kept")):
    """Every logged figure of every step (losses, divergences, entropies, TIP quadrant shares and
    kept fractions, token counts, gradient norm) equal within FP32_TOL relative, plus the logging's
    rounding; the worst relative difference of the loss is returned. ``tol``: another tolerance for
    every key but those starting with one of ``tight``."""
    assert [m["step"] for m in a] == [m["step"] for m in b]
    worst = 0.0
    for x, y in zip(a, b):
        keys = [k for k, v in y.items() if isinstance(v, (int, float)) and not k.startswith(_NOT_COMPARED)]
        assert all(k in keys for k in must), (must, keys)
        for k in keys:
            t = FP32_TOL if k.startswith(tuple(tight)) else tol
            assert abs(x[k] - y[k]) <= t * abs(y[k]) + LOGGED, (x["step"], k, x[k], y[k])
        worst = max(worst, abs(x["loss"] - y["loss"]) / abs(y["loss"]))
    return worst


@pytest.mark.vllm
def test_served_hidden_states_equal_hf(server):
    from transformers import AutoModelForCausalLM

    w, b, fp = _local()
    t = _client(server.url, (w, b), fp, timeout_s=60)
    ids = [[1, 5, 9, 12, 7, 3], [4, 4, 2]]
    got = t._hidden(ids)
    model = AutoModelForCausalLM.from_pretrained(str(TOY / "teacher")).eval()
    with torch.no_grad():
        for seq, h in zip(ids, got):
            ref = model.model(torch.tensor([seq])).last_hidden_state[0]
            assert (h - ref).abs().max().item() < 1e-4, (h - ref).abs().max().item()
    t.close()


@pytest.mark.vllm
def test_toy_recipe_with_tip_equals_the_in_process_teacher(server, tmp_path):
    steps = ["train.max_steps=3"]
    _train(tmp_path / "local", steps)
    _train(tmp_path / "served", [*steps, *_served(server)])
    local, served = _metrics(tmp_path / "local"), _metrics(tmp_path / "served")
    worst = _assert_same(served, local)
    print(f"max relative difference over {len(local)} steps: {worst:.2e}; kept_frac "
          f"{[m['kept_frac'] for m in served]} vs {[m['kept_frac'] for m in local]}")
    assert all(m["teacher/score_s"] > 0 and m["teacher/bytes"] > 0 for m in served)


@pytest.mark.vllm
@pytest.mark.slow
def test_two_gloo_ranks_with_the_served_teacher_equal_the_in_process_teacher(server, tmp_path):
    """Both ranks score through the one service; each rank's rollouts are seeded by rank, so the
    reference is the in-process teacher on the same 2 ranks."""
    from test_distributed import _env

    def torchrun(out, extra):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={_free_port()}",
               "-m", "opsd.train", "--config", str(RECIPE), "train.eval_files=[]", "logging.progress=false",
               f"train.output_dir={out}", "train.export=false", "tip.rule=soft_or", "tip.ratio=0.2",
               "train.max_steps=3", *extra]
        r = subprocess.run(cmd, cwd=ROOT, env={**_env(), **ENV}, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr[-4000:]
        return _metrics(out)

    worst = _assert_same(torchrun(tmp_path / "served", _served(server)), torchrun(tmp_path / "local", []))
    print(f"2 ranks: max relative difference {worst:.2e}")


@pytest.mark.vllm
@pytest.mark.slow
def test_killed_server_stops_the_run_and_resume_gives_identical_losses(server, tmp_path):
    run = ["train.max_steps=4", "train.save_every=1", "train.resume=auto", "engine.teacher_retries=1",
           "engine.teacher_backoff_s=0.5", "engine.teacher_timeout_s=20", *_served(server)]
    _train(tmp_path / "whole", run)
    out = tmp_path / "cut"
    cmd = [sys.executable, "-m", "opsd.train", "--config", str(RECIPE), "train.eval_files=[]", "logging.progress=false",
           f"train.output_dir={out}", "train.export=false", "tip.rule=soft_or", "tip.ratio=0.2", *run]
    proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, **ENV}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:  # kill the server once step 2 is logged
        if (out / "metrics.jsonl").is_file() and len(_metrics(out)) >= 2:
            break
        time.sleep(0.2)
    server.stop(crash=True)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 1, err[-3000:]
    done = len(_metrics(out))
    assert 2 <= done < 4, done
    assert f"step {done + 1}" in err and server.url in err and "teacher service" in err, err[-3000:]
    assert "last intact checkpoint" in err, err[-3000:]
    print("the stopped run's error:", err.strip().splitlines()[-2:])
    server.start()
    _train(out, run)
    _assert_same(_metrics(out), _metrics(tmp_path / "whole"))


@pytest.fixture(scope="module")
def topk_server(tmp_path_factory):
    s = Server(_vllm_python(), tmp_path_factory.mktemp("server") / "topk.log", output="topk").start()
    yield s
    s.stop()


@pytest.mark.vllm
@pytest.mark.slow
def test_topk_mode_equals_the_in_process_topk_teacher(topk_server, tmp_path):
    """vLLM's prompt log-probabilities (engine.teacher_server_output=topk) against the in-process
    TeacherTopK of the same k. TIP's selections and token counts are equal; losses, divergences and
    the teacher's entropy differ by up to ~2e-3 relative (measured 1.1e-3 on the loss, 1.8e-3 on the
    teacher entropy): vLLM normalizes over all 64 rows of the toy head, the in-process teacher over
    the tokenizer's 59 ids, and the 5 padding rows hold 0.18 % of the mass on average (max 2 %)."""
    steps = ["train.max_steps=2", "loss.teacher_topk=16"]
    _train(tmp_path / "local", steps)
    _train(tmp_path / "served", [*steps, "engine.teacher_placement=server", f"engine.teacher_url={topk_server.url}",
                                 "engine.teacher_server_output=topk"])
    worst = _assert_same(_metrics(tmp_path / "served"), _metrics(tmp_path / "local"), tol=5e-3,
                         tight=("kept_frac", "tokens", "tip/kept_frac", "tip/q1", "tip/q2", "tip/q3", "tip/q4"))
    print(f"top-k mode: max relative loss difference {worst:.2e}")


# ------------------------------------------------------------------ several served teachers; agentic


@pytest.fixture(scope="module")
def cut_server(tmp_path_factory):
    """A second teacher: the toy teacher without its last layer (another model, the same tokenizer
    and head), served on its own port."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root = tmp_path_factory.mktemp("cut_teacher")
    model = AutoModelForCausalLM.from_pretrained(str(TOY / "teacher"))
    model.model.layers = model.model.layers[:-1]
    model.config.num_hidden_layers -= 1
    model.config.layer_types = model.config.layer_types[:-1] if getattr(model.config, "layer_types", None) else None
    model.save_pretrained(str(root / "cut"))
    AutoTokenizer.from_pretrained(str(TOY / "teacher")).save_pretrained(str(root / "cut"))
    s = Server(_vllm_python(), root / "cut.log", model=root / "cut").start()
    yield s
    s.stop()


@pytest.mark.vllm
def test_two_served_teachers_route_rows_as_the_in_process_pool(server, cut_server, tmp_path):
    """Rows routed by a field to two teachers on two ports: every step's figures, per-teacher ones
    included, equal the same two teachers in process (whose rows equal their own single teacher's:
    tests/test_teachers.py)."""
    import yaml

    rows = [json.loads(x) for x in (TOY / "train.jsonl").read_text().splitlines() if x.strip()]
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps({**r, "teacher": "full" if i % 2 else "cut"}) + "\n" for i, r in enumerate(rows)))

    def run(out, served):
        spec = [{"name": "full", "model": str(TOY / "teacher")}, {"name": "cut", "model": str(cut_server.model)}]
        if served:
            spec[0].update(placement="server", url=server.url)
            spec[1].update(placement="server", url=cut_server.url)
        cfg = yaml.safe_load(RECIPE.read_text())
        cfg["model"].pop("teacher")
        recipe = tmp_path / f"{out}.yaml"
        recipe.write_text(yaml.safe_dump({**cfg, "teachers": spec}))
        _train(tmp_path / out, ["train.max_steps=2", f"data.train_files=[{train}]"], recipe=recipe)
        return _metrics(tmp_path / out)

    local, served = run("local", False), run("served", True)
    worst = _assert_same(served, local, must=("loss", "tip/kept_frac", "group/teacher=full/reverse_kl",
                                              "group/teacher=cut/reverse_kl", "tip/teacher=cut/q3_frac"))
    print(f"two served teachers: max relative loss difference {worst:.2e}; per teacher "
          f"{[(m['group/teacher=full/reverse_kl'], m['group/teacher=cut/reverse_kl']) for m in served]}")
    assert all(m["teachers/full/wait_s"] >= 0 and m["teachers/cut/bytes"] > 0 for m in served)
    assert all(abs(m["group/teacher=full/reverse_kl"] - m["group/teacher=cut/reverse_kl"]) > 1e-3 for m in served)


@pytest.fixture(scope="module")
def agent_server(tmp_path_factory):
    s = Server(_vllm_python(), tmp_path_factory.mktemp("server") / "agent.log",
               model=ROOT / "artifacts" / "agent_toy" / "teacher").start()
    yield s
    s.stop()


@pytest.mark.vllm
def test_agentic_tip_run_with_a_served_teacher_equals_the_in_process_one(agent_server, tmp_path):
    """Multi-turn tool-calling episodes (tool turns in the sequences, not trained) scored by the
    served teacher: every figure, TIP's selections and its per-role shares included, equals the
    in-process teacher's."""
    recipe = ROOT / "recipes" / "toy" / "agent.yaml"
    steps = ["train.max_steps=2", "train.prompts_per_step=8"]
    _train(tmp_path / "local", steps, recipe=recipe)
    _train(tmp_path / "served", [*steps, "engine.teacher_placement=server", f"engine.teacher_url={agent_server.url}"],
           recipe=recipe)
    local, served = _metrics(tmp_path / "local"), _metrics(tmp_path / "served")
    worst = _assert_same(served, local, must=("loss", "tip/kept_frac", "tip/tool_call/q3_frac",
                                              "group/tool_call/reverse_kl"))
    print(f"agentic, served vs in-process: max relative loss difference {worst:.2e}; kept_frac "
          f"{[m['kept_frac'] for m in served]} vs {[m['kept_frac'] for m in local]}")


BF16_TOL = 2e-2  # bf16: the relative tolerance served vs in-process needs (measured: see the test)


@pytest.mark.vllm
@pytest.mark.slow
def test_bf16_served_teacher_within_the_stated_tolerance(tmp_path):
    """model.dtype=bfloat16 against a server started with --dtype bfloat16: vLLM's and HF's bf16
    kernels round differently, so figures agree to BF16_TOL relative, not 1e-5; TIP's kept
    fraction stays within one token in a hundred. Prints the measured worst differences."""
    s = Server(_vllm_python(), tmp_path / "bf16.log", extra=["--dtype", "bfloat16"]).start()
    try:
        steps = ["train.max_steps=3", "model.dtype=bfloat16"]
        _train(tmp_path / "local", steps)
        _train(tmp_path / "served", [*steps, *_served(s)])
    finally:
        s.stop()
    local, served = _metrics(tmp_path / "local"), _metrics(tmp_path / "served")
    worst = {}
    for x, y in zip(served, local):
        for k, v in y.items():
            if isinstance(v, (int, float)) and not k.startswith(_NOT_COMPARED) and k in x:
                worst[k] = max(worst.get(k, 0.0), abs(x[k] - v) / max(abs(v), 1e-12))
    print("bf16 served vs in-process, worst relative difference per figure:",
          {k: f"{v:.1e}" for k, v in sorted(worst.items(), key=lambda kv: -kv[1])[:8]})
    assert worst["loss"] <= BF16_TOL and worst["reverse_kl"] <= BF16_TOL, worst
    assert all(abs(a["kept_frac"] - b["kept_frac"]) <= 0.01 for a, b in zip(served, local))
