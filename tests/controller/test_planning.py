"""Planning a run, tested as the pure functions it is: no Ray, no database, no board."""

from __future__ import annotations

from pathlib import Path

from controller.build.compile import Artifact, ConvertRequest, ModelBuild
from controller.build.source import ModelInput, Prepared
from controller.config.inventory import BoardSpec
from controller.config.spec import Spec
from controller.run.planning import attach_conversion, conversions, job_files, job_payload, plan_board, thread_sweep


def _spec(**keys: object) -> Spec:
    return Spec(name="s", models=[{"name": "m", "path": "m.onnx"}], **keys)


def _build(spec: Spec, failures: dict[str, str] | None = None) -> ModelBuild:
    art = Artifact(Path("/cache/m.onnx"), "a" * 64, 10, {})
    prepared = Prepared(Path("/cache/src.onnx"), "b" * 64, (ModelInput("x", (1, 3, 8, 8), "float32"),), ("y",), 13)
    build = ModelBuild(spec.models[0], prepared, "raw", dataset=art, inputs=art,
                       variants={v: Artifact(Path(f"/cache/{v}.onnx"), v[0] * 64, 10, {}) for v in spec.variants})
    build.failures.update(failures or {})
    return build


def _probe(**engines: dict[str, object]) -> dict[str, object]:
    return {"fingerprint": {"arch": "x86_64"}, "engines": engines}


def test_a_thread_sweep_makes_one_configuration_per_count() -> None:
    spec = _spec(measure={"threads": [2, 1, 2]})
    assert spec.measure.threads == [1, 2]
    configs = thread_sweep(spec, {}, [("fp32", {"precision": "fp32"})])
    assert configs == [("fp32/t1", {"precision": "fp32", "threads": 1}), ("fp32/t2", {"precision": "fp32", "threads": 2})]
    # The spec fixing an engine's threads wins over the sweep.
    assert thread_sweep(spec, {"threads": 4}, [("fp32", {"threads": 4})]) == [("fp32", {"threads": 4})]


def test_each_variant_and_engine_is_a_job_and_openvino_measures_its_bf16_default_too() -> None:
    spec = _spec(variants=["fp32", "int8"], engines=["onnxruntime", "openvino"])
    ok = {"available": True}
    plan = plan_board(BoardSpec(name="b"), _probe(onnxruntime=ok, openvino={**ok, "default_precision": "bf16"}),
                      [_build(spec)], spec)
    labels = {(p.variant, p.engine, p.label): p.options for p in plan}
    assert set(labels) == {("fp32", "onnxruntime", "fp32"), ("int8", "onnxruntime", "int8"),
                           ("fp32", "openvino", "fp32"), ("fp32", "openvino", "fp32@bf16"), ("int8", "openvino", "int8")}
    assert labels[("fp32", "openvino", "fp32")]["precision"] == "fp32"  # pinned, so the default is its own row
    assert labels[("fp32", "openvino", "fp32@bf16")]["precision"] is None
    assert labels[("int8", "onnxruntime", "int8")]["model_precision"] == "int8"
    assert all(p.failure is None for p in plan)
    # Where OpenVINO's default is f32 there is nothing extra to measure.
    plan = plan_board(BoardSpec(name="b"), _probe(openvino={**ok, "default_precision": "fp32"}), [_build(spec)],
                      _spec(variants=["fp32"], engines=["openvino"]))
    assert [p.label for p in plan] == ["fp32"]


def test_a_missing_engine_or_a_failed_variant_is_a_planned_failure_and_the_board_limits_engines() -> None:
    spec = _spec(variants=["fp32", "fp16"], engines=["onnxruntime", "openvino"])
    build = _build(spec, failures={"fp16": "boom"})
    plan = plan_board(BoardSpec(name="b", cpus=[0, 1]), _probe(onnxruntime={"available": True},
                                                           openvino={"available": False, "reason": "no wheel"}),
                      [build], spec)
    failures = {(p.variant, p.engine): p.failure for p in plan}
    assert failures[("fp32", "onnxruntime")] is None
    assert failures[("fp16", "onnxruntime")] == ("convert", "variant fp16 did not compile: boom")
    assert failures[("fp32", "openvino")] == ("load", "engine openvino is not available on board b: no wheel")
    assert all(p.options["threads"] == 2 for p in plan)  # pinned to two cores: two threads
    only = plan_board(BoardSpec(name="b", engines=["onnxruntime"]), _probe(onnxruntime={"available": True}), [build], spec)
    assert {p.engine for p in only} == {"onnxruntime"}


def test_an_engine_with_its_own_format_waits_for_its_conversion() -> None:
    spec = _spec(variants=["fp32"], engines=["onnxruntime", "ncnn"])
    plan = plan_board(BoardSpec(name="b"), _probe(onnxruntime={"available": True}, ncnn={"available": True}),
                      [_build(spec)], spec)
    wanted = conversions(plan)
    assert list(wanted) == [ConvertRequest("m", "fp32", "ncnn", "cpu")]
    converted = Artifact(Path("/cache/m.tar"), "c" * 64, 5, {})
    (ncnn,) = jobs = wanted[ConvertRequest("m", "fp32", "ncnn", "cpu")]
    attach_conversion(jobs, Artifact(Path(), "", 0, {"error": "ncnn2int8 not found"}))
    assert ncnn.failure == ("convert", "ncnn conversion (cpu) of fp32 failed: ncnn2int8 not found")
    ncnn.failure = None
    attach_conversion(jobs, converted)
    assert ncnn.artifact == converted and job_files(ncnn)["model"] == (converted.path, converted.sha256)
    ncnn.row_id = 7
    payload = job_payload(ncnn, spec)
    assert payload["job_id"] == "job-7" and payload["engine"]["name"] == "ncnn"
    assert payload["native"]["input_shape"] == [1, 3, 8, 8]
