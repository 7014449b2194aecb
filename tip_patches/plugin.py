"""opsd plugin: the ``tip`` config section.

Registered through the ``opsd.plugins`` entry point (``tip = tip_patches.plugin:register``) or,
in an uninstalled checkout, ``OPSD_PLUGINS=tip_patches.plugin``. Then

    python -m opsd.train --config X.yaml tip.rule=soft_or tip.ratio=0.2

validates the section with the rest of the config and, before training, installs the selector.
Without a ``tip`` section nothing is activated and the trainer is plain OPD.
"""
from __future__ import annotations

import dataclasses

# Only the torch-free config module at import time: registering the section (every config load,
# ``opsd.launch --dry-run``) must not import torch; ``apply`` is imported when a run activates it.
from tip_patches.config import TipConfig


def activate(tip_cfg: TipConfig, full_cfg):
    """Apply ``tip_cfg``; ``tip.seed`` defaults to ``train.seed`` so every rank (and a resumed
    run) draws the same samples. The config object itself is not modified."""
    if tip_cfg.seed is None:
        seed = getattr(getattr(full_cfg, "train", None), "seed", None)
        tip_cfg = dataclasses.replace(tip_cfg, seed=seed)
    from tip_patches.patch import apply

    return apply(tip_cfg)  # a TipHandle


def register(registry) -> None:
    registry.add_section("tip", TipConfig, activate)
