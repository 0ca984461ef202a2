"""Bad input that `edgefarm run` finds only once it runs: refused in one line, and no run row.

The spec and the inventory parse (tests/controller/test_bad_input_files.py refuses those that do
not); what is wrong here is found by the run itself: a model ONNX Runtime cannot run, a dataset
that cannot be made for its model, a shape the model contradicts, a ``--resume`` that cannot be.
Each was found after the run's row was written (a ``failed`` run left behind) or after Ray
started; now every one is refused before either (controller/run/execute.py says the order), so
each case is a fresh process that exits 2 with one line, leaves a real database as it was, and
starts no Ray.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from controller.errors import ModelError
from tests.refusal import Case, Snapshot, assert_refused, real_database


def _model(path: Path, nodes: list[Any], inputs: list[Any], outputs: list[Any], inits: tuple[Any, ...] = (),
           opset: int = 13, domains: tuple[str, ...] = (), meta: dict[str, str] | None = None) -> None:
    import onnx
    from onnx import helper

    graph = helper.make_graph(nodes, "m", inputs, outputs, list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset),
                                                    *(helper.make_opsetid(d, 1) for d in domains)])
    model.ir_version = 8
    for key, value in (meta or {}).items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, str(path))


def _spec(path: Path, model: str, kind: str = "seeded", inputs: dict[str, Any] | None = None) -> None:
    entry: dict[str, Any] = {"name": "m", "path": model, "dataset": {"kind": kind, "samples": 4}}
    if inputs:
        entry["inputs"] = inputs
    path.write_text(yaml.safe_dump({"name": "bad-input", "models": [entry], "variants": ["fp32"],
                                    "engines": ["onnxruntime"], "boards": ["local"]}))


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The models and specs of every case, and a real release's database (upgraded) they run against."""
    from onnx import TensorProto, helper, numpy_helper

    d = tmp_path_factory.mktemp("bad-run")
    value, f32 = helper.make_tensor_value_info, TensorProto.FLOAT

    def relu(name: str, shape: list[Any], **kw: Any) -> None:
        _model(d / name, [helper.make_node("Relu", ["x"], ["y"])], [value("x", f32, shape)], [value("y", f32, shape)], **kw)

    relu("tiny.onnx", [1, 8])
    relu("line.onnx", [1, 3, 48, 320])
    relu("charset.onnx", [1, 3, 48, 320], meta={"character": "a\nb\nc"})
    relu("small.onnx", [1, 3, 32, 32])
    relu("opset99.onnx", [1, 8], opset=99)
    _model(d / "custom.onnx", [helper.make_node("Frobnicate", ["x"], ["y"], domain="com.example")],
           [value("x", f32, [1, 8])], [value("y", f32, [1, 8])], domains=("com.example",))
    _model(d / "two.onnx", [helper.make_node("Add", ["x", "z"], ["y"])],
           [value("x", f32, [1, 3, 48, 192]), value("z", f32, [1, 3, 48, 192])], [value("y", f32, [1, 3, 48, 192])])
    _model(d / "reshape.onnx", [helper.make_node("Reshape", ["x", "s"], ["y"])], [value("x", f32, [1, 8])],
           [value("y", f32, [3, 5])], (numpy_helper.from_array(np.array([3, 5], np.int64), "s"),))
    _model(d / "no-inputs.onnx", [helper.make_node("Relu", ["c"], ["y"])], [], [value("y", f32, [1, 8])],
           (numpy_helper.from_array(np.ones((1, 8), np.float32), "c"),))
    _model(d / "strings.onnx", [helper.make_node("Identity", ["x"], ["y"])], [value("x", TensorProto.STRING, [1, 2])],
           [value("y", TensorProto.STRING, [1, 2])])

    _spec(d / "ok.yaml", "tiny.onnx")
    _spec(d / "rec-no-charset.yaml", "line.onnx", "ocr-rec")
    _spec(d / "rec-charset.yaml", "charset.onnx", "ocr-rec")
    _spec(d / "det-small.yaml", "small.onnx", "ocr-det")
    _spec(d / "cls-two.yaml", "two.onnx", "ocr-cls")
    _spec(d / "custom-op.yaml", "custom.onnx")
    _spec(d / "reshape.yaml", "reshape.onnx")
    _spec(d / "no-inputs.yaml", "no-inputs.onnx")
    _spec(d / "opset99.yaml", "opset99.onnx")
    _spec(d / "strings.yaml", "strings.onnx")
    _spec(d / "dim.yaml", "tiny.onnx", inputs={"x": {"shape": [1, 16]}})
    _spec(d / "pkg-file.yaml", "pkg:onnx/no/such.onnx")
    real_database(d)  # d / "edgefarm.db": runs 1 and 2 done (spec ppocr-nightly), run 3 interrupted
    return d


