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
from typing import Iterator, Optional

import torch

from opsd import hooks
from opsd.hooks import TokenSelection, TokenStats
# The config section lives in the torch-free tip_patches.config; re-exported here.
from tip_patches.config import NORMALIZATIONS, TipConfig  # noqa: F401
from tip_patches.scores import RunningMinMax, minmax
from tip_patches.selectors import select


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

    @property
    def keeps_all_tokens(self) -> bool:
        """At ratio 1 every rule but adaptive_kl keeps every token with weight 1 (importance weights
        are exactly 1 there), so opsd may compute the statistics inside the loss pass (the flag of
        ``opsd.hooks``). No TIP rule reads ``stats.teacher_topk_kl``: no ``needs_topk_kl``."""
        return self.config.ratio >= 1 and self.config.rule != "adaptive_kl"

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
