"""Token inspector: which tokens of real student rollouts fall in which TIP quadrant, and why.

    python -m tip_patches.inspect --student DIR --teacher DIR --prompts FILE.jsonl --out DIR \
        [--n 16] [--max-new-tokens 256] [--examples 3] [--ratio 0.2]

Samples ``--n`` prompts' student rollouts (HF generate), scores every response token with the
teacher (student entropy, reverse KL, forward KL, teacher entropy), and writes to ``--out``:

- ``report.md``: quadrant fractions, and for each quadrant the most typical tokens with their
  context, the student's and the teacher's top-5 next tokens and probabilities, entropy and
  divergences, and whether entropy-only and Soft-OR Top-K would keep them (the paper's App. B.4);
- ``quadrants.png``: normalized entropy vs normalized reverse KL, coloured by quadrant (Fig. 2);
- ``summary.json``: the numbers of the report header.

Works for any HF causal-LM pair sharing a tokenizer (logit widths may differ; both are sliced to
the narrower one). "Most typical" (DECIDE): Q1 ranks by ĥ·δ̂, Q2 by ĥ·(1−δ̂), Q3 by (1−ĥ)·δ̂,
Q4 by (1−ĥ)·(1−δ̂) — the token deepest inside its quadrant comes first.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence

import torch

from opsd.hooks import TokenStats
from tip_patches import quadrants
from tip_patches.scores import minmax, q3_from_normalized, soft_or_from_normalized
from tip_patches.selectors import select

QUADRANT_NAMES = {1: "Q1: high entropy, high divergence", 2: "Q2: high entropy, low divergence",
                  3: "Q3: low entropy, high divergence (overconfident)", 4: "Q4: low entropy, low divergence (solved)"}
COLORS = {1: "tab:red", 2: "tab:orange", 3: "tab:purple", 4: "tab:gray"}


@dataclass
class Scored:
    """Every response token of the batch, flattened (each tensor ``(N,)`` or ``(N, 5)``)."""

    stats: TokenStats
    sample: torch.Tensor  # (N,) which rollout
    position: torch.Tensor  # (N,) index in its response
    token: torch.Tensor  # (N,) the sampled token id
    s_top_p: torch.Tensor  # (N, 5) student top-5 probabilities
    s_top_i: torch.Tensor  # (N, 5)
    t_top_p: torch.Tensor  # (N, 5) teacher top-5
    t_top_i: torch.Tensor  # (N, 5)
    s_tok_p: torch.Tensor  # (N,) student probability of the sampled token
    t_tok_p: torch.Tensor  # (N,) teacher probability of the sampled token


# ------------------------------------------------------------------ inputs

def read_prompts(path: str, n: int, field: str = "prompt") -> List[object]:
    """First ``n`` prompts of a jsonl file: a string under ``field`` or chat ``messages``."""
    out = []
    with open(path) as fh:
        for line_no, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{line_no}: not valid JSON ({e})") from None
            value = row.get(field, row.get("messages")) if isinstance(row, dict) else None
            if not isinstance(value, (str, list)):
                raise ValueError(f"{path}:{line_no}: no string {field!r} or list 'messages' field")
            out.append(value)
            if len(out) == n:
                break
    if not out:
        raise ValueError(f"{path}: no prompts")
    return out


def encode_prompt(tokenizer, prompt) -> List[int]:
    """Chat template when the tokenizer has one, else the raw text."""
    messages = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
    if getattr(tokenizer, "chat_template", None):
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        return list(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids)
    text = prompt if isinstance(prompt, str) else "\n".join(m["content"] for m in prompt)
    return tokenizer(text, add_special_tokens=True)["input_ids"]


def generate(model, tokenizer, prompt_ids: Sequence[Sequence[int]], max_new_tokens: int,
             temperature: float, seed: int, batch_size: int = 8) -> List[List[int]]:
    """Student rollouts: opsd's HF backend when available, else plain ``model.generate``."""
    torch.manual_seed(seed)
    try:
        from opsd.rollout.base import SamplingConfig
        from opsd.rollout.hf import HFGenerateBackend
    except ImportError:
        return _plain_generate(model, tokenizer, prompt_ids, max_new_tokens, temperature)
    backend = HFGenerateBackend(model, tokenizer, batch_size=batch_size)
    sampling = SamplingConfig(temperature=temperature, max_new_tokens=max_new_tokens, n=1, seed=seed)
    return backend.generate(prompt_ids, sampling).response_ids


