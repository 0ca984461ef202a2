"""A board without Python (``agent: false``): its deployed releases, driven with the board's own shell
commands, and the smoke test of each model with its engine's native benchmark tool.

The layout on the board is the one agent/releases.py keeps on a board with Python, so a reader of
``deploy/`` (a person, ``edgefarm deployments``) sees the same thing whichever way the board is driven::

    deploy/incoming/<id>/   a bundle being pushed; verified whole with sha256sum, then renamed
    deploy/releases/<id>/   installed releases, every file checked against the manifest
    deploy/current          symlink -> releases/<id>, switched with ``mv -T`` (rename(2): atomic)
    deploy/history.json     {"history": [ids, oldest activation first], "failed": [ids]}

Every command is an argv list the transport quotes as a whole (``controller.boards.transports``):
each item is a fixed word of this module or a path built by ``NativeReleases.path`` from parts
checked here (16-hex bundle ids, manifest file names of plain characters), under a root that is an
absolute path none of whose parts starts with '-'. Nothing is pasted into a shell string, and no
path can be read as an option. The commands (sha256sum, mv, ln, readlink, ls, cat, rm, mkdir, tar,
test, chmod) are in toybox (Android), busybox and coreutils alike, with one exception: ``mv -T``
(rename onto the link itself, not into the folder it points at) is in coreutils and toybox >= 0.8
but not in every busybox. Where the board's mv refuses the option, the link is removed and the new
one moved to its name: correct, but not atomic; said in the activation's result.

The history file is made on the controller and pushed with the transport's ``put`` (which writes
``.part`` and renames it), not written by a shell command: there is no way to write JSON on the
board without pasting it into a command. It lives on the board, not only in the database, because
the board is the truth a rollback and drift start from: a second controller (another ``--db``), a
rollback by hand and ``edgefarm deployments`` all read the same history, and it keeps the format of
a board with Python.

What a native tool can check is less than what ``bundle.pyz smoke`` does: it loads the artifact the
farm measured and times it with the measured input shape and threads, but it prints no outputs, so
the golden outputs are not compared (``controller.deploy.smoke.judge`` says so in the figures).
"""

from __future__ import annotations

import json
import posixpath
import re
import tempfile
from pathlib import Path, PurePosixPath
from typing import Any

from agent.artifacts import archive_members
from agent.protocol import sha256_file
from agent.releases import activated, previous_in, rolled_back
from controller.boards.native import NativeBenchmark, NativeOutputError, NativeRun, native_benchmark
from controller.boards.session import BoardSession
from controller.boards.transports import Completed
from controller.deploy.releases import MANIFEST, BoardReleases, Pushed, ReleaseRefused
from controller.errors import BoardCommandFailed, FileCorrupt, one_line
from controller.plugins import NATIVE_TOOLS

SHELL_TIMEOUT = 60.0
VERIFY_TIMEOUT = 300.0
TOOL_TIMEOUT = 900.0
# The median of a handful of runs is noise; at least this many timed runs per model, whatever the
# manifest's smoke rounds (which count passes over the golden inputs for bundle.pyz).
MIN_ITERATIONS = 10

BUNDLE_ID = re.compile(r"^[0-9a-f]{16}$")
SHA256 = re.compile(r"^[0-9a-f]{64}$")
# A part of a path inside a release: what bundle files are named (models/<name>/<sha16>.tar,
# golden/0.png, bundle.pyz); no leading '-' or '.', no spaces, quotes or control characters.
PART = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._+-]*$")
# The board's answer when its mv lacks -T: coreutils "invalid option", toybox "Unknown option",
# busybox "invalid option" or "unrecognized option".
_UNKNOWN_OPTION = re.compile(r"(invalid|unknown|unrecognized|illegal) option", re.IGNORECASE)
NO_SERVER: dict[str, Any] = {"pid": None, "port": None, "release": None, "running": False}


def check_id(bundle_id: str) -> str:
    if not BUNDLE_ID.match(bundle_id or ""):
        raise ReleaseRefused(f"bad bundle id {bundle_id!r}: 16 hex digits expected")
    return bundle_id


