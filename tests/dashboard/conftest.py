"""A results database with a history: real runs of one tiny spec, as a team's first nights make it."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import pytest

HIDDEN = 4096  # the replaced model's hidden units: 64 times the trained ones, for a slowdown far outside any band


@dataclass(frozen=True)
class History:
    url: str  # four runs: `edgefarm run`, then three nightlies, "mlp"'s model file replaced before the last
    one_run: str  # a copy of the same database after its first run


def widen(path: Path, hidden: int) -> None:
    """Rewrite ``tests.models.digits_mlp``'s file with ``hidden`` hidden units, the new ones with zero
    weights: the same outputs (so the same accuracy), a new model file, many times the arithmetic."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    weights = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    trained = weights["w1"].shape[1]
    w1 = np.zeros((weights["w1"].shape[0], hidden), np.float32)
    w1[:, :trained] = weights["w1"]
    b1 = np.zeros(hidden, np.float32)
    b1[:trained] = weights["b1"]
    w2 = np.zeros((hidden, weights["w2"].shape[1]), np.float32)
    w2[:trained] = weights["w2"]
    del model.graph.initializer[:]
    model.graph.initializer.extend(numpy_helper.from_array(a, n) for a, n in ((w1, "w1"), (b1, "b1"), (w2, "w2"),
                                                                              (weights["b2"], "b2")))
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


@pytest.fixture(scope="session")
def history_db(tmp_path_factory: pytest.TempPathFactory, edgefarm_home: Path) -> History:
    """Two digits classifiers (trained here, ONNX Runtime fp32: one job each a night) measured by
    `edgefarm run` once and `edgefarm nightly` three times. Before the last night "mlp" gets a wider
    model file: a real slowdown that nightly confirms and names ("model file changed"), while
    "digits" stays as it was. About a minute on two cores."""
    import yaml

    from controller.cli import main
    from tests.models import digits_mlp

    tmp = tmp_path_factory.mktemp("history-runs")
    for name in ("digits", "mlp"):
        digits_mlp(tmp / f"{name}.onnx")
    spec = tmp / "history.yaml"
    spec.write_text(yaml.safe_dump({
        "name": "digits-history",
        "models": [{"name": n, "path": str(tmp / f"{n}.onnx"), "dataset": {"kind": "seeded", "samples": 16}}
                   for n in ("digits", "mlp")],
        "variants": ["fp32"], "engines": ["onnxruntime"],
        # Sampled to the minimums (no precision target): a busy machine does not stretch a job to max_seconds.
        "measure": {"warmup": 2, "min_iterations": 64, "min_seconds": 0.2, "max_seconds": 10, "batch_sizes": [1],
                    "precision": None},
        "regression": {"confirm": 1},  # one re-run confirms the slowdown: enough for a 4x one, and quicker
    }))
    url = f"sqlite:///{tmp / 'edgefarm.db'}"
    assert main(["run", str(spec), "--db", url]) == 0
    # SQLite's backup, not a file copy: the database is in WAL mode, and its newest pages may be in the -wal file.
    with closing(sqlite3.connect(tmp / "edgefarm.db")) as src, closing(sqlite3.connect(tmp / "one-run.db")) as dst:
        src.backup(dst)
    for night in (1, 2):  # a steady board; what nightly makes of it (no baseline, then a band) is read, not assumed
        assert main(["nightly", str(spec), "--db", url, "--report", str(tmp / f"night-{night}")]) in (0, 1)
    widen(tmp / "mlp.onnx", HIDDEN)
    assert main(["nightly", str(spec), "--db", url, "--report", str(tmp / "night-3")]) == 1
    return History(url, f"sqlite:///{tmp / 'one-run.db'}")
