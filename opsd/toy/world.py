"""One builder for the toy worlds; each world supplies only its task, rows, SFT batches and evaluation.

The worlds: :mod:`opsd.toy.build` (multi-step arithmetic) and :mod:`opsd.toy.agent_build`
(tool-calling lookups). Built by ``python recipes/toy/world.py --world toy|agent``. Layout of a
built world::

    tokenizer/        char-level HF tokenizer + chat template (the world's ToyTokenizer)
    train.jsonl       the trainer's rows (train split)
    heldout.jsonl     held-out rows (disjoint from train by hash): the evaluation set
    teacher/          Qwen3ForCausalLM + tokenizer, SFT-trained
    student/          Qwen3ForCausalLM + tokenizer, SFT-trained, deliberately weaker
    build_info.json   the held-out evaluation, the TIP quadrants of the student's tokens, sizes,
                      wall time, the config used

Idempotent: the tokenizer and the rows are checked by content, each model and build_info by a
fingerprint; a part is rebuilt only when missing or stale, and written to a temporary name first,
so an interrupted build leaves no half-written part. Both models are trained by plain-torch SFT
with the loss on the assistant tokens only.

Fingerprints hash everything that changes a part and nothing that does not: a model's, the config
fields that decide its SFT (seed, task, its spec, the world's ``model_keys``) and the tokenizer
(vocabulary and chat template); build_info's, every config field and the tokenizer -- but not
``threads``: the results do not depend on it (measured on a 2-core CPU: 40 SFT steps of the
arithmetic student and 15 of the agentic teacher are bitwise equal on 1 and 2 threads; the agentic
world's evaluation, built on 1 thread, reproduces exactly on 2). Parts stamped by the two builders
this one replaced hashed other inputs (:class:`Legacy`); they stay current while their config and
tokenizer are unchanged, so the committed worlds are not rebuilt.
"""
from __future__ import annotations

import hashlib
import json
import math
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch

from opsd.toy.rows import read_json, replace_dir, tmp_dir, write_json, write_splits
from opsd.toy.tokenizer import ToyTokenizer

IGNORE = -100
ROLES = ("teacher", "student")
PARTS = {"tokenizer": "tokenizer", "teacher": "teacher", "student": "student", "train": "train.jsonl",
         "heldout": "heldout.jsonl", "build_info": "build_info.json"}


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
class BuildConfig:
    """What every world's build reads (its fingerprints hash it all); a world's config subclasses
    it, gives the first six fields their defaults and adds its own."""

    task: Any  # the world's task config (a frozen dataclass with validate())
    teacher: ModelSpec
    student: ModelSpec
    n_train: int  # rows in train.jsonl
    no_think_fraction: float  # SFT share rendered with enable_thinking=False (empty think block)
    max_new_tokens: int  # per generation (per assistant turn in the agentic world)
    seed: int = 0
    n_heldout: int = 256  # rows in heldout.jsonl (the evaluation set)
    gen_batch_size: int = 256
    quadrant_batch_size: int = 64  # rollouts per min-max normalization of the quadrants, like a trainer batch
    entropy_threshold: float = 0.5  # on min-max normalized student entropy
    kl_threshold: float = 0.5  # on min-max normalized reverse KL
    evaluate: bool = True
    threads: int = 2  # torch CPU threads (not fingerprinted: the results do not depend on it)


def tiny_specs(batch_size: int) -> Dict[str, ModelSpec]:
    """Teacher and student of a quick world: barely trained, built in seconds (tests, smoke runs)."""
    tiny = dict(layers=1, hidden=32, heads=2, kv_heads=1, intermediate=64, steps=2, batch_size=batch_size,
                warmup_steps=1)
    return {"teacher": ModelSpec(**tiny), "student": ModelSpec(**tiny)}


def digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Legacy:
    """How a world's builder before this one stamped its parts: the same config fields plus
    ``extra`` (the ToyTokenizer fields it hashed, as ``_alphabet`` etc.) and, in build_info's stamp,
    ``threads`` where ``threads``. It did not hash the whole tokenizer, so such a stamp is accepted
    only while the tokenizer is the one that builder used (``tokenizer``: its digest, frozen here)."""

    extra: Tuple[str, ...]
    threads: bool
    tokenizer: str


class ToyWorld:
    """The shared build. A world subclasses it and supplies its name, default folder, tokenizer,
    position limit, legacy stamps, configs, rows, SFT batches, evaluation and summary lines."""

    name: str
    unit: str  # what the held-out set holds: problems, episodes
    default_out: str
    tokenizer: ToyTokenizer
    max_positions: int
    legacy: Optional[Legacy] = None

    # ---- what a world supplies

    def default_config(self) -> BuildConfig:
        raise NotImplementedError

    def quick_config(self) -> BuildConfig:
        raise NotImplementedError

    def validate(self, cfg: BuildConfig) -> None:
        cfg.task.validate()

    def row_lines(self, cfg: BuildConfig) -> Dict[str, List[str]]:
        """The expected lines of train.jsonl and heldout.jsonl."""
        raise NotImplementedError

    def model_keys(self, role: str) -> Tuple[str, ...]:
        """Config fields besides seed, task and the role's spec that decide the role's SFT."""
        raise NotImplementedError

    def sft_batches(self, tok, cfg: BuildConfig, role: str, seed: int) -> Iterator[Dict[str, torch.Tensor]]:
        """Endless right-padded ``input_ids`` / ``labels`` batches (IGNORE outside the targets)."""
        raise NotImplementedError

    def evaluate(self, teacher, student, tok, cfg: BuildConfig, paths: Dict[str, str]):
        """(results, the student's T=1 tokens as :func:`token_batches`)."""
        raise NotImplementedError

    def summary_lines(self, info: Dict[str, Any]) -> List[str]:
        """Lines of the world's own measures, after the accuracies."""
        return []

    # ---- fingerprints

    def fingerprint(self, cfg: BuildConfig, role: Optional[str] = None) -> str:
        """build_info's fingerprint (``role`` None) or the teacher's or student's."""
        return digest({**self._inputs(cfg, role), "_tokenizer": self.tokenizer.identity()})

    def accepted(self, cfg: BuildConfig, role: Optional[str] = None) -> set:
        """The stamps under which a part built for ``cfg`` is current (see :class:`Legacy`)."""
        stamps = {self.fingerprint(cfg, role)}
        old, tok = self.legacy, self.tokenizer
        if old is not None and digest(tok.identity()) == old.tokenizer:
            d = self._inputs(cfg, role)
            if role is None and old.threads:
                d["threads"] = cfg.threads
            values = {"alphabet": tok.alphabet, "pieces": list(tok.pieces), "template": tok.chat_template}
            stamps.add(digest({**d, **{f"_{k}": values[k] for k in old.extra}}))
        return stamps

    def _inputs(self, cfg: BuildConfig, role: Optional[str]) -> dict:
        d = asdict(cfg)
        if role is None:
            return {k: v for k, v in d.items() if k != "threads"}
        return {k: d[k] for k in ("seed", "task", role, *self.model_keys(role))}

    # ---- the parts

    def paths(self, out_dir) -> Dict[str, str]:
        """root, tokenizer, teacher, student, train, heldout, build_info."""
        out = Path(out_dir)
        return {"root": str(out), **{k: str(out / v) for k, v in PARTS.items()}}

    def ensure_tokenizer(self, path: Path):
        from transformers import AutoTokenizer

        try:
            tok = AutoTokenizer.from_pretrained(str(path))
            valid = tok.get_vocab() == self.tokenizer.vocab() and tok.chat_template == self.tokenizer.chat_template
        except Exception:  # any load failure means "rebuild", never "crash the build"
            valid = False
        if not valid:
            tmp = tmp_dir(path)
            self.tokenizer.save(tmp)
            replace_dir(tmp, path)
            tok = AutoTokenizer.from_pretrained(str(path))
        return tok

    def ensure_rows(self, out: Path, cfg: BuildConfig) -> bool:
        """Write train/heldout jsonl unless both already hold exactly the expected lines; True if written."""
        expected = self.row_lines(cfg)
        try:
            if all((out / f"{s}.jsonl").read_text().splitlines() == lines for s, lines in expected.items()):
                return False
        except OSError:
            pass
        write_splits(out, expected)
        return True

    def model_valid(self, path: Path, cfg: BuildConfig, role: str) -> bool:
        info = read_json(path / "sft_info.json")
        return (info is not None and info.get("fingerprint") in self.accepted(cfg, role)
                and (path / "config.json").exists() and (path / "model.safetensors").exists())

    def train_sft(self, tok, cfg: BuildConfig, role: str, callback=None):
        """A freshly initialized model of ``role`` trained by SFT; returns (model, loss EMA, seed)."""
        spec, seed = getattr(cfg, role), cfg.seed + ROLES.index(role)  # the student's: seed + 1
        config = model_config(spec, tok, self.tokenizer.padded_vocab_size(), self.max_positions)
        model, loss = train_sft(role, spec, config, self.sft_batches(tok, cfg, role, seed), seed, callback)
        return model, loss, seed

    def ensure_model(self, path: Path, role: str, tok, cfg: BuildConfig):
        """Load the model at ``path`` or train and save it; returns (model, trained_now)."""
        from transformers import AutoModelForCausalLM

        if self.model_valid(path, cfg, role):
            return AutoModelForCausalLM.from_pretrained(str(path)).eval(), False
        t0 = time.time()
        model, loss, seed = self.train_sft(tok, cfg, role)
        set_generation_defaults(model, tok)
        tmp = tmp_dir(path)
        model.save_pretrained(str(tmp))
        tok.save_pretrained(str(tmp))
        write_json(tmp / "sft_info.json", {
            "fingerprint": self.fingerprint(cfg, role), "spec": asdict(getattr(cfg, role)),
            "seed": seed, "final_loss_ema": loss, "train_s": round(time.time() - t0, 1)})
        replace_dir(tmp, path)
        return model, True

    # ---- the build

    def build(self, out_dir, cfg: Optional[BuildConfig] = None, force: bool = False,
              quadrants: Optional[Callable] = None) -> Dict[str, Any]:
        """Build what is missing or stale under ``out_dir``; returns the build info.

        ``quadrants(batches, entropy_threshold, divergence_threshold) -> dict``: the TIP reading of the
        student's token statistics (``tip_patches.report.quadrant_shares``), kept as build_info's
        ``quadrants``; without it the evaluation has none (opsd never imports tip_patches)."""
        cfg = cfg or self.default_config()
        self.validate(cfg)
        torch.set_num_threads(cfg.threads)
        t0 = time.time()
        out, paths = Path(out_dir), self.paths(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        if force:
            for name in ("tokenizer", *ROLES, "build_info"):
                p = Path(paths[name])
                shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
        tok = self.ensure_tokenizer(Path(paths["tokenizer"]))
        self.ensure_rows(out, cfg)
        teacher, t_new = self.ensure_model(Path(paths["teacher"]), "teacher", tok, cfg)
        student, s_new = self.ensure_model(Path(paths["student"]), "student", tok, cfg)
        info = read_json(Path(paths["build_info"]))
        if not (t_new or s_new) and self.info_current(info, cfg, quadrants):
            return info  # everything present and valid
        info = {"fingerprint": self.fingerprint(cfg), "config": asdict(cfg), "vocab": len(tok),
                "model_vocab_size": self.tokenizer.padded_vocab_size(),
                **{f"{r}_size": model_size(m, Path(paths[r])) for r, m in zip(ROLES, (teacher, student))}}
        if cfg.evaluate:
            results, batches = self.evaluate(teacher, student, tok, cfg, paths)
            info.update(results)
            if quadrants is not None:
                info["quadrants"] = quadrants(batches, cfg.entropy_threshold, cfg.kl_threshold)
        info["build_wall_s"] = round(time.time() - t0, 1)
        write_json(Path(paths["build_info"]), info)
        return info

    def info_current(self, info: Optional[dict], cfg: BuildConfig, quadrants: Optional[Callable]) -> bool:
        """build_info is stamped for ``cfg`` and holds the quadrants where they are asked for."""
        return (info is not None and info.get("fingerprint") in self.accepted(cfg)
                and ("quadrants" in info or quadrants is None or not cfg.evaluate))

    def ensure(self, out_dir=None, cfg: Optional[BuildConfig] = None, quadrants: Optional[Callable] = None):
        """Build the world if needed (see :meth:`build`) and return its :meth:`paths`."""
        out_dir = out_dir or self.default_out
        self.build(out_dir, cfg, quadrants=quadrants)
        return self.paths(out_dir)

    def summary(self, info: Dict[str, Any], extra: Sequence[str] = ()) -> str:
        """Sizes, the world's own lines (its evaluation), ``extra`` lines, wall time."""
        lines = [f"{r}: {info[f'{r}_size']['params']:,} params, {info[f'{r}_size']['disk_mb']} MB" for r in ROLES]
        if "teacher_acc_greedy" in info:
            lines.append(f"held-out accuracy ({info['config']['n_heldout']} {self.unit}): " + " | ".join(
                f"{r} greedy {info[f'{r}_acc_greedy']:.3f}  T=1 {info[f'{r}_acc_t1']:.3f}" for r in ROLES))
            lines += self.summary_lines(info)
        return "\n".join([*lines, *extra, f"build wall time: {info['build_wall_s']} s"])


# ---------------------------------------------------------------------------------------------
# models and SFT


def train_items(rng, pool: Optional[Sequence], sample: Callable, split_of: Callable[[Any], str]) -> Iterator:
    """Endless train-split items (never held-out ones): draws from ``pool`` when there is one (a
    small SFT set seen for many epochs), else fresh ``sample(rng)`` ones."""
    while True:
        item = rng.choice(pool) if pool else sample(rng)
        if split_of(item) == "train":
            yield item


def batches(examples: Iterator[Tuple[List[int], List[int]]], batch_size: int, pad_id: int):
    """Endless right-padded ``input_ids`` / ``labels`` batches of ``(ids, labels)`` examples."""
    while True:
        rows = [next(examples) for _ in range(batch_size)]
        yield {"input_ids": pad_right([r[0] for r in rows], pad_id),  # (B, L)
               "labels": pad_right([r[1] for r in rows], IGNORE)}  # (B, L)


def pad_right(rows: Sequence[Sequence[int]], value: int) -> torch.Tensor:
    width = max(len(r) for r in rows)
    return torch.tensor([list(r) + [value] * (width - len(r)) for r in rows])  # (B, L)


def model_config(spec: ModelSpec, tok, vocab_size: int, max_positions: int):
    from transformers import Qwen3Config

    return Qwen3Config(
        vocab_size=vocab_size, hidden_size=spec.hidden, intermediate_size=spec.intermediate,
        num_hidden_layers=spec.layers, num_attention_heads=spec.heads, num_key_value_heads=spec.kv_heads,
        head_dim=spec.hidden // spec.heads, max_position_embeddings=max_positions,
        tie_word_embeddings=spec.tie_embeddings, rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=None,
    )


def lr_at(step: int, spec: ModelSpec) -> float:
    """Linear warm-up, then cosine from 1 to min_lr_ratio (a multiplier of spec.lr)."""
    if step < spec.warmup_steps:
        return (step + 1) / spec.warmup_steps
    t = (step - spec.warmup_steps) / max(1, spec.steps - spec.warmup_steps)
    return spec.min_lr_ratio + (1 - spec.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t))


