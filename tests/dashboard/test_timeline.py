"""The run's Gantt chart (``views.timeline_frame`` and ``charts.job_timeline``) over timeline records."""

from __future__ import annotations

from datetime import datetime, timedelta

import pandas as pd
import pytest

from controller.results.queries import TimelineRow
from dashboard import charts, views

T0 = datetime(2025, 3, 1, 22, 0, 0)  # naive UTC, as the database keeps it


def row(job_id: int, board: str, start_s: float | None, end_s: float | None, status: str = "ok",
        purpose: str = "measure", repeat_of: int | None = None, engine: str = "onnxruntime") -> TimelineRow:
    return TimelineRow(
        job_id=job_id, board=board, model="digits", engine=engine, label="fp32@bf16", variant="fp32",
        purpose=purpose, repeat_of=repeat_of, status=status, stage="load" if status == "failed" else None,
        started=None if start_s is None else T0 + timedelta(seconds=start_s),
        ended=None if end_s is None else T0 + timedelta(seconds=end_s))


ROWS = [
    row(1, "pi5", 0, 12.5),
    row(2, "jetson", 0.5, 3.25, status="failed", engine="openvino"),
    row(3, "pi5", 12.5, 20),
    row(4, "pi5", 20, 21.5, purpose="round", repeat_of=1),
    row(5, "jetson", None, None, status="failed"),  # never reached its board: not drawn
]


def test_a_bar_per_job_that_reached_its_board_with_its_duration_and_colour() -> None:
    frame = views.timeline_frame(ROWS)
    assert frame["job"].tolist() == [1, 2, 3, 4]
    assert frame["seconds"].tolist() == pytest.approx([12.5, 2.75, 7.5, 1.5])
    assert frame["bar"].tolist() == ["measure", "failed", "measure", "round"]
    assert frame["purpose"].tolist() == ["measure", "measure", "measure", "round of 1"]
    assert frame["variant"].tolist() == ["fp32@bf16"] * 4  # the configuration, as the jobs table names it

    spec = charts.job_timeline(frame).to_dict()
    enc = spec["encoding"]
    assert spec["mark"]["type"] == "bar"
    assert (enc["x"]["field"], enc["x2"]["field"], enc["y"]["field"]) == ("started", "ended", "board")
    assert enc["y"]["sort"] == ["jetson", "pi5"]  # one row per board
    assert spec["height"] == 40 + 36 * 2
    # The legend lists what is drawn, each in its fixed colour: failed in red.
    assert enc["color"]["scale"]["domain"] == ["measure", "round", "failed"]
    assert enc["color"]["scale"]["range"] == ["#1f77b4", "#9467bd", "#c62828"]
    hover = {t["field"] for t in enc["tooltip"]}
    assert {"model", "engine", "variant", "purpose", "status", "seconds", "start", "end"} <= hover

    (data,) = spec["datasets"].values()
    drawn = pd.DataFrame(data)
    # The naive UTC times reach the browser as UTC instants, so every zone draws them at the same place.
    assert pd.to_datetime(drawn["started"], format="ISO8601").tolist() == [pd.Timestamp(T0 + timedelta(seconds=s), tz="UTC")
                                                        for s in (0, 0.5, 12.5, 20)]
    assert pd.to_datetime(drawn["ended"], format="ISO8601").tolist() == [pd.Timestamp(T0 + timedelta(seconds=s), tz="UTC")
                                                      for s in (12.5, 3.25, 20, 21.5)]
    assert drawn["start"].tolist()[:2] == ["22:00:00 UTC", "22:00:00 UTC"] and drawn["end"].iloc[0] == "22:00:12 UTC"
    # On each board one bar ends before the next begins.
    for _, bars in drawn.groupby("board"):
        starts, ends = pd.to_datetime(bars["started"], format="ISO8601").tolist(), pd.to_datetime(bars["ended"], format="ISO8601").tolist()
        assert all(end <= start for end, start in zip(ends, starts[1:]))


def test_a_purpose_the_chart_does_not_know_is_drawn_in_grey() -> None:
    spec = charts.job_timeline(views.timeline_frame([row(1, "pi5", 0, 1, purpose="warmup")])).to_dict()
    assert spec["encoding"]["color"]["scale"] == {"domain": ["warmup"], "range": ["#9e9e9e"]}


def test_a_run_whose_jobs_never_reached_a_board_has_nothing_to_draw() -> None:
    assert views.timeline_frame([row(5, "jetson", None, None, status="failed")]).empty
