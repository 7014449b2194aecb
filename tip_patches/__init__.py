"""TIP (Token Importance in on-Policy distillation, arXiv 2604.14084) for the opsd trainer.

A separate package that patches itself into ``opsd.hooks.select_tokens``; opsd never imports it.

- :mod:`tip_patches.scores`: min-max / running normalization, Soft-OR (Eq. 5), Q3 score (§7.3)
- :mod:`tip_patches.selectors`: the selection rules and :func:`select`
- :mod:`tip_patches.quadrants`: Q1–Q4 classification and per-step diagnostics
- :mod:`tip_patches.distributed`: global selection under data parallelism
- :mod:`tip_patches.config`: :class:`TipConfig` (the ``tip`` section; torch-free)
- :mod:`tip_patches.patch`: :class:`TipSelector`, :func:`apply`, :func:`patched`
- :mod:`tip_patches.plugin`: the ``tip`` config section of ``opsd.config``
- ``python -m tip_patches.inspect``: token-level quadrant report (App. B.4) and scatter (Fig. 2)

Every DECIDE is listed in ``tip_patches/README.md``.
"""
import importlib

# Names are resolved on first use (PEP 562) so that importing a torch-free submodule
# (``tip_patches.config``, ``tip_patches.plugin``: config loading, ``opsd.launch --dry-run``)
# does not import torch through this package's __init__.
_EXPORTS = {"TipConfig": "config", "RULES": "config", "TipHandle": "patch", "TipSelector": "patch",
            "active_handle": "patch", "apply": "patch", "patched": "patch", "select": "selectors",
            "minmax": "scores", "RunningMinMax": "scores", "soft_or": "scores", "q3_score": "scores"}
__all__ = list(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
