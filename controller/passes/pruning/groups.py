"""Channel groups: which channels of an ONNX model must be pruned together, and what cuts with them.

A channel made by a Conv, ConvTranspose, Gemm or MatMul lives on through channel-wise and
elementwise ops and depthwise convs; union-find over tensors gathers every producer, depthwise
conv and consumer it reaches into one :class:`Group`, with every initializer to cut and the
reason, when there is one, why the group cannot be cut (see the package's docstring).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from controller.passes.graph import attributes, inferred_shapes

# Ops that keep every channel where it is and never mix channels (first input is the data).
CHANNELWISE = {
    "Relu", "LeakyRelu", "Clip", "HardSigmoid", "HardSwish", "Sigmoid", "Tanh", "Elu", "Selu", "Softplus",
    "Softsign", "Erf", "Exp", "Log", "Abs", "Neg", "Sqrt", "Reciprocal", "Floor", "Ceil", "Round", "Identity",
    "Dropout", "Cast", "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "LpPool", "Mish", "Gelu",
}
# Elementwise ops of any arity, numpy broadcasting.
ELEMENTWISE = {"Add", "Sub", "Mul", "Div", "Max", "Min", "Sum", "Mean", "Pow", "PRelu"}


@dataclass
class Group:
    """Channels that must be pruned together, and every initializer cut along with them."""

    id: int
    channels: int
    producers: list[str] = field(default_factory=list)  # node names
    depthwise: list[str] = field(default_factory=list)  # node names whose group attribute follows
    consumers: list[str] = field(default_factory=list)
    slices: list[tuple[str, int]] = field(default_factory=list)  # (initializer, axis)
    consumer_slices: list[tuple[str, int]] = field(default_factory=list)  # the part of slices consumers read
    reads: list[tuple[str, str, int]] = field(default_factory=list)  # per consumer: (input, weight, axis)
    norms: list[tuple[str, int]] = field(default_factory=list)  # producer weights (initializer, out axis)
    shape_entries: list[tuple[str, int]] = field(default_factory=list)  # (shape initializer, index) = channels
    blocked: list[str] = field(default_factory=list)

    @property
    def prunable(self) -> bool:
        return not self.blocked and self.channels > 1

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"group": self.id, "channels": self.channels, "producers": self.producers,
                               "depthwise": self.depthwise, "consumers": self.consumers}
        if self.blocked:
            out["skipped"] = sorted(set(self.blocked))[:4]
        return out


class _Union:
    def __init__(self) -> None:
        self.parent: dict[str, str] = {}

    def find(self, x: str) -> str:
        self.parent.setdefault(x, x)
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def join(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[rb] = ra


def find_groups(model: Any) -> list[Group]:
    """The channel groups of ``model`` (fixed shapes but for the batch), prunable or not.

    Unnamed nodes get a name (op#index) in place: groups and reports refer to nodes by name."""
    from onnx import numpy_helper

    g = model.graph
    inits = {i.name: i for i in g.initializer}
    consts = set(inits) | {o for n in g.node if n.op_type == "Constant" for o in n.output}
    shapes = inferred_shapes(model)
    uses: dict[str, int] = {}
    for n in g.node:
        for i in n.input:
            uses[i] = uses.get(i, 0) + 1

    uf = _Union()
    rec: dict[str, dict[str, list]] = {}

    def note(tensor: str, kind: str, item: Any) -> None:
        rec.setdefault(tensor, {}).setdefault(kind, []).append(item)

    def block(tensor: str, why: str) -> None:
        if tensor and tensor not in consts:
            note(tensor, "blocked", why)

    def channels(tensor: str) -> int | None:
        s = shapes.get(tensor)
        return s[1] if s and len(s) >= 2 else None

    def weight(name: str, node: Any, why: str) -> bool:
        if name not in inits:
            for t in list(node.input) + list(node.output):
                block(t, f"{node.op_type} {node.name}: {why} is not a constant initializer")
            return False
        return True

    for index, n in enumerate(g.node):
        if not n.name:  # unnamed nodes (hand-built graphs) are named in reports by op and index
            n.name = f"{n.op_type}#{index}"
        op, a = n.op_type, attributes(n)
        ins = list(n.input)
        out = n.output[0] if n.output else ""
        if op == "Constant":
            continue
        if op == "Conv":
            if not weight(ins[1], n, "weight"):
                continue
            w = inits[ins[1]].dims
            group = int(a.get("group", 1))
            bias = [(ins[2], 0)] if len(ins) > 2 and ins[2] else []
            if group == 1:
                note(out, "producer", (n.name, [(ins[1], 0), *bias], (ins[1], 0)))
                note(ins[0], "consumer", (n.name, [(ins[1], 1)], ins[0]))
            elif w[1] == 1 and w[0] == group and channels(ins[0]) == group:
                uf.join(ins[0], out)  # depthwise: channel i in, channel i out
                note(out, "depthwise", (n.name, [(ins[1], 0), *bias]))
            else:
                block(ins[0], f"grouped Conv {n.name} (group {group})")
                block(out, f"grouped Conv {n.name} (group {group})")
        elif op == "ConvTranspose":
            if not weight(ins[1], n, "weight"):
                continue
            if int(a.get("group", 1)) != 1:
                block(ins[0], f"grouped ConvTranspose {n.name}")
                block(out, f"grouped ConvTranspose {n.name}")
                continue
            bias = [(ins[2], 0)] if len(ins) > 2 and ins[2] else []
            note(out, "producer", (n.name, [(ins[1], 1), *bias], (ins[1], 1)))
            note(ins[0], "consumer", (n.name, [(ins[1], 0)], ins[0]))
        elif op in ("Gemm", "MatMul"):
            rank = len(shapes.get(ins[0]) or [])
            if op == "Gemm" and a.get("transA", 0) or rank != 2:
                block(ins[0], f"{op} {n.name} on a rank-{rank} or transposed input")
                block(out, f"{op} {n.name} on a rank-{rank} or transposed input")
                continue
            if not weight(ins[1], n, "weight") or len(inits[ins[1]].dims) != 2:
                continue
            out_axis = 0 if a.get("transB", 0) else 1
            cuts = [(ins[1], out_axis)]
            if op == "Gemm" and len(ins) > 2 and ins[2]:
                if ins[2] not in inits:
                    block(out, f"Gemm {n.name}: bias is not a constant")
                else:
                    bias_dims = list(inits[ins[2]].dims)
                    if bias_dims and bias_dims[-1] > 1:
                        cuts.append((ins[2], len(bias_dims) - 1))
            note(out, "producer", (n.name, cuts, (ins[1], out_axis)))
            note(ins[0], "consumer", (n.name, [(ins[1], 1 - out_axis)], ins[0]))
        elif op in CHANNELWISE:
            uf.join(ins[0], out)
            for extra in ins[1:]:
                if extra and extra not in consts:
                    block(out, f"{op} {n.name} takes a computed {extra!r}")
        elif op == "BatchNormalization" or op == "InstanceNormalization":
            uf.join(ins[0], out)
            for p in ins[1:]:
                if p in inits:
                    note(out, "slice", (p, 0))
                else:
                    block(out, f"{op} {n.name}: parameter {p!r} is not a constant")
        elif op in ELEMENTWISE:
            rank = len(shapes.get(out) or [])
            c = channels(out)
            if rank < 2 or c is None:
                for t in ins + [out]:
                    block(t, f"{op} {n.name} of unknown shape")
                continue
            for t in ins:
                s = shapes.get(t)
                if t in consts or not t:
                    if not t or s is None:
                        continue
                    pos = 1 - (rank - len(s))
                    if pos < 0 or s[pos] == 1:
                        continue  # broadcast over channels: nothing to cut
                    if t in inits and s[pos] == c:
                        note(out, "slice", (t, pos))
                    else:
                        block(out, f"{op} {n.name}: constant {t!r} of shape {s}")
                elif s is not None and len(s) == rank and s[1] == c:
                    uf.join(t, out)
                elif s is not None and (1 - (rank - len(s)) < 0 or s[1 - (rank - len(s))] == 1):
                    continue  # the other input broadcasts over the channels
                else:
                    block(t, f"{op} {n.name} broadcasts {t!r} {s} against {shapes.get(out)}")
                    block(out, f"{op} {n.name} broadcasts {t!r} {s} against {shapes.get(out)}")
        elif op in ("Reshape", "Flatten"):
            s_in, s_out = shapes.get(ins[0]), shapes.get(out)
            spatial_one = s_in is not None and len(s_in) >= 2 and all(d == 1 for d in s_in[2:])
            flat = s_out is not None and len(s_out) == 2 and s_in is not None and s_out[1] == s_in[1]
            if spatial_one and flat and (op == "Flatten" and a.get("axis", 1) == 1 or op == "Reshape"):
                if op == "Reshape":
                    target = numpy_helper.to_array(inits[ins[1]]) if ins[1] in inits else None
                    if target is None or target.size != 2 or uses.get(ins[1], 0) > 1:
                        block(ins[0], f"Reshape {n.name}: shape is computed or shared")
                        block(out, f"Reshape {n.name}: shape is computed or shared")
                        continue
                    if int(target[1]) > 0:
                        note(out, "shape", (ins[1], 1))
                uf.join(ins[0], out)  # [N, C, 1, 1] -> [N, C]: the same channels
            else:
                block(ins[0], f"{op} {n.name} moves channels to another axis")
                block(out, f"{op} {n.name} moves channels to another axis")
        elif op == "Resize":
            scales = ins[2] if len(ins) > 2 else ""
            sizes = ins[3] if len(ins) > 3 else ""
            ok = not sizes and scales in inits and float(numpy_helper.to_array(inits[scales])[1]) == 1.0
            if ok:
                uf.join(ins[0], out)
            else:
                block(ins[0], f"Resize {n.name} by sizes")
                block(out, f"Resize {n.name} by sizes")
        elif op == "Concat" and a.get("axis") not in (1, -(len(shapes.get(out) or [0, 0])) + 1):
            for t in ins:
                if t not in consts:
                    uf.join(t, out)
        else:
            for t in ins + list(n.output):
                if len(shapes.get(t) or []) >= 2 or t not in shapes:
                    why = "concatenated along channels" if op == "Concat" else f"reaches {op} {n.name}"
                    block(t, f"{why}")
    for v in g.output:
        block(v.name, "a graph output")
    for v in g.input:
        if v.name not in inits:
            block(v.name, "a graph input")

    # Every record, gathered by the group its tensor belongs to.
    by_root: dict[str, dict[str, list]] = {}
    chans: dict[str, set] = {}
    for tensor, kinds in rec.items():
        root = uf.find(tensor)
        for kind, items in kinds.items():
            by_root.setdefault(root, {}).setdefault(kind, []).extend(items)
    for tensor in list(uf.parent) + list(rec):
        c = channels(tensor)
        if c is not None:
            chans.setdefault(uf.find(tensor), set()).add(c)
    groups: list[Group] = []
    for root, kinds in by_root.items():
        if not kinds.get("producer"):
            continue
        seen_c = chans.get(root, set())
        grp = Group(len(groups), max(seen_c) if seen_c else 0, blocked=list(kinds.get("blocked", [])))
        if len(seen_c) != 1:
            grp.blocked.append(f"channel counts disagree: {sorted(seen_c)}")
        for name, cuts, norm in kinds["producer"]:
            grp.producers.append(name)
            grp.slices += cuts
            grp.norms.append(norm)
        for name, cuts in kinds.get("depthwise", []):
            grp.depthwise.append(name)
            grp.slices += cuts
        for name, cuts, tensor in kinds.get("consumer", []):
            grp.consumers.append(name)
            grp.slices += cuts
            grp.consumer_slices += cuts
            grp.reads.append((tensor, *cuts[0]))
        grp.slices += kinds.get("slice", [])
        grp.shape_entries += kinds.get("shape", [])
        for init, axis in grp.slices:
            if uses.get(init, 0) > 1:
                grp.blocked.append(f"initializer {init!r} is shared between nodes")
            elif inits[init].dims[axis] != grp.channels:
                grp.blocked.append(f"initializer {init!r} has {inits[init].dims[axis]} on axis {axis}, not {grp.channels}")
        groups.append(grp)
    return groups

