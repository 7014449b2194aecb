"""``make demo``: the main job on the embedded default (no GPU, no downloads).

Builds the toy world if missing (tokenizer, prompts, SFT-trained teacher and student), then runs
OPD with ``recipes/toy/opd.yaml`` and prints teacher accuracy, student accuracy before, and
student accuracy after, on the held-out problems (greedy), the share of the teacher-student gap
that OPD closed, and the TIP quadrants of the student's tokens before OPD (from the build's
``build_info.json``: Q3 = low entropy, high divergence, its confident mistakes).
"""
from __future__ import annotations

import json
import logging
import sys
import time

from opsd.config import load_config


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    t0 = time.time()
    from opsd.toy.build import ensure_world

    paths = ensure_world("artifacts/toy")
    cfg = load_config("recipes/toy/opd.yaml", argv)
    from opsd.evaluate import accuracy
    from opsd.trainer import Trainer

    trainer = Trainer(cfg).setup()
    try:
        from opsd.rollout.hf import HFGenerateBackend

        teacher_acc = accuracy(HFGenerateBackend(trainer.teacher.model, trainer.tokenizer), trainer.tokenizer,
                               trainer.eval_data, trainer.reward_fn, cfg.rollout.max_new_tokens, cfg.train.eval_limit,
                               trainer.rank, trainer.world)
        summary = trainer.train()
    finally:
        trainer.cleanup()
    n = min(cfg.train.eval_limit, len(trainer.eval_data))
    if trainer.rank == 0:
        with open(paths["build_info"]) as f:
            quadrants = json.load(f).get("quadrants", {})
        report(f"held-out problems: {n} (greedy)", teacher_acc, summary, quadrants, paths, t0,
               cfg.train.output_dir, n)
    return 0


def report(title: str, teacher_acc: float, summary: dict, quadrants: dict, paths: dict, t0: float,
           output_dir: str, n: int) -> None:
    """Print a demo's result: the three accuracies, the gap share closed, the student's TIP
    quadrants before OPD (``quadrants``: Q1..Q4 shares from the world's build_info), then one JSON line."""
    before, after = summary["accuracy_before"], summary["accuracy_after"]
    closed = gap_closed(teacher_acc, before, after)
    print(f"\n{title}\n  teacher accuracy:        {teacher_acc:.3f}\n"
          f"  student accuracy before: {before:.3f}\n"
          f"  student accuracy after:  {after:.3f}\n"
          f"  teacher-student gap closed by OPD: "
          + (f"{closed:.0%}" if closed is not None else "n/a (no gap)") + "\n"
          + (f"  student tokens before OPD (T=1, TIP quadrants, from {paths['build_info']}): "
             f"Q1 {quadrants['Q1']:.1%}  Q2 {quadrants['Q2']:.1%}  Q3 (confident mistakes) {quadrants['Q3']:.1%}"
             f"  Q4 {quadrants['Q4']:.1%}\n" if quadrants else "")
          + f"wall time {time.time() - t0:.0f} s; metrics in {output_dir}/metrics.jsonl")
    print(json.dumps({"teacher": teacher_acc, **summary, "gap_closed": closed,
                      "q3_share": quadrants.get("Q3") if quadrants else None, "heldout": n, "world": paths["root"]}))


def gap_closed(teacher: float, before: float, after: float):
    """(after - before) / (teacher - before): the share of the teacher-student gap that OPD closed."""
    return None if teacher <= before else (after - before) / (teacher - before)


if __name__ == "__main__":
    from opsd.engine import shutdown_distributed

    try:
        code = main()
    finally:  # an orderly teardown keeps the exit code 0 (opsd.engine.shutdown_distributed)
        shutdown_distributed(barrier=False)
    sys.exit(code)
