"""What a board must have to run a bundle, checked before any model is loaded.

``manifest["requirements"]`` says it: a Python and numpy at least as new as stated, an image
decoder (Pillow) for image tasks, and each engine's library within the release line the farm
measured (``min`` <= version < ``below``, compared as dotted integers: "1.20.1" < "1.100").
Every unmet requirement is one line that names it and how to install it. Standard library only,
so the check can say numpy is missing without needing numpy.
"""

from __future__ import annotations

import re
import sys
from typing import Any, Dict, List, Optional, Tuple

# The pip distribution of each built-in engine, where it differs from the engine's name.
PIP_NAMES = {"mnn": "MNN"}
_VERSION = re.compile(r"\d+(?:\.\d+)*")
_CONSTRAINT = re.compile(r"^\s*(>=|<=|==|>|<)?\s*(\d+(?:\.\d+)*)\s*$")


def parse_version(text: Any) -> Optional[Tuple[int, ...]]:
    """The leading dotted integers of a version ("2024.4.0-16579-..." -> (2024, 4, 0)); None if none."""
    found = _VERSION.search(str(text or ""))
    return tuple(int(p) for p in found.group(0).split(".")) if found else None


def _cmp(a: Tuple[int, ...], b: Tuple[int, ...]) -> int:
    """Compare dotted versions, missing parts as 0: (1, 20) == (1, 20, 0)."""
    n = max(len(a), len(b))
    pa, pb = a + (0,) * (n - len(a)), b + (0,) * (n - len(b))
    return (pa > pb) - (pa < pb)


def satisfies(version: Tuple[int, ...], spec: str) -> bool:
    """Whether ``version`` meets a spec such as ">=1.17" or ">=1.20,<1.21" (a bare "1.17" means >=)."""
    for part in str(spec).split(","):
        if not part.strip():
            continue
        m = _CONSTRAINT.match(part)
        if not m:
            raise ValueError("unreadable version requirement %r" % spec)
        op, bound = m.group(1) or ">=", parse_version(m.group(2))
        assert bound is not None
        c = _cmp(version, bound)
        ok = {">=": c >= 0, "<=": c <= 0, "==": c == 0, ">": c > 0, "<": c < 0}[op]
        if not ok:
            return False
    return True


def engine_range(entry: Dict[str, Any]) -> str:
    """The pip specifier of an engine requirement: ">=1.20,<1.21"."""
    parts = []
    if entry.get("min"):
        parts.append(">=%s" % entry["min"])
    if entry.get("below"):
        parts.append("<%s" % entry["below"])
    return ",".join(parts)


def _python(spec: str) -> List[str]:
    have = sys.version_info[:3]
    if satisfies(tuple(have), spec):
        return []
    return ["python %d.%d.%d is too old, the bundle needs python %s: run it with a newer python3"
            % (have[0], have[1], have[2], spec)]


def _numpy(spec: str) -> List[str]:
    try:
        import numpy
    except ImportError:
        return ["numpy is not installed: pip install 'numpy%s'" % spec]
    version = parse_version(numpy.__version__)
    if version is not None and not satisfies(version, spec):
        return ["numpy %s is installed, the bundle needs numpy%s: pip install 'numpy%s'"
                % (numpy.__version__, spec, spec)]
    return []


def _decoder(name: str) -> List[str]:
    # Pillow is the one decoder the runtime reads images with (agent.tasks.preprocess).
    try:
        import PIL.Image  # noqa: F401
    except ImportError:
        return ["no image decoder: pip install %s" % (name or "Pillow")]
    return []


def _installed(name: str) -> str:
    """The engine library's version as the engine itself reports it; without numpy (which the
    agent's engine code needs), as pip recorded it. EngineUnavailable (or LookupError) when absent."""
    try:
        from agent.engines import engine_class
    except ImportError:
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version(PIP_NAMES.get(name, name))
        except PackageNotFoundError:
            raise LookupError("no %s package" % PIP_NAMES.get(name, name)) from None
    return engine_class(name).version()


def _engine(name: str, entry: Dict[str, Any]) -> List[str]:
    wanted = engine_range(entry)
    pip = "pip install '%s%s'" % (PIP_NAMES.get(name, name), wanted)
    measured = entry.get("measured")
    try:
        installed = _installed(name)
    except Exception as exc:  # EngineUnavailable, UnknownEngine, LookupError: named below
        if type(exc).__name__ == "UnknownEngine":
            return ["engine %s is not one this runtime knows; the bundle was built by a newer EdgeFarm" % name]
        return ["%s is not installed (%s)%s: %s" % (name, str(exc).strip() or type(exc).__name__,
                                                    ", the bundle was measured with %s" % measured if measured else "",
                                                    pip)]
    version = parse_version(installed)
    if not wanted or version is None or satisfies(version, wanted):
        return []
    return ["%s %s is installed, the bundle was measured with %s: %s"
            % (name, installed, measured or wanted, pip)]


def unmet(requirements: Dict[str, Any], engines: List[str], images: bool) -> List[str]:
    """Every unmet requirement, one line each ([] = the board can run the bundle).

    ``engines``: the engines the bundle's models use (checked even where the manifest gives no
    range); ``images``: whether a model reads images (then a decoder is needed)."""
    problems: List[str] = []
    problems += _python(str(requirements.get("python") or ">=3.8"))
    problems += _numpy(str(requirements.get("numpy") or ">=1.17"))
    if images or requirements.get("image_decoder"):
        problems += _decoder(str(requirements.get("image_decoder") or "Pillow"))
    declared = dict(requirements.get("engines") or {})
    for name in sorted(set(declared) | set(engines)):
        problems += _engine(name, dict(declared.get(name) or {}))
    return problems
