"""Error of the top-k teacher (``loss.teacher_topk=k``) against the exact full-vocabulary teacher.

    python bench/topk_teacher_error.py --world artifacts/toy            # toy world + synthetic V=151,936
    python bench/topk_teacher_error.py --world artifacts/toy --ks 16,64,256 --json out.json

Two cases, the same measurements:

1. **toy** (the embedded default, ``python recipes/toy/world.py --world toy --out DIR``): student rollouts
   (T = 1, as ``recipes/toy/opd.yaml``) on held-out prompts, scored by the trained teacher through
   :class:`opsd.teacher.Teacher` exactly as the trainer does: ``topk=None`` gives the exact source
   (hidden states -> full-vocabulary logits), ``topk=k`` the :class:`opsd.losses.TeacherTopK`
   (top-k log-probs + one tail bucket). Its vocabulary is tiny, so k >= V is exact up to the
   tail-bucket clamp; it checks the plumbing more than the approximation.
2. **synthetic** at V = 151,936 (Qwen's logit width): teacher and student logits ``h @ W.T`` with a
   shared random head ``W (V, d)``: temperature-scaled Gaussian noise on every logit plus two
   candidate tokens per position (the teacher's favourite and runner-up); the student picks the
   teacher's favourite 90 % of the time (``--agree``), else its runner-up, is less sure, and its
   noise has correlation 0.9 with the teacher's (``--noise-corr``); see :func:`synthetic_case`.
   Regime ``peaked``: 80 % confident positions and 20 % forks, as LLM teachers on reasoning
   traces; ``flat``: 60 % forks and lower margins, a stress test. The measured entropy
   distribution and the teacher's mass inside its top-k are printed with each table: the error
   depends on them more than on the generator. (Gaussian tails are wide; a real LM's Zipf-like
   tail likely puts more of its mass inside the top-k, so read the tables by that column.)

Per case and k (statistics via :func:`opsd.losses.stats_from_sources`, the trainer's stats pass;
the loss and gradient via :func:`opsd.losses.selected_loss_sum`, the trainer's grad pass, on all
tokens, i.e. the default hook):

- per-token reverse KL(S||T), forward KL(T||S), JSD(beta=0.5): mean and max absolute error, and the
  relative error ``sum |d_k - d| / sum d`` over tokens (bucketing can only lower a divergence);
- TIP: overlap of the tokens ``tip_patches.select(stats, "soft_or", ratio)`` keeps (exact vs top-k),
  per micro-batch as the hook runs; Spearman correlation of the Soft-OR scores; the same overlap
  for the Q3 rule (which ranks by forward KL);
- the token-mean loss of each ``loss.type``: relative difference, and the cosine between the exact
  and top-k gradients (w.r.t. the student's last hidden states and LM head).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Dict, List

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from opsd.losses import (HiddenLogits, TeacherTopK, _teacher_chunk, divergence,  # noqa: E402
                         selected_loss_sum, stats_from_sources)

LOSS_TYPES = ("reverse_kl", "forward_kl", "jsd")


# ------------------------------------------------------------------ cases: lists of micro-batches

class MicroBatch:
    """One micro-batch: the student's last hidden states ``(N, d)`` and head ``(V_pad, d)``, the exact
    teacher source and a function ``k -> TeacherTopK``."""

    def __init__(self, hidden, weight, vocab_size, teacher_exact, teacher_topk):
        self.hidden, self.weight, self.vocab_size = hidden, weight, vocab_size
        self.teacher_exact, self.teacher_topk = teacher_exact, teacher_topk

    def student(self) -> HiddenLogits:
        return HiddenLogits(self.hidden, self.weight, self.vocab_size)


def toy_case(world: Path, n_prompts: int, n: int, max_new_tokens: int, micro_batch: int, temperature: float,
             seed: int, chunk: int):
    """Student rollouts on held-out prompts of a built toy world, scored by :class:`opsd.teacher.Teacher`."""
    from opsd import models
    from opsd.batching import build_sequences
    from opsd.data import PromptDataset
    from opsd.losses import align_vocab
    from opsd.rollout import SamplingConfig
    from opsd.rollout.hf import HFGenerateBackend
    from opsd.teacher import Teacher

    tok = models.load_tokenizer(str(world / "student"))
    student, teacher_model = models.load_causal_lm(str(world / "student")), models.load_causal_lm(str(world / "teacher"))
    vocab = align_vocab(student.get_output_embeddings().weight.shape[0],
                        teacher_model.get_output_embeddings().weight.shape[0], len(tok))
    data = PromptDataset.from_files([str(world / "heldout.jsonl")], tok, 512)
    prompts = [data[i]["prompt_ids"] for i in range(min(n_prompts, len(data)))]
    torch.manual_seed(seed)
    roll = HFGenerateBackend(student, tok, batch_size=64).generate(
        prompts, SamplingConfig(temperature=temperature, max_new_tokens=max_new_tokens, n=n, seed=seed))
    seq = build_sequences(roll.prompt_ids, roll.response_ids, tok.pad_token_id, tok.eos_token_id)
    cpu = torch.device("cpu")
    exact = Teacher(teacher_model, cpu, "resident", topk=None, chunk_size=chunk)
    weight = student.get_output_embeddings().weight.detach().clone()  # (V_pad, d), shared by all micro-batches
    mbs = []
    for s in range(0, len(roll), micro_batch):
        ids, att, mask = (seq[k][s:s + micro_batch] for k in ("input_ids", "attention_mask", "loss_mask"))
        if not mask.any():
            continue
        with torch.no_grad():
            hidden = student.base_model(input_ids=ids, attention_mask=att).last_hidden_state[mask.bool()]

        def topk(k, ids=ids, att=att, mask=mask):  # the trainer's path with loss.teacher_topk=k
            return Teacher(teacher_model, cpu, "resident", topk=k, chunk_size=chunk).score(ids, att, mask, vocab)

        mbs.append(MicroBatch(hidden, weight, vocab, exact.score(ids, att, mask, vocab), topk))
    info = {"sequences": len(roll), "prompts": len(prompts), "vocab": vocab,
            "head_width": int(weight.shape[0]), "micro_batch": micro_batch}
    return mbs, info


# Per regime: share of "fork" positions, and the mean peak margin m (nats) of confident and fork
# positions for the teacher; the student is less sure (margins lower by STUDENT_SHIFT on average).
REGIMES = {"peaked": (0.2, 7.0, 0.0), "flat": (0.6, 4.0, -2.0)}
STUDENT_SHIFT = 1.5
PEAK_TOKENS = 64  # tokens that can be a position's candidate (their logits are free coordinates of h)


def synthetic_case(rows: int, vocab: int, d: int, regime: str, seed: int, chunk: int,
                   agree: float = 0.9, noise_corr: float = 0.9):
    """Random teacher/student logits ``h @ W.T`` at a real vocabulary size (module docstring).

    Each position has two candidate tokens A (the teacher's favourite) and B (its runner-up).
    Logit of token i: ``noise_i + c * [i == fav] + (c - gap) * [i == other]`` with noise
    ``N(0, tau^2)``, tau ~ U(1, 3) (the temperature), and a margin ``c = ln V + tau^2 / 2 + m`` that
    puts the favourite's probability near ``sigmoid(m)`` against the rest of the vocabulary;
    m ~ N(mu, 2) with mu from REGIMES (confident positions vs forks), gap ~ U(0.5, 6). The student's
    favourite is A with probability ``agree`` (else B: a confident mistake the teacher still
    ranks second); its margin is lower by STUDENT_SHIFT on average, its noise has correlation
    ``noise_corr`` with the teacher's (related models rank the tail alike). The head is structured
    so the candidates do not leak into other logits: the first PEAK_TOKENS rows of ``W`` are unit
    vectors on their own coordinates of ``h``, the other rows Gaussian on the remaining ones."""
    if d <= PEAK_TOKENS or vocab <= PEAK_TOKENS:
        raise ValueError(f"--hidden and --vocab must exceed {PEAK_TOKENS}")
    g = torch.Generator().manual_seed(seed)
    fork_share, mu_conf, mu_fork = REGIMES[regime]
    rest = d - PEAK_TOKENS
    w = torch.zeros(vocab, d)  # (V, d)
    w[:PEAK_TOKENS, :PEAK_TOKENS] = torch.eye(PEAK_TOKENS)
    w[PEAK_TOKENS:, PEAK_TOKENS:] = torch.randn(vocab - PEAK_TOKENS, rest, generator=g) / math.sqrt(rest)

    def noise():  # (rows, d) hidden whose logits are N(0, 1) on every token
        b = torch.randn(rows, rest, generator=g)
        return torch.cat([torch.randn(rows, PEAK_TOKENS, generator=g),
                          b / b.norm(dim=-1, keepdim=True) * math.sqrt(rest)], dim=-1)

    def uniform(lo, hi):
        return lo + (hi - lo) * torch.rand(rows, generator=g)

    fork = torch.rand(rows, generator=g) < fork_share
    m_t = torch.where(fork, torch.full((rows,), mu_fork), torch.full((rows,), mu_conf)) + 2 * torch.randn(rows, generator=g)
    m_s = m_t - STUDENT_SHIFT + 1.5 * torch.randn(rows, generator=g)
    tau_t = uniform(1.0, 3.0)
    tau_s = tau_t * uniform(0.8, 1.25)
    a = torch.randint(PEAK_TOKENS, (rows,), generator=g)
    b = (a + torch.randint(1, PEAK_TOKENS, (rows,), generator=g)) % PEAK_TOKENS
    same = torch.rand(rows, generator=g) < agree
    fav_s, other_s = torch.where(same, a, b), torch.where(same, b, a)
    z_t = noise()
    z_s = noise_corr * z_t + math.sqrt(1 - noise_corr ** 2) * noise()
    h_t, h_s = z_t * tau_t[:, None], z_s * tau_s[:, None]
    r = torch.arange(rows)
    for h, fav, other, tau, m in ((h_t, a, b, tau_t, m_t), (h_s, fav_s, other_s, tau_s, m_s)):
        c = math.log(vocab) + tau ** 2 / 2 + m
        h[r, fav] += c
        h[r, other] += c - uniform(0.5, 6.0)
    teacher = HiddenLogits(h_t, w, vocab)
    mb = MicroBatch(h_s, w, vocab, teacher, lambda k: TeacherTopK.from_logits(teacher, k, chunk))
    return [mb], {"rows": rows, "vocab": vocab, "regime": regime, "agree": agree, "noise_corr": noise_corr}


# ------------------------------------------------------------------ measurements

@torch.no_grad()
def per_token(mb: MicroBatch, teacher, chunk: int) -> Dict[str, torch.Tensor]:
    """Stats pass (the trainer's) plus JSD and the teacher's top-k mass coverage, each ``(N,)``."""
    st = stats_from_sources(mb.student(), teacher, chunk)
    student, jsd, s_out = mb.student(), [], []
    for s in range(0, len(student), chunk):
        rows = slice(s, s + chunk)
        logp_s = torch.log_softmax(student.rows(rows), dim=-1)
        ls, lt = _teacher_chunk(teacher, rows, logp_s)  # full vocabulary, or k + 1 buckets
        jsd.append(divergence(ls, lt, "jsd", 0.5))
        s_out.append(-torch.expm1(ls[:, -1]) if isinstance(teacher, TeacherTopK) else torch.zeros(len(ls)))
    out = {"reverse_kl": st.reverse_kl, "forward_kl": st.forward_kl, "jsd": torch.cat(jsd).clamp_min(0),
           "entropy": st.entropy, "teacher_entropy": st.teacher_entropy, "stats": st}
    if isinstance(teacher, TeacherTopK):
        out["teacher_mass"] = teacher.logprobs.exp().sum(-1)  # (N,) teacher mass inside its top-k
        out["student_mass"] = torch.cat(s_out)  # (N,) student mass on the teacher's top-k
    return out


def loss_and_grad(mbs: List[MicroBatch], teachers: list, loss_type: str, chunk: int, recompute: bool = True):
    """Token-mean loss over all micro-batches (default hook: every token, weight 1) and its gradient
    w.r.t. the student's hidden states and head, flattened."""
    n_total = sum(len(mb.hidden) for mb in mbs)
    weight = mbs[0].weight.detach().clone().requires_grad_(True)
    loss, grads_h = 0.0, []
    for mb, teacher in zip(mbs, teachers):
        h = mb.hidden.detach().clone().requires_grad_(True)
        idx = torch.arange(len(h))
        part = selected_loss_sum(h, weight, teacher, idx, mb.vocab_size, loss_type, 0.5,
                                 chunk_size=chunk, impl="recompute" if recompute else "autograd") / n_total
        part.backward()
        loss += part.item()
        grads_h.append(h.grad.flatten())
    return loss, torch.cat(grads_h + [weight.grad.flatten()]).double()


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    ra = torch.empty_like(a, dtype=torch.float64)
    rb = torch.empty_like(b, dtype=torch.float64)
    ra[a.argsort()] = torch.arange(len(a), dtype=torch.float64)
    rb[b.argsort()] = torch.arange(len(b), dtype=torch.float64)
    return float(torch.corrcoef(torch.stack([ra, rb]))[0, 1]) if len(a) > 1 else 1.0


def tip_agreement(exact: list, approx: list, ratio: float) -> Dict[str, float]:
    """Selections per micro-batch (as the hook runs), pooled over micro-batches."""
    from tip_patches import select, soft_or

    out = {}
    for rule in ("soft_or", "q3"):
        kept = same = 0
        for e, a in zip(exact, approx):
            ie = set(select(e["stats"], rule, ratio).indices.tolist())
            ia = set(select(a["stats"], rule, ratio).indices.tolist())
            kept, same = kept + len(ie), same + len(ie & ia)
        out[f"{rule}_overlap"] = same / max(kept, 1)
    se = torch.cat([soft_or(e["entropy"], e["reverse_kl"]) for e in exact])
    sa = torch.cat([soft_or(a["entropy"], a["reverse_kl"]) for a in approx])
    out["soft_or_spearman"] = spearman(se, sa)
    return out


TAIL_BINS = (0.0, 1e-3, 1e-2, 1e-1, 1.0 + 1e-9)


def by_tail(exact: list, approx: list, key: str) -> list:
    """Relative errors binned by the mass outside the teacher's top-k, of the teacher
    (``key="teacher_mass"``: 1 - the sum of what a top-k server returns) or of the student
    (``"student_mass"``: known to the trainer, which has the student's full logits). Bucketing
    loses exactly the divergence *inside* the tail bucket (chain rule of KL): reverse KL loses
    ``P_S(tail) * KL(p_S|tail || p_T|tail)``, forward KL ``P_T(tail) * KL(p_T|tail || p_S|tail)``."""
    tail = (1 - torch.cat([a[key] for a in approx]).double()).clamp(0.0, 1.0)
    out = []
    for lo, hi in zip(TAIL_BINS, TAIL_BINS[1:]):
        sel = (tail >= lo) & (tail < hi)
        row = {"lo": lo, "hi": min(hi, 1.0), "share": sel.double().mean().item()}
        for lt in LOSS_TYPES:
            d = torch.cat([e[lt] for e in exact]).double()[sel]
            dk = torch.cat([a[lt] for a in approx]).double()[sel]
            row[lt] = ((dk - d).abs().sum() / d.sum().clamp_min(1e-30)).item() if sel.any() else float("nan")
        out.append(row)
    return out


def measure(mbs: List[MicroBatch], ks: List[int], ratio: float, chunk: int, recompute: bool = True) -> dict:
    exact = [per_token(mb, mb.teacher_exact, chunk) for mb in mbs]
    cat = lambda parts, key: torch.cat([p[key] for p in parts]).double()  # noqa: E731
    ex_loss = {lt: loss_and_grad(mbs, [mb.teacher_exact for mb in mbs], lt, chunk, recompute) for lt in LOSS_TYPES}
    te = cat(exact, "teacher_entropy")
    result = {"tokens": int(te.numel()),
              "teacher_entropy": {"mean": te.mean().item(), "median": te.median().item(),
                                  "frac_below_0.1": (te < 0.1).double().mean().item(),
                                  "frac_above_1": (te > 1).double().mean().item()},
              "student_entropy_mean": cat(exact, "entropy").mean().item(),
              "exact_mean": {lt: cat(exact, lt).mean().item() for lt in LOSS_TYPES},
              "exact_loss": {lt: ex_loss[lt][0] for lt in LOSS_TYPES}, "rows": []}
    for k in ks:
        tops = [mb.teacher_topk(k) for mb in mbs]
        approx = [per_token(mb, t, chunk) for mb, t in zip(mbs, tops)]
        row = {"k": k, "teacher_mass_mean": cat(approx, "teacher_mass").mean().item(),
               "teacher_mass_min": cat(approx, "teacher_mass").min().item(),
               "student_mass_mean": cat(approx, "student_mass").mean().item()}
        for lt in LOSS_TYPES:
            d, dk = cat(exact, lt), cat(approx, lt)
            err = (dk - d).abs()
            row[lt] = {"mean_abs": err.mean().item(), "max_abs": err.max().item(),
                       "rel": (err.sum() / d.sum().clamp_min(1e-30)).item()}
            loss_k, grad_k = loss_and_grad(mbs, tops, lt, chunk, recompute)
            loss_x, grad_x = ex_loss[lt]
            row[lt].update(loss=loss_k, loss_rel=(loss_k - loss_x) / max(abs(loss_x), 1e-30),
                           grad_cos=torch.nn.functional.cosine_similarity(grad_k, grad_x, dim=0).item(),
                           grad_norm_ratio=(grad_k.norm() / grad_x.norm().clamp_min(1e-30)).item())
        row.update(tip_agreement(exact, approx, ratio))
        row["by_teacher_tail"] = by_tail(exact, approx, "teacher_mass")
        row["by_student_tail"] = by_tail(exact, approx, "student_mass")
        result["rows"].append(row)
    return result


# ------------------------------------------------------------------ report

def _g(x: float) -> str:
    return f"{x:.2e}" if x != 0 and (abs(x) < 1e-3 or abs(x) >= 1e4) else f"{x:.4f}"


def markdown(name: str, info: dict, res: dict, ratio: float) -> str:
    te = res["teacher_entropy"]
    lines = [f"### {name}", "",
             f"{res['tokens']} tokens; " + ", ".join(f"{k} {v}" for k, v in info.items()) + "; "
             f"teacher entropy mean {te['mean']:.3f} / median {te['median']:.3f} nats, "
             f"{100 * te['frac_below_0.1']:.0f} % of positions < 0.1 nats, {100 * te['frac_above_1']:.0f} % > 1 nat; "
             f"student entropy mean {res['student_entropy_mean']:.3f}; exact token-mean reverse KL "
             f"{res['exact_mean']['reverse_kl']:.4f}, forward KL {res['exact_mean']['forward_kl']:.4f}, "
             f"JSD {res['exact_mean']['jsd']:.4f}.", "",
             "Per-token divergences (mean |err| / max |err| / relative error sum|err| / sum exact):", "",
             "| k | teacher mass in top-k (mean / min) | student mass on it | reverse KL | forward KL | JSD |",
             "|---|---|---|---|---|---|"]
    for r in res["rows"]:
        cells = [" / ".join([_g(r[lt]["mean_abs"]), _g(r[lt]["max_abs"]), f"{100 * r[lt]['rel']:.2f} %"])
                 for lt in LOSS_TYPES]
        lines.append(f"| {r['k']} | {r['teacher_mass_mean']:.4f} / {r['teacher_mass_min']:.4f} | "
                     f"{r['student_mass_mean']:.4f} | " + " | ".join(cells) + " |")
    lines += ["", f"TIP selection (top {100 * ratio:.0f} %, per micro-batch) and the loss / gradient of each "
              "loss.type (relative loss difference; cosine of the gradients):", "",
              f"| k | Soft-OR kept-set overlap | Soft-OR Spearman | Q3 kept-set overlap | "
              "reverse KL: Δloss / grad cos | forward KL: Δloss / grad cos | JSD: Δloss / grad cos |",
              "|---|---|---|---|---|---|---|"]
    for r in res["rows"]:
        cells = [f"{100 * r[lt]['loss_rel']:+.2f} % / {r[lt]['grad_cos']:.4f}" for lt in LOSS_TYPES]
        lines.append(f"| {r['k']} | {100 * r['soft_or_overlap']:.1f} % | {r['soft_or_spearman']:.4f} | "
                     f"{100 * r['q3_overlap']:.1f} % | " + " | ".join(cells) + " |")
    bins = [f"[{lo:g}, {min(hi, 1.0):g})" for lo, hi in zip(TAIL_BINS, TAIL_BINS[1:])]
    for key, who in (("by_teacher_tail", "teacher's"), ("by_student_tail", "student's")):
        lines += ["", f"Relative error binned by the {who} probability mass outside the teacher's top-k; "
                  "each cell: share of positions: reverse KL / forward KL / JSD relative error:", "",
                  "| k | " + " | ".join(bins) + " |", "|---" * (len(bins) + 1) + "|"]
        for r in res["rows"]:
            cells = [f"{100 * b['share']:.1f} %: " + " / ".join(f"{100 * b[lt]:.2f} %" for lt in LOSS_TYPES)
                     if b["share"] > 0 else "—" for b in r[key]]
            lines.append(f"| {r['k']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--world", default=str(REPO / "artifacts" / "toy"), help="a built toy world (or skip with --no-toy)")
    p.add_argument("--ks", default="16,64,256", help="comma-separated k values")
    p.add_argument("--ratio", type=float, default=0.2, help="TIP keep ratio for the selection overlap")
    p.add_argument("--prompts", type=int, default=64, help="toy: held-out prompts")
    p.add_argument("--n", type=int, default=4, help="toy: samples per prompt")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--micro-batch", type=int, default=32, help="toy: sequences per micro-batch (TIP normalizes per micro-batch)")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--rows", type=int, default=1024, help="synthetic: token positions")
    p.add_argument("--vocab", type=int, default=151936, help="synthetic: vocabulary size")
    p.add_argument("--hidden", type=int, default=256, help="synthetic: hidden size of h @ W.T")
    p.add_argument("--regimes", default="peaked,flat", help=f"synthetic regimes: {','.join(REGIMES)}")
    p.add_argument("--agree", type=float, default=0.9, help="synthetic: P(student favourite = teacher's)")
    p.add_argument("--noise-corr", type=float, default=0.9, help="synthetic: student/teacher logit-noise correlation")
    p.add_argument("--chunk-size", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-recompute", action="store_true",
                   help="keep the grad pass's (N, V) log-probs instead of recomputing chunks (small cases only)")
    p.add_argument("--no-toy", action="store_true")
    p.add_argument("--no-synthetic", action="store_true")
    p.add_argument("--json", help="also write the raw numbers here")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    ks = [int(k) for k in args.ks.split(",") if k]
    torch.manual_seed(args.seed)
    report, raw = [], {}
    cases = []
    if not args.no_toy:
        world = Path(args.world)
        if not (world / "teacher").is_dir():
            raise SystemExit(f"--world {world}: no built toy world (python recipes/toy/world.py --world toy --out {world}), "
                             "or pass --no-toy")
        cases.append(("toy", lambda: toy_case(world, args.prompts, args.n, args.max_new_tokens, args.micro_batch,
                                              args.temperature, args.seed, args.chunk_size)))
    if not args.no_synthetic:
        for regime in [r for r in args.regimes.split(",") if r]:
            cases.append((f"synthetic-{regime}", lambda regime=regime: synthetic_case(
                args.rows, args.vocab, args.hidden, regime, args.seed, args.chunk_size, args.agree, args.noise_corr)))
    for name, build in cases:
        t0 = time.time()
        mbs, info = build()
        res = measure(mbs, ks, args.ratio, args.chunk_size, not args.no_recompute)
        res["seconds"] = round(time.time() - t0, 1)
        raw[name] = {"info": info, **res}
        report.append(markdown(name, info, res, args.ratio))
        print(report[-1] + f"\n\n({res['seconds']} s)\n", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(raw, indent=1))
    return raw


if __name__ == "__main__":
    main()
