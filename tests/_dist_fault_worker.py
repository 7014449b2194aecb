"""Two ranks under ZeRO-3; one rank's rollout engine or weight sync fails at step 2.

Usage: python tests/_dist_fault_worker.py STUDENT TEACHER TRAIN_FILE OUT_DIR FAIL_RANK generate|sync
(under torchrun, world size 2). Every rank writes ``rank{r}.txt`` with how it stopped. Used by
tests/test_distributed.py.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
import conftest  # noqa: F401  (offline env)
import _teardown

from _fakes import FixedRollouts
from opsd.config import load_config
from opsd.rollout import RolloutEngineError, WeightSyncError
from opsd.trainer import Trainer, TrainingAborted


class FailingRollouts(FixedRollouts):
    def __init__(self, vocab_ids, eos_id, rank, fail_rank, where):
        super().__init__(vocab_ids, eos_id)
        self.rank, self.fail_rank, self.where = rank, fail_rank, where
        self.generates = self.syncs = 0

    def generate(self, prompt_ids, sampling):
        self.generates += 1
        if self.where == "generate" and self.rank == self.fail_rank and self.generates == 2:
            raise RolloutEngineError("simulated engine crash in generate")
        return super().generate(prompt_ids, sampling)

    def sync_weights(self, named_tensors):
        self.syncs += 1
        for i, _ in enumerate(named_tensors):  # stops part-way, like a shape mismatch in the checker
            if self.where == "sync" and self.rank == self.fail_rank and self.syncs == 2 and i == 2:
                raise WeightSyncError("simulated shape mismatch in weight sync")


def main():
    student, teacher, train, out, fail_rank, where = sys.argv[1:7]
    cfg = load_config(None, [f"model.student={student}", f"model.teacher={teacher}", f"data.train_files={train}",
                             f"train.output_dir={out}", "train.max_steps=4", "train.prompts_per_step=4",
                             "rollout.n=2", "engine.micro_batch_size=2", "engine.zero_stage=3", "optim.lr=0.01",
                             "train.export=false", "train.save_every=1", "data.shuffle=false",
                             "logging.progress=false"])
    tr = Trainer(cfg).setup()
    tr.backend = FailingRollouts(range(10, 60), tr.tokenizer.eos_token_id, tr.rank, int(fail_rank), where)
    try:
        tr.train()
        result = "finished"
    except TrainingAborted as e:
        result = f"aborted at step {tr.step + 1}: {e}"
    with open(os.path.join(out, f"rank{tr.rank}.txt"), "w") as f:
        f.write(result)
    tr.cleanup()
    return out


if __name__ == "__main__":
    _teardown.end_worker(main())  # after main: the trainer is out of scope, its groups can go
