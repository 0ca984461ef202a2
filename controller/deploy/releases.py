"""A board's deployed releases, driven from the controller through its BoardSession.

Every step on the board is the agent's ``release`` command (agent/releases.py), run by the
hash-verified agent; the bundle's own commands (check, smoke, predict) run its ``bundle.pyz``
with the board's interpreter for the bundle's engine. Files travel with the transport's ``put``
(argv lists, nothing pasted into a shell) and are verified on the board against the manifest
before anything is installed.
"""

from __future__ import annotations

import json
import posixpath
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from controller.boards.session import BoardSession
from controller.errors import BoardCommandFailed, TransportError

CHECK_TIMEOUT = 180.0
SMOKE_TIMEOUT = 900.0
PREDICT_TIMEOUT = 300.0
SERVE_TIMEOUT = 240.0
MANIFEST = "manifest.json"


class ReleaseRefused(Exception):
    """The board refused a step (a file that does not verify, no release to go back to, ...): one line."""


@dataclass(frozen=True)
class Pushed:
    files: int
    bytes: int


class BoardReleases:
    def __init__(self, session: BoardSession) -> None:
        self.session = session
        self.root = session.root
        self.deploy = posixpath.join(self.root, "deploy")

    # -- paths and interpreters ----------------------------------------------------------------

    def release_dir(self, bundle_id: str) -> str:
        return posixpath.join(self.deploy, "releases", bundle_id)

    def python_for(self, engines: list[str]) -> str:
        """The interpreter that has the bundle's engine: the board's engine_python for it, else
        the board's python (several engines needing different interpreters cannot share one
        process: the first model's engine decides)."""
        for engine in engines:
            if engine in self.session.board.engine_python:
                return self.session.board.engine_python[engine]
        return self.session.python

    def _release(self, *args: str, timeout: float = 60.0, python: str | None = None) -> dict[str, Any]:
        done = self.session.run_agent(["release", *args], timeout, python)
        if done.exit_code == 1 and done.stderr.strip().startswith("release "):
            raise ReleaseRefused(done.stderr.strip().splitlines()[-1])
        if done.exit_code != 0:
            raise BoardCommandFailed(f"agent release {args[0]} exited {done.exit_code}: {done.stderr.strip()[-300:]}")
        try:
            result = json.loads(done.stdout)
        except ValueError:
            raise TransportError(f"agent release {args[0]} printed no JSON: {done.stdout[:200]!r}") from None
        if not isinstance(result, dict):
            raise TransportError(f"agent release {args[0]} printed {type(result).__name__}, not an object")
        return result

    # -- release steps -------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        return self._release("state", self.root)

    def push(self, folder: Path, bundle_id: str, files: dict[str, str]) -> Pushed:
        """Every file of the bundle into deploy/incoming/<id>/, after clearing what an earlier,
        interrupted push may have left there (the board verifies the folder whole)."""
        self.discard(bundle_id)
        incoming = posixpath.join(self.deploy, "incoming", bundle_id)
        total = 0
        names = [*sorted(files), MANIFEST]
        for rel in names:
            local = folder / rel
            total += local.stat().st_size
            self.session.put_file(local, posixpath.join(incoming, *rel.split("/")))
        return Pushed(len(names), total)

    def install(self, bundle_id: str) -> dict[str, Any]:
        return self._release("install", self.root, bundle_id, timeout=300.0)

    def discard(self, bundle_id: str) -> dict[str, Any]:
        return self._release("discard", self.root, bundle_id)

    def activate(self, bundle_id: str) -> dict[str, Any]:
        return self._release("activate", self.root, bundle_id)

    def rollback(self) -> dict[str, Any]:
        return self._release("rollback", self.root)

    def prune(self, keep: int) -> list[str]:
        return list(self._release("prune", self.root, "--keep", str(keep))["removed"])

    def serve_start(self, port: int, python: str, host: str) -> dict[str, Any]:
        """The current release's server, started with the interpreter that has its engine (the
        agent starts it with its own), listening on ``host``."""
        return self._release("serve-start", self.root, "--port", str(port), "--host", host,
                             timeout=SERVE_TIMEOUT, python=python)

    def serve_stop(self) -> dict[str, Any]:
        return self._release("serve-stop", self.root)

    # -- the bundle's own commands -------------------------------------------------------------

    def check(self, bundle_id: str, python: str) -> list[str]:
        """Unmet requirements of the installed release on this board, one line each ([] = none)."""
        pyz = posixpath.join(self.release_dir(bundle_id), "bundle.pyz")
        done = self.session.transport.run([python, pyz, "check"], timeout=CHECK_TIMEOUT)
        if done.exit_code == 0:
            return []
        if "Traceback (most recent call last)" in done.stderr:  # it could not even run with this interpreter
            last = [line.strip() for line in done.stderr.splitlines() if line.strip()][-1]
            return [f"the bundle's check does not run with {python}: {last}"]
        lines = [line.strip() for line in (done.stdout + "\n" + done.stderr).splitlines() if line.strip()]
        if done.exit_code == 127 or not lines:
            lines.append(f"{python} {pyz} check exited {done.exit_code}")
        return lines

    def smoke(self, python: str, rounds: int) -> dict[str, Any]:
        """The current release's smoke run: its JSON (outputs and latency), or {"error": ...}."""
        pyz = posixpath.join(self.deploy, "current", "bundle.pyz")
        done = self.session.transport.run([python, pyz, "smoke", "--rounds", str(rounds)], timeout=SMOKE_TIMEOUT)
        try:
            report = json.loads(done.stdout)
        except ValueError:
            report = None
        if not isinstance(report, dict):
            text = done.stderr.strip() or done.stdout.strip() or "no output"
            tail = " | ".join(text.splitlines()[-3:])[-300:]
            return {"error": f"smoke exited {done.exit_code} without a report: {tail}"}
        if done.exit_code != 0 and "error" not in report:
            report["error"] = f"smoke exited {done.exit_code}"
        return report

    def predict(self, python: str, image: Path, as_json: bool) -> tuple[int, str, str]:
        """The current release on one image: the image goes to a job folder of its own on the
        board, and that folder is removed afterwards whatever happened."""
        workdir = posixpath.join(self.root, "jobs", f"predict-{uuid.uuid4().hex[:12]}")
        remote = posixpath.join(workdir, "image" + image.suffix.lower())
        pyz = posixpath.join(self.deploy, "current", "bundle.pyz")
        try:
            self.session.put_file(image, remote)
            argv = [python, pyz, "predict", remote, *(["--json"] if as_json else [])]
            done = self.session.transport.run(argv, timeout=PREDICT_TIMEOUT)
        finally:
            self.session.clean(workdir)  # a board gone mid-predict keeps the image until the next session cleans
        # The image is named as the user gave it, not as its copy on the board.
        return done.exit_code, done.stdout.replace(remote, str(image)), done.stderr.replace(remote, str(image))
