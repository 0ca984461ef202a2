"""The History tab: each benchmark's runs as a line with the band nightly judged them against and
the changes marked, against a database filled by real runs and nightlies (``history_db``).

The figures shown are checked against the database by queries of this file's own, and the band
against the rule docs/results.md states (median of the good runs before ± the larger of ``band``
run-to-run standard deviations and the farthest of them), not against the code that draws it.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pandas as pd
import pytest
from sqlalchemy import select

from controller.config.spec import RegressionSpec
from controller.results.database import open_db
from controller.results.store import Board, Job, Model, Result, Run, Variant
from dashboard import views
from tests.dashboard.conftest import History
from tests.dashboard.test_app import chart_data, frame_with, start

# What keeps a run out of later baselines: a reported regression or failure, and a slowdown that did not
# reproduce (its median is not what the board does on its own).
OUT_OF_BASELINE = ("regression", "accuracy-regression", "failing", "noise")


def measured(url: str, model: str) -> list[dict]:
    """The model's runs as the database has them, oldest first: its ``measure`` jobs that ran."""
    with open_db(url)() as db:
        rows = db.execute(
            select(Job.run_id, Run.kind, Run.started_at, Result.p50_ms, Job.verdict, Model.sha256)
            .join(Run, Run.id == Job.run_id).join(Result, Result.job_id == Job.id)
            .join(Variant, Variant.id == Job.variant_id).join(Model, Model.id == Variant.model_id)
            .where(Model.name == model, Job.purpose == "measure", Job.status == "ok", Run.status == "done")
            .order_by(Job.run_id)
        ).all()
    return [r._asdict() for r in rows]


def expected_bands(rows: list[dict], rules: RegressionSpec) -> list[tuple[float, float] | None]:
    """Each run's band, from the newest ``history`` good runs before it."""
    bands: list[tuple[float, float] | None] = []
    for i in range(len(rows)):
        good = [r["p50_ms"] for r in rows[:i] if r["verdict"] not in OUT_OF_BASELINE][-rules.history:]
        if len(good) < 2:
            bands.append(None)
            continue
        center = statistics.median(good)
        # The run-to-run variance, pooled with the rule's prior: 3% of the centre, worth two runs.
        pooled = (statistics.variance(good) * (len(good) - 1) + 2 * (0.03 * center) ** 2) / (len(good) - 1 + 2)
        half = max(rules.band * pooled ** 0.5, max(abs(m - center) for m in good))
        bands.append((max(0.0, center - half), center + half))  # a band ends at no time at all
    return bands


def history_charts(at) -> list:
    """The charts on the page with a band (an area mark): the History tab's."""
    return [c for c in at.get("vega_lite_chart") if any(
        layer.get("mark", {}).get("type") == "area"
        for part in json.loads(c.proto.spec).get("vconcat", []) for layer in part.get("layer", []))]


def history_chart(at) -> tuple[dict, list]:
    """The History tab's chart: its Vega-Lite spec and its datasets."""
    found = history_charts(at)
    assert len(found) == 1, "no history chart on the page"
    return json.loads(found[0].proto.spec), chart_data(found[0])


def assert_history_shown(at, url: str, model: str) -> None:
    rows = measured(url, model)
    assert len(rows) == 4  # the fixture's four runs; confirmations are not points of their own
    spec, datasets = history_chart(at)
    points = next(d for d in datasets if "band_low" in d.columns and len(d) == len(rows))
    assert points["run"].tolist() == [r["run_id"] for r in rows]
    assert points["kind"].tolist() == ["run", "nightly", "nightly", "nightly"]
    # The database's naive UTC times reach the browser as UTC instants, whatever its own time zone.
    assert points["started"].tolist() == [pd.Timestamp(r["started_at"], tz="UTC") for r in rows]
    assert points["p50_ms"].tolist() == pytest.approx([r["p50_ms"] for r in rows])
    assert points["verdict"].tolist() == [r["verdict"] or "not judged" for r in rows]
    bands = expected_bands(rows, RegressionSpec())  # the spec sets no regression rules: the defaults
    assert bands[:2] == [None, None] and None not in bands[2:]
    for band, low, high in zip(bands, points["band_low"], points["band_high"]):
        if band is None:
            assert pd.isna(low) and pd.isna(high)
        else:
            assert (low, high) == pytest.approx(band)
    changed = ["model file changed" if i and r["sha256"] != rows[i - 1]["sha256"] else "" for i, r in enumerate(rows)]
    assert points["change"].tolist() == changed
    # The legend names what is drawn, and only that: the verdicts present and the band.
    legend = next(layer["encoding"]["color"]["scale"]["domain"] for layer in spec["vconcat"][0]["layer"]
                  if layer["mark"]["type"] == "point")
    assert set(legend) == set(points["verdict"]) | {"noise band"}
    table = frame_with(at.dataframe, "what changed")  # newest first
    assert table["run"].tolist() == [r["run_id"] for r in reversed(rows)]
    assert table["verdict"].tolist() == [r["verdict"] or "not judged" for r in reversed(rows)]


