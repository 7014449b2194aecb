"""Build the embedded default world: tokenizer, prompt files, and a trained teacher and student.

    python -m opsd.toy.build --out artifacts/toy            # 15-45 min on 2 CPU cores (the teacher)
    python -m opsd.toy.build --out /tmp/toy --quick         # seconds; untrained, for tests

Layout of ``--out``::

    tokenizer/        char-level HF tokenizer + chat template (opsd.toy.tokenizer)
    train.jsonl       {"prompt", "answer"} lines: the trainer's prompts (train split)
    heldout.jsonl     256 held-out problems (disjoint from train by hash)
    teacher/          Qwen3ForCausalLM + tokenizer, SFT-trained (4 layers, hidden 128)
    student/          Qwen3ForCausalLM + tokenizer, SFT-trained, deliberately weaker (3 layers, hidden 96, SFT cut short)
    build_info.json   accuracies, TIP quadrant fractions, wall time, the config used

Idempotent: each part is checked (content or config fingerprint) and rebuilt only when missing or
stale; each is written to a temporary name and renamed, so an interrupted build leaves no
half-written part. Both models are trained by plain-torch SFT on chat-formatted (prompt, solution)
pairs with the loss on the assistant tokens only (response + ``<|im_end|>``).
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import random
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence

import torch

from opsd.toy import tokenizer as toytok
from opsd.toy.task import Problem, TaskConfig, make_problems, sample_problem, solution_text, split_of, write_prompt_files

IGNORE = -100


@dataclass
class ModelSpec:
    """Architecture and SFT schedule of one toy model."""

    layers: int
    hidden: int
    heads: int
    kv_heads: int
    intermediate: int
    tie_embeddings: bool = True
    steps: int = 600  # optimizer steps
    batch_size: int = 64
    lr: float = 3e-3  # peak; linear warm-up then cosine to lr * min_lr_ratio
    warmup_steps: int = 30
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.01
    sft_pool: Optional[int] = None  # distinct SFT problems (cycled for many epochs); None = fresh every batch


@dataclass
class WorldConfig:
    """Everything that decides the built world (its fingerprint keys the cached parts)."""

    seed: int = 0
    task: TaskConfig = field(default_factory=TaskConfig)
    n_train: int = 4096  # prompts in train.jsonl
    n_heldout: int = 256  # prompts in heldout.jsonl (the evaluation set)
    teacher: ModelSpec = field(default_factory=lambda: ModelSpec(
        layers=4, hidden=128, heads=4, kv_heads=2, intermediate=384, steps=900, lr=3e-3))
    # The student has room to learn arithmetic (3L d96, 330k params) but its SFT stops mid-learning-curve
    # (constant lr, no anneal): greedy ~0.38, so OPD has a gap to close (~60% in 100 steps at lr 1e-3).
    # The 2L d64 student of before barely moved under OPD (0.13 -> 0.15) and collapsed at higher lr.
    student: ModelSpec = field(default_factory=lambda: ModelSpec(
        layers=3, hidden=96, heads=3, kv_heads=1, intermediate=288, steps=350, lr=3e-3, min_lr_ratio=1.0))
    no_think_fraction: float = 0.25  # SFT share rendered with enable_thinking=False (empty think block)
    max_new_tokens: int = 64
    gen_batch_size: int = 256
    quadrant_batch_size: int = 64  # rollouts per min-max normalization, like a trainer batch
    entropy_threshold: float = 0.5  # on min-max normalized student entropy
    kl_threshold: float = 0.5  # on min-max normalized reverse KL
    evaluate: bool = True
    threads: int = 2

    def fingerprint(self, *keys: str) -> str:
        """Hash of the named fields (all when none) plus the tokenizer alphabet."""
        d = asdict(self)
        d = {k: d[k] for k in keys} if keys else d
        d["_alphabet"] = toytok.ALPHABET
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def quick_config() -> WorldConfig:
    """A tiny, barely trained world that builds in seconds (tests, smoke runs)."""
    tiny = dict(layers=1, hidden=32, heads=2, kv_heads=1, intermediate=64, steps=2, batch_size=8, warmup_steps=1)
    return WorldConfig(n_train=64, n_heldout=8, teacher=ModelSpec(**tiny), student=ModelSpec(**tiny),
                       max_new_tokens=8, quadrant_batch_size=4)


# ---------------------------------------------------------------------------------------------
# chat formatting


def chat_prompt(tok, prompt: str, enable_thinking: Optional[bool] = None) -> str:
    """The generation prompt of one user message, rendered by the tokenizer's chat template."""
    kw = {} if enable_thinking is None else {"enable_thinking": enable_thinking}
    return tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                   add_generation_prompt=True, **kw)


