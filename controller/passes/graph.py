"""Small ONNX helpers the passes share: op counts for records, node attributes, inferred shapes."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any


def op_counts(path: Path) -> dict[str, int]:
    """How many nodes of each op type the model at ``path`` has (the ``ops`` of a pass's record)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return dict(Counter(n.op_type for n in model.graph.node))


def attributes(node: Any) -> dict[str, Any]:
    """A node's attributes as Python values (strings decoded)."""
    import onnx

    out = {}
    for a in node.attribute:
        v = onnx.helper.get_attribute_value(a)
        out[a.name] = v.decode() if isinstance(v, bytes) else v
    return out


def inferred_shapes(model: Any) -> dict[str, list[int | None]]:
    """Every tensor's shape after ONNX shape inference (symbolic dimensions as None)."""
    import onnx

    g = onnx.shape_inference.infer_shapes(model).graph
    out: dict[str, list[int | None]] = {}
    for v in list(g.input) + list(g.value_info) + list(g.output):
        t = v.type.tensor_type
        if t.HasField("shape"):
            out[v.name] = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
    for init in g.initializer:
        out[init.name] = list(init.dims)
    return out
