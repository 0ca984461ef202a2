"""Compilation through Ray, cached by content: an unchanged model is never compiled twice."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from controller.build.cache import Cache
from controller.build.compile import build_all, prepare_sources
from controller.config.spec import load_spec
from controller.run.cluster import ensure_ray
from tests.conftest import small_ppocr_spec


def cls_spec(tmp: Path, calibration: str) -> Path:
    path = small_ppocr_spec(tmp, name=f"compile-{calibration}")
    data = yaml.safe_load(path.read_text())
    data["models"] = [m for m in data["models"] if m["name"] == "ppocr-cls"]
    data["quantization"]["calibration"] = calibration
    path.write_text(yaml.safe_dump(data))
    return path


def build(spec_path: Path, cache: Cache) -> tuple[dict, list[str]]:
    loaded = load_spec(spec_path)
    steps: list[str] = []
    (model,) = build_all(loaded, cache, prepare_sources(loaded, cache), on_step=steps.append)
    assert not model.failures
    return {name: a.sha256 for name, a in model.variants.items()} | {"dataset": model.dataset.sha256}, steps


def test_second_build_compiles_nothing_and_a_changed_recipe_rebuilds_only_itself(tmp_path: Path) -> None:
    ensure_ray(None)
    cache = Cache(tmp_path / "cache")
    first, steps = build(cls_spec(tmp_path, "minmax"), cache)
    assert set(first) == {"fp32", "fp16", "int8", "dataset"}
    assert sorted(steps) == sorted(f"ppocr-cls {what}: done" for what in (
        "evaluation data", "calibration data", "fp32", "fp16", "int8"))

    again, steps = build(cls_spec(tmp_path, "minmax"), cache)
    assert again == first
    assert steps and all(s.endswith(": cached") for s in steps)

    other, steps = build(cls_spec(tmp_path, "percentile"), cache)
    assert {k: v for k, v in other.items() if k != "int8"} == {k: v for k, v in first.items() if k != "int8"}
    assert other["int8"] != first["int8"]
    assert [s for s in steps if not s.endswith(": cached")] == ["ppocr-cls int8: done"]


def test_a_variant_that_fails_to_compile_is_recorded_not_raised(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ensure_ray(None)
    cache = Cache(tmp_path / "cache")
    spec = cls_spec(tmp_path, "minmax")
    # Calibration data that lost its input: the int8 recipe fails inside its Ray task, and
    # the failure must come back as the variant's recorded reason.
    from controller.build import compile as compile_module

    real = compile_module._task_dataset

    def renamed(kind, inputs, samples, seed, model):  # type: ignore[no-untyped-def]
        data, meta = real(kind, inputs, samples, seed, model)
        if samples == 8:  # the calibration set of this spec
            import io

            import numpy as np

            arrays = dict(np.load(io.BytesIO(data), allow_pickle=False))
            arrays["input:not_x"] = arrays.pop("input:x")
            buf = io.BytesIO()
            np.savez(buf, **arrays)
            data = buf.getvalue()
        return data, meta

    monkeypatch.setattr(compile_module, "_task_dataset", renamed)
    loaded = load_spec(spec)
    (model,) = build_all(loaded, cache, prepare_sources(loaded, cache))
    assert set(model.variants) == {"fp32", "fp16"}
    assert "int8" in model.failures and "has no 'input:x'" in model.failures["int8"]


def test_the_private_ray_reports_no_usage_anywhere() -> None:
    import ray

    ensure_ray(None)
    # Ray's processes, workers included, see the switch that keeps Ray's usage report unsent.
    seen = ray.get(ray.remote(lambda: os.environ.get("RAY_USAGE_STATS_ENABLED")).remote())
    assert seen == "0"