def sft_example(tok, problem: Problem, no_think: bool):
    """(input_ids, labels) for one SFT pair; labels are IGNORE outside the assistant answer."""
    prompt_ids = tok.encode(chat_prompt(tok, problem.prompt, False if no_think else None), add_special_tokens=False)
    answer_ids = tok.encode(solution_text(problem) + toytok.EOS, add_special_tokens=False)
    return prompt_ids + answer_ids, [IGNORE] * len(prompt_ids) + answer_ids


def pad_right(rows: Sequence[Sequence[int]], value: int) -> torch.Tensor:
    width = max(len(r) for r in rows)
    return torch.tensor([list(r) + [value] * (width - len(r)) for r in rows])  # (B, L)


def sft_batches(tok, cfg: WorldConfig, spec: ModelSpec, seed: int) -> Iterator[Dict[str, torch.Tensor]]:
    """Endless right-padded batches of train-split problems (never held-out ones): fresh ones, or
    draws from a fixed pool of ``spec.sft_pool`` problems (a small SFT set seen for many epochs)."""
    rng = random.Random(f"sft-{seed}")
    pool = make_problems(spec.sft_pool, seed, "train", cfg.task) if spec.sft_pool else None
    while True:
        rows = []
        while len(rows) < spec.batch_size:
            p = rng.choice(pool) if pool else sample_problem(rng, cfg.task)
            if split_of(p, cfg.task) == "train":
                rows.append(sft_example(tok, p, rng.random() < cfg.no_think_fraction))
        ids = pad_right([r[0] for r in rows], tok.pad_token_id)  # (B, L)
        yield {"input_ids": ids, "attention_mask": (pad_right([[1] * len(r[0]) for r in rows], 0)),
               "labels": pad_right([r[1] for r in rows], IGNORE)}


# ---------------------------------------------------------------------------------------------
# models


def model_config(spec: ModelSpec, tok):
    from transformers import Qwen3Config

    return Qwen3Config(
        vocab_size=toytok.padded_vocab_size(), hidden_size=spec.hidden, intermediate_size=spec.intermediate,
        num_hidden_layers=spec.layers, num_attention_heads=spec.heads, num_key_value_heads=spec.kv_heads,
        head_dim=spec.hidden // spec.heads, max_position_embeddings=256, tie_word_embeddings=spec.tie_embeddings,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=None,
    )


def lr_at(step: int, spec: ModelSpec) -> float:
    """Linear warm-up, then cosine from 1 to min_lr_ratio (a multiplier of spec.lr)."""
    if step < spec.warmup_steps:
        return (step + 1) / spec.warmup_steps
    t = (step - spec.warmup_steps) / max(1, spec.steps - spec.warmup_steps)
    return spec.min_lr_ratio + (1 - spec.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t))


def train_sft(name: str, spec: ModelSpec, tok, cfg: WorldConfig, seed: int, callback=None):
    """A freshly initialized Qwen3ForCausalLM trained by SFT; returns (model, final_loss).

    ``callback(step, model)``, if given, runs after every optimizer step (tuning experiments).
    """
    from tqdm.auto import tqdm
    from transformers import Qwen3ForCausalLM

    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(model_config(spec, tok))
    opt = torch.optim.AdamW(model.parameters(), lr=spec.lr, betas=(0.9, 0.98), weight_decay=spec.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_at(s, spec))
    batches = sft_batches(tok, cfg, spec, seed)
    model.train()
    ema = None
    bar = tqdm(range(spec.steps), desc=f"sft {name}", unit="step", mininterval=1.0)
    for step in bar:
        batch = next(batches)
        # Right padding + a causal mask: real tokens never see the pads after them, so the
        # attention mask can be dropped, which selects SDPA's fast is_causal kernel.
        batch.pop("attention_mask")
        loss = model(**batch).loss  # mean over assistant tokens only (labels mask the rest)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        ema = loss.item() if ema is None else 0.95 * ema + 0.05 * loss.item()
        bar.set_postfix(loss=f"{ema:.3f}", refresh=False)
        if callback is not None:
            callback(step + 1, model)
    model.eval()
    return model, ema


def set_generation_defaults(model, tok) -> None:
    """Saved generation config: pure sampling at T=1 (top_k=0 disables HF's default top-50)."""
    gc = model.generation_config
    gc.eos_token_id, gc.pad_token_id, gc.bos_token_id = tok.eos_token_id, tok.pad_token_id, None
    gc.do_sample, gc.temperature, gc.top_p, gc.top_k = True, 1.0, 1.0, 0
    gc.max_new_tokens = 64


