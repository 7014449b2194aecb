"""Accuracy metrics over n samples per problem, with standard errors.

Input everywhere: per problem, the list of its samples' correctness (and, for maj@k, their
answer keys). Every metric is first a per-problem value, then a mean over problems, so two runs
can be compared problem by problem (:func:`paired_difference`).

- ``mean@k`` (the paper's mean@16): the expected accuracy of one sample, c/n per problem. It is
  the same unbiased estimate for every k <= n, so it is reported once, as mean@n.
- ``pass@k``: the unbiased estimator of Chen et al. (2021), 1 - C(n-c, k) / C(n, k), k <= n;
  for fractional scores (DeepPlanning) the expected best of k samples (:func:`expected_max_at_k`),
  so pass@n is Best@n there and mean@n is Avg@n.
- ``maj@k``: majority vote over k samples' extracted answers (samples with no answer abstain; a
  tie counts the fraction of tied answers that are correct, i.e. a uniform random tie-break).
  k = n is exact; for k < n it is the mean over k-subsets: all of them when there are at most
  ``MAJ_EXACT_LIMIT``, else ``MAJ_DRAWS`` seeded random subsets.

Standard errors. ``stderr`` is over problems: sd(per-problem values, ddof=1) / sqrt(P); it
answers "how different would the score be on another draw of problems and samples".
``stderr_sampling`` treats the problems as fixed: sample j of every problem forms run j, and it
is sd(run accuracies) / sqrt(n). The paper's ± values (e.g. MATH-500 76.7 ± 0.7, AIME 21.9 ± 1.2
with 30 problems) are far below the over-problems SE of 30 AIME problems (~5 points) and match the
sampling-only SE in size, so ``stderr_sampling`` is the comparable one (our inference: the paper
does not define its ±).
"""
from __future__ import annotations

import math
import random
from collections import Counter
from dataclasses import dataclass
from itertools import combinations
from typing import Dict, List, Mapping, Optional, Sequence

MAJ_EXACT_LIMIT = 5000
MAJ_DRAWS = 1000


@dataclass
class Estimate:
    """A mean over problems with its standard error (None when fewer than 2 problems)."""

    value: float
    stderr: Optional[float]
    num_problems: int
    stderr_sampling: Optional[float] = None


def mean_and_stderr(values: Sequence[float]) -> Estimate:
    p = len(values)
    if p == 0:
        raise ValueError("no problems to average")
    mean = sum(values) / p
    if p < 2:
        return Estimate(mean, None, p)
    var = sum((v - mean) ** 2 for v in values) / (p - 1)
    return Estimate(mean, math.sqrt(var / p), p)


def _check_k(n: int, k: int) -> None:
    if not 1 <= k <= n:
        raise ValueError(f"k={k} must be in [1, n={n}] (n = samples per problem)")


def uniform_n(correct: Sequence[Sequence[bool]]) -> int:
    """The common number of samples per problem; mixed n is an error."""
    ns = {len(c) for c in correct}
    if len(ns) != 1:
        raise ValueError(f"problems have different sample counts {sorted(ns)}")
    return ns.pop()


# ---------------------------------------------------------------------------------------------
# Per-problem values
# ---------------------------------------------------------------------------------------------

def pass_at_k_single(n: int, c: int, k: int) -> float:
    """1 - C(n-c, k)/C(n, k), computed as a product so large n never overflows."""
    _check_k(n, k)
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def expected_max_at_k(scores: Sequence[float], k: int) -> float:
    """E[max of k of the n scores drawn without replacement] = sum_i s_(i) C(i-1, k-1) / C(n, k)
    over the ascending scores s_(1..n); for 0/1 scores this is pass@k, at k = n it is the best
    sample (DeepPlanning's Best@k)."""
    n = len(scores)
    _check_k(n, k)
    ordered = sorted(scores)
    return sum(s * math.comb(i - 1, k - 1) for i, s in enumerate(ordered, 1)) / math.comb(n, k)


def majority_score(keys: Sequence[Optional[str]], correct: Sequence[bool]) -> float:
    """Score of a majority vote over these samples (abstentions ignored, ties split evenly)."""
    votes = Counter(k for k in keys if k is not None)
    if not votes:
        return 0.0
    top = max(votes.values())
    winners = [key for key, count in votes.items() if count == top]
    # A key's correctness: any sample with that key (they were graded the same way).
    key_correct = {key: False for key in winners}
    for key, ok in zip(keys, correct):
        if key in key_correct and ok:
            key_correct[key] = True
    return sum(key_correct.values()) / len(winners)


