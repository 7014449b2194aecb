"""A toy teacher with another tokenizer, for cross-tokenizer distillation (:mod:`opsd.xtok`).

The arithmetic world's student is character-level (:mod:`opsd.toy.tokenizer`). This builds a
byte-level BPE tokenizer trained on the world's own text (chat-rendered problems and solutions)
and SFT-trains a teacher with it through the world builder's machinery (:mod:`opsd.toy.world`,
:mod:`opsd.toy.build`). The BPE tokenizer has its control tokens at other ids, another chat
template (``role:`` headers) and multi-character tokens, so nothing lines up by id::

    python -m opsd.toy.xtok_world                       # -> artifacts/toy_xtok/{tokenizer,teacher} (committed;
                                                        #    ~7 min on 2 idle cores when stale)
    python -m opsd.toy.xtok_world --quick --out /tmp/x  # seconds; barely trained (tests)

Idempotent: each part carries a fingerprint of what decides it (the BPE settings, the teacher's
spec, the world config) and is rebuilt only when missing or stale.
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import List

from opsd.toy import tokenizer as toytok
from opsd.toy.build import WORLD, WorldConfig, chat_prompt
from opsd.toy.rows import read_json, replace_dir, tmp_dir, write_json
from opsd.toy.task import make_problems, solution_text
from opsd.toy.world import ModelSpec, digest, model_config, set_generation_defaults, train_sft

# Control tokens in another order than the student's (ids 0..4 differ), no <unk>: byte-level.
SPECIALS = (toytok.EOS, toytok.PAD, toytok.THINK, toytok.END_THINK, toytok.IM_START)
# The teacher's own chat template: Qwen-shaped control tokens, but ``role:`` headers.
TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + ':\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant:\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}"
    "{%- endif %}"
)


@dataclass
class XtokConfig:
    """What decides the BPE teacher (fingerprinted)."""

    vocab_size: int = 160  # BPE merges on top of the world's characters and the control tokens
    corpus: int = 4000  # problems whose rendering trains the BPE
    # the world's char-level teacher's shape (0.996 there), fewer steps: BPE sequences are shorter
    teacher: ModelSpec = field(default_factory=lambda: ModelSpec(
        layers=4, hidden=128, heads=4, kv_heads=2, intermediate=384, steps=700, batch_size=64, lr=3e-3))
    world: WorldConfig = field(default_factory=WorldConfig)


def quick_config() -> XtokConfig:
    tiny = ModelSpec(layers=1, hidden=32, heads=2, kv_heads=1, intermediate=64, steps=2, batch_size=8, warmup_steps=1)
    return XtokConfig(vocab_size=120, corpus=300, teacher=tiny)


def corpus_lines(cfg: XtokConfig) -> List[str]:
    """The text the BPE is trained on: rendered prompts (both chat templates) and solutions."""
    student_tok = toytok.build_tokenizer()
    lines = []
    for p in make_problems(cfg.corpus, cfg.world.seed, "train", cfg.world.task):
        lines += [chat_prompt(student_tok, p.prompt), solution_text(p)]
    return lines


def build_bpe(cfg: XtokConfig):
    """The byte-level BPE tokenizer (a ``PreTrainedTokenizerFast``, in memory)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    # Digits one by one (as Qwen's and Llama's tokenizers do: arithmetic stays learnable by a tiny
    # model), words and whitespace merged; no space added: bytes stay as written.
    backend.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                     pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    backend.decoder = decoders.ByteLevel()
    byte_alphabet = pre_tokenizers.ByteLevel.alphabet()  # every byte has a token: no <unk>
    trainer = trainers.BpeTrainer(vocab_size=cfg.vocab_size + len(byte_alphabet), special_tokens=list(SPECIALS),
                                  initial_alphabet=byte_alphabet, show_progress=False)
    backend.train_from_iterator(corpus_lines(cfg), trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, chat_template=TEMPLATE, pad_token=toytok.PAD, eos_token=toytok.EOS,
        extra_special_tokens=[toytok.IM_START, toytok.THINK, toytok.END_THINK], padding_side="left",
        clean_up_tokenization_spaces=False, model_max_length=512)


