"""Fine-tuning a pruned ONNX model in PyTorch, with knowledge distillation from the fp32 model.

The pruned graph is run as it is, op by op, by a small interpreter (``interpreter``) whose weights
(Conv, ConvTranspose, Gemm and MatMul initializers) are torch parameters; after training the
weights are written back into the same ONNX graph. So the result is exactly the graph the surgery
made (every engine loads it), and no ONNX -> torch -> ONNX round trip can change an op on the way
(onnx2torch would be that round trip, and it depends on torchvision, which has no CPU wheel here).
The interpreter knows the ops of the PaddleOCR models and of plain CNNs and MLPs; a graph with any
other op is reported as unsupported and the variant keeps surgery alone.

The loss (``losses``), per graph output, where the teacher is the fp32 model on ONNX Runtime:

- a Softmax output: KL divergence at temperature T between the teacher's and the student's
  distributions (the teacher's log-probabilities are its logits up to a constant, which the
  softmax cancels), times T^2;
- a Sigmoid output: binary cross-entropy against the teacher's probabilities;
- anything else: mean squared error against the teacher's values;

and, for a cls dataset (labels known), cross-entropy with the labels: the loss is
``alpha * distillation + (1 - alpha) * cross-entropy`` with ``distill`` on, cross-entropy alone
with it off. The loop (``training``) plans its steps within the time limit, with a learning rate
per weight tensor. torch is imported inside functions: EdgeFarm runs without it, with surgery only.
"""

from __future__ import annotations

from controller.errors import PassError


class FinetuneUnsupported(PassError):
    """The graph has an op this interpreter cannot run, or the data gives nothing to learn from."""
