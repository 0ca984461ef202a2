"""Artifacts on a board: each checked against its sha256 before use; a model packed as a tar
(several files, e.g. ncnn's .param + .bin, OpenVINO's .xml + .bin) unpacked once beside itself; a
job's image files read from their tar.

Used by the benchmark job (``agent.job``) and the deployment runtime (``agent.runtime``) alike.
"""

from __future__ import annotations

import os
from typing import Any, Dict, List, Tuple

from agent.protocol import ProtocolError, sha256_file


def verify_artifacts(artifacts: Any, workdir: str) -> Dict[str, str]:
    """Check every artifact against its sha256; returns {artifact name: path}."""
    if not isinstance(artifacts, dict) or not artifacts.get("model"):
        raise ProtocolError("job artifacts must name a 'model'")
    paths: Dict[str, str] = {}
    for name in sorted(artifacts):
        spec = artifacts[name]
        if spec is None:  # e.g. "dataset": null when there is no accuracy step
            continue
        if not isinstance(spec, dict) or "file" not in spec or "sha256" not in spec:
            raise ProtocolError("artifact %r needs a 'file' and a 'sha256', got %r" % (name, spec))
        path = os.path.join(workdir, str(spec["file"]))
        expected = str(spec["sha256"]).lower()
        if not os.path.isfile(path):
            raise FileNotFoundError(
                "artifact %r: file %s is missing (expected sha256 %s)" % (name, spec["file"], expected)
            )
        actual = sha256_file(path)
        try:  # the board's cache is pruned least recently used first: this one was just used
            os.utime(path)
        except OSError:
            pass  # a read-only file is still a valid artifact; it only ages sooner
        if actual != expected:
            raise ValueError(
                "artifact %r: %s has sha256 %s, but the job expects %s"
                % (name, spec["file"], actual, expected)
            )
        paths[name] = path
    return paths


def archive_members(path: str) -> List[str]:
    """The member names of a model packed as a tar (several files, e.g. ncnn's .param + .bin), the
    file the engine loads first. Members must be plain files with plain names, so a bad archive
    cannot write outside its folder."""
    import tarfile

    with tarfile.open(path) as tar:
        members = tar.getmembers()
    for m in members:
        if not m.isfile() or os.path.basename(m.name) != m.name or m.name in ("", ".", ".."):
            raise ValueError("model archive %s: member %r is not a plain file name" % (path, m.name))
    if not members:
        raise ValueError("model archive %s is empty" % path)
    return [m.name for m in members]


def unpack_model(path: str) -> str:
    """A model packed as a tar -> the path of its first member, unpacked once into ``<file>.d``
    beside it; any other model file is returned as is. The tar's hash was checked with the other
    artifacts."""
    import tarfile

    if not path.endswith(".tar"):
        return path
    names = archive_members(path)
    target = path + ".d"
    if not os.path.isdir(target):
        partial = "%s.%d.part" % (target, os.getpid())
        os.makedirs(partial, exist_ok=True)
        with tarfile.open(path) as tar:
            for name in names:
                source = tar.extractfile(name)
                with open(os.path.join(partial, name), "wb") as out:
                    out.write(source.read() if source is not None else b"")
        try:
            os.rename(partial, target)  # atomic: a second job never sees half a folder
        except OSError:
            if not os.path.isdir(target):
                raise
    return os.path.join(target, names[0])


def read_images(path: str) -> List[Tuple[str, bytes]]:
    """The image files of a job's ``images`` artifact (a tar of plain members), name and bytes, in
    the tar's order."""
    import tarfile

    names = archive_members(path)
    out: List[Tuple[str, bytes]] = []
    with tarfile.open(path) as tar:
        for name in names:
            member = tar.extractfile(name)
            out.append((name, member.read() if member is not None else b""))
    return out
