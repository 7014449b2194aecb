"""Shared fixtures: tiny random Qwen3 teacher/student with a char tokenizer, in a temp folder.

Tests never touch the network.
"""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TORCH_EXTENSIONS_DIR", os.path.join(os.path.expanduser("~"), ".cache", "opsd_torch_ext"))

import pytest

from _tiny_world import save_tiny_lm, write_prompts  # noqa: E402


def save_pair(root, tok, seeds):
    """A 1-layer student and a wider 2-layer teacher (different logit widths) sharing ``tok``."""
    save_tiny_lm(root / "student", tok, hidden=32, layers=1, seed=seeds[0])
    save_tiny_lm(root / "teacher", tok, hidden=48, layers=2, seed=seeds[1], vocab_pad=16)
    return root


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory):
    """Folders ``student``, ``teacher`` (same tokenizer, different widths) and prompt files."""
    from _tiny_tokenizer import build_tiny_tokenizer

    root = save_pair(tmp_path_factory.mktemp("world"), build_tiny_tokenizer(), seeds=(1, 2))
    return {"root": root, "student": str(root / "student"), "teacher": str(root / "teacher"),
            "train": write_prompts(root / "train.jsonl", 64, seed=0),
            "heldout": write_prompts(root / "heldout.jsonl", 16, seed=1)}


@pytest.fixture(scope="session")
def agent_world(tmp_path_factory):
    """Tiny student/teacher sharing the tool-calling BPE tokenizer of ``_agent_fakes``, and
    episode rows for its key-value environment."""
    from _agent_fakes import build_tool_tokenizer, write_rows

    root = save_pair(tmp_path_factory.mktemp("agent_world"), build_tool_tokenizer(), seeds=(3, 4))
    return {"root": root, "student": str(root / "student"), "teacher": str(root / "teacher"),
            "train": write_rows(root / "train.jsonl", 16), "heldout": write_rows(root / "heldout.jsonl", 8)}
