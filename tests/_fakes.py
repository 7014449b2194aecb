"""Deterministic rollout backend for tests that need the same global batch at any world size."""
import random

from opsd.rollout.base import Rollouts, RolloutBackend


class FixedRollouts(RolloutBackend):
    """Response = pseudo-random tokens seeded by the prompt (and sample number), of varying length,
    ending with EOS; identical whichever rank generates it. ``empty=True`` gives empty responses."""

    name = "fixed"

    def __init__(self, vocab_ids, eos_id, max_len=6, empty=False):
        self.vocab_ids, self.eos_id, self.max_len, self.empty = list(vocab_ids), eos_id, max_len, empty

    def generate(self, prompt_ids, sampling):
        out = Rollouts([], [], [], [])
        for i, p in enumerate(prompt_ids):
            for j in range(sampling.n):
                rng = random.Random(hash((tuple(p), j)) % (2 ** 31))
                n = rng.randint(1, self.max_len)
                resp = [] if self.empty else [rng.choice(self.vocab_ids) for _ in range(n)] + [self.eos_id]
                out.prompt_ids.append(list(p)); out.response_ids.append(resp)
                out.finished.append(True); out.prompt_index.append(i)
        return out
