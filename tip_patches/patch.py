"""Install a TIP selector into opsd's loss hook (a monkey-patch of ``opsd.hooks.select_tokens``).

    handle = tip_patches.apply(TipConfig(rule="soft_or", ratio=0.2, seed=0))
    ...                       # the trainer now calls the TIP selector
    handle.remove()           # plain OPD again

    with tip_patches.patched(TipConfig(rule="q3", ratio=0.1)):
        ...

Refusing to stack: ``apply`` raises if the hook is not opsd's default (a second TIP patch or
any other patch), so two selectors never run silently one over the other.
"""
from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass, field
from typing import Iterator, Optional

import torch

from opsd import hooks
from opsd.config import ConfigError
from opsd.hooks import TokenSelection, TokenStats
from tip_patches.quadrants import THRESHOLD_MODES
from tip_patches.scores import RunningMinMax, minmax
from tip_patches.selectors import RULES, SAMPLING_RULES, check_ratio, select

NORMALIZATIONS = ("minmax", "running")


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


class TipSelector:
    """The callable installed as ``opsd.hooks.select_tokens``.

    Holds the selector state the trainer checkpoints through :meth:`state_dict`: its CPU
    ``torch.Generator`` (seeded from ``config.seed``, 0 when ``None``) and, with running
    normalization, the two running ranges. ``last_diagnostics`` keeps the latest call's dict.
    """

    def __init__(self, config: TipConfig):
        self.config = config.validate()
        self.generator = torch.Generator().manual_seed(0 if config.seed is None else config.seed)
        self.normalizers = (minmax, minmax)
        if config.normalization == "running":
            self.normalizers = (RunningMinMax(config.running_momentum), RunningMinMax(config.running_momentum))
        suffix = "+iw" if config.importance_weighted else ""
        suffix += "+running" if config.normalization == "running" else ""
        self.selector_name = f"tip:{config.rule}@{config.ratio:g}{suffix}"
        self.calls = 0
        self.last_diagnostics: dict = {}

    def __call__(self, stats: TokenStats) -> TokenSelection:
        c = self.config
        sel = select(stats, c.rule, c.ratio, self.generator, normalizers=self.normalizers,
                     entropy_alpha=c.entropy_alpha, importance_weighted=c.importance_weighted,
                     sample_floor=c.sample_floor, quadrant_threshold=c.quadrant_threshold,
                     entropy_threshold=c.entropy_threshold, divergence_threshold=c.divergence_threshold,
                     adaptive_tau=c.adaptive_tau, adaptive_alpha=c.adaptive_alpha)
        self.calls += 1
        self.last_diagnostics = sel.diagnostics
        return sel

    def __repr__(self) -> str:
        return f"TipSelector({self.selector_name})"

    def state_dict(self) -> dict:
        state = {"selector_name": self.selector_name, "calls": self.calls,
                 "generator": self.generator.get_state()}
        if isinstance(self.normalizers[0], RunningMinMax):
            state["normalizers"] = [n.state_dict() for n in self.normalizers]
        return state

    def load_state_dict(self, state: dict) -> None:
        if state.get("selector_name") != self.selector_name:
            raise ValueError(f"checkpointed selector {state.get('selector_name')!r} differs from the "
                             f"configured {self.selector_name!r}; resume with the same tip.* options")
        self.generator.set_state(state["generator"])
        self.calls = int(state["calls"])
        for norm, s in zip(self.normalizers, state.get("normalizers", [])):
            norm.load_state_dict(s)


class TipHandle:
    """Returned by :func:`apply`; :meth:`remove` restores the hook that was there before."""

    def __init__(self, selector: TipSelector, original):
        self.selector = selector
        self._original = original
        self.active = True

    def remove(self) -> None:
        """Restore the original hook; a second call is a no-op."""
        global _active
        if not self.active:
            return
        if hooks.select_tokens is not self.selector:
            raise RuntimeError(f"opsd.hooks.select_tokens was replaced by {hooks.active_selector_name()!r} "
                               f"after {self.selector.selector_name!r} was applied; remove that patch first")
        hooks.select_tokens = self._original
        self.active = False
        _active = None

    def __repr__(self) -> str:
        return f"TipHandle({self.selector.selector_name}, active={self.active})"


_active: Optional[TipHandle] = None


def apply(config: Optional[TipConfig] = None, **overrides) -> TipHandle:
    """Replace ``opsd.hooks.select_tokens`` with a :class:`TipSelector` for ``config``
    (``TipConfig`` fields may also be given as keywords). Raises ``RuntimeError`` if a selector
    other than opsd's default is already installed."""
    global _active
    config = dataclasses.replace(config or TipConfig(), **overrides)
    selector = TipSelector(config)
    if hooks.select_tokens is not hooks.select_all:
        raise RuntimeError(f"opsd.hooks.select_tokens is already patched ({hooks.active_selector_name()!r}); "
                           "call .remove() on its handle before applying "
                           f"{selector.selector_name!r} (patches do not stack)")
    handle = TipHandle(selector, hooks.select_tokens)
    hooks.select_tokens = selector
    _active = handle
    return handle


def active_handle() -> Optional[TipHandle]:
    """The handle of the installed TIP selector, if any."""
    return _active


@contextlib.contextmanager
def patched(config: Optional[TipConfig] = None, **overrides) -> Iterator[TipSelector]:
    """``with patched(cfg) as selector:`` — apply for the block, remove on exit (also on error)."""
    handle = apply(config, **overrides)
    try:
        yield handle.selector
    finally:
        handle.remove()
