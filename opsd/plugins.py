"""Config-section plugins: how packages such as ``tip_patches`` extend the trainer without
``opsd`` knowing them.

A plugin registers a config section (a dataclass) and an ``activate(section, config)``
callable that installs whatever it needs (e.g. replaces ``opsd.hooks.select_tokens``) and returns
a handle with ``remove()``. The trainer activates each section present in the config before
training and removes it afterwards. A section absent from the config is never activated.

Plugins are discovered from the ``opsd.plugins`` entry-point group (declared in the installing
package's setup.py) and from the ``OPSD_PLUGINS`` environment variable (comma-separated module
names, each with a ``register(registry)`` function), so an uninstalled checkout also works.
"""
from __future__ import annotations

import importlib
import logging
import os
from dataclasses import dataclass
from importlib import metadata
from typing import Any, Callable, Dict, Optional

log = logging.getLogger(__name__)


@dataclass
class SectionPlugin:
    name: str
    config_cls: type
    activate: Callable[[Any, Any], Any]  # (section_config, full_config) -> handle with remove()


class PluginRegistry:
    def __init__(self) -> None:
        self.sections: Dict[str, SectionPlugin] = {}

    def add_section(self, name: str, config_cls: type, activate: Callable[[Any, Any], Any]) -> None:
        if name in self.sections and self.sections[name].config_cls is not config_cls:
            raise ValueError(f"config section {name!r} is registered by two plugins")
        self.sections[name] = SectionPlugin(name, config_cls, activate)


_registry: Optional[PluginRegistry] = None


def registry() -> PluginRegistry:
    """The plugin registry, loaded once on first use."""
    global _registry
    if _registry is None:
        _registry = PluginRegistry()
        for register in _discover():
            register(_registry)
    return _registry


def _discover():
    seen = set()
    for ep in metadata.entry_points(group="opsd.plugins"):
        if ep.value in seen:
            continue
        seen.add(ep.value)
        try:
            yield ep.load()
        except Exception as e:  # a broken optional plugin must not break plain OPD
            log.warning("opsd plugin %s failed to load: %s", ep.value, e)
    for mod in filter(None, (m.strip() for m in os.environ.get("OPSD_PLUGINS", "").split(","))):
        if mod + ":register" in seen:
            continue
        seen.add(mod + ":register")
        yield importlib.import_module(mod).register
