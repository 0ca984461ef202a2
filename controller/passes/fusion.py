"""Which fusions an offline graph optimisation applied, read from the graphs before and after.

ONNX Runtime's optimizer says nothing about what it did; the two graphs do. A fused node keeps
its name and takes over the output of the node it absorbed (Conv ``c`` fused with
BatchNormalization ``bn``: ``c`` now produces ``bn``'s output), a folded node's output is gone
(or became an initializer), an eliminated node's consumers read its input instead. Every
removed node lands in exactly one class, so the counts of ``applied`` add up to the change in
node count; whatever no rule explains is listed as ``other:<op>``, never dropped.

``engine_fusions`` asks OpenVINO what it fuses when it loads a model: the layers its CPU
plugin executes and the original nodes each one covers.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Short names for the fused op in a pattern ("conv+bn", not "conv+batchnormalization").
_SHORT = {"BatchNormalization": "bn"}
# A removed node whose consumer now reads its input: a fusion for these pairs (the consumer
# does the removed node's work), a no-op elimination for any other pair.
_INTO_NEXT = {("Relu", "Clip"), ("Pad", "Conv"), ("Pad", "AveragePool"), ("Pad", "MaxPool")}
_ELIMINATED = {"Identity": "identity-elimination", "Dropout": "dropout-elimination"}
# Activations an engine (or ORT's extended level, as FusedConv) runs inside a convolution.
_ACTIVATIONS = {"Relu", "Clip", "Sigmoid", "HardSigmoid", "LeakyRelu", "Tanh", "HardSwish", "Elu"}
_CONVS = {"Conv", "ConvTranspose"}


@dataclass
class _Graph:
    nodes: list[Any]  # onnx NodeProto, in the file's (topological) order
    producer: dict[str, int]  # tensor name -> index of the node producing it
    consumers: dict[str, list[int]]
    initializers: set[str]
    static: set[str]  # tensors whose shape is fully known (what folding a Shape node needs)

    @classmethod
    def load(cls, path: Path) -> "_Graph":
        import onnx

        graph = onnx.load(str(path), load_external_data=False).graph
        producer: dict[str, int] = {}
        consumers: dict[str, list[int]] = {}
        for i, node in enumerate(graph.node):
            for name in node.output:
                producer[name] = i
            for name in node.input:
                if name:
                    consumers.setdefault(name, []).append(i)
        static = {v.name for v in (*graph.input, *graph.value_info, *graph.output)
                  if v.type.tensor_type.HasField("shape")
                  and all(d.HasField("dim_value") and d.dim_value > 0 for d in v.type.tensor_type.shape.dim)}
        return cls(list(graph.node), producer, consumers, {t.name for t in graph.initializer}, static)

    def constant(self, name: str) -> bool:
        """An initializer or a Constant node's output."""
        if name in self.initializers:
            return True
        i = self.producer.get(name)
        return i is not None and self.nodes[i].op_type == "Constant"


