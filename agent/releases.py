"""Deployed bundles on a board: versioned release folders, an atomic ``current`` link, history.

Layout under the board's EdgeFarm root::

    deploy/incoming/<id>/     a bundle being pushed; verified whole, then renamed into releases/
    deploy/releases/<id>/     installed releases, every file checked against the manifest
    deploy/current            symlink -> releases/<id>, switched with os.replace (atomic)
    deploy/history.json       {"history": [ids, oldest activation first], "failed": [ids]}
    deploy/server.json        the served bundle: pid, port, release (and server.pid, server.log)

A release folder is only ever made by renaming a fully verified incoming folder, so a reader
of ``releases/`` never sees half a bundle, and ``current`` only ever names such a folder.
Bundle ids are 16 hex digits and manifest paths are checked to stay inside the bundle: no
argument can reach outside ``deploy/``. Standard library only, Python 3.8.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from typing import Any, Dict, List, Optional

BUNDLE_ID = re.compile(r"^[0-9a-f]{16}$")
SERVER_LOG = "server.log"
HEALTH_WAIT_S = 120.0


class ReleaseError(Exception):
    """One line for the controller: what is wrong, naming the release or file."""


# -- paths and records ------------------------------------------------------------------------


def check_id(bundle_id: str) -> str:
    if not BUNDLE_ID.match(bundle_id or ""):
        raise ReleaseError("bad bundle id %r: 16 hex digits expected" % (bundle_id,))
    return bundle_id


def deploy_dir(root: str) -> str:
    return os.path.join(os.path.abspath(os.path.expanduser(root)), "deploy")


def _path(root: str, *parts: str) -> str:
    return os.path.join(deploy_dir(root), *parts)


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _write_json(path: str, data: Any) -> None:
    tmp = "%s.tmp-%d" % (path, os.getpid())
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=1, sort_keys=True)
        fh.write("\n")
    os.replace(tmp, path)


def _read_json(path: str, default: Any) -> Any:
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return default


def read_history(root: str) -> Dict[str, List[str]]:
    data = _read_json(_path(root, "history.json"), {})
    valid = [i for i in data.get("history", []) if isinstance(i, str) and BUNDLE_ID.match(i)] \
        if isinstance(data, dict) else []
    failed = [i for i in data.get("failed", []) if isinstance(i, str) and BUNDLE_ID.match(i)] \
        if isinstance(data, dict) else []
    return {"history": valid, "failed": failed}


def installed(root: str) -> List[str]:
    folder = _path(root, "releases")
    names = os.listdir(folder) if os.path.isdir(folder) else []
    return sorted(n for n in names if BUNDLE_ID.match(n) and os.path.isdir(os.path.join(folder, n)))


def current(root: str) -> Optional[str]:
    """The release ``current`` names, or None when there is no link (or it names no release id)."""
    try:
        target = os.readlink(_path(root, "current"))
    except OSError:
        return None
    name = os.path.basename(target.rstrip("/"))
    return name if BUNDLE_ID.match(name) else None


def previous(root: str) -> Optional[str]:
    return previous_in(current(root), read_history(root), installed(root))


# The rules of the history, pure functions of it: a board without Python keeps the same file,
# written by the controller (controller/deploy/native.py), by these same rules.

History = Dict[str, List[str]]


def previous_in(cur: Optional[str], hist: History, present: List[str]) -> Optional[str]:
    """The release a rollback goes back to: the newest activation before the current one that
    did not fail and is still installed."""
    for bundle_id in reversed(hist["history"]):
        if bundle_id != cur and bundle_id not in hist["failed"] and bundle_id in present:
            return bundle_id
    return None


def activated(hist: History, bundle_id: str) -> History:
    """The history once ``bundle_id`` is current: its newest activation, and a fresh chance if it
    had failed before."""
    return {"history": [i for i in hist["history"] if i != bundle_id] + [bundle_id],
            "failed": [i for i in hist["failed"] if i != bundle_id]}


def rolled_back(hist: History, left: Optional[str], target: Optional[str]) -> History:
    """The history once a rollback left ``left`` (marked failed, so a later rollback does not come
    back to it) for ``target`` (the newest activation again: the next rollback goes before it)."""
    out = {"history": list(hist["history"]), "failed": list(hist["failed"])}
    for bundle_id in (left, target):
        if bundle_id is not None:
            out["history"] = [i for i in out["history"] if i != bundle_id] + [bundle_id]
    if left is not None and left not in out["failed"]:
        out["failed"].append(left)
    return out


# -- verifying a bundle folder ----------------------------------------------------------------


def _manifest_id(manifest: Dict[str, Any]) -> str:
    body = {k: v for k, v in manifest.items() if k != "bundle_id"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _safe_relpath(name: Any) -> bool:
    if not isinstance(name, str) or not name or name.startswith("/") or "\\" in name:
        return False
    parts = name.split("/")
    return all(p not in ("", ".", "..") for p in parts)


def verify_folder(folder: str, bundle_id: str) -> List[str]:
    """What is wrong with a bundle folder, one line each ([] = it is exactly the bundle
    ``bundle_id``): manifest readable, its id right, every listed file present with its sha256,
    and no file the manifest does not list."""
    manifest = _read_json(os.path.join(folder, "manifest.json"), None)
    if not isinstance(manifest, dict):
        return ["manifest.json: missing or not a JSON object"]
    if manifest.get("bundle_id") != bundle_id:
        return ["manifest.json: bundle_id %r is not %s" % (manifest.get("bundle_id"), bundle_id)]
    if _manifest_id(manifest) != bundle_id:
        return ["manifest.json: its content does not hash to bundle_id %s (edited?)" % bundle_id]
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        return ["manifest.json: no 'files' mapping"]
    problems = []
    for name in sorted(files):
        if not _safe_relpath(name) or name == "manifest.json":
            problems.append("manifest.json: file name %r is not a plain path inside the bundle" % (name,))
            continue
        path = os.path.join(folder, *name.split("/"))
        if os.path.islink(path) or not os.path.isfile(path):
            problems.append("%s: missing" % name)
        elif _sha256(path) != files[name]:
            problems.append("%s: sha256 does not match the manifest" % name)
    listed = set(files) | {"manifest.json"}
    # What the runtime makes in a release it ran: a packed model unpacked beside its file
    # (agent.artifacts.unpack_model: <file>.d/), and Python's byte-code caches.
    made = {name + ".d" for name in files}
    for dirpath, dirnames, filenames in os.walk(folder):
        rel_dir = os.path.relpath(dirpath, folder).replace(os.sep, "/")
        dirnames[:] = [d for d in dirnames if d != "__pycache__"
                       and (d if rel_dir == "." else rel_dir + "/" + d) not in made]
        for f in filenames:
            rel = os.path.relpath(os.path.join(dirpath, f), folder).replace(os.sep, "/")
            if rel not in listed:
                problems.append("%s: not in the manifest" % rel)
    return problems


# -- commands ---------------------------------------------------------------------------------


def install(root: str, bundle_id: str) -> Dict[str, Any]:
    """Verify incoming/<id> and rename it into releases/<id>. A mismatch removes the incoming
    folder: nothing is ever half installed. An already installed copy that still verifies is
    kept as it is; one that no longer does (a damaged card, an edit by hand) is replaced."""
    check_id(bundle_id)
    incoming = _path(root, "incoming", bundle_id)
    release = _path(root, "releases", bundle_id)
    if not os.path.isdir(incoming):
        raise ReleaseError("no pushed bundle at %s" % incoming)
    problems = verify_folder(incoming, bundle_id)
    if problems:
        shutil.rmtree(incoming, ignore_errors=True)
        raise ReleaseError("bundle %s refused: %s%s" % (
            bundle_id, problems[0], " (and %d more)" % (len(problems) - 1) if len(problems) > 1 else ""))
    os.makedirs(_path(root, "releases"), exist_ok=True)
    replaced = False
    if os.path.isdir(release):
        if not verify_folder(release, bundle_id):
            shutil.rmtree(incoming, ignore_errors=True)
            return {"installed": bundle_id, "already": True, "replaced": False}
        # Move the damaged copy aside first: a folder cannot be renamed onto a non-empty one.
        aside = _path(root, "releases", ".%s.damaged-%d" % (bundle_id, os.getpid()))
        os.rename(release, aside)
        os.rename(incoming, release)
        shutil.rmtree(aside, ignore_errors=True)
        replaced = True
    else:
        os.rename(incoming, release)
    return {"installed": bundle_id, "already": False, "replaced": replaced}


def discard(root: str, bundle_id: str) -> Dict[str, Any]:
    """Remove what a push of ``bundle_id`` left: its incoming folder, and its release unless that
    release is in use (current, previous or served). For a bundle refused after install."""
    check_id(bundle_id)
    removed: List[str] = []
    incoming = _path(root, "incoming", bundle_id)
    if os.path.isdir(incoming):
        shutil.rmtree(incoming)
        removed.append("incoming/" + bundle_id)
    in_use = (current(root), previous(root), server_state(root).get("release"))
    release = _path(root, "releases", bundle_id)
    if os.path.isdir(release) and bundle_id not in in_use:
        shutil.rmtree(release)
        removed.append("releases/" + bundle_id)
    return {"removed": removed}


def _switch(root: str, bundle_id: Optional[str]) -> None:
    """Point ``current`` at releases/<id> (relative link) in one os.replace, or remove it."""
    link = _path(root, "current")
    if bundle_id is None:
        if os.path.islink(link):
            os.remove(link)
        return
    tmp = _path(root, "current.tmp-%d" % os.getpid())
    if os.path.lexists(tmp):
        os.remove(tmp)
    os.symlink(os.path.join("releases", bundle_id), tmp)
    os.replace(tmp, link)


def activate(root: str, bundle_id: str) -> Dict[str, Any]:
    check_id(bundle_id)
    if not os.path.isdir(_path(root, "releases", bundle_id)):
        raise ReleaseError("release %s is not installed" % bundle_id)
    before = current(root)
    _switch(root, bundle_id)
    _write_json(_path(root, "history.json"), activated(read_history(root), bundle_id))
    return {"current": bundle_id, "was": before}


def rollback(root: str) -> Dict[str, Any]:
    """Back to the release before the current one (or to none: the link goes), marking the
    release it leaves as failed so that a later rollback does not come back to it."""
    left = current(root)
    target = previous(root)
    if left is None and target is None:
        raise ReleaseError("nothing to roll back: no current release")
    _switch(root, target)
    _write_json(_path(root, "history.json"), rolled_back(read_history(root), left, target))
    return {"left": left, "current": target}


def prune(root: str, keep: int) -> Dict[str, Any]:
    """Keep at most ``keep`` releases: the oldest activations go first (releases never activated
    are older than any that were); the current and previous ones always stay."""
    if keep < 1:
        raise ReleaseError("--keep must be 1 or more")
    cur, prev, hist = current(root), previous(root), read_history(root)
    order = {bundle_id: n for n, bundle_id in enumerate(hist["history"])}
    present = installed(root)
    ranked = sorted(present, key=lambda i: (order.get(i, -1), os.path.getmtime(_path(root, "releases", i))))
    removed: List[str] = []
    for bundle_id in ranked:
        if len(present) - len(removed) <= keep:
            break
        if bundle_id in (cur, prev) or bundle_id == server_state(root).get("release"):
            continue
        shutil.rmtree(_path(root, "releases", bundle_id))
        removed.append(bundle_id)
    if removed:
        hist["history"] = [i for i in hist["history"] if i not in removed]
        hist["failed"] = [i for i in hist["failed"] if i not in removed]
        _write_json(_path(root, "history.json"), hist)
    return {"removed": removed, "kept": [i for i in present if i not in removed]}


# -- the served bundle ------------------------------------------------------------------------


def _cmdline(pid: int) -> List[str]:
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as fh:
            return [a.decode("utf-8", "replace") for a in fh.read().split(b"\0") if a]
    except OSError:
        return []


def _is_our_server(pid: int, pyz: str) -> bool:
    """Only the process we started: its command line names this release's bundle.pyz and serve
    (a pid reused by anything else is left alone)."""
    argv = _cmdline(pid)
    return pyz in argv and "serve" in argv


def server_state(root: str) -> Dict[str, Any]:
    info = _read_json(_path(root, "server.json"), {})
    if not isinstance(info, dict) or not isinstance(info.get("pid"), int):
        return {"pid": None, "port": None, "release": None, "running": False}
    running = _is_our_server(info["pid"], str(info.get("pyz")))
    return {"pid": info["pid"], "port": info.get("port"), "release": info.get("release"), "running": running,
            "host": info.get("host"), "started_at": info.get("started_at")}


def serve_stop(root: str) -> Dict[str, Any]:
    info = _read_json(_path(root, "server.json"), {})
    stopped = None
    if isinstance(info, dict) and isinstance(info.get("pid"), int):
        pid, pyz = info["pid"], str(info.get("pyz"))
        if _is_our_server(pid, pyz):
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 10
            while _is_our_server(pid, pyz) and time.monotonic() < deadline:
                _reap(pid)
                time.sleep(0.1)
            if _is_our_server(pid, pyz):
                os.kill(pid, signal.SIGKILL)
            stopped = pid
    for name in ("server.json", "server.pid"):
        if os.path.lexists(_path(root, name)):
            os.remove(_path(root, name))
    return {"stopped": stopped, "release": info.get("release") if isinstance(info, dict) else None}


def _reap(pid: int) -> None:
    try:  # a child of this very process (started and stopped in one run) is a zombie until reaped
        os.waitpid(pid, os.WNOHANG)
    except OSError:
        pass


def _healthz(host: str, port: int) -> Optional[Dict[str, Any]]:
    import urllib.request

    # A server on every interface is asked on the loopback one; one bound to an address, there.
    where = "127.0.0.1" if host in ("0.0.0.0", "") else "[::1]" if host == "::" else \
        "[%s]" % host if ":" in host else host
    try:
        with urllib.request.urlopen("http://%s:%d/healthz" % (where, port), timeout=2) as resp:
            data = json.loads(resp.read().decode("utf-8"))
            return data if isinstance(data, dict) else None
    except Exception:  # not listening yet, or not an answer: asked again until the deadline
        return None


def _log_tail(path: str, limit: int = 600) -> str:
    try:
        with open(path, "rb") as fh:
            text = fh.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return " | ".join(line for line in text[-limit:].splitlines() if line.strip())


def serve_start(root: str, port: int, host: str = "0.0.0.0", wait_s: float = HEALTH_WAIT_S) -> Dict[str, Any]:
    """(Re)start the current release's server, detached from this session (its own session,
    stdio to deploy/server.log), so that it outlives the connection that started it. Returns once
    /healthz answers with this release's bundle id; else stops it and raises with the log tail."""
    if not 1 <= port <= 65535:
        raise ReleaseError("bad port %r" % (port,))
    bundle_id = current(root)
    if bundle_id is None:
        raise ReleaseError("no current release to serve")
    serve_stop(root)
    pyz = _path(root, "releases", bundle_id, "bundle.pyz")  # pinned to its release, not to the link
    log = _path(root, SERVER_LOG)
    argv = [sys.executable, pyz, "serve", "--port", str(port), "--host", host]
    with open(log, "ab") as out, open(os.devnull, "rb") as devnull:
        proc = subprocess.Popen(argv, stdin=devnull, stdout=out, stderr=subprocess.STDOUT,
                                cwd=_path(root, "releases", bundle_id), start_new_session=True, close_fds=True)
    info = {"pid": proc.pid, "port": port, "host": host, "release": bundle_id, "pyz": pyz, "argv": argv,
            "log": log, "started_at": time.time()}
    _write_json(_path(root, "server.json"), info)
    with open(_path(root, "server.pid"), "w") as fh:
        fh.write("%d\n" % proc.pid)
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            serve_stop(root)
            raise ReleaseError("the server of release %s exited %s at start: %s"
                               % (bundle_id, proc.returncode, _log_tail(log)))
        health = _healthz(host, port)
        if health is not None:
            if health.get("bundle_id") != bundle_id:
                serve_stop(root)
                raise ReleaseError("port %d answers for bundle %r, not %s: another server holds it"
                                   % (port, health.get("bundle_id"), bundle_id))
            return {"pid": proc.pid, "port": port, "release": bundle_id, "health": health}
        time.sleep(0.2)
    serve_stop(root)
    raise ReleaseError("the server of release %s did not answer /healthz on port %d within %g s: %s"
                       % (bundle_id, port, wait_s, _log_tail(log)))


