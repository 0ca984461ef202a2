"""The one registry helper every plugin kind uses (agent.registry)."""

from __future__ import annotations

import sys

import pytest

from agent.registry import DuplicatePlugin, Registry, UnknownPlugin


class Alpha:
    name = "alpha"


class Beta:
    name = "alpha"


def test_a_name_is_imported_on_first_use_only() -> None:
    reg: Registry[type] = Registry("widget", {"json": "json:JSONDecoder"})
    sys.modules.pop("json.decoder", None)
    assert "json" in reg and reg.names() == ["json"]
    with pytest.raises(UnknownPlugin, match="module json did not register widget 'json'"):
        reg.get("json")  # the module imported, but nothing registered itself


def test_duplicates_and_reserved_names_are_refused_and_unknown_names_listed() -> None:
    reg: Registry[type] = Registry("widget", {"builtin": "somewhere.else:Thing"})
    reg.register()(Alpha)
    assert reg["alpha"] is Alpha and reg.where("alpha").endswith(":Alpha")
    with pytest.raises(DuplicatePlugin, match="widget 'alpha' is already registered by .*Alpha"):
        reg.register()(Beta)
    with pytest.raises(DuplicatePlugin, match="widget 'builtin' is reserved for the built-in somewhere.else:Thing"):
        reg.register("builtin")(Alpha)
    with pytest.raises(UnknownPlugin) as caught:
        reg.get("gamma")
    assert str(caught.value) == "unknown widget 'gamma'; known: alpha, builtin"
    reg.unregister("alpha")
    assert "alpha" not in reg and "builtin" in reg
