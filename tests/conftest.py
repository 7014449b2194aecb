"""Shared fixtures: tiny random Qwen3 teacher/student with a char tokenizer, in a temp folder.

Tests never touch the network.
"""
import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TORCH_EXTENSIONS_DIR", os.path.join(os.path.expanduser("~"), ".cache", "opsd_torch_ext"))

import pytest
import torch


def make_tiny_lm(tok, hidden=32, layers=1, seed=0, vocab_pad=8, init_range=0.2, tie=False):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(seed)
    vocab = (len(tok) + vocab_pad - 1) // vocab_pad * vocab_pad
    cfg = Qwen3Config(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                      num_attention_heads=2, num_key_value_heads=1, head_dim=hidden // 2, max_position_embeddings=256,
                      initializer_range=init_range, tie_word_embeddings=tie, pad_token_id=tok.pad_token_id,
                      eos_token_id=tok.eos_token_id, bos_token_id=None)
    model = Qwen3ForCausalLM(cfg)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    return model


def write_prompts(path, n, seed=0):
    import random

    rng = random.Random(seed)
    with open(path, "w") as f:
        for _ in range(n):
            a, b = rng.randint(1, 9), rng.randint(1, 9)
            f.write(json.dumps({"prompt": f"{a}+{b}=", "answer": str(a + b)}) + "\n")
    return str(path)


def save_pair(root, tok, seeds):
    """A 1-layer student and a wider 2-layer teacher (different logit widths) sharing ``tok``."""
    for name, kw in {"student": dict(hidden=32, layers=1, seed=seeds[0]),
                     "teacher": dict(hidden=48, layers=2, seed=seeds[1], vocab_pad=16)}.items():
        model = make_tiny_lm(tok, **kw)
        model.save_pretrained(root / name)
        tok.save_pretrained(root / name)
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
