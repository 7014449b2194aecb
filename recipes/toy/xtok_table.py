"""Cross-tokenizer OPD on the toy world: same-tokenizer teacher vs BPM vs strict vs ULD-style, per seed.

    python -m opsd.toy.xtok_world                                  # the BPE teacher (artifacts/toy_xtok)
    python recipes/toy/xtok_table.py --seeds 0,1,2 --steps 100     # -> runs/xtok_table/{results.json,table.md}

Rows: ``same`` = ``recipes/toy/opd.yaml`` (the world's own character-level teacher); ``bpm``,
``strict``, ``uld`` = ``recipes/toy/xtok.yaml`` (the BPE teacher) with ``loss.cross_tokenizer``.
Each run trains in this process (the ULD-style peer needs the student attached to the teacher,
:meth:`opsd.xtok.CrossTokenizerTeacher.attach_student`). Reported per run: the trainer's held-out
accuracy before/after (``train.eval_files``), the teacher's held-out greedy accuracy, the share of
the teacher-student gap closed ``(after - before) / (teacher - before)``, and the mean row shares
(exact, kept) and residual mass over the steps. Resumable: finished runs are read back.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ROWS = {"same": ("recipes/toy/opd.yaml", []),
        "bpm": ("recipes/toy/xtok.yaml", ["loss.cross_tokenizer=bpm"]),
        "strict": ("recipes/toy/xtok.yaml", ["loss.cross_tokenizer=strict"]),
        "uld": ("recipes/toy/xtok.yaml", ["loss.cross_tokenizer=uld"])}


# --swap: the BPE model as the student (the char-level world teacher teaches it), when the BPE
# teacher is too weak to teach (docs/cross-tokenizer.md says why)
SWAP = ["model.student=artifacts/toy_xtok/teacher", "model.teacher=artifacts/toy/teacher",
        "model.teacher_tokenizer=artifacts/toy/teacher"]


def run_one(row: str, seed: int, steps: int, out: Path, swap: bool = False, eval_limit: int = 256) -> dict:
    from opsd.config import load_config
    from opsd.trainer import Trainer

    done = out / "result.json"
    if done.exists():
        return json.loads(done.read_text())
    recipe, extra = ROWS[row]
    if swap and row != "same":
        extra = [*extra, *SWAP]
    extra = [*extra, f"train.eval_limit={eval_limit}"]
    cfg = load_config(ROOT / recipe, [*extra, f"train.seed={seed}", f"train.max_steps={steps}",
                                      f"train.output_dir={out}", "logging.progress=false", "train.export=false"])
    t0 = time.time()
    trainer = Trainer(cfg)
    try:
        trainer.setup()
        if row == "uld":
            trainer.teacher.attach_student(trainer.student)
        summary = trainer.train()
    finally:
        trainer.cleanup()
    res = {"row": row, "seed": seed, "steps": steps, "before": summary["accuracy_before"],
           "after": summary["accuracy_after"], "wall_s": round(time.time() - t0, 1)}
    done.write_text(json.dumps(res))
    return res


SHARES = ("xtok/exact_rows", "xtok/kept_rows", "xtok/lookback_rows", "xtok/unresolved_rows", "xtok/residual_mass",
          "xtok/coverage")


def row_shares(out: Path) -> dict:
    """The run's mean row shares over its steps (read from its metrics.jsonl)."""
    metrics = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if x.strip()]
    res = {}
    for key in SHARES:
        vals = [m[key] for m in metrics if key in m]
        if vals:
            res[key] = statistics.fmean(vals)
    return res


def teacher_accuracies(swap: bool) -> dict:
    from opsd.toy.xtok_world import teacher_accuracy

    same = json.loads((ROOT / "artifacts/toy/build_info.json").read_text())["teacher_acc_greedy"]
    bpe = same if swap else teacher_accuracy(str(ROOT / "artifacts/toy_xtok"))
    return {"same": same, "bpm": bpe, "strict": bpe, "uld": bpe}


def _ms(xs):
    m = statistics.fmean(xs)
    se = statistics.stdev(xs) / len(xs) ** 0.5 if len(xs) > 1 else float("nan")
    return f"{m:.3f} ± {se:.3f}"


def table(results, teachers) -> str:
    lines = ["| teacher / target | teacher acc | student before | after (mean ± SE) | gap closed (mean ± SE) | "
             "kept rows | lookback rows | unresolved rows | residual mass | per seed (after) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for row in ROWS:
        rs = sorted((r for r in results if r["row"] == row), key=lambda r: r["seed"])
        if not rs:
            continue
        t = teachers[row]
        gaps = [(r["after"] - r["before"]) / (t - r["before"]) for r in rs]

        def mean_of(k):
            v = [r[k] for r in rs if k in r]
            return f"{statistics.fmean(v):.3f}" if v else "-"

        lines.append(f"| {row} | {t:.3f} | {_ms([r['before'] for r in rs])} | {_ms([r['after'] for r in rs])} | "
                     f"{_ms(gaps)} | {mean_of('xtok/kept_rows')} | {mean_of('xtok/lookback_rows')} | "
                     f"{mean_of('xtok/unresolved_rows')} | {mean_of('xtok/residual_mass')} | "
                     + ", ".join(f"{r['after']:.3f}" for r in rs) + " |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--steps", type=int, default=100)  # the toy recipes' own
    ap.add_argument("--rows", default=",".join(ROWS))
    ap.add_argument("--out", default="runs/xtok_table")
    ap.add_argument("--swap", action="store_true", help="the BPE model is the student, the world's teacher teaches")
    ap.add_argument("--eval-limit", type=int, default=256, help="held-out problems evaluated before/after")
    args = ap.parse_args(argv)
    out = Path(args.out)
    results = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        for row in args.rows.split(","):
            run_dir = out / f"{row}-s{seed}"
            run_dir.mkdir(parents=True, exist_ok=True)
            results.append({**run_one(row, seed, args.steps, run_dir, args.swap, args.eval_limit),
                            **row_shares(run_dir)})
            print(json.dumps(results[-1]), flush=True)
    teachers = teacher_accuracies(args.swap)
    md = table(results, teachers)
    (out / "results.json").write_text(json.dumps({"runs": results, "teacher_acc": teachers}, indent=1))
    (out / "table.md").write_text(md + "\n")
    print(md)


if __name__ == "__main__":
    main()
