"""Registry of inference engines, by name.

Built-in engines sit in a lazy table (name -> "module:Class", see ``agent.registry``), so importing
this registry imports no engine library; a class is imported the first time its name is asked
for. Other engines join with the :func:`register` decorator, which refuses a name already taken.
"""

from __future__ import annotations

from typing import Any, Dict, List, Type

from agent.engines.base import Engine, EngineError, EngineUnavailable
from agent.registry import Registry, UnknownPlugin

__all__ = [
    "ENGINES", "Engine", "EngineError", "EngineUnavailable", "UnknownEngine",
    "register", "engine_class", "get_engine", "known_engines", "probe_engines",
]

# Built-in engines; their modules import their library only inside methods.
ENGINES: "Registry[Type[Engine]]" = Registry("engine", {
    "onnxruntime": "agent.engines.onnxruntime:OnnxRuntimeEngine",
    "openvino": "agent.engines.openvino:OpenVinoEngine",
    "paddlelite": "agent.engines.paddlelite:PaddleLiteEngine",
    "ncnn": "agent.engines.ncnn:NcnnEngine",
    "mnn": "agent.engines.mnn:MnnEngine",
})


class UnknownEngine(UnknownPlugin):
    """A job named an engine this agent does not know."""


def register(name: str) -> Any:
    """Class decorator adding an engine under ``name``; a second class for a name is refused."""

    def decorate(cls: Type[Engine]) -> Type[Engine]:
        ENGINES.register(name)(cls)
        cls.name = name
        return cls

    return decorate


def known_engines() -> List[str]:
    """Every engine name this agent can load, sorted."""
    return sorted(ENGINES)


def engine_class(name: str) -> Type[Engine]:
    """The class registered for ``name``, importing a built-in module on first use."""
    try:
        return ENGINES.get(name)
    except UnknownPlugin as exc:
        raise UnknownEngine(str(exc)) from None


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
