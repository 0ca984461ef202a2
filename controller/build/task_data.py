"""A model's task made concrete: its declaration completed from the model, and its datasets built
from the user's files (``controller.data.imagesets``), before Ray starts and before any row.

``setup`` joins what the spec declares with what the model says of itself (input size and
layout, output classes, Ultralytics metadata) and refuses what contradicts it; ``build_datasets``
decodes, preprocesses and splits the images once, cached by content. The task parameters it
returns travel in the dataset file to the board (``agent.tasks``), and later into the bundle.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.protocol import sha256_file
from controller.build.cache import Cache, key_of
from controller.build.source import Prepared
from controller.config.spec import LoadedSpec, ModelSpec
from controller.config.task import PreprocessSpec, metadata_preprocess, model_metadata
from controller.data import imagesets
from controller.errors import ConfigError


@dataclass
class TaskSetup:
    task: str  # the registered task: classification, detection or custom
    preprocess: dict[str, Any]  # agent.tasks.preprocess declaration
    params: dict[str, Any]  # the task's parameters (class names, decoder, thresholds)
    module: Path | None  # a user's own task module
    input_name: str


def setup(loaded: LoadedSpec, m: ModelSpec, prepared: Prepared, data: imagesets.ImageSet) -> TaskSetup:
    import onnx

    where = f"{loaded.source}: model {m.name}"
    proto = onnx.load(str(prepared.path), load_external_data=False)
    meta = model_metadata(proto)
    images = [i for i in prepared.inputs if len(i.shape) == 4]
    if len(prepared.inputs) != 1 or not images:
        raise ConfigError(f"{where}: an image task feeds one 4-D image input; the model has "
                          f"{', '.join(f'{i.name} {list(i.shape)}' for i in prepared.inputs)}")
    inp = images[0]
    module = None
    if m.task_name.endswith(".py"):
        module = (loaded.base / m.task_name) if not Path(m.task_name).is_absolute() else Path(m.task_name)
        if not module.is_file():
            raise ConfigError(f"{where}: task: {m.task_name!r} does not exist")
    given = m.preprocess.model_dump(exclude_unset=True) if m.preprocess else {}
    layout = given.get("layout") or ("nhwc" if inp.shape[-1] == 3 and inp.shape[1] != 3 else "nchw")
    # The input's own element type, where it is one an image can be fed as (a float16 or uint8 input).
    dtype = inp.dtype if inp.dtype in ("float16", "uint8") else "float32"
    decl_in = {**metadata_preprocess(meta), "layout": layout, "dtype": dtype, **given}
    decl = PreprocessSpec.model_validate(decl_in)
    if not decl.has_geometry() and module is None:
        raise ConfigError(f"{where}: preprocess: say how an image is resized (resize=WxH, letterbox=WxH, or "
                          f"resize_short=N with crop=N); the model's input is {list(inp.shape)} and its metadata "
                          "does not say")
    h_axis, w_axis, c_axis = (2, 3, 1) if decl.layout == "nchw" else (1, 2, 3)
    if isinstance(inp.shape[c_axis], int) and inp.shape[c_axis] != 3:
        raise ConfigError(f"{where}: preprocess: layout {decl.layout} puts the 3 colour channels on axis {c_axis}, "
                          f"the model's input {inp.name} is {list(inp.shape)}")
    size = decl.output_size()
    want = (inp.shape[w_axis], inp.shape[h_axis])
    if size and all(isinstance(d, int) for d in want) and tuple(size) != want:
        raise ConfigError(f"{where}: preprocess makes {size[0]}x{size[1]} images, the model's input "
                          f"{inp.name} {list(inp.shape)} takes {want[0]}x{want[1]}")
    classes = data.classes if data.classes else meta.get("classes", [])
    params: dict[str, Any] = {"classes": classes}
    post = m.postprocess
    if m.task_name == "classification":
        params["top_k"] = post.top_k
    elif m.task_name == "detection":
        outputs = prepared.outputs
        params.update(post.model_dump(exclude={"top_k", "outputs"}))
        params["decoder"] = post.decoder or ("yolo" if len(outputs) == 1 else "ssd")
        params["box"] = post.box or ("cxcywh" if params["decoder"] == "yolo" else "yxyx")
        params["outputs"] = dict(post.outputs)
        params["output_names"] = list(outputs)
        params["input_size"] = list(size or want)
    task = m.task_name if module is None else "custom"
    return TaskSetup(task, decl.model_dump(mode="json"), params, module, inp.name)


def output_shapes(prepared: Prepared) -> list[list[int | None]]:
    import onnx

    graph = onnx.load(str(prepared.path), load_external_data=False).graph
    return [[d.dim_value if d.HasField("dim_value") else None for d in o.type.tensor_type.shape.dim]
            for o in graph.output]


@dataclass
class TaskData:
    setup: TaskSetup
    evaluation: Path
    calibration: Path | None
    split: dict[str, Any]


def build_datasets(loaded: LoadedSpec, m: ModelSpec, prepared: Prepared, cache: Cache,
                   calibration: int) -> TaskData:
    """Read, check, decode, preprocess and split ``m``'s own data; a ``UserError`` says what does not fit."""
    labels = None
    if m.labels is not None:
        labels = Path(m.labels).expanduser()
        labels = labels if labels.is_absolute() else loaded.base / labels
    images = m.dataset.resolve(loaded.base, "images") if m.dataset.images else None
    data = imagesets.read(m.dataset.resolve(loaded.base, "path"), m.task_name if not m.task_name.endswith(".py")
                          else "custom", images, labels)
    ts = setup(loaded, m, prepared, data)
    imagesets.check_fits(data, output_shapes(prepared), ts.params)
    preprocess_fn = None
    if ts.module is not None:
        from agent.tasks.custom import load_module

        try:
            mod = load_module(str(ts.module))
        except Exception as exc:  # noqa: BLE001 - the user's module, whatever it raised on import
            raise ConfigError(f"{loaded.source}: model {m.name}: task {ts.module}: {type(exc).__name__}: {exc}") from None
        preprocess_fn = getattr(mod, "preprocess", None)
        ts.params["module_sha256"] = sha256_file(ts.module)
    try:
        cal, ev = imagesets.split(len(data.files), calibration, m.dataset.samples, m.dataset.seed)
    except ValueError as exc:
        raise imagesets.DataError(f"{data.source}: {exc}; it has {len(data.files)}") from None
    digest = imagesets.content_hash(data)
    split_meta = {"files_sha256": digest, "seed": m.dataset.seed, "images": len(data.files),
                  "calibration": len(cal), "evaluation": len(ev)}
    key = dict(v=imagesets.IMAGESET_VERSION, data=digest, decl=ts.preprocess, params=ts.params, task=ts.task,
               input=ts.input_name, split=split_meta)
    out: dict[str, Path | None] = {}
    for role, indices in (("evaluation", ev), ("calibration", cal)):
        if not indices:
            out[role] = None
            continue
        path = cache.path("datasets", key_of(role=role, **key), ".npz")
        if not (path.is_file() and path.with_suffix(".npz.json").is_file()):
            source = {"kind": "files", "role": role, **split_meta}
            imagesets.write_split(data, indices, ts.preprocess, ts.input_name, ts.params, path, source, preprocess_fn)
            path.with_suffix(".npz.json").write_text("{}")
        out[role] = path
    evaluation = out["evaluation"]
    assert evaluation is not None  # split() leaves at least one image to evaluate
    return TaskData(ts, evaluation, out["calibration"], split_meta)
