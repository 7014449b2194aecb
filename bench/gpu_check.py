"""One prepared GPU check, one report: the numbers the CPU benches can only predict (issue 20, item 4).

    make gpu-check                          # a GPU machine: <= 8 min on one H100 (estimated ~5), report in docs/gpu/
    make gpu-check DRY_RUN=1                # anywhere: every step validated, nothing heavy run (a CI test)
    make gpu-check WHEELS=/path/to/wheels   # DeepSpeed (and its small dependencies) from local wheels
    python bench/gpu_check.py --tiny --device cpu --out /tmp/r.md   # the same code at toy shapes

Needs torch (CUDA) and transformers, nothing from the network; DeepSpeed for (a) and (c) (installed
from ``--wheels DIR`` when missing); vLLM is not used; Liger-Kernel is optional (its row says "not
installed"). ``datasets`` is not needed: the prompts are made here. Without a GPU it prints one line
and exits 0. Sections (each failure is written into the report, and the others still run):

(a) **One full OPD step at real shapes.** Random-weight Qwen3 models built on the GPU from their
    configs (Qwen3-4B teacher from ``bench/model_configs``, Qwen3-1.7B student: the Hub config.json
    values below), bf16, sdpa, gradient checkpointing, DeepSpeed ZeRO-2 on one GPU, the teacher
    resident; 4 sequences x (256 prompt + 2,048 response) = 8,192 response tokens in one
    micro-batch; ``opsd.trainer.Trainer.train_step`` with fixed rollouts (no generation: vLLM is
    not here, and an 8,192-token HF generate is minutes the simulator does not model). A warm-up
    step first (DeepSpeed allocates its fp32 gradient partition and AdamW's moments at the first
    step), then a measured one: ``torch.cuda.max_memory_allocated`` per phase (the peak is reset at
    each phase's start, as the simulator does), beside ``bench/simulate_memory.py``'s prediction for
    the same configuration (its ``Setup``/``simulate``, run on the CPU in a child process while the
    GPU works). Target: step peak within 10 %.
(b) **The loss step** at V = 151,936 and the pair's hidden sizes (student 2,048, teacher 2,560),
    8,192 tokens, bf16: ``bench/opd_memory.py``'s rows (each in a fresh process): naive (the
    reference for the loss), opsd ``fused`` and ``autograd``, Liger's chunked JSD at beta = 1;
    peak above the inputs and wall time of one forward + backward.
(c) **Packed vs padded** on the same trainer: 16 sequences with ``bench/packing.py``'s long-tailed
    response lengths (cap 8,192), 4 sequences per padded micro-batch vs a token budget of the same
    area packed into one row (sdpa switched to ``opsd.varlen_attention``); ``Trainer.update`` time
    split into teacher scoring and the student's part, peak, padding share, and the losses (equal
    up to bf16 rounding: the default hook's loss does not depend on the layout).

The report goes to ``docs/gpu/<date>-<device>.md`` (``--out`` to change it), with the environment,
the configuration and every table; ``--json`` also writes the raw numbers.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import importlib.util
import json
import os
import platform
import re
import string
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Callable, Dict, Optional

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
for _p in (str(REPO), str(HERE)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

GiB = 2 ** 30
TARGET = 0.10  # (a): |measured - simulated| / measured of the step peak
QWEN3_TOKENIZER_LEN = 151_669  # len(Qwen3's tokenizer); its models' heads have 151,936 rows
# Qwen/Qwen3-1.7B config.json (the values that shape the model; the rest as Qwen3-4B's file)
QWEN3_1_7B = dict(hidden_size=2048, intermediate_size=6144, num_hidden_layers=28, num_attention_heads=16,
                  num_key_value_heads=8, head_dim=128, tie_word_embeddings=True, vocab_size=151_936,
                  max_position_embeddings=40_960)
PHASES = ("teacher scoring", "student forward", "stats + loss pass", "statistics pass", "selection", "grad pass",
          "backward", "optimizer step")
LOSS_MODES = ("naive", "fused", "autograd", "liger")
PACK_MODES = ("padded", "packed")


@dataclasses.dataclass
class Plan:
    """Every size and option of the check (``full_plan`` on a GPU, ``tiny_plan`` for tests)."""

    name: str
    device: str
    student_cfg: dict
    teacher_cfg: dict
    tokenizer_len: int
    seqs: int  # (a): sequences of the micro-batch
    prompt_len: int
    response_len: int  # per sequence
    zero_stage: int
    chunk: int  # loss.chunk_size
    loss_shape: dict  # (b): vocab, hidden, teacher_hidden, tokens
    loss_modes: tuple
    pack_seqs: int  # (c)
    pack_cap: int
    pack_mbs: int
    repeats: int
    out: Path

    @property
    def tokens(self) -> int:
        return self.seqs * self.response_len


def _teacher_config() -> dict:
    import simulate_memory as SM

    return SM.load_config("Qwen3-4B")


def full_plan(out: Optional[Path] = None) -> Plan:
    teacher = _teacher_config()
    student = {**teacher, **QWEN3_1_7B}
    return Plan(name="qwen3-4b -> qwen3-1.7b", device="cuda", student_cfg=student, teacher_cfg=teacher,
                tokenizer_len=QWEN3_TOKENIZER_LEN, seqs=4, prompt_len=256, response_len=2048, zero_stage=2,
                chunk=512, loss_shape=dict(vocab=teacher["vocab_size"], hidden=student["hidden_size"],
                                           teacher_hidden=teacher["hidden_size"], tokens=8192),
                loss_modes=LOSS_MODES, pack_seqs=16, pack_cap=8192, pack_mbs=4, repeats=2,
                out=out or default_report_path())


def tiny_plan(device: str, out: Path) -> Plan:
    """The same sections at toy shapes (seconds on a CPU): the tests run the code with it."""
    small = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=16, vocab_size=512, max_position_embeddings=1024,
                 bos_token_id=None, eos_token_id=None)
    teacher = {**_teacher_config(), **small, "hidden_size": 96, "num_attention_heads": 6, "tie_word_embeddings": False}
    student = {**_teacher_config(), **small, "tie_word_embeddings": True}
    return Plan(name="tiny qwen3", device=device, student_cfg=student, teacher_cfg=teacher, tokenizer_len=400,
                seqs=2, prompt_len=16, response_len=32, zero_stage=2, chunk=16,
                loss_shape=dict(vocab=512, hidden=64, teacher_hidden=96, tokens=64), loss_modes=LOSS_MODES,
                pack_seqs=8, pack_cap=64, pack_mbs=2, repeats=1, out=out)


def cut_plan(plan: Plan) -> Plan:
    """``plan`` with 2 layers per model and a few tokens: the dry run's quick prediction."""
    cut = {"num_hidden_layers": 2}
    return dataclasses.replace(plan, student_cfg={**plan.student_cfg, **cut}, teacher_cfg={**plan.teacher_cfg, **cut},
                               seqs=1, prompt_len=8, response_len=32)


