"""Structured channel pruning of an ONNX model, by graph surgery, under the accuracy budget: the
algorithm of the ``pruned`` variant (``controller.passes.pruned``), its options in ``options``.

Works on any ONNX model whose channels can be followed, and writes plain ONNX (fewer channels,
same ops), so every engine loads the result:

1. *Groups* (``groups``). A channel of a Conv (or Gemm, MatMul, ConvTranspose) output lives on
   through channel-wise ops (activations, pools, scalar arithmetic, a Flatten of [N, C, 1, 1]),
   through depthwise convs, and through elementwise ops that join two tensors with the same
   channels (a residual Add, a squeeze-excitation Mul): every producer, depthwise conv and
   consumer it reaches must drop the same channels, so they form one group (union-find over
   tensors). A group is skipped, with the reason, when its channels reach anything else: a graph
   output, a Concat or Reshape that mixes them with other axes, a grouped conv, weights shared
   between nodes, an op this package does not know.
2. *Ranking* (``surgery``). Within a group, channels are ranked by their contribution where they
   are read: mean |x| on calibration samples times the L1 norm of each consumer's weights on them
   (the default, ``criterion: activation``), or by the L1 norm of the producers' weights
   (``criterion: l1``, the classic, data-free; it ranks worse than chance on the PaddleOCR
   recogniser, see importance()). Each term is scaled to mean 1 before summing, so no
   producer or consumer dominates by scale. Channels go in multiples of ``round_to`` (8 by
   default) so that aligned counts stay aligned for the engines' vector kernels. The surgery cuts
   every initializer of a group along its channel axis and counts the MACs and parameters left.
3. *Sensitivity* (``search``, as are the steps below). Each group alone is pruned at each ratio
   (0.25, 0.5, 0.75) and the task metric is measured on the *calibration* samples (rendered apart
   from the evaluation samples, which the run reports on), extended to ``samples`` with the
   calibration set's own seed.
4. *Choice.* Greedily, the step (a group to its next ratio) that saves the most MACs per point of
   predicted accuracy lost, until the predicted loss (the sum of the single-group losses) would
   pass the budget or the MAC target is met; then the real combined model is measured and the
   greedy sequence is cut (by bisection) to the longest prefix that meets the budget.
5. *Fine-tuning* (``controller.passes.finetune``, where torch is installed): pruning past the
   budget, along the same greedy order up to the MAC or parameter target (40% of the MACs when
   none is given), then training the pruned model on freshly rendered samples (a seed of their
   own) with knowledge distillation from the fp32 model. The budget is checked after training, on
   the calibration samples, which training never sees; on a miss the cut backs off halfway
   towards what surgery alone kept, and is trained again (``attempts`` runs in all). If no run
   meets the budget, the surgery-only model is written: the variant never misses the budget
   knowingly.
"""

from __future__ import annotations

from controller.errors import PassError


class PruningError(PassError):
    """A model or option the pruning cannot work with."""
