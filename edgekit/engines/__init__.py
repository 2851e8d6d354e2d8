"""Engines register by name. Built-ins are named here (imported lazily, so ``import edgekit``
never loads llama.cpp); third parties add theirs through the ``edgekit.engines`` entry-point
group, e.g. in their pyproject.toml::

    [project.entry-points."edgekit.engines"]
    myengine = "my_package.engine:MyEngine"   # an Engine subclass or a factory(model, **kw)

A plugin that fails to import is named in the error and the warning, and the others still work.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any

from edgekit.engines.base import Capabilities, Engine, EngineInfo, Event, Prompt, TokenPrompt
from edgekit.errors import UsageError

log = logging.getLogger("edgekit.engines")

ENTRY_POINT_GROUP = "edgekit.engines"
Factory = Callable[..., Engine]

_BUILTIN: dict[str, str] = {
    "llama.cpp": "edgekit.engines.llamacpp:LlamaCppEngine",
    "openai": "edgekit.engines.openai:OpenAIEngine",
    "onnx": "edgekit.engines.onnx:OnnxEngine",
}
ALIASES = {"llamacpp": "llama.cpp", "local": "llama.cpp", "cloud": "openai"}

_registered: dict[str, str | Factory] = dict(_BUILTIN)
_plugin_errors: dict[str, str] = {}
_plugins_loaded = False


def register(name: str, factory: str | Factory) -> None:
    """Register an engine: an Engine subclass, a factory(model, **kw) -> Engine, or "module:attr"."""
    _registered[name] = factory


def unregister(name: str) -> None:
    _registered.pop(name, None)


def _load_plugins() -> None:
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in _BUILTIN:
            continue
        try:
            _registered[ep.name] = ep.load()
        except Exception as e:  # a broken plugin must not take the others down
            _plugin_errors[ep.name] = f"{type(e).__name__}: {e}"
            log.info("engine plugin %r (%s) failed to import: %s", ep.name, ep.value, e)  # named in lookup errors


def names() -> list[str]:
    """Registered engine names (built-ins and plugins that imported)."""
    _load_plugins()
    return sorted(_registered)


def plugin_errors() -> dict[str, str]:
    _load_plugins()
    return dict(_plugin_errors)


def _resolve(obj: str | Factory) -> Factory:
    if isinstance(obj, str):
        mod, _, attr = obj.partition(":")
        return getattr(importlib.import_module(mod), attr)
    return obj


def get(name: str) -> Factory:
    """The factory registered as ``name``; an unknown name lists the registered ones."""
    _load_plugins()
    key = ALIASES.get(name, name)
    if key in _plugin_errors and key not in _registered:
        raise UsageError(
            f"engine plugin {key!r} failed to import ({_plugin_errors[key]})",
            fix=f"fix or reinstall the package that provides it; available: {', '.join(names())}",
        )
    if key not in _registered:
        broken = f"; plugins that failed to import: {', '.join(_plugin_errors)}" if _plugin_errors else ""
        raise UsageError(f"unknown engine {name!r}{broken}", fix=f"use one of: {', '.join(names())}")
    return _resolve(_registered[key])


def create(name: str, model: str, **kwargs: Any) -> Engine:
    """Build engine ``name`` for ``model`` (kwargs go to the engine)."""
    return get(name)(model, **kwargs)


def canonical(name: str | None) -> str:
    return ALIASES.get(name or "llama.cpp", name or "llama.cpp")


__all__ = [
    "Engine",
    "EngineInfo",
    "Capabilities",
    "Event",
    "Prompt",
    "TokenPrompt",
    "register",
    "unregister",
    "names",
    "get",
    "create",
    "plugin_errors",
    "ENTRY_POINT_GROUP",
]