def train_sft(name: str, spec: ModelSpec, config, batches: Iterator[Dict[str, torch.Tensor]], seed: int,
              callback=None):
    """A freshly initialized Qwen3ForCausalLM (``config``) trained on ``batches``; returns (model,
    loss EMA). ``callback(step, model)``, if given, runs after every optimizer step (tuning)."""
    from tqdm.auto import tqdm
    from transformers import Qwen3ForCausalLM

    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(config)
    opt = torch.optim.AdamW(model.parameters(), lr=spec.lr, betas=(0.9, 0.98), weight_decay=spec.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_at(s, spec))
    model.train()
    ema = None
    bar = tqdm(range(spec.steps), desc=f"sft {name}", unit="step", mininterval=1.0)
    for step in bar:
        # Right padding + a causal mask: real tokens never see the pads after them, so no
        # attention mask is needed (SDPA's fast is_causal kernel).
        loss = model(**next(batches)).loss  # mean over the target tokens only (labels mask the rest)
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


def model_size(model, path: Path) -> Dict[str, float]:
    return {"params": sum(p.numel() for p in model.parameters()),
            "disk_mb": round(sum(f.stat().st_size for f in path.iterdir() if f.is_file()) / 2**20, 3)}


# ---------------------------------------------------------------------------------------------
# evaluation: generation through opsd's rollout backend, token statistics from opsd's losses