def check_relpath(rel: str) -> str:
    """A file name of the manifest, as a path inside the release: plain parts only."""
    parts = rel.split("/") if isinstance(rel, str) else []
    if not parts or not all(PART.match(p) for p in parts):
        raise ReleaseRefused(f"manifest file name {rel!r} is not a plain path inside the bundle "
                             "(letters, digits, '.', '_', '+', '-'; no part starting with '.' or '-')")
    return rel


def check_root(root: str) -> str | None:
    """Why the board's EdgeFarm root cannot prefix an argv item, or None."""
    parts = root.split("/")
    if not root.startswith("/"):
        return f"the board's EdgeFarm root {root!r} is not an absolute path (set the inventory's workdir)"
    if any(p in (".", "..") or p.startswith("-") or not p.isprintable() or "\\" in p for p in parts[1:]):
        return f"the board's EdgeFarm root {root!r} has a part that is '.', '..', starts with '-' or is not printable"
    return None


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


class NativeReleases:
    """The release steps of ``controller.deploy.releases.BoardReleases`` on a board without Python:
    push, install (verified), activate, rollback, state, prune, discard; plus the requirements and
    the smoke test, which here are the board's native tools rather than ``bundle.pyz``."""

    def __init__(self, session: BoardSession) -> None:
        self.session = session
        self.root = session.root
        self.deploy = posixpath.join(self.root, "deploy")
        self._root_problem = check_root(self.root)
        # What each pushed bundle's files must hash to, manifest.json's own hash computed here:
        # the board's copy of the manifest is verified like every other file, never trusted.
        self._expected: dict[str, dict[str, str]] = {}

    # -- paths and commands --------------------------------------------------------------------

    def path(self, *parts: str) -> str:
        """A path under deploy/ from checked parts: the only way a path enters an argv here."""
        if self._root_problem:
            raise ReleaseRefused(self._root_problem)
        for part in parts:
            check_relpath(part)
        return posixpath.join(self.deploy, *parts)

    def release_dir(self, bundle_id: str) -> str:
        return self.path("releases", check_id(bundle_id))

    def _run(self, argv: list[str], timeout: float = SHELL_TIMEOUT, cwd: str | None = None) -> Completed:
        return self.session.transport.run(argv, timeout=timeout, cwd=cwd)

    def _must(self, argv: list[str], timeout: float = SHELL_TIMEOUT) -> str:
        done = self._run(argv, timeout)
        if done.exit_code != 0:
            raise BoardCommandFailed(f"{argv[0]} {argv[1] if len(argv) > 1 else ''} on the board exited "
                                     f"{done.exit_code}: {_last_line(done.stderr) or _last_line(done.stdout)}")
        return done.stdout

    def _is_dir(self, path: str) -> bool:
        return self._run(["test", "-d", path]).exit_code == 0

    def _cat(self, path: str) -> str | None:
        done = self._run(["cat", path])
        return done.stdout if done.exit_code == 0 else None

    def _listing(self, folder: str) -> list[str]:
        done = self._run(["ls", "-1", folder])
        return sorted(done.stdout.split()) if done.exit_code == 0 else []

    # -- what is on the board ------------------------------------------------------------------

    def link(self) -> str | None:
        """What ``current`` points at, as ``readlink`` prints it; None when there is no link."""
        done = self._run(["readlink", self.path("current")])
        return done.stdout.strip() or None if done.exit_code == 0 else None

    def current(self, link: str | None = "") -> str | None:
        """The release ``current`` names, or None (no link, or one that names no release id)."""
        target = self.link() if link == "" else link
        name = posixpath.basename(target.rstrip("/")) if target else ""
        return name if BUNDLE_ID.match(name) else None

    def installed(self) -> list[str]:
        return [n for n in self._listing(self.path("releases")) if BUNDLE_ID.match(n)]

    def history(self) -> dict[str, list[str]]:
        text = self._cat(self.path("history.json"))
        try:
            data = json.loads(text) if text else {}
        except ValueError:
            data = {}
        data = data if isinstance(data, dict) else {}
        return {key: [i for i in data.get(key, []) if isinstance(i, str) and BUNDLE_ID.match(i)]
                for key in ("history", "failed")}

    def _write_history(self, hist: dict[str, list[str]]) -> None:
        with tempfile.TemporaryDirectory(prefix="edgefarm-history-") as tmp:
            local = Path(tmp) / "history.json"
            local.write_text(json.dumps(hist, indent=1, sort_keys=True) + "\n")
            self.session.put_file(local, self.path("history.json"))

    def state(self) -> dict[str, Any]:
        link = self.link()
        cur, hist, present = self.current(link), self.history(), self.installed()
        return {"current": cur, "previous": previous_in(cur, hist, present), "releases": present,
                "history": hist["history"], "failed": hist["failed"],
                "incoming": [n for n in self._listing(self.path("incoming")) if BUNDLE_ID.match(n)],
                "server": dict(NO_SERVER), "link": link,
                "models": self._models(cur)}

    def _models(self, cur: str | None) -> list[dict[str, Any]]:
        text = self._cat(self.path("current", MANIFEST)) if cur else None
        try:
            models = json.loads(text).get("models") if text else None
        except (ValueError, AttributeError):
            models = None
        return [{k: m.get(k) for k in ("name", "engine", "variant", "label")}
                for m in models if isinstance(m, dict)] if isinstance(models, list) else []

    # -- release steps -------------------------------------------------------------------------

    def push(self, folder: Path, bundle_id: str, files: dict[str, str]) -> Pushed:
        """Every file of the bundle into deploy/incoming/<id>/, after clearing what an earlier,
        interrupted push may have left there. The whole bundle travels, bundle.pyz and golden
        inputs included: the release is the bundle its id names, verified the same way as on a
        board with Python (and runnable there, were Python installed later)."""
        check_id(bundle_id)
        incoming = self.path("incoming", bundle_id)
        names = [check_relpath(rel) for rel in sorted(files)]
        for rel in names:
            if not SHA256.match(str(files[rel])):
                raise ReleaseRefused(f"manifest: {rel}: {files[rel]!r} is not a sha256")
        self._must(["rm", "-rf", incoming])
        expected = {rel: str(files[rel]) for rel in names}
        expected[MANIFEST] = sha256_file(folder / MANIFEST)
        total = 0
        for rel in [*names, MANIFEST]:
            local = folder / rel
            total += local.stat().st_size
            self.session.put_file(local, self.path("incoming", bundle_id, rel))
        self._expected[bundle_id] = expected
        return Pushed(len(expected), total)

    def verify(self, folder: str, expected: dict[str, str]) -> list[str]:
        """What is wrong with ``folder`` on the board against ``expected`` (name -> sha256), one line
        each ([] = every file is there with its hash): one ``sha256sum`` over all of them."""
        names = sorted(expected)
        done = self._run(["sha256sum", *names], timeout=VERIFY_TIMEOUT, cwd=folder)
        found: dict[str, str] = {}
        for line in done.stdout.splitlines():
            digest, _, name = line.strip().partition(" ")
            found[name.strip().lstrip("*")] = digest
        problems = []
        for name in names:
            if name not in found:
                problems.append(f"{name}: missing")
            elif found[name] != expected[name]:
                problems.append(f"{name}: sha256 does not match the manifest")
        if not problems and done.exit_code != 0:
            problems.append(f"sha256sum exited {done.exit_code}: {_last_line(done.stderr)}")
        return problems

    def install(self, bundle_id: str) -> dict[str, Any]:
        """Verify incoming/<id> on the board and rename it into releases/<id>. A mismatch removes
        the incoming folder: nothing is ever half installed. An installed copy that still verifies
        is kept; one that no longer does (a damaged card) is replaced by the new push."""
        check_id(bundle_id)
        expected = self._expected.get(bundle_id)
        if expected is None:
            raise ReleaseRefused(f"bundle {bundle_id} was not pushed in this session: nothing to verify it against")
        incoming, release = self.path("incoming", bundle_id), self.release_dir(bundle_id)
        problems = self.verify(incoming, expected)
        if problems:
            self._must(["rm", "-rf", incoming])
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            raise ReleaseRefused(f"bundle {bundle_id} refused on the board: {problems[0]}{more}")
        self._must(["mkdir", "-p", self.path("releases")])
        replaced = False
        if self._is_dir(release):
            if not self.verify(release, expected):
                self._must(["rm", "-rf", incoming])
                return {"installed": bundle_id, "already": True, "replaced": False}
            # A folder cannot be renamed onto a non-empty one: the damaged copy goes aside first.
            aside = self.path("releases", bundle_id + ".damaged")
            self._must(["rm", "-rf", aside])
            self._must(["mv", release, aside])
            replaced = True
        self._must(["mv", incoming, release])
        if replaced:
            self._must(["rm", "-rf", self.path("releases", bundle_id + ".damaged")])
        return {"installed": bundle_id, "already": False, "replaced": replaced}

    def discard(self, bundle_id: str) -> dict[str, Any]:
        """Remove what a push of ``bundle_id`` left: its incoming folder, and its release unless
        that release is current or the one a rollback would go back to."""
        check_id(bundle_id)
        removed = []
        incoming, release = self.path("incoming", bundle_id), self.release_dir(bundle_id)
        if self._is_dir(incoming):
            self._must(["rm", "-rf", incoming])
            removed.append("incoming/" + bundle_id)
        cur, hist, present = self.current(), self.history(), self.installed()
        if bundle_id in present and bundle_id not in (cur, previous_in(cur, hist, present)):
            self._must(["rm", "-rf", release])
            removed.append("releases/" + bundle_id)
        return {"removed": removed}

    def _switch(self, bundle_id: str | None) -> bool:
        """Point ``current`` at releases/<id> (a relative link), or remove it; whether the switch
        was atomic (a rename of a new link onto the old one)."""
        link = self.path("current")
        if bundle_id is None:
            self._must(["rm", "-f", link])
            return True
        target = "releases/" + check_id(bundle_id)
        tmp = self.path("current.tmp-" + bundle_id)
        self._must(["rm", "-f", tmp])
        self._must(["ln", "-s", target, tmp])
        atomic = True
        done = self._run(["mv", "-T", "-f", tmp, link])
        if done.exit_code != 0:
            if not _UNKNOWN_OPTION.search(done.stderr):
                self._run(["rm", "-f", tmp])
                raise BoardCommandFailed(f"mv -T on the board exited {done.exit_code}: {_last_line(done.stderr)}")
            # Without -T, mv onto a link to a folder moves into that folder: the old link goes first.
            self._must(["rm", "-f", link])
            self._must(["mv", "-f", tmp, link])
            atomic = False
        now = self.link()
        if now != target:
            raise BoardCommandFailed(f"{link} on the board reads {now!r} after the switch, not {target!r}")
        return atomic

    def activate(self, bundle_id: str) -> dict[str, Any]:
        check_id(bundle_id)
        if not self._is_dir(self.release_dir(bundle_id)):
            raise ReleaseRefused(f"release {bundle_id} is not installed")
        before = self.current()
        atomic = self._switch(bundle_id)
        self._write_history(activated(self.history(), bundle_id))
        return {"current": bundle_id, "was": before, "atomic": atomic}

    def rollback(self) -> dict[str, Any]:
        """Back to the release before the current one (or to none: the link goes), marking the
        release it leaves as failed so that a later rollback does not come back to it."""
        left, hist, present = self.current(), self.history(), self.installed()
        target = previous_in(left, hist, present)
        if left is None and target is None:
            raise ReleaseRefused("release rollback: nothing to roll back: no current release")
        self._switch(target)
        self._write_history(rolled_back(hist, left, target))
        return {"left": left, "current": target}

    def prune(self, keep: int) -> list[str]:
        """Keep at most ``keep`` releases: the oldest activations go first (releases never
        activated are older than any that were); the current and previous ones always stay."""
        if keep < 1:
            raise ReleaseRefused("--keep must be 1 or more")
        cur, hist, present = self.current(), self.history(), self.installed()
        prev = previous_in(cur, hist, present)
        order = {bundle_id: n for n, bundle_id in enumerate(hist["history"])}
        removed: list[str] = []
        for bundle_id in sorted(present, key=lambda i: (order.get(i, -1), i)):
            if len(present) - len(removed) <= keep:
                break
            if bundle_id in (cur, prev):
                continue
            self._must(["rm", "-rf", self.release_dir(bundle_id)])
            removed.append(bundle_id)
        if removed:
            hist = {key: [i for i in ids if i not in removed] for key, ids in hist.items()}
            self._write_history(hist)
        return removed

    # -- requirements and the smoke test -------------------------------------------------------

    def requirements(self, folder: Path, manifest: dict[str, Any]) -> list[str]:
        """What keeps the board's native tools from smoke-testing the bundle, one line each ([] =
        nothing): an engine without a native tool in the inventory, a binary not on this machine,
        an artifact the tool does not load, an input shape it cannot be given. Asked before
        anything is pushed."""
        board = self.session.board
        unmet = []
        for m in manifest.get("models", []):
            name, engine = m.get("name"), str(m.get("engine"))
            spec = board.native.get(engine)
            if spec is None:
                tools = _tools_for(engine)
                unmet.append(
                    f"{name}: engine {engine} has no native tool on board {board.name} (agent: false): add "
                    f"`native: {{{engine}: {{tool: {tools[0]}, binary: PATH}}}}` to its inventory entry" if tools else
                    f"{name}: engine {engine} has no native tool in EdgeFarm (tools: {', '.join(sorted(NATIVE_TOOLS))})"
                    f"; board {board.name} (agent: false) cannot run it: deploy to a board with Python")
                continue
            binary = Path(spec.binary).expanduser()
            if not binary.is_file():
                unmet.append(f"{name}: native.{engine}.binary {spec.binary} of board {board.name} is not a file "
                             "on this machine (the controller pushes it)")
            bench = native_benchmark(spec.tool)
            try:
                loads = _loaded_suffix(folder / m["artifact"]["file"])
            except (OSError, ValueError) as exc:
                unmet.append(f"{name}: its artifact cannot be read: {one_line(exc)}")
                continue
            if loads not in bench.model_suffixes:
                unmet.append(f"{name}: {bench.name} loads {', '.join(bench.model_suffixes)} models; "
                             f"this artifact is a {loads} file")
            try:
                smoke_shape(m)
            except ValueError as exc:
                unmet.append(f"{name}: {exc}")
        return unmet

    def _push_tool(self, engine: str) -> tuple[NativeBenchmark, str]:
        """The board's native tool for ``engine``: pushed into its cache by sha256, checked there."""
        from controller.boards.native.job import push_verified

        spec = self.session.board.native[engine]
        binary = Path(spec.binary).expanduser()
        remote = push_verified(self.session, binary, sha256_file(binary))
        self._must(["chmod", "755", remote])
        return native_benchmark(spec.tool), remote

    def smoke(self, folder: Path, manifest: dict[str, Any], rounds: int) -> dict[str, Any]:
        """The current release, smoke-tested with the native tools: every file verified on the
        board first (a damaged card fails here), then each model's artifact run by its engine's
        tool with the measured input shape and the engine options' threads and precision. The
        report has bundle.pyz smoke's latency keys (the tool's p50, or its mean where it prints no
        median) and ``native``, per model what the tool said; or {"error": ...}."""
        from controller.boards.native.job import unpack_on_board

        board = self.session.board
        cur = check_id(str(manifest.get("bundle_id")))
        if self.current() != cur:
            return {"error": f"the current release is {self.current() or 'none'}, not {cur}"}
        expected = {check_relpath(rel): str(sha) for rel, sha in manifest["files"].items()}
        expected[MANIFEST] = sha256_file(folder / MANIFEST)
        problems = self.verify(self.release_dir(cur), expected)
        if problems:
            return {"error": "; ".join(problems[:3]) + (f" (and {len(problems) - 3} more)" if len(problems) > 3 else "")}
        tools: dict[str, tuple[NativeBenchmark, str]] = {}
        per_model: dict[str, dict[str, Any]] = {}
        try:
            for m in manifest.get("models", []):
                engine, name = str(m["engine"]), str(m["name"])
                if engine not in tools:
                    tools[engine] = self._push_tool(engine)
                bench, binary = tools[engine]
                artifact_file = check_relpath(m["artifact"]["file"])
                artifact = self.path("releases", cur, artifact_file)
                local = folder / artifact_file
                if local.suffix == ".tar":  # unpacked on the board as run_native does: the tool loads the first member
                    artifact = unpack_on_board(self.session, artifact, archive_members(str(local)))
                options = m.get("options") or {}
                spec = board.native[engine]
                run = NativeRun(warmup=bench.fixed_warmup if bench.fixed_warmup is not None else 1,
                                iterations=max(rounds, MIN_ITERATIONS), threads=options.get("threads"),
                                input_shape=smoke_shape(m), precision=options.get("precision"),
                                backend=spec.backend, cores=spec.cores)
                argv = bench.argv(binary, [artifact], run)
                if board.cpus:  # a hex mask, as run_native pins the farm's measurement
                    argv = ["taskset", format(sum(1 << c for c in board.cpus), "x"), *argv]
                done = self._run(argv, timeout=TOOL_TIMEOUT)
                output = done.stdout + done.stderr
                if done.exit_code != 0:
                    return {"error": f"{bench.name} exited {done.exit_code} on {name}: {_last_line(output)}"}
                summary = bench.parse(output, model=artifact)
                figure = "p50" if summary.p50_ms is not None else "mean"
                per_model[name] = {"tool": bench.name, "p50_ms": summary.p50_ms, "mean_ms": summary.mean_ms,
                                   "n": summary.n, "figure": figure, "threads": run.threads,
                                   "input_shape": list(run.input_shape or ()), "tool_version": summary.tool_version,
                                   "ms": summary.p50_ms if summary.p50_ms is not None else summary.mean_ms}
        except (NativeOutputError, ValueError, BoardCommandFailed, FileCorrupt, ReleaseRefused) as exc:
            return {"error": one_line(exc)}
        infer = {name: r["ms"] for name, r in per_model.items()}
        return {"bundle_id": cur, "native": per_model, "outputs": {},
                "latency_ms": {"total_p50": None, "infer_p50": sum(infer.values()), "per_model_infer_p50": infer}}