def _plain_generate(model, tokenizer, prompt_ids, max_new_tokens, temperature) -> List[List[int]]:
    eos = tokenizer.eos_token_id
    out = []
    for p in prompt_ids:  # one at a time: no padding logic needed
        ids = torch.tensor([list(p)], device=model.device)
        seq = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=temperature > 0,
                             temperature=temperature or None, max_new_tokens=max_new_tokens,
                             pad_token_id=tokenizer.pad_token_id or eos)[0, len(p):].tolist()
        out.append(seq[: seq.index(eos) + 1] if eos in seq else seq)
    return out


# ------------------------------------------------------------------ scoring

@torch.no_grad()
def _response_logits(model, ids: List[int], n_prompt: int) -> torch.Tensor:
    """Logits ``(R, V)`` predicting each of the R response tokens."""
    x = torch.tensor([ids], device=model.device)
    return model(input_ids=x).logits[0, n_prompt - 1: len(ids) - 1].float()


def _top5(logits: torch.Tensor):
    p, i = torch.softmax(logits, -1).topk(min(5, logits.shape[-1]), dim=-1)
    return p.cpu(), i.cpu()


@torch.no_grad()
def score_rollouts(student, teacher, prompt_ids, responses, vocab_size: Optional[int] = None,
                   chunk_size: int = 512) -> Scored:
    """Per-token statistics of every response token (``opsd.losses.token_stats``), plus top-5.

    Logits are sliced to ``vocab_size`` (the tokenizer length, as the trainer does) and to the
    narrower model, so padded logit rows never appear."""
    from opsd.losses import token_stats

    parts = {k: [] for k in ("stats", "sample", "position", "token", "sp", "si", "tp", "ti", "sy", "ty")}
    for s, (p, r) in enumerate(zip(prompt_ids, responses)):
        if not r:
            continue
        ids = list(p) + list(r)
        ls, lt = _response_logits(student, ids, len(p)), _response_logits(teacher, ids, len(p))
        v = min(ls.shape[-1], lt.shape[-1], vocab_size or ls.shape[-1])  # padded logit rows dropped
        ls, lt = ls[:, :v], lt[:, :v]
        parts["stats"].append(token_stats(ls, lt, chunk_size))
        for key, (pp, ii) in (("s", _top5(ls)), ("t", _top5(lt))):
            parts[key + "p"].append(pp)
            parts[key + "i"].append(ii)
        parts["sample"].append(torch.full((len(r),), s))
        parts["position"].append(torch.arange(len(r)))
        parts["token"].append(torch.tensor(r))
        y = torch.tensor(r, device=ls.device)[:, None]  # (R, 1); an id past the tokenizer has p = 0
        for key, logits in (("sy", ls), ("ty", lt)):
            p_y = torch.softmax(logits, -1).gather(-1, y.clamp(max=v - 1))[:, 0]
            parts[key].append(torch.where(y[:, 0] < v, p_y, torch.zeros_like(p_y)).cpu())
    if not parts["stats"]:
        raise ValueError("every rollout is empty: nothing to inspect")
    st = parts.pop("stats")
    stats = TokenStats(*(torch.cat([getattr(x, f).cpu() for x in st])
                         for f in ("entropy", "reverse_kl", "forward_kl", "teacher_entropy")))
    c = {k: torch.cat(v) for k, v in parts.items()}
    return Scored(stats, c["sample"], c["position"], c["token"], c["sp"], c["si"], c["tp"], c["ti"], c["sy"], c["ty"])


# ------------------------------------------------------------------ report

def _tok(tokenizer, i: int) -> str:
    """A token as an inline code span that survives Markdown tables."""
    text = tokenizer.decode([int(i)]) or tokenizer.convert_ids_to_tokens(int(i)) or f"<id {int(i)}>"
    text = text.replace("\n", "\\n").replace("\t", "\\t").replace("|", "\\|")
    text = text.replace("`", "'")
    return f"`{text}`" if text.strip() else f"`{text!r}`"


def _context(tokenizer, response: List[int], pos: int, before: int, after: int = 8) -> str:
    left = tokenizer.decode(response[max(0, pos - before): pos])
    mid = tokenizer.decode(response[pos: pos + 1])
    right = tokenizer.decode(response[pos + 1: pos + 1 + after])
    return f"{'…' if pos > before else ''}{left}⟦{mid}⟧{right}…".replace("```", "'''")