def state(root: str) -> Dict[str, Any]:
    hist = read_history(root)
    incoming = _path(root, "incoming")
    return {"current": current(root), "previous": previous(root), "releases": installed(root),
            "history": hist["history"], "failed": hist["failed"],
            "incoming": sorted(os.listdir(incoming)) if os.path.isdir(incoming) else [],
            "server": server_state(root), "link": _link_target(root), "models": _models(root)}


def _models(root: str) -> List[Dict[str, Any]]:
    """The current release's models as its manifest names them (name, engine, variant)."""
    manifest = _read_json(_path(root, "current", "manifest.json"), {})
    models = manifest.get("models") if isinstance(manifest, dict) else None
    return [{k: m.get(k) for k in ("name", "engine", "variant", "label")}
            for m in models if isinstance(m, dict)] if isinstance(models, list) else []


def _link_target(root: str) -> Optional[str]:
    try:
        return os.readlink(_path(root, "current"))
    except OSError:
        return None


def main(args: Any) -> int:
    """``agent release ACTION ROOT ...``: JSON on stdout; one line on stderr and exit 1 on refusal."""
    try:
        if args.action == "install":
            result = install(args.root, args.id)
        elif args.action == "discard":
            result = discard(args.root, args.id)
        elif args.action == "activate":
            result = activate(args.root, args.id)
        elif args.action == "rollback":
            result = rollback(args.root)
        elif args.action == "state":
            result = state(args.root)
        elif args.action == "prune":
            result = prune(args.root, args.keep)
        elif args.action == "serve-start":
            result = serve_start(args.root, args.port, args.host, args.wait)
        elif args.action == "serve-stop":
            result = serve_stop(args.root)
        else:
            raise ReleaseError("unknown action %r" % (args.action,))
    except (ReleaseError, OSError) as exc:
        print("release %s: %s" % (args.action, str(exc).replace("\n", " ")), file=sys.stderr)
        return 1
    json.dump(result, sys.stdout, sort_keys=True)
    sys.stdout.write("\n")
    return 0


