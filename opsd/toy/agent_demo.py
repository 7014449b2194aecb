"""``make demo-agent``: multi-turn, tool-calling OPD on the agentic toy world (CPU, no downloads).

Builds ``artifacts/agent_toy`` if missing (tokenizer, episode rows, SFT-trained teacher and
student: :mod:`opsd.toy.agent_build`), then runs OPD with ``recipes/toy/agent.yaml`` and prints
the teacher's accuracy and the student's before and after, on held-out episodes played greedily
through the agent loop. Extra arguments are config overrides, e.g. ``tip.rule=q3 tip.ratio=0.2``.
"""
from __future__ import annotations

import json
import logging
import sys
import time

from opsd.config import load_config
from opsd.demo import report

RECIPE = "recipes/toy/agent.yaml"
WORLD = "artifacts/agent_toy"


def teacher_accuracy(trainer, cfg) -> float:
    """The teacher plays the held-out episodes through the run's own agent loop (greedy, the same
    limits as the student's evaluation), all in one batch: on CPU a few wide batches are much faster
    than the evaluation's slices of 64."""
    from opsd.rollout.base import SamplingConfig
    from opsd.rollout.hf import HFGenerateBackend

    rows = trainer.eval_data.batch(range(min(cfg.train.eval_limit or len(trainer.eval_data), len(trainer.eval_data))))
    loop = trainer.agent.with_backend(HFGenerateBackend(trainer.teacher.model, trainer.tokenizer, batch_size=len(rows)))
    out = loop.run(rows, SamplingConfig(temperature=0.0, max_new_tokens=cfg.rollout.max_new_tokens, n=1))
    return sum(out.rewards) / max(1, len(rows))


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    t0 = time.time()
    from opsd.toy.agent_build import ensure_world

    paths = ensure_world(WORLD)
    cfg = load_config(RECIPE, argv)
    from opsd.trainer import Trainer

    trainer = Trainer(cfg).setup()
    try:
        teacher_acc = teacher_accuracy(trainer, cfg)
        summary = trainer.train()
    finally:
        trainer.cleanup()
    n = min(cfg.train.eval_limit, len(trainer.eval_data)) if cfg.train.eval_limit else len(trainer.eval_data)
    if trainer.rank == 0:
        with open(paths["build_info"]) as f:
            quadrants = json.load(f).get("quadrants", {}).get("all", {})
        report(f"held-out episodes: {n} (greedy, tools through the agent loop)", teacher_acc, summary, quadrants,
               paths, t0, cfg.train.output_dir, n)
    return 0


if __name__ == "__main__":
    from opsd.engine import shutdown_distributed

    try:
        code = main()
    finally:  # an orderly teardown keeps the exit code 0 (opsd.engine.shutdown_distributed)
        shutdown_distributed(barrier=False)
    sys.exit(code)
