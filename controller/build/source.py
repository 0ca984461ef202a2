"""The source model: check the user's ONNX file and make it ready for every variant.

paddle2onnx and many exporters leave dynamic dimensions and old opsets behind. Fixing the
shapes (keeping a dynamic batch dimension, so throughput can be swept) and upgrading the opset
to one that per-channel int8 needs is the controller's job, never the user's.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

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
    """Load and check an ONNX file, turning every way it can be wrong into one clear line."""
    import onnx
    from google.protobuf.message import DecodeError

    if not path.is_file():
        raise ModelError(f"{label}: model file not found: {path}")
    try:
        model = onnx.load(str(path))
    except (DecodeError, ValueError, RuntimeError) as exc:
        raise ModelError(f"{label}: {path} is not a readable ONNX model ({_first_line(exc)})") from None
    if not model.graph.node:
        raise ModelError(f"{label}: {path} is not an ONNX model (no graph nodes)")
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        raise ModelError(f"{label}: {path} is a corrupt ONNX model: {_first_line(exc)}") from None
    return model


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
    model = shape_inference.infer_shapes(model)
    onnx.checker.check_model(model)
    out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(out))
    return Prepared(out, sha256_file(out), tuple(inputs), tuple(o.name for o in model.graph.output), opset)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__
