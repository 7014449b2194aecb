"""The small OPD run the trainer tests share: overrides on the tiny world, and its metrics."""
import json


def run_overrides(w, out, steps, extra=()):
    """4 prompts x 2 samples, micro-batches of 3 -> 3 micro-batches per optimizer step."""
    return [f"model.student={w['student']}", f"model.teacher={w['teacher']}", f"data.train_files={w['train']}",
            f"train.output_dir={out}", f"train.max_steps={steps}", "train.prompts_per_step=4", "rollout.n=2",
            "rollout.max_new_tokens=6", "engine.micro_batch_size=3", "optim.lr=0.01", "logging.progress=false",
            "loss.reward_fn=_rewards:toy_reward", "train.export=false", *extra]


def read_metrics(out):
    """The rows of ``out/metrics.jsonl``."""
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
