"""Shared pieces of the loss-memory benchmarks (``opd_memory.py``, ``tip_memory.py``).

The benchmarks measure the loss step alone, not a transformer: a stand-in "model" returns fixed
last hidden states ``(1, N, d)`` (a leaf with grad, standing for the transformer body) and owns a
real ``nn.Linear`` LM head ``(V, d)``, so opsd's own :class:`opsd.distill.DistillModule` and
:class:`opsd.teacher.Teacher` run unchanged on it. Each measurement runs in a fresh child process
(``--one ...``) that prints one ``RESULT {json}`` line; the parent (which never imports torch)
collects them and prints the tables.

Peak memory: on CPU, the peak RSS (VmHWM) after resetting it through ``/proc/self/clear_refs``;
on CUDA, ``torch.cuda.max_memory_allocated``; both through :mod:`opsd.metrics`. The baseline is
read right after the reset (then VmHWM = current RSS), after the inputs are built, so "peak" is what
the step adds on top of its inputs; the inputs are reported on their own.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

MB = 2 ** 20
QWEN_VOCAB = 151_936  # Qwen2.5 / Qwen3 logit width

# GPU presets (--shape): student hidden size, teacher hidden size (the paper's pairs, §7.1:
# Qwen3-14B -> 1.7B for planning, Qwen3-8B -> 4B for math), response tokens of one micro-batch.
SHAPES = {
    "qwen3-1.7b": dict(hidden=2048, teacher_hidden=5120, vocab=QWEN_VOCAB, tokens=4096),
    "qwen3-4b": dict(hidden=2560, teacher_hidden=4096, vocab=QWEN_VOCAB, tokens=8192),
}


def add_shape_args(p) -> None:
    p.add_argument("--vocab", type=int, default=QWEN_VOCAB, help="vocabulary size V (default %(default)s)")
    p.add_argument("--tokens", type=int, default=2048, help="response tokens N (default %(default)s)")
    p.add_argument("--hidden", type=int, default=256, help="student hidden size d (default %(default)s)")
    p.add_argument("--teacher-hidden", type=int, default=None, help="teacher hidden size (default: --hidden)")
    p.add_argument("--chunk-size", type=int, default=512, help="opsd loss.chunk_size (default %(default)s)")
    p.add_argument("--shape", choices=sorted(SHAPES), default=None,
                   help="GPU preset; overrides --vocab/--tokens/--hidden/--teacher-hidden")
    p.add_argument("--device", default="cpu", help="cpu | cuda (cuda: only exercised on a GPU machine)")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default=None,
                   help="hidden states and LM heads (default: float32 on CPU, bfloat16 on CUDA); "
                        "logits are float32 either way")
    p.add_argument("--threads", type=int, default=1, help="torch/OMP threads of each child (default %(default)s)")
    p.add_argument("--seed", type=int, default=0)


def resolve_shape(args) -> None:
    """Apply ``--shape`` and the defaults that depend on other flags, in place."""
    if args.shape:
        for k, v in SHAPES[args.shape].items():
            setattr(args, k, v)
    if args.teacher_hidden is None:
        args.teacher_hidden = args.hidden
    if args.dtype is None:
        args.dtype = "bfloat16" if args.device.startswith("cuda") else "float32"
    for name in ("vocab", "tokens", "hidden", "teacher_hidden", "chunk_size", "threads"):
        if getattr(args, name) <= 0:
            sys.exit(f"--{name.replace('_', '-')} must be > 0, got {getattr(args, name)}")


def shape_flags(args) -> list:
    """The resolved shape as command-line flags for a child process."""
    return ["--vocab", str(args.vocab), "--tokens", str(args.tokens), "--hidden", str(args.hidden),
            "--teacher-hidden", str(args.teacher_hidden), "--chunk-size", str(args.chunk_size),
            "--device", args.device, "--dtype", args.dtype, "--threads", str(args.threads),
            "--seed", str(args.seed)]


def shape_line(args) -> str:
    return (f"V={args.vocab:,}  N={args.tokens:,} tokens  d={args.hidden} (teacher {args.teacher_hidden})  "
            f"chunk_size={args.chunk_size}  device={args.device}  dtype={args.dtype}  threads={args.threads}")


def full_logits_mb(args) -> float:
    """One (N, V) float32 tensor."""
    return args.tokens * args.vocab * 4 / MB


# ------------------------------------------------------------------ parent side

def run_child(script: Path, flags: list, threads: int) -> dict:
    """Run ``script --one ...`` in a fresh interpreter and return its ``RESULT`` dict."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, str(script), *flags], env=env, capture_output=True, text=True)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    sys.exit(f"{script.name} {' '.join(flags)} failed (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}")


def has_liger() -> bool:
    """Whether the peer rows can run (liger-kernel, the ``bench`` extra), without importing torch."""
    import importlib.util

    return importlib.util.find_spec("liger_kernel") is not None


def pct(x: float, ref: float) -> str:
    """Relative change as ``−x %`` / ``+x %`` (a real minus sign, for the tables)."""
    d = 100.0 * (x / ref - 1.0) if ref else float("nan")
    return f"{'−' if d < 0 else '+'}{abs(d):.0f} %"


