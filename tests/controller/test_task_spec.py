"""A model's task, preprocessing and postprocessing as the spec or the flags declare them
(``controller.config.task``, ``controller.config.spec``), and completed from what an ONNX model
says of itself (Ultralytics metadata) on the real path: ``spec_from_model`` -> ``prepare`` ->
``build_datasets``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from controller.build.cache import Cache
from controller.build.source import prepare
from controller.build.task_data import build_datasets, setup
from controller.config.spec import ModelSpec, load_spec, spec_from_model
from controller.config.task import PostprocessSpec, PreprocessSpec, metadata_preprocess, model_metadata, parse_pairs
from controller.data import imagesets
from controller.errors import ConfigError

# --- PreprocessSpec and PostprocessSpec: the forms a person writes ------------------------------


@pytest.mark.parametrize(("given", "size"), [
    (224, (224, 224)), ("224", (224, 224)), ("320x240", (320, 240)), ("320X240", (320, 240)),
    (" 320 x 240 ", (320, 240)), ([320, 240], (320, 240)), ((64, 48), (64, 48)),
])
def test_a_size_is_one_number_wxh_or_a_list(given: Any, size: tuple[int, int]) -> None:
    for key in ("resize", "letterbox", "crop"):
        spec = PreprocessSpec.model_validate({key: given})
        assert getattr(spec, key) == size and spec.output_size() == size and spec.has_geometry()


def test_numbers_scale_and_the_defaults() -> None:
    spec = PreprocessSpec.model_validate({"resize_short": 256, "crop": 224, "scale": "1/255", "mean": "0.5",
                                          "std": "0.229,0.224,0.225", "color": "bgr"})
    assert spec.scale == pytest.approx(1 / 255) and spec.mean == [0.5, 0.5, 0.5]
    assert spec.std == [0.229, 0.224, 0.225] and spec.color == "bgr"
    assert PreprocessSpec.model_validate({"scale": "2", "mean": 0.5, "std": [1, 2, 3]}).model_dump(
        include={"scale", "mean", "std"}) == {"scale": 2.0, "mean": [0.5] * 3, "std": [1.0, 2.0, 3.0]}
    plain = PreprocessSpec()
    assert not plain.has_geometry() and plain.output_size() is None
    assert (plain.scale, plain.mean, plain.std, plain.layout, plain.pad) == (1 / 255, [0.0] * 3, [1.0] * 3, "nchw", 114)
    # resize_short alone keeps each image's ratio: no one size for every image
    assert PreprocessSpec(resize_short=256).output_size() is None
    # the last geometry step decides the size
    assert PreprocessSpec(resize=300, crop=224).output_size() == (224, 224)


@pytest.mark.parametrize(("given", "said"), [
    ({"resize": "abc"}, "a size is WxH or one number, got 'abc'"),
    ({"crop": "224xabc"}, "a size is WxH or one number, got '224xabc'"),
    ({"letterbox": True}, "a size is WxH or one number"),
    ({"resize": "0x5"}, "a size is W x H, each 1..8192"),
    ({"resize": "320x240x3"}, "at most 2 items"),  # pydantic's words: the tuple type checks first
    ({"resize": 9000}, "a size is W x H, each 1..8192"),
    ({"scale": "1/0"}, "expected a number or A/B, got '1/0'"),
    ({"scale": "one/255"}, "expected a number or A/B"),
    ({"scale": 0}, "greater than 0"),
    ({"mean": "0.4,0.5"}, "give 1 or 3 numbers (one per colour channel), got 2"),
    ({"mean": "a,b,c"}, "expected numbers A,B,C, got 'a,b,c'"),
    ({"std": "0"}, "std must not be 0"),
    ({"color": "xyz"}, "'rgb' or 'bgr'"),
    ({"layout": "chw"}, "'nchw' or 'nhwc'"),
    ({"interpolation": "area"}, "'nearest', 'bilinear', 'bicubic' or 'lanczos'"),
    ({"pad": 300}, "less than or equal to 255"),
    ({"letterbox": 224, "resize": 224}, "letterbox already resizes"),
    ({"letterbox": 224, "resize_short": 256}, "letterbox already resizes"),
    ({"resize": 224, "resize_short": 256}, "give resize (stretch) or resize_short (ratio kept), not both"),
    ({"size": 224}, "Extra inputs are not permitted"),
])
def test_bad_preprocessing_is_refused_saying_what_is_wrong(given: dict[str, Any], said: str) -> None:
    with pytest.raises(ValidationError) as caught:
        PreprocessSpec.model_validate(given)
    assert said in str(caught.value)


def test_postprocess_strides_and_limits() -> None:
    assert PostprocessSpec.model_validate({"strides": "8,16,32"}).strides == [8, 16, 32]
    assert PostprocessSpec.model_validate({"strides": [8, 16]}).strides == [8, 16]
    assert PostprocessSpec().strides is None and PostprocessSpec().metric == "mAP50"
    for given, said in (({"strides": "8,x"}, "expected numbers A,B,C, got '8,x'"),
                        ({"score": 1.5}, "less than or equal to 1"), ({"iou": 0}, "greater than 0"),
                        ({"decoder": "detr"}, "'yolo' or 'ssd'"), ({"metric": "mAP"}, "'mAP50' or 'mAP50-95'"),
                        ({"outputs": {"logits": "x"}}, "'boxes', 'scores', 'classes' or 'count'")):
        with pytest.raises(ValidationError) as caught:
            PostprocessSpec.model_validate(given)
        assert said in str(caught.value), given


def test_parse_pairs() -> None:
    assert parse_pairs(["resize=224x224", " color = bgr "], "--preprocess") == {"resize": "224x224", "color": "bgr"}
    assert parse_pairs(["mean=0.5,0.5,0.5"], "--preprocess") == {"mean": "0.5,0.5,0.5"}  # only the first '='
    assert parse_pairs([], "--preprocess") == {}
    for flags, said in ((["resize"], "--preprocess 'resize': expected KEY=VALUE"),
                        (["=224"], "--preprocess '=224': expected KEY=VALUE"),
                        (["resize= "], "--preprocess 'resize= ': expected KEY=VALUE"),
                        (["resize=224", "resize=320"], "--preprocess 'resize=320': resize given twice")):
        with pytest.raises(ValueError, match="^" + said.replace("(", r"\(")):
            parse_pairs(flags, "--preprocess")


# --- what an ONNX model says of itself ----------------------------------------------------------


def _model(path: Path, shape: list[int], out: list[int] | None = None, meta: dict[str, str] | None = None) -> Path:
    """A one-node model (its output ``out``, by a Reshape where it differs) carrying ``meta``."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    out = out or shape
    nodes, inits = [helper.make_node("Identity", ["images"], ["y"])], []
    if out != shape:
        nodes = [helper.make_node("ReduceMean", ["images"], ["m"], axes=[2, 3], keepdims=0),
                 helper.make_node("Reshape", ["m", "s"], ["y"])]
        inits = [numpy_helper.from_array(np.array(out, np.int64), "s")]
    graph = helper.make_graph(nodes, "m", [helper.make_tensor_value_info("images", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, out)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    for key, value in (meta or {}).items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, str(path))
    return path


ULTRALYTICS = {"task": "detect", "imgsz": "[640, 640]", "names": "{0: 'a', 1: 'b'}", "stride": "32",
               "author": "Ultralytics"}  # as an Ultralytics export writes them: str() of Python values


def test_ultralytics_metadata(tmp_path: Path) -> None:
    import onnx

    meta = model_metadata(onnx.load(str(_model(tmp_path / "m.onnx", [1, 3, 640, 640], meta=ULTRALYTICS))))
    assert meta == {"task": "detection", "size": (640, 640), "classes": ["a", "b"]}
    assert metadata_preprocess(meta) == {"letterbox": (640, 640)}
    # imgsz is [h, w]; names in key order, whatever order the dict was written in
    wide = model_metadata(onnx.load(str(_model(tmp_path / "w.onnx", [1, 3, 480, 640], meta={
        "task": "classify", "imgsz": "[480, 640]", "names": "{1: 'dog', 0: 'cat', 2: 'eel'}"}))))
    assert wide == {"task": "classification", "size": (640, 480), "classes": ["cat", "dog", "eel"]}
    assert metadata_preprocess(wide) == {"resize_short": 480, "crop": (640, 480)}
    assert model_metadata(onnx.load(str(_model(tmp_path / "s.onnx", [1, 3, 32, 32], meta={"imgsz": "32"})))) == {
        "size": (32, 32)}
    # what cannot be read is left out, never guessed: the user is asked instead
    odd = model_metadata(onnx.load(str(_model(tmp_path / "o.onnx", [1, 3, 32, 32], meta={
        "task": "segment", "imgsz": "[640, 640", "names": "['a', 'b']", "character": "0\n90"}))))
    assert odd == {}
    assert metadata_preprocess({"size": (640, 640)}) == {}  # a size without a task says no resizing
    assert metadata_preprocess({"task": "detection"}) == {}


def _coco(folder: Path, size: tuple[int, int] = (40, 30)) -> Path:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    images = []
    for i in range(4):
        Image.new("RGB", size, (60 * i, 20, 200)).save(folder / f"{i}.png")
        images.append({"id": i + 1, "file_name": f"{i}.png", "width": size[0], "height": size[1]})
    doc = {"images": images, "categories": [{"id": 1, "name": "char"}, {"id": 2, "name": "digit"}],
           "annotations": [{"id": 1, "image_id": 1, "category_id": 2, "bbox": [1, 2, 10, 10], "area": 100,
                            "iscrowd": 0}]}
    (folder / "annotations.json").write_text(json.dumps(doc))
    return folder / "annotations.json"


def test_an_ultralytics_detector_is_letterboxed_to_its_own_size_unless_told(tmp_path: Path) -> None:
    """The real path from the flags: no --preprocess geometry, and the model's [h, w] metadata
    (48 high, 64 wide) makes a letterbox to 64x48 that the model's input takes; what the flags
    say (scale) is kept over the defaults."""
    from agent.dataset import load_dataset

    model = _model(tmp_path / "yolo.onnx", [1, 3, 48, 64],
                   meta={**ULTRALYTICS, "imgsz": "[48, 64]", "names": "{0: 'x', 1: 'y'}"})
    coco = _coco(tmp_path / "data")
    loaded = spec_from_model(model, [], None, None, dataset=coco, preprocess=["scale=1"],
                             postprocess=["strides=8,16,32"])
    m = loaded.spec.models[0]
    assert m.task_name == "detection" and m.preprocess is not None
    prepared = prepare(m.resolve_path(loaded.base), "yolo", {}, tmp_path / "prepared.onnx")
    built = build_datasets(loaded, m, prepared, Cache(tmp_path / "cache"), calibration=1)

    assert built.setup.task == "detection" and built.setup.input_name == "images"
    assert built.setup.preprocess["letterbox"] == [64, 48] and built.setup.preprocess["scale"] == 1.0
    assert built.setup.preprocess["resize"] is None and built.setup.preprocess["crop"] is None
    params = built.setup.params
    assert params["classes"] == ["char", "digit"]  # the data's own categories over the model's names
    assert (params["decoder"], params["box"], params["input_size"], params["strides"]) == (
        "yolo", "cxcywh", [64, 48], [8, 16, 32])
    evaluation = load_dataset(str(built.evaluation))
    assert evaluation.raw("images").shape == (built.split["evaluation"], 3, 48, 64)
    assert built.split["images"] == 4 and built.split["calibration"] == 1


def test_the_models_own_class_names_where_the_data_names_none(tmp_path: Path) -> None:
    model = _model(tmp_path / "yolo.onnx", [1, 3, 64, 64], meta={**ULTRALYTICS, "imgsz": "[64, 64]"})
    loaded = spec_from_model(model, [], None, None, dataset=_coco(tmp_path / "data"))
    m = loaded.spec.models[0]
    prepared = prepare(m.resolve_path(loaded.base), "yolo", {}, tmp_path / "prepared.onnx")
    nameless = imagesets.ImageSet(tmp_path, "detection", [], [])
    ts = setup(loaded, m, prepared, nameless)
    assert ts.params["classes"] == ["a", "b"] and ts.preprocess["letterbox"] == [64, 64]


def test_an_ultralytics_classifier_is_resized_short_and_cropped(tmp_path: Path) -> None:
    from PIL import Image

    model = _model(tmp_path / "cls.onnx", [1, 3, 32, 32], [1, 3],
                   meta={"task": "classify", "imgsz": "[32, 32]", "names": "{0: 'a', 1: 'b', 2: 'c'}"})
    for n, name in enumerate("abc"):
        for k in range(2):
            (tmp_path / "data" / name).mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (50 + 10 * k, 40), (80 * n, 0, 0)).save(tmp_path / "data" / name / f"{k}.jpg")
    loaded = spec_from_model(model, [], None, None, dataset=tmp_path / "data")
    m = loaded.spec.models[0]
    prepared = prepare(m.resolve_path(loaded.base), "cls", {}, tmp_path / "prepared.onnx")
    built = build_datasets(loaded, m, prepared, Cache(tmp_path / "cache"), calibration=2)
    assert built.setup.task == "classification"
    assert (built.setup.preprocess["resize_short"], built.setup.preprocess["crop"]) == (32, [32, 32])
    assert built.setup.params == {"classes": ["a", "b", "c"], "top_k": 5}


