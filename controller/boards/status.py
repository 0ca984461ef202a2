"""``edgefarm boards``: what each board is, whether it answers, and which engines it has."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from controller.boards.chip_check import contradiction
from controller.errors import one_line


def probe_boards(inventory_path: Path | None) -> list[dict[str, Any]]:
    from controller.boards.agent_bundle import build_agent_bundle
    from controller.boards.session import BoardSession
    from controller.config.inventory import load_inventory
    from controller.workspace import workspace

    inventory, _ = load_inventory(inventory_path)
    bundle = build_agent_bundle(workspace() / "agent")
    rows = []
    for board in inventory.boards:
        row: dict[str, Any] = {"name": board.name, "chip": board.chip, "transport": board.transport}
        try:
            session = BoardSession(board, bundle)
            try:
                probe = session.start()
            finally:
                session.close()
        except Exception as exc:  # report every board, reachable or not
            row.update(reachable=False, why=one_line(exc))
        else:
            fp = probe.get("fingerprint", {})
            if board.chip == "auto":
                row["chip"] = f"{fp.get('arch', '?')} {fp.get('cpu_model', '?')}"
            row.update(reachable=True, fingerprint=fp, engines=probe.get("engines", {}),
                       disk_free_mb=probe.get("disk_free_mb"), warning=contradiction(board.chip, fp))
        rows.append(row)
    return rows


def quarantine(db_url: str | None) -> dict[str, str]:
    """Quarantined board -> since when and why, from the results database."""
    from controller.results.database import exists, open_db
    from controller.results.store import Board

    if not exists(db_url):  # listing boards must not leave an empty database behind
        return {}
    with open_db(db_url, create=False)() as db:
        return {b.name: f"since {b.quarantined_at:%Y-%m-%d %H:%M}: {b.quarantine_reason}"
                for b in db.query(Board).filter(Board.quarantined_at.is_not(None))}


def release(name: str, db_url: str | None) -> str:
    from controller.boards.health import release as release_row
    from controller.errors import UserError
    from controller.results.database import open_db
    from controller.results.store import Board

    with open_db(db_url, create=False)() as db:
        row = db.query(Board).filter_by(name=name).one_or_none()
        if row is None or row.quarantined_at is None:
            raise UserError(f"--release {name}: board {name!r} is not in quarantine")
        release_row(row)
        db.commit()
    return f"board {name} released from quarantine; the next run checks its health again"


def list_boards(inventory_path: Path | None, db_url: str | None = None) -> str:
    lines = []
    quarantined = quarantine(db_url)
    for row in probe_boards(inventory_path):
        head = f"{row['name']}  chip={row['chip']}  transport={row['transport']}"
        if row["name"] in quarantined:
            head += f"  QUARANTINED {quarantined[row['name']]}"
        if not row["reachable"]:
            lines.append(f"{head}  UNREACHABLE: {row['why']}")
            continue
        fp = row["fingerprint"]
        lines.append(f"{head}  reachable")
        if row["warning"]:
            lines.append(f"  WARNING: {row['warning']}: its results are filed under that chip; correct chip: "
                         "in the inventory")
        lines.append(f"  arch={fp.get('arch')}  cpu={fp.get('cpu_model')}  cores={fp.get('cores')}  "
                     f"os={fp.get('os')}  python={fp.get('python')}  governor={fp.get('governor') or '-'}")
        disk, temp = row.get("disk_free_mb"), fp.get("temperature_c")
        lines.append(f"  disk free={f'{disk / 1000:.1f} GB' if disk is not None else '-'}  "
                     f"temperature={f'{temp:.0f} C' if temp is not None else '-'}")
        for name, info in sorted(row["engines"].items()):
            state = info.get("version") if info.get("available") else f"unavailable ({info.get('reason')})"
            extra = f"  default precision {info['default_precision']}" if info.get("default_precision") else ""
            lines.append(f"  engine {name}: {state}{extra}")
    return "\n".join(lines)