def default_report_path(device_name: Optional[str] = None) -> Path:
    day = datetime.date.today().isoformat()
    slug = re.sub(r"[^a-z0-9]+", "-", (device_name or "gpu").lower()).strip("-")
    return REPO / "docs" / "gpu" / f"{day}-{slug}.md"


# ------------------------------------------------------------------ environment

def _version(module: str) -> Optional[str]:
    try:
        if importlib.util.find_spec(module) is None:
            return None
    except (ImportError, ValueError):  # a broken or half-installed package
        return None
    try:
        from importlib.metadata import version

        return version({"liger_kernel": "liger-kernel"}.get(module, module))
    except Exception:  # installed without metadata (a source tree on sys.path)
        return "present"


def ensure_deepspeed(wheels: Optional[str], dry_run: bool) -> str:
    """DeepSpeed's version; installs it from ``wheels`` (no index) when it is missing."""
    have = _version("deepspeed")
    if have:
        return have
    if not wheels:
        return ""
    found = sorted(Path(wheels).glob("deepspeed-*"))
    if dry_run:
        return f"(from {found[0].name})" if found else ""
    cmd = [sys.executable, "-m", "pip", "install", "--no-index", "--find-links", str(wheels), "deepspeed"]
    print("installing DeepSpeed from local wheels:", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=False)
    importlib.invalidate_caches()
    return _version("deepspeed") or ""


def environment() -> dict:
    import torch
    import transformers

    env = dict(python=platform.python_version(), torch=torch.__version__, transformers=transformers.__version__,
               cuda=torch.version.cuda, deepspeed=_version("deepspeed"), liger_kernel=_version("liger_kernel"),
               triton=_version("triton"), host=platform.node())
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        env.update(gpu=torch.cuda.get_device_name(0), gpu_memory_gib=round(p.total_memory / GiB, 1),
                   gpus=torch.cuda.device_count())
    return env


# ------------------------------------------------------------------ models, tokenizer, trainer

