"""Scores one batch with the full teacher and with the ZeRO-3 sharded teacher on the same rank and
writes what differs, plus the parameter bytes this rank holds.

Usage: torchrun --nproc_per_node=2 tests/_sharded_teacher_worker.py TEACHER OUT_DIR
Used by tests/test_sharded_teacher.py; each rank scores its own batch (as in training).
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
import conftest  # noqa: F401  (offline env)
import _teardown
import torch

from opsd import batching
from opsd.batching import build_sequences
from opsd.engine import init_distributed, rank, world_size
from opsd.losses import HiddenLogits, stats_from_sources
from opsd.models import load_causal_lm
from opsd.teacher import Teacher, sharded_loading, zero3_config

FIELDS = ("entropy", "reverse_kl", "forward_kl", "teacher_entropy")


def batch(vocab: int, seed: int):
    """A right-padded batch of 4 sequences of different lengths, as the trainer builds it."""
    g = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(3, vocab, (int(n),), generator=g).tolist() for n in (3, 5, 2, 4)]
    responses = [torch.randint(3, vocab, (int(n),), generator=g).tolist() for n in (6, 1, 9, 4)]
    seq = build_sequences(prompts, responses, pad_id=0)
    seq["loss_mask"] = seq["loss_mask"].long()
    return seq


def stats(teacher, mb, student, vocab):
    src = teacher.score(mb["input_ids"], mb["attention_mask"], mb["loss_mask"], vocab, mb["position_ids"])
    return src.hidden, stats_from_sources(student, src, chunk_size=5)


def main():
    path, out = sys.argv[1:3]
    device = torch.device("cpu")
    init_distributed(device)
    full = Teacher(load_causal_lm(path), device)
    ds = zero3_config(device)
    with sharded_loading(ds):
        sharded_model = load_causal_lm(path)
    sharded = Teacher(sharded_model, device, sharding="zero3", ds_config=ds)
    vocab = full.width
    seq = batch(vocab - 4, seed=100 + rank())
    n = int(seq["loss_mask"].sum())
    g = torch.Generator().manual_seed(7)
    student = HiddenLogits(torch.randn(n, 16, generator=g), torch.randn(vocab, 16, generator=g), vocab)
    result = {"rank": rank(), "world": world_size(), "tokens": n}
    runs = {}
    for layout in ("padded", "packed"):
        mb = batching.collate(seq, list(range(4)), pad_id=0, packed=layout == "packed")
        runs[layout] = stats(full, mb, student, vocab), stats(sharded, mb, student, vocab)
    pairs = {"padded": runs["padded"], "packed": runs["packed"],  # full vs sharded teacher
             "packed_vs_padded": (runs["padded"][1], runs["packed"][1])}  # sharded teacher, both layouts
    for name, ((h_a, s_a), (h_b, s_b)) in pairs.items():
        result[name] = {"hidden": (h_a - h_b).abs().max().item(),
                        **{f: (getattr(s_a, f) - getattr(s_b, f)).abs().max().item() for f in FIELDS}}
    local, total = sharded.param_bytes()
    result.update(local_bytes=local, full_bytes=total, unsharded_local_bytes=full.param_bytes()[0],
                  head_equal=bool(torch.equal(full.head_weight, sharded.head_weight)),
                  # after a forward nothing stays gathered: every parameter's own data is empty
                  gathered_after=sum(p.data.numel() for p in sharded.model.parameters()))
    with open(os.path.join(out, f"rank{rank()}.json"), "w") as f:
        json.dump(result, f)
    return out


if __name__ == "__main__":
    _teardown.end_worker(main())  # after main: the teachers are out of scope, their groups can go
