"""Registry of inference engines, by name.

Built-in engines sit in a lazy table (name -> "module:Class"), so importing this registry
imports no engine library; a class is imported the first time its name is asked for. Other
engines join with the :func:`register` decorator, which refuses a name already taken.
"""

from __future__ import annotations

import importlib
from typing import Any, Dict, List, Type

from agent.engines.base import Engine, EngineError, EngineUnavailable

__all__ = [
    "Engine", "EngineError", "EngineUnavailable", "UnknownEngine",
    "register", "engine_class", "get_engine", "known_engines", "probe_engines",
]

# Built-in engines; their modules import their library only inside methods.
_LAZY: Dict[str, str] = {
    "onnxruntime": "agent.engines.onnxruntime:OnnxRuntimeEngine",
    "openvino": "agent.engines.openvino:OpenVinoEngine",
    "paddlelite": "agent.engines.paddlelite:PaddleLiteEngine",
    "ncnn": "agent.engines.ncnn:NcnnEngine",
    "mnn": "agent.engines.mnn:MnnEngine",
}
_REGISTERED: Dict[str, Type[Engine]] = {}


class UnknownEngine(LookupError):
    """A job named an engine this agent does not know."""


def register(name: str) -> Any:
    """Class decorator adding an engine under ``name``; a second class for a name is refused."""

    def decorate(cls: Type[Engine]) -> Type[Engine]:
        where = "%s:%s" % (cls.__module__, cls.__qualname__)
        if name in _REGISTERED:
            other = _REGISTERED[name]
            raise ValueError(
                "engine name %r is already registered by %s:%s"
                % (name, other.__module__, other.__qualname__)
            )
        # A built-in name is reserved for the class the lazy table points at.
        if name in _LAZY and _LAZY[name] != where:
            raise ValueError("engine name %r is reserved for the built-in %s" % (name, _LAZY[name]))
        cls.name = name
        _REGISTERED[name] = cls
        return cls

    return decorate


def known_engines() -> List[str]:
    """Every engine name this agent can load, sorted."""
    return sorted(set(_LAZY) | set(_REGISTERED))


def engine_class(name: str) -> Type[Engine]:
    """The class registered for ``name``, importing a built-in module on first use."""
    if name not in _REGISTERED:
        if name not in _LAZY:
            raise UnknownEngine(
                "unknown engine %r; known engines: %s" % (name, ", ".join(known_engines()))
            )
        module_name = _LAZY[name].split(":", 1)[0]
        importlib.import_module(module_name)  # its @register fills _REGISTERED
        if name not in _REGISTERED:
            raise UnknownEngine("module %s did not register engine %r" % (module_name, name))
    return _REGISTERED[name]


def get_engine(name: str) -> Engine:
    """A new, unloaded engine instance for ``name``."""
    return engine_class(name)()


def probe_engines() -> Dict[str, Dict[str, Any]]:
    """{name: {"available", "version", "reason", ...engine facts}} for every known engine."""
    report: Dict[str, Dict[str, Any]] = {}
    for name in known_engines():
        entry: Dict[str, Any] = {"available": False, "version": None, "reason": None}
        try:
            facts = engine_class(name).probe()
        except EngineUnavailable as exc:
            entry["reason"] = str(exc)
        except Exception as exc:  # a broken install is reported, not raised: probe must finish
            entry["reason"] = "%s: %s" % (type(exc).__name__, exc)
        else:
            entry.update(facts)
            entry["available"] = True
        report[name] = entry
    return report
