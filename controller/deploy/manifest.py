"""A bundle's manifest.json as typed records, its id, and the deployer's way in: ``open_bundle``.

The manifest says everything a board needs to run the bundle as the farm measured it (docs/deploy.md,
"The bundle"): per model its engine, variant, options, artifact, task and preprocessing, the farm's
figures, the runtime requirements, and the sha256 of every other file. The bundle id is the first 16
hex of the sha256 of the manifest's canonical JSON without the id itself; as the manifest holds every
file's hash, the id names the bundle's whole content, and the same inputs give the same id.

The id is computed on the JSON object as it is written (and, when checking, as it is read back), not
on a re-dump of the records: a record's defaults or number coercion can never make two sides disagree.
The runtime (agent/runtime/bundle.py) checks a bundle the same way on a board.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import posixpath
import shutil
import stat
import tarfile
import tempfile
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from agent.protocol import sha256_file
from controller.errors import UserError
from controller.validation import format_validation_error

FORMAT = 1
MANIFEST = "manifest.json"


class Record(BaseModel):
    """A manifest record: unknown keys are refused, so a misspelt or foreign key is never ignored."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class EngineRequirement(Record):
    measured: str  # the version the farm measured with
    min: str  # the same major.minor: "1.20" ...
    below: str  # ... up to, not including, the next minor: "1.21"


class Requirements(Record):
    python: str = ">=3.8"
    numpy: str = ">=1.17"
    image_decoder: str | None = "Pillow"  # None: no model of the bundle reads an image (raw tensors)
    engines: dict[str, EngineRequirement]


class ArtifactRef(Record):
    file: str  # relative to the bundle folder: models/<name>/<sha256[:16]><suffix>
    sha256: str
    size_bytes: int


class InputSpec(Record):
    name: str
    shape: list[int | None]  # None: a dynamic dimension
    dtype: str


class Measured(Record):
    """The farm's figures for this configuration, and where they come from."""

    board: str
    run_id: int
    job_id: int
    p50_ms: float
    p90_ms: float | None
    accuracy_metric: str | None
    accuracy: float | None
    e2e_p50_ms: float | None = None  # the bundle's whole pipeline on the board, once runs measure it


class ModelEntry(Record):
    name: str
    task: str
    task_params: dict[str, Any]
    engine: str
    engine_version: str
    variant: str  # the variant artifact (fp32, fp16, int8, ...)
    label: str  # the configuration as selection names it (int8, fp32@bf16, ...)
    precision: str
    options: dict[str, Any]  # engine options exactly as the job used them
    artifact: ArtifactRef
    inputs: list[InputSpec]
    preprocess: dict[str, Any] | None  # agent.tasks.preprocess declaration; None for raw tensors
    measured: Measured


class Golden(Record):
    file: str | None  # golden.json, the expected outputs; None when no interpreter here has the engine
    inputs: list[str]


class Smoke(Record):
    latency_factor: float = 3.0
    rounds: int = 5


class Manifest(Record):
    format: Literal[1]
    bundle_id: str
    chip: str
    edgefarm_version: str
    pipeline: Literal["ocr"] | None
    requirements: Requirements
    models: list[ModelEntry]
    golden: Golden
    smoke: Smoke
    files: dict[str, str]  # relative path -> sha256, every file of the bundle but manifest.json


def canonical(obj: dict[str, Any]) -> bytes:
    """The manifest's canonical JSON: without bundle_id, keys sorted, no spaces."""
    body = {k: v for k, v in obj.items() if k != "bundle_id"}
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def bundle_id_of(obj: dict[str, Any]) -> str:
    return hashlib.sha256(canonical(obj)).hexdigest()[:16]


def render(obj: dict[str, Any]) -> str:
    """manifest.json's text, as the contract writes it."""
    return json.dumps(obj, indent=1, sort_keys=True) + "\n"


def seal(folder: Path, manifest: dict[str, Any]) -> Manifest:
    """Hash every file of ``folder`` into ``manifest`` (a JSON object, no files and id yet), compute
    the id and write manifest.json; returns the typed manifest."""
    obj = dict(manifest)
    obj["files"] = {rel: sha256_file(folder / rel) for rel in _files(folder)}
    obj["bundle_id"] = "0" * 16
    typed = Manifest.model_validate(obj)  # refuses a mistake of the bundler before it is written
    obj = typed.model_dump(mode="json")
    obj["bundle_id"] = bundle_id_of(obj)
    (folder / MANIFEST).write_text(render(obj))
    return Manifest.model_validate(obj)


def _files(folder: Path, runtime_written: Callable[[str], bool] = lambda rel: False) -> list[str]:
    """Every file under ``folder`` but manifest.json, as sorted relative POSIX paths, less the folders
    ``runtime_written`` names. A link or any other thing that is not a plain file or folder is refused:
    a bundle holds nothing else."""
    out = []
    for dirpath, dirnames, filenames in os.walk(folder):
        for d in list(dirnames):
            if runtime_written((Path(dirpath) / d).relative_to(folder).as_posix()):
                dirnames.remove(d)
        for name in sorted(dirnames + filenames):
            path = Path(dirpath) / name
            rel = path.relative_to(folder).as_posix()
            mode = path.lstat().st_mode
            if stat.S_ISLNK(mode) or not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                raise UserError(f"bundle {folder}: {rel} is not a plain file or folder; a bundle holds no links")
            if stat.S_ISREG(mode) and rel != MANIFEST:
                out.append(rel)
    return sorted(out)


# --- the deployer's way in ---------------------------------------------------------------------