def fingerprint(cfg: XtokConfig) -> str:
    """What decides the built pair (the BPE settings, the teacher's spec, the world config, template)."""
    return digest({"cfg": json.loads(json.dumps(asdict(cfg), default=str)), "template": TEMPLATE,
                   "specials": SPECIALS})


def is_fresh(out_dir: str = "artifacts/toy_xtok", cfg: XtokConfig = None) -> bool:
    """The pair under ``out_dir`` was built from ``cfg`` (default: today's) and is complete."""
    info = read_json(Path(out_dir) / "teacher" / "xtok_info.json")
    return (info is not None and info.get("fingerprint") == fingerprint(cfg or XtokConfig())
            and (Path(out_dir) / "teacher" / "model.safetensors").exists())


def build(out_dir: str = "artifacts/toy_xtok", cfg: XtokConfig = None, threads: int = 2) -> dict:
    """``out_dir/tokenizer`` and ``out_dir/teacher`` (BPE tokenizer + SFT teacher); returns the info."""
    import torch

    cfg = cfg or XtokConfig()
    torch.set_num_threads(threads)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fp = fingerprint(cfg)
    tpath, mpath = out / "tokenizer", out / "teacher"
    if is_fresh(out_dir, cfg):
        return read_json(mpath / "xtok_info.json")
    t0 = time.time()
    tok = build_bpe(cfg)
    tmp = tmp_dir(tpath)
    tok.save_pretrained(str(tmp))
    replace_dir(tmp, tpath)
    spec = cfg.teacher
    config = model_config(spec, tok, (len(tok) + 63) // 64 * 64, WORLD.max_positions)
    batches = WORLD.sft_batches(tok, replace(cfg.world, teacher=spec), "teacher", cfg.world.seed)
    model, loss = train_sft("bpe-teacher", spec, config, batches,
                            cfg.world.seed)
    set_generation_defaults(model, tok)
    tmp = tmp_dir(mpath)
    model.save_pretrained(str(tmp))
    tok.save_pretrained(str(tmp))
    info = {"fingerprint": fp, "vocab": len(tok), "final_loss_ema": loss, "train_s": round(time.time() - t0, 1),
            "spec": asdict(spec)}
    write_json(tmp / "xtok_info.json", info)
    replace_dir(tmp, mpath)
    return info


def teacher_accuracy(out_dir: str = "artifacts/toy_xtok", cfg: XtokConfig = None, temperature: float = 0.0) -> float:
    """The BPE teacher's held-out accuracy (its own template; greedy by default), cached in its info."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from opsd.toy.task import reward
    from opsd.toy.world import rollouts

    cfg = cfg or XtokConfig()
    path = Path(out_dir) / "teacher"
    info = read_json(path / "xtok_info.json") or {}
    key = f"teacher_acc_t{temperature:g}"
    if key in info:
        return info[key]
    tok = AutoTokenizer.from_pretrained(str(path))
    model = AutoModelForCausalLM.from_pretrained(str(path)).eval()
    problems = make_problems(cfg.world.n_heldout, cfg.world.seed, "heldout", cfg.world.task)
    prompt_ids = [tok.encode(chat_prompt(tok, p.prompt), add_special_tokens=False) for p in problems]
    ro = rollouts(model, tok, cfg.world, temperature, lambda backend, sampling: backend.generate(prompt_ids, sampling))
    texts = tok.batch_decode(ro.response_ids, skip_special_tokens=True)
    info[key] = sum(map(reward, texts, (p.answer for p in problems))) / max(1, len(problems))
    write_json(path / "xtok_info.json", info)
    return info[key]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="artifacts/toy_xtok")
    ap.add_argument("--quick", action="store_true", help="tiny, barely trained (tests)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    cfg = quick_config() if args.quick else XtokConfig()
    info = build(args.out, cfg, args.threads)
    if not args.quick:
        info["teacher_acc_t0"] = teacher_accuracy(args.out, cfg)
    print(json.dumps(info, indent=1))


if __name__ == "__main__":
    main()
