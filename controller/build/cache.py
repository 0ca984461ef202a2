"""A content-addressed artifact cache: an unchanged input is never compiled twice.

An entry's key is the sha256 of everything that decides its bytes (input hashes, the pass or
converter with its own options and version, library versions); the entry is the file plus a
JSON sidecar.
Entries appear atomically (written aside, then renamed), so a killed run leaves no half file.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from pathlib import Path
from typing import Any


def key_of(**parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


class Cache:
    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, kind: str, key: str, suffix: str) -> Path:
        return self.root / kind / f"{key[:32]}{suffix}"

    def lookup(self, kind: str, key: str, suffix: str) -> tuple[Path, dict[str, Any]] | None:
        path = self.path(kind, key, suffix)
        meta = path.with_suffix(path.suffix + ".json")
        if path.is_file() and meta.is_file():
            return path, json.loads(meta.read_text())
        return None

    def store(self, kind: str, key: str, suffix: str, data: bytes, meta: dict[str, Any]) -> Path:
        path = self.path(kind, key, suffix)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{uuid.uuid4().hex}.part")
        tmp.write_bytes(data)
        os.replace(tmp, path)
        sidecar = path.with_suffix(path.suffix + ".json")
        tmp.write_text(json.dumps(meta, sort_keys=True, default=str))
        os.replace(tmp, sidecar)  # the sidecar last: its presence marks a complete entry
        return path

    def find(self, sha256: str, size: int | None = None) -> Path | None:
        """The complete entry (any kind) whose bytes have this sha256, or None.

        Entries are named by the key of what made them, not by their content, so this walks the
        cache: files of another size are passed over unread, and only the candidates are hashed."""
        from agent.protocol import sha256_file

        if not self.root.is_dir():
            return None
        for dirpath, _dirs, names in os.walk(self.root):
            for name in sorted(names):
                path = Path(dirpath) / name
                if name.endswith((".json", ".part")) or name.startswith(".") or not path.is_file():
                    continue  # sidecars, and files being written (they appear under their name when whole)
                if size is not None and path.stat().st_size != size:
                    continue
                if sha256_file(path) == sha256:
                    return path
        return None