def pick_examples(quad: torch.Tensor, h_hat: torch.Tensor, d_hat: torch.Tensor, per_quadrant: int) -> dict:
    """Indices of the most typical tokens per quadrant (module DECIDE)."""
    typical = {1: h_hat * d_hat, 2: h_hat * (1 - d_hat), 3: (1 - h_hat) * d_hat, 4: (1 - h_hat) * (1 - d_hat)}
    out = {}
    for q, score in typical.items():
        idx = (quad == q).nonzero().flatten()
        order = torch.sort(score[idx], descending=True, stable=True).indices[:per_quadrant]
        out[q] = idx[order].tolist()
    return out


def _example_md(tok, sc: Scored, t: int, responses, prompts, h_hat, d_hat, q3, kept: dict, context: int) -> str:
    s, pos = int(sc.sample[t]), int(sc.position[t])
    st = sc.stats
    prompt = prompts[s] if isinstance(prompts[s], str) else prompts[s][-1]["content"]
    prompt = prompt if len(prompt) <= 300 else prompt[:300] + "…"
    lines = [f"**Sample {s}, response token {pos}: {_tok(tok, sc.token[t])}** "
             f"(p_S = {sc.s_tok_p[t]:.3f}, p_T = {sc.t_tok_p[t]:.3f})", "",
             f"Prompt: {prompt!r}", "", "```", _context(tok, responses[s], pos, context), "```", "",
             f"student entropy h = {st.entropy[t]:.4f} (ĥ = {h_hat[t]:.3f}) · reverse KL δ = "
             f"{st.reverse_kl[t]:.4f} (δ̂ = {d_hat[t]:.3f}) · forward KL f = {st.forward_kl[t]:.4f} · "
             f"Q3 score (1−ĥ)·f = {q3[t]:.4f} · teacher entropy = {st.teacher_entropy[t]:.4f}", "",
             "kept by: " + ", ".join(f"{name} {'yes' if k[t] else 'no'}" for name, k in kept.items()), "",
             "| rank | student token | p_S | teacher token | p_T |", "|---|---|---|---|---|"]
    for r in range(sc.s_top_p.shape[1]):
        lines.append(f"| {r + 1} | {_tok(tok, sc.s_top_i[t, r])} | {sc.s_top_p[t, r]:.3f} | "
                     f"{_tok(tok, sc.t_top_i[t, r])} | {sc.t_top_p[t, r]:.3f} |")
    return "\n".join(lines) + "\n"


