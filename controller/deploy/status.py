"""``edgefarm deployments``: per board, what the database says runs there, and drift from what
the board itself says.

The database's current bundle of a board is its newest successful deploy or rollback; a deploy
that failed or was rolled back changed nothing it keeps. Drift is read from the board (its
``current`` link, ``release state``): a board whose current release is not the database's has
drifted (someone switched it by hand, or a deploy crashed half way). A board that cannot be
reached, or is not in the inventory, has drift null and the reason.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from controller.errors import UserError, one_line
from controller.results import queries

COLUMNS = ("board", "bundle", "previous", "status", "deployed_at", "models", "smoke", "drift")


def _actual(names: list[str], inventory_path: Any) -> dict[str, tuple[str | None, str | None, bool]]:
    """board -> (its current release, why it could not be read, read at all)."""
    from controller.boards.agent_bundle import build_agent_bundle
    from controller.boards.session import BoardSession
    from controller.config.inventory import load_inventory
    from controller.deploy.releases import BoardReleases
    from controller.workspace import workspace

    inventory, source = load_inventory(inventory_path)
    known = {b.name: b for b in inventory.boards}
    agent = build_agent_bundle(workspace() / "agent")
    found: dict[str, tuple[str | None, str | None, bool]] = {}
    for name in names:
        board = known.get(name)
        if board is None:
            found[name] = (None, f"not in {source}", False)
            continue
        if not board.agent:
            found[name] = (None, "a board without Python (agent: false): its release is not read", False)
            continue
        try:
            session = BoardSession(board, agent)
            try:
                state = BoardReleases(session).state()
            finally:
                session.close()
        except Exception as exc:  # noqa: BLE001 - every board is reported, reachable or not
            found[name] = (None, f"not reached: {one_line(exc)}", False)
            continue
        found[name] = (state.get("current"), None, True)
    return found


def deployments(board: str | None, inventory_path: Any, db_url: str | None) -> list[dict[str, Any]]:
    from controller.results.database import exists, open_db

    if not exists(db_url):  # asking must not leave an empty database behind
        return []
    with open_db(db_url, create=False)() as db:
        records = queries.deployment_states(queries.deployments(db, board))
    actual = _actual([r["board"] for r in records], inventory_path)
    for r in records:
        current, why, read = actual[r["board"]]
        r["actual"] = current
        if not read:
            r["drift"], r["why"] = None, why
        elif current != r["bundle"]:
            r["drift"] = True
            r["why"] = (f"the board's current release is {current or 'none'}, the database says {r['bundle'] or 'none'}"
                        " (switched outside edgefarm deploy?)")
        else:
            r["drift"], r["why"] = False, None
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
