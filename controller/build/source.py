"""The source model: check the user's ONNX file and make it ready for every variant.

paddle2onnx and many exporters leave dynamic dimensions and old opsets behind. Fixing the
shapes (keeping a dynamic batch dimension, so throughput can be swept) and upgrading the opset
to one that per-channel int8 needs is the controller's job, never the user's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Iterator

from agent.protocol import sha256_file
from controller.errors import ModelError

MIN_OPSET = 13  # per-channel QuantizeLinear/DequantizeLinear need opset 13

_ONNX_DTYPES = {1: "float32", 10: "float16", 7: "int64", 6: "int32", 2: "uint8"}


@dataclass(frozen=True)
class ModelInput:
    name: str
    shape: tuple[int, ...]  # fixed, batch 1
    dtype: str


@dataclass(frozen=True)
class Prepared:
    path: Path
    sha256: str
    inputs: tuple[ModelInput, ...]
    outputs: tuple[str, ...]
    opset: int


def load_checked(path: Path, label: str):
    """Load and check an ONNX file, turning every way it can be wrong into one clear line.

    External data is checked before a byte of it is read: every tensor's ``location`` must be a
    relative path to a regular file inside the model's folder (no ``..``, no absolute path, no
    symbolic link), and hold the bytes its offset, length and shape say. A file outside the
    model's folder is never opened."""
    import onnx

    if path.is_dir():
        raise ModelError(f"{label}: {path} is a folder, not an ONNX model file")
    if not path.is_file():
        raise ModelError(f"{label}: model file not found: {path}")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except PermissionError:
        raise ModelError(f"{label}: {path} cannot be read: permission denied") from None
    except OSError as exc:
        raise ModelError(f"{label}: {path} cannot be read: {exc.strerror or _first_line(exc)}") from None
    except Exception as exc:  # noqa: BLE001 - protobuf's DecodeError and its kin: the file is not ONNX
        raise ModelError(f"{label}: {path} is not a readable ONNX model ({_first_line(exc)})") from None
    if not model.graph.node:
        raise ModelError(f"{label}: {path} is not an ONNX model (no graph nodes)")
    external = [t for t in _tensors(model) if t.data_location == onnx.TensorProto.EXTERNAL]
    for tensor in external:
        _check_external(tensor, path, label)
    if external:
        from onnx.external_data_helper import load_external_data_for_model

        try:
            load_external_data_for_model(model, str(path.parent))
        except Exception as exc:  # noqa: BLE001 - onnx's own checks (the same rules) said no
            raise ModelError(f"{label}: {path}: its external data cannot be read: {_first_line(exc)}") from None
    try:
        onnx.checker.check_model(model)
    except (onnx.checker.ValidationError, ValueError, RuntimeError) as exc:
        raise ModelError(f"{label}: {path} is a corrupt ONNX model: {_first_line(exc)}") from None
    return model


# Bytes per element of the tensor types whose external data size follows from their shape.
_ELEMENT_BYTES = {1: 4, 2: 1, 3: 1, 4: 2, 5: 2, 6: 4, 7: 8, 9: 1, 10: 2, 11: 8, 12: 4, 13: 8, 16: 2}


def _tensors(model) -> Iterator:  # onnx.TensorProto
    """Every tensor of a model that can hold data: initializers and attribute tensors, in the
    main graph, its subgraphs and the model's functions."""
    def graph_tensors(graph) -> Iterator:
        yield from graph.initializer
        for sparse in graph.sparse_initializer:
            yield sparse.values
            yield sparse.indices
        yield from node_tensors(graph.node)

    def node_tensors(nodes) -> Iterator:
        for node in nodes:
            for attr in node.attribute:
                if attr.HasField("t"):
                    yield attr.t
                yield from attr.tensors
                if attr.HasField("g"):
                    yield from graph_tensors(attr.g)
                for graph in attr.graphs:
                    yield from graph_tensors(graph)

    yield from graph_tensors(model.graph)
    for function in model.functions:
        yield from node_tensors(function.node)


