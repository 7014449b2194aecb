"""The CI scripts themselves: CI must not go green when the vLLM tests could not run."""
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _vllm_sh(tmp_path, ci: str):
    env = dict(os.environ, CI=ci, PYTHON="false", VLLM_VENV=str(tmp_path / "venv"))
    return subprocess.run(["bash", str(ROOT / ".ci" / "vllm.sh")], env=env, capture_output=True,
                          text=True, timeout=60)


def test_failed_vllm_install_fails_ci(tmp_path):
    # PYTHON=false makes the very first install step (creating the venv) fail at once.
    r = _vllm_sh(tmp_path, ci="true")
    assert "SKIPPED vLLM tests: install failed" in r.stdout
    assert r.returncode != 0, r.stdout


def test_failed_vllm_install_skips_visibly_outside_ci(tmp_path):
    r = _vllm_sh(tmp_path, ci="")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SKIPPED vLLM tests: install failed" in r.stdout


@pytest.mark.parametrize("script", ["run", "vllm.sh"])
def test_ci_scripts_parse(script):
    subprocess.run(["bash", "-n", str(ROOT / ".ci" / script)], check=True, timeout=30)
