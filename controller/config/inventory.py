"""Board inventory: what boards exist, what chip each carries and how to reach it.

Like labgrid's resources: a board is described once, in YAML, and the transport named here
is looked up in the transport registry at run time.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from controller.config.names import check_engine
from controller.errors import ConfigError
from controller.plugins import NATIVE_TOOLS, TRANSPORTS
from controller.validation import Name, Strict, load_yaml, parse


class SshHop(Strict):
    """One SSH server on the way to a board: the board itself or a jump host before it."""

    host: str = Field(min_length=1, description="address or name")
    port: int = Field(22, ge=1, le=65535)
    user: Name
    key_file: str | None = Field(None, min_length=1, description="private key; default: the keys of a running ssh-agent")
    known_hosts: str = Field("~/.ssh/known_hosts", min_length=1, description="host keys the server's key is checked against")
    accept_new_host_key: bool = Field(False, description="trust and save an unknown key once; a changed key is always refused")
    connect_timeout: float = Field(10.0, gt=0)


class SshSettings(SshHop):
    jump: SshHop | None = Field(None, description="a jump host the board is reached through, like ssh -J")
    dead_after: float = Field(20.0, gt=0, description="seconds without an answer after which the link counts as lost")


# A USB serial (as `adb devices` lists it) or HOST:PORT for adb over TCP. It travels inside adb
# server requests (host-serial:SERIAL:...), so nothing outside a serial's own alphabet passes.
_ADB_SERIAL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}(:[0-9]{1,5})?$")


class AdbSettings(Strict):
    serial: str = Field(description="USB serial from `adb devices`, or HOST:PORT for adb over TCP (joined like adb connect)")
    server_host: str = Field("127.0.0.1", min_length=1, description="the adb server; started here if it is local and not running")
    server_port: int = Field(5037, ge=1, le=65535)
    connect_timeout: float = Field(10.0, gt=0)

    @field_validator("serial")
    @classmethod
    def _safe_serial(cls, serial: str) -> str:
        if not _ADB_SERIAL.match(serial):
            raise ValueError("must be a USB serial (letters, digits, '.', '_', '-') or HOST:PORT")
        return serial


class NativeTool(Strict):
    """An engine's own benchmark binary, for a board that cannot run the agent (no Python)."""

    tool: str = Field(description="a registered native benchmark: benchmark_bin, benchmark_model, benchncnn, "
                                  "mnn_benchmark, benchmark_app")
    binary: str = Field(min_length=1, description="the tool built for the board, on this machine; pushed and checked by sha256")
    backend: str | None = Field(None, description="the tool's backend or device, in its own words")
    cores: Literal["big", "little", "all"] | None = Field(
        None, description="big, little or all, for tools that bind to a core cluster")

    @field_validator("tool")
    @classmethod
    def _registered(cls, tool: str) -> str:
        if tool not in NATIVE_TOOLS:
            raise ValueError(f"unknown native benchmark {tool!r}; known: {', '.join(sorted(NATIVE_TOOLS))}")
        return tool


# A board host's name travels as a Ray node label's value (controller.run.hosts), whose rule this
# is: at most 63 letters, digits, '.', '_' or '-', a letter or digit at both ends.
_HOST = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?$")
HOST_RULE = "1-63 letters, digits, '.', '_' or '-', starting and ending with a letter or digit"


def check_host(host: str) -> str:
    """``host`` if it is a board host's name, else ``ValueError`` saying the rule."""
    if not _HOST.match(host):
        raise ValueError(f"a host name is {HOST_RULE}, e.g. lab-2")
    return host


