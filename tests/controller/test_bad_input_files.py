"""Files that are not what they claim, refused in one line: specs, inventories, YAML, encodings,
ONNX models (external data too), datasets, and the ``--model`` flags that stand in for a spec.

Each case runs ``edgefarm run``, ``edgefarm nightly`` or ``edgefarm boards --inventory`` in a fresh
process against a copy of a real release's database and asserts the contract of
``tests/refusal.py``: exit 2, one line naming file, key (or flag) and value, no traceback, and the
database unchanged (no run row). Every file a case reads is made by ``lab`` below.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import onnx
import pytest
import yaml
from onnx import TensorProto, helper, numpy_helper

from tests.refusal import Case, assert_refused, real_database

DB = "{db}"  # replaced by the database copy's path when a case runs


def run(*argv: str) -> tuple[str, ...]:
    return ("run", *argv, "--db", f"sqlite:///{DB}")


def nightly(spec: str, *argv: str) -> tuple[str, ...]:
    return ("nightly", spec, "--report", "report", *argv, "--db", f"sqlite:///{DB}")


def boards(inventory: str) -> tuple[str, ...]:
    return ("boards", "--inventory", inventory, "--db", f"sqlite:///{DB}")


# -- the files ------------------------------------------------------------------------------------

def _model() -> onnx.ModelProto:
    """y = x @ W, x float [1, 4], W a 4x4 initializer (64 bytes): the smallest model with weights."""
    w = numpy_helper.from_array(np.arange(16, dtype=np.float32).reshape(4, 4), "W")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], [w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def _external(folder: Path, **edit: str) -> Path:
    """The model saved with its weights in ``w.bin`` beside it; ``edit`` rewrites external data
    entries (``location``, ``length``) in the saved model, as a hand or a broken tool would."""
    folder.mkdir(parents=True)
    path = folder / "m.onnx"
    onnx.save_model(_model(), str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="w.bin", size_threshold=0)
    if edit:
        model = onnx.load(str(path), load_external_data=False)
        for entry in model.graph.initializer[0].external_data:
            entry.value = edit.get(entry.key, entry.value)
        onnx.save(model, str(path))
    return path


def _spec(path: str = "models/ok.onnx", model: dict | None = None, **top: object) -> dict:
    """A small valid spec over ``path``, with ``model``'s keys in its model entry and ``top``'s at the top."""
    entry = {"name": "m", "path": path, **(model or {})}
    return {"name": "t", "models": [entry], "variants": ["fp32"], "engines": ["onnxruntime"], **top}


SPECS: dict[str, object] = {
    # YAML the safe loader would take silently, or not at all
    "dup-top.yaml": "name: t\nname: u\nmodels: [{name: m, path: models/ok.onnx}]\n",
    "dup-nested.yaml": "name: t\nmodels:\n  - name: m\n    path: models/ok.onnx\n    path: models/other.onnx\n",
    "dup-flow.yaml": "name: t\nmodels: [{name: m, path: models/ok.onnx}]\nmeasure: {warmup: 1, warmup: 2}\n",
    "tag-python.yaml": "name: !!python/object/apply:os.system ['true']\nmodels: []\n",
    "tag-binary.yaml": "name: t\nmodels:\n  - name: m\n    path: !!binary bW9kZWxzL29rLm9ubng=\n",
    "tag-local.yaml": "name: t\nmodels: !models [{name: m, path: models/ok.onnx}]\n",
    "syntax.yaml": "name: t\nmodels: : bad\n",
    "unclosed.yaml": "name: t\nmodels: [{name: m, path: models/ok.onnx}\nvariants: [fp32]\n",
    "list.yaml": "- name: t\n- models: []\n",
    "scalar.yaml": "just some words\n",
    "empty.yaml": "",
    "two-docs.yaml": "name: t\nmodels: [{name: m, path: models/ok.onnx}]\n---\nname: u\n",
    "deep.yaml": "name: t\nmodels: " + "[" * 2000 + "]" * 2000 + "\n",
    "date-name.yaml": "name: 2024-01-01\nmodels: [{name: m, path: models/ok.onnx}]\n",
    # encodings
    "latin1.yaml": "name: caf\xe9\nmodels: [{name: m, path: models/ok.onnx}]\n".encode("latin-1"),
    "utf16.yaml": "name: t\nmodels: [{name: m, path: models/ok.onnx}]\n".encode("utf-16"),
    "junk.yaml": b"\x7fELF\x02\x01\x01\x00" + bytes(range(256)),
    "bell.yaml": b"name: t\x07\nmodels: [{name: m, path: models/ok.onnx}]\n",
    "big.yaml": b"# padding\n" * (450 * 1024),
    # keys and values
    "unknown-key.yaml": _spec(colour="blue"),
    "typo-key.yaml": {"name": "t", "models": [{"name": "m", "pth": "models/ok.onnx"}]},
    "batch-sizes.yaml": _spec(measure={"batch_sizes": [0, 4]}),
    "shape-zero.yaml": _spec(model={"inputs": {"x": {"shape": [1, 0]}}}),
    "nested-option.yaml": _spec(model={"pruning": {"lr": "fast"}}),
    "engine-option-list.yaml": _spec(engines=[{"name": "onnxruntime", "options": {"threads": [1, 2]}}]),
    "infinite.yaml": "name: t\nmodels: [{name: m, path: models/ok.onnx}]\nmeasure: {max_seconds: .inf}\n",
    "no-path.yaml": {"name": "t", "models": [{"name": "m"}]},
    "unknown-engine.yaml": _spec(engines=["onnxruntime", "tensorrtx"]),
    "unknown-variant.yaml": _spec(variants=["fp32", "fp8"]),
    "unsafe-name.yaml": _spec(model={"name": "../etc"}),
    "board-missing.yaml": _spec(boards=["jetson-9"]),
    "board-twice.yaml": _spec(boards=["local", "local"]),
    "engine-twice.yaml": _spec(engines=["onnxruntime", {"name": "onnxruntime", "options": {"threads": 2}}]),
    "pkg-missing.yaml": _spec("pkg:no_such_package_here/m.onnx"),
    # datasets
    "samples-word.yaml": _spec(model={"dataset": {"samples": "many"}}),
    "samples-fraction.yaml": _spec(model={"dataset": {"samples": 2.5}}),
    "samples-bool.yaml": _spec(model={"dataset": {"samples": True}}),
    "samples-zero.yaml": _spec(model={"dataset": {"samples": 0}}),
    "dataset-kind.yaml": _spec(model={"dataset": {"kind": "imagenet"}}),
    "dataset-misfit.yaml": _spec(model={"dataset": {"kind": "ocr-det"}}),
    # models
    "model-missing.yaml": _spec("models/nope.onnx"),
    "model-folder.yaml": _spec("models/folder.onnx"),
    "model-notes.yaml": _spec("models/notes.onnx"),
    "model-truncated.yaml": _spec("models/truncated.onnx"),
    "model-empty.yaml": _spec("models/empty.onnx"),
    "model-dangling.yaml": _spec("models/dangling.onnx"),
    "ext-missing.yaml": _spec("models/ext-missing/m.onnx"),
    "ext-parent.yaml": _spec("models/ext-parent/m.onnx"),
    "ext-absolute.yaml": _spec("models/ext-absolute/m.onnx"),
    "ext-symlink.yaml": _spec("models/ext-symlink/m.onnx"),
    "ext-short.yaml": _spec("models/ext-short/m.onnx"),
    "ext-length.yaml": _spec("models/ext-length/m.onnx"),
    "ext-folder.yaml": _spec("models/ext-folder/m.onnx"),
    "ok.yaml": _spec(),
}

BOARD = {"name": "b1"}
INVENTORIES: dict[str, object] = {
    "inv-ok.yaml": {"boards": [BOARD]},
    "inv-engine.yaml": {"boards": [{**BOARD, "engines": ["onnxruntime", "tensorrtx"]}]},
    "inv-engine-python.yaml": {"boards": [{**BOARD, "engine_python": {"paddle-lite": "/opt/lite/bin/python3"}}]},
    "inv-engine-options.yaml": {"boards": [{**BOARD, "engine_options": {"onnx-runtime": {"threads": 2}}}]},
    "inv-native-engine.yaml": {"boards": [{**BOARD, "native": {"tensorflow": {"tool": "benchmark_model",
                                                                              "binary": "bin/benchmark_model"}}}]},
    "inv-native-tool.yaml": {"boards": [{**BOARD, "native": {"ncnn": {"tool": "benchncnn2", "binary": "b"}}}]},
    "inv-transport.yaml": {"boards": [{**BOARD, "transport": "carrier-pigeon"}]},
    "inv-chip-empty.yaml": {"boards": [{**BOARD, "chip": ""}]},
    "inv-chip-long.yaml": {"boards": [{**BOARD, "chip": "rk3588 " * 30}]},
    "inv-chip-newline.yaml": {"boards": [{**BOARD, "chip": "rk3588\nrk3399"}]},
    "inv-option-nan.yaml": "boards:\n  - name: b1\n    engine_options: {onnxruntime: {intra_op_num_threads: .nan}}\n",
    "inv-cores.yaml": {"boards": [{**BOARD, "native": {"ncnn": {"tool": "benchncnn", "binary": "b", "cores": "middle"}}}]},
    "inv-typo-key.yaml": {"boards": [{**BOARD, "transprt": "ssh"}]},
    "inv-ssh-port.yaml": {"boards": [{**BOARD, "transport": "ssh", "ssh": {"host": "h", "user": "u", "port": "twenty-two"}}]},
    "inv-ssh-host.yaml": {"boards": [{**BOARD, "transport": "ssh", "ssh": {"host": "", "user": "u"}}]},
    "inv-no-boards.yaml": {"boards": []},
    "inv-dup-key.yaml": "boards:\n  - name: b1\n    chip: rk3588\n    chip: rk3399\n",
    "inv-list.yaml": "- name: b1\n",
    "inv-latin1.yaml": "boards:\n  - name: b1\n    chip: r\xe9k\n".encode("latin-1"),
    "inv-tag.yaml": "boards:\n  - !!python/name:os.system\n",
}


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with every file the cases name, a workspace, and a copy of a real database."""
    root = tmp_path_factory.mktemp("bad-files")
    models = root / "models"
    models.mkdir()
    onnx.save(_model(), str(models / "ok.onnx"))
    (models / "folder.onnx").mkdir()
    (models / "notes.onnx").write_text("these are my notes, not a model\n" * 20)
    (models / "truncated.onnx").write_bytes((models / "ok.onnx").read_bytes()[:60])
    (models / "empty.onnx").write_bytes(b"")
    dangling = _model()
    dangling.graph.node[0].input[1] = "no_such_weight"
    onnx.save(dangling, str(models / "dangling.onnx"))
    (models / "outside.bin").write_bytes(np.arange(16, dtype=np.float32).tobytes())
    (_external(models / "ext-missing").parent / "w.bin").unlink()
    _external(models / "ext-parent", location="../outside.bin")
    _external(models / "ext-absolute", location=str(models / "outside.bin"))
    (_external(models / "ext-symlink").parent / "w.bin").unlink()
    (models / "ext-symlink" / "w.bin").symlink_to(models / "outside.bin")
    short = _external(models / "ext-short").parent / "w.bin"
    short.write_bytes(short.read_bytes()[:20])
    _external(models / "ext-length", length="32")
    _external(models / "ext-folder", location="sub")
    (models / "ext-folder" / "sub").mkdir()
    for name, content in {**SPECS, **INVENTORIES}.items():
        path = root / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        elif isinstance(content, str):
            path.write_text(content)
        else:
            path.write_text(yaml.safe_dump(content, sort_keys=False))
    (root / "spec-folder.yaml").mkdir()
    (root / "home").mkdir()
    real_database(root)
    return root