def smoke_shape(model: dict[str, Any]) -> tuple[int, ...]:
    """The input shape a native tool is given: the measured one, a dynamic dimension filled from
    the model's preprocessing (batch 1, channels 3, the height and width it resizes to). Raises
    ValueError for a model a single fixed shape cannot describe."""
    inputs = model.get("inputs") or []
    if len(inputs) != 1:
        raise ValueError(f"it has {len(inputs)} inputs; native tools feed one")
    shape = list(inputs[0].get("shape") or [])
    if all(isinstance(d, int) and d > 0 for d in shape) and shape:
        return tuple(shape)
    pre = model.get("preprocess") or {}
    size = pre.get("resize") or pre.get("line")
    layout = pre.get("layout", "nchw")
    filled: list[int] = []
    for axis, d in enumerate(shape):
        if isinstance(d, int) and d > 0:
            filled.append(d)
            continue
        letter = layout[axis] if isinstance(layout, str) and len(layout) == len(shape) else "?"
        if letter == "n":
            filled.append(1)
        elif letter == "c":
            filled.append(3)
        elif letter in "hw" and isinstance(size, list) and len(size) == 2:
            filled.append(int(size[1] if letter == "h" else size[0]))
        else:
            raise ValueError(f"input {inputs[0].get('name')} {shape} has a dynamic dimension {axis} that its "
                             "preprocessing does not fix; a native tool needs a fixed shape")
    return tuple(filled)


def _loaded_suffix(artifact: Path) -> str:
    """The suffix of the file a tool loads: a .tar's first member, else the artifact itself."""
    if artifact.suffix == ".tar":
        return PurePosixPath(archive_members(str(artifact))[0]).suffix
    return artifact.suffix


def _tools_for(engine: str) -> list[str]:
    """The registered native tools that measure ``engine``, for a message that says what to add."""
    return [name for name in sorted(NATIVE_TOOLS) if native_benchmark(name).engine == engine]


def releases_of(session: BoardSession) -> BoardReleases | NativeReleases:
    """The board's releases, driven by the agent, or by shell commands on a board without Python."""
    return BoardReleases(session) if session.board.agent else NativeReleases(session)