def test_a_declaration_the_model_contradicts_is_refused(tmp_path: Path) -> None:
    model = _model(tmp_path / "yolo.onnx", [1, 3, 64, 64], meta=ULTRALYTICS)  # metadata says 640, input 64
    loaded = spec_from_model(model, [], None, None, dataset=_coco(tmp_path / "data"))
    m = loaded.spec.models[0]
    prepared = prepare(m.resolve_path(loaded.base), "yolo", {}, tmp_path / "prepared.onnx")
    with pytest.raises(ConfigError, match=r"preprocess makes 640x640 images, the model's input images "
                                          r"\[1, 3, 64, 64\] takes 64x64"):
        setup(loaded, m, prepared, imagesets.read(_coco(tmp_path / "data"), "detection"))
    nhwc = spec_from_model(model, [], None, None, dataset=tmp_path / "data" / "annotations.json",
                           preprocess=["letterbox=64", "layout=nhwc"])
    with pytest.raises(ConfigError, match=r"layout nhwc puts the 3 colour channels on axis 3"):
        setup(nhwc, nhwc.spec.models[0], prepared, imagesets.read(_coco(tmp_path / "data"), "detection"))


# --- spec_from_model: each error named by the flag as the user typed it ---------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("flags")
    (d / "pets" / "cat").mkdir(parents=True)
    return _model(d / "tiny.onnx", [1, 3, 32, 32]), d / "pets"


