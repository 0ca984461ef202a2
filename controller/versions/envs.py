"""Virtual environments of engine releases on a board, made from wheels the controller pushes.

Each release gets ``<board workdir>/envs/<engine>-<version>-<digest>/``, made with the board's own
interpreter (``python -m venv --without-pip``) and filled by pip run from a pushed pip wheel
(``python pip-*.whl/pip install --no-index --no-deps WHEELS``): the board needs Python's venv
module and nothing else, no network, no pip of its own. The wheels are pushed once into
``<board workdir>/wheels/`` under their own file names (pip reads a wheel's name and version
from it) and each one's sha256 is checked on the board before anything is installed.

An environment is complete or absent: its marker file, with the digest of its wheels, is written
last, and an environment without it (a copy cut short, a controller killed mid-install) is
removed before it is made again; a failed install removes what it made. A second bisect finds
the marker and installs nothing. Every command is an argv list (the transports quote it), and
the code run on the board is a constant: paths and hashes reach it as arguments.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import re
from dataclasses import dataclass
from typing import NoReturn

from controller.boards.session import PROBE_TIMEOUT, BoardSession
from controller.boards.transports import Completed
from controller.errors import TransportError, UserError, one_line
from controller.versions.wheels import Target, Wheel, WheelSet

MARKER = ".edgefarm-env.json"
INSTALL_TIMEOUT = 1800.0
SMALL_TIMEOUT = 120.0
# The board script's exit statuses, beside 0 (done) and 1 (Python's own: a crash).
BAD_WHEELS, NO_VENV, PIP_FAILED = 83, 84, 85

# Runs on the board with its interpreter (Python 3.6 or newer, standard library only):
#   facts                                        what pip must be told about this interpreter
#   status ENV DIGEST WHEELS NAME=SHA...         is ENV complete; which wheels are not in WHEELS
#   install ENV DIGEST WHEELS PYTHON PIP NAME=SHA...
#                                                check every wheel, make ENV with PYTHON, install
# One install at a time per board (a lock in the envs folder), so two bisects never fill one env.
_BOARD = r'''
import hashlib, json, os, shutil, subprocess, sys
MARKER = "MARKER_NAME"
def sha(path):
    d = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            d.update(chunk)
    return d.hexdigest()
def ready(env, digest):
    try:
        with open(os.path.join(env, MARKER)) as f:
            said = json.load(f)
    except (OSError, ValueError):
        return False
    return said.get("digest") == digest and os.path.isfile(os.path.join(env, "bin", "python"))
def run(argv):
    return subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True)
command = sys.argv[1]
if command == "facts":
    import platform
    libc, libc_version = platform.libc_ver()
    print(json.dumps({"system": platform.system(), "machine": platform.machine(), "libc": libc,
                      "libc_version": libc_version, "implementation": sys.implementation.name,
                      "python": "%d.%d" % sys.version_info[:2], "abiflags": getattr(sys, "abiflags", ""),
                      "executable": sys.executable}))
    sys.exit(0)
env, digest, wheels = sys.argv[2:5]
if command == "status":
    pairs = [a.split("=", 1) for a in sys.argv[5:]]
    print(json.dumps({"ready": ready(env, digest),
                      "missing": [n for n, _ in pairs if not os.path.isfile(os.path.join(wheels, n))]}))
    sys.exit(0)
python, pip = sys.argv[5:7]
pairs = [a.split("=", 1) for a in sys.argv[7:]]
os.makedirs(os.path.dirname(env), exist_ok=True)
import fcntl
lock = open(os.path.join(os.path.dirname(env), ".lock"), "w")
fcntl.flock(lock, fcntl.LOCK_EX)
if ready(env, digest):
    print(json.dumps({"made": False}))
    sys.exit(0)
bad = [n for n, h in pairs if not os.path.isfile(os.path.join(wheels, n)) or sha(os.path.join(wheels, n)) != h]
if bad:
    print(json.dumps({"bad": bad}))
    sys.exit(BAD_WHEELS)
shutil.rmtree(env, ignore_errors=True)
try:
    done = run([python, "-m", "venv", "--without-pip", env])
    if done.returncode != 0:
        sys.stderr.write(done.stdout[-2000:])
        shutil.rmtree(env, ignore_errors=True)
        sys.exit(NO_VENV)
    done = run([os.path.join(env, "bin", "python"), os.path.join(wheels, pip, "pip"), "install", "--isolated",
                "--no-index", "--no-deps", "--no-cache-dir", "--disable-pip-version-check", "--no-warn-script-location",
                "--no-compile"] + [os.path.join(wheels, n) for n, _ in pairs if n != pip])
    if done.returncode != 0:
        sys.stderr.write(done.stdout[-2000:])
        shutil.rmtree(env, ignore_errors=True)
        sys.exit(PIP_FAILED)
    with open(os.path.join(env, MARKER + ".part"), "w") as f:
        json.dump({"digest": digest, "wheels": dict(pairs)}, f)
    os.replace(os.path.join(env, MARKER + ".part"), os.path.join(env, MARKER))
except BaseException:
    shutil.rmtree(env, ignore_errors=True)
    raise
print(json.dumps({"made": True}))
'''.replace("MARKER_NAME", MARKER).replace("BAD_WHEELS", str(BAD_WHEELS)).replace(
    "NO_VENV", str(NO_VENV)).replace("PIP_FAILED", str(PIP_FAILED))


class InstallFailed(Exception):
    """A release could not be installed or imported on the board: that version's figures say why."""


