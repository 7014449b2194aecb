"""Tiny random Qwen3 models and arithmetic prompt files: the one builder behind the tests' worlds
(tests/conftest.py, the vLLM tests and their multi-rank worker) and bench/rollout_throughput.py.

Plain module (no pytest), so subprocess workers and benches import it too.
"""
import json
import random
from pathlib import Path

import torch


def make_tiny_lm(tok, hidden=32, layers=1, seed=0, vocab_pad=8, init_range=0.2, tie=False, **config):
    """A random Qwen3 for ``tok``: 2 query heads, 1 KV head, head_dim ``hidden // 2``, the vocabulary
    rounded up to a multiple of ``vocab_pad``; ``config`` overrides any Qwen3Config field."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(seed)
    fields = dict(vocab_size=(len(tok) + vocab_pad - 1) // vocab_pad * vocab_pad, hidden_size=hidden,
                  intermediate_size=2 * hidden, num_hidden_layers=layers, num_attention_heads=2,
                  num_key_value_heads=1, head_dim=hidden // 2, max_position_embeddings=256,
                  initializer_range=init_range, tie_word_embeddings=tie, pad_token_id=tok.pad_token_id,
                  eos_token_id=tok.eos_token_id, bos_token_id=None)
    model = Qwen3ForCausalLM(Qwen3Config(**{**fields, **config}))
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    return model


def save_tiny_lm(root, tok, **kw) -> str:
    """:func:`make_tiny_lm` saved with its tokenizer in ``root``; returns the folder."""
    make_tiny_lm(tok, **kw).save_pretrained(root)
    tok.save_pretrained(root)
    return str(root)


def write_prompts(path, n, seed=0) -> str:
    """``n`` rows ``{"prompt": "a+b=", "answer": "a+b"}`` with digits 1-9 drawn from ``seed``."""
    rng = random.Random(seed)
    with open(path, "w") as f:
        for _ in range(n):
            a, b = rng.randint(1, 9), rng.randint(1, 9)
            f.write(json.dumps({"prompt": f"{a}+{b}=", "answer": str(a + b)}) + "\n")
    return str(Path(path))


def toy_recipe(name: str):
    """``recipes/toy/{name}.py`` as a module (the entry points that import opsd and tip_patches)."""
    import importlib
    import sys

    folder = str(Path(__file__).resolve().parents[1] / "recipes" / "toy")
    if folder not in sys.path:
        sys.path.insert(0, folder)
    return importlib.import_module(name)


def saved_tokenizer(save, folder):
    """A toy tokenizer written by ``save(folder)`` and read back as transformers loads it."""
    from transformers import AutoTokenizer

    save(folder)
    return AutoTokenizer.from_pretrained(str(folder))
