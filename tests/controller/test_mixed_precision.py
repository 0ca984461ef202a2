"""Accuracy-aware int8 on a real model: the PaddleOCR direction classifier and rendered data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from agent.dataset import load_dataset
from controller.build.source import prepare
from controller.data.datasets import extend_dataset, make_dataset, write_npz
from controller.data.evaluation import accuracy
from controller.passes import PassInput, run_pass
from controller.passes.int8 import Int8Options, quantize
from controller.passes.int8_mixed import search, sensitivity
from tests.models import ocr_model


@pytest.fixture(scope="module")
def cls(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The fused fp32 classifier and a labelled calibration set of 16 rendered lines."""
    tmp = tmp_path_factory.mktemp("mixed")
    fp32 = tmp / "fp32.onnx"
    source = prepare(ocr_model("cls"), "cls", {"x": [1, 3, 48, 192]}, tmp / "source.onnx").path
    run_pass("fp32", PassInput(source, None, None), fp32)
    calibration = tmp / "calibration.npz"
    make_dataset("ocr-cls", {"x": ((1, 3, 48, 192), "float32")}, 16, 1_000_003, calibration)
    return fp32, calibration


def test_sensitivity_ranks_real_nodes_by_the_error_they_add(cls: tuple[Path, Path], tmp_path: Path) -> None:
    fp32, calibration = cls
    qdq = tmp_path / "int8.onnx"
    quantize(fp32, qdq, calibration, Int8Options(calibration="minmax"), exclude=[])
    ranking = sensitivity(fp32, qdq, calibration)
    names = {n.name for n in onnx.load(str(fp32)).graph.node}
    assert len(ranking) > 10 and all(r["node"] in names for r in ranking)
    drops = [r["sqnr_drop_db"] for r in ranking]
    assert drops == sorted(drops, reverse=True) and drops[0] > 0


def test_the_search_keeps_nodes_in_float_until_the_budget_holds(cls: tuple[Path, Path], tmp_path: Path) -> None:
    fp32, calibration = cls
    # Ranges taken from dimmed lines are too narrow for real ones: plain int8 clips and loses
    # accuracy (a badly calibrated model, made on purpose), which the search must win back.
    with np.load(calibration, allow_pickle=False) as data:
        meta = json.loads(str(data["__meta__"]))
        arrays = {k: data[k] for k in data.files if k != "__meta__"}
    arrays["input:x"] = (arrays["input:x"] * 0.1).astype(arrays["input:x"].dtype)
    dim = tmp_path / "dim.npz"
    write_npz(dim, meta, arrays)

    out = tmp_path / "mixed.onnx"
    minmax = Int8Options(calibration="minmax")
    report = search(fp32, calibration, out, 0.0, 64,
                    lambda src, dst, exclude, ops: quantize(src, dst, dim, minmax, exclude, ops))
    chosen, steps = report["chosen"], report["steps"]
    assert steps[0]["float_nodes"] == 0 and steps[0]["drop"] > 0  # plain int8 missed the budget
    # The budget is judged on the calibration set extended with its own seed, not on the few
    # samples the quantizer calibrates on.
    judged = extend_dataset(calibration, 64, fp32, tmp_path / "judged.npz")
    assert report["samples"] == 64 > load_dataset(str(calibration)).count
    assert report["fp32_accuracy_on_calibration"] == accuracy(fp32, judged)
    assert report["met_budget"] and chosen["drop"] <= 0.0 and chosen["float_nodes"] > 0
    # Every op first, then only the weighted compute ops, then nodes kept in float on top.
    assert [(s["scope"], s["float_nodes"]) for s in steps[:2]] == [("all", 0), ("compute", 0)]
    assert chosen["scope"] == "compute" and report["scope"].startswith("only Conv")
    fewest = min(s["float_nodes"] for s in steps if s["scope"] == "compute" and s["drop"] <= 0.0)
    assert chosen["float_nodes"] == fewest or chosen["p50_ms"] < 0.95 * next(
        s["p50_ms"] for s in steps if s["scope"] == "compute" and s["float_nodes"] == fewest)
    # The written model is the chosen candidate, and its float nodes are the report's, with why.
    assert accuracy(out, judged) == chosen["accuracy"]
    assert len(report["kept_float"]) == chosen["float_nodes"]
    assert all("SQNR falls" in k["why"] for k in report["kept_float"])