# ---------------------------------------------------------------------------------------------
# generation and scoring (a small local helper; the trainer's backend lives in opsd/rollout)


@torch.no_grad()
def generate(model, tok, prompts: Sequence[str], temperature: float, max_new_tokens: int,
             batch_size: int, seed: int):
    """Chat-formatted, left-padded batched ``model.generate``; returns (prompt_ids, response_ids).

    ``response_ids[i]`` stops at (and includes) the first EOS, like ``opsd.rollout.base.Rollouts``.
    temperature 0 = greedy.
    """
    torch.manual_seed(seed)
    prompt_ids = [tok.encode(chat_prompt(tok, p), add_special_tokens=False) for p in prompts]
    responses: List[List[int]] = []
    # top_k=0 overrides HF's default top-50, so T=1 is pure sampling from the policy.
    sampling = dict(do_sample=True, temperature=temperature, top_p=1.0, top_k=0) if temperature > 0 \
        else dict(do_sample=False)
    for i in range(0, len(prompts), batch_size):
        chunk = prompt_ids[i:i + batch_size]
        enc = tok.pad({"input_ids": chunk}, padding=True, padding_side="left", return_tensors="pt")
        out = model.generate(**enc, max_new_tokens=max_new_tokens, pad_token_id=tok.pad_token_id,
                             eos_token_id=tok.eos_token_id, **sampling)  # (B, P + T)
        for row in out[:, enc["input_ids"].shape[1]:].tolist():
            cut = row.index(tok.eos_token_id) + 1 if tok.eos_token_id in row else len(row)
            responses.append(row[:cut])
    return prompt_ids, responses


def decode_responses(tok, responses: Sequence[Sequence[int]]) -> List[str]:
    return tok.batch_decode(responses, skip_special_tokens=True)


@torch.no_grad()
def response_logprobs(model, prompt_ids, response_ids, vocab: int) -> List[torch.Tensor]:
    """Per sample, log-probs at the positions that predict its response tokens: (T_i, vocab)."""
    rows = [list(p) + list(r) for p, r in zip(prompt_ids, response_ids)]
    ids = pad_right(rows, 0)  # (B, L); right padding keeps positions 0..len-1 for real tokens
    mask = pad_right([[1] * len(r) for r in rows], 0)
    logits = model(input_ids=ids, attention_mask=mask).logits[..., :vocab].float()  # (B, L, V)
    logp = torch.log_softmax(logits, dim=-1)
    return [logp[i, len(p) - 1:len(p) - 1 + len(r)] for i, (p, r) in enumerate(zip(prompt_ids, response_ids))]


def minmax(x: torch.Tensor) -> torch.Tensor:
    """Min-max to [0, 1] (TIP Eq. 5); a constant batch maps to 0, never NaN."""
    span = x.max() - x.min()
    return torch.zeros_like(x) if span <= 0 else (x - x.min()) / span


def quadrant_fractions(student, teacher, prompt_ids, response_ids, vocab: int, cfg: WorldConfig) -> Dict[str, float]:
    """TIP quadrants of student rollout tokens (Table 1): Q1 h high/d high, Q2 h high/d low,
    Q3 h low/d high (confident mistakes), Q4 both low; h = student entropy, d = reverse KL to the
    teacher, each min-max normalized per batch of ``quadrant_batch_size`` rollouts."""
    counts = torch.zeros(4)
    kl_sum, n_tok = 0.0, 0
    for i in range(0, len(prompt_ids), cfg.quadrant_batch_size):
        p, r = prompt_ids[i:i + cfg.quadrant_batch_size], response_ids[i:i + cfg.quadrant_batch_size]
        ls = torch.cat(response_logprobs(student, p, r, vocab))  # (N, V)
        lt = torch.cat(response_logprobs(teacher, p, r, vocab))  # (N, V)
        entropy = -(ls.exp() * ls).sum(-1)  # (N,)  TIP Eq. 2
        rkl = (ls.exp() * (ls - lt)).sum(-1)  # (N,)  KL(pi_S || pi_T), TIP Eq. 1
        hi_h, hi_d = minmax(entropy) >= cfg.entropy_threshold, minmax(rkl) > cfg.kl_threshold
        counts += torch.stack([(hi_h & hi_d).sum(), (hi_h & ~hi_d).sum(), (~hi_h & hi_d).sum(),
                               (~hi_h & ~hi_d).sum()]).float()
        kl_sum, n_tok = kl_sum + rkl.sum().item(), n_tok + rkl.numel()
    fr = (counts / counts.sum().clamp(min=1)).tolist()
    return {"Q1": fr[0], "Q2": fr[1], "Q3": fr[2], "Q4": fr[3], "mean_reverse_kl": kl_sum / max(1, n_tok),
            "tokens": n_tok}


