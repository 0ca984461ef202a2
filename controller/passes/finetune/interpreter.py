"""Runs an ONNX graph in PyTorch, op by op, its weights as torch parameters (``build_module``),
and writes the trained weights back into the same graph. Each op is checked against ONNX
Runtime in tests/controller/test_finetune_interpreter.py."""

from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np

from controller.passes.finetune import FinetuneUnsupported
from controller.passes.graph import attributes

# The weighted ops and which of their inputs are trained (weight, bias).
WEIGHT_OPS = {"Conv": (1, 2), "ConvTranspose": (1, 2), "Gemm": (1, 2), "MatMul": (1,)}


def _pads(pads: list[int] | None, rank: int) -> tuple[list[int], bool]:
    """ONNX pads [begin..., end...] -> (torch F.pad list, symmetric?)."""
    pads = list(pads or [0] * (2 * rank))
    begin, end = pads[:rank], pads[rank:]
    torch_pad: list[int] = []
    for b, e in zip(reversed(begin), reversed(end)):
        torch_pad += [b, e]
    return torch_pad, begin == end


def _conv(x: Any, w: Any, b: Any, a: dict[str, Any], transpose: bool = False) -> Any:
    import torch.nn.functional as F

    rank = w.dim() - 2
    if a.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
        raise FinetuneUnsupported(f"Conv auto_pad {a['auto_pad']}")
    stride = a.get("strides", [1] * rank)
    dil = a.get("dilations", [1] * rank)
    group = int(a.get("group", 1))
    torch_pad, symmetric = _pads(a.get("pads"), rank)
    pad_arg = list(a.get("pads", [0] * 2 * rank))[:rank] if symmetric else [0] * rank
    if transpose:
        if not symmetric:
            raise FinetuneUnsupported("ConvTranspose with asymmetric pads")
        up = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}[rank]
        return up(x, w, b, stride, pad_arg, a.get("output_padding", [0] * rank), group, dil)
    if not symmetric:
        x = F.pad(x, torch_pad)
    fn = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[rank]
    return fn(x, w, b, stride, pad_arg, dil, group)


def _pool(x: Any, a: dict[str, Any], kind: str) -> Any:
    import torch.nn.functional as F

    k = a["kernel_shape"]
    rank = len(k)
    torch_pad, symmetric = _pads(a.get("pads"), rank)
    if not symmetric:
        x = F.pad(x, torch_pad, value=-math.inf if kind == "max" else 0.0)
    pad = list(a.get("pads", [0] * 2 * rank))[:rank] if symmetric else [0] * rank
    stride = a.get("strides", [1] * rank)
    ceil = bool(a.get("ceil_mode", 0))
    if kind == "max":
        return {1: F.max_pool1d, 2: F.max_pool2d}[rank](x, k, stride, pad, 1, ceil)
    return {1: F.avg_pool1d, 2: F.avg_pool2d}[rank](x, k, stride, pad, ceil, bool(a.get("count_include_pad", 0)))


def _ints(t: Any) -> list[int]:
    return [int(v) for v in t.reshape(-1).tolist()]


