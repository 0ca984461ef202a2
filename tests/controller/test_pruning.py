"""Structured channel pruning on real models: the PaddleOCR direction classifier with rendered
data, and the digits classifier trained here, fine-tuned with distillation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from controller.build.source import prepare
from controller.data.datasets import extend_dataset, make_dataset, write_npz
from controller.data.evaluation import accuracy
from controller.passes import PassInput, run_pass
from controller.passes.finetune import FinetuneUnsupported, losses, training
from controller.passes.finetune.interpreter import build_module
from controller.passes.pruning.groups import find_groups
from controller.passes.pruning.options import PruningOptions
from controller.passes.pruning.search import greedy_order, prune
from controller.passes.pruning.surgery import apply, channel_activity, cost, importance, keep_indices, removable
from tests.models import digits_mlp, ocr_model

CLS_INPUT = {"x": ((1, 3, 48, 192), "float32")}
CALIBRATION_SEED = 1_000_003  # as controller.build.compile renders calibration samples
needs_torch = pytest.mark.skipif(not training.available(), reason="torch is not installed")


@pytest.fixture(scope="module")
def cls(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The fused fp32 classifier, 32 calibration samples and 200 evaluation samples (seed 0)."""
    tmp = tmp_path_factory.mktemp("pruning-cls")
    source = prepare(ocr_model("cls"), "cls", {"x": [1, 3, 48, 192]}, tmp / "source.onnx").path
    run_pass("fp32", PassInput(source, None, None), tmp / "fp32.onnx")
    make_dataset("ocr-cls", CLS_INPUT, 32, CALIBRATION_SEED, tmp / "calibration.npz")
    make_dataset("ocr-cls", CLS_INPUT, 200, 0, tmp / "eval.npz")
    return {"fp32": tmp / "fp32.onnx", "calibration": tmp / "calibration.npz", "eval": tmp / "eval.npz", "dir": tmp}


def _outputs(model: onnx.ModelProto | Path, dataset: Path, count: int = 8) -> list[np.ndarray]:
    import onnxruntime as ort

    from agent.dataset import load_dataset

    blob = str(model) if isinstance(model, Path) else model.SerializeToString()
    session = ort.InferenceSession(blob, providers=["CPUExecutionProvider"])
    data = load_dataset(str(dataset))
    return session.run(None, data.batch(list(range(count))))


def test_groups_follow_channels_through_depthwise_squeeze_excitation_and_residuals(cls: dict[str, Path]) -> None:
    model = onnx.load(str(cls["fp32"]))
    groups = find_groups(model)
    nodes = {n.name: n for n in model.graph.node}
    prunable = [g for g in groups if g.prunable]
    assert len(prunable) >= 20
    # An inverted-residual block: expand conv and the SE expand conv produce the same channels,
    # the depthwise conv keeps them, the SE reduce conv and the projection consume them.
    se_block = next(g for g in prunable if g.depthwise and len(g.producers) == 2)
    dw = nodes[se_block.depthwise[0]]
    assert next(a.i for a in dw.attribute if a.name == "group") == se_block.channels
    assert len(se_block.consumers) == 2
    # A residual stage: every block's projection adds into the same channels.
    assert any(len(g.producers) >= 3 and not g.depthwise for g in prunable)
    # The classifier's two logits reach the graph output: never pruned, and the report says why.
    head = next(g for g in groups if any(nodes[p].op_type == "Gemm" for p in g.producers))
    assert not head.prunable and any("Softmax" in why or "graph output" in why for why in head.describe()["skipped"])