def accuracy(tok, responses, problems: Sequence[Problem]) -> float:
    from opsd.toy.task import reward

    texts = decode_responses(tok, responses)
    return sum(reward(t, p.answer) for t, p in zip(texts, problems)) / max(1, len(problems))


def evaluate_world(teacher, student, tok, cfg: WorldConfig, problems: Sequence[Problem]) -> Dict[str, object]:
    """Held-out accuracies (greedy and T=1) and the TIP quadrants of the student's T=1 rollouts."""
    prompts = [p.prompt for p in problems]
    gen = dict(max_new_tokens=cfg.max_new_tokens, batch_size=cfg.gen_batch_size, seed=cfg.seed)
    res: Dict[str, object] = {}
    for name, model in (("teacher", teacher), ("student", student)):
        for label, temp in (("greedy", 0.0), ("t1", 1.0)):
            pids, rids = generate(model, tok, prompts, temp, **gen)
            res[f"{name}_acc_{label}"] = accuracy(tok, rids, problems)
            if name == "student" and label == "t1":
                student_rollouts = (pids, rids)
                res["student_t1_examples"] = decode_responses(tok, rids[:4])
    res["quadrants"] = quadrant_fractions(student, teacher, *student_rollouts, len(tok), cfg)
    return res


# ---------------------------------------------------------------------------------------------
# the build: each part checked, built when missing or stale, written atomically


def _replace_dir(tmp: Path, final: Path) -> None:
    """Swap a finished temporary folder into place (the old one is only removed once the new
    one is complete)."""
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)


def _write_json(path: Path, obj) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)


def _read_json(path: Path) -> Optional[dict]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def tokenizer_valid(path: Path) -> bool:
    try:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(path))
    except Exception:  # any load failure means "rebuild", never "crash the build"
        return False
    return tok.get_vocab() == toytok.vocab() and tok.chat_template == toytok.CHAT_TEMPLATE


def ensure_tokenizer(path: Path):
    from transformers import AutoTokenizer

    if not tokenizer_valid(path):
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        toytok.save_tokenizer(tmp)
        _replace_dir(tmp, path)
    return AutoTokenizer.from_pretrained(str(path))


def ensure_prompts(out: Path, cfg: WorldConfig) -> bool:
    """Write train/heldout jsonl unless both already hold exactly the expected lines; True if written."""
    expected = {split: [json.dumps({"prompt": p.prompt, "answer": p.answer})
                        for p in make_problems(n, cfg.seed, split, cfg.task)]
                for split, n in (("train", cfg.n_train), ("heldout", cfg.n_heldout))}
    try:
        if all((out / f"{s}.jsonl").read_text().splitlines() == lines for s, lines in expected.items()):
            return False
    except OSError:
        pass
    write_prompt_files(out, cfg.n_train, cfg.n_heldout, cfg.seed, cfg.task)
    return True


def model_fingerprint(cfg: WorldConfig, role: str) -> str:
    return cfg.fingerprint("seed", "task", role, "no_think_fraction")


def model_valid(path: Path, fingerprint: str) -> bool:
    info = _read_json(path / "sft_info.json")
    return (info is not None and info.get("fingerprint") == fingerprint
            and (path / "config.json").exists() and (path / "model.safetensors").exists())


def ensure_model(path: Path, role: str, tok, cfg: WorldConfig):
    """Load the model at ``path`` or train and save it; returns (model, trained_now)."""
    from transformers import AutoModelForCausalLM

    fp = model_fingerprint(cfg, role)
    if model_valid(path, fp):
        return AutoModelForCausalLM.from_pretrained(str(path)).eval(), False
    spec: ModelSpec = getattr(cfg, role)
    seed = cfg.seed + (0 if role == "teacher" else 1)
    t0 = time.time()
    model, loss = train_sft(role, spec, tok, cfg, seed)
    set_generation_defaults(model, tok)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    model.save_pretrained(str(tmp))
    tok.save_pretrained(str(tmp))
    _write_json(tmp / "sft_info.json", {"fingerprint": fp, "spec": asdict(spec), "seed": seed,
                                        "final_loss_ema": loss, "train_s": round(time.time() - t0, 1)})
    _replace_dir(tmp, path)
    return model, True


