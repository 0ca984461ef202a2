"""Structured channel pruning of an ONNX model, by graph surgery, under the accuracy budget.

Works on any ONNX model whose channels can be followed, and writes plain ONNX (fewer channels,
same ops), so every engine loads the result:

1. *Groups.* A channel of a Conv (or Gemm, MatMul, ConvTranspose) output lives on through
   channel-wise ops (activations, pools, scalar arithmetic, a Flatten of [N, C, 1, 1]), through
   depthwise convs, and through elementwise ops that join two tensors with the same channels (a
   residual Add, a squeeze-excitation Mul): every producer, depthwise conv and consumer it reaches
   must drop the same channels, so they form one group (union-find over tensors). A group is
   skipped, with the reason, when its channels reach anything else: a graph output, a Concat or
   Reshape that mixes them with other axes, a grouped conv, weights shared between nodes, an op
   this module does not know.
2. *Ranking.* Within a group, channels are ranked by their contribution where they are read:
   mean |x| on calibration samples times the L1 norm of each consumer's weights on them (the
   default, ``criterion: activation``), or by the L1 norm of the producers' weights
   (``criterion: l1``, the classic, data-free; it ranks worse than chance on the PaddleOCR
   recogniser, see importance()). Each term is scaled to mean 1 before summing, so no
   producer or consumer dominates by scale. Channels go in multiples of ``round_to`` (8 by
   default) so that aligned counts stay aligned for the engines' vector kernels.
3. *Sensitivity.* Each group alone is pruned at each ratio (0.25, 0.5, 0.75) and the task metric
   is measured on the *calibration* samples (rendered apart from the evaluation samples, which the
   run reports on), extended to ``samples`` with the calibration set's own seed.
4. *Choice.* Greedily, the step (a group to its next ratio) that saves the most MACs per point of
   predicted accuracy lost, until the predicted loss (the sum of the single-group losses) would
   pass the budget or the MAC target is met; then the real combined model is measured and the
   greedy sequence is cut (by bisection) to the longest prefix that meets the budget.
5. *Fine-tuning* (controller.passes.finetune, where torch is installed): pruning past the budget, along
   the same greedy order up to the MAC or parameter target (40% of the MACs when none is
   given), then training the pruned model on freshly rendered samples (a seed of their own) with
   knowledge distillation from the fp32 model. The budget is checked after training, on the
   calibration samples, which training never sees; on a miss the cut backs off halfway towards
   what surgery alone kept, and is trained again (``attempts`` runs in all). If no run meets the
   budget, the surgery-only model is written: the variant never misses the budget knowingly.
"""

from __future__ import annotations

import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from controller.data.datasets import count, extend_dataset, rendered, sample_bytes
from controller.data.evaluation import accuracy

RATIOS = (0.25, 0.5, 0.75)
MAX_RATIO = 0.75
ROUND_TO = 8
CRITERION = "activation"  # or "l1": see importance()
SAMPLES = 256  # sensitivity samples: the calibration set extended with its own seed
# Fine-tuning samples are rendered with a seed apart from both calibration and evaluation.
TRAIN_SEED_OFFSET = 2_000_033
# With fine-tuning and no target given, prune this share of the MACs (the 30-50%).
DEFAULT_TARGET_FLOPS = 0.4
TRAIN_BYTES = 1 << 30  # rendered fine-tuning samples are capped at this much memory
EPS_DROP = 0.002  # a step predicted to cost nothing still costs something: ties go by MACs

# Ops that keep every channel where it is and never mix channels (first input is the data).
CHANNELWISE = {
    "Relu", "LeakyRelu", "Clip", "HardSigmoid", "HardSwish", "Sigmoid", "Tanh", "Elu", "Selu", "Softplus",
    "Softsign", "Erf", "Exp", "Log", "Abs", "Neg", "Sqrt", "Reciprocal", "Floor", "Ceil", "Round", "Identity",
    "Dropout", "Cast", "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "LpPool", "Mish", "Gelu",
}
# Elementwise ops of any arity, numpy broadcasting.
ELEMENTWISE = {"Add", "Sub", "Mul", "Div", "Max", "Min", "Sum", "Mean", "Pow", "PRelu"}


class PruningError(ValueError):
    """A model or option the pruning cannot work with."""


# --- groups ----------------------------------------------------------------------------------


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