@pytest.mark.parametrize(("flags", "said"), [
    ({"preprocess": ["resize=abc"]}, "--preprocess 'resize=abc': a size is WxH or one number, got 'abc'"),
    ({"preprocess": ["resize=224", "bogus=1"]},
     "--preprocess 'bogus=1': Extra inputs are not permitted; keys: resize_short, resize, letterbox"),
    ({"preprocess": ["mean=1,2"]}, "--preprocess 'mean=1,2': give 1 or 3 numbers"),
    ({"preprocess": ["scale=1/0"]}, "--preprocess 'scale=1/0': expected a number or A/B"),
    ({"preprocess": ["resize"]}, "--preprocess 'resize': expected KEY=VALUE"),
    ({"preprocess": ["crop=8", "crop=16"]}, "--preprocess 'crop=16': crop given twice"),
    ({"postprocess": ["score=2"]}, "--postprocess 'score=2': Input should be less than or equal to 1"),
    ({"postprocess": ["strides=8,x"]}, "--postprocess 'strides=8,x': expected numbers A,B,C"),
    ({"postprocess": ["top-k=3"]}, "--postprocess 'top-k=3': Extra inputs are not permitted; keys: top_k"),
    ({"task": "detection", "labels": Path("labels.txt")},
     "--labels 'labels.txt': labels name a classifier's classes; this model's task is detection"),
])
def test_a_flag_error_names_the_flag_as_typed(tiny: tuple[Path, Path], flags: dict[str, Any], said: str) -> None:
    model, pets = tiny
    with pytest.raises(ConfigError) as caught:
        spec_from_model(model, [], None, None, dataset=pets, **flags)
    assert str(caught.value).startswith(said if said.startswith("--") else f"--data {str(pets)!r}: {said}"), \
        str(caught.value)


