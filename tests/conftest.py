"""Shared fixtures: a real EdgeFarm run over the PaddleOCR models, done once per test session.

The run is the same code path as `edgefarm run examples/ppocr.yaml`, with fewer samples and
shorter measurement so that the suite fits CI: real Ray, real engines, a real SQLite file.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def small_ppocr_spec(tmp: Path, name: str = "ppocr-test", **measure: object) -> Path:
    """examples/ppocr.yaml, made small: 24 labelled samples per model, short measurement, the two
    engines that read ONNX themselves (tests/controller/test_engines_run.py runs the others). Every
    configuration is measured in full and sampled to the two minimums only (no ``slower_factor``, no
    ``precision``: tests/controller/test_adaptive.py runs both), so the tests that read every figure
    of every configuration find them, and a busy machine does not stretch each job to max_seconds."""
    spec = yaml.safe_load((ROOT / "examples" / "ppocr.yaml").read_text())
    spec["name"] = name
    spec["engines"] = ["onnxruntime", "openvino"]
    spec["variants"] = ["fp32", "fp16", "int8"]
    for model in spec["models"]:
        model["dataset"]["samples"] = 24
    spec["quantization"] = {"calibration": "minmax", "samples": 8, "per_channel": True}
    spec["measure"] = {"warmup": 2, "min_iterations": 64, "min_seconds": 0.2, "max_seconds": 20,
                       "batch_sizes": [1, 2], "throughput_seconds": 0.2, "slower_factor": None,
                       "precision": None, **measure}
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.fixture(scope="session")
def edgefarm_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One workspace (cache, board work dirs) for the session, so compiled variants are reused."""
    home = tmp_path_factory.mktemp("edgefarm-home")
    mp = pytest.MonkeyPatch()
    mp.setenv("EDGEFARM_HOME", str(home))
    yield home
    mp.undo()


@pytest.fixture(scope="session")
def ppocr_db(tmp_path_factory: pytest.TempPathFactory, edgefarm_home: Path) -> str:
    """SQLAlchemy URL of a SQLite file filled by a real run of the three PaddleOCR models."""
    from controller.cli import main

    tmp = tmp_path_factory.mktemp("ppocr-run")
    url = f"sqlite:///{tmp / 'edgefarm.db'}"
    code = main(["run", str(small_ppocr_spec(tmp)), "--db", url])
    assert code == 0
    return url


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Any test that needs a real run's database is slow, wherever it lives."""
    for item in items:
        if {"ppocr_db", "failures_db"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