def _shapes(model: Any) -> dict[str, list[int | None]]:
    """Every tensor's shape after shape inference (symbolic dims as None)."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    g = inferred.graph
    out: dict[str, list[int | None]] = {}
    for v in list(g.input) + list(g.value_info) + list(g.output):
        t = v.type.tensor_type
        if t.HasField("shape"):
            out[v.name] = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
    for init in g.initializer:
        out[init.name] = list(init.dims)
    return out


def _attrs(node: Any) -> dict[str, Any]:
    import onnx

    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def find_groups(model: Any) -> list[Group]:
    """The channel groups of ``model`` (fixed shapes but for the batch), prunable or not.

    Unnamed nodes get a name (op#index) in place: groups and reports refer to nodes by name."""
    from onnx import numpy_helper

    g = model.graph
    inits = {i.name: i for i in g.initializer}
    consts = set(inits) | {o for n in g.node if n.op_type == "Constant" for o in n.output}
    shapes = _shapes(model)
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
        op, a = n.op_type, _attrs(n)
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
                    c = list(inits[ins[2]].dims)
                    if c and c[-1] > 1:
                        cuts.append((ins[2], len(c) - 1))
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
    groups = []
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


# --- ranking and surgery ---------------------------------------------------------------------


def importance(model: Any, group: Group, activity: dict[str, np.ndarray] | None = None) -> np.ndarray:
    """Per-channel importance, each term scaled to mean 1 and summed.

    Without ``activity``: the L1 norm of the producers' weights. With it (mean |value| of each
    channel of the tensors consumers read, on calibration samples): the size of each channel's
    contribution at every consumer, mean |x_k| times the L1 norm of the weights that read it.
    On the PaddleOCR recogniser, whose re-parameterised blocks scale channels after the conv,
    the weights' L1 norm ranks channels worse than chance (cutting a quarter of one block's
    channels by it: exact match 0.95 -> 0.0; by contribution: 0.95 -> 0.76 .. 0.95).
    """
    from onnx import numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    total = np.zeros(group.channels)

    def add(score: np.ndarray) -> None:
        nonlocal total
        total = total + score / max(float(score.mean()), 1e-12)

    if activity is not None and group.reads and all(t in activity for t, _, _ in group.reads):
        for tensor, name, axis in group.reads:
            w = np.abs(numpy_helper.to_array(inits[name]).astype(np.float64))
            add(activity[tensor] * np.moveaxis(w, axis, 0).reshape(group.channels, -1).sum(axis=1))
        return total
    for name, axis in group.norms:
        w = np.abs(numpy_helper.to_array(inits[name]).astype(np.float64))
        add(np.moveaxis(w, axis, 0).reshape(group.channels, -1).sum(axis=1))
    return total


def channel_activity(model: Any, groups: list[Group], dataset: Path, samples: int = 16,
                     threads: int = 1) -> dict[str, np.ndarray]:
    """Mean |value| per channel (axis 1) of every tensor a prunable group's consumers read,
    over the first ``samples`` samples of ``dataset``."""
    import onnx
    import onnxruntime as ort

    from agent.dataset import load_dataset

    tensors = sorted({t for g in groups if g.prunable for t, _, _ in g.reads})
    if not tensors:
        return {}
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    known = {o.name for o in probe.graph.output}
    for t in tensors:
        if t not in known:
            probe.graph.output.append(onnx.helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None))
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    session = ort.InferenceSession(probe.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    data = load_dataset(str(dataset))
    names = [i.name for i in session.get_inputs()]
    n = min(samples, data.count)
    sums: dict[str, np.ndarray] = {}
    for i in range(n):
        batch = data.batch([i])
        for t, value in zip(tensors, session.run(tensors, {k: batch[k] for k in names})):
            per_channel = np.abs(value.astype(np.float64)).reshape(value.shape[0], value.shape[1], -1).mean(axis=(0, 2))
            sums[t] = sums.get(t, 0.0) + per_channel
    return {t: v / n for t, v in sums.items()}


def removable(channels: int, ratio: float, round_to: int = ROUND_TO) -> int:
    """How many channels pruning ``ratio`` of them removes: a multiple of ``round_to``,
    leaving at least ``round_to`` (or 1 in a group smaller than that)."""
    step = max(1, min(round_to, channels))
    remove = int(math.floor(ratio * channels / step + 1e-9)) * step
    return max(0, min(remove, channels - step))


def keep_indices(model: Any, group: Group, ratio: float, round_to: int = ROUND_TO,
                 activity: dict[str, np.ndarray] | None = None) -> np.ndarray:
    """The channels a ``ratio`` cut keeps: the highest-ranked ones, in their original order."""
    keep = group.channels - removable(group.channels, ratio, round_to)
    order = np.argsort(-importance(model, group, activity), kind="stable")
    return np.sort(order[:keep])


def apply(model: Any, groups: list[Group], plan: dict[int, np.ndarray]) -> Any:
    """A copy of ``model`` with only the ``plan[group.id]`` channels of each planned group."""
    import onnx
    from onnx import numpy_helper

    by_id = {grp.id: grp for grp in groups}
    pruned = onnx.ModelProto()
    pruned.CopyFrom(model)
    g = pruned.graph
    arrays = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    changed: set[str] = set()
    for gid, keep in plan.items():
        grp = by_id[gid]
        if not grp.prunable:
            raise PruningError(f"group {gid} cannot be pruned: {'; '.join(grp.blocked) or 'one channel'}")
        keep = np.asarray(keep, dtype=np.int64)
        for init, axis in grp.slices:
            arrays[init] = np.take(arrays[init], keep, axis=axis)
            changed.add(init)
        for init, index in grp.shape_entries:
            arrays[init] = arrays[init].copy()
            arrays[init][index] = keep.size
            changed.add(init)
        for node in g.node:
            if node.name in grp.depthwise:
                for attr in node.attribute:
                    if attr.name == "group":
                        attr.i = int(keep.size)
    for i, init in enumerate(g.initializer):
        if init.name in changed:
            g.initializer[i].CopyFrom(numpy_helper.from_array(np.ascontiguousarray(arrays[init.name]), init.name))
    # Inferred intermediate shapes carry the old channel counts.
    del g.value_info[:]
    return onnx.shape_inference.infer_shapes(pruned)


def cost(model: Any) -> dict[str, int]:
    """MACs of the weighted ops at batch 1 (Conv, ConvTranspose, Gemm, MatMul), parameters, and
    activations: the elements of every node output at batch 1, which training keeps for the
    backward pass (symbolic dimensions count as 1, so this is a floor)."""
    shapes = _shapes(model)
    inits = {i.name: list(i.dims) for i in model.graph.initializer}

    def numel(s: list[int | None] | None) -> int:
        return int(np.prod([d or 1 for d in s])) if s else 0

    macs = 0
    for n in model.graph.node:
        if n.op_type == "Conv" and n.input[1] in inits:
            w = inits[n.input[1]]
            macs += numel(shapes.get(n.output[0])) * int(np.prod(w[1:]))
        elif n.op_type == "ConvTranspose" and n.input[1] in inits:
            w = inits[n.input[1]]
            macs += numel(shapes.get(n.input[0])) * int(np.prod(w[1:]))
        elif n.op_type in ("Gemm", "MatMul"):
            a, o = shapes.get(n.input[0]), shapes.get(n.output[0])
            if a and o:
                k = a[-2] if n.op_type == "Gemm" and _attrs(n).get("transA", 0) else a[-1]
                macs += numel(o) * int(k or 1)
    params = sum(int(np.prod(d)) for d in inits.values() if d)
    activations = sum(numel(shapes.get(o)) for n in model.graph.node for o in n.output)
    return {"macs": int(macs), "params": int(params), "activations": int(activations)}


# --- measuring -------------------------------------------------------------------------------


def sensitivity(model: Any, groups: list[Group], dataset: Path, ratios: tuple[float, ...] = RATIOS,
                round_to: int = ROUND_TO, threads: int = 1,
                activity: dict[str, np.ndarray] | None = None) -> list[dict[str, Any]]:
    """Accuracy of the model with each prunable group alone cut at each ratio."""
    base_cost = cost(model)
    rows = []
    for grp in groups:
        if not grp.prunable:
            continue
        points = []
        seen: set[int] = set()
        for r in ratios:
            keep = keep_indices(model, grp, r, round_to, activity)
            if keep.size == grp.channels or keep.size in seen:
                continue  # too few channels for this ratio at this granularity
            seen.add(keep.size)
            pruned = apply(model, groups, {grp.id: keep})
            c = cost(pruned)
            points.append({"ratio": r, "keep": int(keep.size), "accuracy": accuracy(pruned, dataset, threads),
                           "macs_saved": base_cost["macs"] - c["macs"], "params_saved": base_cost["params"] - c["params"]})
        if points:
            rows.append({"group": grp.id, "channels": grp.channels, "producers": grp.producers, "points": points})
    return rows


# --- choice ----------------------------------------------------------------------------------


def greedy_order(table: list[dict[str, Any]], reference: float, max_ratio: float,
                 weigh: dict[str, float]) -> list[tuple[int, int, float]]:
    """Every step (group, point index, predicted total drop after it), cheapest accuracy per
    saving first: a group moves to its next ratio only after its previous one was taken.

    ``weigh`` says what a saving is worth: {"macs": 1/total MACs} and/or {"params": 1/total}.
    """
    level = {row["group"]: -1 for row in table}
    rows = {row["group"]: row for row in table}
    drop_now = {gid: 0.0 for gid in level}
    saved_now = {gid: 0.0 for gid in level}
    steps: list[tuple[int, int, float]] = []
    while True:
        best = None
        for gid, row in rows.items():
            nxt = level[gid] + 1
            if nxt >= len(row["points"]) or row["points"][nxt]["ratio"] > max_ratio + 1e-9:
                continue
            p = row["points"][nxt]
            drop = max(reference - p["accuracy"], 0.0)
            saved = sum(p[f"{k}_saved"] * w for k, w in weigh.items())
            gain = saved - saved_now[gid]
            worse = max(drop - drop_now[gid], 0.0) + EPS_DROP
            if gain <= 0:
                continue
            score = gain / worse
            if best is None or score > best[0]:
                best = (score, gid, nxt, drop, saved)
        if best is None:
            return steps
        _, gid, nxt, drop, saved = best
        level[gid], drop_now[gid], saved_now[gid] = nxt, drop, saved
        steps.append((gid, nxt, sum(drop_now.values())))


def plan_of(model: Any, groups: list[Group], table: list[dict[str, Any]], steps: list[tuple[int, int, float]],
            round_to: int, activity: dict[str, np.ndarray] | None = None) -> dict[int, np.ndarray]:
    """The channels kept after taking ``steps`` (each group at the last ratio the steps reached)."""
    rows = {row["group"]: row for row in table}
    by_id = {grp.id: grp for grp in groups}
    level: dict[int, int] = {}
    for gid, idx, _ in steps:
        level[gid] = idx
    return {gid: keep_indices(model, by_id[gid], rows[gid]["points"][idx]["ratio"], round_to, activity)
            for gid, idx in level.items()}


def _longest_prefix(n: int, ok: Any) -> int:
    """The longest prefix length k in 0..n with ok(k), assuming ok is (roughly) monotone;
    ok(0) is taken as true."""
    if n == 0 or ok(n):
        return n
    low, high = 0, n  # ok(low), not ok(high)
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (mid, high) if ok(mid) else (low, mid)
    return low


# --- the variant -----------------------------------------------------------------------------


def variant(inp: Any, out: Path) -> dict[str, Any]:
    """The "pruned" variant recipe (controller.passes registers it): a RecipeInput in, meta out."""
    from controller.passes import op_counts

    if inp.fp32 is None or inp.calibration is None:
        raise PruningError("the pruned variant needs the fused fp32 model and calibration samples")
    report = prune(Path(inp.fp32), Path(inp.calibration), out, dict(inp.options))
    return {"ops": op_counts(out), "pruning": report}


def prune(fp32: Path, calibration: Path, out: Path, options: dict[str, Any], train: Path | None = None,
          keep: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write the pruned (and, where torch is installed, fine-tuned) model to ``out``; the report
    says which groups were cut and how far, which were skipped and why, and every measurement.

    ``calibration`` is extended to ``samples`` when it was rendered (else used as it is);
    ``train`` is the fine-tuning set, rendered here with a seed of its own when not given.
    ``keep``, when given, receives the intermediate models (for benchmarks): "surgery" (the
    budget met by surgery alone) and "untrained" (the fine-tuned plan before training)."""
    import onnx

    t_start = time.perf_counter()
    budget = float(options.get("budget", 0.01))
    ratios = tuple(float(r) for r in options.get("ratios") or RATIOS)
    max_ratio = float(options.get("max_ratio") or MAX_RATIO)
    round_to = int(options.get("round_to") or ROUND_TO)
    target_flops = options.get("target_flops")
    target_params = options.get("target_params")
    threads = int(options.get("threads") or 1)
    criterion = str(options.get("criterion") or CRITERION)
    if criterion not in ("activation", "l1"):
        raise PruningError(f"pruning option criterion must be activation or l1, got {criterion!r}")
    for name, value in (("max_ratio", max_ratio), ("target_flops", target_flops), ("target_params", target_params)):
        if value is not None and not 0 < float(value) < 1:
            raise PruningError(f"pruning option {name} must lie in (0, 1), got {value}")
    if any(not 0 < r < 1 for r in ratios):
        raise PruningError(f"pruning ratios must lie in (0, 1), got {list(ratios)}")

    finetune = str(options.get("finetune", "auto"))
    if finetune not in ("auto", "off"):
        raise PruningError(f"pruning option finetune must be auto or off, got {finetune!r}")
    if finetune == "auto" and target_flops is None and target_params is None:
        from controller.passes import finetune as ft

        if ft.available():  # training can win accuracy back: aim past what surgery alone keeps
            target_flops = DEFAULT_TARGET_FLOPS
    model = onnx.load(str(fp32))
    groups = find_groups(model)
    base = cost(model)
    weigh: dict[str, float] = {}
    if target_params is not None:
        weigh["params"] = 1.0 / max(base["params"], 1)
    if target_flops is not None or not weigh:
        weigh["macs"] = 1.0 / max(base["macs"], 1)

    with tempfile.TemporaryDirectory(prefix="edgefarm-prune-") as tmp_dir:
        tmp = Path(tmp_dir)
        data = (extend_dataset(calibration, int(options.get("samples") or SAMPLES), fp32, tmp / "sensitivity.npz")
                if rendered(calibration) else calibration)
        used = count(data)
        reference = accuracy(model, data, threads)
        t0 = time.perf_counter()
        activity = channel_activity(model, groups, data, threads=threads) if criterion == "activation" else None
        table = sensitivity(model, groups, data, ratios, round_to, threads, activity)
        t_sens = time.perf_counter() - t0
        order = greedy_order(table, reference, max_ratio, weigh)

        def build(k: int) -> Any:
            """The model after the first k greedy steps."""
            return apply(model, groups, plan_of(model, groups, table, order[:k], round_to, activity))

        def reached(k: int) -> bool:
            """Do the first k steps meet the MAC / parameter targets?"""
            c = cost(build(k))
            return ((target_flops is None or 1 - c["macs"] / base["macs"] >= float(target_flops))
                    and (target_params is None or 1 - c["params"] / base["params"] >= float(target_params)))

        # The steps a target asks for (all of them without a target: as far as the budget allows).
        wanted = len(order)
        if target_flops is not None or target_params is not None:
            wanted = next((k for k in range(1, len(order) + 1) if reached(k)), len(order))
        measured: dict[int, float] = {}

        def holds(k: int) -> bool:
            if k not in measured:
                measured[k] = accuracy(build(k), data, threads)
            return reference - measured[k] <= budget

        # Surgery alone: the greedy prefix the predicted drops allow, cut to what really holds.
        predicted = next((k for k, (_, _, d) in enumerate(order) if d > budget), len(order))
        chosen = _longest_prefix(min(predicted, wanted), holds)
        holds(chosen)
        result: dict[str, Any] = {"steps": chosen, "accuracy": measured[chosen], "finetuned": False}
        best_model = build(chosen)
        if keep is not None:
            keep["surgery"] = best_model

        tuning: dict[str, Any] = {"status": "off"}
        if finetune != "off" and wanted > chosen:
            tuning = _finetune_search(model, groups, table, order, chosen, wanted, reference, budget, data,
                                      fp32, calibration, train, tmp, options, round_to, threads, activity)
            if tuning.get("chosen") is not None:
                k = tuning["chosen"]["steps"]
                if keep is not None:
                    keep["untrained"] = build(k)
                best_model = tuning.pop("model")
                result = {"steps": k, "accuracy": tuning["chosen"]["accuracy"], "finetuned": True}
            tuning.pop("model", None)
        onnx.checker.check_model(best_model)
        onnx.save(best_model, str(out))

    after = cost(best_model)
    plan = plan_of(model, groups, table, order[:result["steps"]], round_to, activity)
    by_id = {grp.id: grp for grp in groups}
    return {
        "budget": budget, "criterion": criterion,
        "target_flops": target_flops, "target_params": target_params,
        "samples": used,
        "fp32_accuracy_on_calibration": reference,
        "accuracy_on_calibration": result["accuracy"],
        "drop_on_calibration": reference - result["accuracy"],
        "met_budget": reference - result["accuracy"] <= budget,
        "finetuned": result["finetuned"],
        "macs_before": base["macs"], "macs_after": after["macs"],
        "params_before": base["params"], "params_after": after["params"],
        "flops_removed": 1 - after["macs"] / max(base["macs"], 1),
        "params_removed": 1 - after["params"] / max(base["params"], 1),
        "size_before": fp32.stat().st_size, "size_after": out.stat().st_size,
        "pruned": [{"group": gid, "channels": by_id[gid].channels, "kept": int(keep.size),
                    "producers": by_id[gid].producers} for gid, keep in sorted(plan.items())],
        "skipped": [grp.describe() for grp in groups if not grp.prunable] + [
            dict(grp.describe(), skipped=[f"{grp.channels} channels: nothing to cut in steps of {round_to}"])
            for grp in groups if grp.prunable and grp.id not in {row["group"] for row in table}],
        "sensitivity": table,
        "surgery_only": {"steps": chosen, "accuracy": measured[chosen]},
        "finetune": tuning,
        "seconds": {"sensitivity": t_sens, "total": time.perf_counter() - t_start},
    }


def _finetune_search(model: Any, groups: list[Group], table: list[dict[str, Any]],
                     order: list[tuple[int, int, float]], floor: int, wanted: int, reference: float,
                     budget: float, data: Path, fp32: Path, calibration: Path, train: Path | None, tmp: Path,
                     options: dict[str, Any], round_to: int, threads: int,
                     activity: dict[str, np.ndarray] | None) -> dict[str, Any]:
    """Prune to the target, fine-tune, check the budget on the calibration samples; on a miss,
    back off halfway towards what surgery alone reached, a bounded number of times."""
    try:
        from controller.passes import finetune
    except ImportError as exc:  # pragma: no cover - finetune imports torch lazily
        return {"status": f"unavailable: {exc}"}
    if not finetune.available():
        return {"status": "unavailable: torch is not installed"}
    if train is None:
        if not rendered(calibration):
            return {"status": "no training data: the calibration set was not rendered and none was given"}
        samples = int(options.get("train_samples") or finetune.TRAIN_SAMPLES)
        # Rendered samples stay in memory as uint8: a 640x640 detector would need 5 GB for 4000.
        samples = max(64, min(samples, TRAIN_BYTES // sample_bytes(calibration)))
        train = extend_dataset(calibration, samples, fp32, tmp / "train.npz", seed_offset=TRAIN_SEED_OFFSET)
    samples = count(train)
    attempts = int(options.get("attempts") or 2)
    tried: list[dict[str, Any]] = []
    best: dict[str, Any] | None = None
    best_model = None
    k = wanted
    for _ in range(attempts):
        student = apply(model, groups, plan_of(model, groups, table, order[:k], round_to, activity))
        try:
            tuned, report = finetune.finetune(model, student, train, options)
        except finetune.FinetuneUnsupported as exc:
            return {"status": f"unsupported: {exc}", "attempts": tried}
        acc = accuracy(tuned, data, threads)
        c = cost(tuned)
        entry = {"steps": k, "accuracy": acc, "drop": reference - acc, "macs": c["macs"], "params": c["params"],
                 "train": report}
        tried.append(entry)
        if reference - acc <= budget:
            best, best_model = entry, tuned
            break
        nxt = floor + (k - floor) // 2
        if nxt <= floor or nxt == k:
            break
        k = nxt
    out: dict[str, Any] = {"status": "ok" if best else "missed the budget", "attempts": tried,
                           "train_samples": samples,
                           "chosen": {k: v for k, v in best.items() if k != "train"} if best else None}
    if best_model is not None:
        out["model"] = best_model
    return out