def test_cutting_dead_channels_changes_no_output(cls: dict[str, Path]) -> None:
    """Zero some channels of every prunable group where they are made (producer rows and biases,
    depthwise filters): the L1 ranking must put exactly those last, and the surgery that removes
    them (every producer, depthwise conv, consumer and reshape in the group) must leave the
    model's outputs as they were, on real samples."""
    model = onnx.load(str(cls["fp32"]))
    groups = find_groups(model)
    arrays = {i.name: numpy_helper.to_array(i).copy() for i in model.graph.initializer}
    consumer_cuts = set()
    for g in groups:
        for name in g.consumers:
            node = next(n for n in model.graph.node if n.name == name)
            consumer_cuts.add(node.input[1])
    rng = np.random.default_rng(0)
    dead: dict[int, np.ndarray] = {}
    for g in groups:
        n = removable(g.channels, 0.5)
        if not g.prunable or n == 0:
            continue
        dead[g.id] = rng.choice(g.channels, size=n, replace=False)
        for init, axis in g.slices:
            if init in consumer_cuts and (init, axis) not in g.norms:
                continue  # a consumer's input columns: the channel is dead already
            index = [slice(None)] * arrays[init].ndim
            index[axis] = dead[g.id]
            arrays[init][tuple(index)] = 0.0
    for i, init in enumerate(model.graph.initializer):
        model.graph.initializer[i].CopyFrom(numpy_helper.from_array(arrays[init.name], init.name))
    assert len(dead) >= 15

    plan = {}
    for g in groups:
        if g.id in dead:
            assert set(np.argsort(importance(model, g))[:len(dead[g.id])]) == set(dead[g.id].tolist())
            plan[g.id] = keep_indices(model, g, 0.5)
            assert not set(plan[g.id].tolist()) & set(dead[g.id].tolist())
    pruned = apply(model, groups, plan)
    onnx.checker.check_model(pruned)
    before, after = cost(model), cost(pruned)
    assert after["macs"] < 0.6 * before["macs"] and after["params"] < 0.6 * before["params"]
    want = _outputs(model, cls["calibration"])
    got = _outputs(pruned, cls["calibration"])
    assert want[0].shape == got[0].shape
    np.testing.assert_allclose(got[0], want[0], atol=1e-5)
    # A live channel cut does change the output: the comparison above can fail.
    live = apply(onnx.load(str(cls["fp32"])), groups, plan)
    assert np.abs(_outputs(live, cls["calibration"])[0] - _outputs(cls["fp32"], cls["calibration"])[0]).max() > 1e-3


def test_channels_no_consumer_reads_rank_last_by_contribution_and_go_without_a_trace(cls: dict[str, Path]) -> None:
    """The activation criterion: zero the weights that read some channels at every consumer;
    their contribution (mean |x| on calibration samples times those weights) is nil, so they
    rank last, and cutting them leaves the outputs as they were."""
    model = onnx.load(str(cls["fp32"]))
    groups = find_groups(model)
    arrays = {i.name: numpy_helper.to_array(i).copy() for i in model.graph.initializer}
    rng = np.random.default_rng(1)
    dead: dict[int, np.ndarray] = {}
    for g in groups:
        n = removable(g.channels, 0.5)
        if g.prunable and n:
            dead[g.id] = rng.choice(g.channels, size=n, replace=False)
            for init, axis in g.consumer_slices:
                index = [slice(None)] * arrays[init].ndim
                index[axis] = dead[g.id]
                arrays[init][tuple(index)] = 0.0
    for i, init in enumerate(model.graph.initializer):
        model.graph.initializer[i].CopyFrom(numpy_helper.from_array(arrays[init.name], init.name))
    # Measured on the very samples compared below: a channel that is zero on all of them (a
    # ReLU that never fires) ties with the dead ones, and cutting it is exact there too.
    activity = channel_activity(model, groups, cls["calibration"], samples=8)
    plan, clean = {}, 0
    for gid in dead:
        score = importance(model, groups[gid], activity)
        assert np.all(score[dead[gid]] == 0) and score.max() > 0
        plan[gid] = keep_indices(model, groups[gid], 0.5, activity=activity)
        assert np.all(score[plan[gid]] >= np.sort(score)[::-1][len(plan[gid]) - 1])  # the top ones are kept
        clean += not set(plan[gid].tolist()) & set(dead[gid].tolist())
    assert clean >= 12  # most groups: exactly the dead channels go
    # L1 on the producers knows nothing of it: it keeps some of the channels nobody reads.
    assert any(set(keep_indices(model, groups[gid], 0.5).tolist()) & set(dead[gid].tolist()) for gid in dead)
    np.testing.assert_allclose(_outputs(apply(model, groups, plan), cls["calibration"])[0],
                               _outputs(model, cls["calibration"])[0], atol=1e-5)