def test_a_cross_key_preprocess_error_names_the_flags(tiny: tuple[Path, Path]) -> None:
    model, pets = tiny
    with pytest.raises(ConfigError) as caught:
        spec_from_model(model, [], None, None, dataset=pets, preprocess=["letterbox=32", "resize=32"])
    assert str(caught.value).startswith("--preprocess 'letterbox=32 resize=32': letterbox already resizes"), \
        str(caught.value)


def test_flags_that_fit_make_the_spec(tiny: tuple[Path, Path]) -> None:
    model, pets = tiny
    loaded = spec_from_model(model, [], None, None, dataset=pets, labels=Path("labels.txt"),
                             preprocess=["resize=320x240", "scale=1/255", "mean=0.5"], postprocess=["top_k=3"])
    m = loaded.spec.models[0]
    assert (m.dataset.kind, m.dataset.path, m.task_name) == ("files", str(pets.resolve()), "classification")
    assert m.labels == str(Path("labels.txt").resolve())
    assert m.preprocess is not None and m.preprocess.resize == (320, 240) and m.preprocess.mean == [0.5] * 3
    assert m.postprocess.top_k == 3
    seeded = spec_from_model(model, [], None, None).spec.models[0]
    assert (seeded.dataset.kind, seeded.task_name, seeded.preprocess) == ("seeded", "raw", None)