def write_scatter(path: Path, h_hat, d_hat, quad, th_h: float, th_d: float, max_points: int = 50000) -> None:
    """Figure 2: normalized entropy vs normalized reverse KL, one colour per quadrant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keep = torch.randperm(len(h_hat), generator=torch.Generator().manual_seed(0))[:max_points]
    fig, ax = plt.subplots(figsize=(6, 5))
    for q in (4, 2, 3, 1):  # rare quadrants drawn last, on top
        m = quad[keep] == q
        frac = float((quad == q).float().mean())
        ax.scatter(h_hat[keep][m], d_hat[keep][m], s=6, alpha=0.6, c=COLORS[q], label=f"Q{q} ({frac:.1%})")
    ax.axvline(th_h, color="k", lw=0.8, ls="--")
    ax.axhline(th_d, color="k", lw=0.8, ls="--")
    ax.set(xlabel="normalized student entropy ĥ", ylabel="normalized reverse KL δ̂",
           xlim=(-0.02, 1.02), ylim=(-0.02, 1.02), title=f"TIP quadrants ({len(h_hat)} tokens)")
    handles, labels = ax.get_legend_handles_labels()
    order = sorted(range(len(labels)), key=lambda i: labels[i])  # legend Q1..Q4
    ax.legend([handles[i] for i in order], [labels[i] for i in order], loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(out: Path, tok, sc: Scored, prompts, responses, args) -> dict:
    st = sc.stats
    h_hat, d_hat = minmax(st.entropy), minmax(st.reverse_kl)  # TIP Eq. 5, over the inspected batch
    th_h, th_d = quadrants.thresholds(h_hat, d_hat, args.quadrant_threshold, args.entropy_threshold,
                                      args.divergence_threshold)
    quad = quadrants.classify(h_hat, d_hat, th_h, th_d)
    q3 = q3_from_normalized(h_hat, st.forward_kl)
    kept = {}
    for rule in ("entropy_topk", "soft_or", "q3"):
        mask = torch.zeros(len(quad), dtype=torch.bool)
        mask[select(st, rule, args.ratio).indices] = True
        kept[f"{rule}@{args.ratio:g}"] = mask
    diag = quadrants.diagnostics(st, quad, kept[f"soft_or@{args.ratio:g}"], th_h, th_d)
    summary = {"student": args.student, "teacher": args.teacher, "rollouts": len(responses),
               "tokens": len(quad), **{k.replace("tip/", ""): v for k, v in diag.items()}}
    lines = ["# TIP token inspection", "", f"- student: `{args.student}`", f"- teacher: `{args.teacher}`",
             f"- {len(responses)} rollouts, {len(quad)} response tokens; thresholds "
             f"({args.quadrant_threshold}) ĥ > {th_h:.3f}, δ̂ > {th_d:.3f}",
             f"- mean soft-OR score {float(soft_or_from_normalized(h_hat, d_hat).mean()):.3f}", "",
             "| quadrant | tokens | " + " | ".join(f"kept by {k}" for k in kept) + " |",
             "|---|---|" + "---|" * len(kept)]
    for q in range(1, 5):
        m = quad == q
        shares = " | ".join(f"{float(k[m].float().mean()) if m.any() else 0:.1%}" for k in kept.values())
        lines.append(f"| {QUADRANT_NAMES[q]} | {float(m.float().mean()):.1%} | {shares} |")
    lines += ["", "![quadrants](quadrants.png)", ""]
    for q, idx in pick_examples(quad, h_hat, d_hat, args.examples).items():
        lines += [f"## {QUADRANT_NAMES[q]}", ""]
        lines += [_example_md(tok, sc, t, responses, prompts, h_hat, d_hat, q3, kept, args.context) for t in idx]
        if not idx:
            lines += ["(no token in this quadrant)", ""]
    (out / "report.md").write_text("\n".join(lines))
    write_scatter(out / "quadrants.png", h_hat, d_hat, quad, th_h, th_d)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


# ------------------------------------------------------------------ CLI

def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m tip_patches.inspect", description=__doc__.split("\n\n")[0])
    ap.add_argument("--student", required=True, help="student HF model folder")
    ap.add_argument("--teacher", required=True, help="teacher HF model folder (same tokenizer)")
    ap.add_argument("--prompts", required=True, help="jsonl with a 'prompt' string or 'messages' list per row")
    ap.add_argument("--out", required=True, help="output folder for report.md, quadrants.png, summary.json")
    ap.add_argument("--tokenizer", default=None, help="tokenizer folder (default: the student's)")
    ap.add_argument("--prompt-field", default="prompt")
    ap.add_argument("--n", type=int, default=16, help="prompts (one rollout each)")
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--examples", type=int, default=3, help="example tokens per quadrant")
    ap.add_argument("--context", type=int, default=48, help="response tokens of context before each example")
    ap.add_argument("--ratio", type=float, default=0.2, help="retention ratio of the 'kept by' columns")
    ap.add_argument("--quadrant-threshold", choices=quadrants.THRESHOLD_MODES, default="fixed")
    ap.add_argument("--entropy-threshold", type=float, default=0.5)
    ap.add_argument("--divergence-threshold", type=float, default=0.5)
    ap.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    ap.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    args = ap.parse_args(argv)
    if args.n <= 0 or args.max_new_tokens <= 0:
        ap.error("--n and --max-new-tokens must be > 0")
    if not 0 < args.ratio <= 1:
        ap.error("--ratio must be in (0, 1]")
    return args


def _load(path: str, dtype: str, device: str):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype))
    return model.to(device).eval()


def main(argv: Optional[List[str]] = None) -> dict:
    from transformers import AutoTokenizer

    args = parse_args(argv)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    tok = AutoTokenizer.from_pretrained(args.tokenizer or args.student)
    student, teacher = _load(args.student, args.dtype, device), _load(args.teacher, args.dtype, device)
    prompts = read_prompts(args.prompts, args.n, args.prompt_field)
    prompt_ids = [encode_prompt(tok, p) for p in prompts]
    responses = generate(student, tok, prompt_ids, args.max_new_tokens, args.temperature, args.seed, args.batch_size)
    scored = score_rollouts(student, teacher, prompt_ids, responses, vocab_size=len(tok))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    summary = write_report(out, tok, scored, prompts, responses, args)
    print(f"{summary['tokens']} tokens: " + ", ".join(f"Q{q} {summary[f'q{q}_frac']:.1%}" for q in range(1, 5))
          + f" -> {out / 'report.md'}, {out / 'quadrants.png'}")
    return summary


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
