"""TIP (Token Importance in on-Policy distillation, arXiv 2604.14084) for the opsd trainer.

A separate package that patches itself into ``opsd.hooks.select_tokens``; opsd never imports it.

- :mod:`tip_patches.scores`: min-max / running normalization, Soft-OR (Eq. 5), Q3 score (§7.3)
- :mod:`tip_patches.selectors`: the selection rules and :func:`select`
- :mod:`tip_patches.quadrants`: Q1–Q4 classification and per-step diagnostics
- :mod:`tip_patches.distributed`: global selection under data parallelism
- :mod:`tip_patches.patch`: :class:`TipConfig`, :func:`apply`, :func:`patched`
- :mod:`tip_patches.plugin`: the ``tip`` config section of ``opsd.config``
- ``python -m tip_patches.inspect``: token-level quadrant report (App. B.4) and scatter (Fig. 2)

Every DECIDE is listed in ``tip_patches/README.md``.
"""
from tip_patches.patch import TipConfig, TipHandle, TipSelector, active_handle, apply, patched
from tip_patches.scores import RunningMinMax, minmax, q3_score, soft_or
from tip_patches.selectors import RULES, select

__all__ = ["TipConfig", "TipHandle", "TipSelector", "active_handle", "apply", "patched", "select", "RULES",
           "minmax", "RunningMinMax", "soft_or", "q3_score"]
