"""The one registry helper every plugin kind uses (agent.registry)."""

from __future__ import annotations

import sys

import pytest

from agent.registry import DuplicatePlugin, Registry, UnknownPlugin


class Alpha:
    name = "alpha"


class Beta:
    name = "alpha"


def test_a_name_is_imported_on_first_use_only(monkeypatch: pytest.MonkeyPatch) -> None:
    # colorsys: a module nothing else imports. (Dropping one the process uses, json.decoder, from
    # sys.modules once left the json C scanner raising SystemError in later tests.)
    monkeypatch.delitem(sys.modules, "colorsys", raising=False)
    reg: Registry[type] = Registry("widget", {"colours": "colorsys:rgb_to_hls"})
    assert "colours" in reg and reg.names() == ["colours"] and "colorsys" not in sys.modules
    with pytest.raises(UnknownPlugin, match="module colorsys did not register widget 'colours'"):
        reg.get("colours")  # the module imported, but nothing registered itself
    assert "colorsys" in sys.modules


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