DB = ("--db", "sqlite:///edgefarm.db")  # relative: the cases run in the folder

CASES = [
    # a dataset the run cannot make for its model
    Case("dataset-rec-model-without-charset", ("run", "rec-no-charset.yaml", *DB),
         ("rec-no-charset.yaml", "model m", "dataset ocr-rec", "no 'character' metadata")),
    Case("dataset-rec-charset-without-ascii", ("run", "rec-charset.yaml", *DB),
         ("rec-charset.yaml", "dataset ocr-rec", "charset lacks 'defghijk")),
    Case("dataset-det-image-too-small", ("run", "det-small.yaml", *DB),
         ("det-small.yaml", "dataset ocr-det", "height >= 128", "[1, 3, 32, 32]")),
    Case("dataset-ocr-two-image-inputs", ("run", "cls-two.yaml", *DB),
         ("cls-two.yaml", "dataset ocr-cls", "the model has 2: ['x', 'z']")),
    Case("dataset-seeded-unknown-operator", ("run", "custom-op.yaml", *DB),
         ("custom-op.yaml", "dataset seeded", "custom.onnx", "com.example:Frobnicate")),
    Case("dataset-seeded-model-fails-when-run", ("run", "reshape.yaml", *DB),
         ("reshape.yaml", "dataset seeded", "cannot be reshaped", "requested shape:{3,5}")),
    Case("dataset-seeded-model-without-inputs", ("run", "no-inputs.yaml", *DB),
         ("no-inputs.yaml", "model m", "seeded needs at least one input")),
    # a model, or the spec's word about it, that the run finds wrong
    Case("model-opset-unreleased", ("run", "opset99.yaml", *DB), ("opset99.yaml", "opset99.onnx", "Opset 99")),
    Case("model-input-of-strings", ("run", "strings.yaml", *DB),
         ("strings.yaml", "model m", "input 'x'", "unsupported element type")),
    Case("spec-input-contradicts-model", ("run", "dim.yaml", *DB),
         ("dim.yaml", "model m", "input 'x' dim 1 is 8 in the model, not 16")),
    Case("pkg-file-not-in-package", ("run", "pkg-file.yaml", *DB),
         ("pkg-file.yaml", "model m", "model file not found", "onnx/no/such.onnx")),
    # --resume
    Case("resume-unknown-run", ("run", "--resume", "999", *DB), ("--resume 999", "there is no run 999")),
    Case("resume-unknown-run-with-spec", ("run", "ok.yaml", "--resume", "999", *DB), ("--resume 999", "no run 999")),
    Case("resume-another-spec", ("run", "ok.yaml", "--resume", "1", *DB),
         ("--resume 1", "run 1 was made from another spec (ppocr-nightly)")),
    Case("resume-finished-run", ("run", "--resume", "1", *DB), ("--resume 1", "run 1 finished", "nothing to resume")),
    Case("resume-stored-spec-unreadable", ("run", "--resume", "3", *DB), ("run 3's stored spec", "models")),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_a_run_refused_leaves_the_database_as_it_was(case: Case, folder: Path) -> None:
    assert_refused(case, folder, folder / "edgefarm.db")


def test_resuming_in_a_database_that_is_not_there_makes_none(folder: Path) -> None:
    case = Case("resume-database-missing", ("run", "ok.yaml", "--resume", "1", "--db", "sqlite:///missing.db"),
                ("--resume 1", "there is no run 1", "missing.db", "does not exist"))
    assert_refused(case, folder)
    assert not (folder / "missing.db").exists()


def test_an_error_found_while_building_leaves_no_run_row_and_no_new_database(
        folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """What only the whole build finds (a dataset whose later samples fail, in a Ray task) is still
    found before the run's row is written: the row comes after the build, the boards and the plan."""
    from controller.cli import main
    from controller.run import execute

    def fails(*_args: Any, **_kw: Any) -> None:
        raise ModelError("ok.yaml: model m: dataset seeded: sample 3 cannot be made")

    monkeypatch.setattr(execute, "ensure_ray", lambda _address: None)
    monkeypatch.setattr(execute, "build_all", fails)
    monkeypatch.setenv("EDGEFARM_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(folder)
    before = Snapshot.of(folder / "edgefarm.db")
    assert main(["run", "ok.yaml", *DB]) == 2
    assert Snapshot.of(folder / "edgefarm.db") == before
    assert main(["run", "ok.yaml", "--db", f"sqlite:///{tmp_path / 'new.db'}"]) == 2
    assert not (tmp_path / "new.db").exists()
    assert capsys.readouterr().err.count("edgefarm: error: ok.yaml: model m: dataset seeded: sample 3") == 2