@pytest.mark.slow
def test_history_opens_on_the_newest_regression(monkeypatch: pytest.MonkeyPatch, history_db: History) -> None:
    with open_db(history_db.url)() as db:
        newest = db.execute(
            select(Model.name, Board.name, Job.engine, Job.label).join(Board, Board.id == Job.board_id)
            .join(Variant, Variant.id == Job.variant_id).join(Model, Model.id == Variant.model_id)
            .where(Job.verdict.in_(["regression", "accuracy-regression"]), Job.purpose == "measure")
            .order_by(Job.run_id.desc(), Job.id).limit(1)
        ).one()
    mlp = measured(history_db.url, "mlp")
    assert mlp[-1]["verdict"] == "regression" and mlp[-1]["sha256"] != mlp[-2]["sha256"]  # what the fixture planted
    at = start(monkeypatch, history_db.url)
    picked = tuple(at.selectbox(key=f"history_{level}").value for level in ("model", "board", "engine", "configuration"))
    assert picked == tuple(newest)
    assert_history_shown(at, history_db.url, picked[0])
    assert any("regression" in e.value for e in at.error)  # the banner says so too


@pytest.mark.slow
def test_another_benchmark_is_picked_by_its_selectors(monkeypatch: pytest.MonkeyPatch, history_db: History) -> None:
    at = start(monkeypatch, history_db.url)
    assert at.selectbox(key="history_model").options == ["digits", "mlp"]
    at.selectbox(key="history_model").set_value("digits").run()
    assert not at.exception
    assert at.selectbox(key="history_board").value == "local"
    assert_history_shown(at, history_db.url, "digits")  # its model file never changed: no change marked


@pytest.mark.slow
def test_a_benchmark_with_one_run_says_so(monkeypatch: pytest.MonkeyPatch, history_db: History) -> None:
    at = start(monkeypatch, history_db.one_run)
    (run_id,) = {r["run_id"] for r in measured(history_db.one_run, "digits")}
    assert any(f"has one run so far (run #{run_id})" in i.value for i in at.info), [i.value for i in at.info]
    assert not history_charts(at)
    table = frame_with(at.dataframe, "what changed")
    assert table["run"].tolist() == [run_id] and table["verdict"].tolist() == ["not judged"]


def test_no_finished_run_yet_says_so(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The first run of a farm, still running: nothing to draw, and said."""
    url = f"sqlite:///{tmp_path / 'first.db'}"
    with open_db(url)() as db:
        db.add(Run(spec_name="s", spec_sha256="0" * 64, spec={}, kind="run", status="running"))
        db.commit()
    at = start(monkeypatch, url)
    assert any("No benchmark has a successful measurement in a finished run yet" in i.value for i in at.info)


def test_regression_rules_are_the_newest_runs_own(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'rules.db'}"
    with open_db(url)() as db:
        for name, regression in [("s", {"history": 8}), ("s", {"history": 3, "band": 2.0}),
                                 ("old", {"a_key_of_an_older_edgefarm": 1}), ("plain", None)]:
            db.add(Run(spec_name=name, spec_sha256="0" * 64, spec={"regression": regression} if regression else {}))
        db.commit()
        rules = views.regression_rules(db, "s")
        assert (rules.history, rules.band) == (3, 2.0)
        for name in ("old", "plain", "no-such-spec"):
            assert views.regression_rules(db, name) == RegressionSpec()


def test_selectors_offer_only_benchmarks_that_exist() -> None:
    known = [("nightly", ("det", "jetson", "tensorrt", "fp16")), ("nightly", ("det", "local", "onnxruntime", "fp32")),
             ("nightly", ("det", "local", "onnxruntime", "int8")), ("other", ("rec", "local", "openvino", "fp32"))]
    assert views.benchmark_options(known, []) == ["nightly", "other"]
    assert views.benchmark_options(known, ["nightly"]) == ["det"]
    assert views.benchmark_options(known, ["nightly", "det"]) == ["jetson", "local"]
    assert views.benchmark_options(known, ["nightly", "det", "local", "onnxruntime"]) == ["fp32", "int8"]
    assert views.benchmark_options(known, ["other", "det"]) == []
