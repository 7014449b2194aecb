"""The tiny world of the multi-rank vLLM tests, and what their worker and tests share.

Student and teacher are tiny Qwen3 models that vLLM's CPU kernels accept (head_dim 32) and that
tensor parallelism 2 can split (2 query heads; the 1 KV head is replicated on both ranks).
``initializer_range`` 0.5 makes greedy outputs vary instead of stopping at once.
"""
import os
from pathlib import Path

import torch

from _tiny_world import save_tiny_lm, write_prompts

TIE_GAP = 1e-4  # a greedy divergence is accepted only where HF's top-2 log-probs are this close
LOGPROB_ATOL = 1e-3  # float32 prompt log-probs, vLLM CPU kernels vs HF eager


def vllm_env() -> dict:
    """The environment the engine needs on this machine (set before vLLM is imported): a 1 GiB
    KV cache per rank (the default claims ~21 GiB per worker) and the engine in-process (the
    weights are handed over as a Python iterator)."""
    return {"VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1"),
            "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
            "WANDB_MODE": "offline", "TOKENIZERS_PARALLELISM": "false"}


def build_world(root: Path) -> dict:
    """``student`` (2 layers), ``teacher`` (3 layers) and a prompt file ``train`` under ``root``."""
    from _tiny_tokenizer import build_tiny_tokenizer

    tok = build_tiny_tokenizer()
    # seed 5: greedy responses of several lengths, some ending in EOS (seed 0 says EOS at once)
    return {"student": save_lm(root / "student", tok, seed=5, layers=2),
            "teacher": save_lm(root / "teacher", tok, seed=6, layers=3),
            "train": write_prompts(root / "train.jsonl", 32, seed=0)}


def save_lm(root: Path, tok, seed: int = 0, layers: int = 2, tie: bool = False) -> str:
    """The vLLM tests' tiny float32 Qwen3 (see the module docstring) with ``tok``, in ``root``."""
    return save_tiny_lm(root, tok, hidden=64, layers=layers, seed=seed, init_range=0.5, tie=tie,
                        vocab_size=128, dtype="float32")


def clean_shm(before: set) -> list:
    """Remove the ``/dev/shm/*cpushm_*`` segments that appeared since ``before`` (vLLM's CPU
    tensor-parallel communicator; a killed run leaves them, and the next start fails with
    "create shm in SHMManager failed. errno: 17")."""
    gone = []
    for name in sorted(shm_segments() - before):
        try:
            os.unlink(os.path.join("/dev/shm", name))
            gone.append(name)
        except FileNotFoundError:
            pass
    return gone


def shm_segments() -> set:
    try:
        return {n for n in os.listdir("/dev/shm") if "cpushm_" in n}
    except FileNotFoundError:
        return set()


@torch.no_grad()
def tie_gap(model, prefix) -> float:
    """HF's top-2 log-prob gap after ``prefix``: small means greedy may go either way."""
    logits = model(torch.tensor([prefix])).logits[0, -1].float()
    top2 = torch.log_softmax(logits, -1).topk(2).values
    return (top2[0] - top2[1]).item()


@torch.no_grad()
def hf_logprobs(model, seqs) -> list:
    """Per sequence, the log-prob of each token after the first under ``model``."""
    out = []
    for s in seqs:
        lp = torch.log_softmax(model(torch.tensor([s])).logits[0].float(), -1)  # (L, V)
        out.append([lp[t - 1, s[t]].item() for t in range(1, len(s))])
    return out


def max_diff(a, b) -> float:
    return max(abs(x - y) for ra, rb in zip(a, b) for x, y in zip(ra, rb))


def greedy_mismatches(model, prompts, a, b) -> list:
    """``[(i, position, gap)]`` where response lists ``a`` and ``b`` differ; ``gap`` is HF's
    top-2 gap at the first differing position (a divergence is benign only at a tie)."""
    out = []
    for i, (x, y) in enumerate(zip(a, b)):
        if x == y:
            continue
        j = next(k for k in range(min(len(x), len(y)) + 1) if k == min(len(x), len(y)) or x[k] != y[k])
        out.append((i, j, tie_gap(model, list(prompts[i]) + list(y[:j]))))
    return out