def test_a_pruned_model_loads_in_onnx_runtime_and_openvino(cls: dict[str, Path], tmp_path: Path) -> None:
    from agent.dataset import load_dataset
    from agent.engines import get_engine

    model = onnx.load(str(cls["fp32"]))
    groups = find_groups(model)
    plan = {g.id: keep_indices(model, g, 0.5) for g in groups if g.prunable and removable(g.channels, 0.5)}
    path = tmp_path / "pruned.onnx"
    onnx.save(apply(model, groups, plan), str(path))
    batch = load_dataset(str(cls["calibration"])).batch([0])
    outputs = {}
    for name in ("onnxruntime", "openvino"):
        engine = get_engine(name)
        engine.load(str(path), {"threads": 1})
        try:
            outputs[name] = engine.run({n: batch[n] for n in engine.input_names()})[0]
        finally:
            engine.close()
    assert outputs["onnxruntime"].shape == (1, 2)
    # OpenVINO's CPU kernels round differently (a few 1e-4 on the unpruned model too).
    np.testing.assert_allclose(outputs["openvino"], outputs["onnxruntime"], atol=2e-3)


def test_greedy_order_takes_the_cheapest_accuracy_first_and_stops_at_max_ratio() -> None:
    def point(ratio: float, acc: float, macs: int) -> dict:
        return {"ratio": ratio, "keep": 0, "accuracy": acc, "macs_saved": macs, "params_saved": 0}

    table = [
        {"group": 0, "points": [point(0.25, 0.99, 100), point(0.5, 0.90, 200), point(0.75, 0.5, 300)]},
        {"group": 1, "points": [point(0.25, 0.97, 1000), point(0.5, 0.96, 2000), point(0.75, 0.95, 3000)]},
    ]
    order = greedy_order(table, 1.0, 0.5, {"macs": 1.0})
    # Group 1 saves ten times the MACs for a few points; group 0's second step costs 10 points.
    assert [(g, i) for g, i, _ in order] == [(1, 0), (1, 1), (0, 0), (0, 1)]
    assert [round(d, 3) for _, _, d in order] == [0.03, 0.04, 0.05, 0.14]  # predicted total drops


