"""The engine names a spec or an inventory may use, from the registries that define them."""

from __future__ import annotations

from controller.plugins import NATIVE_TOOLS


def known_engines() -> list[str]:
    """Every engine EdgeFarm can measure: one the agent runs (``agent.engines.ENGINES``), or one a
    board measures with its own benchmark tool (``controller.plugins.NATIVE_TOOLS``)."""
    from agent.engines import known_engines as agent_engines

    return sorted(set(agent_engines()) | {NATIVE_TOOLS.get(tool).engine for tool in NATIVE_TOOLS})


def check_engine(name: str) -> str:
    """``name`` if EdgeFarm knows the engine, else a ValueError naming it and the known ones."""
    known = known_engines()
    if name not in known:
        raise ValueError(f"unknown engine {name!r}; known: {', '.join(known)}")
    return name