def rollouts(model, tok, cfg: BuildConfig, temperature: float, run):
    """``run(backend, sampling)``: a world's held-out pass through opsd's HF rollout backend, seeded
    with the world's seed (every pass draws the same samples); T = 0 is greedy, T > 0 pure sampling."""
    from opsd.rollout.base import SamplingConfig
    from opsd.rollout.hf import HFGenerateBackend

    torch.manual_seed(cfg.seed)
    sampling = SamplingConfig(temperature=temperature, max_new_tokens=cfg.max_new_tokens, n=1, seed=cfg.seed)
    return run(HFGenerateBackend(model, tok, cfg.gen_batch_size), sampling)


@torch.no_grad()
def response_logits(model, prompt_ids, response_ids, vocab: int) -> torch.Tensor:
    """The logits that predict each response token, all samples concatenated: (N, vocab)."""
    rows = [list(p) + list(r) for p, r in zip(prompt_ids, response_ids)]
    ids = pad_right(rows, 0)  # (B, L); right padding keeps positions 0..len-1 for real tokens
    mask = pad_right([[1] * len(r) for r in rows], 0)
    logits = model(input_ids=ids, attention_mask=mask).logits[..., :vocab].float()  # (B, L, V)
    starts = [len(p) - 1 for p in prompt_ids]  # the position before each response's first token
    return torch.cat([logits[i, s:s + len(r)] for i, (s, r) in enumerate(zip(starts, response_ids))])