def fusions(before: Path, after: Path) -> dict[str, Any]:
    """Name the fusions, foldings and eliminations that turned ``before`` into ``after``.

    Returns ``applied`` (pattern -> instances: "conv+bn", "conv+add(bias)", "conv+mul",
    "relu+clip", "matmul+add->gemm", "constant-folding" (nodes folded), "constant-to-initializer"
    (Constant nodes), "identity-elimination", "common-subexpression", "no-op-elimination:<op>";
    a node created without replacing any counts -1 as "added:<op>"), ``left_for_engine``
    (patterns still separate ops in ``after`` that an engine fuses at load time),
    ``nodes_before``, ``nodes_after``, ``ops`` (op counts of ``after``), ``ops_removed`` and
    ``ops_added`` (net per op type).
    """
    b, a = _Graph.load(before), _Graph.load(after)
    match = _match(b, a)  # before index -> after index, for nodes that survived
    matched_after = set(match.values())
    new_after = [j for j in range(len(a.nodes)) if j not in matched_after]

    applied: Counter[str] = Counter()
    accounted: set[int] = set()
    # New nodes first (MatMul+Add -> Gemm): the removed chain each one replaces is one fusion.
    for j in new_after:
        chain = _replaced_chain(a.nodes[j], b, match)
        if chain:
            accounted.update(chain)
            ops = "+".join(b.nodes[i].op_type.lower() for i in sorted(chain))
            applied[f"{ops}->{a.nodes[j].op_type.lower()}"] += 1
        else:  # none at the basic level; it must not vanish from the sums
            applied[f"added:{a.nodes[j].op_type}"] -= 1
    folded: set[str] = set()  # tensors computable from constants alone, in `before`
    alias: dict[str, str] = {}  # output of a node merged away -> output of its surviving twin
    kinds: dict[int, str] = {}
    for i in range(len(b.nodes)):  # file order is topological: producers are classified first
        if i in match or i in accounted:
            continue
        kinds[i] = _classify(i, b, a, match, folded, alias)
        if kinds[i] == "constant-folding":
            folded.update(b.nodes[i].output)
    # Folding from a partly known shape (Shape -> Cast -> Slice of the static dims -> Concat):
    # only the last node's output survives, as an initializer. Walk back from it.
    for i in sorted(kinds, reverse=True):
        users = [k for out in b.nodes[i].output for k in b.consumers.get(out, [])]
        if kinds[i].startswith("other:") and users and all(kinds.get(k) == "constant-folding" for k in users):
            kinds[i] = "constant-folding"
    applied.update(kinds.values())

    ops_b = Counter(n.op_type for n in b.nodes)
    ops_a = Counter(n.op_type for n in a.nodes)
    return {
        "applied": dict(applied.most_common()),
        "left_for_engine": _left_for_engine(a),
        "nodes_before": len(b.nodes),
        "nodes_after": len(a.nodes),
        "ops": dict(ops_a),
        "ops_removed": {op: n - ops_a.get(op, 0) for op, n in ops_b.items() if n > ops_a.get(op, 0)},
        "ops_added": {op: n - ops_b.get(op, 0) for op, n in ops_a.items() if n > ops_b.get(op, 0)},
    }


def _match(b: _Graph, a: _Graph) -> dict[int, int]:
    """Pair the nodes that survived: by unique name, else by op and first output, else by op
    and data input (a fused, unnamed Conv has a new output but still reads the same tensor)."""
    match: dict[int, int] = {}
    taken: set[int] = set()

    def unique(keys: list[Any]) -> dict[Any, int]:
        seen = Counter(keys)
        return {k: i for i, k in enumerate(keys) if k is not None and seen[k] == 1}

    for key in (lambda n: (n.op_type, n.name) if n.name else None,
                lambda n: (n.op_type, n.output[0]) if n.output else None,
                lambda n: (n.op_type, n.input[0]) if n.input and n.input[0] else None):
        in_a = unique([key(n) if j not in taken else None for j, n in enumerate(a.nodes)])
        in_b = unique([key(n) if i not in match else None for i, n in enumerate(b.nodes)])
        for k, i in in_b.items():
            j = in_a.get(k)
            if j is not None and j not in taken:
                match[i] = j
                taken.add(j)
    return match


def _replaced_chain(new: Any, b: _Graph, match: dict[int, int]) -> set[int]:
    """The removed nodes of ``before`` a new node stands for: the one whose output it took over
    and the removed producers of that one's non-constant inputs (MatMul of MatMul+Add)."""
    chain = {b.producer[o] for o in new.output if o in b.producer and b.producer[o] not in match}
    for i in list(chain):
        for name in b.nodes[i].input:
            k = b.producer.get(name)
            if k is not None and k not in match and not b.constant(name):
                chain.add(k)
    return chain


