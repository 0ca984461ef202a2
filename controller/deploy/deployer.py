"""``edgefarm deploy``, ``edgefarm deploy --rollback`` and ``edgefarm predict``.

A deploy, per board: push the bundle into the board's incoming folder, verify every file there
against the manifest and install it as a release (``agent/releases.py``), check the board meets
the bundle's requirements with the interpreter that has its engine, switch ``current``
atomically, and smoke-test it on the board; the controller judges the smoke run
(``controller.deploy.smoke``: golden outputs, and latency against the farm's).

A failed smoke test (or a server that does not come up) rolls the board back to the release it
had (or to none: the link goes) and the deploy exits 1 naming the board and why. ``--canary N``
deploys to the first N boards first; if one fails the others are not touched. Every deploy and
rollback is a row of ``deployments``, committed as it goes, so a crash leaves the rows so far.

A board without Python (``agent: false``) goes through the same steps with its own shell commands
(``controller.deploy.native``): its native tools are checked before anything is pushed, and the
smoke test is each model's artifact run by its engine's native tool. It serves nothing and
predicts nothing: no bundle runtime runs there.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from controller.boards.session import BoardSession
from controller.config.inventory import BoardSpec
from controller.deploy.native import NativeReleases, releases_of
from controller.deploy.releases import BoardReleases, ReleaseRefused
from controller.deploy.smoke import describe_smoke, judge
from controller.errors import EdgeFarmError, TransportError, UserError
from controller.results.store import Deployment, now

EXIT_OK, EXIT_FAILED = 0, 1
NO_RUNTIME = "a board without Python (agent: false) runs no bundle runtime"


@dataclass
class Outcome:
    board: str
    result: str  # ok | failed | rolled-back | not deployed
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.result == "ok"


def after_switch(session: BoardSession, release_dir: str) -> None:
    """Called once the new release is current, before its smoke test. Nothing happens here in a
    deploy; it is the one moment a test can damage the installed release as a failing card would."""


# -- checks before anything is touched --------------------------------------------------------


def _boards(args: argparse.Namespace) -> list[BoardSpec]:
    from controller.config.inventory import load_inventory

    inventory, source = load_inventory(args.inventory)
    twice = sorted({n for n in args.board if args.board.count(n) > 1})
    if twice:
        raise UserError(f"--board {twice[0]} is given twice")
    boards = [inventory.board(name, source) for name in args.board]
    for b in boards:
        if not b.agent and getattr(args, "serve", None):
            raise UserError(f"--serve {args.serve}: board {b.name}: {NO_RUNTIME} and serves nothing; deploy it "
                            "without --serve, or serve from a board with Python")
    return boards


def _agent_bundle() -> Path:
    from controller.boards.agent_bundle import build_agent_bundle
    from controller.workspace import workspace

    return build_agent_bundle(workspace() / "agent")


def models_of(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    return [{k: m.get(k) for k in ("name", "engine", "variant", "label")} for m in manifest.get("models", [])]


def engines_of(models: list[dict[str, Any]]) -> list[str]:
    return [str(m.get("engine")) for m in models if m.get("engine")]


# -- the deployments table, written as it goes ------------------------------------------------


class Row:
    """One ``deployments`` row, committed at every change: a crash leaves what was known."""

    def __init__(self, sessions: Any, **fields: Any) -> None:
        self.sessions = sessions
        with sessions() as db:
            row = Deployment(**fields)
            db.add(row)
            db.commit()
            self.id = row.id

    def update(self, finished: bool = False, **fields: Any) -> None:
        with self.sessions() as db:
            row = db.get(Deployment, self.id)
            for key, value in fields.items():
                setattr(row, key, value)
            if finished:
                row.finished_at = now()
            db.commit()


# -- deploy -----------------------------------------------------------------------------------


def deploy_command(args: argparse.Namespace) -> int:
    if args.rollback:
        if args.bundle is not None:
            raise UserError(f"--rollback takes no BUNDLE ({args.bundle}): it goes back one release on each --board")
        return rollback_command(args)
    if args.bundle is None:
        raise UserError("BUNDLE is missing: name a bundle folder or .tar.gz made by `edgefarm bundle` "
                        "(or give --rollback to go back one release)")
    from controller.deploy.manifest import open_bundle
    from controller.results.database import open_db

    boards = _boards(args)
    if args.canary is not None and args.canary > len(boards):
        raise UserError(f"--canary {args.canary}: only {len(boards)} --board given")
    with open_bundle(args.bundle) as bundle:  # verified here first: an edited bundle touches no board
        expected = _golden(bundle.folder, bundle.raw)
        sessions = open_db(args.db)
        agent = _agent_bundle()
        print(f"bundle {bundle.raw['bundle_id']} ({', '.join(_model_names(bundle.raw))}) "
              f"to {', '.join(b.name for b in boards)}", flush=True)
        canary = boards[:args.canary] if args.canary else []
        outcomes = [_deploy_board(b, bundle, expected, args, agent, sessions, canary=True) for b in canary]
        failed = [o.board for o in outcomes if not o.ok]
        for b in boards[len(canary):]:
            if failed:
                outcomes.append(Outcome(b.name, "not deployed", f"canary failed on {failed[0]}"))
            else:
                outcomes.append(_deploy_board(b, bundle, expected, args, agent, sessions, canary=False))
    _summary(outcomes)
    return EXIT_OK if all(o.ok for o in outcomes) else EXIT_FAILED


def _model_names(manifest: dict[str, Any]) -> Iterator[str]:
    for m in manifest.get("models", []):
        yield f"{m.get('name')} {m.get('engine')}/{m.get('label') or m.get('variant')}"


def _golden(folder: Path, manifest: dict[str, Any]) -> dict[str, Any] | None:
    name = (manifest.get("golden") or {}).get("file")
    if not name:
        return None
    data = json.loads((folder / name).read_text())
    outputs = data.get("outputs", data) if isinstance(data, dict) else None
    if not isinstance(outputs, dict):
        raise UserError(f"bundle {folder}: {name} holds no outputs by golden input")
    return outputs


def _summary(outcomes: list[Outcome]) -> None:
    width = max(len(o.board) for o in outcomes)
    print("\nboard".ljust(width + 3) + "result")
    for o in outcomes:
        print(f"{o.board.ljust(width + 2)}{o.result}{': ' + o.detail if o.detail else ''}")
    for o in outcomes:
        if not o.ok and o.result != "not deployed":
            print(f"deploy failed on {o.board}: {o.detail}")


def _deploy_board(board: BoardSpec, bundle: Any, expected: dict[str, Any] | None, args: argparse.Namespace,
                  agent: Path, sessions: Any, canary: bool) -> Outcome:
    manifest: dict[str, Any] = bundle.raw
    bundle_id = manifest["bundle_id"]
    models = models_of(manifest)

    def say(text: str) -> None:
        print(f"{board.name}: {text}", flush=True)

    row = Row(sessions, board=board.name, bundle_id=bundle_id, chip=manifest.get("chip", ""), models=models,
              manifest=manifest, action="deploy", status="failed", reason="interrupted before it finished",
              canary=canary, serve_port=args.serve)
    try:
        session = BoardSession(board, agent)
    except EdgeFarmError as exc:
        return _failed(row, board.name, "failed", f"board not reached: {exc}", say)
    releases = releases_of(session)
    switched = False
    try:
        before = releases.state()
        row.update(previous_bundle_id=before["current"])
        serving = before["server"] if before["server"].get("running") else None
        # A server already running moves to the new release as it was: same port, same address.
        port = args.serve or (serving["port"] if serving else None)
        host = args.serve_address if args.serve else str((serving or {}).get("host") or args.serve_address)
        files = manifest["files"]
        if isinstance(releases, NativeReleases):  # its tools are on the controller: asked before any push
            say("checking the board's native tools: " + ", ".join(
                f"{e} -> {board.native[e].tool}" if e in board.native else f"{e} -> none"
                for e in dict.fromkeys(engines_of(models))))
            unmet = releases.requirements(bundle.folder, manifest)
            if unmet:
                return _failed(row, board.name, "failed", "requirements not met: " + "; ".join(unmet) +
                               " (nothing pushed, nothing switched)", say)
        size = sum((bundle.folder / rel).stat().st_size for rel in files)
        say(f"pushing {len(files) + 1} files / {size / 1e6:.1f} MB")
        releases.push(bundle.folder, bundle_id, files)
        say("verifying every file's sha256 on the board")
        releases.install(bundle_id)
        python = None
        if isinstance(releases, BoardReleases):
            python = releases.python_for(engines_of(models))
            say(f"checking requirements with {python}")
            unmet = releases.check(bundle_id, python)
            if unmet:
                releases.discard(bundle_id)
                return _failed(row, board.name, "failed", "requirements not met: " + "; ".join(unmet) +
                               " (nothing switched)", say)
        say(f"switching {before['current'] or 'no release'} -> {bundle_id}")
        releases.activate(bundle_id)
        switched = True
        after_switch(session, releases.release_dir(bundle_id))
        rounds = int((manifest.get("smoke") or {}).get("rounds", 5))
        if isinstance(releases, NativeReleases):
            report = releases.smoke(bundle.folder, manifest, rounds)
        else:
            assert python is not None  # set above for a board with Python
            report = releases.smoke(python, rounds)
        problems, figures = judge(manifest, expected, report, args.latency_factor)
        say(describe_smoke(figures))
        row.update(smoke=figures)
        if not problems and port and isinstance(releases, BoardReleases) and python is not None:
            try:
                releases.serve_start(port, python, host)
                say(f"serving on {host}:{port}" + (" (every interface, no authentication)" if host == "0.0.0.0" else ""))
            except ReleaseRefused as exc:
                problems.append(f"the server did not start: {exc}")
        if problems:
            reason = "; ".join(problems)
            back = _roll_back(releases, serving, say)
            return _failed(row, board.name, "rolled-back", f"{reason}; rolled back to {back or 'no release'}", say)
        removed = releases.prune(args.keep)
        if removed:
            say(f"pruned {len(removed)} old release(s): {', '.join(removed)}")
        row.update(finished=True, status="ok", reason=None, serve_port=port)
        say(f"ok: {bundle_id} is current")
        return Outcome(board.name, "ok", f"{bundle_id} current" + (f", serving on port {port}" if port else ""))
    except (ReleaseRefused, EdgeFarmError) as exc:
        what = str(exc) if isinstance(exc, ReleaseRefused) else f"{type(exc).__name__}: {exc}"
        if not switched:
            _discard_quietly(releases, bundle_id)
            return _failed(row, board.name, "failed", f"{what} (nothing switched)", say)
        try:
            back = _roll_back(releases, None, say)
        except (ReleaseRefused, EdgeFarmError) as again:
            return _failed(row, board.name, "failed", f"{what}; the rollback failed too: {again}", say)
        return _failed(row, board.name, "rolled-back", f"{what}; rolled back to {back or 'no release'}", say)
    finally:
        _read_back(releases, board.name, sessions)
        session.close()


def _read_back(releases: BoardReleases | NativeReleases, board: str, sessions: Any) -> None:
    """What the board runs once the deploy or rollback is over, as it says itself: the reading the
    dashboard's drift starts from."""
    from controller.deploy.status import remember
    from controller.results.queries import Reading

    try:
        reading = Reading(board, releases.state()["current"], None)
    except (ReleaseRefused, EdgeFarmError) as exc:
        reading = Reading(board, None, f"not read after the deploy: {exc}")
    remember(sessions, [reading])


