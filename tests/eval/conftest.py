"""Fixtures of the eval tests: offline environment, the repository on sys.path, a tiny data root.

No network, no GPU: benchmark files come from ``../shared/data`` (tests that need it skip when it
is absent) or are written small into a temporary folder.
"""
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

HERE = Path(__file__).resolve().parent
for path in (HERE.parents[1], HERE):  # the checkout (uninstalled) and this folder's helpers
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import pytest  # noqa: E402

from _eval_fakes import SHARED_DATA, write_tiny_data  # noqa: E402


@pytest.fixture
def shared_data():
    if not (SHARED_DATA / "MATH-500" / "test.jsonl").is_file():
        pytest.skip(f"{SHARED_DATA} is not available")
    return SHARED_DATA


@pytest.fixture
def tiny_data(tmp_path, monkeypatch):
    root = write_tiny_data(tmp_path / "data")
    monkeypatch.setenv("OPSD_DATA_DIR", str(root))
    return root
