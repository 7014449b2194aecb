"""The ``tip`` config section and its validation, importable without torch.

Kept apart from :mod:`tip_patches.patch` (which needs torch) so that reading and validating a
config — ``opsd.launch --dry-run``, ``opsd.train --print-config`` / ``--list-options``, the recipe
scripts' dry runs — does not pay for importing torch. ``tip_patches.patch.TipConfig`` and
``tip_patches.selectors.RULES`` / ``check_ratio`` are these same objects, re-exported.
"""
from __future__ import annotations

import numbers
from dataclasses import dataclass, field
from typing import Optional

from opsd.config import ConfigError

RULES = ("all", "entropy_sample", "entropy_topk", "soft_or", "soft_or_bottom", "q3", "adaptive_kl")
SAMPLING_RULES = ("entropy_sample", "adaptive_kl")
NORMALIZATIONS = ("minmax", "running")
THRESHOLD_MODES = ("fixed", "median")


def check_ratio(ratio, rule: str = "") -> float:
    """``ratio`` in (0, 1]; ``rule="all"`` needs 1 (a smaller ratio would be silently ignored)."""
    if isinstance(ratio, bool) or not isinstance(ratio, numbers.Real) or not 0 < ratio <= 1:
        raise ValueError(f"tip.ratio must be a number in (0, 1], got {ratio!r}")
    if rule == "all" and ratio != 1:
        raise ValueError(f"tip.ratio={ratio} has no effect with tip.rule=all; choose a selection rule "
                         f"({', '.join(RULES[1:])}) or ratio 1")
    return float(ratio)


def _f(default, help: str):
    return field(default=default, metadata={"help": help})


@dataclass
class TipConfig:
    """The ``tip`` config section (``tip.rule=soft_or tip.ratio=0.2`` on the command line)."""

    rule: str = _f("all", "token selection rule: " + " | ".join(RULES))
    ratio: float = _f(1.0, "retention ratio in (0, 1]; K = ceil(ratio * N) tokens kept")
    normalization: str = _f("minmax", "axis normalization: minmax (per batch, Eq. 5) | running (EMA of min/max)")
    running_momentum: float = _f(0.9, "running normalization: EMA momentum of min and max, in [0, 1)")
    entropy_alpha: float = _f(1.0, "entropy sampling: p ∝ ĥ^alpha")
    importance_weighted: bool = _f(False, "entropy sampling: unbiased importance weights (App. A.2); "
                                          "default off, as in the paper's experiments")
    sample_floor: float = _f(1e-3, "entropy sampling: floor of ĥ^alpha so every token has p > 0")
    quadrant_threshold: str = _f("fixed", "quadrant thresholds: fixed (the two values below) | median (per batch)")
    entropy_threshold: float = _f(0.5, "fixed quadrant threshold on normalized entropy, in [0, 1]")
    divergence_threshold: float = _f(0.5, "fixed quadrant threshold on normalized reverse KL, in [0, 1]")
    adaptive_tau: float = _f(0.8, "adaptive_kl: teacher-entropy threshold (nats) of the extra term")
    adaptive_alpha: float = _f(1.0, "adaptive_kl: weight of the extra top-k forward-KL term")
    seed: Optional[int] = _f(None, "selector RNG seed; None = train.seed (plugin) or 0 (direct apply)")

    def validate(self) -> "TipConfig":
        if self.rule not in RULES:
            raise ConfigError(f"tip.rule={self.rule!r} is not one of {list(RULES)}")
        try:
            check_ratio(self.ratio, self.rule)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        _choice("tip.normalization", self.normalization, NORMALIZATIONS)
        _choice("tip.quadrant_threshold", self.quadrant_threshold, THRESHOLD_MODES)
        _in_range("tip.running_momentum", self.running_momentum, 0, 1, hi_open=True)
        _in_range("tip.sample_floor", self.sample_floor, 0, 1, lo_open=True)
        _in_range("tip.entropy_threshold", self.entropy_threshold, 0, 1)
        _in_range("tip.divergence_threshold", self.divergence_threshold, 0, 1)
        if not self.entropy_alpha > 0:
            raise ConfigError(f"tip.entropy_alpha must be > 0, got {self.entropy_alpha}")
        if not self.adaptive_tau >= 0 or not self.adaptive_alpha >= 0:
            raise ConfigError(f"tip.adaptive_tau and tip.adaptive_alpha must be >= 0, got "
                              f"{self.adaptive_tau}, {self.adaptive_alpha}")
        if self.importance_weighted and self.rule not in SAMPLING_RULES:
            raise ConfigError(f"tip.importance_weighted applies to sampling rules {list(SAMPLING_RULES)}, "
                              f"not tip.rule={self.rule}")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)):
            raise ConfigError(f"tip.seed must be an integer or null, got {self.seed!r}")
        return self


def _choice(name, value, choices):
    if value not in choices:
        raise ConfigError(f"{name}={value!r} is not one of {list(choices)}")


def _in_range(name, value, lo, hi, lo_open=False, hi_open=False):
    ok = (value > lo if lo_open else value >= lo) and (value < hi if hi_open else value <= hi)
    if not ok:
        raise ConfigError(f"{name} must be in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}, got {value}")