class BoardSpec(Strict):
    """One board of the inventory (a labgrid resource): its chip, how to reach it, how to measure on it."""

    name: Name
    # 128: the column each job records it in
    chip: str = Field("auto", min_length=1, max_length=128,
                      description="chip name used to group results; 'auto' = the CPU the agent reports")
    transport: str = Field("local", description="a registered transport: local, ssh, adb")
    host: str | None = Field(None, description="the board host that reaches this board: the machine where "
                                                "`edgefarm worker --host NAME` runs; default: the controller's own")
    ssh: SshSettings | None = Field(None, description="how to reach the board, for transport ssh")
    adb: AdbSettings | None = Field(None, description="how to reach the board, for transport adb")
    python: str | None = Field(None, min_length=1, description="interpreter that runs the agent; default: the controller's own")
    engine_python: dict[Name, str] = Field(
        default_factory=dict,
        description="another interpreter for one engine's jobs, where its wheels need another Python "
                    "(Paddle Lite: 3.10 at most), e.g. {paddlelite: /opt/lite/bin/python3.10}; a local board "
                    "whose agent runs in the controller's Python takes .venv-paddle for paddlelite when it exists")
    workdir: str | None = Field(None, min_length=1, description="agent work directory on the board")
    engines: list[Name] | None = Field(None, description="engines allowed on this board; default: all found")
    threads: int | None = Field(None, ge=1, description="engine threads; default: the engine's own")
    engine_options: dict[Name, dict[str, Any]] = Field(
        default_factory=dict, description="options per engine on this board, e.g. ONNX Runtime's CUDA providers")
    native: dict[Name, NativeTool] = Field(
        default_factory=dict, description="engines measured by their own benchmark binary instead of the agent")
    agent: bool = Field(True, description="false for a board without Python: only its native tools run")
    tags: list[Name] = Field(default_factory=list)
    concurrency: int = Field(1, ge=1, description="jobs at once on this board; 1 keeps measurements clean")
    cache_mb: float = Field(2048.0, gt=0, description="artifact cache on the board, pruned least recently used first")
    cpus: list[int] | None = Field(None, min_length=1, description="cores the agent is pinned to; default: all")
    cooldown_s: float = Field(0.0, ge=0, description="pause before each job, so one job's heat does not slow the next")
    max_temperature_c: float | None = Field(None, gt=0, description="wait before a job until the board is this cool")
    thermal_wait_s: float = Field(600.0, gt=0, description="longest wait for the ceiling before the job fails")
    retries: int = Field(2, ge=0, description="new attempts of a job, or of a run's start of the board, when the link is lost in the middle of it")
    quarantine_after: int = Field(3, ge=1, description="failed health checks in a row that put the board in quarantine")

    @field_validator("chip")
    @classmethod
    def _printable_chip(cls, chip: str) -> str:
        if not chip.strip() or not chip.isprintable():
            raise ValueError("a chip name is printable text on one line, e.g. 'rk3588' or 'auto'")
        return chip

    @field_validator("host")
    @classmethod
    def _host_name(cls, host: str | None) -> str | None:
        return None if host is None else check_host(host)

    @field_validator("transport")
    @classmethod
    def _registered_transport(cls, transport: str) -> str:
        if transport not in TRANSPORTS:
            raise ValueError(f"unknown transport {transport!r}; known: {', '.join(TRANSPORTS)}")
        return transport

    @field_validator("engines")
    @classmethod
    def _known_engines(cls, engines: list[str] | None) -> list[str] | None:
        for engine in engines or ():
            check_engine(engine)
        return engines

    @field_validator("engine_python", "engine_options", "native")
    @classmethod
    def _known_engine_keys(cls, by_engine: dict[str, Any]) -> dict[str, Any]:
        for engine in by_engine:
            check_engine(engine)
        return by_engine

    @field_validator("engine_options")
    @classmethod
    def _plain_options(cls, options: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        # Stored with each job and sent to the board as JSON: finite numbers, strings, lists, mappings.
        for engine, values in options.items():
            try:
                json.dumps(values, allow_nan=False)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"{engine}: options are plain data (text, finite numbers, lists, mappings): {exc}") from None
        return options

    @field_validator("cpus")
    @classmethod
    def _cores(cls, cpus: list[int] | None) -> list[int] | None:
        if cpus is not None and (min(cpus) < 0 or len(set(cpus)) != len(cpus)):
            raise ValueError(f"cpus must be distinct core numbers >= 0, got {cpus}")
        return cpus

    @model_validator(mode="after")
    def _transport_settings(self) -> "BoardSpec":
        if self.transport == "ssh" and self.ssh is None:
            raise ValueError("transport ssh needs an 'ssh' section with host and user")
        if self.transport == "adb" and self.adb is None:
            raise ValueError("transport adb needs an 'adb' section with a serial")
        for engine, spec in self.native.items():
            measures = NATIVE_TOOLS.get(spec.tool).engine
            if measures != engine:
                raise ValueError(f"native.{engine}: {spec.tool} measures {measures}, not {engine}")
        if not self.agent and not self.native:
            raise ValueError("a board without the agent (agent: false) needs at least one 'native' tool")
        if self.transport == "local" and self.python is None and "paddlelite" not in self.engine_python:
            # The controller's Python may be too new for Paddle Lite's wheels; setup makes the
            # Paddle tools' interpreter, which runs them on this machine.
            from controller.workspace import paddle_python

            lite = paddle_python()
            if lite:
                self.engine_python["paddlelite"] = str(lite)
        return self


class Inventory(Strict):
    boards: list[BoardSpec] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique(self) -> "Inventory":
        names = [b.name for b in self.boards]
        if len(set(names)) != len(names):
            raise ValueError(f"board names must be unique, got {names}")
        return self

    def board(self, name: str, source: str, spec_source: str | None = None) -> BoardSpec:
        """The board ``name``; else a ``ConfigError`` naming the inventory (``source``: its file, or
        the built-in one) and, given ``spec_source``, the spec whose ``boards`` key names it."""
        for b in self.boards:
            if b.name == name:
                return b
        known = ", ".join(b.name for b in self.boards)
        where = f"{spec_source}: boards" if spec_source else "boards"
        hint = (" (no --inventory or $EDGEFARM_INVENTORY was given)" if source == BUILT_IN else "")
        raise ConfigError(f"{where}: unknown board {name!r}: it is not in {source}{hint}, which has: {known}")


# The built-in default: this machine, reached without a network. inventory/local.yaml says the same.
DEFAULT = Inventory(boards=[BoardSpec(name="local")])
BUILT_IN = "the built-in local inventory"


def load_inventory(path: Path | None) -> tuple[Inventory, str]:
    """The inventory from ``path``, else $EDGEFARM_INVENTORY, else the built-in local board; and
    what to call it in messages (its file, or ``BUILT_IN``)."""
    named_by = ""
    if path is None and os.environ.get("EDGEFARM_INVENTORY"):
        path, named_by = Path(os.environ["EDGEFARM_INVENTORY"]), "$EDGEFARM_INVENTORY"
    if path is None:
        return DEFAULT, BUILT_IN
    data = load_yaml(path, "an inventory is a YAML mapping with a 'boards' list", named_by)
    return parse(Inventory, data, str(path)), str(path)
