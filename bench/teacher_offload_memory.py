"""Peak memory of one OPD step with the teacher resident vs offloaded (two-phase placement).

    python bench/teacher_offload_memory.py                                    # CPU: tiny shape, checks the path
    python bench/teacher_offload_memory.py --device cuda --pair qwen3-8b-4b   # GPU: the issue's shape

Random-weight Qwen3 models built from their published configurations (no download), bfloat16 on
CUDA. One step is what the trainer does (``opsd/trainer.py``): the teacher scores every
micro-batch (:meth:`opsd.teacher.Teacher.score`, cached last hidden states), then with
``engine.teacher_placement=offload`` its body goes to CPU (:meth:`Teacher.offload`) while the
student runs forward + backward per micro-batch through :class:`opsd.distill.DistillModule`
(gradient checkpointing on) and takes an optimizer step; the teacher comes back for the next step.
The optimizer keeps float32 master weights and float32 AdamW moments beside the bfloat16 weights
(what DeepSpeed's bf16 mode holds at world size 1; DeepSpeed itself is not in the GPU image).

Each placement runs in a fresh process for ``--steps`` steps (the first allocates the optimizer
states); the last step is reported: device peak during the scoring phase, during the training
phase, and over the whole step (CUDA ``max_memory_allocated``, absolute, i.e. models included).
On CPU ``Teacher.offload`` is a no-op (there is nowhere to offload to), so the CPU run only checks
that the script and the placement path work; its two rows are expected to match.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

GB = 2 ** 30
# Qwen3 configurations (hub config.json of each model); vocab 151,936 for all.
QWEN3 = {
    "qwen3-tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, head_dim=16, tie_word_embeddings=True),
    "qwen3-1.7b": dict(hidden_size=2048, intermediate_size=6144, num_hidden_layers=28, num_attention_heads=16,
                       num_key_value_heads=8, head_dim=128, tie_word_embeddings=True),
    "qwen3-4b": dict(hidden_size=2560, intermediate_size=9728, num_hidden_layers=36, num_attention_heads=32,
                     num_key_value_heads=8, head_dim=128, tie_word_embeddings=True),
    "qwen3-8b": dict(hidden_size=4096, intermediate_size=12288, num_hidden_layers=36, num_attention_heads=32,
                     num_key_value_heads=8, head_dim=128, tie_word_embeddings=False),
    "qwen3-14b": dict(hidden_size=5120, intermediate_size=17408, num_hidden_layers=40, num_attention_heads=40,
                      num_key_value_heads=8, head_dim=128, tie_word_embeddings=False),
}
PAIRS = {"tiny": ("qwen3-tiny", "qwen3-tiny"), "qwen3-8b-4b": ("qwen3-8b", "qwen3-4b"),
         "qwen3-14b-1.7b": ("qwen3-14b", "qwen3-1.7b")}


def build(name: str, vocab: int, device, dtype):
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    cfg = Qwen3Config(vocab_size=vocab, max_position_embeddings=40960, rope_theta=1e6, **QWEN3[name])
    with torch.device(device):
        model = Qwen3ForCausalLM(cfg).to(dtype)
    return model


class MasterAdamW:
    """bf16 weights, fp32 master copies and fp32 AdamW moments (the states are made at first step)."""

    def __init__(self, model, lr=1e-6):
        import torch

        self.params = [p for p in model.parameters() if p.requires_grad]
        self.master = [p.detach().float() for p in self.params]
        self.opt = torch.optim.AdamW(self.master, lr=lr, foreach=False)

    def step(self):
        for p, m in zip(self.params, self.master):  # one fp32 gradient at a time
            if p.grad is not None:
                m.grad = p.grad.float()
                p.grad = None
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        for p, m in zip(self.params, self.master):
            p.data.copy_(m)


def child(args) -> None:
    import torch

    from opsd.distill import DistillModule
    from opsd.metrics import peak_memory_gb, reset_peak_memory
    from opsd.teacher import Teacher

    device = C.child_setup(args)
    dtype = getattr(torch, args.dtype)
    t_name, s_name = PAIRS[args.pair]
    student = build(s_name, args.vocab, device, dtype)
    student.gradient_checkpointing_enable()
    student.config.use_cache = False
    student.train()
    teacher = Teacher(build(t_name, args.vocab, device, dtype), device, args.placement, None, args.chunk_size)
    opt = MasterAdamW(student) if args.optimizer == "master" else None
    module = DistillModule(student, args.vocab, "reverse_kl", chunk_size=args.chunk_size,
                           impl="recompute" if args.recompute else "fused")
    g = torch.Generator().manual_seed(args.seed)
    length = args.prompt_len + args.response_len
    batches = []
    for _ in range(args.micro_batches):
        ids = torch.randint(0, args.vocab, (1, length), generator=g)
        mask = torch.zeros(1, length, dtype=torch.long)
        mask[0, args.prompt_len - 1:length - 1] = 1  # logits positions that predict response tokens
        batches.append((ids.to(device), torch.ones_like(ids).to(device), mask.to(device)))
    n_tokens = args.micro_batches * args.response_len

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    rows = []
    for _ in range(args.steps):
        sync()
        t0 = time.perf_counter()
        reset_peak_memory(device)
        teacher.load()
        sources = [teacher.score(ids, att, m, args.vocab) for ids, att, m in batches]
        sync()
        score_peak = peak_memory_gb(device)
        teacher.offload()
        sync()
        reset_peak_memory(device)
        for (ids, att, m), src in zip(batches, sources):
            loss_sum, _stats, _sel, _kept = module(ids, att, m, src)
            (loss_sum / n_tokens).backward()
        if opt is not None:
            opt.step()
        else:
            student.zero_grad(set_to_none=True)
        del sources
        sync()
        train_peak = peak_memory_gb(device)
        rows.append(dict(score_gb=score_peak, train_gb=train_peak, step_gb=max(score_peak, train_peak),
                         seconds=time.perf_counter() - t0))
    n_params = lambda mod: sum(p.numel() for p in mod.parameters())  # noqa: E731
    C.emit(dict(placement=args.placement, **rows[-1], student_params=n_params(student),
                teacher_params=n_params(teacher.model), tokens=n_tokens))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pair", choices=sorted(PAIRS), default=None,
                   help="teacher/student configurations (default: tiny on CPU, qwen3-8b-4b on CUDA)")
    p.add_argument("--device", default="cpu", help="cpu | cuda (the saving is only real on cuda)")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default=None,
                   help="model weights (default: float32 on CPU, bfloat16 on CUDA)")
    p.add_argument("--vocab", type=int, default=C.QWEN_VOCAB)
    p.add_argument("--prompt-len", type=int, default=None, help="default 256 on CUDA, 16 on CPU")
    p.add_argument("--response-len", type=int, default=None,
                   help="response tokens per micro-batch (default 4096 on CUDA, 64 on CPU)")
    p.add_argument("--micro-batches", type=int, default=2)
    p.add_argument("--chunk-size", type=int, default=512)
    p.add_argument("--recompute", action="store_true", help="loss.impl=recompute (default: the trainer default, fused)")
    p.add_argument("--optimizer", choices=("master", "none"), default="master",
                   help="master: fp32 master weights + AdamW moments; none: forward/backward only")
    p.add_argument("--steps", type=int, default=2, help="steps per placement; the last is reported")
    p.add_argument("--placements", default="resident,offload")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)  # child: one placement
    args = p.parse_args(argv)
    cuda = args.device.startswith("cuda")
    args.pair = args.pair or ("qwen3-8b-4b" if cuda else "tiny")
    args.dtype = args.dtype or ("bfloat16" if cuda else "float32")
    args.prompt_len = args.prompt_len or (256 if cuda else 16)
    args.response_len = args.response_len or (4096 if cuda else 64)
    if args.vocab == C.QWEN_VOCAB and args.pair == "tiny":
        args.vocab = 1024
    for name in ("prompt_len", "response_len", "micro_batches", "chunk_size", "steps", "threads"):
        if getattr(args, name) <= 0:
            p.error(f"--{name.replace('_', '-')} must be > 0")
    if args.one:
        args.placement = args.one
        child(args)
        return 0
    placements = [s.strip() for s in args.placements.split(",") if s.strip()]
    bad = [s for s in placements if s not in ("resident", "offload")]
    if bad:
        p.error(f"--placements: {bad} not in resident, offload")
    flags = ["--pair", args.pair, "--device", args.device, "--dtype", args.dtype, "--vocab", str(args.vocab),
             "--prompt-len", str(args.prompt_len), "--response-len", str(args.response_len),
             "--micro-batches", str(args.micro_batches), "--chunk-size", str(args.chunk_size),
             "--optimizer", args.optimizer, "--steps", str(args.steps), "--threads", str(args.threads),
             "--seed", str(args.seed)] + (["--recompute"] if args.recompute else [])
    print(f"pair={args.pair} device={args.device} dtype={args.dtype} V={args.vocab:,} "
          f"{args.micro_batches} micro-batches x ({args.prompt_len} prompt + {args.response_len} response) "
          f"optimizer={args.optimizer}; each placement in a fresh process, step {args.steps} of {args.steps}",
          flush=True)
    res = {}
    for pl in placements:
        res[pl] = C.run_child(Path(__file__), flags + ["--one", pl], args.threads)
        print(f"  {pl}: done ({res[pl]['seconds']:.1f} s step)", flush=True)
    first = next(iter(res.values()))
    print(f"student {first['student_params'] / 1e9:.2f} B params, teacher {first['teacher_params'] / 1e9:.2f} B, "
          f"{first['tokens']:,} response tokens per step")
    ref = res.get("resident")
    rows = []
    for pl, r in res.items():
        rows.append([pl, f"{r['score_gb']:.2f}", f"{r['train_gb']:.2f}", f"{r['step_gb']:.2f}",
                     C.pct(r["step_gb"], ref["step_gb"]) if ref and pl != "resident" else "—",
                     f"{r['seconds']:.1f}"])
    print(C.table(["placement", "scoring peak GB", "training peak GB", "step peak GB", "vs resident", "step s"],
                  rows))
    if not cuda:
        print("(CPU: Teacher.offload is a no-op here, so the rows should match; run with --device cuda "
              "for the saving)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
