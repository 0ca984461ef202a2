"""Spec and inventory files are validated at the boundary, with errors naming file, key and value."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from pydantic import Field

from controller.build.compile import _pass_options
from controller.config.inventory import DEFAULT, load_inventory
from controller.config.spec import load_spec, parse_input_flag, section_model
from controller.errors import ConfigError
from controller.passes import get_pass, pass_names
from controller.validation import Strict

ROOT = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, data: object, name: str = "spec.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return path


def example() -> dict:
    return yaml.safe_load((ROOT / "examples" / "ppocr.yaml").read_text())


def test_example_spec_loads_and_resolves_bundled_models() -> None:
    loaded = load_spec(ROOT / "examples" / "ppocr.yaml")
    spec = loaded.spec
    assert [m.name for m in spec.models] == ["ppocr-det", "ppocr-rec", "ppocr-cls"]
    assert spec.variants == ["fp32", "fp16", "int8"]
    assert [e.name for e in spec.engines] == ["onnxruntime", "openvino", "paddlelite", "ncnn", "mnn"]
    for m in spec.models:
        assert m.resolve_path(loaded.base).is_file(), m.path
        assert m.dataset.samples >= 200


def test_optimization_example_asks_for_every_optimized_variant_with_its_models_own_pruning() -> None:
    loaded = load_spec(ROOT / "examples" / "ppocr-optimize.yaml")
    spec = loaded.spec
    assert spec.variants == ["fp32", "int8", "int8-mixed", "int8-nncf", "pruned"]
    assert [m.name for m in spec.models] == ["ppocr-det", "ppocr-rec", "ppocr-cls"]
    for m in spec.models:
        assert m.resolve_path(loaded.base).is_file(), m.path
        assert m.pruning is not None and m.pruning.target_flops is not None


@pytest.mark.parametrize(
    "mutate, expected",
    [
        (lambda s: s.update(colour="blue"), "colour: unknown key (got 'blue'); the keys allowed here: name, models,"),
        (lambda s: s["models"][0].update(pth="x.onnx"), "models.0.pth: unknown key (got 'x.onnx')"
                                                        ", in model 'ppocr-det'; did you mean 'path'? "
                                                        "The keys allowed here: name, path, inputs, dataset, task, labels, preprocess, postprocess, pruning"),
        (lambda s: s["models"][0]["inputs"]["x"].update(shape=[1, 3, -640, 640]), "models.0.inputs.x.shape"),
        (lambda s: s.update(variants=["fp32", "fp8"]), "unknown variant 'fp8'"),
        (lambda s: s.update(engines=["onnxruntime", "tensorrtx"]), "unknown engine 'tensorrtx'"),
        (lambda s: s["measure"].update(min_iterations=10), "measure.min_iterations"),
        (lambda s: s["models"][1].update(name="ppocr-det"), "model names must be unique"),
        (lambda s: s["models"][0].update(name="../etc"), "models.0.name"),
        (lambda s: s["models"][0]["dataset"].update(kind="imagenet"), "models.0.dataset.kind"),
        (lambda s: s.update(pruning={"ratios": [0.5, 1.5]}), "pruning.ratios: ratios must lie in (0, 1), got [0.5, 1.5]"),
        (lambda s: s.update(pruning={"finetune": "always"}), "pruning.finetune"),
        (lambda s: s["models"][1].update(pruning={"lr": 2}), "models.1.pruning.lr: Input should be less than 1"),
        (lambda s: s.update(quantization={"ncnn_layers": ["Gemm"]}), "quantization.ncnn_layers.0: Input should be"),
        (lambda s: s.update(quantization={"nncf_preset": "fast"}), "quantization.nncf_preset: Input should be "
                                                                   "'performance' or 'mixed' (got 'fast')"),
        (lambda s: s.update(quantization={"budget": 0.1}), "quantization.budget: unknown key (got 0.1);"),
    ],
)
def test_bad_spec_names_file_key_and_value(tmp_path: Path, mutate, expected: str) -> None:
    data = example()
    mutate(data)
    path = write(tmp_path, data)
    with pytest.raises(ConfigError) as err:
        load_spec(path)
    message = str(err.value)
    assert message.startswith(f"{path}: ")
    assert expected in message
    assert "\n" not in message


def test_a_model_sets_its_own_pruning_keys_over_the_specs(tmp_path: Path) -> None:
    data = example()
    data["pruning"] = {"lr": 0.001, "epochs": 2}
    data["models"][2]["pruning"] = {"lr": 0.003}
    spec = load_spec(write(tmp_path, data)).spec
    det, cls = spec.pruning_for(spec.models[0]), spec.pruning_for(spec.models[2])
    assert (det.lr, det.epochs) == (0.001, 2)
    assert (cls.lr, cls.epochs) == (0.003, 2)  # the model's key wins, the spec's others stay
    assert _pass_options("pruned", spec, spec.models[2])["lr"] == 0.003  # and is what the pass gets


def test_the_nncf_keys_reach_the_nncf_pass_and_each_pass_gets_only_its_own_keys(tmp_path: Path) -> None:
    data = example()
    data["variants"] = ["fp32", "int8", "int8-mixed", "int8-nncf", "pruned"]
    data["quantization"] = {"calibration": "minmax", "nncf_preset": "mixed", "nncf_model_type": "transformer",
                            "nncf_fast_bias_correction": False, "budget_samples": 64}
    data["pruning"] = {"epochs": 2}
    spec = load_spec(write(tmp_path, data)).spec
    model = spec.models[0]
    nncf = _pass_options("int8-nncf", spec, model)
    assert (nncf["nncf_preset"], nncf["nncf_model_type"], nncf["nncf_fast_bias_correction"]) == (
        "mixed", "transformer", False)
    assert nncf["calibration"] == "minmax"
    assert "budget_samples" not in nncf
    # Only a pass's own fields are in its options (and so in its cache key): a pruning or an
    # int8-mixed key does not rebuild int8.
    for name in ("int8", "int8-mixed", "int8-nncf", "pruned"):
        assert set(_pass_options(name, spec, model)) == set(get_pass(name).options.model_fields), name
    assert _pass_options("int8-mixed", spec, model)["budget_samples"] == 64
    assert _pass_options("pruned", spec, model)["epochs"] == 2
    assert _pass_options("fp16", spec, model) == {}


def test_every_pass_option_is_documented_and_every_documented_option_can_be_set() -> None:
    text = (ROOT / "docs" / "configuration.md").read_text()
    documented = set(re.findall(r"^\| `((?:quantization|pruning)\.\w+)`", text, flags=re.MULTILINE))
    settable = {f"{kind.section}.{field}" for kind in map(get_pass, pass_names()) if kind.section
                for field in kind.options.model_fields}
    assert "quantization.nncf_preset" in settable and "pruning.lr" in settable
    assert documented == settable


def test_two_passes_declaring_one_option_differently_are_refused() -> None:
    class A(Strict):
        samples: int = Field(32, description="calibration samples")

    class B(Strict):
        samples: int = Field(64, description="calibration samples")

    class C(Strict):
        samples: int = Field(32, description="calibration samples")
        extra: bool = Field(True, description="a key of C's own")

    assert set(section_model("quantization", [A, C]).model_fields) == {"samples", "extra"}
    assert section_model("quantization", [A]) is A
    with pytest.raises(TypeError, match="option samples of .*B differs from .*A's"):
        section_model("quantization", [A, B])


def test_malformed_yaml_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"spec.yaml:2:9: not valid YAML: mapping values are not allowed here"):
        load_spec(write(tmp_path, "name: x\nmodels: : bad\n"))
    with pytest.raises(ConfigError, match="file not found"):
        load_spec(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="a spec is a YAML mapping"):
        load_spec(write(tmp_path, "- just\n- a list\n"))


def test_inventory_local_yaml_matches_embedded_default() -> None:
    inv, source = load_inventory(ROOT / "inventory" / "local.yaml")
    assert source.endswith("local.yaml")
    assert [b.model_dump() for b in inv.boards] == [b.model_dump() for b in DEFAULT.boards]


def test_inventory_errors(tmp_path: Path) -> None:
    path = write(tmp_path, {"boards": [{"name": "b1", "transport": "carrier-pigeon"}]}, "inv.yaml")
    with pytest.raises(ConfigError, match=r"inv.yaml: boards.0: Value error|unknown transport 'carrier-pigeon'"):
        load_inventory(path)
    inv, src = load_inventory(write(tmp_path, {"boards": [{"name": "b1"}]}, "ok.yaml"))
    with pytest.raises(ConfigError) as err:
        inv.board("b2", src, "spec.yaml")
    assert str(err.value) == f"spec.yaml: boards: unknown board 'b2': it is not in {src}, which has: b1"
    with pytest.raises(ConfigError, match="it is not in the built-in local inventory .no --inventory"):
        DEFAULT.board("b2", load_inventory(None)[1], "spec.yaml")


def test_example_lab_inventory_describes_each_kind_of_board() -> None:
    inv, _ = load_inventory(ROOT / "inventory" / "example-lab.yaml")
    boards = {b.name: b for b in inv.boards}
    assert {b.transport for b in inv.boards} == {"local", "ssh", "adb"}
    orin = boards["jetson-orin-01"]
    assert orin.engine_options["onnxruntime"]["providers"][:2] == ["TensorrtExecutionProvider", "CUDAExecutionProvider"]
    rk = boards["rk3399-01"]
    assert rk.ssh.jump.host == "gateway.lab.example" and rk.cpus == [4, 5] and set(rk.engines) == {"onnxruntime", "paddlelite"}
    assert boards["atlas200dk-01"].engine_options["paddlelite"]["nnadapter_device"] == "huawei_ascend_npu"
    phones = [b for b in inv.boards if b.transport == "adb"]
    assert len(phones) == 2 and {p.adb.serial for p in phones} == {"2A161FDH2000ZK", "192.168.10.57:5555"}
    no_python = boards["redmi-note-12"]
    assert not no_python.agent and {e: t.tool for e, t in no_python.native.items()} == {
        "tflite": "benchmark_model", "ncnn": "benchncnn", "mnn": "mnn_benchmark"}
    assert all(b.concurrency == 1 for b in inv.boards)  # one job at a time unless a board says otherwise


@pytest.mark.parametrize("board, expected", [
    ({"name": "p", "transport": "adb", "adb": {"serial": "x; reboot"}}, "boards.0.adb.serial: must be a USB serial"),
    ({"name": "p", "transport": "adb"}, "transport adb needs an 'adb' section"),
    ({"name": "j", "transport": "ssh", "ssh": {"host": "h", "user": "u", "jump": {"host": "g"}}},
     "boards.0.ssh.jump.user: a required key is missing, in board 'j'"),
    ({"name": "c", "cpus": [1, 1]}, "cpus must be distinct core numbers"),
    ({"name": "b; rm -rf /"}, "boards.0.name"),
])
def test_bad_boards_name_file_field_and_value(tmp_path: Path, board: dict, expected: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_inventory(write(tmp_path, {"boards": [board]}, "lab.yaml"))
    message = str(err.value)
    assert message.startswith(f"{tmp_path / 'lab.yaml'}: ") and expected in message and "\n" not in message


def test_input_flag() -> None:
    assert parse_input_flag("x=1x3x48x320") == ("x", [1, 3, 48, 320])
    for bad in ("x", "=1x2", "x=1xA"):
        with pytest.raises(ConfigError, match="expected NAME=DIMS"):
            parse_input_flag(bad)
