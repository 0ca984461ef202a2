"""Early stopping across a board's jobs (``controller.run.adaptive``): the tracker's rules on stored job
rows, the payload's precision, and real runs on the local board where a clearly slower configuration
stops at the minimum count while the others are measured in full."""

from __future__ import annotations

import statistics
from pathlib import Path

import pytest
import yaml
from sqlalchemy import select

from controller.build.compile import Artifact, ModelBuild
from controller.build.source import ModelInput, Prepared
from controller.cli import main
from controller.config.spec import Spec
from controller.results.database import open_db
from controller.results.store import Job, Result
from controller.run.adaptive import EarlyStop
from controller.run.planning import Planned, job_payload
from tests.conftest import small_ppocr_spec


def _spec(**keys: object) -> Spec:
    return Spec(name="s", models=[{"name": "m", "path": "m.onnx"}, {"name": "n", "path": "n.onnx"}],
                **keys)  # type: ignore[arg-type]


def _build(spec: Spec, model: int = 0) -> ModelBuild:
    art = Artifact(Path("/cache/m.onnx"), "a" * 64, 10, {})
    prepared = Prepared(Path("/cache/src.onnx"), "b" * 64, (ModelInput("x", (1, 3, 8, 8), "float32"),), ("y",), 13)
    return ModelBuild(spec.models[model], prepared, "raw", dataset=art, inputs=art,
                      variants={v: art for v in spec.variants})


class Board:
    """Jobs of one spec as planned and stored: each ``ok``/``failed`` call is a stored job row."""

    def __init__(self, spec: Spec, early: EarlyStop) -> None:
        self.spec, self.early = spec, early

    def planned(self, engine: str, label: str, board: str = "b", model: int = 0) -> Planned:
        return Planned(board, _build(self.spec, model), label.split("@")[0].split("/")[0], engine, {}, label)

    def ok(self, engine: str, label: str, p50: float | None, accuracy: float | None, **where: object) -> Planned:
        p = self.planned(engine, label, **where)  # type: ignore[arg-type]
        job = Job(status="ok")
        job.result = Result(p50_ms=p50, accuracy=accuracy)
        self.early.observe(p, job)
        return p

    def failed(self, engine: str, label: str) -> None:
        self.early.observe(self.planned(engine, label), Job(status="failed"))

    def ceiling(self, engine: str = "openvino", label: str = "int8", **where: object) -> float | None:
        return self.early.measure_for(self.planned(engine, label, **where)).get("stop_above_ms")  # type: ignore[arg-type]


def _board(**keys: object) -> Board:
    spec = _spec(**keys)
    return Board(spec, EarlyStop(spec))


def test_the_ceiling_is_the_factor_times_the_best_within_the_budget_so_far() -> None:
    b = _board()  # slower_factor 3, budget 0.01
    assert b.ceiling() is None  # nothing measured yet: nothing to be slower than
    b.ok("onnxruntime", "fp32", 70.0, 0.99)  # the baseline sets the accuracy reference
    assert b.ceiling() == pytest.approx(210.0)
    b.ok("openvino", "fp32@bf16", 25.0, 0.98)  # a drop of exactly the budget is within it
    assert b.ceiling() == pytest.approx(75.0)
    b.ok("openvino", "int8", 10.0, 0.97)  # faster, but over the budget: not a best
    b.ok("ncnn", "fp16", 12.0, None)  # no accuracy figure (it stopped early): never within the budget
    b.failed("mnn", "fp32")
    assert b.ceiling() == pytest.approx(75.0)
    b.ok("ncnn", "int8", 20.0, 0.985)
    assert b.ceiling() == pytest.approx(60.0)


def test_each_board_and_model_has_its_own_best() -> None:
    b = _board()
    b.ok("onnxruntime", "fp32", 70.0, 0.99)
    assert b.ceiling(board="other") is None and b.ceiling(model=1) is None
    b.ok("onnxruntime", "fp32", 7.0, 0.5, board="other")
    assert b.ceiling(board="other") == pytest.approx(21.0) and b.ceiling() == pytest.approx(210.0)


def test_without_onnxruntime_fp32_the_reference_is_the_best_fp32_accuracy_of_any_engine() -> None:
    b = _board()
    b.ok("openvino", "fp32", 40.0, 0.90)
    b.ok("ncnn", "fp32", 50.0, 0.92)  # the reference is now 0.92: openvino's 0.90 drops 0.02
    b.ok("ncnn", "fp16", 45.0, 0.915)
    assert b.ceiling() == pytest.approx(135.0)
    b.ok("onnxruntime", "fp32", 80.0, 0.905)  # the baseline's own figure takes over from the best fp32
    assert b.ceiling() == pytest.approx(120.0)  # openvino fp32 (0.90) is within 0.01 of it now


def test_thread_sweep_labels_have_no_fp32_reference_so_nothing_stops() -> None:
    b = _board()
    b.ok("onnxruntime", "fp32/t1", 70.0, 0.99)  # selection has no baseline (label "fp32") either
    assert b.ceiling() is None


def test_a_model_without_accuracy_figures_stops_nothing() -> None:
    b = _board()
    b.ok("onnxruntime", "fp32", 70.0, None)
    b.ok("openvino", "fp32", 10.0, None)
    assert b.ceiling() is None


def test_no_median_no_ranking() -> None:
    b = _board()
    b.ok("onnxruntime", "fp32", None, 0.99)  # a native tool that printed only a mean
    assert b.ceiling() is None