def maj_at_k_single(keys: Sequence[Optional[str]], correct: Sequence[bool], k: int,
                    seed: int = 0) -> float:
    n = len(keys)
    _check_k(n, k)
    if k == n:
        return majority_score(keys, correct)
    if math.comb(n, k) <= MAJ_EXACT_LIMIT:
        subsets = combinations(range(n), k)
    else:
        rng = random.Random(seed)
        subsets = (rng.sample(range(n), k) for _ in range(MAJ_DRAWS))
    scores = [majority_score([keys[i] for i in s], [correct[i] for i in s]) for s in subsets]
    return sum(scores) / len(scores)


def per_problem(correct: Sequence[Sequence[bool]], metric: str, k: int,
                keys: Optional[Sequence[Sequence[Optional[str]]]] = None) -> List[float]:
    """Per-problem values of ``metric`` in {mean, pass, maj} at k."""
    if metric == "mean":
        for c in correct:
            _check_k(len(c), k)
        return [sum(c) / len(c) for c in correct]
    if metric == "pass":  # fractional scores (DeepPlanning): the expected best of k samples
        # 0/1 scores may come as floats (0.0 / 1.0): the count of correct samples is an int
        return [pass_at_k_single(len(c), round(sum(c)), k) if all(v in (0, 1) for v in c) else expected_max_at_k(c, k)
                for c in correct]
    if metric == "maj":
        if keys is None:
            raise ValueError("maj@k needs the samples' answer keys")
        return [maj_at_k_single(kk, c, k, seed=i) for i, (kk, c) in enumerate(zip(keys, correct))]
    raise ValueError(f"unknown metric {metric!r}; choose mean, pass or maj")


# ---------------------------------------------------------------------------------------------
# Aggregates
# ---------------------------------------------------------------------------------------------

def sampling_stderr(correct: Sequence[Sequence[bool]]) -> Optional[float]:
    """SE of mean@n with problems held fixed: sd over the n runs (sample j of every problem)."""
    n = uniform_n(correct)
    if n < 2:
        return None
    runs = [sum(c[j] for c in correct) / len(correct) for j in range(n)]
    mean = sum(runs) / n
    return math.sqrt(sum((r - mean) ** 2 for r in runs) / (n - 1) / n)


def mean_at_k(correct: Sequence[Sequence[bool]], k: Optional[int] = None) -> Estimate:
    n = uniform_n(correct)
    est = mean_and_stderr(per_problem(correct, "mean", k or n))
    est.stderr_sampling = sampling_stderr(correct)
    return est


def pass_at_k(correct: Sequence[Sequence[bool]], k: int) -> Estimate:
    return mean_and_stderr(per_problem(correct, "pass", k))


def maj_at_k(correct: Sequence[Sequence[bool]], keys: Sequence[Sequence[Optional[str]]],
             k: int) -> Estimate:
    return mean_and_stderr(per_problem(correct, "maj", k, keys))


def default_ks(n: int) -> List[int]:
    """1, 2, 4, ... up to n, plus n itself."""
    ks, k = [], 1
    while k < n:
        ks.append(k)
        k *= 2
    return ks + [n]


def compute_metrics(correct: Sequence[Sequence[bool]],
                    keys: Optional[Sequence[Sequence[Optional[str]]]] = None) -> Dict[str, Estimate]:
    """mean@n, pass@k for k in :func:`default_ks`, and maj@n when answer keys are known."""
    n = uniform_n(correct)
    out = {f"mean@{n}": mean_at_k(correct)}
    for k in default_ks(n):
        out[f"pass@{k}"] = pass_at_k(correct, k)
    if keys is not None and any(k is not None for kk in keys for k in kk):
        out[f"maj@{n}"] = maj_at_k(correct, keys, n)
    return out


def paired_difference(variant: Mapping[str, float], baseline: Mapping[str, float]) -> Estimate:
    """Mean and SE over problems of (variant - baseline), matched by problem id."""
    missing = set(baseline) ^ set(variant)
    if missing:
        raise ValueError(f"paired difference needs the same problems; {len(missing)} ids differ "
                         f"(e.g. {sorted(missing)[:3]})")
    return mean_and_stderr([variant[i] - baseline[i] for i in sorted(baseline)])
