"""World size 2 (ZeRO-3, gloo) gives the same losses and weights as world size 1 on the same
global batch: the loss is the token-mean over the global batch, not a mean of rank means."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from _teardown import assert_clean_teardown

HERE = Path(__file__).parent
ROOT = HERE.parent


def _env():
    """This process's environment without the process-group variables that an in-process trainer
    test may have set (a child reusing MASTER_PORT would find it taken by this process)."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    return {**env, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "1"}


def _run(args, nproc, out, extra=()):
    env = _env()
    if nproc == 1:
        cmd = [sys.executable, str(HERE / "_dist_worker.py")]
    else:
        import socket

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", f"--master_port={port}",
               str(HERE / "_dist_worker.py")]
    r = subprocess.run(cmd + args + [str(out), *extra], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-4000:]
    assert_clean_teardown(out, nproc)
    return json.loads((out / "losses.json").read_text()), torch.load(out / "weights.pt")


@pytest.mark.slow
def test_zero3_world_size_2_matches_world_size_1(tiny_world, tmp_path):
    args = [tiny_world["student"], tiny_world["teacher"], tiny_world["train"]]
    (tmp_path / "w1").mkdir(), (tmp_path / "w2").mkdir()
    l1, w1 = _run(args, 1, tmp_path / "w1")
    l2, w2 = _run(args, 2, tmp_path / "w2")
    print("losses ws=1", l1, "ws=2", l2)
    assert len(l1) == len(l2) == 3
    for a, b in zip(l1, l2):
        assert a == pytest.approx(b, rel=1e-4, abs=1e-6)
    assert l1[0] != pytest.approx(l1[2])  # the weights moved between steps
    assert w1.keys() == w2.keys()
    for k in w1:
        torch.testing.assert_close(w1[k], w2[k], atol=1e-5, rtol=1e-4)


@pytest.mark.slow
def test_zero3_agentic_world_size_2_matches_world_size_1(agent_world, tmp_path):
    """The same on multi-turn tool-calling episodes (tool turns inserted, masked out of the loss)."""
    args = [agent_world["student"], agent_world["teacher"], agent_world["train"], "rollout.environment=_agent_fakes:KeyValueEnv",
            "rollout.max_turns=3", "rollout.max_new_tokens=80", "rollout.max_episode_tokens=300"]
    (tmp_path / "w1").mkdir(), (tmp_path / "w2").mkdir()
    l1, w1 = _run(args[:3], 1, tmp_path / "w1", args[3:])
    l2, w2 = _run(args[:3], 2, tmp_path / "w2", args[3:])
    print("agentic losses ws=1", l1, "ws=2", l2)
    for a, b in zip(l1, l2):
        assert a == pytest.approx(b, rel=1e-4, abs=1e-6)
    assert l1[0] != pytest.approx(l1[2])
    for k in w1:
        torch.testing.assert_close(w1[k], w2[k], atol=1e-5, rtol=1e-4)


@pytest.mark.slow
def test_zero3_agentic_ranks_taking_unequal_turns_finish(agent_world, tmp_path):
    """ZeRO-3 with the real HF generate: every forward gathers the partitioned student, so the ranks
    must make the same generate calls. Rank 1's episodes call a tool every turn (3 turns), rank 0's
    end after one; rank 0 keeps joining rank 1's turns with empty ones instead of waiting forever
    in its next collective (the bounded wait below fails the test)."""
    import socket

    from _procs import run_bounded

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}",
           str(HERE / "_dist_worker.py"), agent_world["student"], agent_world["teacher"], agent_world["train"],
           str(tmp_path), "rollout.environment=_agent_fakes:KeyValueEnv", "rollout.tool_parser=_agent_fakes:RankParser",
           "rollout.max_turns=3", "rollout.max_new_tokens=6", "rollout.max_episode_tokens=300",
           "rollout.batch_size=3"]
    rc, out, _ = run_bounded(cmd, 240, "2 ranks taking unequal turns", env=_env(), stderr=subprocess.STDOUT)
    assert rc == 0, out[-4000:]
    assert_clean_teardown(tmp_path, 2)
    m = json.loads((tmp_path / "metrics.json").read_text())
    print({k: v for k, v in m[0].items() if k.startswith("agent/")})
    assert m[0]["agent/turns"] == pytest.approx(2.0)  # mean over both ranks' episodes: (1 + 3) / 2


@pytest.mark.slow
@pytest.mark.parametrize("fail_rank,where", [(1, "generate"), (0, "sync")])
def test_a_failure_on_one_rank_stops_every_rank(tiny_world, tmp_path, fail_rank, where):
    """Without agreement the healthy rank would wait in the next collective until the launcher's
    timeout (here: the subprocess timeout fails the test)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = _env()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}",
           str(HERE / "_dist_fault_worker.py"), tiny_world["student"], tiny_world["teacher"], tiny_world["train"],
           str(tmp_path), str(fail_rank), where]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-4000:]
    assert_clean_teardown(tmp_path, 2)  # also after an aborted run: nothing left for exit to race
    texts = [(tmp_path / f"rank{i}.txt").read_text() for i in range(2)]
    for i, text in enumerate(texts):
        assert text.startswith("aborted at step 2"), (i, text)
        assert "last intact checkpoint is" in text and "checkpoints/step_1" in text, text
    cause = "simulated engine crash" if where == "generate" else "simulated shape mismatch"
    assert cause in texts[fail_rank]
    other = texts[1 - fail_rank]
    assert f"on rank {fail_rank} of 2" in other and f"rank {1 - fail_rank} stops with it" in other
    assert ("the rollout engine failed" if where == "generate" else "weight sync failed") in other