def test_sensitivity_and_choice_meet_the_budget_on_calibration_samples(cls: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "pruned.onnx"
    budget = 0.02
    report = prune(cls["fp32"], cls["calibration"], out,
                   PruningOptions(budget=budget, finetune="off", samples=96, ratios=[0.5]))
    # The calibration set was extended with its own seed (never the evaluation seed), and the
    # drop it reports is what the written model really scores on those samples.
    extended = extend_dataset(cls["calibration"], 96, cls["fp32"], tmp_path / "check.npz")
    assert json.loads(str(np.load(extended)["__meta__"]))["source"]["seed"] == CALIBRATION_SEED
    assert report["samples"] == 96
    assert report["fp32_accuracy_on_calibration"] == accuracy(cls["fp32"], extended)
    assert report["accuracy_on_calibration"] == accuracy(out, extended)
    assert report["met_budget"] and report["drop_on_calibration"] <= budget
    assert report["pruned"] and report["macs_after"] < report["macs_before"]
    assert report["size_after"] == out.stat().st_size < report["size_before"]
    # Every prunable group was measured; the skipped ones say why.
    assert len(report["sensitivity"]) >= 15 and all(r["points"][0]["ratio"] == 0.5 for r in report["sensitivity"])
    assert report["skipped"] and all(s["skipped"] for s in report["skipped"])
    # The choice is the greedy's: no chosen group is one the measurements call worst.
    worst = min(report["sensitivity"], key=lambda r: r["points"][0]["accuracy"])
    assert worst["group"] not in {p["group"] for p in report["pruned"]}


def test_bad_options_are_refused(cls: dict[str, Path], tmp_path: Path) -> None:
    inp = PassInput(cls["fp32"], cls["fp32"], cls["calibration"], budget=0.01)
    with pytest.raises(ValueError, match="max_ratio"):
        run_pass("pruned", inp, tmp_path / "x.onnx", {"max_ratio": 1.5})
    with pytest.raises(ValueError, match="finetune"):
        run_pass("pruned", inp, tmp_path / "x.onnx", {"finetune": "sometimes"})
    assert not (tmp_path / "x.onnx").exists()


# --- training --------------------------------------------------------------------------------


@needs_torch
def test_the_torch_interpreter_runs_the_graph_as_onnx_runtime_does(cls: dict[str, Path]) -> None:
    import torch

    from agent.dataset import load_dataset

    model = onnx.load(str(cls["fp32"]))
    groups = find_groups(model)
    pruned = apply(model, groups, {g.id: keep_indices(model, g, 0.25) for g in groups
                                   if g.prunable and removable(g.channels, 0.25)})
    module = build_module(pruned)
    batch = load_dataset(str(cls["calibration"])).batch(list(range(4)))
    with torch.no_grad():
        got = module({"x": torch.from_numpy(batch["x"])}, [pruned.graph.output[0].name])
    want = _outputs(pruned, cls["calibration"], 4)[0]
    np.testing.assert_allclose(got[pruned.graph.output[0].name].numpy(), want, atol=1e-5)
    # Written back unchanged, the weights give the same model.
    back = module.write_back().graph.initializer
    assert [i.name for i in back] == [i.name for i in pruned.graph.initializer]
    for a, b in zip(back, pruned.graph.initializer):
        np.testing.assert_array_equal(numpy_helper.to_array(a), numpy_helper.to_array(b))


def _digits(tmp: Path) -> dict[str, Path]:
    """The digits MLP (fused), its training split, and its test split cut into calibration
    (first 150) and evaluation (the other 300) samples."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits_mlp(tmp / "source.onnx")
    run_pass("fp32", PassInput(tmp / "source.onnx", None, None), tmp / "fp32.onnx")
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=0.25, random_state=0)  # as digits_mlp splits
    paths = {"fp32": tmp / "fp32.onnx"}
    for name, xs, ys in (("train", xtr, ytr), ("calibration", xte[:150], yte[:150]), ("eval", xte[150:], yte[150:])):
        paths[name] = tmp / f"{name}.npz"
        write_npz(paths[name], {"task": "cls", "count": len(xs), "inputs": {"pixels": {"normalize": None}}, "params": {}},
                   {"input:pixels": xs, "label": ys.astype(np.int64)})
    return paths


@needs_torch
def test_digits_pruned_past_the_budget_win_it_back_by_distillation(tmp_path: Path) -> None:
    d = _digits(tmp_path)
    out = tmp_path / "pruned.onnx"
    keep: dict = {}
    # An MLP this small, pruned this far, relearns at 10x the default rate (which suits the
    # pretrained PaddleOCR models).
    report = prune(d["fp32"], d["calibration"], out,
                   PruningOptions(budget=0.01, round_to=4, target_params=0.6, epochs=30, lr=1e-2,
                                  ratios=[0.25, 0.5, 0.625, 0.75]),
                   train=d["train"], keep=keep)
    fp32 = accuracy(d["fp32"], d["eval"])
    untrained = accuracy(keep["untrained"], d["eval"])
    tuned = accuracy(out, d["eval"])
    assert report["finetuned"] and report["met_budget"]
    assert report["pruned"] == [{"group": 0, "channels": 64, "kept": 24, "producers": ["Gemm#0"]}]
    assert report["params_after"] * 2.5 < report["params_before"]
    assert report["size_after"] * 2 < report["size_before"]  # the seed's "over 2x smaller"
    # Surgery alone this far loses far more than a point; training wins it back on samples it
    # never saw (the evaluation split), to within the seed's 1%.
    assert untrained < fp32 - 0.1
    assert tuned >= fp32 - 0.01, (fp32, untrained, tuned)
    train = report["finetune"]["attempts"][-1]["train"]
    assert train["distill"] and train["labels"] and train["loss"][-1] < train["loss"][0]


@needs_torch
def test_finetuning_without_labels_distills_alone_and_without_distillation_needs_labels(tmp_path: Path) -> None:
    d = _digits(tmp_path)
    model = onnx.load(str(d["fp32"]))
    groups = find_groups(model)
    student = apply(model, groups, {0: keep_indices(model, groups[0], 0.75, 4)})
    # Only inputs (the "seeded" agreement kind has no labels): distillation is the whole loss.
    with np.load(d["train"]) as npz:
        arrays = {"input:pixels": npz["input:pixels"]}
    unlabelled = tmp_path / "unlabelled.npz"
    write_npz(unlabelled, {"task": "agreement", "count": len(arrays["input:pixels"]),
                            "inputs": {"pixels": {"normalize": None}}, "params": {}}, arrays)
    tuned, report = training.finetune(model, student, unlabelled, PruningOptions(epochs=20, lr=1e-2))
    assert not report["labels"] and report["distill"]
    assert accuracy(tuned, d["eval"]) > accuracy(student, d["eval"]) + 0.1
    with pytest.raises(FinetuneUnsupported, match="no labels"):
        training.finetune(model, student, unlabelled, PruningOptions(distill=False))
    # A run that cannot finish in its time limit is planned to end there, not cut off.
    _, short = training.finetune(model, student, unlabelled, PruningOptions(epochs=500, max_seconds=1.0))
    assert short["shortened"] and short["steps"] < 500 * (1347 // 32) and short["seconds"] < 3.0


@needs_torch
def test_fine_tuning_keeps_a_model_whose_weight_scales_lie_orders_of_magnitude_apart(tmp_path: Path) -> None:
    d = _digits(tmp_path)
    teacher = onnx.load(str(d["fp32"]))
    # The same function with its first layer 1e-4 smaller and its second 1e4 larger (ReLU
    # commutes with a positive scale), as batch-norm folding leaves the PaddleOCR detector.
    student = onnx.load(str(d["fp32"]))
    scale = {"w1": 1e-4, "b1": 1e-4, "w2": 1e4}
    for init in student.graph.initializer:
        init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * np.float32(scale.get(init.name, 1.0)),
                                              init.name))
    fp32 = accuracy(teacher, d["eval"])
    assert accuracy(student, d["eval"]) == fp32
    # Trained against the teacher it already equals, it must stay put: one absolute learning
    # rate would move the small layer by several times its own scale in the first steps.
    tuned, _ = training.finetune(teacher, student, d["train"], PruningOptions(epochs=4))
    assert accuracy(tuned, d["eval"]) >= fp32 - 0.01


def _sequence_model(w: np.ndarray) -> onnx.ModelProto:
    """x (N, 8, 12) -> MatMul -> Flatten(axis 2) -> Softmax -> Reshape back to (N, 8, 10): a
    per-step softmax written as exporters write a 3-D one (PP-OCR's recogniser ends this way)."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["logits"]),
         helper.make_node("Flatten", ["logits"], ["flat"], axis=2),
         helper.make_node("Softmax", ["flat"], ["p"], axis=-1),
         helper.make_node("Reshape", ["p", "shape"], ["probs"])],
        "seq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8, 12])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", 8, 10])],
        [numpy_helper.from_array(w.astype(np.float32), "w"),
         numpy_helper.from_array(np.array([-1, 8, 10], dtype=np.int64), "shape")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


@needs_torch
def test_distillation_reads_a_softmax_behind_a_reshape_and_pulls_the_student_to_the_teacher(tmp_path: Path) -> None:
    import onnxruntime as ort

    rng = np.random.default_rng(0)
    w = rng.standard_normal((12, 10)) * 2
    teacher, student = _sequence_model(w), _sequence_model(w + rng.standard_normal(w.shape) * 2)
    (head,) = losses.heads(student)
    assert head == {"output": 0, "tensor": "flat", "kind": "softmax", "axis": -1}
    x = rng.standard_normal((512, 8, 12)).astype(np.float32)
    data = tmp_path / "train.npz"
    write_npz(data, {"task": "agreement", "count": len(x), "inputs": {"x": {"normalize": None}}, "params": {}},
               {"input:x": x})

    def agreement(model: onnx.ModelProto) -> float:
        run = [ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
               for m in (teacher, model)]
        return float((run[0].argmax(-1) == run[1].argmax(-1)).mean())

    tuned, report = training.finetune(teacher, student, data, PruningOptions(epochs=60, lr=5e-2))
    assert report["loss"][-1] < 0.2 * report["loss"][0]
    assert agreement(student) < 0.6 and agreement(tuned) > 0.9, (agreement(student), agreement(tuned))


@needs_torch
@pytest.mark.slow
def test_the_pruned_variant_fine_tunes_the_ppocr_classifier(cls: dict[str, Path], tmp_path: Path) -> None:
    """The pass end to end on the PaddleOCR classifier, with a small training run: pruned past
    what surgery alone keeps within the budget, trained on rendered lines with distillation."""
    out = tmp_path / "pruned.onnx"
    meta = run_pass("pruned", PassInput(cls["fp32"], cls["fp32"], cls["calibration"]), out,
                    {"budget": 0.02, "samples": 128, "ratios": [0.5], "target_flops": 0.3,
                     "train_samples": 768, "epochs": 2, "attempts": 1})
    report = meta["pruning"]
    attempt = report["finetune"]["attempts"][0]
    assert attempt["macs"] <= 0.7 * report["macs_before"]
    assert report["surgery_only"]["steps"] < attempt["steps"]
    # Whatever the outcome, the written model is the one the report describes.
    assert report["accuracy_on_calibration"] == accuracy(out, extend_dataset(
        cls["calibration"], 128, cls["fp32"], tmp_path / "check.npz"))
    assert meta["ops"]["Conv"] == 53
    assert accuracy(out, cls["eval"]) >= accuracy(cls["fp32"], cls["eval"]) - 0.05


def test_the_activation_count_is_what_onnx_runtime_computes_and_sizes_the_training_batch(
        cls: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    import onnxruntime as ort

    model = onnx.load(str(cls["fp32"]))
    every = onnx.load(str(cls["fp32"]))
    known = {o.name for o in every.graph.output}
    every.graph.output.extend(onnx.ValueInfoProto(name=o) for n in every.graph.node for o in n.output
                              if o not in known)
    session = ort.InferenceSession(every.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.zeros((1, 3, 48, 192), np.float32)
    assert cost(model)["activations"] == sum(o.size for o in session.run(None, {"x": x}))

    assert training.batch_size(model) == training.BATCH  # 48x192 inputs: a full batch fits
    monkeypatch.setattr(training, "ACTIVATION_BYTES", 10 * 4 * cost(model)["activations"])
    assert training.batch_size(model) == 10
    monkeypatch.setattr(training, "ACTIVATION_BYTES", 1)
    assert training.batch_size(model) == 1


@pytest.mark.parametrize("which, shape, reason", [
    ("det", [1, 3, 640, 640], "concatenated along channels"),  # the FPN joins four scales
    ("rec", [1, 3, 48, 320], "moves channels to another axis"),  # the backbone's map becomes a sequence
])
def test_det_and_rec_groups_can_all_be_cut_and_still_run(which: str, shape: list[int], reason: str,
                                                         tmp_path: Path) -> None:
    import onnxruntime as ort

    source = prepare(ocr_model(which), which, {"x": shape}, tmp_path / "source.onnx").path
    run_pass("fp32", PassInput(source, None, None), tmp_path / "fp32.onnx")
    model = onnx.load(str(tmp_path / "fp32.onnx"))
    groups = find_groups(model)
    plan = {g.id: keep_indices(model, g, 0.25) for g in groups if g.prunable and removable(g.channels, 0.25)}
    assert len(plan) >= 15
    assert any(reason in why for g in groups for why in g.blocked)
    pruned = apply(model, groups, plan)
    onnx.checker.check_model(pruned)
    assert cost(pruned)["macs"] < 0.8 * cost(model)["macs"]
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    got = ort.InferenceSession(pruned.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    assert [o.shape for o in got] == [o.shape for o in want]