def _check_external(tensor, path: Path, label: str) -> None:
    """One external tensor's data: a regular file inside the model's folder, large enough."""
    entries = {e.key: e.value for e in tensor.external_data}
    location = entries.get("location", "")
    where = f"{label}: {path}: tensor {tensor.name!r}: external data"
    if not location:
        raise ModelError(f"{where} has no location")
    if PurePosixPath(location).is_absolute() or PureWindowsPath(location).is_absolute():
        raise ModelError(f"{where} location {location!r} is an absolute path; external data must lie in the "
                         f"model's folder {path.parent}, named relative to it")
    if ".." in PurePosixPath(location.replace("\\", "/")).parts:
        raise ModelError(f"{where} location {location!r} points outside the model's folder {path.parent}")
    folder = path.parent.resolve()
    data = path.parent / location
    if data.is_symlink():
        raise ModelError(f"{where} location {location!r} is a symbolic link; external data must be a regular "
                         f"file in the model's folder {path.parent}")
    if not data.resolve().is_relative_to(folder):
        raise ModelError(f"{where} location {location!r} leads outside the model's folder {path.parent} "
                         "(through a symbolic link)")
    if not data.exists():
        raise ModelError(f"{where} file {location!r} is missing (looked for {data})")
    if not data.is_file():
        raise ModelError(f"{where} location {location!r} is not a regular file")
    try:
        offset, length = int(entries.get("offset", 0)), int(entries["length"]) if "length" in entries else None
    except ValueError:
        raise ModelError(f"{where} {location!r}: offset or length is not a whole number") from None
    size = data.stat().st_size
    if offset < 0 or (length is not None and length < 0):
        raise ModelError(f"{where} {location!r}: a negative offset or length ({offset}, {length})")
    available = size - offset
    per = _ELEMENT_BYTES.get(tensor.data_type)
    needed = per * math.prod(tensor.dims) if per is not None else None
    if length is not None and needed is not None and length != needed:
        raise ModelError(f"{where} {location!r}: length {length} bytes, but its shape {list(tensor.dims)} needs "
                         f"{needed}")
    wanted = length if length is not None else needed
    if offset > size or (wanted is not None and wanted > available):
        raise ModelError(f"{where} {location!r} is {size} bytes: too short for offset {offset} and "
                         f"{wanted} bytes (truncated?)")


def prepare(path: Path, label: str, shapes: dict[str, list[int]], out: Path) -> Prepared:
    """Fix input shapes, upgrade the opset, check, and save to ``out``."""
    import onnx
    from onnx import shape_inference, version_converter

    model = load_checked(path, label)
    initializers = {i.name for i in model.graph.initializer}
    graph_inputs = [i for i in model.graph.input if i.name not in initializers]
    names = [i.name for i in graph_inputs]
    for name in shapes:
        if name not in names:
            raise ModelError(f"{label}: input {name!r} is not in the model; its inputs are {names}")

    inputs = []
    for inp in graph_inputs:
        dims = inp.type.tensor_type.shape.dim
        given = shapes.get(inp.name)
        current = [d.dim_value if d.dim_value > 0 else None for d in dims]
        if given is None:
            if any(d is None for d in current[1:]) or not current:
                shown = "x".join(str(d) if d else "?" for d in current)
                raise ModelError(
                    f"{label}: input {inp.name!r} has dynamic dims {shown}; give its shape, "
                    f"e.g. --input {inp.name}=1x{'x'.join(str(d or 224) for d in current[1:])}"
                )
            given = [1] + [d for d in current[1:] if d is not None]  # none is None: checked above
        if len(given) != len(current):
            raise ModelError(f"{label}: input {inp.name!r} has rank {len(current)}, the shape given has {len(given)} ({given})")
        for axis, (want, have) in enumerate(zip(given, current)):
            if axis > 0 and have is not None and want != have:
                raise ModelError(f"{label}: input {inp.name!r} dim {axis} is {have} in the model, not {want}")
        dtype = _ONNX_DTYPES.get(inp.type.tensor_type.elem_type)
        if dtype is None:
            raise ModelError(f"{label}: input {inp.name!r} has an unsupported element type {inp.type.tensor_type.elem_type}")
        # Batch stays symbolic when the exporter left it dynamic: the agent sweeps batch sizes.
        for axis, d in enumerate(dims):
            if axis == 0 and current[0] is None:
                d.Clear()
                d.dim_param = "batch"
            else:
                d.Clear()
                d.dim_value = given[axis]
        inputs.append(ModelInput(inp.name, (1, *given[1:]), dtype))

    # Stale intermediate shapes from the exporter would fight the new fixed ones.
    del model.graph.value_info[:]
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < MIN_OPSET:
        try:
            model = version_converter.convert_version(model, MIN_OPSET)
            opset = MIN_OPSET
        except Exception as exc:  # the converter raises bare RuntimeErrors from C++
            raise ModelError(f"{label}: cannot upgrade opset {opset} to {MIN_OPSET}: {_first_line(exc)}") from None
    try:
        model = shape_inference.infer_shapes(model)
        onnx.checker.check_model(model)
    except Exception as exc:  # noqa: BLE001 - the shapes given contradict the graph
        raise ModelError(f"{label}: with the shapes given, {path} fails ONNX's checks: {_first_line(exc)}") from None
    out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(out))
    return Prepared(out, sha256_file(out), tuple(inputs), tuple(o.name for o in model.graph.output), opset)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__
