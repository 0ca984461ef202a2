"""An engine's releases on the package index, and their wheels for a board's Python, fetched here.

A board needs no network: the controller's own pip (with the user's pip configuration: index,
mirror, proxy, certificates) is asked for the wheels of the board's platform and interpreter,
dependencies included (``pip download --only-binary=:all: --platform ... --python-version ...
--implementation cp --abi ...``), and each set is kept in the workspace cache by platform and
version, so a second bisect downloads nothing. A set is complete or absent: it is downloaded into
a scratch folder and renamed into place with its manifest (every wheel's sha256), and a set whose
files no longer match its manifest is fetched again.

Only wheels are fetched: a board has no compiler to build a source release, and a wheel is what
its release published for that platform.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.protocol import sha256_file
from controller.errors import UserError

# The package each engine the agent runs is released as. A build of the same engine under
# another name (onnxruntime-gpu, onnxruntime-openvino) is given with `edgefarm bisect --package`.
DISTRIBUTIONS = {"onnxruntime": "onnxruntime", "openvino": "openvino", "ncnn": "ncnn", "mnn": "MNN",
                 "paddlelite": "paddlelite"}

MANIFEST = "wheels.json"
# The oldest glibc the manylinux tags pip is told about go down to (manylinux2014); x86 wheels
# of older releases also carry manylinux2010 and manylinux1 tags, kept for them.
_OLDEST_GLIBC_MINOR = 17
_LEGACY = {17: "manylinux2014", 12: "manylinux2010", 5: "manylinux1"}


@dataclass(frozen=True)
class Target:
    """The interpreter an environment is made with on the board, as pip must be told about it."""

    machine: str  # x86_64, aarch64, armv7l, ...
    python: str  # "3.11"
    abi: str  # "cp311" ("cp313t" for a free-threaded build)
    glibc: tuple[int, int]
    executable: str  # the interpreter on the board

    @classmethod
    def from_facts(cls, facts: dict[str, Any], where: str) -> Target:
        """From what ``envs.FACTS`` printed on the board; ``where`` names the board and interpreter
        in the one-line refusal of an interpreter no manylinux wheel is for."""
        if facts.get("system") != "Linux" or facts.get("libc") != "glibc":
            raise UserError(f"{where} runs on {facts.get('system')} with libc {facts.get('libc') or 'unknown'}: "
                            "bisect installs manylinux wheels, which are for Linux with glibc")
        if facts.get("implementation") != "cpython":
            raise UserError(f"{where} is {facts.get('implementation')}, not CPython: bisect installs CPython wheels")
        try:
            major, minor = (int(x) for x in str(facts["libc_version"]).split(".")[:2])
        except ValueError:
            raise UserError(f"{where}: glibc version {facts.get('libc_version')!r} is not MAJOR.MINOR") from None
        python = str(facts["python"])
        return cls(machine=str(facts["machine"]), python=python,
                   abi="cp" + python.replace(".", "") + str(facts.get("abiflags") or ""),
                   glibc=(major, minor), executable=str(facts["executable"]))

    def platforms(self) -> list[str]:
        """The manylinux platform tags the board's glibc runs, newest first."""
        major, newest = self.glibc
        tags = []
        for minor in range(newest, _OLDEST_GLIBC_MINOR - 1, -1):
            tags.append(f"manylinux_{major}_{minor}_{self.machine}")
        if self.machine in ("x86_64", "i686"):
            tags += [f"manylinux_2_12_{self.machine}", f"manylinux_2_5_{self.machine}"]
        tags += [f"{_LEGACY[minor]}_{self.machine}" for minor in _LEGACY if minor <= newest
                 and (minor == 17 or self.machine in ("x86_64", "i686"))]
        return tags

    def pip_flags(self) -> list[str]:
        flags = ["--only-binary", ":all:", "--python-version", self.python, "--implementation", "cp",
                 "--abi", self.abi, "--abi", "abi3", "--abi", "none"]
        for tag in self.platforms():
            flags += ["--platform", tag]
        return flags

    @property
    def key(self) -> str:
        """The cache folder's name: what makes two boards' wheels the same."""
        return f"{self.abi}-manylinux_{self.glibc[0]}_{self.glibc[1]}_{self.machine}"

    def describe(self) -> str:
        return f"CPython {self.python}, glibc {self.glibc[0]}.{self.glibc[1]}, {self.machine}"


@dataclass(frozen=True)
class Wheel:
    path: Path
    sha256: str

    @property
    def name(self) -> str:
        return self.path.name