def op_table() -> dict[str, Callable[..., Any]]:
    """ONNX op -> fn(inputs, attrs) returning one tensor or a list."""
    import torch
    import torch.nn.functional as F

    def clip(i: list, a: dict) -> Any:
        lo = i[1] if len(i) > 1 and i[1] is not None else a.get("min")
        hi = i[2] if len(i) > 2 and i[2] is not None else a.get("max")
        lo = float(lo) if lo is not None else None
        hi = float(hi) if hi is not None else None
        return torch.clamp(i[0], lo, hi)

    def reshape(i: list, a: dict) -> Any:
        shape = _ints(i[1])
        shape = [i[0].shape[k] if s == 0 and not a.get("allowzero", 0) else s for k, s in enumerate(shape)]
        return i[0].reshape(shape)

    def flatten(i: list, a: dict) -> Any:
        axis = a.get("axis", 1) % max(i[0].dim(), 1)
        return i[0].reshape(int(np.prod(i[0].shape[:axis])), -1)

    def gemm(i: list, a: dict) -> Any:
        x = i[0].t() if a.get("transA", 0) else i[0]
        w = i[1].t() if a.get("transB", 0) else i[1]
        y = a.get("alpha", 1.0) * (x @ w)
        if len(i) > 2 and i[2] is not None:
            y = y + a.get("beta", 1.0) * i[2]
        return y

    def slice_(i: list, a: dict) -> Any:
        x = i[0]
        starts, ends = _ints(i[1]), _ints(i[2])
        axes = _ints(i[3]) if len(i) > 3 and i[3] is not None else list(range(len(starts)))
        steps = _ints(i[4]) if len(i) > 4 and i[4] is not None else [1] * len(starts)
        index = [slice(None)] * x.dim()
        for s, e, ax, st in zip(starts, ends, axes, steps):
            if st <= 0:
                raise FinetuneUnsupported("Slice with a negative step")
            n = x.shape[ax]
            s = max(0, min(n, s + n if s < 0 else s))
            e = max(0, min(n, e + n if e < 0 else e))
            index[ax] = slice(s, e, st)
        return x[tuple(index)]

    def axes_of(i: list, a: dict) -> list[int] | None:
        if len(i) > 1 and i[1] is not None:
            return _ints(i[1])
        return a.get("axes")

    def squeeze(i: list, a: dict) -> Any:
        axes = axes_of(i, a)
        x = i[0]
        if axes is None:
            return x.squeeze()
        for ax in sorted((ax % x.dim() for ax in axes), reverse=True):
            x = x.squeeze(ax)
        return x

    def unsqueeze(i: list, a: dict) -> Any:
        x = i[0]
        axes = axes_of(i, a) or []
        rank = x.dim() + len(axes)
        for ax in sorted(ax % rank for ax in axes):
            x = x.unsqueeze(ax)
        return x

    def reduce_mean(i: list, a: dict) -> Any:
        axes = axes_of(i, a)
        keep = bool(a.get("keepdims", 1))
        if axes is None:
            return i[0].mean() if not keep else i[0].mean(dim=tuple(range(i[0].dim())), keepdim=True)
        return i[0].mean(dim=tuple(axes), keepdim=keep)

    def resize(i: list, a: dict) -> Any:
        x = i[0]
        scales = i[2] if len(i) > 2 and i[2] is not None and i[2].numel() else None
        sizes = i[3] if len(i) > 3 and i[3] is not None else None
        if sizes is not None:
            size = _ints(sizes)[2:]
        elif scales is not None:
            size = [int(x.shape[k + 2] * float(s)) for k, s in enumerate(scales.tolist()[2:])]
        else:
            raise FinetuneUnsupported("Resize without scales or sizes")
        mode = a.get("mode", "nearest")
        if mode == "nearest":
            return F.interpolate(x, size=size, mode="nearest")
        if mode == "linear":
            align = a.get("coordinate_transformation_mode", "half_pixel") == "align_corners"
            return F.interpolate(x, size=size, mode="bilinear", align_corners=align)
        raise FinetuneUnsupported(f"Resize mode {mode}")

    def batchnorm(i: list, a: dict) -> Any:
        return F.batch_norm(i[0], i[3], i[4], i[1], i[2], False, 0.0, a.get("epsilon", 1e-5))

    def cast(i: list, a: dict) -> Any:
        import onnx

        dtype = onnx.helper.tensor_dtype_to_np_dtype(a["to"])
        return i[0].to({np.float32: torch.float32, np.float16: torch.float32, np.int64: torch.int64,
                        np.int32: torch.int64, np.bool_: torch.bool}.get(np.dtype(dtype).type, torch.float32))

    def gather(i: list, a: dict) -> Any:
        x, index = i[0], i[1].long()
        axis = a.get("axis", 0) % x.dim()
        index = torch.where(index < 0, index + x.shape[axis], index)
        picked = torch.index_select(x, axis, index.reshape(-1))
        return picked.reshape(list(x.shape[:axis]) + list(index.shape) + list(x.shape[axis + 1:]))

    def variadic(fn: Callable[[Any, Any], Any]) -> Callable[[list, dict], Any]:
        def run(i: list, a: dict) -> Any:
            out = i[0]
            for t in i[1:]:
                out = fn(out, t)
            return out
        return run

    return {
        "Conv": lambda i, a: _conv(i[0], i[1], i[2] if len(i) > 2 else None, a),
        "ConvTranspose": lambda i, a: _conv(i[0], i[1], i[2] if len(i) > 2 else None, a, transpose=True),
        "Gemm": gemm,
        "MatMul": lambda i, a: torch.matmul(i[0], i[1]),
        "Relu": lambda i, a: F.relu(i[0]),
        "LeakyRelu": lambda i, a: F.leaky_relu(i[0], a.get("alpha", 0.01)),
        "Sigmoid": lambda i, a: torch.sigmoid(i[0]),
        "Tanh": lambda i, a: torch.tanh(i[0]),
        "HardSigmoid": lambda i, a: torch.clamp(a.get("alpha", 0.2) * i[0] + a.get("beta", 0.5), 0.0, 1.0),
        "HardSwish": lambda i, a: F.hardswish(i[0]),
        "Clip": clip,
        "Add": variadic(torch.add), "Sum": variadic(torch.add),
        "Sub": lambda i, a: i[0] - i[1],
        "Mul": lambda i, a: i[0] * i[1],
        "Div": lambda i, a: i[0] / i[1],
        "Pow": lambda i, a: torch.pow(i[0], i[1]),
        "Sqrt": lambda i, a: torch.sqrt(i[0]),
        "Max": variadic(torch.maximum), "Min": variadic(torch.minimum),
        "Neg": lambda i, a: -i[0],
        "Exp": lambda i, a: torch.exp(i[0]),
        "Identity": lambda i, a: i[0],
        "Dropout": lambda i, a: i[0],
        "GlobalAveragePool": lambda i, a: i[0].mean(dim=tuple(range(2, i[0].dim())), keepdim=True),
        "GlobalMaxPool": lambda i, a: i[0].amax(dim=tuple(range(2, i[0].dim())), keepdim=True),
        "MaxPool": lambda i, a: _pool(i[0], a, "max"),
        "AveragePool": lambda i, a: _pool(i[0], a, "avg"),
        "Reshape": reshape,
        "Flatten": flatten,
        "Softmax": lambda i, a: torch.softmax(i[0], dim=a.get("axis", -1)),
        "Transpose": lambda i, a: i[0].permute(*(a.get("perm") or reversed(range(i[0].dim())))),
        "Concat": lambda i, a: torch.cat([t for t in i if t is not None], dim=a["axis"]),
        "Shape": lambda i, a: torch.tensor(list(i[0].shape), dtype=torch.int64),
        "Slice": slice_,
        "Squeeze": squeeze,
        "Unsqueeze": unsqueeze,
        "ReduceMean": reduce_mean,
        "Resize": resize,
        "BatchNormalization": batchnorm,
        "Cast": cast,
        "Gather": gather,
    }