def _classify(i: int, b: _Graph, a: _Graph, match: dict[int, int], folded: set[str],
              alias: dict[str, str]) -> str:
    node = b.nodes[i]
    op = node.op_type
    if op == "Constant":
        return "constant-to-initializer"
    if op in _ELIMINATED:
        alias.update(zip(node.output[:1], node.input[:1]))  # consumers now read its input
        return _ELIMINATED[op]

    # Fused into a predecessor: a surviving node of `after` now produces this node's output.
    back = {j: k for k, j in match.items()}
    for out in node.output:
        j = a.producer.get(out)
        if j is not None and j in back:
            return _pattern(b.nodes[back[j]].op_type, node, b, folded)

    if any(out in a.initializers for out in node.output) or all(
            not n or b.constant(n) or n in folded for n in node.input):
        return "constant-folding"

    # A duplicate of a surviving node (common subexpression elimination). Merges cascade
    # (two Shapes, then the two Casts of them), so inputs are compared through the merges.
    sig = _signature(node, alias)
    twin = next((k for k in match if _signature(b.nodes[k], alias) == sig), None)
    if twin is not None:
        alias.update(zip(node.output, b.nodes[twin].output))
        return "common-subexpression"

    # Shape only needs the input's shape: folded when that is fully known.
    if op == "Shape" and node.input[0] in b.static:
        return "constant-folding"

    # Absorbed by its consumer, which now reads this node's input (or what that became).
    users = b.consumers.get(node.output[0], []) if node.output else []
    if len(users) == 1 and users[0] in match and node.input:
        user = b.nodes[users[0]]
        if _resolve(node.input[0], alias, b, a, match) in a.nodes[match[users[0]]].input:
            alias[node.output[0]] = node.input[0]
            if (op, user.op_type) in _INTO_NEXT:
                return f"{op.lower()}+{user.op_type.lower()}"
            return f"no-op-elimination:{op}"
    return f"other:{op}"


def _resolve(name: str, alias: dict[str, str], b: _Graph, a: _Graph, match: dict[int, int]) -> str:
    """The tensor of `after` that stands for ``name`` of `before`: through eliminated nodes, and
    to the output a fused producer now has (Conv fused with Mul produces the Mul's output)."""
    seen = set()
    while name in alias and name not in seen:
        seen.add(name)
        name = alias[name]
    k = b.producer.get(name)
    if k is not None and k in match and name not in a.producer:
        outputs = a.nodes[match[k]].output
        if len(outputs) == 1:
            return outputs[0]
    return name


def _pattern(host: str, node: Any, b: _Graph, folded: set[str]) -> str:
    """"conv+bn", "conv+add(bias)", "conv+mul", "div+mul"... for ``node`` fused into ``host``."""
    name = f"{host.lower()}+{_SHORT.get(node.op_type, node.op_type.lower())}"
    if host == "Conv" and node.op_type == "Add" and any(b.constant(n) or n in folded for n in node.input):
        name += "(bias)"
    return name


def _signature(node: Any, alias: dict[str, str]) -> tuple[Any, ...]:
    return (node.op_type, node.domain, tuple(alias.get(n, n) for n in node.input),
            tuple(sorted(x.SerializeToString() for x in node.attribute)))


def _left_for_engine(g: _Graph) -> dict[str, int]:
    """Patterns the basic level leaves as separate ops (ORT's extended level turns some into
    FusedConv; OpenVINO and most engines fuse them at load time)."""
    found: Counter[str] = Counter()
    for node in g.nodes:
        if node.op_type in _CONVS and node.output:
            users = [g.nodes[k] for k in g.consumers.get(node.output[0], [])]
            conv = node.op_type.lower()
            if _is_hardswish(node.output[0], g):
                found[f"{conv}+hardswish(decomposed)"] += 1
            elif len(users) == 1:
                user = users[0]
                if user.op_type in _ACTIVATIONS or user.op_type == "BatchNormalization":
                    found[f"{conv}+{_SHORT.get(user.op_type, user.op_type.lower())}"] += 1
                elif user.op_type in ("Add", "Mul"):
                    other = [n for n in user.input if n != node.output[0]]
                    if other and all(g.constant(n) for n in other):
                        # ORT folds a constant only as Mul/Add's second input, scalar or
                        # per-channel; PP-LCNetV3's learnable scale is Mul(w of shape [1], x).
                        found[f"{conv}+{user.op_type.lower()}(const, not folded)"] += 1
                    elif user.op_type == "Add":
                        after = [g.nodes[k].op_type for k in g.consumers.get(user.output[0], [])]
                        found[f"{conv}+add+relu" if after == ["Relu"] else f"{conv}+add(residual)"] += 1
        if node.op_type == "Mul" and _is_hardswish_mul(node, g):
            found["hardswish(decomposed: add+clip+mul+div)"] += 1
    return dict(found.most_common())