# --- ModelSpec: the task and its dataset together -------------------------------------------------


def _spec_model(**entry: Any) -> ModelSpec:
    return ModelSpec.model_validate({"name": "m", "path": "m.onnx", **entry})


@pytest.mark.parametrize(("entry", "task", "kind", "path"), [
    ({"dataset": "some/folder"}, "classification", "files", "some/folder"),
    ({"dataset": "data/labels.csv"}, "classification", "files", "data/labels.csv"),
    ({"dataset": "data/coco/Annotations.JSON"}, "detection", "files", "data/coco/Annotations.JSON"),
    ({"dataset": {"path": "coco.json", "images": "imgs", "samples": 50}}, "detection", "files", "coco.json"),
    ({"dataset": "some/folder", "task": "my_task.py"}, "my_task.py", "files", "some/folder"),
    ({"dataset": {"kind": "ocr-det"}}, "ocr-det", "ocr-det", None),
    ({}, "raw", "seeded", None),
])
def test_the_task_follows_from_the_dataset(entry: dict[str, Any], task: str, kind: str, path: str | None) -> None:
    m = _spec_model(**entry)
    assert (m.task_name, m.dataset.kind, m.dataset.path) == (task, kind, path)


@pytest.mark.parametrize(("entry", "said"), [
    ({"task": "classification"}, "task classification needs labelled data: give the dataset's `path`"),
    ({"task": "detection", "dataset": {"kind": "ocr-det"}}, "task detection needs labelled data"),
    ({"task": "my_task.py"}, "task my_task.py needs labelled data"),
    ({"task": "ocr-rec", "dataset": {"kind": "ocr-det"}}, "task ocr-rec is measured on dataset kind ocr-rec, not ocr-det"),
    ({"task": "raw", "dataset": "some/folder"}, "task raw does not read your files"),
    ({"task": "segmentation", "dataset": "some/folder"}, "task 'segmentation' is not one of classification"),
    ({"task": "detection", "dataset": "coco.json", "labels": "labels.txt"},
     "labels name a classifier's classes; this model's task is detection"),
    ({"labels": "labels.txt"}, "labels name a classifier's classes; this model's task is raw"),
    ({"dataset": {"kind": "ocr-rec"}, "preprocess": {"resize": 224}},
     "preprocess applies to your own images; dataset kind ocr-rec makes its model's tensors itself"),
    ({"preprocess": {"resize": 224}}, "preprocess applies to your own images; dataset kind seeded"),
    ({"dataset": {"kind": "files"}}, "kind files needs the `path` of your data"),
    ({"dataset": {"kind": "ocr-det", "path": "x"}}, "a rendered kind takes no path"),
    ({"dataset": {"images": "imgs"}}, "`images` is the image folder of a COCO `path`"),
])
def test_a_task_its_dataset_contradicts_is_refused(entry: dict[str, Any], said: str) -> None:
    with pytest.raises(ValidationError) as caught:
        _spec_model(**entry)
    assert said in str(caught.value)


def test_a_spec_file_names_itself_the_model_and_the_key(tmp_path: Path) -> None:
    spec = {"name": "t", "models": [{"name": "pets", "path": "m.onnx", "dataset": "data/pets",
                                     "preprocess": {"resize": "320x240", "scale": "1/255"},
                                     "postprocess": {"strides": "8,16,32"}}]}
    (tmp_path / "ok.yaml").write_text(yaml.safe_dump(spec))
    m = load_spec(tmp_path / "ok.yaml").spec.models[0]
    assert m.dataset.resolve(tmp_path, "path") == tmp_path / "data" / "pets"
    assert m.preprocess is not None and m.preprocess.resize == (320, 240) and m.postprocess.strides == [8, 16, 32]
    spec["models"][0].update(task="detection", labels="labels.txt")
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(spec))
    with pytest.raises(ConfigError, match=r"^.*bad\.yaml: models\.0: labels name a classifier's classes; "
                                          r"this model's task is detection, in model 'pets'$"):
        load_spec(tmp_path / "bad.yaml")