@pytest.fixture
def in_lab(lab: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("EDGEFARM_HOME", str(lab / "home"))  # caches and work dirs stay in the lab
    for var in ("EDGEFARM_INVENTORY", "EDGEFARM_DB", "EDGEFARM_DB_AUTO_UPGRADE"):
        monkeypatch.delenv(var, raising=False)
    return lab


# -- the cases ------------------------------------------------------------------------------------

CASES = [
    # YAML: what PyYAML takes silently (a key twice, tags, an implicit date) or with a traceback
    Case("yaml-duplicate-key", run("dup-top.yaml"), ("dup-top.yaml:2:1", "'name'", "given twice", "line 1")),
    Case("yaml-duplicate-nested-key", run("dup-nested.yaml"), ("dup-nested.yaml:5:5", "'path'", "line 4")),
    Case("yaml-duplicate-flow-key", run("dup-flow.yaml"), ("dup-flow.yaml:3:22", "'warmup'", "given twice")),
    Case("yaml-tag-python-object", run("tag-python.yaml"), ("tag-python.yaml:1:7", "'!!python/object/apply:os.system'")),
    Case("yaml-tag-binary", run("tag-binary.yaml"), ("tag-binary.yaml:4:11", "'!!binary'", "not accepted")),
    Case("yaml-tag-local", run("tag-local.yaml"), ("tag-local.yaml:2:9", "'!models'")),
    Case("yaml-syntax-error", run("syntax.yaml"), ("syntax.yaml:2:9", "not valid YAML", "mapping values")),
    Case("yaml-unclosed-flow", run("unclosed.yaml"), ("unclosed.yaml:3:1", "not valid YAML", "flow sequence")),
    Case("yaml-list-not-mapping", run("list.yaml"), ("list.yaml:1:1", "a spec is a YAML mapping", "a list")),
    Case("yaml-scalar-not-mapping", run("scalar.yaml"), ("scalar.yaml:1:1", "'just some words'")),
    Case("yaml-empty-file", run("empty.yaml"), ("empty.yaml", "the file is empty")),
    Case("yaml-two-documents", run("two-docs.yaml"), ("two-docs.yaml:3:1", "a second YAML document")),
    Case("yaml-nested-too-deep", run("deep.yaml"), ("deep.yaml", "nested too deeply")),
    Case("yaml-implicit-date", run("date-name.yaml"), ("date-name.yaml", "name:", "datetime.date(2024, 1, 1)")),
    # files that are not UTF-8 text, or not files
    Case("encoding-latin1", run("latin1.yaml"), ("latin1.yaml", "not UTF-8", "0xE9", "byte offset 9", "line 1")),
    Case("encoding-utf16-bom", run("utf16.yaml"), ("utf16.yaml", "UTF-16", "byte offset 0", "save it as UTF-8")),
    Case("encoding-binary-junk", run("junk.yaml"), ("junk.yaml", "byte 0x00 at byte offset 7", "binary file")),
    Case("encoding-control-char", run("bell.yaml"), ("bell.yaml", "U+0007", "byte offset 7")),
    Case("file-too-big", run("big.yaml"), ("big.yaml", "at most 4 MiB")),
    Case("file-missing", run("nope.yaml"), ("nope.yaml", "file not found")),
    Case("file-is-folder", run("spec-folder.yaml"), ("spec-folder.yaml", "is a folder")),
    Case("file-not-regular", run("/dev/null"), ("/dev/null", "not a regular file")),
    # keys and values
    Case("spec-unknown-key", run("unknown-key.yaml"), ("unknown-key.yaml", "colour: unknown key", "'blue'",
                                                        "allowed here: name, models")),
    Case("spec-key-typo", run("typo-key.yaml"), ("models.0.pth", "did you mean 'path'?", ", in model 'm'")),
    Case("spec-list-value", run("batch-sizes.yaml"), ("batch-sizes.yaml", "measure.batch_sizes", "[0, 4]")),
    Case("spec-shape-zero-dim", run("shape-zero.yaml"), ("models.0.inputs.x.shape", "positive", "[1, 0]")),
    Case("spec-nested-option", run("nested-option.yaml"), ("models.0.pruning.lr", "'fast'", ", in model 'm'")),
    Case("spec-option-union", run("engine-option-list.yaml"),
         ("engines.0.options.threads: Input should be a valid string, a valid integer, a valid number or a valid "
          "boolean (got [1, 2]), in engine 'onnxruntime'")),
    Case("spec-infinite-number", run("infinite.yaml"), ("infinite.yaml", "measure.max_seconds", "finite", "(got inf)")),
    Case("inventory-option-not-json", boards("inv-option-nan.yaml"),
         ("boards.0.engine_options", "onnxruntime: options are plain data", "nan")),
    Case("spec-missing-key", run("no-path.yaml"), ("no-path.yaml", "models.0.path", "required key is missing")),
    Case("spec-unknown-engine", run("unknown-engine.yaml"), ("engines", "unknown engine 'tensorrtx'", "known: ")),
    Case("spec-unknown-variant", run("unknown-variant.yaml"), ("variants", "unknown variant 'fp8'", "known: fp32")),
    Case("spec-unsafe-name", run("unsafe-name.yaml"), ("models.0.name", "'../etc'")),
    Case("spec-board-not-in-built-in", run("board-missing.yaml"),
         ("unknown board 'jetson-9'", "the built-in local inventory", "local")),
    Case("spec-board-not-in-inventory", run("board-missing.yaml", "--inventory", "inv-ok.yaml"),
         ("unknown board 'jetson-9'", "inv-ok.yaml", "b1")),
    Case("spec-board-twice", run("board-twice.yaml"), ("board-twice.yaml", "boards", "'local' given twice")),
    Case("spec-engine-twice", run("engine-twice.yaml"), ("engine-twice.yaml", "engines", "'onnxruntime' given twice")),
    Case("spec-pkg-not-installed", run("pkg-missing.yaml"),
         ("pkg-missing.yaml", "models.0.path", "'no_such_package_here' is not installed")),
    # datasets
    Case("dataset-samples-word", run("samples-word.yaml"), ("models.0.dataset.samples", "'many'")),
    Case("dataset-samples-fraction", run("samples-fraction.yaml"), ("models.0.dataset.samples", "2.5")),
    Case("dataset-samples-bool", run("samples-bool.yaml"), ("models.0.dataset.samples", "True")),
    Case("dataset-samples-zero", run("samples-zero.yaml"), ("models.0.dataset.samples", "(got 0)")),
    Case("dataset-kind-unknown", run("dataset-kind.yaml"), ("models.0.dataset.kind", "'imagenet'")),
    Case("dataset-does-not-fit-model", run("dataset-misfit.yaml"),
         ("dataset-misfit.yaml", "model m", "dataset ocr-det", "'x' is float32 [1, 4]")),
    # ONNX models
    Case("model-missing", run("model-missing.yaml"), ("model-missing.yaml", "model m", "not found", "nope.onnx")),
    Case("model-is-folder", run("model-folder.yaml"), ("model m", "folder.onnx is a folder")),
    Case("model-not-onnx", run("model-notes.yaml"), ("model m", "notes.onnx is not a readable ONNX model")),
    Case("model-truncated", run("model-truncated.yaml"), ("model m", "truncated.onnx is not a readable ONNX model")),
    Case("model-empty-file", run("model-empty.yaml"), ("model m", "empty.onnx is not an ONNX model")),
    Case("model-dangling-edge", run("model-dangling.yaml"), ("dangling.onnx is a corrupt ONNX model", "no_such_weight")),
    Case("model-external-missing", run("ext-missing.yaml"),
         ("ext-missing/m.onnx", "tensor 'W'", "'w.bin' is missing")),
    Case("model-external-parent-dir", run("ext-parent.yaml"),
         ("ext-parent/m.onnx", "tensor 'W'", "'../outside.bin' points outside the model's folder")),
    Case("model-external-absolute", run("ext-absolute.yaml"),
         ("ext-absolute/m.onnx", "tensor 'W'", "outside.bin' is an absolute path")),
    Case("model-external-symlink", run("ext-symlink.yaml"), ("ext-symlink/m.onnx", "'w.bin' is a symbolic link")),
    Case("model-external-truncated", run("ext-short.yaml"), ("ext-short/m.onnx", "'w.bin' is 20 bytes", "64 bytes")),
    Case("model-external-wrong-length", run("ext-length.yaml"), ("ext-length/m.onnx", "length 32 bytes", "needs 64")),
    Case("model-external-folder", run("ext-folder.yaml"), ("ext-folder/m.onnx", "'sub' is not a regular file")),
    # --model and its flags, which stand in for a spec
    Case("flag-model-missing", run("--model", "models/nope.onnx"), ("--model models/nope.onnx", "not found")),
    Case("flag-model-external-parent-dir", run("--model", "models/ext-parent/m.onnx"),
         ("--model models/ext-parent/m.onnx", "'../outside.bin' points outside")),
    Case("flag-input-zero-dim", run("--model", "models/ok.onnx", "--input", "x=1x0x3"),
         ("--input 'x=1x0x3'", "dimension 0 is not positive")),
    Case("flag-input-no-dims", run("--model", "models/ok.onnx", "--input", "x="), ("--input 'x='", "no dimensions")),
    Case("flag-input-no-name", run("--model", "models/ok.onnx", "--input", "=1x3"), ("--input '=1x3'", "no input name")),
    Case("flag-input-not-a-number", run("--model", "models/ok.onnx", "--input", "x=axb"),
         ("--input 'x=axb'", "'a' is not a whole number")),
    Case("flag-input-no-equals", run("--model", "models/ok.onnx", "--input", "x"), ("--input 'x'", "NAME=DIMS")),
    Case("flag-input-unknown-name", run("--model", "models/ok.onnx", "--input", "image=1x4"),
         ("--input 'image=1x4'", "has no input 'image'", "its inputs: x")),
    Case("flag-input-twice", run("--model", "models/ok.onnx", "--input", "x=1x4", "--input", "x=2x4"),
         ("--input", "'x'")),
    Case("flag-input-wrong-rank", run("--model", "models/ok.onnx", "--input", "x=1x4x4"),
         ("--model models/ok.onnx", "input 'x' has rank 2", "[1, 4, 4]")),
    Case("flag-variants-empty", run("--model", "models/ok.onnx", "--variants", ","), ("--variants", "','")),
    Case("flag-variants-unknown", run("--model", "models/ok.onnx", "--variants", "fp32,fp9"),
         ("--variants 'fp32,fp9'", "unknown variant 'fp9'", "known: fp32")),
    Case("flag-variants-without-fp32", run("--model", "models/ok.onnx", "--variants", "int8"),
         ("--variants 'int8'", "fp32 is the reference")),
    Case("flag-engines-unknown", run("--model", "models/ok.onnx", "--engines", "onnxruntime,trt"),
         ("--engines 'onnxruntime,trt'", "unknown engine 'trt'", "known: ")),
    # inventories, through edgefarm boards
    Case("inventory-unknown-engine", boards("inv-engine.yaml"),
         ("inv-engine.yaml", "boards.0.engines", "unknown engine 'tensorrtx'", "known: ", ", in board 'b1'")),
    Case("inventory-unknown-engine-python", boards("inv-engine-python.yaml"),
         ("boards.0.engine_python", "unknown engine 'paddle-lite'", "(got {'paddle-lite': '/opt/lite/bin/python3'})",
          ", in board 'b1'")),
    Case("inventory-unknown-engine-options", boards("inv-engine-options.yaml"),
         ("boards.0.engine_options", "unknown engine 'onnx-runtime'")),
    Case("inventory-unknown-native-engine", boards("inv-native-engine.yaml"),
         ("boards.0.native", "unknown engine 'tensorflow'")),
    Case("inventory-unknown-native-tool", boards("inv-native-tool.yaml"),
         ("boards.0.native.ncnn.tool", "unknown native benchmark 'benchncnn2'")),
    Case("inventory-unknown-transport", boards("inv-transport.yaml"),
         ("boards.0.transport", "unknown transport 'carrier-pigeon'", "known: local")),
    Case("inventory-chip-empty", boards("inv-chip-empty.yaml"), ("boards.0.chip", "(got '')")),
    Case("inventory-chip-too-long", boards("inv-chip-long.yaml"), ("boards.0.chip", "at most 128 characters")),
    Case("inventory-chip-two-lines", boards("inv-chip-newline.yaml"), ("boards.0.chip", "one line", "'rk3588\\nrk3399'")),
    Case("inventory-cores-unknown", boards("inv-cores.yaml"), ("boards.0.native.ncnn.cores", "'middle'")),
    Case("inventory-key-typo", boards("inv-typo-key.yaml"),
         ("boards.0.transprt: unknown key", "did you mean 'transport'?", ", in board 'b1'")),
    Case("inventory-nested-type", boards("inv-ssh-port.yaml"), ("boards.0.ssh.port", "'twenty-two'", ", in board 'b1'")),
    Case("inventory-empty-host", boards("inv-ssh-host.yaml"), ("boards.0.ssh.host", "(got '')")),
    Case("inventory-no-boards", boards("inv-no-boards.yaml"), ("inv-no-boards.yaml", "boards", "at least 1")),
    Case("inventory-duplicate-key", boards("inv-dup-key.yaml"), ("inv-dup-key.yaml:4:5", "'chip'", "given twice")),
    Case("inventory-not-mapping", boards("inv-list.yaml"), ("inv-list.yaml:1:1", "an inventory is a YAML mapping")),
    Case("inventory-latin1", boards("inv-latin1.yaml"), ("inv-latin1.yaml", "not UTF-8", "0xE9", "line 3")),
    Case("inventory-tag", boards("inv-tag.yaml"), ("inv-tag.yaml:2:5", "'!!python/name:os.system'")),
    Case("inventory-missing", boards("inv-nope.yaml"), ("inv-nope.yaml", "file not found")),
    Case("inventory-env-missing", ("boards", "--db", f"sqlite:///{DB}"),
         ("inv-env.yaml", "file not found", "named by $EDGEFARM_INVENTORY"), env={"EDGEFARM_INVENTORY": "inv-env.yaml"}),
    # the same files through nightly, and a run's inventory
    Case("nightly-spec-duplicate-key", nightly("dup-nested.yaml"), ("dup-nested.yaml:5:5", "'path'")),
    Case("nightly-spec-utf16", nightly("utf16.yaml"), ("utf16.yaml", "UTF-16")),
    Case("nightly-inventory-unknown-engine", nightly("ok.yaml", "--inventory", "inv-engine.yaml"),
         ("inv-engine.yaml", "unknown engine 'tensorrtx'")),
    Case("nightly-board-not-in-inventory", nightly("board-missing.yaml", "--inventory", "inv-ok.yaml"),
         ("unknown board 'jetson-9'", "inv-ok.yaml")),
    Case("nightly-model-external-missing", nightly("ext-missing.yaml"), ("ext-missing/m.onnx", "'w.bin' is missing")),
    Case("run-inventory-tag", run("ok.yaml", "--inventory", "inv-tag.yaml"), ("inv-tag.yaml:2:5", "!!python/name")),
]


def test_case_ids_are_distinct() -> None:
    ids = [c.id for c in CASES]
    assert len(set(ids)) == len(ids) >= 45
    assert {c.argv[0] for c in CASES} == {"run", "nightly", "boards"}


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_refused_in_one_line(case: Case, in_lab: Path) -> None:
    db = in_lab / "edgefarm.db"
    argv = tuple(a.replace(DB, str(db)) for a in case.argv)
    assert_refused(dataclasses.replace(case, argv=argv), in_lab, db)


# -- what still works, and what a subprocess cannot show --------------------------------------------

def test_external_data_inside_the_models_folder_still_loads(tmp_path: Path) -> None:
    from controller.build.source import prepare

    source = _external(tmp_path / "weights-below", location="sub/w.bin")
    (tmp_path / "weights-below" / "sub").mkdir()
    (tmp_path / "weights-below" / "w.bin").rename(tmp_path / "weights-below" / "sub" / "w.bin")
    prepared = prepare(source, "model m", {}, tmp_path / "out.onnx")
    assert prepared.inputs[0].shape == (1, 4)
    out = onnx.load(str(prepared.path))  # the prepared copy carries its weights itself
    assert not any(t.data_location == TensorProto.EXTERNAL for t in out.graph.initializer)


def test_yaml_anchors_merges_and_a_utf8_byte_order_mark_are_still_read(tmp_path: Path) -> None:
    from controller.config.inventory import load_inventory

    path = tmp_path / "lab.yaml"
    # b merges a's keys and sets its own chip over the merged one: a merge is no key given twice
    path.write_bytes(b"\xef\xbb\xbf" + (
        "boards:\n  - &a {name: a, chip: rk3588, engines: [onnxruntime]}\n  - <<: *a\n    name: b\n    chip: rk3399\n"
    ).encode())
    inventory, _ = load_inventory(path)
    assert [(b.name, b.chip, b.engines) for b in inventory.boards] == [
        ("a", "rk3588", ["onnxruntime"]), ("b", "rk3399", ["onnxruntime"])]


def test_an_unreadable_file_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Root reads any file whatever its mode, so the refusal is made to happen.
    from controller.errors import ConfigError
    from controller.validation import load_yaml

    path = tmp_path / "spec.yaml"
    path.write_text("name: t\n")

    def denied(self: Path) -> bytes:
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_bytes", denied)
    with pytest.raises(ConfigError, match=r"spec.yaml: cannot be read: permission denied$"):
        load_yaml(path)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a file whatever its mode")
def test_an_unreadable_file_is_refused_by_the_command(lab: Path, tmp_path: Path) -> None:
    spec = tmp_path / "locked.yaml"
    spec.write_text(yaml.safe_dump(_spec(str(lab / "models" / "ok.onnx"))))
    spec.chmod(0)
    assert_refused(Case("file-unreadable", ("run", str(spec)), ("locked.yaml", "permission denied")), tmp_path)


def test_an_ocr_rec_dataset_needs_the_models_charset(tmp_path: Path) -> None:
    from controller.data.datasets import check_inputs

    model = tmp_path / "m.onnx"
    onnx.save(_model(), str(model))
    rec = {"x": ((1, 3, 48, 320), "float32")}
    check_inputs("ocr-rec", rec)  # without the model, the shape alone
    with pytest.raises(ValueError, match="no 'character' metadata"):
        check_inputs("ocr-rec", rec, model)
    with pytest.raises(ValueError, match="unknown dataset kind 'imagenet'"):
        check_inputs("imagenet", rec)


def test_model_flags_that_fit_still_make_a_spec(lab: Path) -> None:
    from controller.config.spec import spec_from_model

    loaded = spec_from_model(lab / "models" / "ok.onnx", ["x=1x4"], "fp32, int8", ["onnxruntime"])
    assert loaded.spec.variants == ["fp32", "int8"] and [e.name for e in loaded.spec.engines] == ["onnxruntime"]
    assert loaded.spec.models[0].inputs["x"].shape == [1, 4]
    assert loaded.source == f"--model {lab / 'models' / 'ok.onnx'}"
