"""The driver's files, pulled by board hosts over Ray by sha256: nothing shared but Ray.

A board's actor runs on the Ray node of the host that reaches the board, and that node may share
no filesystem with the driver. So what a job needs (the variant's artifact, inputs, dataset, the
agent bundle, the health check's golden files) reaches it as a ``FileRef``: its sha256, its name
and where it lies on the driver's node. An actor on the driver's node reads it there (the driver's
content-addressed cache, already verified); an actor elsewhere pulls it from the ``Depot``, an actor
pinned to the driver's node, in chunks through Ray's object store, into its host's cache, keyed by
sha256, and checks the digest before using it. A host fetches only what it lacks, once, whichever
of its boards asks first; a second host fetches its own copy.

A pull, not a push (``ray.put`` of every artifact by the driver): the object store holds only the
chunk in flight, not every variant of every model for the whole run, and a host that already has a
file from an earlier run asks for nothing. The depot serves only files the driver offered, by
digest: a node of the cluster cannot read any other file of the driver's machine through it.
"""

from __future__ import annotations

import hashlib
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.protocol import sha256_file
from controller.workspace import workspace

# A chunk per object: big enough that a 100 MB model is a handful of round trips, small enough
# that the object store never holds more than a few of them.
CHUNK = 16 << 20
# How many chunks a host pulls at once (a threaded depot serves them side by side).
DEPOT_THREADS = 8


@dataclass(frozen=True)
class FileRef:
    """A file of the driver's, as a board host asks for it."""

    sha256: str
    name: str  # its file name: engines pick their loader by the suffix, the agent is named by its hash
    size: int
    path: str  # where it lies on the driver's node
    node: str  # the driver's Ray node id


class FetchError(RuntimeError):
    """A file could not be brought to this host (the driver gone, or bytes that do not match)."""


def depot_class() -> Any:
    import ray

    # num_cpus=0: it waits on disk and network, and must not take a compile task's core.
    @ray.remote(num_cpus=0)
    class DepotActor:
        def __init__(self) -> None:
            self.offered: dict[str, str] = {}  # sha256 -> path on this node

        def offer(self, files: dict[str, str]) -> None:
            self.offered.update(files)

        def read(self, sha256: str, offset: int, length: int) -> bytes:
            path = self.offered.get(sha256)
            if path is None:
                raise FetchError(f"the driver offers no file {sha256}")
            with open(path, "rb") as f:
                f.seek(offset)
                return f.read(length)

    return DepotActor


class Depot:
    """The driver's side: starts the depot on its own node and offers files to the hosts."""

    def __init__(self) -> None:
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        self.node = ray.get_runtime_context().get_node_id()
        self.actor = depot_class().options(
            max_concurrency=DEPOT_THREADS,
            scheduling_strategy=NodeAffinitySchedulingStrategy(self.node, soft=False)).remote()
        self._offered: dict[str, FileRef] = {}

    def ship(self, path: Path, sha256: str) -> FileRef:
        """A ref to the file at ``path`` (whose digest the caller knows), offered to every host."""
        ref = self._offered.get(sha256)
        if ref is None or ref.path != str(path):
            import ray

            ref = FileRef(sha256, path.name, path.stat().st_size, str(path), self.node)
            # Waited for: the depot serves several hosts at once, so calls from here are not ordered.
            ray.get(self.actor.offer.remote({sha256: str(path)}))
            self._offered[sha256] = ref
        return ref

    def ship_all(self, files: dict[str, tuple[Path, str]]) -> dict[str, FileRef]:
        return {role: self.ship(path, sha) for role, (path, sha) in files.items()}

    def close(self) -> None:
        import ray

        ray.kill(self.actor)


class HostFiles:
    """A board host's side: the local path of each ``FileRef``, pulled from the depot if need be.

    The host's cache is ``$EDGEFARM_HOME/cache/host/<sha256>/<name>`` on that host (``edgefarm
    worker`` sets EDGEFARM_HOME for its node). A file is written under a temporary name, hashed as
    it arrives and renamed into place only when the digest matches, so a half-written or corrupted
    copy is never used, and two boards of one host asking at once both end with the same file.
    """

    def __init__(self, depot: Any, node: str, root: Path | None = None) -> None:
        self.depot = depot
        self.node = node
        self.root = root or workspace() / "cache" / "host"
        self._lock = threading.Lock()  # one pull per file at a time within this process
        self._checked: set[Path] = set()  # copies hashed by this process: each is hashed once

    def local(self, ref: FileRef) -> Path:
        if ref.node == self.node:
            return Path(ref.path)  # the driver's own node: its verified cache is right here
        path = self.root / ref.sha256 / ref.name
        with self._lock:
            if path not in self._checked:
                # A copy left by an earlier run is hashed before it is trusted: a damaged one
                # would otherwise be pushed to the board again each time the board refused it.
                if not (path.is_file() and sha256_file(str(path)) == ref.sha256):
                    self._pull(ref, path)
                self._checked.add(path)
        return path

    def local_all(self, refs: dict[str, FileRef]) -> dict[str, tuple[Path, str]]:
        return {role: (self.local(ref), ref.sha256) for role, ref in refs.items()}

    def _pull(self, ref: FileRef, path: Path) -> None:
        import ray

        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.part")
        digest = hashlib.sha256()
        try:
            with tmp.open("wb") as out:
                offsets = range(0, ref.size, CHUNK)
                for start in range(0, len(offsets), DEPOT_THREADS):  # a few chunks in flight at once
                    batch = [self.depot.read.remote(ref.sha256, o, CHUNK) for o in offsets[start:start + DEPOT_THREADS]]
                    for chunk in ray.get(batch):
                        digest.update(chunk)
                        out.write(chunk)
            if digest.hexdigest() != ref.sha256 or tmp.stat().st_size != ref.size:
                raise FetchError(f"{ref.name} arrived from the driver with sha256 {digest.hexdigest()}, "
                                 f"not {ref.sha256}")
            os.replace(tmp, path)
        except Exception as exc:
            tmp.unlink(missing_ok=True)
            if isinstance(exc, FetchError):
                raise
            raise FetchError(f"cannot fetch {ref.name} ({ref.sha256[:12]}) from the driver: {exc}") from exc

