"""Per-rank device memory of the ZeRO-3 sharded teacher (engine.teacher_sharding=zero3), computed
from the model's architecture (no weights, no GPU):

    python bench/teacher_sharding_memory.py                      # Llama-3.3-70B, 8 ranks, bf16
    python bench/teacher_sharding_memory.py --world 4 --tokens 8192

The parameter count is exact: the model is built from its config on the ``meta`` device (no
memory) and its parameters are counted. The rest is arithmetic:

- shard: every parameter partitioned over the ranks (persistence thresholds 0, opsd/teacher.py):
  ``params x bytes / world``;
- head replica: the output embedding gathered once at setup and kept whole on every rank (the
  losses read it while the student trains): ``V x d x bytes``;
- gather working set: the largest set of full parameters alive at once in the forward: one module
  is gathered at a time plus DeepSpeed's prefetch bucket (``stage3_prefetch_bucket_size``, default
  5e7 elements); the largest modules are the input embedding (``V x d``) and one decoder layer;
- activations of one micro-batch forward (no grad): the MLP's three ``T x d_ff`` tensors (gate,
  up, their product) dominate, ``T`` = tokens of the micro-batch (``engine.micro_batch_tokens``);
- cached last hidden states of a step: ``response tokens per rank x d x bytes`` (all responses at
  the cap: the worst case).

The unsharded teacher needs ``params x bytes`` instead of the shard and no gather working set.
"""
from __future__ import annotations

import argparse
import sys

# Llama-3.3-70B-Instruct config.json (architecture fields only)
LLAMA_3_3_70B = dict(vocab_size=128256, hidden_size=8192, intermediate_size=28672, num_hidden_layers=80,
                     num_attention_heads=64, num_key_value_heads=8, tie_word_embeddings=False,
                     max_position_embeddings=131072, rms_norm_eps=1e-5)
GiB = 2 ** 30
PREFETCH_BUCKET = 5e7  # DeepSpeed's default stage3_prefetch_bucket_size, in elements


def count_params(arch: dict) -> dict:
    """Exact parameter counts from a meta-device build: total, embedding, head, largest layer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    with torch.device("meta"):
        model = LlamaForCausalLM(LlamaConfig(**arch))
    layer = max(sum(p.numel() for p in blk.parameters()) for blk in model.model.layers)
    return dict(total=sum(p.numel() for p in model.parameters()),
                embed=model.model.embed_tokens.weight.numel(), head=model.lm_head.weight.numel(), layer=layer)


def estimate(n: dict, arch: dict, world: int, tokens: int, cached_tokens: int, nbytes: int = 2) -> dict:
    d, ff = arch["hidden_size"], arch["intermediate_size"]
    shard = n["total"] * nbytes / world
    head = n["head"] * nbytes
    gather = (max(n["embed"], n["layer"]) + PREFETCH_BUCKET) * nbytes
    act = (3 * tokens * ff + 2 * tokens * d) * nbytes
    cached = cached_tokens * d * nbytes
    full = n["total"] * nbytes
    return dict(shard=shard, head=head, gather=gather, activations=act, cached_hidden=cached,
                sharded_total=shard + head + gather + act + cached, unsharded_total=full + head + act + cached,
                full_params=full)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--world", type=int, default=8, help="data-parallel ranks (default %(default)s)")
    p.add_argument("--tokens", type=int, default=16384, help="tokens of one teacher micro-batch (default %(default)s)")
    p.add_argument("--cached-tokens", type=int, default=16 * 8192,
                   help="response tokens per rank per step whose hidden states are cached "
                        "(default 16 sequences x 8192: the llama-70b-8b recipe at the cap)")
    args = p.parse_args(argv)
    for name in ("world", "tokens", "cached_tokens"):
        if getattr(args, name) <= 0:
            sys.exit(f"--{name.replace('_', '-')} must be > 0")
    n = count_params(LLAMA_3_3_70B)
    e = estimate(n, LLAMA_3_3_70B, args.world, args.tokens, args.cached_tokens)
    print(f"Llama-3.3-70B: {n['total'] / 1e9:.2f} B parameters = {e['full_params'] / GiB:.1f} GiB in bf16; "
          f"{args.world} ranks; teacher micro-batch {args.tokens} tokens; {args.cached_tokens} cached tokens/rank")
    print("| per rank | GiB |\n|---|---:|")
    for k in ("shard", "head", "gather", "activations", "cached_hidden", "sharded_total", "unsharded_total"):
        print(f"| {k} | {e[k] / GiB:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
