"""``opsd.launch``: config validation against the world size, hostfile parsing, and the
torchrun / deepspeed commands printed by ``--dry-run``."""
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from opsd.launch import LaunchError, main, parse_hostfile

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def cfg_file(tmp_path):
    p = tmp_path / "run.yaml"
    p.write_text("model:\n  student: s\n  teacher: t\ndata:\n  train_files: [train.jsonl]\n"
                 "rollout:\n  backend: vllm\n  tensor_parallel_size: 2\ntrain:\n  prompts_per_step: 64\n")
    return str(p)


@pytest.fixture
def hostfile(tmp_path):
    p = tmp_path / "hosts"
    p.write_text("# two nodes\nworker-0 slots=8\n\nworker-1 slots=8  # second\n")
    return str(p)


def _commands(out):
    return [shlex.split(line) for line in out.splitlines() if line and not line.startswith("#")]


def test_dry_run_torchrun_multinode(cfg_file, hostfile, capsys):
    rc = main(["--config", cfg_file, "loss.type=jsd", "--hostfile", hostfile, "--launcher", "torchrun",
               "--dry-run", "engine.zero_stage=3"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "world size 16" in out and "8 vLLM engine(s) of TP 2" in out and "ZeRO-3" in out
    cmds = _commands(out)
    assert len(cmds) == 2  # one per node
    for node, cmd in enumerate(cmds):
        assert cmd[1:3] == ["-m", "torch.distributed.run"]
        assert {"--nnodes=2", "--nproc-per-node=8", f"--node-rank={node}", "--master-addr=worker-0",
                "--master-port=29500"} <= set(cmd)
        i = cmd.index("opsd.train")
        assert cmd[i - 1] == "-m" and cmd[i + 1:] == ["--config", cfg_file, "loss.type=jsd", "engine.zero_stage=3"]


def test_dry_run_deepspeed_hostfile(cfg_file, hostfile, capsys):
    assert main(["--config", cfg_file, "--hostfile", hostfile, "--launcher", "deepspeed", "--dry-run",
                 "--master-port", "29600"]) == 0
    (cmd,) = _commands(capsys.readouterr().out)
    assert cmd[1:3] == ["-m", "deepspeed.launcher.runner"]
    assert {f"--hostfile={hostfile}", "--num_nodes=2", "--num_gpus=8", "--master_addr=worker-0",
            "--master_port=29600", "--module"} <= set(cmd)
    assert cmd[cmd.index("--module") + 1:] == ["opsd.train", "--config", cfg_file]


def test_dry_run_single_node(cfg_file, capsys):
    assert main(["--config", cfg_file, "--nproc-per-node", "8", "--dry-run"]) == 0
    (cmd,) = _commands(capsys.readouterr().out)
    assert "--standalone" in cmd and "--nproc-per-node=8" in cmd and "--nnodes=1" in cmd


def test_tp_not_dividing_world_size(cfg_file, capsys):
    rc = main(["--config", cfg_file, "--nproc-per-node", "6", "--dry-run", "rollout.tensor_parallel_size=4",
               "train.prompts_per_step=12"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "rollout.tensor_parallel_size=4 does not divide the world size 6" in err


def test_prompts_per_step_not_multiple_of_world(cfg_file, capsys):
    assert main(["--config", cfg_file, "--nproc-per-node", "6", "--dry-run"]) == 2
    assert "train.prompts_per_step=64 is not a multiple of the world size 6" in capsys.readouterr().err


def test_invalid_config_reported(cfg_file, capsys):
    assert main(["--config", cfg_file, "--dry-run", "loss.type=nope"]) == 2
    assert "loss.type='nope'" in capsys.readouterr().err


def test_tp_spanning_nodes_warns(cfg_file, tmp_path, capsys):
    hosts = tmp_path / "h"
    hosts.write_text("a slots=2\nb slots=2\n")
    assert main(["--config", cfg_file, "--hostfile", str(hosts), "--dry-run",
                 "rollout.tensor_parallel_size=4", "train.prompts_per_step=8"]) == 0
    assert "span nodes" in capsys.readouterr().out


@pytest.mark.parametrize("text,match", [
    ("worker-0 slots=8\nworker-1 8\n", r"hosts:2: expected 'hostname slots=N', got 'worker-1 8'"),
    ("worker-0 slots=8\nworker-0 slots=8\n", r"hosts:2: host worker-0 is listed twice"),
    ("w slots=0\n", r"hosts:1: host w has slots=0"),
    ("# nothing\n\n", r"no hosts"),
])
def test_bad_hostfile(tmp_path, text, match):
    p = tmp_path / "hosts"
    p.write_text(text)
    with pytest.raises(LaunchError, match=match):
        parse_hostfile(str(p))


def test_bad_hostfile_cli(cfg_file, tmp_path, capsys):
    p = tmp_path / "hosts"
    p.write_text("worker-0 gpus=8\n")
    assert main(["--config", cfg_file, "--hostfile", str(p), "--dry-run"]) == 2
    assert "expected 'hostname slots=N'" in capsys.readouterr().err
    assert main(["--config", cfg_file, "--hostfile", str(tmp_path / "missing"), "--dry-run"]) == 2
    assert "no such file" in capsys.readouterr().err


def test_uneven_slots(cfg_file, tmp_path, capsys):
    p = tmp_path / "hosts"
    p.write_text("a slots=8\nb slots=4\n")
    assert main(["--config", cfg_file, "--hostfile", str(p), "--dry-run", "train.prompts_per_step=12"]) == 2
    assert "same number of processes on every node" in capsys.readouterr().err
    assert main(["--config", cfg_file, "--hostfile", str(p), "--dry-run", "--launcher", "deepspeed",
                 "train.prompts_per_step=12"]) == 0  # DeepSpeed takes per-host slots
    assert "world size 12" in capsys.readouterr().out
    assert main(["--config", cfg_file, "--hostfile", str(p), "--nproc-per-node", "8", "--dry-run"]) == 2
    assert "exceeds the slots of b" in capsys.readouterr().err


def test_module_entry_point(cfg_file):
    out = subprocess.run([sys.executable, "-m", "opsd.launch", "--config", cfg_file, "--nproc-per-node", "2",
                          "--dry-run"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "torch.distributed.run" in out.stdout and "world size 2" in out.stdout


def test_exec_runs_the_command(cfg_file, monkeypatch):
    seen = {}
    monkeypatch.setattr("os.execvp", lambda f, cmd: seen.setdefault("cmd", cmd))
    assert main(["--config", cfg_file, "--nproc-per-node", "2"]) == 0
    assert seen["cmd"][-3:] == ["opsd.train", "--config", cfg_file]