@dataclass(frozen=True)
class WheelSet:
    """One release of a package with every wheel it needs on the board."""

    package: str
    version: str
    wheels: tuple[Wheel, ...]
    downloaded: bool  # False when the cache had it

    @property
    def digest(self) -> str:
        """Names the set by content: the same wheels make the same environment."""
        lines = sorted(f"{w.name} {w.sha256}" for w in self.wheels)
        return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def pip(args: list[str], what: str, timeout: float = 3600) -> str:
    """Run this machine's pip with ``args``; its stdout, or a ``UserError``: ``what`` and pip's
    own last error line (no network, a mirror that lacks the package, no such release)."""
    argv = [sys.executable, "-m", "pip", "--disable-pip-version-check", *args]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise UserError(f"{what}: pip did not finish within {timeout:g} s") from None
    if done.returncode != 0:
        raise UserError(f"{what}: {_pip_error(done.stderr)}")
    return done.stdout


def _pip_error(stderr: str) -> str:
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    errors = [line.removeprefix("ERROR: ") for line in lines if line.startswith("ERROR:")]
    said = (errors or lines or ["pip failed without a word"])[-1]
    return said if len(said) <= 300 else said[:297] + "..."


def releases(package: str, target: Target, pre: bool) -> list[str]:
    """Every release of ``package`` with a wheel for ``target``, oldest first (pre-releases with ``pre``)."""
    from packaging.version import Version

    out = pip(["index", "versions", package, "--json", *target.pip_flags(), *(["--pre"] if pre else [])],
              f"the releases of {package} for {target.describe()}")
    versions = json.loads(out).get("versions") or []
    return sorted((str(v) for v in versions), key=Version)


def between(found: list[str], a: str, b: str, package: str, target: Target, flag: str) -> list[str]:
    """The releases from ``a`` to ``b``, both included, oldest first; each end must have a wheel for
    the board (``flag``: the flag as given, for the refusal)."""
    from packaging.version import Version

    for end in (a, b):
        if not any(Version(v) == Version(end) for v in found):
            at = sum(Version(v) < Version(end) for v in found)
            near = ", ".join(found[max(at - 3, 0):at + 3]) or "none"
            raise UserError(f"{flag}: {package} {end} has no wheel for this board ({target.describe()}); "
                            f"releases around it that have one: {near}")
    return [v for v in found if Version(a) <= Version(v) <= Version(b)]


def fetch(package: str, version: str, requirements: list[str], target: Target, cache: Path) -> WheelSet:
    """The wheels of ``package==version`` and its dependencies for ``target`` (numpy always: the
    agent needs it), with ``requirements`` resolved alongside (e.g. ``numpy<2``)."""
    wanted = [f"{package}=={version}", "numpy", *requirements]
    folder = cache / "wheels" / target.key / (f"{package}-{version}" + _suffix(requirements))
    return _cached(folder, package, version, lambda dest: pip(
        ["download", "--no-input", "--progress-bar", "off", "--dest", str(dest), *target.pip_flags(), *wanted],
        f"fetching the wheels of {package} {version} for {target.describe()}"))


def fetch_pip(target: Target, cache: Path) -> Wheel:
    """A pip wheel for ``target``: run from the wheel itself on the board, it installs the others,
    so a board needs only Python's venv module, not pip."""
    folder = cache / "wheels" / target.key / "pip"
    found = _cached(folder, "pip", "", lambda dest: pip(
        ["download", "--no-input", "--progress-bar", "off", "--no-deps", "--dest", str(dest), *target.pip_flags(),
         "pip"], f"fetching a pip wheel for {target.describe()}"))
    return found.wheels[0]


def _suffix(requirements: list[str]) -> str:
    if not requirements:
        return ""
    return "-" + hashlib.sha256("\n".join(sorted(requirements)).encode()).hexdigest()[:12]


def _cached(folder: Path, package: str, version: str, download: Any) -> WheelSet:
    """The set in ``folder`` when its manifest and files agree; else downloaded afresh and put in
    place whole (a scratch folder renamed), so no half set is ever read."""
    found = _read(folder)
    if found is not None:
        return WheelSet(package, version, found, downloaded=False)
    folder.parent.mkdir(parents=True, exist_ok=True)
    scratch = folder.with_name(f".{folder.name}.{os.getpid()}.part")
    shutil.rmtree(scratch, ignore_errors=True)
    try:
        download(scratch)
        wheels = {p.name: sha256_file(p) for p in sorted(scratch.glob("*.whl"))}
        (scratch / MANIFEST).write_text(json.dumps({"wheels": wheels}, indent=1))
        shutil.rmtree(folder, ignore_errors=True)  # a set that no longer matched its manifest
        os.replace(scratch, folder)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    found = _read(folder)
    assert found is not None, f"{folder} was just written"
    return WheelSet(package, version, found, downloaded=True)


def _read(folder: Path) -> tuple[Wheel, ...] | None:
    try:
        named = json.loads((folder / MANIFEST).read_text())["wheels"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    wheels = tuple(Wheel(folder / name, sha) for name, sha in sorted(named.items()))
    if not wheels or any(not w.path.is_file() or sha256_file(w.path) != w.sha256 for w in wheels):
        return None
    return wheels