def ratio(x: float, ref: float) -> str:
    """``x / ref`` to two decimals, or ``n/a`` where the reference rounds to nothing (a tiny shape's
    CPU peak can stay inside pages the warm-up already touched)."""
    return f"{x / ref:.2f}" if ref > 0 else "n/a"


def table(header: list, rows: list) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---:" if i else "---" for i in range(len(header))) + "|"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


# ------------------------------------------------------------------ child side (imports torch)

def child_setup(args):
    """Threads, seed, device; returns the torch device."""
    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device here")
    return device


def stand_in_lm(hidden_states, vocab: int):
    """A module with the two things opsd uses of an HF causal LM: ``base_model(...)`` returning
    ``last_hidden_state`` and ``get_output_embeddings()``; the head is a real ``nn.Linear``."""
    import torch
    from torch import nn

    class Body(nn.Module):
        def __init__(self):
            super().__init__()
            self.hidden = nn.Parameter(hidden_states)  # (1, N, d): its gradient stands for the body's

        def forward(self, input_ids=None, attention_mask=None, **_):  # position_ids, ...: not used
            return type("Out", (), {"last_hidden_state": self.hidden})()

    class StandInLM(nn.Module):
        def __init__(self):
            super().__init__()
            self.base_model = Body()
            d = hidden_states.shape[-1]
            self.lm_head = nn.Linear(d, vocab, bias=False, device=hidden_states.device, dtype=hidden_states.dtype)
            with torch.no_grad():  # logits std ~2 (times the per-token scale of the hidden states)
                self.lm_head.weight.normal_(0.0, 2.0 / d ** 0.5)

        def get_output_embeddings(self):
            return self.lm_head

    return StandInLM()


def build_inputs(args, device):
    """Student and teacher stand-ins plus a (1, N) batch. Each token's hidden state gets a random
    scale in [0.5, 3], so entropies and divergences vary across tokens as TIP's ranking needs."""
    import torch

    dt = getattr(torch, args.dtype)
    n = args.tokens

    def lm(d):
        h = torch.randn(1, n, d, device=device) * torch.empty(1, n, 1, device=device).uniform_(0.5, 3.0)
        return stand_in_lm(h.to(dt), args.vocab)

    student, teacher = lm(args.hidden), lm(args.teacher_hidden)
    batch = dict(input_ids=torch.zeros(1, n, dtype=torch.long, device=device),
                 attention_mask=torch.ones(1, n, dtype=torch.long, device=device),
                 loss_mask=torch.ones(1, n, dtype=torch.long, device=device))
    return student, teacher, batch


def setup(args, device):
    """Stand-in student, the teacher source the trainer would get (:meth:`opsd.teacher.Teacher.score`:
    last hidden states + head, an :class:`opsd.losses.HiddenLogits`), and the batch."""
    from opsd.teacher import Teacher

    student, teacher_lm, batch = build_inputs(args, device)
    teacher_src = Teacher(teacher_lm, device, "resident", None, args.chunk_size).score(
        batch["input_ids"], batch["attention_mask"], batch["loss_mask"], args.vocab)
    return student, teacher_src, batch


def tiny_copy(args):
    """The same options at a tiny shape (a few chunks), for a warm-up call of the measured path."""
    import copy

    tiny = copy.copy(args)
    tiny.tokens, tiny.vocab, tiny.chunk_size = 8, 64, 4
    return tiny


def current_bytes(device) -> float:
    """Memory in use now: CUDA allocated, or the process's RSS."""
    import torch

    if device.type == "cuda":
        return float(torch.cuda.memory_allocated(device))
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024.0
    return float("nan")


class Meter:
    """Peak memory above a baseline, and wall time, of one region (via :mod:`opsd.metrics`)."""

    def __init__(self, device):
        self.device = device

    def sync(self) -> None:
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def __enter__(self):
        from opsd.metrics import peak_memory_gb, reset_peak_memory

        self.sync()
        reset_peak_memory(self.device)
        self.base = peak_memory_gb(self.device) * 2 ** 30
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        from opsd.metrics import peak_memory_gb

        self.sync()
        self.seconds = time.perf_counter() - self.t0
        self.peak_bytes = peak_memory_gb(self.device) * 2 ** 30 - self.base
        return False


def check_peak_reset(device) -> None:
    """Fail loudly if the CPU peak cannot be reset (then VmHWM would hold the import peak)."""
    if device.type != "cpu":
        return
    from opsd.metrics import reset_peak_memory

    reset_peak_memory(device)
    status = dict(l.split(":", 1) for l in Path("/proc/self/status").read_text().splitlines() if ":" in l)
    hwm, rss = (int(status[k].split()[0]) for k in ("VmHWM", "VmRSS"))
    if hwm > rss + 1024:  # kB
        sys.exit("cannot reset the peak RSS (/proc/self/clear_refs not writable?); CPU peaks would be wrong")


def emit(result: dict) -> None:
    print("RESULT " + json.dumps(result), flush=True)
