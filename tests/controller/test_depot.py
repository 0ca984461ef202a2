"""The driver's files reach a board host through Ray alone: pulled by sha256, verified, cached.

These tests pull through a real local Ray, with the host's side told it is another node, so that
it must fetch rather than read the driver's path; the real second node, in its own mount and
network namespaces, is in test_remote_host.py.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Iterator

import pytest

from controller.run import depot as depot_module
from controller.run.cluster import ensure_ray
from controller.run.depot import Depot, FetchError, FileRef, HostFiles


@pytest.fixture(scope="module")
def depot() -> Iterator[Depot]:
    ensure_ray(None)
    d = Depot()
    yield d
    d.close()


def _file(path: Path, data: bytes) -> tuple[Path, str]:
    path.write_bytes(data)
    return path, hashlib.sha256(data).hexdigest()


def test_another_host_pulls_the_file_once_in_chunks_and_verifies_it(depot: Depot, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(depot_module, "CHUNK", 1000)  # many chunks, more than are in flight at once
    data = os.urandom(25_500)
    ref = depot.ship(*_file(tmp_path / "model.onnx", data))
    host = HostFiles(depot.actor, node="another-node", root=tmp_path / "host")
    got = host.local(ref)
    assert got == tmp_path / "host" / ref.sha256 / "model.onnx"  # the name (and its suffix) kept
    assert got.read_bytes() == data
    (tmp_path / "model.onnx").unlink()  # the driver's copy gone: the host's own copy serves
    assert HostFiles(depot.actor, node="another-node", root=tmp_path / "host").local(ref).read_bytes() == data
    assert not [p for p in (tmp_path / "host").rglob("*.part")]


def test_the_drivers_own_node_reads_the_drivers_path(depot: Depot, tmp_path: Path) -> None:
    ref = depot.ship(*_file(tmp_path / "inputs.npz", b"x" * 10))
    assert HostFiles(depot.actor, node=depot.node, root=tmp_path / "host").local(ref) == tmp_path / "inputs.npz"
    assert not (tmp_path / "host").exists()


def test_a_damaged_cached_copy_is_pulled_again(depot: Depot, tmp_path: Path) -> None:
    data = b"weights" * 1000
    ref = depot.ship(*_file(tmp_path / "m.nb", data))
    cached = HostFiles(depot.actor, node="another-node", root=tmp_path / "host").local(ref)
    cached.write_bytes(b"W" + data[1:])  # same size, one byte off: a bad flash card
    assert HostFiles(depot.actor, node="another-node", root=tmp_path / "host").local(ref).read_bytes() == data


def test_bytes_that_do_not_match_are_refused_and_nothing_is_left(depot: Depot, tmp_path: Path) -> None:
    path, sha = _file(tmp_path / "m.onnx", b"the real model")
    depot.ship(path, sha)
    path.write_bytes(b"another model!")  # changed on the driver after it was offered
    ref = FileRef(sha, "m.onnx", path.stat().st_size, str(path), depot.node)
    with pytest.raises(FetchError, match="arrived from the driver with sha256"):
        HostFiles(depot.actor, node="another-node", root=tmp_path / "host").local(ref)
    assert not any(p.is_file() for p in (tmp_path / "host").rglob("*"))


def test_the_depot_serves_only_what_the_driver_offered(depot: Depot, tmp_path: Path) -> None:
    path, sha = _file(tmp_path / "secret.key", b"-----BEGIN OPENSSH PRIVATE KEY-----")
    ref = FileRef(sha, path.name, path.stat().st_size, str(path), depot.node)  # never shipped
    with pytest.raises(FetchError, match="offers no file"):
        HostFiles(depot.actor, node="another-node", root=tmp_path / "host").local(ref)
