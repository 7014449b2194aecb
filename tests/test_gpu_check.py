"""``make gpu-check`` (bench/gpu_check.py) cannot rot: its dry run validates every step on a CPU
machine, as on a GPU machine where only torch, transformers and DeepSpeed are installed (``datasets``,
``vllm``, ``wandb`` hidden); without a GPU it says so in one line; a missing DeepSpeed is named; and
(slow) the whole script runs at toy shapes on the CPU and writes its report."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "bench" / "gpu_check.py"
# Not on the GPU machine: the check must not need them.
ABSENT = "datasets,vllm,wandb,accelerate,pyarrow,pandas"


def _run(args, tmp_path, hide=ABSENT, timeout=300, cmd=None):
    """The script (or ``cmd``) in a fresh interpreter whose ``hide`` modules are not importable
    (``sys.modules[name] = None`` from a sitecustomize: import fails, find_spec says absent)."""
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(
        "import os, sys\n"
        "for _n in os.environ.get('GPU_CHECK_HIDE', '').split(','):\n"
        "    if _n:\n"
        "        sys.modules[_n] = None\n")
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR",
                                                             "MASTER_PORT", "DRY_RUN", "WHEELS")}
    env.update(PYTHONPATH=os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]), GPU_CHECK_HIDE=hide,
               OMP_NUM_THREADS="2")
    return subprocess.run(cmd or [sys.executable, str(SCRIPT), *args], cwd=str(REPO), env=env, capture_output=True,
                          text=True, timeout=timeout)


def _gpu_reports():
    return sorted(p.name for p in (REPO / "docs" / "gpu").glob("*.md") if p.name != "README.md")


def test_dry_run_validates_every_step_without_the_absent_packages(tmp_path):
    before = _gpu_reports()
    r = _run(["--dry-run"], tmp_path)
    print(r.stdout)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    ok = [line for line in r.stdout.splitlines() if line.startswith("[ok] ")]
    names = [line[5:].split(":")[0] for line in ok]
    assert names == ["environment", "(a) models", "(a) opsd config", "(a) trainer hooks", "(a) simulator",
                     "(b) loss rows", "(c) packing", "report"]
    assert "[problem]" not in r.stdout and "gpu-check dry run OK: 8 steps validated" in r.stdout
    text = r.stdout
    assert "student 1.721 B params" in text and "teacher 4.022 B" in text and "head 151,936 rows" in text
    assert "tokenizer 151,669 tokens" in text and "8,192 response tokens" in text and "ZeRO-2" in text
    assert "--vocab 151936 --tokens 8192 --hidden 2048 --teacher-hidden 2560" in text
    if not importlib_has("liger_kernel"):
        assert "liger not installed" in text
    assert _gpu_reports() == before, "a dry run must not write a report"


def importlib_has(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def test_dry_run_names_a_missing_deepspeed(monkeypatch, tmp_path):
    """The dry run's environment step, in this process with DeepSpeed made absent."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    gpu_check = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "gpu_check", gpu_check)  # dataclasses look their module up
    spec.loader.exec_module(gpu_check)  # puts bench/ on sys.path, as when it runs
    monkeypatch.setitem(sys.modules, "deepspeed", None)  # import fails, find_spec says absent
    plan = gpu_check.full_plan(tmp_path / "r.md")
    with pytest.raises(RuntimeError, match=r"DeepSpeed is not importable and no deepspeed wheel was given "
                                           r"\(WHEELS=dir\): \(a\) and \(c\) need it"):
        gpu_check.check_environment(plan, None)
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "deepspeed-0.19.8-py3-none-any.whl").write_bytes(b"")
    assert "deepspeed (from deepspeed-0.19.8-py3-none-any.whl)" in gpu_check.check_environment(plan, str(wheels))


@pytest.mark.skipif(torch.cuda.is_available(), reason="there is a GPU here")
def test_without_a_gpu_make_gpu_check_says_so_in_one_line(tmp_path):
    make = _run([], tmp_path, cmd=["make", "-s", "--no-print-directory", "gpu-check", f"PYTHON={sys.executable}"])
    assert make.returncode == 0, make.stderr[-2000:]
    assert make.stdout.count("\n") == 1 and make.stdout.startswith("gpu-check: no CUDA device visible to "), make.stdout


def test_make_target_passes_dry_run_and_wheels():
    r = subprocess.run(["make", "-n", "--no-print-directory", "gpu-check", "DRY_RUN=1", "WHEELS=/w",
                        f"PYTHON={sys.executable}"], cwd=str(REPO), capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == f"{sys.executable} bench/gpu_check.py --dry-run --wheels /w"


@pytest.mark.slow
def test_the_whole_check_at_toy_shapes_on_the_cpu(tmp_path):
    """Every section runs for real (DeepSpeed on gloo, the simulator in its child process, the
    loss rows in theirs) and the report has every table; toy shapes, so no figure is judged."""
    out, raw = tmp_path / "report.md", tmp_path / "report.json"
    r = _run(["--tiny", "--device", "cpu", "--out", str(out), "--json", str(raw)], tmp_path, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-4000:]
    res = json.loads(raw.read_text())
    assert res["errors"] == {}
    assert {"teacher scoring", "student forward", "stats + loss pass", "backward", "optimizer step"} <= set(
        res["step"]["phases"]) <= set(res["prediction"]["phases"]) | {"selection"}
    modes = {row["mode"]: row for row in res["loss"]}
    assert list(modes) == ["naive", "fused", "autograd", "liger"]
    for m in ("fused", "autograd"):
        assert modes[m]["status"] == "ok" and modes[m]["loss_diff"] < 1e-3
    assert modes["liger"]["status"] == ("ok" if importlib_has("liger_kernel") else "not installed")
    pack = res["packing"]
    assert pack["modes"]["padded"]["padding"] > 0 == pack["modes"]["packed"]["padding"]
    assert pack["modes"]["packed"]["attention"] == "opsd_varlen_sdpa" and pack["loss_rel_diff"] < 1e-2
    text = out.read_text()
    for heading in ("## (a) One OPD step", "## (b) The loss step", "## (c) Packed vs padded"):
        assert heading in text
    assert "| liger | " in text and "## Errors" not in text