def test_off_under_the_throughput_objective_and_without_a_factor() -> None:
    for keys in ({"selection": {"objective": "throughput"}}, {"measure": {"slower_factor": None}}):
        b = _board(**keys)
        b.ok("onnxruntime", "fp32", 70.0, 0.99)
        assert b.ceiling() is None, keys


def test_the_payload_asks_for_the_specs_precision() -> None:
    for precision in (0.02, 0.005, None):
        spec = _spec(measure={"precision": precision})
        p = Board(spec, EarlyStop(spec)).planned("onnxruntime", "fp32")
        assert job_payload(p, spec)["measure"]["precision"] == precision
    assert "stop_above_ms" not in job_payload(p, spec)["measure"]  # execute adds it, job by job


# --- real runs --------------------------------------------------------------------------

# ONNX Runtime on one thread with its graph optimisation off runs the int8 (QDQ) classifier as
# written, every quantize and dequantize node on its own: 2.2 to 5 times its own fp32 (the same
# engine on the same thread, so a busy machine slows both), five to six times OpenVINO's best on
# a quiet one. A factor of 1.5 stops it whichever is the best.
SLOW = {"threads": 1, "graph_optimization": "disable"}
FACTOR = 1.5


def _run(tmp_path: Path, name: str, **measure: object) -> list[tuple[Job, Result]]:
    # 0.1 s: less than the 64 samples of the slow configuration take, so the count decides when it stops.
    path = small_ppocr_spec(tmp_path, name, min_seconds=0.1, max_seconds=5, **measure)
    spec = yaml.safe_load(path.read_text())
    spec["models"] = [m for m in spec["models"] if m["name"] == "ppocr-cls"]
    spec["variants"] = ["fp32", "int8"]
    spec["engines"] = [{"name": "onnxruntime", "options": SLOW}, "openvino"]
    spec["selection"] = {"budget": 0.01, "rounds": 0}  # the run's own jobs only
    path.write_text(yaml.safe_dump(spec))
    url = f"sqlite:///{tmp_path / name}.db"
    assert main(["run", str(path), "--db", url]) == 0
    with open_db(url)() as db:
        jobs = db.scalars(select(Job).where(Job.purpose == "measure").order_by(Job.id)).all()
        pairs = [(j, j.result) for j in jobs]
        for j, r in pairs:  # loaded while the session is open
            assert j.status == "ok" and r is not None, (j.engine, j.label, j.stage, j.message)
            _ = (r.raw, r.samples_ms, r.throughput)
    return pairs


def _full(r: Result) -> bool:
    return (r.accuracy is not None and [t["batch"] for t in r.throughput] == [1, 2]
            and r.raw["e2e"]["n"] >= 64 and not r.raw.get("notes"))


@pytest.mark.slow
def test_a_clearly_slower_configuration_stops_at_the_minimum_count(tmp_path: Path, edgefarm_home: Path) -> None:
    pairs = _run(tmp_path, "adaptive", precision=0.02, slower_factor=FACTOR)
    by_config = {(j.engine, j.label): r for j, r in pairs}
    reference = by_config[("onnxruntime", "fp32")].accuracy
    best: float | None = None
    for job, r in pairs:  # in the order measured: each job's ceiling is what the board had measured before it
        sampling = r.raw["sampling"]
        ceiling = None if best is None else FACTOR * best
        median = statistics.median(r.samples_ms)  # of the samples the agent had when it stopped
        if sampling["stopped_by"] == "slower":
            assert ceiling is not None and median > ceiling, (job.engine, job.label)
            assert r.accuracy is None and r.throughput == [] and r.n == len(r.samples_ms)
            assert "e2e" not in r.raw and r.raw["phases"].get("accuracy_ms") is None
            (note,) = r.raw["notes"]
            assert note.startswith(f"stopped at {r.n} samples: median {r.p50_ms:.4g} ms is above the "
                                   f"{ceiling:.4g} ms limit")
        else:
            assert _full(r), (job.engine, job.label)
            assert sampling["stopped_by"] in ("precision", "max_seconds")
            if sampling["stopped_by"] == "precision":  # judged on these very samples: not slower, precise
                assert (ceiling is None or median <= ceiling) and sampling["precision"] <= 0.02
            assert r.n >= 64 and sampling["median_ci95"][0] <= r.p50_ms <= sampling["median_ci95"][1]
            if reference - r.accuracy <= 0.01 + 1e-12:
                best = r.p50_ms if best is None else min(best, r.p50_ms)
    slow = by_config[("onnxruntime", "int8")]
    assert (slow.raw["sampling"]["stopped_by"], slow.n) == ("slower", 64)
    # The baseline comes first, with nothing to be slower than. Whether OpenVINO's configurations are
    # measured in full depends on how busy the machine is; the loop above holds either way.
    assert _full(by_config[("onnxruntime", "fp32")])


@pytest.mark.slow
def test_without_a_slower_factor_every_configuration_is_measured_in_full(tmp_path: Path, edgefarm_home: Path) -> None:
    pairs = _run(tmp_path, "full", precision=None, slower_factor=None)
    assert len(pairs) >= 4
    for job, r in pairs:
        assert _full(r), (job.engine, job.label)
        assert r.raw["sampling"]["stopped_by"] == "target", (job.engine, job.label)
