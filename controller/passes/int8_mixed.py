"""The ``int8-mixed`` variant, accuracy-aware int8: the most sensitive nodes stay in float until
the accuracy budget holds.

Plain post-training int8 can lose far more than a deployment accepts (the PaddleOCR
recogniser drops from 0.92 to 0.54 exact match). Usually a handful of layers cause it, so:

1. quantize everything and measure the task metric on labelled calibration samples (the
   calibration set extended to ``budget_samples`` with its own seed, never the evaluation
   samples) against the fp32 model's score on the same samples;
2. if the drop is over the budget, quantize only the weighted compute ops (Conv, MatMul,
   Gemm), leaving normalisation and activations float; measure again;
3. if that still misses, rank nodes by the error each adds: how far the
   signal-to-quantization-noise ratio against the float model falls from a node's inputs to
   its output, on calibration data, worst first;
4. keep the k worst nodes in float as well, re-quantizing and re-measuring: k doubles until the budget
   holds, then bisects to the fewest that meet it; a few more are tried too, and the
   *fastest* candidate that meets the budget (ONNX Runtime CPU latency here) is kept, not
   merely the first;
5. report what stayed in float and why, and every step's accuracy.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

from pydantic import Field

from controller.data.datasets import count, extend_dataset, rendered, sample_bytes
from controller.data.evaluation import accuracy, latency_ms
from controller.passes import Pass, PassInput, register
from controller.passes.graph import op_counts
from controller.passes.int8 import CalibrationReader, Int8Options, quantize

# What is quantized. "compute": the ops that carry weights, where int8 kernels pay; the
# normalisation, activation and elementwise ops around them stay float. On the PaddleOCR
# recogniser that alone took exact match from 0.54 (all ops) to 0.915 (fp32: 0.92).
SCOPES: dict[str, list[str] | None] = {"all": None, "compute": ["Conv", "ConvTranspose", "MatMul", "Gemm"]}
SCOPE_WHY = {"all": "every op quantized",
             "compute": "only Conv, ConvTranspose, MatMul and Gemm quantized; every other op stays float"}
# Candidates tried past the fewest float nodes that meet the budget, to find the fastest.
EXTRA_CANDIDATES = 2
CLEARLY_FASTER = 0.05  # below this, a latency difference on the controller is noise
BUDGET_BYTES = 256 << 20  # rendered samples stay in memory as stored (uint8 images)


class Int8MixedOptions(Int8Options):
    """The int8 pass's keys, and the samples the accuracy budget is judged on."""

    budget_samples: int = Field(
        256, ge=8, description="int8-mixed: samples the budget is checked on (the calibration set, extended)")


@register()
class Int8Mixed(Pass[Int8MixedOptions]):
    name = "int8-mixed"
    version = 1
    starts_from = "fp32"
    precision = "int8"
    calibrated = True
    budgeted = True  # its search stops at the budget selection will apply
    section = "quantization"
    options = Int8MixedOptions

    def run(self, inp: PassInput, options: Int8MixedOptions, out: Path) -> dict[str, Any]:
        assert inp.fp32 is not None and inp.calibration is not None and inp.budget is not None
        calibration = inp.calibration
        report = search(inp.fp32, calibration, out, inp.budget, options.budget_samples,
                        lambda src, dst, exclude, op_types: quantize(src, dst, calibration, options, exclude, op_types))
        return {"ops": op_counts(out), "calibration": options.calibration, "mixed": report}


