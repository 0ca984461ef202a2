"""The fine-tuning loss: which tensor of each graph output it reads, and distillation from the
teacher's outputs (see the package's docstring for the terms)."""

from __future__ import annotations

from typing import Any

import numpy as np

from controller.passes.graph import attributes

# Ops that keep the elements in their order: a Softmax behind them is still the output's Softmax
# (exporters flatten a 3-D Softmax to 2-D and reshape it back, as PP-OCR's recogniser has it).
RESHAPES = {"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity"}


def heads(model: Any) -> list[dict[str, Any]]:
    """Per graph output: which tensor the loss reads (pre-softmax / pre-sigmoid where it can)."""
    producer = {o: n for n in model.graph.node for o in n.output}
    found = []
    for k, v in enumerate(model.graph.output):
        node = producer.get(v.name)
        while node is not None and node.op_type in RESHAPES and node.input[0] in producer:
            node = producer[node.input[0]]
        if node is not None and node.op_type == "Softmax":
            found.append({"output": k, "tensor": node.input[0], "kind": "softmax",
                          "axis": int(attributes(node).get("axis", -1))})
        elif node is not None and node.op_type == "Sigmoid":
            found.append({"output": k, "tensor": node.input[0], "kind": "sigmoid"})
        else:
            found.append({"output": k, "tensor": v.name, "kind": "value"})
    return found


def distill_loss(heads: list[dict[str, Any]], student: dict[str, Any], teacher: list[np.ndarray],
                 temperature: float) -> Any:
    """The distillation term of ``student``'s tensors (by name) against the teacher's graph outputs."""
    import torch
    import torch.nn.functional as F

    total: Any = 0.0  # a tensor once the first head adds to it
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
