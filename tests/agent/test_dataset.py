"""The dataset reader against files built by hand as agent.protocol lays them out."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from agent.dataset import DatasetError, load_dataset
from tests.agent.conftest import CLS_NORMALIZE, cls_images, write_npz


def test_uint8_images_are_normalized_per_channel(tmp_path: Path) -> None:
    images = cls_images(5, seed=1)
    norm = {"scale": 1 / 255.0, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    labels = np.array([0, 1, 1, 0, 1], dtype=np.int64)
    ds = load_dataset(str(write_npz(tmp_path / "d.npz", "cls", {"x": images}, {"x": norm}, {"label": labels},
                                    params={"k": 3})))
    assert (ds.task, ds.count, ds.input_names, ds.params) == ("cls", 5, ["x"], {"k": 3})
    batch = ds.batch([3, 0])
    x = batch["x"]
    assert x.dtype == np.float32 and x.shape == (2,) + images.shape[1:]
    for row, index in enumerate([3, 0]):
        for c in range(3):
            expected = (images[index, c].astype(np.float64) / 255.0 - norm["mean"][c]) / norm["std"][c]
            np.testing.assert_allclose(x[row, c], expected, rtol=1e-5, atol=1e-5)
    assert list(ds.labels) == ["label"]
    np.testing.assert_array_equal(ds.labels["label"], labels)


def test_float_inputs_pass_through_and_integers_become_int64(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    floats = rng.normal(size=(4, 3, 2, 2))  # float64 in the file
    ids = rng.integers(0, 100, size=(4, 7)).astype(np.int32)
    ds = load_dataset(str(write_npz(tmp_path / "d.npz", "agreement", {"a": floats, "ids": ids}, {},
                                    {"reference:out": np.zeros((4, 2), np.float32)})))
    batch = ds.batch([1, 2, 3])
    assert batch["a"].dtype == np.float32 and batch["ids"].dtype == np.int64
    np.testing.assert_allclose(batch["a"], floats[1:4].astype(np.float32))
    np.testing.assert_array_equal(batch["ids"], ids[1:4])
    assert ds.input_names == ["a", "ids"] and list(ds.labels) == ["reference:out"]


def test_out_of_range_index_is_refused(tmp_path: Path) -> None:
    ds = load_dataset(str(write_npz(tmp_path / "d.npz", "cls", {"x": cls_images(2)}, {"x": CLS_NORMALIZE})))
    with pytest.raises(IndexError):
        ds.batch([2])


def test_a_file_without_meta_is_not_a_dataset(tmp_path: Path) -> None:
    np.savez(tmp_path / "plain.npz", x=np.zeros(3))
    with pytest.raises(DatasetError, match="__meta__"):
        load_dataset(str(tmp_path / "plain.npz"))


def test_unknown_task_is_refused_unless_reading_measurement_inputs(tmp_path: Path) -> None:
    path = write_npz(tmp_path / "d.npz", "segmentation", {"x": cls_images(2)}, {"x": CLS_NORMALIZE})
    with pytest.raises(DatasetError, match="segmentation"):
        load_dataset(str(path))
    assert load_dataset(str(path), require_task=False).count == 2


def test_count_must_match_the_arrays(tmp_path: Path) -> None:
    meta = {"task": "cls", "count": 3, "inputs": {"x": {"normalize": None}}, "params": {}}
    np.savez(tmp_path / "d.npz", __meta__=np.array(json.dumps(meta)), **{"input:x": np.zeros((2, 4), np.float32)})
    with pytest.raises(DatasetError, match="count is 3"):
        load_dataset(str(tmp_path / "d.npz"))


def test_pickled_objects_are_not_loaded(tmp_path: Path) -> None:
    meta = {"task": "rec", "count": 1, "inputs": {"x": {"normalize": None}}, "params": {}}
    np.savez(tmp_path / "d.npz", __meta__=np.array(json.dumps(meta)), **{"input:x": np.zeros((1, 2), np.float32)},
             text=np.array([{"not": "allowed"}], dtype=object))
    with pytest.raises(ValueError, match="allow_pickle"):
        load_dataset(str(tmp_path / "d.npz"))


def test_channel_count_mismatch_names_the_input(tmp_path: Path) -> None:
    bad = {"x": {"scale": 1.0, "mean": [0.0, 0.0], "std": [1.0, 1.0]}}
    ds = load_dataset(str(write_npz(tmp_path / "d.npz", "cls", {"x": cls_images(1)}, bad)))
    with pytest.raises(DatasetError, match="'x' has 3 channels"):
        ds.batch([0])
