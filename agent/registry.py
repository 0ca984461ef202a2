"""One registry helper for every kind of plugin: engines here, and on the controller converters,
native benchmark tools, transports and variant passes.

A registry starts from a lazy table, name -> "module:attribute", so that importing it imports no
plugin and none of the libraries a plugin needs; the module is imported the first time its name is
asked for, and registers its plugin with :meth:`Registry.register`. The same rules hold everywhere:

- a second plugin for a name already registered is refused;
- a built-in name is reserved for the attribute its table entry points at (another class claiming
  it is refused, so a typo cannot silently replace a built-in);
- an unknown name raises :class:`UnknownPlugin`, whose message lists the names known.

The registry lives in the agent because the agent is the lowest layer: it runs on boards with the
standard library alone (Python >= 3.8), and the controller may import it, never the reverse.
"""

from __future__ import annotations

import importlib
from typing import Callable, Dict, Generic, Iterator, List, Optional, TypeVar

__all__ = ["DuplicatePlugin", "Registry", "UnknownPlugin"]

T = TypeVar("T")


class UnknownPlugin(LookupError):
    """A name no plugin of this kind is registered or reserved under."""


class DuplicatePlugin(ValueError):
    """A second plugin for a name already taken, or a built-in name claimed by another plugin."""


class Registry(Generic[T]):
    """Plugins of one ``kind`` ("engine", "transport", ...) by name, imported on first use."""

    def __init__(self, kind: str, builtins: Dict[str, str]) -> None:
        self.kind = kind
        self._table = dict(builtins)  # name -> "module:attribute", built-in or registered
        self._builtins = dict(builtins)
        self._loaded: Dict[str, T] = {}

    def register(self, name: Optional[str] = None) -> Callable[[T], T]:
        """Decorator adding a plugin under ``name`` (default: the plugin's own ``name`` attribute)."""

        def decorate(plugin: T) -> T:
            key = name if name is not None else getattr(plugin, "name", None)
            if not isinstance(key, str) or not key:
                raise DuplicatePlugin("a %s needs a name to be registered under" % self.kind)
            where = "%s:%s" % (plugin.__module__, plugin.__qualname__)  # type: ignore[attr-defined]
            if key in self._loaded:
                other = self._loaded[key]
                raise DuplicatePlugin("%s %r is already registered by %s:%s" % (
                    self.kind, key, other.__module__, other.__qualname__))  # type: ignore[attr-defined]
            if self._builtins.get(key, where) != where:
                raise DuplicatePlugin("%s %r is reserved for the built-in %s" % (self.kind, key, self._builtins[key]))
            self._loaded[key] = plugin
            self._table[key] = where
            return plugin

        return decorate

    def unregister(self, name: str) -> None:
        """Forget a plugin that was registered at run time (a built-in entry stays in the table)."""
        self._loaded.pop(name, None)
        if name not in self._builtins:
            self._table.pop(name, None)

    def get(self, name: str) -> T:
        """The plugin registered as ``name``, importing its module on first use."""
        if name not in self._loaded:
            if name not in self._table:
                raise UnknownPlugin("unknown %s %r; known: %s" % (self.kind, name, ", ".join(sorted(self.names()))))
            module = self._table[name].split(":", 1)[0]
            importlib.import_module(module)  # the module registers its plugin
            if name not in self._loaded:
                raise UnknownPlugin("module %s did not register %s %r" % (module, self.kind, name))
        return self._loaded[name]

    def names(self) -> List[str]:
        """Every name known, built-in or registered, in the table's order."""
        return list(self._table)

    def where(self, name: str) -> str:
        """The "module:attribute" a name points at."""
        return self._table[name]

    def __contains__(self, name: object) -> bool:
        return name in self._table

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __getitem__(self, name: str) -> T:
        return self.get(name)

    def __len__(self) -> int:
        return len(self._table)