def _discard_quietly(releases: BoardReleases | NativeReleases, bundle_id: str) -> None:
    try:
        releases.discard(bundle_id)
    except (ReleaseRefused, EdgeFarmError):
        pass  # the board is gone: its incoming folder is cleared by the next push of this bundle


def _failed(row: Row, board: str, status: str, reason: str, say: Callable[[str], None]) -> Outcome:
    row.update(finished=True, status=status, reason=reason)
    say(f"FAILED: {reason}")
    return Outcome(board, status, reason)


def _roll_back(releases: BoardReleases | NativeReleases, serving: dict[str, Any] | None,
               say: Callable[[str], None]) -> str | None:
    """Back one release; the server follows: stopped if it served the release left, and the
    one that was serving before started again on the release now current."""
    back = releases.rollback()
    if isinstance(releases, NativeReleases):
        return back["current"]  # nothing is served on a board without Python
    after = releases.state()
    server = after["server"]
    if server.get("running") and server.get("release") == back["left"]:
        releases.serve_stop()
        serving = serving or server
    elif server.get("running"):
        serving = None  # still serving a release that stays: nothing to restart
    if serving and back["current"] and not (server.get("running") and server.get("release") == back["current"]):
        python = releases.python_for(engines_of(after.get("models") or []))
        try:
            releases.serve_start(int(serving["port"]), python, str(serving.get("host") or "127.0.0.1"))
            say(f"server on port {serving['port']} back on {back['current']}")
        except ReleaseRefused as exc:  # the rollback itself is done; the server is reported, not retried
            say(f"WARNING: the server on port {serving['port']} did not start again on {back['current']}: {exc}")
    return back["current"]


