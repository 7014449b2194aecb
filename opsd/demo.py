"""``make demo``: the main job on the embedded default (no GPU, no downloads).

Builds the toy world if missing (tokenizer, prompts, SFT-trained teacher and student), then runs
OPD with ``recipes/toy/opd.yaml`` and prints teacher accuracy, student accuracy before, and
student accuracy after, on the held-out problems (greedy).
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
        print(f"\nheld-out problems: {n} (greedy)\n  teacher accuracy:        {teacher_acc:.3f}\n"
              f"  student accuracy before: {summary['accuracy_before']:.3f}\n"
              f"  student accuracy after:  {summary['accuracy_after']:.3f}\n"
              f"wall time {time.time() - t0:.0f} s; metrics in {cfg.train.output_dir}/metrics.jsonl")
        print(json.dumps({"teacher": teacher_acc, **summary, "heldout": n, "world": paths["root"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