def build_tokenizer(n_tokens: int):
    """A character tokenizer padded with filler tokens to ``n_tokens`` (the real tokenizer's length,
    which is what the logits are sliced to); eos ``<|im_end|>``, pad ``<pad>``."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(["<pad>", "<unk>", "<|im_start|>", "<|im_end|>"])}
    for ch in string.printable:
        vocab.setdefault(ch, len(vocab))
    while len(vocab) < n_tokens:
        vocab[f"<t{len(vocab)}>"] = len(vocab)
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", unk_token="<unk>",
                                   eos_token="<|im_end|>")


def write_model_folders(plan: Plan, root: Path) -> Dict[str, Path]:
    """``root/{student,teacher}``: config.json and the tokenizer (no weights: see ``random_weights``)."""
    from transformers import AutoConfig

    tok = build_tokenizer(plan.tokenizer_len)
    folders = {}
    for role, cfg in (("student", plan.student_cfg), ("teacher", plan.teacher_cfg)):
        kw = {k: v for k, v in cfg.items() if k not in ("model_type", "architectures", "torch_dtype")}
        kw.update(pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=None)
        folder = root / role
        AutoConfig.for_model(cfg["model_type"], **kw).save_pretrained(folder)
        tok.save_pretrained(folder)
        folders[role] = folder
    return folders


def meta_models(plan: Plan) -> dict:
    """Parameter counts and head rows of both models, built on the meta device (nothing allocated)."""
    import torch

    import simulate_memory as SM

    out = {}
    for role, cfg in (("student", plan.student_cfg), ("teacher", plan.teacher_cfg)):
        with torch.device("meta"):
            m = SM.build_model(cfg, torch.bfloat16)
        head = m.get_output_embeddings().weight
        out[role] = dict(params=sum(p.numel() for p in m.parameters()), head_rows=head.shape[0],
                         tied=head is m.get_input_embeddings().weight, layers=cfg["num_hidden_layers"])
    return out


@contextlib.contextmanager
def random_weights(device: str, calls: list):
    """``opsd.models.load_causal_lm`` builds a random-weight model from the folder's config.json
    directly on ``device`` (in the run's dtype) instead of reading weights: nothing to download or
    write, and seconds instead of minutes for 6 B parameters."""
    import torch

    import simulate_memory as SM
    from opsd import models

    original = models.load_causal_lm

    def load(path, dtype="float32", attn_implementation=None, trust_remote_code=False):
        cfg = json.loads((Path(path) / "config.json").read_text())
        cfg = {k: v for k, v in cfg.items() if k not in ("architectures", "transformers_version", "dtype",
                                                           "torch_dtype")}
        with torch.device(device):
            model = SM.build_model(cfg, models.DTYPES[dtype])
        if attn_implementation:
            model.set_attn_implementation(attn_implementation)
        models.check_plain_head(model, str(path))
        calls.append(str(path))
        return model

    models.load_causal_lm = load
    try:
        yield
    finally:
        models.load_causal_lm = original


class FixedPrompts:
    """The trainer's prompt set without ``datasets``: ``count`` prompts of ``length`` ordinary tokens."""

    def __init__(self, tokenizer, count: int, length: int):
        ids = [tokenizer.convert_tokens_to_ids(c) for c in string.ascii_letters + string.digits]
        self.rows = [{"prompt_ids": [ids[(i * 7 + j) % len(ids)] for j in range(length)], "answer": None}
                     for i in range(count)]

    def __len__(self) -> int:
        return len(self.rows)

    def batch(self, indices):
        return [self.rows[i] for i in indices]


def fixed_backend(tokenizer, response_len: int):
    """Rollouts of exactly ``response_len`` ordinary tokens (no EOS, unfinished), no generation."""
    from opsd.rollout.base import RolloutBackend, Rollouts

    ordinary = [tokenizer.convert_tokens_to_ids(c) for c in string.ascii_letters]

    class Fixed(RolloutBackend):
        name = "fixed"

        def generate(self, prompt_ids, sampling):
            out = Rollouts([], [], [], [])
            for i, p in enumerate(prompt_ids):
                for j in range(sampling.n):
                    out.prompt_ids.append(list(p))
                    out.response_ids.append([ordinary[(i + j + k) % len(ordinary)] for k in range(response_len)])
                    out.finished.append(False)
                    out.prompt_index.append(i)
            return out

    return Fixed()


def overrides(plan: Plan, folders: Dict[str, Path], out_dir: Path) -> list:
    """opsd options of (a): one prompt x ``seqs`` samples = one micro-batch of ``seqs`` sequences."""
    return [f"model.student={folders['student']}", f"model.teacher={folders['teacher']}", "model.dtype=bfloat16",
            "model.attn_implementation=sdpa", "model.gradient_checkpointing=true", "data.train_files=unused.jsonl",
            f"data.max_prompt_length={plan.prompt_len + 1}", "train.prompts_per_step=1", f"rollout.n={plan.seqs}",
            f"rollout.max_new_tokens={max(plan.response_len, plan.pack_cap)}", f"engine.micro_batch_size={plan.seqs}",
            f"engine.zero_stage={plan.zero_stage}", f"engine.device={plan.device}", "engine.teacher_placement=resident",
            f"loss.chunk_size={plan.chunk}", "loss.type=reverse_kl", "loss.impl=fused",
            # repeated updates (warm-up, (c)'s modes and repeats) see the same weights
            "optim.lr=1e-9", f"train.output_dir={out_dir}", "train.export=false", "train.save_every=0",
            "logging.progress=false"]


def trainer_class():
    from opsd.trainer import Trainer

    class CheckTrainer(Trainer):
        """The trainer with the prompts made here (``_prompts`` is its one data-loading method)."""

        prompt_len = 0

        def _prompts(self, files):
            return FixedPrompts(self.tokenizer, max(8, self.cfg.train.prompts_per_step), self.prompt_len)

    return CheckTrainer


def build_trainer(plan: Plan, workdir: Path):
    from opsd.config import load_config

    folders = write_model_folders(plan, workdir / "models")
    cfg = load_config(None, overrides(plan, folders, workdir / "run"))
    cls = trainer_class()
    cls.prompt_len = plan.prompt_len
    calls: list = []
    with random_weights(plan.device, calls):
        tr = cls(cfg).setup()
    if len(calls) != 2:
        tr.cleanup()
        raise RuntimeError(f"the trainer loaded {len(calls)} model(s) through opsd.models.load_causal_lm, "
                           "expected 2 (student, teacher): has its loading path changed?")
    tr.backend = fixed_backend(tr.tokenizer, plan.response_len)
    return tr


# ------------------------------------------------------------------ phases

class PhaseRecorder:
    """Peak memory (``max_memory_allocated`` on CUDA, peak RSS on CPU; reset at each phase's start)
    and time of the named phases of a step; a phase seen several times keeps its max and its sum."""

    def __init__(self, device):
        self.device = device
        self.phase: Optional[str] = None
        self.peaks: Dict[str, float] = {}
        self.seconds: Dict[str, float] = {}
        self.t = 0.0

    def _sync(self):
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def mark(self, name: Optional[str]) -> None:
        from opsd.metrics import peak_memory_gb, reset_peak_memory

        self._sync()
        now = time.perf_counter()
        if self.phase is not None:
            self.peaks[self.phase] = max(self.peaks.get(self.phase, 0.0), peak_memory_gb(self.device) * GiB)
            self.seconds[self.phase] = self.seconds.get(self.phase, 0.0) + now - self.t
        reset_peak_memory(self.device)
        self.phase, self.t = name, time.perf_counter()


@contextlib.contextmanager
def phase_marks(tr, rec: PhaseRecorder):
    """Marks at the trainer's phase boundaries: its teacher phase, DistillModule's passes
    (``simulate_memory._PhaseMarks``, the simulator's own labels), the engine's backward and step."""
    import simulate_memory as SM

    def wrap(obj, name, before, after=None):
        fn = getattr(obj, name)

        def marked(*a, **k):
            rec.mark(before)
            out = fn(*a, **k)
            if after is not None:
                rec.mark(after)
            return out

        setattr(obj, name, marked)  # an instance attribute: `del` restores the method

    wrap(tr, "teacher_phase", "teacher scoring", "student forward")
    wrap(tr.engine, "backward", "backward")
    wrap(tr.engine, "step", "optimizer step", "after the step")
    try:
        with SM._PhaseMarks(rec.mark):
            yield
    finally:
        rec.mark(None)
        for obj, name in ((tr, "teacher_phase"), (tr.engine, "backward"), (tr.engine, "step")):
            delattr(obj, name)


# ------------------------------------------------------------------ (a) one full step vs the simulator

def simulator_setup(plan: Plan):
    import simulate_memory as SM

    return SM.Setup(student_cfg=plan.student_cfg, teacher_cfg=plan.teacher_cfg, vocab_size=plan.tokenizer_len,
                    world=1, zero_stage=plan.zero_stage, teacher_placement="resident", teacher_sharding="none",
                    gradient_checkpointing=True, seqs=plan.seqs, prompt_len=plan.prompt_len,
                    response_len=plan.response_len, n_micro=1, chunk_size=plan.chunk, loss_type="reverse_kl",
                    dtype="bfloat16")


def predict(plan: Plan) -> dict:
    """``bench/simulate_memory.py``'s per-phase peaks of (a)'s step (fused loss, all tokens)."""
    import simulate_memory as SM

    t0 = time.perf_counter()
    res = SM.simulate(simulator_setup(plan), "fused", 1.0)
    return dict(peak=res.peak, peak_phase=res.peak_phase, base=res.base,
                phases={k: v[0] for k, v in res.phases.items()}, seconds=time.perf_counter() - t0)


def start_prediction(plan: Plan, workdir: Path):
    """The prediction in a CPU child process (minutes at 64 layers), while the GPU works."""
    spec = workdir / "plan.json"
    spec.write_text(json.dumps({**dataclasses.asdict(plan), "out": str(plan.out)}))
    out = workdir / "prediction.json"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # fake tensors on the CPU; keep the GPU free
    proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--predict", str(spec), str(out)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return proc, out


def finish_prediction(proc, out: Path, timeout: float) -> dict:
    try:
        log, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise RuntimeError(f"the simulator did not finish within {timeout:.0f} s")
    if proc.returncode != 0 or not out.is_file():
        raise RuntimeError(f"the simulator failed (exit {proc.returncode}):\n{(log or '')[-2000:]}")
    return json.loads(out.read_text())


def run_full_step(tr, plan: Plan) -> dict:
    """A warm-up step, then the measured one with per-phase peaks."""
    import torch

    t0 = time.perf_counter()
    tr.train_step()  # warm-up: DeepSpeed's lazy fp32 gradient partition, AdamW's moments, kernels
    warm = time.perf_counter() - t0
    rec = PhaseRecorder(tr.device)
    with phase_marks(tr, rec):
        m = tr.train_step()
    peaks = {k: v for k, v in rec.peaks.items() if k in PHASES}
    out = dict(phases=peaks, seconds={k: v for k, v in rec.seconds.items() if k in PHASES},
               step_peak=max(peaks.values()), step_peak_phase=max(peaks, key=peaks.get),
               step_time_s=m["step_time_s"], warmup_s=warm, loss=m["loss"], tokens=m["tokens"],
               trainer_peak_gib=m["peak_mem_gb"])
    if tr.device.type == "cuda":
        out["reserved_gib"] = torch.cuda.max_memory_reserved(tr.device) / GiB
    return out


def compare(measured: dict, predicted: dict) -> dict:
    rows = []
    for phase in PHASES:
        if phase in measured["phases"] or phase in predicted["phases"]:
            m, s = measured["phases"].get(phase), predicted["phases"].get(phase)
            rows.append(dict(phase=phase, measured=m, simulated=s, residual=(s - m) / m if m and s else None))
    res = (predicted["peak"] - measured["step_peak"]) / measured["step_peak"]
    return dict(rows=rows, residual=res, ok=abs(res) <= TARGET)


# ------------------------------------------------------------------ (b) the loss step

def loss_args(plan: Plan, device: str):
    import _common as C

    ns = argparse.Namespace(vocab=plan.loss_shape["vocab"], tokens=plan.loss_shape["tokens"],
                            hidden=plan.loss_shape["hidden"], teacher_hidden=plan.loss_shape["teacher_hidden"],
                            chunk_size=plan.chunk, shape=None, device=device, dtype=None, threads=4, seed=0)
    C.resolve_shape(ns)
    return ns


def run_loss_rows(plan: Plan) -> list:
    """``bench/opd_memory.py``'s rows, each in a fresh process; Liger's says "not installed" when absent."""
    import _common as C
    import opd_memory

    args = loss_args(plan, plan.device)
    rows = []
    for mode in plan.loss_modes:
        if mode == "liger" and not C.has_liger():
            rows.append(dict(mode=mode, status="not installed"))
            continue
        try:
            rows.append(dict(opd_memory.run_row(mode, args), status="ok"))
        except SystemExit as e:  # run_child exits with the child's output on a failure
            rows.append(dict(mode=mode, status=f"failed: {str(e)[-600:]}"))
    ref = next((r for r in rows if r["mode"] == "naive" and r["status"] == "ok"), None)
    for r in rows:
        if ref is not None and r["status"] == "ok":
            r["vs_naive_peak"] = r["peak_mb"] / ref["peak_mb"] if ref["peak_mb"] > 0 else None
            r["loss_diff"] = abs(r["loss"] - ref["loss"])
    return rows


# ------------------------------------------------------------------ (c) packed vs padded

def pack_spec(plan: Plan) -> dict:
    return dict(n=plan.pack_seqs, cap=plan.pack_cap, micro_batch_size=plan.pack_mbs)


def run_packing(tr, plan: Plan) -> dict:
    """``Trainer.update`` on the same long-tailed rollouts, padded then packed, ``repeats`` times each
    after a warm-up, with :func:`bench.packing.set_mode` (what ``Trainer.setup`` does per mode)."""
    import statistics

    import packing as P

    spec = pack_spec(plan)
    tr.cfg.engine.micro_batch_size = plan.pack_mbs
    rollouts = P.long_tail_rollouts(tr, spec, seed=0)
    budget = plan.pack_mbs * (max(len(p) for p in rollouts.prompt_ids) + plan.pack_cap)
    lengths = [len(r) for r in rollouts.response_ids]
    out = dict(sequences=len(lengths), response_tokens=sum(lengths), median=statistics.median(lengths),
               longest=max(lengths), budget=budget, modes={})
    for mode in PACK_MODES:
        P.set_mode(tr, mode, budget)
        times, peaks, split = [], [], []
        for r in range(plan.repeats + 1):  # round 0: warm-up
            rec = PhaseRecorder(tr.device)
            rec._sync()
            t0 = time.perf_counter()
            with phase_marks(tr, rec):  # each phase resets the peak: the update's is their max
                m = tr.update(rollouts)
            rec._sync()
            if r:
                times.append(time.perf_counter() - t0)
                peaks.append(max(rec.peaks.values()))
                split.append(rec.seconds.get("teacher scoring", 0.0))
        t = statistics.median(times)
        teacher = statistics.median(split)
        out["modes"][mode] = dict(update_s=t, teacher_s=teacher, student_s=t - teacher, peak=max(peaks),
                                  padding=m["padding_frac"], micro_batches=m["micro_batches"], loss=m["loss"],
                                  attention=tr.student.config._attn_implementation)
    P.set_mode(tr, "padded", budget)
    a, b = out["modes"]["padded"]["loss"], out["modes"]["packed"]["loss"]
    out["loss_rel_diff"] = abs(a - b) / max(abs(a), 1e-12)
    return out


# ------------------------------------------------------------------ the dry run

def check_environment(plan: Plan, wheels: Optional[str]) -> str:
    env = environment()
    ds = ensure_deepspeed(wheels, dry_run=True)
    if not ds:
        raise RuntimeError("DeepSpeed is not importable and no deepspeed wheel was given (WHEELS=dir): "
                           "(a) and (c) need it")
    gpu = f"GPU {env['gpu']} ({env['gpu_memory_gib']} GiB)" if "gpu" in env else "no GPU here (fine for a dry run)"
    liger = env["liger_kernel"] or "not installed (its row will say so)"
    return (f"python {env['python']}, torch {env['torch']}, transformers {env['transformers']}, deepspeed {ds}, "
            f"liger-kernel {liger}; {gpu}")


def check_models(plan: Plan, wheels=None) -> str:
    mm = meta_models(plan)
    for role, m in mm.items():
        if m["head_rows"] < plan.tokenizer_len:
            raise ValueError(f"{role} head has {m['head_rows']} rows < tokenizer length {plan.tokenizer_len}")
    s, t = mm["student"], mm["teacher"]
    return (f"student {s['params'] / 1e9:.3f} B params ({s['layers']} layers, head {s['head_rows']:,} rows, "
            f"{'tied' if s['tied'] else 'untied'}), teacher {t['params'] / 1e9:.3f} B ({t['layers']} layers, head "
            f"{t['head_rows']:,} rows, {'tied' if t['tied'] else 'untied'}), tokenizer {plan.tokenizer_len:,} "
            "tokens; built on the meta device")


def check_opsd_config(plan: Plan, wheels=None) -> str:
    """(a)'s folders, opsd config, tokenizer, prompts and fixed rollouts, as the run makes them."""
    from opsd.config import load_config
    from opsd.models import load_tokenizer

    with tempfile.TemporaryDirectory(prefix="opsd-gpu-check-") as tmp:
        folders = write_model_folders(plan, Path(tmp))
        cfg = load_config(None, overrides(plan, folders, Path(tmp) / "run"))
        tok = load_tokenizer(str(folders["student"]))
        if len(tok) != plan.tokenizer_len:
            raise ValueError(f"tokenizer has {len(tok)} tokens, want {plan.tokenizer_len}")
        prompt = FixedPrompts(tok, 8, plan.prompt_len).batch([0])[0]["prompt_ids"]
        roll = fixed_backend(tok, plan.response_len).generate([prompt], _sampling(plan.seqs, plan.response_len))
    e = cfg.engine
    return (f"ZeRO-{e.zero_stage} on {e.device}, {cfg.model.dtype}, {cfg.model.attn_implementation}, gradient "
            f"checkpointing {cfg.model.gradient_checkpointing}, micro-batch {e.micro_batch_size} x "
            f"({plan.prompt_len} + {plan.response_len}) = {roll.num_response_tokens:,} response tokens, "
            f"loss {cfg.loss.type}/{cfg.loss.impl} chunk {cfg.loss.chunk_size}")


def check_hooks(plan: Plan, wheels=None) -> str:
    """What :func:`phase_marks` and :func:`build_trainer` attach to is still there."""
    import deepspeed

    import opsd.distill as distill
    import simulate_memory as SM
    from opsd import models
    from opsd.trainer import Trainer

    for name in ("setup", "train_step", "update", "teacher_phase", "_prompts", "cleanup"):
        if not callable(getattr(Trainer, name, None)):
            raise AttributeError(f"opsd.trainer.Trainer.{name} is gone: the check drives it")
    if not (callable(getattr(models, "load_causal_lm", None)) and hasattr(models, "DTYPES")):
        raise AttributeError("opsd.models.load_causal_lm / DTYPES are gone")
    marked = [n for n in ("stats_from_sources", "loss_and_stats", "selected_loss_sum") if hasattr(distill, n)]
    if "loss_and_stats" not in marked:
        raise AttributeError("opsd.distill.loss_and_stats is gone: the fused pass cannot be marked")
    for name in ("backward", "step"):
        if not callable(getattr(deepspeed.DeepSpeedEngine, name, None)):
            raise AttributeError(f"deepspeed.DeepSpeedEngine.{name} is missing")
    SM._PhaseMarks(lambda _: None)
    return f"Trainer phases, DeepSpeedEngine.backward/step, opsd.distill.{'/'.join(marked)} are there"


def check_simulator(plan: Plan, wheels=None) -> str:
    small = cut_plan(plan)
    p = predict(small)
    want = {"teacher scoring", "student forward", "stats + loss pass", "backward", "optimizer step"}
    if not want <= set(p["phases"]):
        raise ValueError(f"simulated phases {sorted(p['phases'])} lack {sorted(want - set(p['phases']))}")
    return (f"simulate_memory runs (cut to 2 layers, {small.tokens} tokens: peak {p['peak'] / GiB:.2f} GiB at "
            f"{p['peak_phase']}, {p['seconds']:.1f} s); the real run predicts {plan.tokens:,} tokens, "
            f"{plan.student_cfg['num_hidden_layers']} + {plan.teacher_cfg['num_hidden_layers']} layers")


def check_loss_rows(plan: Plan, wheels=None) -> str:
    import _common as C
    import opd_memory

    args = loss_args(plan, plan.device)
    for mode in plan.loss_modes:
        opd_memory.split_mode(mode, args.chunk_size)
    liger = "installed" if C.has_liger() else "not installed (row says so)"
    return (f"{len(plan.loss_modes)} rows {','.join(plan.loss_modes)} (liger {liger}); each: "
            f"bench/opd_memory.py --one MODE {' '.join(C.shape_flags(args))}")


def check_packing(plan: Plan, wheels=None) -> str:
    import random
    import statistics

    import packing as P
    from opsd import packing as opsd_packing
    from opsd.config import load_config

    for fn in ("long_tail_lengths", "long_tail_rollouts", "set_mode"):
        if not callable(getattr(P, fn, None)):
            raise AttributeError(f"bench/packing.py: {fn} is gone")
    if not callable(getattr(opsd_packing, "prepare_attention", None)):
        raise AttributeError("opsd.packing.prepare_attention is gone")
    lengths = P.long_tail_lengths(plan.pack_seqs, plan.pack_cap, random.Random(0))
    budget = plan.pack_mbs * (plan.prompt_len + plan.pack_cap)
    load_config(None, ["model.student=s", "model.teacher=t", "data.train_files=x", "engine.packing=true",
                       "model.attn_implementation=sdpa", f"engine.micro_batch_tokens={budget}",
                       f"data.max_prompt_length={plan.prompt_len + 1}"])
    padded = -(-len(lengths) // plan.pack_mbs) * plan.pack_mbs * (plan.prompt_len + max(lengths))
    real = sum(lengths) + plan.prompt_len * len(lengths)
    return (f"{len(lengths)} sequences, responses median {statistics.median(lengths):.0f} / max {max(lengths)} "
            f"(cap {plan.pack_cap}); padded micro-batches of {plan.pack_mbs} vs packed budget {budget:,} tokens; "
            f"at most {1 - real / padded:.0%} of the padded slots are padding")


def check_report(plan: Plan, wheels=None) -> str:
    out = plan.out
    parent = next((p for p in [out.parent, *out.parent.parents] if p.exists()), None)
    if parent is None or not os.access(parent, os.W_OK):
        raise PermissionError(f"cannot write {out}")
    return f"the report would go to {_rel(out)} (docs/gpu/<date>-<device>.md on the GPU machine)"


DRY_RUN_CHECKS = (("environment", check_environment), ("(a) models", check_models),
                  ("(a) opsd config", check_opsd_config), ("(a) trainer hooks", check_hooks),
                  ("(a) simulator", check_simulator), ("(b) loss rows", check_loss_rows),
                  ("(c) packing", check_packing), ("report", check_report))


def dry_run(plan: Plan, wheels: Optional[str]) -> int:
    """Every step validated, nothing heavy executed (:data:`DRY_RUN_CHECKS`): imports, the models
    on the meta device, (a)'s opsd config and inputs, the trainer and engine hooks the phases need,
    the simulator on a cut configuration, (b)'s rows, (c)'s length mix and config, the report path.
    Every problem is listed; the exit status is 1 if there is one."""
    t0 = time.perf_counter()
    problems = 0
    print(f"# gpu-check dry run ({plan.name}): every step validated, nothing heavy executed", flush=True)
    for name, fn in DRY_RUN_CHECKS:
        try:
            print(f"[ok] {name}: {fn(plan, wheels)}", flush=True)
        except Exception as e:  # noqa: BLE001 -- listed; the exit status says so
            problems += 1
            print(f"[problem] {name}: {type(e).__name__}: {e}", flush=True)
    took = time.perf_counter() - t0
    if problems:
        print(f"gpu-check dry run: {problems} problem(s) ({took:.0f} s)")
        return 1
    print(f"gpu-check dry run OK: {len(DRY_RUN_CHECKS)} steps validated, nothing executed ({took:.0f} s)")
    return 0


def _sampling(n: int, max_new: int):
    from opsd.rollout.base import SamplingConfig

    return SamplingConfig(1.0, 1.0, 0, max_new, n)


def _rel(p: Path) -> str:
    try:
        return str(Path(p).resolve().relative_to(REPO))
    except ValueError:
        return str(p)


# ------------------------------------------------------------------ the run and its report

def run(plan: Plan, sections: str, json_out: Optional[Path]) -> int:
    import torch

    t_start = time.perf_counter()
    results: Dict[str, object] = {"env": environment(), "plan": {**dataclasses.asdict(plan), "out": str(plan.out)}}
    errors: Dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="opsd-gpu-check-") as tmp:
        work = Path(tmp)
        pred = start_prediction(plan, work) if "a" in sections else None
        if "b" in sections:  # first: each row is a fresh process on a GPU nobody else uses yet
            _section("b", errors, lambda: results.__setitem__("loss", run_loss_rows(plan)))
        if "a" in sections or "c" in sections:
            tr = None
            try:
                tr = build_trainer(plan, work)
                results["models"] = meta_models(plan)
                if "a" in sections:
                    _section("a", errors, lambda: results.__setitem__("step", run_full_step(tr, plan)))
                if "c" in sections:
                    _section("c", errors, lambda: results.__setitem__("packing", run_packing(tr, plan)))
            except Exception:  # noqa: BLE001 -- the trainer could not be built: both sections fail
                errors["a/c setup"] = traceback.format_exc(limit=8)
            finally:
                if tr is not None:
                    tr.cleanup()
                    del tr
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
        if pred is not None:
            def finish():
                left = 420 - (time.perf_counter() - t_start)  # the whole check stays within ~8 min
                results["prediction"] = finish_prediction(*pred, timeout=max(60.0, left))
                if "step" in results:
                    results["comparison"] = compare(results["step"], results["prediction"])
            _section("a: prediction", errors, finish)
    results["errors"] = errors
    results["wall_s"] = time.perf_counter() - t_start
    plan.out.parent.mkdir(parents=True, exist_ok=True)
    plan.out.write_text(render(results, sections))
    if json_out:
        json_out.write_text(json.dumps(results, indent=1, default=str))
    failed = f"; errors in {', '.join(errors)}" if errors else ""
    print(f"gpu-check: report {_rel(plan.out)} ({results['wall_s']:.0f} s){failed}")
    return 1 if errors else 0


def _section(name: str, errors: dict, fn: Callable[[], None]) -> None:
    t0 = time.perf_counter()
    print(f"gpu-check: section {name} ...", flush=True)
    try:
        fn()
    except Exception:  # noqa: BLE001 -- recorded in the report; the other sections still run
        errors[name] = traceback.format_exc(limit=8)
        print(errors[name], file=sys.stderr, flush=True)
    print(f"gpu-check: section {name} done in {time.perf_counter() - t0:.0f} s", flush=True)


def _gib(b) -> str:
    return "—" if b is None else f"{b / GiB:.2f}"


def render(res: dict, sections: str) -> str:
    import _common as C

    env, plan = res["env"], res["plan"]
    lines = [f"# GPU check: {env.get('gpu', 'no GPU')} ({datetime.date.today().isoformat()})", "",
             f"`make gpu-check` (bench/gpu_check.py), {res['wall_s']:.0f} s. python {env['python']}, torch "
             f"{env['torch']} (CUDA {env['cuda']}), transformers {env['transformers']}, deepspeed "
             f"{env['deepspeed'] or 'not installed'}, liger-kernel {env['liger_kernel'] or 'not installed'}, "
             f"triton {env['triton'] or 'not installed'}; {env.get('gpus', 0)} GPU(s), "
             f"{env.get('gpu_memory_gib', '?')} GiB each. GiB = 2^30 B.", ""]
    if "step" in res or "comparison" in res or "a" in sections:
        lines += [f"## (a) One OPD step at real shapes vs bench/simulate_memory.py", "",
                  f"{plan['name']}: random weights, bf16, sdpa, gradient checkpointing, ZeRO-{plan['zero_stage']} on "
                  f"one GPU, teacher resident; {plan['seqs']} x ({plan['prompt_len']} prompt + {plan['response_len']} "
                  f"response) = {plan['seqs'] * plan['response_len']:,} response tokens in one micro-batch; "
                  f"V = {plan['tokenizer_len']:,} (heads {plan['student_cfg']['vocab_size']:,} rows); loss "
                  f"reverse KL, fused, chunk {plan['chunk']}; the second of two steps. Peak per phase = "
                  f"max_memory_allocated with the peak reset at the phase's start.", ""]
        if "models" in res:
            m = res["models"]
            lines += [f"Parameters: student {m['student']['params'] / 1e6:,.1f} M, teacher "
                      f"{m['teacher']['params'] / 1e6:,.1f} M.", ""]
        if plan["device"] == "cpu":
            lines += ["(Toy shapes on a CPU, a test of the code: \"measured\" is the process's peak RSS, which the "
                      "simulator's live-tensor bytes do not model.)", ""]
        if "comparison" in res:
            cmp, step, pred = res["comparison"], res["step"], res["prediction"]
            rows = [[r["phase"], _gib(r["measured"]), _gib(r["simulated"]),
                     "—" if r["residual"] is None else f"{100 * r['residual']:+.1f} %"] for r in cmp["rows"]]
            rows.append(["**step peak**", _gib(step["step_peak"]), _gib(pred["peak"]),
                         f"{100 * cmp['residual']:+.1f} %"])
            lines += [C.table(["phase", "measured GiB", "simulated GiB", "simulated vs measured"], rows), "",
                      f"Target |step peak residual| <= {100 * TARGET:.0f} %: **{'met' if cmp['ok'] else 'MISSED'}**. "
                      f"Step time {step['step_time_s']:.2f} s ({step['tokens'] / step['step_time_s']:,.0f} response "
                      f"tokens/s), warm-up step {step['warmup_s']:.1f} s, loss {step['loss']:.4f}; "
                      + (f"max reserved {step['reserved_gib']:.2f} GiB; " if "reserved_gib" in step else "")
                      + f"simulator {pred['seconds']:.0f} s on the CPU.", ""]
        elif "step" in res:
            step = res["step"]
            lines += [C.table(["phase", "measured GiB"], [[k, _gib(v)] for k, v in step["phases"].items()]), "",
                      "(no simulator prediction: see the errors below)", ""]
    if "loss" in res:
        ls = res["plan"]["loss_shape"]
        rows = []
        for r in res["loss"]:
            if r["status"] != "ok":
                rows.append([r["mode"], r["status"], "", "", "", ""])
                continue
            rows.append([r["mode"], f"{r['peak_mb']:,.0f}", "n/a" if r.get("vs_naive_peak") is None else f"{r['vs_naive_peak']:.2f}",
                         f"{r['seconds'] * 1000:,.1f}", f"{r['loss']:.6f}", f"{r.get('loss_diff', float('nan')):.1e}"])
        lines += ["## (b) The loss step (bench/opd_memory.py rows)", "",
                  f"V = {ls['vocab']:,}, student d = {ls['hidden']}, teacher d = {ls['teacher_hidden']}, "
                  f"N = {ls['tokens']:,} tokens, chunk {plan['chunk']}, bf16 hidden states and heads on the GPU; one "
                  "forward + backward per fresh process after a tiny warm-up; peak above the inputs.", "",
                  C.table(["row", "peak MB", "vs naive", "ms", "loss", "|loss - naive|"], rows), ""]
    if "packing" in res:
        p = res["packing"]
        rows = [[mode, r["attention"], r["micro_batches"], f"{100 * r['padding']:.1f} %", f"{r['update_s']:.2f}",
                 f"{r['teacher_s']:.2f}", f"{r['student_s']:.2f}", _gib(r["peak"]), f"{r['loss']:.6f}"]
                for mode, r in p["modes"].items()]
        pad, pack = p["modes"]["padded"], p["modes"]["packed"]
        lines += ["## (c) Packed vs padded (Trainer.update, same rollouts)", "",
                  f"{p['sequences']} sequences, responses median {p['median']:.0f} / longest {p['longest']} tokens "
                  f"(bench/packing.py's long tail, cap {plan['pack_cap']}), {p['response_tokens']:,} response tokens; "
                  f"padded: {plan['pack_mbs']} sequences per micro-batch; packed: budget {p['budget']:,} tokens; "
                  "median "
                  f"of {plan['repeats']} after a warm-up.", "",
                  C.table(["mode", "attention", "micro-batches", "padding", "update s", "teacher s", "student s",
                           "peak GiB", "loss"], rows), "",
                  f"Student part packed / padded: {pack['student_s'] / pad['student_s']:.2f}x; loss relative "
                  f"difference {p['loss_rel_diff']:.1e} (bf16).", ""]
    if res["errors"]:
        lines += ["## Errors", ""]
        for name, tb in res["errors"].items():
            lines += [f"### {name}", "", "```", tb.rstrip(), "```", ""]
    return "\n".join(lines)


# ------------------------------------------------------------------ entry point

def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dry-run", action="store_true", help="validate every step, execute nothing heavy")
    p.add_argument("--wheels", default=os.environ.get("WHEELS") or None,
                   help="folder of wheels to install DeepSpeed from when it is missing (pip --no-index)")
    p.add_argument("--sections", default="abc", help="which of a, b, c to run (default %(default)s)")
    p.add_argument("--out", type=Path, default=None, help="report file (default docs/gpu/<date>-<device>.md)")
    p.add_argument("--json", type=Path, default=None, help="also write the raw results here")
    p.add_argument("--tiny", action="store_true", help="toy shapes (tests; with --device cpu it runs on a CPU)")
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help="cpu only with --tiny")
    p.add_argument("--predict", nargs=2, metavar=("PLAN_JSON", "OUT_JSON"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    for k, v in dict(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", WANDB_MODE="offline",
                     TOKENIZERS_PARALLELISM="false").items():
        os.environ.setdefault(k, v)
    import warnings  # deprecation notices of transformers/torch would bury the check's own lines

    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message="The module hierarchy tracking")
    if args.predict:
        spec = json.loads(Path(args.predict[0]).read_text())
        Path(args.predict[1]).write_text(json.dumps(predict(Plan(**{**spec, "out": Path(spec["out"])}))))
        return 0
    if args.device == "cpu" and not args.tiny:
        p.error("--device cpu needs --tiny (the real shapes are for a GPU)")
    if bad := set(args.sections) - set("abc"):
        p.error(f"--sections: unknown {sorted(bad)}; choose from a, b, c")
    plan = tiny_plan(args.device, args.out or Path(tempfile.gettempdir()) / "gpu-check-tiny.md") if args.tiny \
        else full_plan(args.out)
    if args.dry_run:
        return dry_run(plan, args.wheels)
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print(f"gpu-check: no CUDA device visible to {sys.executable} (torch {torch.__version__}); nothing run "
              "(`make gpu-check DRY_RUN=1` validates the check without one)")
        return 0
    if not ensure_deepspeed(args.wheels, dry_run=False) and set(args.sections) & set("ac"):
        print("gpu-check: DeepSpeed is not importable: sections a and c will fail (give WHEELS=dir of its wheels)",
              flush=True)
    if args.device == "cuda" and args.out is None:
        plan.out = default_report_path(torch.cuda.get_device_name(0))
    return run(plan, args.sections, args.json)


if __name__ == "__main__":
    sys.exit(main())