# -- rollback by hand -------------------------------------------------------------------------


def rollback_command(args: argparse.Namespace) -> int:
    """Every board's state is read first: a board with nothing to go back to refuses the whole
    command before any board is changed."""
    from controller.results.database import open_db

    boards = _boards(args)
    agent = _agent_bundle()
    opened: list[tuple[BoardSpec, BoardSession, BoardReleases | NativeReleases, dict[str, Any]]] = []
    try:
        for b in boards:
            try:
                session = BoardSession(b, agent)
            except TransportError as exc:
                print(f"{b.name}: not reached: {exc}")
                return EXIT_FAILED
            releases = releases_of(session)
            opened.append((b, session, releases, releases.state()))
        for b, _, _, state in opened:
            if state["current"] is None:
                raise UserError(f"--board {b.name}: no current release: nothing to roll back")
            if state["previous"] is None:
                raise UserError(f"--board {b.name}: no earlier release to go back to (current: {state['current']})")
        sessions = open_db(args.db)
        ok = True
        for b, _, releases, state in opened:
            ok = _rollback_board(b, releases, state, sessions) and ok
        return EXIT_OK if ok else EXIT_FAILED
    except (ReleaseRefused, TransportError) as exc:
        print(f"rollback failed: {exc}")
        return EXIT_FAILED
    finally:
        for _, session, _, _ in opened:
            session.close()