def add_parser(sub: Any) -> None:
    release = sub.add_parser("release", help="deployed bundles: install, activate, roll back, serve")
    actions = release.add_subparsers(dest="action")
    for name, text in (("install", "verify deploy/incoming/ID and move it into releases/"),
                       ("activate", "switch deploy/current to releases/ID atomically"),
                       ("discard", "remove a pushed bundle's incoming folder, and its release if not in use")):
        p = actions.add_parser(name, help=text)
        p.add_argument("root")
        p.add_argument("id")
    actions.add_parser("rollback", help="back to the release before the current one").add_argument("root")
    actions.add_parser("state", help="current, previous, releases, history and server as JSON").add_argument("root")
    prune_p = actions.add_parser("prune", help="keep at most N releases (current and previous always)")
    prune_p.add_argument("root")
    prune_p.add_argument("--keep", type=int, required=True)
    start = actions.add_parser("serve-start", help="(re)start the current release's HTTP server, detached")
    start.add_argument("root")
    start.add_argument("--port", type=int, required=True)
    start.add_argument("--host", default="0.0.0.0")
    start.add_argument("--wait", type=float, default=HEALTH_WAIT_S, help="seconds to wait for /healthz")
    actions.add_parser("serve-stop", help="stop the served bundle (only the pid it started)").add_argument("root")
