"""``edgefarm boards``: what each board is, whether it answers, and which engines it has."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from controller.errors import one_line


def probe_boards(inventory_path: Path | None) -> list[dict[str, Any]]:
    from controller.agent_bundle import build_agent_bundle
    from controller.board import BoardSession
    from controller.inventory import load_inventory
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
                       disk_free_mb=probe.get("disk_free_mb"))
        rows.append(row)
    return rows


def list_boards(inventory_path: Path | None) -> str:
    lines = []
    for row in probe_boards(inventory_path):
        head = f"{row['name']}  chip={row['chip']}  transport={row['transport']}"
        if not row["reachable"]:
            lines.append(f"{head}  UNREACHABLE: {row['why']}")
            continue
        fp = row["fingerprint"]
        lines.append(f"{head}  reachable")
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