def _rollback_board(board: BoardSpec, releases: BoardReleases | NativeReleases, state: dict[str, Any],
                    sessions: Any) -> bool:
    def say(text: str) -> None:
        print(f"{board.name}: {text}", flush=True)

    target = state["previous"]
    manifest = _known_manifest(sessions, target) or {"bundle_id": target}
    row = Row(sessions, board=board.name, bundle_id=target, previous_bundle_id=state["current"],
              chip=manifest.get("chip", board.chip), models=models_of(manifest), manifest=manifest,
              action="rollback", status="failed", reason="interrupted before it finished", canary=False,
              serve_port=state["server"].get("port") if state["server"].get("running") else None)
    serving = state["server"] if state["server"].get("running") else None
    try:
        say(f"rolling back {state['current']} -> {target}")
        back = _roll_back(releases, serving, say)
    except (ReleaseRefused, EdgeFarmError) as exc:
        _failed(row, board.name, "failed", str(exc), say)
        return False
    row.update(finished=True, status="ok", reason="rolled back by hand")
    _read_back(releases, board.name, sessions)
    say(f"ok: {back} is current")
    return True


def _known_manifest(sessions: Any, bundle_id: str) -> dict[str, Any] | None:
    with sessions() as db:
        row = (db.query(Deployment).filter(Deployment.bundle_id == bundle_id, Deployment.action == "deploy")
               .order_by(Deployment.id.desc()).first())
        return dict(row.manifest) if row is not None else None


# -- predict ----------------------------------------------------------------------------------


def predict_command(args: argparse.Namespace) -> int:
    """The board's current release (what is actually there, whatever the database says) on one image."""
    from controller.config.inventory import load_inventory

    image: Path = args.image
    inventory, source = load_inventory(args.inventory)
    board = inventory.board(args.board, source)
    if not board.agent:
        raise UserError(f"--board {board.name}: {NO_RUNTIME}, so it cannot predict: deploy the bundle to a "
                        "board with Python and predict there, or run `python3 BUNDLE/bundle.pyz predict IMAGE` "
                        "on this machine (the board's native tool only times the model)")
    if not image.is_file():
        raise UserError(f"{image}: no such image file")
    try:
        session = BoardSession(board, _agent_bundle())
    except TransportError as exc:
        print(f"edgefarm: board {board.name} not reached: {exc}")
        return EXIT_FAILED
    try:
        releases = BoardReleases(session)
        state = releases.state()
        if state["current"] is None:
            raise UserError(f"--board {board.name}: no current release; deploy one first "
                            f"(edgefarm deploy BUNDLE --board {board.name})")
        python = releases.python_for(engines_of(state.get("models") or []))
        code, out, err = releases.predict(python, image, args.json)
    except (ReleaseRefused, TransportError) as exc:
        print(f"edgefarm: predict on {board.name} failed: {exc}")
        return EXIT_FAILED
    finally:
        session.close()
    if code == 2:
        lines = [line for line in err.splitlines() if line.strip()]
        line = lines[-1].replace("bundle.pyz: error: ", "", 1) if lines else "refused by the bundle"
        raise UserError(line if str(image) in line else f"{image}: {line}")
    if code != 0:
        tail = " | ".join(line for line in err.strip().splitlines()[-3:])
        print(f"edgefarm: predict on {board.name} exited {code}: {tail}")
        return EXIT_FAILED
    print(out, end="" if out.endswith("\n") else "\n")
    return EXIT_OK