def search(fp32: Path, calibration: Path, out: Path, budget: float, budget_samples: int,
           quantizer: Callable[[Path, Path, list[str], list[str] | None], Any]) -> dict[str, Any]:
    """Write the chosen model to ``out`` and return the report; ``quantizer(src, dst, exclude,
    op_types)`` is the int8 pass's own quantizer, so both variants quantize exactly alike."""
    with tempfile.TemporaryDirectory(prefix="edgefarm-mixed-") as tmp_dir:
        tmp = Path(tmp_dir)
        calibration = judged_on(calibration, fp32, budget_samples, tmp)
        samples = count(calibration)
        reference = accuracy(fp32, calibration)
        tried: dict[tuple[str, int], dict[str, Any]] = {}
        ranking: list[dict[str, Any]] = []

        def attempt(scope: str, k: int) -> bool:
            """Quantize the scope's ops, the k most sensitive nodes left in float; within budget?"""
            if (scope, k) not in tried:
                path = tmp / f"q-{len(tried)}.onnx"
                quantizer(fp32, path, [r["node"] for r in ranking[:k]], SCOPES[scope])
                score = accuracy(path, calibration)
                tried[scope, k] = {"scope": scope, "float_nodes": k, "accuracy": score, "drop": reference - score,
                                   "path": path}
            return tried[scope, k]["drop"] <= budget

        if not attempt("all", 0) and not attempt("compute", 0):
            ranking = sensitivity(fp32, tried["compute", 0]["path"], calibration)
            # Accuracy grows with k only roughly, so: double k until the budget holds, then
            # bisect down to the fewest float nodes that still meet it.
            low, high = 0, 1
            while high < len(ranking) and not attempt("compute", high):
                low, high = high, min(2 * high, len(ranking))
            if attempt("compute", high):
                while high - low > 1:
                    mid = (low + high) // 2
                    low, high = (low, mid) if attempt("compute", mid) else (mid, high)
                # The fewest is not always the fastest: float islands split int8 kernels.
                for extra in range(1, EXTRA_CANDIDATES + 1):
                    if high + extra <= len(ranking):
                        attempt("compute", high + extra)
        # Most int8 first: every op before the compute ops only, then the fewest float nodes.
        meeting = sorted((t for t in tried.values() if t["drop"] <= budget),
                         key=lambda t: (list(SCOPES).index(t["scope"]), t["float_nodes"]))
        for t in meeting:
            t["p50_ms"] = latency_ms(t["path"], calibration)
        if meeting:  # the most int8 that meets it, unless another is clearly (not by noise) faster
            chosen = min(meeting, key=lambda t: t["p50_ms"])
            if chosen["p50_ms"] > meeting[0]["p50_ms"] * (1 - CLEARLY_FASTER):
                chosen = meeting[0]
        else:  # nothing met the budget: the most accurate candidate, reported as such
            chosen = max(tried.values(), key=lambda t: t["accuracy"])
        shutil.copyfile(chosen["path"], out)
    steps = [{k: v for k, v in t.items() if k != "path"} for t in tried.values()]
    kept = ranking[:chosen["float_nodes"]]
    return {
        "budget": budget, "samples": samples,
        "fp32_accuracy_on_calibration": reference, "met_budget": bool(meeting),
        "scope": SCOPE_WHY[chosen["scope"]],
        "kept_float": [dict(r, why=f"the end-to-end SQNR falls {r['sqnr_drop_db']:.1f} dB across it "
                                   f"(rank {i + 1} of {len(ranking)})") for i, r in enumerate(kept)],
        "chosen": {k: v for k, v in chosen.items() if k != "path"}, "steps": steps,
    }


def judged_on(calibration: Path, fp32: Path, samples: int, tmp: Path) -> Path:
    """The samples the budget is checked on: the calibration set extended with its own seed.

    The quantizer calibrates on a few dozen samples, and on 32 one sample is 0.03 of accuracy,
    more than a budget: a candidate that met the budget there lost 0.03 on the evaluation
    samples. Rendered sets are extended (the first samples stay the same), up to what fits in
    BUDGET_BYTES; a set that was not rendered is used as it is."""
    if not rendered(calibration):
        return calibration
    samples = max(count(calibration), min(samples, BUDGET_BYTES // sample_bytes(calibration)))
    return extend_dataset(calibration, samples, fp32, tmp / "budget.npz")


def sensitivity(fp32: Path, qdq: Path, calibration: Path) -> list[dict[str, Any]]:
    """Nodes ranked by how much quantization error each adds, worst first.

    For every activation, the SQNR between the int8 model's tensor and the float model's on the
    same calibration samples says how far the error has accumulated by then; a node's share is
    how many dB that falls from its worst input to its output. A node whose own output is
    badly represented but whose error the network absorbs ranks low, as it should.
    """
    import onnx
    from onnxruntime.quantization.qdq_loss_debug import (
        collect_activations,
        compute_activation_error,
        create_activation_matching,
        modify_model_output_intermediate_tensors,
    )

    activations = {}
    with tempfile.TemporaryDirectory(prefix="edgefarm-sqnr-") as tmp_dir:
        for kind, model in (("qdq", qdq), ("float", fp32)):  # every intermediate tensor of each, same samples
            augmented = Path(tmp_dir) / f"{kind}.onnx"
            modify_model_output_intermediate_tensors(str(model), str(augmented))
            activations[kind] = collect_activations(str(augmented), CalibrationReader(calibration, limit=8))
    errors = compute_activation_error(create_activation_matching(activations["qdq"], activations["float"]))
    sqnr = {t: e["xmodel_err"] for t, e in errors.items() if e.get("xmodel_err") is not None}
    ranked = []
    for node in onnx.load(str(fp32)).graph.node:
        outs = [sqnr[o] for o in node.output if o in sqnr]
        ins = [sqnr[i] for i in node.input if i in sqnr]
        if node.name and outs and ins:
            ranked.append({"node": node.name, "op": node.op_type, "sqnr_db": min(outs),
                           "sqnr_drop_db": min(ins) - min(outs)})
    return sorted(ranked, key=lambda r: -r["sqnr_drop_db"])