def model_size(model, path: Path) -> Dict[str, float]:
    return {"params": sum(p.numel() for p in model.parameters()),
            "disk_mb": round(sum(f.stat().st_size for f in path.iterdir() if f.is_file()) / 2**20, 3)}


def world_paths(out_dir) -> Dict[str, str]:
    out = Path(out_dir)
    names = {"tokenizer": "tokenizer", "teacher": "teacher", "student": "student", "train": "train.jsonl",
             "heldout": "heldout.jsonl", "build_info": "build_info.json"}
    return {"root": str(out), **{k: str(out / v) for k, v in names.items()}}


def build(out_dir, cfg: Optional[WorldConfig] = None, force: bool = False) -> Dict[str, object]:
    """Build what is missing or stale under ``out_dir``; returns the build info."""
    from opsd.toy.task import reward  # noqa: F401  (fail early if the task module is broken)

    cfg = cfg or WorldConfig()
    cfg.task.validate()
    torch.set_num_threads(cfg.threads)
    t0 = time.time()
    out, paths = Path(out_dir), world_paths(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if force:
        for name in ("tokenizer", "teacher", "student", "build_info"):
            p = Path(paths[name])
            shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
    tok = ensure_tokenizer(Path(paths["tokenizer"]))
    ensure_prompts(out, cfg)
    teacher, t_new = ensure_model(Path(paths["teacher"]), "teacher", tok, cfg)
    student, s_new = ensure_model(Path(paths["student"]), "student", tok, cfg)
    info = _read_json(Path(paths["build_info"]))
    if info is not None and info.get("fingerprint") == cfg.fingerprint() and not (t_new or s_new):
        return info  # everything present and valid
    info = {"fingerprint": cfg.fingerprint(), "config": asdict(cfg), "vocab": len(tok),
            "model_vocab_size": toytok.padded_vocab_size(),
            "teacher_size": model_size(teacher, Path(paths["teacher"])),
            "student_size": model_size(student, Path(paths["student"]))}
    if cfg.evaluate:
        heldout = make_problems(cfg.n_heldout, cfg.seed, "heldout", cfg.task)
        info.update(evaluate_world(teacher, student, tok, cfg, heldout))
    info["build_wall_s"] = round(time.time() - t0, 1)
    _write_json(Path(paths["build_info"]), info)
    return info


def ensure_world(out_dir="artifacts/toy", cfg: Optional[WorldConfig] = None) -> Dict[str, str]:
    """Build the world if needed (see :func:`build`) and return its paths: root, tokenizer,
    teacher, student, train, heldout, build_info."""
    build(out_dir, cfg)
    return world_paths(out_dir)


def summary(info: Dict[str, object]) -> str:
    lines = [f"teacher: {info['teacher_size']['params']:,} params, {info['teacher_size']['disk_mb']} MB",
             f"student: {info['student_size']['params']:,} params, {info['student_size']['disk_mb']} MB"]
    if "quadrants" in info:
        q = info["quadrants"]
        lines += [f"held-out accuracy ({info['config']['n_heldout']} problems): "
                  f"teacher greedy {info['teacher_acc_greedy']:.3f}  T=1 {info['teacher_acc_t1']:.3f} | "
                  f"student greedy {info['student_acc_greedy']:.3f}  T=1 {info['student_acc_t1']:.3f}",
                  f"TIP quadrants of student T=1 tokens ({q['tokens']} tokens; normalized entropy >= "
                  f"{info['config']['entropy_threshold']} / reverse KL > {info['config']['kl_threshold']}): "
                  f"Q1 {q['Q1']:.3f}  Q2 {q['Q2']:.3f}  Q3 {q['Q3']:.3f} (confident mistakes)  Q4 {q['Q4']:.3f}"]
    lines.append(f"build wall time: {info['build_wall_s']} s")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="artifacts/toy", help="output folder (default: artifacts/toy)")
    ap.add_argument("--quick", action="store_true", help="tiny untrained world in seconds (tests, smoke runs)")
    ap.add_argument("--force", action="store_true", help="rebuild every part, even valid ones")
    ap.add_argument("--seed", type=int, default=None, help="world seed (default 0)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default 2)")
    ap.add_argument("--no-eval", action="store_true", help="skip the held-out evaluation and quadrants")
    args = ap.parse_args(argv)
    cfg = quick_config() if args.quick else WorldConfig()
    cfg = dataclasses.replace(cfg, **{k: v for k, v in (("seed", args.seed), ("threads", args.threads))
                                      if v is not None}, evaluate=not args.no_eval)
    info = build(args.out, cfg, force=args.force)
    print(f"world at {args.out}")
    print(summary(info))


if __name__ == "__main__":
    main()