def token_batches(student, teacher, rollouts, vocab: int, batch_size: int, group_names=None) -> list:
    """The student's sampled tokens of ``rollouts`` as :class:`opsd.hooks.TokenStats` (student
    entropy, reverse KL to the teacher, ...: the trainer's own statistics, ``opsd.losses``), one per
    ``batch_size`` rollouts -- the unit a trainer batch normalizes over. With ``group_names`` only
    the tokens of ``rollouts.response_mask`` count, grouped by ``rollouts.token_roles``."""
    from opsd.losses import token_stats

    out = []
    for i in range(0, len(rollouts.prompt_ids), batch_size):
        p, r = rollouts.prompt_ids[i:i + batch_size], rollouts.response_ids[i:i + batch_size]
        zs, zt = response_logits(student, p, r, vocab), response_logits(teacher, p, r, vocab)  # (N, V)
        if group_names is None:
            out.append(token_stats(zs, zt))
            continue
        keep = torch.tensor([m for ms in rollouts.response_mask[i:i + batch_size] for m in ms], dtype=torch.bool)
        stats = token_stats(zs[keep], zt[keep])  # (K,) each
        stats.token_group = torch.tensor([x for xs in rollouts.token_roles[i:i + batch_size] for x in xs])[keep]
        stats.group_names = dict(group_names)
        out.append(stats)
    return out