def build_module(model: Any) -> Any:
    """A torch.nn.Module that runs ``model``'s graph; weights of the weighted ops are parameters."""
    import torch
    from onnx import numpy_helper

    ops = op_table()
    g = model.graph
    missing = sorted({n.op_type for n in g.node if n.op_type not in ops and n.op_type != "Constant"})
    if missing:
        raise FinetuneUnsupported(f"no torch kernel here for {', '.join(missing)}")
    trainable = {n.input[k] for n in g.node if n.op_type in WEIGHT_OPS
                 for k in WEIGHT_OPS[n.op_type] if k < len(n.input) and n.input[k]}

    def tensor(a: np.ndarray) -> Any:
        if a.dtype.kind == "f":
            return torch.from_numpy(np.array(a, dtype=np.float32))
        if a.dtype.kind == "b":
            return torch.from_numpy(a.copy())
        return torch.from_numpy(np.array(a, dtype=np.int64))

    class GraphModule(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weights = torch.nn.ParameterList()
            self.weight_names: list[str] = []
            self.consts: dict[str, Any] = {}
            for init in g.initializer:
                a = numpy_helper.to_array(init)
                if init.name in trainable and a.dtype.kind == "f":
                    self.weights.append(torch.nn.Parameter(tensor(a)))
                    self.weight_names.append(init.name)
                else:
                    self.consts[init.name] = tensor(a)
            for n in g.node:
                if n.op_type == "Constant":
                    self.consts[n.output[0]] = tensor(numpy_helper.to_array(_attrs_tensor(n)))
            self.nodes = [(ops[n.op_type], list(n.input), list(n.output), attributes(n), n.op_type)
                          for n in g.node if n.op_type != "Constant"]

        def forward(self, feeds: dict[str, Any], want: list[str]) -> dict[str, Any]:
            env: dict[str, Any] = dict(self.consts)
            env.update(zip(self.weight_names, self.weights))
            env.update(feeds)
            for fn, ins, outs, attrs, _ in self.nodes:
                result = fn([env[i] if i else None for i in ins], attrs)
                if isinstance(result, (list, tuple)):
                    env.update(zip(outs, result))
                else:
                    env[outs[0]] = result
            return {w: env[w] for w in want}

        def write_back(self) -> Any:
            import onnx

            out = onnx.ModelProto()
            out.CopyFrom(model)
            values = {name: p.detach().cpu().numpy() for name, p in zip(self.weight_names, self.weights)}
            for i, init in enumerate(out.graph.initializer):
                if init.name in values:
                    out.graph.initializer[i].CopyFrom(numpy_helper.from_array(values[init.name], init.name))
            return out

    return GraphModule()


def _attrs_tensor(node: Any) -> Any:
    for a in node.attribute:
        if a.name == "value":
            return a.t
    raise FinetuneUnsupported(f"Constant {node.name} without a tensor value")

