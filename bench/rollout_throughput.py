"""Rollout throughput, HF ``generate`` vs vLLM (CPU build), and weight-sync time per step.

    .venv-vllm/bin/python bench/rollout_throughput.py            # after `bash .ci/vllm.sh`
    .venv-vllm/bin/python bench/rollout_throughput.py --all     # + generation on a ~100M model

Each measurement runs in a fresh process (``--only NAME``), with the same model, prompts and
sampling (temperature 1, top-p 1, no top-k; seed 0, which vLLM on CPU applies per engine, not per
request) and OMP_NUM_THREADS=2 for both. Throughput = generated tokens (EOS included) / wall time
of one ``generate`` call over all prompts, after one warm-up call. Models: the embedded toy student
(``artifacts/toy/student``) when it is built, else a random Qwen3 of the same shape (said so in the
output); with ``--all`` also a random ~100M-parameter Qwen3 (12 x 768, 16 prompts), where compute
rather than per-step overhead dominates. Weight sync = one
``VLLMBackend.sync_weights(iter_hf_weights(model))`` (CPU: ``collective_rpc("reload_weights")`` +
prefix-cache reset), median of 3 after a warm-up, for both models.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

TOY = REPO / "artifacts" / "toy"
# The toy student's architecture (opsd/toy/build.py WorldConfig.student), for the fallback.
TOY_SHAPE = dict(num_hidden_layers=2, hidden_size=64, num_attention_heads=2, num_key_value_heads=1,
                 head_dim=32, intermediate_size=192, tie_word_embeddings=True)
BIG_SHAPE = dict(num_hidden_layers=12, hidden_size=768, num_attention_heads=12, num_key_value_heads=4,
                 head_dim=64, intermediate_size=2048, tie_word_embeddings=True, vocab_size=32000)


def _random_qwen3(out: Path, tok, shape: dict, seed: int = 0) -> str:
    from _tiny_world import save_tiny_lm

    return save_tiny_lm(out, tok, seed=seed, init_range=0.5, **{"vocab_size": 128, **shape},
                        max_position_embeddings=512)


def setup_model(workdir: Path):
    """(model_path, tokenizer, prompt token ids, description)."""
    from transformers import AutoTokenizer

    if (TOY / "student" / "config.json").is_file():
        path = str(TOY / "student")
        tok_dir = TOY / "tokenizer" if (TOY / "tokenizer").is_dir() else TOY / "student"
        tok = AutoTokenizer.from_pretrained(tok_dir)
        rows = [json.loads(l) for l in (TOY / "heldout.jsonl").read_text().splitlines() if l.strip()]
        texts = [tok.apply_chat_template([{"role": "user", "content": r["prompt"]}], tokenize=False,
                                         add_generation_prompt=True) for r in rows]
        return path, tok, texts, "toy student (artifacts/toy/student)"
    from _tiny_tokenizer import build_tiny_tokenizer

    tok = build_tiny_tokenizer()
    path = _random_qwen3(workdir / "toy_like", tok, TOY_SHAPE)
    texts = [tok.apply_chat_template([{"role": "user", "content": f"Compute {a} * {b} + {a + b}."}], tokenize=False,
                                     add_generation_prompt=True) for a in range(1, 17) for b in range(1, 17)]
    return path, tok, texts, "random Qwen3 of the toy student's shape (artifacts/toy not built yet)"


def _prompts(tok, texts, k):
    texts = (texts * (k // max(1, len(texts)) + 1))[:k]
    return [tok(t, add_special_tokens=False)["input_ids"] for t in texts]


def setup_big(workdir: Path):
    from _tiny_tokenizer import build_tiny_tokenizer

    tok = build_tiny_tokenizer()
    path = _random_qwen3(workdir / "big", tok, BIG_SHAPE)
    texts = [tok.apply_chat_template([{"role": "user", "content": f"Compute {a} * {b} + {a + b}."}], tokenize=False,
                                     add_generation_prompt=True) for a in range(1, 17) for b in range(1, 17)]
    return path, tok, texts, "random Qwen3 12x768 (tied, ~100M params)"


def run_generate(which: str, args, workdir: Path, big: bool = False) -> dict:
    import torch

    from opsd.rollout.base import SamplingConfig

    path, tok, texts, desc = (setup_big if big else setup_model)(workdir)
    prompts = _prompts(tok, texts, args.big_prompts if big else args.prompts)
    sampling = SamplingConfig(temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=args.max_new_tokens,
                              n=args.n, seed=0)
    if which == "hf":
        from transformers import AutoModelForCausalLM

        from opsd.rollout.hf import HFGenerateBackend

        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        backend = HFGenerateBackend(model, tok, batch_size=args.hf_batch_size)
        torch.manual_seed(0)
    else:
        from opsd.config import RolloutConfig
        from opsd.rollout.vllm_backend import VLLMBackend

        backend = VLLMBackend(path, tok, RolloutConfig(backend="vllm", enforce_eager=True), dtype="float32",
                              max_model_len=512)
    backend.generate(prompts[: max(1, len(prompts) // 8)], sampling)  # warm-up
    t0 = time.perf_counter()
    out = backend.generate(prompts, sampling)
    dt = time.perf_counter() - t0
    return {"bench": f"generate_{which}", "model": desc, "prompts": len(prompts), "n": args.n,
            "max_new_tokens": args.max_new_tokens, "samples": len(out), "tokens": out.num_response_tokens,
            "finished": sum(out.finished), "seconds": round(dt, 3),
            "tokens_per_s": round(out.num_response_tokens / dt, 1), "torch_threads": torch.get_num_threads()}


def run_sync(which: str, args, workdir: Path) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    from opsd.config import RolloutConfig
    from opsd.rollout.vllm_backend import VLLMBackend
    from opsd.weight_sync import iter_hf_weights

    if which == "toy":
        path, tok, _, desc = setup_model(workdir)
    else:
        path, tok, _, desc = setup_big(workdir)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    params = sum(p.numel() for p in model.parameters())
    backend = VLLMBackend(path, tok, RolloutConfig(backend="vllm", enforce_eager=True), dtype="float32",
                          max_model_len=512)
    times, gather = [], []
    for i in range(args.sync_repeats + 1):
        with torch.no_grad():  # a stand-in optimizer step: every weight changes
            for p in model.parameters():
                p.mul_(1.0001)
        t0 = time.perf_counter()
        n = sum(1 for _ in iter_hf_weights(model))
        t1 = time.perf_counter()
        backend.sync_weights(iter_hf_weights(model))
        t2 = time.perf_counter()
        if i:  # the first sync is the warm-up
            gather.append(t1 - t0)
            times.append(t2 - t1)
    return {"bench": f"sync_{which}", "model": desc, "params": params, "tensors": n,
            "mbytes": round(backend.last_sync["bytes"] / 2 ** 20, 1),
            "sync_seconds_median": round(sorted(times)[len(times) // 2], 4),
            "sync_seconds_all": [round(t, 4) for t in times],
            "iterate_only_seconds": round(sorted(gather)[len(gather) // 2], 5)}


BENCHES = {"hf": lambda a, w: run_generate("hf", a, w), "vllm": lambda a, w: run_generate("vllm", a, w),
           "hf-big": lambda a, w: run_generate("hf", a, w, big=True),
           "vllm-big": lambda a, w: run_generate("vllm", a, w, big=True),
           "sync-toy": lambda a, w: run_sync("toy", a, w), "sync-big": lambda a, w: run_sync("big", a, w)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", choices=list(BENCHES), help="run one measurement in this process")
    p.add_argument("--prompts", type=int, default=64)
    p.add_argument("--big-prompts", type=int, default=16, help="prompts for the ~100M model")
    p.add_argument("--n", type=int, default=4, help="samples per prompt")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--hf-batch-size", type=int, default=64, help="HF backend: prompts per generate call")
    p.add_argument("--sync-repeats", type=int, default=3)
    p.add_argument("--skip", nargs="*", default=None, choices=list(BENCHES),
                   help="measurements to leave out (default: hf-big vllm-big, ~7 min on 2 cores)")
    p.add_argument("--all", action="store_true", help="run every measurement, the ~100M generation too")
    args = p.parse_args(argv)
    if args.skip is None:
        args.skip = [] if args.all else ["hf-big", "vllm-big"]
    if args.only:
        load = os.getloadavg()[0]  # > ~0.5 before a run: something else is using the 2 cores
        with tempfile.TemporaryDirectory() as d:
            res = BENCHES[args.only](args, Path(d))
        print("RESULT " + json.dumps({**res, "loadavg_1m_before": round(load, 2)}), flush=True)
        return 0
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    passthrough = [f"--prompts={args.prompts}", f"--big-prompts={args.big_prompts}", f"--n={args.n}", f"--max-new-tokens={args.max_new_tokens}",
                   f"--hf-batch-size={args.hf_batch_size}", f"--sync-repeats={args.sync_repeats}"]
    for name in BENCHES:
        if name in args.skip:
            continue
        proc = subprocess.run([sys.executable, __file__, "--only", name, *passthrough], env=env,
                              capture_output=True, text=True)
        lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
        if proc.returncode or not lines:
            print(f"{name}: FAILED (exit {proc.returncode})\n{proc.stderr[-3000:]}")
            continue
        print(json.dumps(json.loads(lines[-1][len("RESULT "):])), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