def _is_hardswish_mul(mul: Any, g: _Graph) -> bool:
    """x * Clip(x + 3, 0, 6) (then / 6): HardSwish as exporters spell it in opset < 14."""
    if len(mul.input) != 2:
        return False
    for x, other in (mul.input, mul.input[::-1]):
        k = g.producer.get(other)
        if k is None or g.nodes[k].op_type != "Clip":
            continue
        k = g.producer.get(g.nodes[k].input[0])
        if k is not None and g.nodes[k].op_type == "Add" and x in g.nodes[k].input:
            return True
    return False


def _is_hardswish(tensor: str, g: _Graph) -> bool:
    return any(g.nodes[k].op_type == "Mul" and _is_hardswish_mul(g.nodes[k], g)
               for k in g.consumers.get(tensor, []))


# --- what an engine fuses at load time -------------------------------------------------------

_INTERNAL_NAME = re.compile(r"^([A-Za-z]+)_\d+$")  # OpenVINO's own nodes: "HSwish_7141"


def engine_fusions(model: Path, *, precision: str = "f32") -> dict[str, Any]:
    """OpenVINO CPU's executed layers for ``model`` and the original ops each one covers.

    The CPU plugin's runtime model gives, for every layer, its type ("Convolution") and the
    nodes it absorbed (``originalLayersNames``). Layers fed only by constants (weight
    reshapes) are computed once at load time and not counted. ONNX node names map back to op
    types; names OpenVINO made itself ("HSwish_7141"; "Multiply_10121": a convolution whose
    weights absorbed a Mul) keep their OpenVINO type.
    """
    import onnx
    import openvino as ov

    graph = onnx.load(str(model), load_external_data=False).graph
    op_of: dict[str, str] = {}
    for node in graph.node:
        for name in node.output:
            op_of.setdefault(name, node.op_type)
        if node.name:
            op_of[node.name] = node.op_type
    compiled = ov.Core().compile_model(str(model), "CPU", {"INFERENCE_NUM_THREADS": 1,
                                                            "INFERENCE_PRECISION_HINT": precision})
    layers: Counter[str] = Counter()
    fused: Counter[str] = Counter()
    reorders = 0
    constant: set[str] = set()
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        kind = str(info["layerType"].astype(str))
        sources = [v.get_node().get_friendly_name() for v in op.input_values()]
        if kind == "Const" or (sources and all(n in constant for n in sources)):
            constant.add(op.get_friendly_name())
            continue
        if kind in ("Input", "Output"):
            continue
        if kind == "Reorder":  # a layout or precision conversion OpenVINO inserted
            reorders += 1
            continue
        layers[kind] += 1
        ops: list[tuple[str, str]] = []  # (original name, op type)
        for name in (n for n in str(info["originalLayersNames"].astype(str)).split(",") if n):
            # "X/WithoutBiases" is OpenVINO splitting X's bias off and merging it back: X itself.
            base = name.split("/", 1)[0] if name.split("/", 1)[0] in op_of else name
            if base in op_of:
                label = op_of[base]
            else:
                m = _INTERNAL_NAME.match(base)
                label = m.group(1) if m else base
            if all(base != seen for seen, _ in ops):
                ops.append((base, label))
        if len(ops) > 1:
            fused[f"{kind}[{'+'.join(label.lower() for _, label in ops)}]"] += 1
    return {"executed_layers": sum(layers.values()), "reorders": reorders, "layer_types": dict(layers.most_common()),
            "fused_layers": dict(fused.most_common()), "precision": precision}
