"""Fine-tuning a pruned ONNX model in PyTorch, with knowledge distillation from the fp32 model.

The pruned graph is run as it is, op by op, by a small interpreter whose weights (Conv,
ConvTranspose, Gemm and MatMul initializers) are torch parameters; after training the weights
are written back into the same ONNX graph. So the result is exactly the graph the surgery made
(every engine loads it), and no ONNX -> torch -> ONNX round trip can change an op on the way
(onnx2torch would be that round trip, and it depends on torchvision, which has no CPU wheel
here). The interpreter knows the ops of the PaddleOCR models and of plain CNNs and MLPs; a
graph with any other op is reported as unsupported and the variant keeps surgery alone.

The loss, per graph output, where the teacher is the fp32 model on ONNX Runtime:

- a Softmax output: KL divergence at temperature T between the teacher's and the student's
  distributions (the teacher's log-probabilities are its logits up to a constant, which the
  softmax cancels), times T^2;
- a Sigmoid output: binary cross-entropy against the teacher's probabilities;
- anything else: mean squared error against the teacher's values;

and, for a cls dataset (labels known), cross-entropy with the labels: the loss is
``alpha * distillation + (1 - alpha) * cross-entropy`` with ``distill`` on, cross-entropy alone
with it off. torch is imported inside functions: EdgeFarm runs without it, with surgery only.
"""

from __future__ import annotations

import importlib.util
import math
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

TRAIN_SAMPLES = 4000
EPOCHS = 4
BATCH = 32
# Training keeps every intermediate tensor of a batch for the backward pass: the 640x640
# detector holds 0.7 GB of them per sample, so the batch shrinks to fit this much.
ACTIVATION_BYTES = 8 << 30
LR = 1e-3  # relative: a weight tensor's learning rate is LR times its RMS (see finetune())
RMS_FLOOR = 1e-4  # a tensor of zeros (a bias) still moves, in absolute steps of LR * RMS_FLOOR
TEMPERATURE = 2.0
ALPHA = 0.7  # share of the distillation term
MAX_SECONDS = 900.0
PROBE_STEPS = 3  # steps timed to plan a run within the time limit
TEACHER_CACHE_BYTES = 256 << 20  # teacher outputs kept across epochs up to this size
WEIGHT_OPS = {"Conv": (1, 2), "ConvTranspose": (1, 2), "Gemm": (1, 2), "MatMul": (1,)}


class FinetuneUnsupported(RuntimeError):
    """The graph has an op this interpreter cannot run, or the data gives nothing to learn from."""


def available() -> bool:
    return importlib.util.find_spec("torch") is not None


def trainer_version() -> str | None:
    """torch's version, or None: part of the pruned variant's cache key, since with torch the
    variant is fine-tuned and without it surgery alone (read from metadata: no torch import)."""
    from importlib import metadata

    try:
        return metadata.version("torch")
    except metadata.PackageNotFoundError:
        return None


# --- the interpreter -------------------------------------------------------------------------


def _attrs(node: Any) -> dict[str, Any]:
    import onnx

    out = {}
    for a in node.attribute:
        v = onnx.helper.get_attribute_value(a)
        out[a.name] = v.decode() if isinstance(v, bytes) else v
    return out


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
        fn = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}[rank]
        return fn(x, w, b, stride, pad_arg, a.get("output_padding", [0] * rank), group, dil)
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