@dataclass
class OpenBundle:
    """A verified bundle: its folder (a temporary one for a .tar.gz, removed by ``close``) and manifest."""

    source: Path  # what the user named
    folder: Path
    manifest: Manifest
    raw: dict[str, Any] = field(repr=False)  # manifest.json as read
    extracted: bool = False

    def close(self) -> None:
        if self.extracted:
            shutil.rmtree(self.folder.parent, ignore_errors=True)
            self.extracted = False

    def __enter__(self) -> OpenBundle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_bundle(path: Path | str) -> OpenBundle:
    """A bundle folder or .tar.gz -> the verified bundle. Refused with one line naming the bundle and
    the file (``UserError``): a file whose sha256 differs, a missing or added file, a manifest whose id
    does not match its content, an archive member that is a link, absolute or climbs out with ``..``."""
    source = Path(path)
    if source.is_dir():
        return _verified(source, source, extracted=False)
    if source.is_file() and source.name.endswith((".tar.gz", ".tgz")):
        tmp = Path(tempfile.mkdtemp(prefix="edgefarm-bundle-"))
        try:
            folder = tmp / "bundle"
            _extract(source, folder)
            return _verified(source, folder, extracted=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    if not source.exists():
        raise UserError(f"bundle {source}: no such folder or file")
    raise UserError(f"bundle {source}: not a bundle folder or .tar.gz file (made by `edgefarm bundle`)")


def _extract(archive: Path, folder: Path) -> None:
    """Extract plain files and folders only, each name checked before anything is written."""
    try:
        with tarfile.open(archive, "r:gz") as tar:
            members = tar.getmembers()
            for m in members:
                parts = PurePosixPath(m.name).parts
                if m.name.startswith("/") or ".." in parts or not parts or "\\" in m.name:
                    raise UserError(f"bundle {archive}: member {m.name!r} is outside the bundle (absolute or '..')")
                if not (m.isfile() or m.isdir()):
                    raise UserError(f"bundle {archive}: member {m.name!r} is not a plain file or folder "
                                    f"(a link or device); refused")
            folder.mkdir(parents=True)
            for m in members:
                target = folder.joinpath(*PurePosixPath(m.name).parts)
                if m.isdir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                src = tar.extractfile(m)
                assert src is not None  # a regular member always has data
                with open(target, "wb") as out:
                    shutil.copyfileobj(src, out)
                target.chmod(0o755 if m.mode & 0o111 else 0o644)
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise UserError(f"bundle {archive}: not a readable .tar.gz: {exc}") from None


def _verified(source: Path, folder: Path, extracted: bool) -> OpenBundle:
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        raise UserError(f"bundle {source}: {MANIFEST} is missing: not a bundle made by `edgefarm bundle`")
    try:
        raw = json.loads(manifest_path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise UserError(f"bundle {source}: {MANIFEST} is not JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise UserError(f"bundle {source}: {MANIFEST} must hold a JSON object")
    try:
        manifest = Manifest.model_validate(raw)
    except ValidationError as exc:
        raise UserError(format_validation_error(f"bundle {source}: {MANIFEST}", exc, Manifest, raw)) from None
    actual = bundle_id_of(raw)
    if manifest.bundle_id != actual:
        raise UserError(f"bundle {source}: {MANIFEST}: bundle_id {manifest.bundle_id} does not match its content "
                        f"({actual}); the manifest was edited after the bundle was built")
    present = _files(folder, partial(_runtime_written, manifest))
    for rel in sorted(manifest.files):
        if rel not in present:
            raise UserError(f"bundle {source}: {rel} is missing (the manifest lists it)")
    for rel in present:
        if rel not in manifest.files:
            raise UserError(f"bundle {source}: {rel} was added: the manifest does not list it")
        if sha256_file(folder / rel) != manifest.files[rel]:
            raise UserError(f"bundle {source}: {rel}: sha256 differs from the manifest's; "
                            "the file was edited after the bundle was built")
    return OpenBundle(source, folder, manifest, raw, extracted)


def _runtime_written(manifest: Manifest, rel: str) -> bool:
    """A folder the runtime writes into a bundle it runs (as agent/runtime/bundle.py tolerates it too): a
    packed artifact's unpack folder ``<file>.d`` (and its in-progress ``<file>.d.*.part``), a user's task
    module's ``__pycache__``. A bundle a user ran ``predict`` in is still the bundle that was built."""
    for m in manifest.models:
        art = m.artifact.file
        if rel == art + ".d" or (rel.startswith(art + ".d.") and rel.endswith(".part")):
            return True
        module = m.task_params.get("module_path") if m.task == "custom" else None
        if module and rel == posixpath.join(posixpath.dirname(str(module)), "__pycache__"):
            return True
    return False


# --- the archive form --------------------------------------------------------------------------


def write_archive(folder: Path, out: Path) -> None:
    """``folder`` as a deterministic .tar.gz at ``out``: members sorted, mtime 0, owner 0/0, modes
    0644/0755, gzip header time 0; so the same bundle gives the same bytes."""
    import gzip

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for rel in tree(folder):
            path = folder / rel
            info = tarfile.TarInfo(rel)
            info.mtime = 0
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            if path.is_dir():
                info.type = tarfile.DIRTYPE
                info.mode = 0o755
                tar.addfile(info)
            else:
                info.size = path.stat().st_size
                info.mode = 0o755 if path.stat().st_mode & 0o111 else 0o644
                with open(path, "rb") as fh:
                    tar.addfile(info, fh)
    with open(out, "wb") as raw_out, gzip.GzipFile(filename="", mode="wb", fileobj=raw_out, mtime=0) as gz:
        gz.write(buf.getvalue())


def tree(folder: Path) -> list[str]:
    """Every folder and file under ``folder``, relative, sorted (a folder before what it holds)."""
    out = []
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in dirnames + filenames:
            out.append((Path(dirpath) / name).relative_to(folder).as_posix())
    return sorted(out)
