"""``make demo`` / ``make demo-agent``: OPD on a toy world (CPU, no downloads), one entry point for both.

    python recipes/toy/demo.py                        # make demo: arithmetic, recipes/toy/opd.yaml
    python recipes/toy/demo.py --world agent          # make demo-agent: tool calls, recipes/toy/agent.yaml
    python recipes/toy/demo.py --world agent tip.rule=q3 tip.ratio=0.2   # extra arguments: config overrides

Builds the world if missing (``recipes/toy/world.py``: tokenizer, rows, SFT-trained teacher and
student), then runs OPD with the world's recipe and prints the teacher's accuracy and the
student's before and after on the held-out set (greedy; agentic episodes are played through the
agent loop), the share of the teacher-student gap that OPD closed, and the TIP quadrants of the
student's tokens before OPD (from the world's ``build_info.json``: Q3 = low entropy, high
divergence, its confident mistakes); then the same as one JSON line.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import world  # noqa: E402  (recipes/toy/world.py)
from opsd.config import load_config  # noqa: E402
from tip_patches.report import overall, shares_text  # noqa: E402

RECIPES = {"toy": "recipes/toy/opd.yaml", "agent": "recipes/toy/agent.yaml"}
TITLES = {"toy": "held-out problems: {n} (greedy)",
          "agent": "held-out episodes: {n} (greedy, tools through the agent loop)"}


def heldout_count(cfg, data) -> int:
    return min(cfg.train.eval_limit, len(data)) if cfg.train.eval_limit else len(data)


def teacher_accuracy(trainer, cfg) -> float:
    """The teacher on the run's held-out set, greedy, by the evaluation the student gets
    (``opsd.evaluate``); agentic episodes all in one batch: on CPU a few wide batches are much faster
    than the evaluation's slices of 64."""
    from opsd.evaluate import accuracy
    from opsd.rollout.agent import AgentLoop
    from opsd.rollout.hf import HFGenerateBackend

    model, tok, data = trainer.teacher.model, trainer.tokenizer, trainer.eval_data
    if not isinstance(trainer.loop, AgentLoop):
        return accuracy(trainer.loop.with_backend(HFGenerateBackend(model, tok)), data, cfg.train.eval_limit,
                        trainer.rank, trainer.world)
    n = heldout_count(cfg, data)
    loop = trainer.loop.with_backend(HFGenerateBackend(model, tok, batch_size=n))
    return accuracy(loop, data, cfg.train.eval_limit, trainer.rank, trainer.world, batch_size=n)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--world", choices=sorted(RECIPES), default="toy", help="which world (default: toy)")
    ap.add_argument("overrides", nargs="*", help="config overrides, key=value")
    args = ap.parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    t0 = time.time()
    paths = world.ensure(args.world)
    cfg = load_config(RECIPES[args.world], args.overrides)
    from opsd.trainer import Trainer

    trainer = Trainer(cfg).setup()
    try:
        teacher_acc = teacher_accuracy(trainer, cfg)
        summary = trainer.train()
    finally:
        trainer.cleanup()
    n = heldout_count(cfg, trainer.eval_data)
    if trainer.rank == 0:
        quadrants = overall(json.loads(Path(paths["build_info"]).read_text()).get("quadrants", {}))
        report(TITLES[args.world].format(n=n), teacher_acc, summary, quadrants, paths, t0, cfg.train.output_dir, n)
    return 0


def report(title: str, teacher_acc: float, summary: dict, quadrants: dict, paths: dict, t0: float,
           output_dir: str, n: int) -> None:
    """Print the result: the three accuracies, the gap share closed, the student's TIP quadrants
    before OPD (Q1..Q4 shares from the world's build_info), then one JSON line."""
    before, after = summary["accuracy_before"], summary["accuracy_after"]
    closed = gap_closed(teacher_acc, before, after)
    print(f"\n{title}\n  teacher accuracy:        {teacher_acc:.3f}\n"
          f"  student accuracy before: {before:.3f}\n"
          f"  student accuracy after:  {after:.3f}\n"
          f"  teacher-student gap closed by OPD: "
          + (f"{closed:.0%}" if closed is not None else "n/a (no gap)") + "\n"
          + (f"  student tokens before OPD (T=1, TIP quadrants, from {paths['build_info']}): "
             f"{shares_text(quadrants)}\n" if quadrants else "")
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