def _op_table() -> dict[str, Callable[..., Any]]:
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
        size = _ints(sizes)[2:] if sizes is not None else [int(x.shape[k + 2] * float(s))
                                                            for k, s in enumerate(scales.tolist()[2:])]
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

    ops = _op_table()
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
            self.nodes = [(ops[n.op_type], list(n.input), list(n.output), _attrs(n), n.op_type)
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


# --- heads and losses ------------------------------------------------------------------------


# Ops that keep the elements in their order: a Softmax behind them is still the output's Softmax
# (exporters flatten a 3-D Softmax to 2-D and reshape it back, as PP-OCR's recogniser has it).
RESHAPES = {"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity"}


def _heads(model: Any) -> list[dict[str, Any]]:
    """Per graph output: which tensor the loss reads (pre-softmax / pre-sigmoid where it can)."""
    producer = {o: n for n in model.graph.node for o in n.output}
    heads = []
    for k, v in enumerate(model.graph.output):
        node = producer.get(v.name)
        while node is not None and node.op_type in RESHAPES and node.input[0] in producer:
            node = producer[node.input[0]]
        if node is not None and node.op_type == "Softmax":
            heads.append({"output": k, "tensor": node.input[0], "kind": "softmax",
                          "axis": int(_attrs(node).get("axis", -1))})
        elif node is not None and node.op_type == "Sigmoid":
            heads.append({"output": k, "tensor": node.input[0], "kind": "sigmoid"})
        else:
            heads.append({"output": k, "tensor": v.name, "kind": "value"})
    return heads


def _distill_loss(heads: list[dict[str, Any]], student: dict[str, Any], teacher: list[np.ndarray],
                  temperature: float) -> Any:
    import torch
    import torch.nn.functional as F

    total = 0.0
    for h in heads:
        s = student[h["tensor"]]
        # The teacher's graph output, in the layout of the tensor the head reads (see RESHAPES).
        t = torch.from_numpy(teacher[h["output"]]).to(s.dtype).reshape(s.shape)
        if h["kind"] == "softmax":
            axis = h["axis"] % s.dim()
            t_logits = torch.log(t.clamp_min(1e-12))  # logits up to a constant the softmax cancels
            log_s = F.log_softmax(s / temperature, dim=axis)
            p_t = F.softmax(t_logits / temperature, dim=axis)
            kl = (p_t * (torch.log(p_t.clamp_min(1e-12)) - log_s)).sum(dim=axis)
            total = total + kl.mean() * temperature ** 2
        elif h["kind"] == "sigmoid":
            total = total + F.binary_cross_entropy_with_logits(s, t)
        else:
            total = total + F.mse_loss(s, t)
    return total


def batch_size(model: Any) -> int:
    """BATCH, or fewer samples where their activations would not fit in ACTIVATION_BYTES."""
    from controller.passes.pruning import cost

    per_sample = 4 * max(1, cost(model)["activations"])  # float32
    return max(1, min(BATCH, ACTIVATION_BYTES // per_sample))


# --- training --------------------------------------------------------------------------------


def finetune(teacher: Any, student: Any, train: Path, options: dict[str, Any],
             on_epoch: Callable[[int, float], None] | None = None) -> tuple[Any, dict[str, Any]]:
    """Train ``student`` (a pruned ONNX proto) on the dataset ``train``; returns the trained
    proto (same graph, new weights) and a report (loss per epoch, seconds, settings)."""
    import onnxruntime as ort
    import torch
    import torch.nn.functional as F

    from agent.dataset import load_dataset

    epochs = int(options.get("epochs") or EPOCHS)
    batch = int(options.get("batch") or batch_size(student))
    lr = float(options.get("lr") or LR)
    temperature = float(options.get("temperature") or TEMPERATURE)
    alpha = float(options.get("alpha") if options.get("alpha") is not None else ALPHA)
    distill = bool(options.get("distill", True))
    max_seconds = float(options.get("max_seconds") or MAX_SECONDS)
    seed = int(options.get("train_seed") or 0)
    torch.manual_seed(seed)
    torch.set_num_threads(int(options.get("train_threads") or 1))

    data = load_dataset(str(train))
    labels = data.labels.get("label") if data.task == "cls" else None
    if labels is None and not distill:
        raise FinetuneUnsupported(f"a {data.task} dataset has no labels to train on without distillation")
    heads = _heads(student)
    module = build_module(student)
    names = [v.name for v in student.graph.input if v.name in data.input_names]
    want = sorted({h["tensor"] for h in heads})

    # The teacher runs in ONNX Runtime (exactly the fp32 artifact); outputs kept when small.
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    session = ort.InferenceSession(teacher.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    cache: dict[int, list[np.ndarray]] = {}
    per_sample = None

    def teacher_out(idx: list[int], feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        nonlocal per_sample
        if all(i in cache for i in idx):
            return [np.concatenate([cache[i][k] for i in idx]) for k in range(len(cache[idx[0]]))]
        outs = session.run(None, feed)
        if per_sample is None:
            per_sample = sum(o.nbytes for o in outs) // len(idx)
        if per_sample * data.count <= TEACHER_CACHE_BYTES:
            for j, i in enumerate(idx):
                cache[i] = [o[j:j + 1] for o in outs]
        return outs

    steps_per_epoch = max(1, data.count // batch)
    # The cosine schedule runs over the steps that fit the time limit, planned from the speed
    # of the first steps: a run cut short by the clock would end at a high learning rate.
    plan = {"total": epochs * steps_per_epoch}
    # Adam moves a weight by about its learning rate per step whatever the gradient, and folding
    # batch norm leaves tensors whose scales span five orders of magnitude (RMS 3e-5 to 4 in the
    # PaddleOCR detector): one rate for all wrecks the small ones. Each tensor's rate is lr times
    # its RMS instead, the same relative step everywhere.
    rates = [{"params": [p], "lr": lr * max(float(p.detach().pow(2).mean().sqrt()), RMS_FLOOR)}
             for p in module.parameters()]
    optimizer = torch.optim.Adam(rates, lr=lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, plan["total"]) / plan["total"])))
    rng = np.random.default_rng(seed)
    history = []
    t0 = time.perf_counter()
    t_probe = t0
    shortened = None
    done = 0
    module.train()
    for epoch in range(epochs):
        if done >= plan["total"]:
            break
        order = rng.permutation(data.count)
        losses = []
        for step in range(steps_per_epoch):
            idx = sorted(order[step * batch:(step + 1) * batch].tolist())
            feed = data.batch(idx)
            feed = {n: feed[n] for n in names}
            outs = module({n: torch.from_numpy(v) for n, v in feed.items()}, want)
            loss = 0.0
            if labels is not None:
                head = heads[0]
                logits = outs[head["tensor"]]
                y = torch.from_numpy(np.asarray(labels[idx], dtype=np.int64))
                ce = F.cross_entropy(logits.reshape(len(idx), -1), y)
                loss = (1 - alpha) * ce if distill else ce
            if distill:
                loss = loss + (alpha if labels is not None else 1.0) * _distill_loss(
                    heads, outs, teacher_out(idx, feed), temperature)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            losses.append(float(loss.detach()))
            done += 1
            now = time.perf_counter()
            if done == 1:
                t_probe = now  # the first step pays for warm-up: timed from the second on
            elif done == 1 + PROBE_STEPS:
                fits = done + int((max_seconds - (now - t0)) / ((now - t_probe) / PROBE_STEPS))
                if fits < plan["total"]:
                    plan["total"] = max(done + 1, fits)
                    shortened = f"{plan['total']} of {epochs * steps_per_epoch} steps fit in {max_seconds:.0f} s"
            if done >= plan["total"] or now - t0 > max_seconds:
                break
        history.append(float(np.mean(losses)))
        if on_epoch is not None:
            on_epoch(epoch, history[-1])
        if done >= plan["total"] or time.perf_counter() - t0 > max_seconds:
            break
    module.eval()
    tuned = module.write_back()
    seconds = time.perf_counter() - t0
    return tuned, {"epochs": len(history), "steps": done, "loss": history, "seconds": seconds,
                   "seconds_per_step": seconds / max(done, 1),
                   "samples": data.count, "batch": batch, "lr": lr, "distill": distill,
                   "temperature": temperature if distill else None, "alpha": alpha if distill else None,
                   "labels": labels is not None, "shortened": shortened}