@dataclass(frozen=True)
class Env:
    folder: str
    python: str  # the environment's interpreter on the board: the engine's engine_python for a run
    made: bool  # False when an earlier bisect had made it
    version: str | None  # the engine's version, as the agent found it in the environment


class BoardEnvs:
    """The environments of one engine's releases on one board, through its session."""

    def __init__(self, session: BoardSession, engine: str) -> None:
        self.session = session
        self.engine = engine
        # The interpreter the board runs this engine with, else the agent's: environments are made from it.
        self.python = session.board.engine_python.get(engine, session.python)
        self.where = f"board {session.board.name}: its Python {self.python}"

    def _script(self, args: list[str], timeout: float) -> Completed:
        return self.session.transport.run([self.python, "-c", _BOARD, *args], timeout=timeout)

    def target(self) -> Target:
        """What pip must fetch wheels for; refuses (one line) an interpreter that cannot make an environment."""
        try:
            done = self._script(["facts"], SMALL_TIMEOUT)
            # Before any wheel is fetched: the interpreter as configured (a wrapper script, a
            # distribution's python3 without its venv package) must run the venv module.
            venv = self.session.transport.run([self.python, "-m", "venv", "--help"], timeout=SMALL_TIMEOUT)
        except TransportError as exc:
            raise UserError(f"board {self.session.board.name}: cannot reach it: {one_line(exc)}") from None
        if done.exit_code != 0:
            raise UserError(f"{self.where} did not run: {_last_line(done.stderr or done.stdout)}")
        try:
            facts = json.loads(done.stdout)
        except ValueError:
            raise UserError(f"{self.where} printed no facts: {_last_line(done.stdout)}") from None
        if venv.exit_code != 0:
            self._no_venv(_last_line(venv.stderr or venv.stdout))
        return Target.from_facts(facts, self.where)

    def _no_venv(self, said: str) -> NoReturn:
        raise UserError(f"{self.where} cannot make a virtual environment (`{self.python} -m venv` said: {said}); "
                        "install Python's venv module on the board (Debian, Ubuntu: apt install python3-venv) or "
                        f"name an interpreter that has it (the inventory's python, or engine_python.{self.engine})")

    def folder(self, wheels: WheelSet) -> str:
        """Where that release's environment lives on the board: by engine, version, and the
        digest of its wheels and of the interpreter it is made from."""
        digest = hashlib.sha256(f"{wheels.digest}\n{self.python}".encode()).hexdigest()
        version = re.sub(r"[^A-Za-z0-9.+_-]", "_", wheels.version)
        return posixpath.join(self.session.root, "envs", f"{self.engine}-{version}-{digest[:12]}")

    def ensure(self, wheels: WheelSet, pip: Wheel) -> Env:
        """The release's environment on the board, made unless a complete one is there, with the
        engine's version as the agent finds it there. ``InstallFailed`` when it cannot be
        installed or the engine cannot be loaded in it; ``UserError`` when the board's Python
        cannot make an environment at all."""
        env = self.folder(wheels)
        store = posixpath.join(self.session.root, "wheels")
        every = [*wheels.wheels, pip]
        pairs = [f"{w.name}={w.sha256}" for w in every]
        try:
            status = json.loads(self._checked(["status", env, wheels.digest, store, *pairs], SMALL_TIMEOUT))
            made = False
            if not status["ready"]:
                self._push(store, [w for w in every if w.name in status["missing"]])
                made = self._install(env, wheels.digest, store, pip, every, pairs)
            return Env(env, posixpath.join(env, "bin", "python"), made, self._engine_version(env))
        except (TransportError, ValueError, KeyError) as exc:
            raise InstallFailed(f"installing on board {self.session.board.name} failed: {one_line(exc)}") from None

    def _checked(self, args: list[str], timeout: float) -> str:
        done = self._script(args, timeout)
        if done.exit_code != 0:
            raise TransportError(f"{args[0]} exited {done.exit_code}: {_last_line(done.stderr or done.stdout)}")
        return done.stdout

    def _push(self, store: str, wheels: list[Wheel]) -> None:
        for w in wheels:
            self.session.put_file(w.path, posixpath.join(store, w.name))

    def _install(self, env: str, digest: str, store: str, pip: Wheel, every: list[Wheel], pairs: list[str]) -> bool:
        """Install; a wheel that does not match its sha256 on the board is pushed again, once."""
        args = ["install", env, digest, store, self.python, pip.name, *pairs]
        for attempt in (1, 2):
            done = self._script(args, INSTALL_TIMEOUT)
            if done.exit_code == BAD_WHEELS and attempt == 1:
                bad = set(json.loads(done.stdout)["bad"])
                self._push(store, [w for w in every if w.name in bad])
                continue
            if done.exit_code == NO_VENV:
                self._no_venv(_last_line(done.stderr))
            if done.exit_code == BAD_WHEELS:
                raise InstallFailed(f"wheels still differ from their sha256 on board {self.session.board.name} "
                                    f"after a second push: {', '.join(json.loads(done.stdout)['bad'])}")
            if done.exit_code == PIP_FAILED:
                raise InstallFailed(f"pip could not install the wheels on board {self.session.board.name}: "
                                    f"{_last_line(done.stderr)}")
            if done.exit_code != 0:
                raise InstallFailed(f"installing exited {done.exit_code}: {_last_line(done.stderr or done.stdout)}")
            return bool(json.loads(done.stdout)["made"])
        raise AssertionError("not reached: the second attempt returns or raises")

    def _engine_version(self, env: str) -> str:
        """The engine's version in the environment, as the agent's probe finds it there; an engine
        that cannot be loaded (a release built against another numpy, a missing library) fails here."""
        done = self.session.run_agent(["probe"], PROBE_TIMEOUT, python=posixpath.join(env, "bin", "python"))
        if done.exit_code != 0:
            raise InstallFailed(f"the agent did not run in {env}: {_last_line(done.stderr)}")
        found = json.loads(done.stdout)["engines"].get(self.engine) or {}
        if not found.get("available"):
            raise InstallFailed(f"{self.engine} does not load in {env}: {found.get('reason') or 'not found'} (a "
                                "release built before its dependencies' newest may need them pinned: --require "
                                "'numpy<2')")
        return str(found.get("version"))


def _last_line(text: str) -> str:
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    said = lines[-1] if lines else "(nothing printed)"
    return said if len(said) <= 300 else said[:297] + "..."
