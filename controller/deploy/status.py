"""``edgefarm deployments``: per board, what the database says runs there, and drift from what
the board itself says.

The database's current bundle of a board is its newest successful deploy or rollback; a deploy
that failed or was rolled back changed nothing it keeps. Drift is read from the board (its
``current`` link, ``release state``): a board whose current release is not the database's has
drifted (someone switched it by hand, or a deploy crashed half way). A board without Python is
read with its own shell (``readlink`` of the link, ``controller.deploy.native``). A board that
cannot be reached, or is not in the inventory, has drift null and the reason.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from controller.errors import UserError, one_line
from controller.results import queries
from controller.results.store import ReleaseReading

COLUMNS = ("board", "bundle", "previous", "status", "deployed_at", "models", "smoke", "drift")


def read_releases(names: list[str], inventory_path: Any) -> list[queries.Reading]:
    """What each board says its current release is (or why it could not be read)."""
    from controller.boards.agent_bundle import build_agent_bundle
    from controller.boards.session import BoardSession
    from controller.config.inventory import load_inventory
    from controller.deploy.native import releases_of
    from controller.workspace import workspace

    inventory, source = load_inventory(inventory_path)
    known = {b.name: b for b in inventory.boards}
    agent = build_agent_bundle(workspace() / "agent")
    found = []
    for name in names:
        board = known.get(name)
        if board is None:
            found.append(queries.Reading(name, None, f"not in {source}"))
            continue
        try:
            session = BoardSession(board, agent)
            try:
                state = releases_of(session).state()
            finally:
                session.close()
        except Exception as exc:  # noqa: BLE001 - every board is reported, reachable or not
            found.append(queries.Reading(name, None, f"not reached: {one_line(exc)}"))
            continue
        found.append(queries.Reading(name, state.get("current"), None))
    return found


def remember(sessions: Any, readings: list[queries.Reading]) -> None:
    """Keep what the boards said, so the dashboard (which reads no board) can show drift."""
    with sessions() as db:
        db.add_all([ReleaseReading(board=r.board, release=r.release, error=r.error) for r in readings])
        db.commit()


def deployments(board: str | None, inventory_path: Any, db_url: str | None) -> list[dict[str, Any]]:
    from controller.results.database import exists, open_db

    if not exists(db_url):  # asking must not leave an empty database behind
        return []
    sessions = open_db(db_url, create=False)
    with sessions() as db:
        records = queries.deployment_states(queries.deployments(db, board))
    readings = read_releases([r["board"] for r in records], inventory_path)
    remember(sessions, readings)
    for r, reading in zip(records, readings):
        r.update(queries.drift(r, reading))
    return records


def _cell(record: dict[str, Any], key: str) -> str:
    value = record.get(key)
    if key == "models":
        return ", ".join(value or []) or "-"
    if key == "smoke":
        if not value or "error" in value:
            return "-"
        infer, total = value.get("infer_p50_ms"), value.get("total_p50_ms")
        return (f"infer {infer:.1f}/{value.get('farm_infer_total_ms', 0):.1f} ms" if infer is not None else "?") + \
            (f", total {total:.1f} ms" if total is not None else "") + f", outputs {value.get('outputs')}"
    if key == "drift":
        if value is None:
            return f"unknown ({record.get('why')})"
        return f"DRIFT: {record.get('why')}" if value else "none"
    return "-" if value is None else str(value)


def render_table(records: list[dict[str, Any]]) -> str:
    rows = [[c for c in COLUMNS]] + [[_cell(r, c) for c in COLUMNS] for r in records]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS) - 1)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row[:-1], widths)) + "  " + row[-1] for row in rows]
    for r in records:
        if r["status"] != "ok" and r.get("reason"):
            lines.append(f"{r['board']}: last {r['action']} {r['status']}: {r['reason']}")
    return "\n".join(lines)


def deployments_command(args: argparse.Namespace) -> int:
    records = deployments(args.board, args.inventory, args.db)
    if args.board is not None and not records:
        raise UserError(f"--board {args.board}: no deployments recorded for this board")
    if args.format == "json":
        print(json.dumps(records, indent=1))
    elif not records:
        print("no deployments yet (edgefarm deploy BUNDLE --board NAME)")
    else:
        print(render_table(records))
    return 0
