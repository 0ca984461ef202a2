"""The dashboard under Streamlit's AppTest, against a database filled by a real EdgeFarm run.

Every figure the page shows is checked against the controller's own answer on the same
database (``controller.results.selection`` / an independent SQL query), never against constants.
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pytest
from sqlalchemy import func, select

from controller.results import selection
from controller.results.database import open_db
from controller.results.store import Board, Job, Model, Result, Run, Variant
from tests.conftest import ROOT

APP = Path(__file__).resolve().parents[2] / "dashboard" / "app.py"
TIMEOUT = 60  # the first run imports pandas, altair and SQLAlchemy on a 2-core machine


@pytest.fixture(scope="session")
def failures_db(tmp_path_factory: pytest.TempPathFactory, edgefarm_home: Path) -> str:
    """A real small run where some jobs fail: a digits classifier (trained here) on ONNX Runtime,
    and on OpenVINO asked for a device that does not exist, so its jobs fail at load."""
    import yaml

    from controller.cli import main
    from tests.models import digits_mlp

    tmp = tmp_path_factory.mktemp("failures-run")
    digits_mlp(tmp / "digits.onnx", dynamic_batch=False)
    spec = {
        "name": "digits-failures",
        "models": [{"name": "digits", "path": str(tmp / "digits.onnx"), "dataset": {"kind": "seeded", "samples": 64}}],
        "variants": ["fp32", "int8"],
        "engines": [{"name": "onnxruntime"}, {"name": "openvino", "options": {"device": "NO_SUCH_DEVICE"}}],
        "measure": {"warmup": 2, "min_iterations": 64, "min_seconds": 0.2, "max_seconds": 10, "batch_sizes": [1],
                    "throughput_seconds": 0.2},
    }
    (tmp / "spec.yaml").write_text(yaml.safe_dump(spec))
    url = f"sqlite:///{tmp / 'edgefarm.db'}"
    assert main(["run", str(tmp / "spec.yaml"), "--db", url]) == 0
    return url


def start(monkeypatch: pytest.MonkeyPatch, url: str):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("EDGEFARM_DB", url)
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def frame_with(elements, column: str):
    """The first table/dataframe element that has ``column`` (sections have distinct columns)."""
    found = [e.value for e in elements if column in e.value.columns]
    assert found, f"no table with a {column!r} column"
    return found[0]


def expected(url: str, budget: float) -> list[selection.Selection]:
    with open_db(url)() as session:
        return selection.selections(session, budget)


def assert_table_matches(table, sels: list[selection.Selection]) -> None:
    assert list(zip(table["model"], table["chip"])) == [(s.model, s.chip) for s in sels]
    for (_, row), sel in zip(table.iterrows(), sels):
        best = sel.best
        if best is None:
            assert row["result"] == "nothing within budget" and row.isna()["engine"], row.to_dict()
            continue
        assert row["result"] == "best within budget"
        assert (row["engine"], row["variant"], int(row["job"])) == (best.engine, best.variant, best.job_id)
        assert row["p50 ms"] == pytest.approx(best.p50_ms)
        assert row["drop"] == pytest.approx(best.accuracy_drop)
        assert row["drop"] <= sel.budget + 1e-12
        if best.speedup_vs_baseline is not None:
            assert row["speed-up"] == pytest.approx(best.speedup_vs_baseline)


def chart_data(chart) -> list:
    """The Arrow tables a Vega-Lite element carries, as DataFrames."""
    import pyarrow as pa

    return [pa.ipc.open_stream(io.BytesIO(d.data.data)).read_all().to_pandas() for d in chart.proto.datasets]


# --- without results -------------------------------------------------------------------------


def test_empty_database_says_no_results_yet(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    open_db(url)  # the tables exist, no run has written to them
    at = start(monkeypatch, url)
    assert any("No results yet" in i.value and "edgefarm run" in i.value for i in at.info)
    assert not at.error and not at.table and not at.dataframe
    assert str(tmp_path / "empty.db") in at.sidebar.code[0].value


def test_missing_sqlite_file_is_reported_not_created(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    db = tmp_path / "typo.db"
    at = start(monkeypatch, f"sqlite:///{db}")
    assert any("No results yet" in i.value and str(db) in i.value for i in at.info)
    assert not db.exists(), "a read-only dashboard must not create the database it was pointed at"


def test_an_older_database_is_named_with_the_command_that_upgrades_it(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    old = tmp_path / "release.db"
    shutil.copyfile(ROOT / "tests" / "data" / "release-bf4204a.db", old)
    before = old.read_bytes()
    at = start(monkeypatch, f"sqlite:///{old}")
    assert [e.value for e in at.error if "edgefarm db upgrade" in e.value], [e.value for e in at.error]
    assert not at.exception and old.read_bytes() == before  # shown, not raised; and not altered


def test_password_never_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    # Nothing listens on port 1: the page must say it cannot read the database, without the password.
    pytest.importorskip("psycopg")
    at = start(monkeypatch, "postgresql+psycopg://edge:s3cret-pw@127.0.0.1:1/edgefarm?connect_timeout=2")
    shown = " ".join(e.value for e in [*at.error, *at.sidebar.code])
    assert "Cannot read" in shown and "127.0.0.1" in shown
    assert "s3cret-pw" not in shown


# --- against a real run ----------------------------------------------------------------------


def test_selection_table_matches_controller_selection(monkeypatch: pytest.MonkeyPatch, ppocr_db: str) -> None:
    at = start(monkeypatch, ppocr_db)
    assert at.slider(key="budget").value == pytest.approx(0.01)
    table = frame_with(at.table, "result")
    # One row per (model, chip) that has a successful result, found by a query of our own.
    with open_db(ppocr_db)() as session:
        present = set(session.execute(
            select(Model.name, Job.chip).distinct().select_from(Job)
            .join(Result, Result.job_id == Job.id)
            .join(Variant, Variant.id == Job.variant_id).join(Model, Model.id == Variant.model_id)
            .where(Job.status == "ok")
        ).all())
    assert {m for m, _ in present} == {"ppocr-det", "ppocr-rec", "ppocr-cls"}
    assert sorted(zip(table["model"], table["chip"])) == sorted(present)
    assert_table_matches(table, expected(ppocr_db, 0.01))
    assert not at.error


def test_budget_zero_follows_selection(monkeypatch: pytest.MonkeyPatch, ppocr_db: str) -> None:
    at = start(monkeypatch, ppocr_db)
    assert_table_matches(frame_with(at.table, "result"), expected(ppocr_db, 0.01))
    at.slider(key="budget").set_value(0.0).run()
    assert not at.exception
    sels = expected(ppocr_db, 0.0)
    assert_table_matches(frame_with(at.table, "result"), sels)
    assert any("at most **0**" in c.value for c in at.caption)
    nothing = [s for s in sels if s.best is None]
    warnings = [w.value for w in at.warning if "nothing within the accuracy budget" in w.value]
    assert len(warnings) == len(nothing)
    for sel, text in zip(nothing, warnings):
        assert f"**{sel.model}** on **{sel.chip}**" in text and "budget 0." in text


def test_filters_narrow_the_table(monkeypatch: pytest.MonkeyPatch, ppocr_db: str) -> None:
    at = start(monkeypatch, ppocr_db)
    at.multiselect(key="models").set_value(["ppocr-rec"]).run()
    table = frame_with(at.table, "result")
    assert set(table["model"]) == {"ppocr-rec"}
    assert_table_matches(table, [s for s in expected(ppocr_db, 0.01) if s.model == "ppocr-rec"])
    bars = chart_data(at.get("vega_lite_chart")[0])
    assert set(bars[0]["model"]) == {"ppocr-rec"}


def test_charts_show_every_measured_configuration(monkeypatch: pytest.MonkeyPatch, ppocr_db: str) -> None:
    at = start(monkeypatch, ppocr_db)
    charts = at.get("vega_lite_chart")
    # latency bars, accuracy, latency vs accuracy, throughput, distribution, and the picked run's timeline
    assert len(charts) == 6
    with open_db(ppocr_db)() as session:
        cands = selection.latest_candidates(session)
    spec = json.loads(charts[0].proto.spec)
    assert spec["spec"]["encoding"]["y"]["field"] == "p50_ms"
    assert {spec["spec"]["encoding"][k]["field"] for k in ("x", "xOffset", "color")} == {"variant", "engine"}
    bars = chart_data(charts[0])[0]
    shown = {(r.model, r.engine, r.variant): r.p50_ms for r in bars.itertuples()}
    assert shown == pytest.approx({(c.model, c.engine, c.variant): c.p50_ms for c in cands})
    assert {"onnxruntime", "openvino"} <= set(bars["engine"])
    assert {"fp32", "fp16", "int8"} <= set(bars["variant"])
    points = chart_data(charts[1])[0]  # each accuracy panel names its model's metric
    assert set(points["group"]) == {f"{c.model} · {c.accuracy_metric}" for c in cands}
    lines = chart_data(charts[3])[0]
    measured = {(c.model, c.engine, c.variant, r["batch"]): r["items_per_s"]
                for c in cands for r in c.throughput if "error" not in r}
    assert len({b for *_, b in measured}) > 1  # the spec sweeps batch sizes
    assert {(r.model, r.engine, r.variant, r.batch): r.items_per_s for r in lines.itertuples()} == pytest.approx(measured)


def test_the_throughput_objective_changes_the_selection_rule(monkeypatch: pytest.MonkeyPatch, ppocr_db: str) -> None:
    at = start(monkeypatch, ppocr_db)
    at.radio(key="objective").set_value("throughput").run()
    at.number_input(key="ceiling").set_value(1000.0).run()
    assert not at.exception
    assert any("Most items/s" in c.value and "1000 ms" in c.value for c in at.caption)
    with open_db(ppocr_db)() as session:
        chosen = selection.selections(session, 0.01, "throughput", 1000.0)
    shown = at.table[0].value
    assert set(shown["batch"]) == {s.best.batch for s in chosen if s.best}


def test_latency_distribution_shows_raw_samples(monkeypatch: pytest.MonkeyPatch, ppocr_db: str) -> None:
    at = start(monkeypatch, ppocr_db)
    with open_db(ppocr_db)() as session:
        job_id = selection.latest_candidates(session)[-1].job_id  # not the one shown first
        samples = session.execute(select(Result.samples_ms).where(Result.job_id == job_id)).scalar_one()
    assert len(samples) >= 64  # the spec asks for at least 64 warm iterations
    assert at.selectbox(key="result").value != job_id
    at.selectbox(key="result").set_value(job_id).run()
    assert not at.exception
    data = chart_data(at.get("vega_lite_chart")[4])
    raw = next(d for d in data if "iteration" in d.columns)
    assert raw["ms"].tolist() == pytest.approx(samples)
    assert any(f"{len(samples)} raw samples" in c.value for c in at.caption)


def test_runs_list_shows_every_run_and_its_jobs(monkeypatch: pytest.MonkeyPatch, ppocr_db: str) -> None:
    at = start(monkeypatch, ppocr_db)
    runs = frame_with(at.dataframe, "verdict")
    with open_db(ppocr_db)() as session:
        db_runs = session.execute(select(Run.id, Run.status)).all()
        newest = max(r.id for r in db_runs)
        # The run's own jobs are counted; the job table lists its repeats (finalists' rounds) too.
        jobs = dict(session.execute(
            select(Job.status, func.count()).where(Job.run_id == newest, Job.purpose == "measure").group_by(Job.status)
        ).all())
        listed_jobs = session.execute(select(Job.id, Job.purpose, Job.repeat_of).where(Job.run_id == newest)).all()
        failed = session.execute(select(Job.id, Job.stage, Job.message).where(
            Job.run_id == newest, Job.status == "failed")).all()
    assert sorted(runs["run"]) == sorted(r.id for r in db_runs)
    assert dict(zip(runs["run"], runs["status"])) == {r.id: r.status for r in db_runs}
    row = runs[runs["run"] == newest].iloc[0]
    assert (row["jobs ok"], row["jobs failed"], row["jobs"]) == (
        jobs.get("ok", 0), jobs.get("failed", 0), sum(jobs.values()))
    job_rows = frame_with(at.dataframe, "p99 ms")
    assert len(job_rows) == len(listed_jobs)
    assert dict(zip(job_rows["job"], job_rows["purpose"])) == {  # a round says so, and names the job it repeats
        i: purpose if of is None else f"{purpose} of {of}" for i, purpose, of in listed_jobs}
    if failed:
        listed = frame_with(at.table, "stage")
        assert [tuple(r) for r in listed[["job", "stage", "message"]].values] == [tuple(f) for f in failed]
    else:
        assert any(m.value == f"No failed jobs in run #{newest}." for m in at.markdown)


def test_boards_show_the_fingerprint(monkeypatch: pytest.MonkeyPatch, ppocr_db: str) -> None:
    at = start(monkeypatch, ppocr_db)
    boards = frame_with(at.dataframe, "last seen (UTC)")
    with open_db(ppocr_db)() as session:
        db_boards = {b.name: b for b in session.scalars(select(Board))}
    assert sorted(boards["board"]) == sorted(db_boards) and "local" in db_boards
    local = boards[boards["board"] == "local"].iloc[0]
    fingerprint = db_boards["local"].fingerprint or {}
    assert local["chip"] == db_boards["local"].chip and not isinstance(local["chip check"], str)
    for key in ("arch", "cores"):
        if fingerprint.get(key) is not None:
            assert local[key] == fingerprint[key]


# --- a run with failures ---------------------------------------------------------------------


def test_failed_jobs_show_stage_message_and_stderr(monkeypatch: pytest.MonkeyPatch, failures_db: str) -> None:
    at = start(monkeypatch, failures_db)
    with open_db(failures_db)() as session:
        failed = session.execute(select(Job.id, Job.stage, Job.message, Job.stderr_tail).where(
            Job.status == "failed").order_by(Job.id)).all()
        engines = set(session.scalars(select(Job.engine).where(Job.status == "failed")))
    assert failed and engines == {"openvino"}  # the run itself must have failed where it was meant to
    runs = frame_with(at.dataframe, "verdict")
    assert runs["jobs failed"].tolist() == [len(failed)]
    assert any(f"{len(failed)} of" in w.value and "jobs failed" in w.value for w in at.warning)
    listed = frame_with(at.dataframe, "stderr, last line")
    assert [tuple(r) for r in listed[["job", "stage", "message"]].values] == [(f.id, f.stage, f.message) for f in failed]
    assert all(stage == "load" for stage in listed["stage"])
    for row, f in zip(listed["stderr, last line"], failed):
        assert row == (f.stderr_tail.strip().splitlines()[-1].strip() if f.stderr_tail else None)
    tails = [e for e in at.expander if e.label.startswith("stderr tail of job")]
    assert len(tails) == sum(1 for f in failed if f.stderr_tail)
    assert "NO_SUCH_DEVICE" in " ".join(f.stderr_tail or f.message for f in failed)


def test_nothing_within_budget_names_the_nearest(
    monkeypatch: pytest.MonkeyPatch, failures_db: str, tmp_path: Path
) -> None:
    """A copy of the real failures run in which the fp32 result is withdrawn (its job marked
    failed), as when fp32 does not fit a small board: with no fp32 accuracy on the chip nothing
    can be judged within budget. No real run on this machine produces that without a fault."""
    import sqlite3

    copy = tmp_path / "no-fp32.db"
    with sqlite3.connect(failures_db.removeprefix("sqlite:///")) as src, sqlite3.connect(copy) as dst:
        src.backup(dst)
    url = f"sqlite:///{copy}"
    with open_db(url)() as session:
        for job in session.scalars(select(Job).where(Job.label == "fp32", Job.status == "ok")):
            session.delete(job.result)
            job.status, job.stage, job.message = "failed", "measure", "withdrawn by the test"
        session.commit()
    sels = expected(url, 0.01)
    assert sels and all(s.best is None and s.nearest for s in sels)
    at = start(monkeypatch, url)
    assert_table_matches(frame_with(at.table, "result"), sels)
    warnings = [w.value for w in at.warning if "nothing within the accuracy budget" in w.value]
    assert len(warnings) == len(sels)
    for sel, text in zip(sels, warnings):
        assert f"**{sel.model}** on **{sel.chip}**" in text and "no fp32 result with an accuracy figure" in text
    nearest = [e.value for e in at.table if "result" not in e.value.columns and "engine" in e.value.columns]
    for sel, shown in zip(sels, nearest):
        assert [tuple(r) for r in shown[["engine", "variant", "job"]].values] == [
            (c.engine, c.variant, c.job_id) for c in sel.nearest]


def test_variants_section_says_what_each_recipe_did(monkeypatch: pytest.MonkeyPatch, ppocr_db: str) -> None:
    at = start(monkeypatch, ppocr_db)
    table = frame_with(at.dataframe, "what_the_recipe_did")
    assert len(table) == 9 and set(table["variant"]) == {"fp32", "fp16", "int8"}
    fp32 = table[table["variant"] == "fp32"]
    assert (fp32["smaller_x"] == 1.0).all() and fp32["what_the_recipe_did"].str.contains(" nodes; ").all()
    int8 = table[table["variant"] == "int8"]
    assert (int8["smaller_x"] > 1.5).all() and int8["what_the_recipe_did"].str.contains("calibration on 8").all()


def test_a_board_declared_as_a_chip_it_is_not_is_flagged_in_the_boards_table() -> None:
    from controller.results.queries import BoardRow
    from dashboard.views import boards_frame

    epyc = {"arch": "x86_64", "cpu_model": "AMD EPYC 7B13"}
    frame = boards_frame([BoardRow("lab-1", "jetson-orin-nano", "ssh", epyc, {}, None, None),
                          BoardRow("lab-2", "epyc-7b13", "ssh", epyc, {}, None, None)])
    checks = dict(zip(frame["board"], frame["chip check"]))
    assert checks["lab-1"] == "chip 'jetson-orin-nano' declares Arm hardware, but the board reports x86_64 AMD EPYC 7B13"
    assert not isinstance(checks["lab-2"], str)  # an empty cell


# --- deployments -------------------------------------------------------------------------------


def test_deployments_tab_shows_what_runs_where_and_every_change(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Rows as `edgefarm deploy` writes them: a board whose newer deploy failed still runs the older
    bundle, and a board rolled back by hand runs the bundle it went back to."""
    from controller.results.queries import deployment_states, deployments
    from controller.results.store import Deployment, ReleaseReading

    url = f"sqlite:///{tmp_path / 'deployed.db'}"
    models = [{"name": "ppocr-det", "engine": "onnxruntime", "variant": "int8", "label": "int8"}]
    with open_db(url)() as db:
        db.add(Run(spec_name="s", spec_sha256="0" * 64, spec={}, kind="run", status="done"))
        for board, bundle, previous, action, status, reason in [
            ("jetson-1", "a" * 16, None, "deploy", "ok", None),
            ("jetson-1", "b" * 16, "a" * 16, "deploy", "failed", "smoke test: outputs differ on golden/0.png"),
            ("rk-2", "a" * 16, None, "deploy", "ok", None),
            ("rk-2", "b" * 16, "a" * 16, "deploy", "ok", None),
            ("rk-2", "a" * 16, "b" * 16, "rollback", "ok", None),
        ]:
            db.add(Deployment(board=board, bundle_id=bundle, previous_bundle_id=previous, chip="arm", models=models,
                              manifest={}, action=action, status=status, reason=reason, canary=False,
                              smoke={"total_p50_ms": 20.5, "infer_p50_ms": 16.1, "farm_infer_total_ms": 17.0, "outputs": "same"}
                              if status == "ok" and action == "deploy" else None))
        # What the boards said when last read: rk-2 as the database says, jetson-1 switched by hand.
        db.add_all([ReleaseReading(board="jetson-1", release="c" * 16), ReleaseReading(board="rk-2", release="b" * 16),
                    ReleaseReading(board="rk-2", release="a" * 16)])
        db.commit()
        expected = {s["board"]: s for s in deployment_states(deployments(db))}
    at = start(monkeypatch, url)
    where = frame_with(at.dataframe, "serving on")
    assert list(where["board"]) == ["jetson-1", "rk-2"]
    for _, row in where.iterrows():
        summary = expected[row["board"]]
        assert (row["bundle"], row["status"]) == (summary["bundle"], summary["status"])
    assert list(where["bundle"]) == ["a" * 16, "a" * 16]  # the failed deploy changed nothing; the rollback did
    assert list(where["status"]) == ["failed", "rolled-back"]
    assert list(where["drift"]) == ["DRIFT", "none"]  # the newest reading counts
    assert list(where["board runs"]) == ["c" * 16, "a" * 16]
    # The smoke figures shown are the current bundle's own: rk-2's come from the deploy of the bundle
    # it was rolled back to (a rollback runs no smoke test), not from the newer bundle it left.
    assert where.iloc[0]["infer p50 ms"] == 16.1 and where.iloc[0]["farm infer ms"] == 17.0
    with open_db(url)() as db:
        (first_a,) = db.query(Deployment).filter_by(board="rk-2", bundle_id="a" * 16, action="deploy").all()
        db.query(Deployment).filter_by(board="rk-2", bundle_id="b" * 16).update({"smoke": {"infer_p50_ms": 99.0}})
        first_a.smoke = {**first_a.smoke, "infer_p50_ms": 12.5}
        db.commit()
    at = start(monkeypatch, url)
    assert list(frame_with(at.dataframe, "serving on")["infer p50 ms"]) == [16.1, 12.5]
    history = frame_with(at.dataframe, "action")
    assert len(history) == 5 and history.iloc[0]["action"] == "rollback"  # newest first
    assert "outputs differ" in " ".join(history["reason"].dropna())


def test_a_night_where_nothing_ran_is_an_error_with_its_reason(monkeypatch: pytest.MonkeyPatch, failures_db: str,
                                                                tmp_path: Path) -> None:
    """The row nightly writes when every board was skipped (tests/controller/test_nightly.py checks
    that it writes it): the banner says so in red, with the boards' reasons, never "no verdict yet"."""
    copy = tmp_path / "nothing-ran.db"
    shutil.copy(failures_db.removeprefix("sqlite:///"), copy)
    url = f"sqlite:///{copy}"
    why = "board rk3399-a: unreachable: [Errno 113] No route to host"
    with open_db(url)() as db:
        db.add(Run(spec_name="digits-failures", spec_sha256="0" * 64, spec={}, kind="nightly", status="done",
                   verdict="nothing ran", summary={"nothing_ran": why}))
        db.commit()
    at = start(monkeypatch, url)
    errors = [e.value for e in at.error]
    assert any("nothing ran" in e and why in e for e in errors), errors


def test_the_runs_timeline_draws_a_bar_per_job_on_its_board(monkeypatch: pytest.MonkeyPatch, failures_db: str) -> None:
    import pandas as pd

    at = start(monkeypatch, failures_db)
    with open_db(failures_db)() as session:
        run_id = session.scalars(select(func.max(Run.id))).one()
        jobs = session.execute(
            select(Job.id, Board.name, Job.engine, Job.label, Job.status, Job.started_at, Job.finished_at)
            .join(Board, Board.id == Job.board_id).where(Job.run_id == run_id).order_by(Job.started_at)).all()
    assert {j.status for j in jobs} == {"ok", "failed"} and all(j.started_at for j in jobs)
    assert any(m.value == f"**Timeline of run #{run_id}**" for m in at.markdown)
    gantt = [c for c in at.get("vega_lite_chart") if "x2" in json.loads(c.proto.spec).get("encoding", {})]
    assert len(gantt) == 1, "no timeline chart on the page"
    spec = json.loads(gantt[0].proto.spec)
    assert (spec["encoding"]["y"]["field"], spec["encoding"]["y"]["sort"]) == ("board", ["local"])
    (bars,) = chart_data(gantt[0])
    assert bars["job"].tolist() == [j.id for j in jobs]
    assert list(zip(bars["board"], bars["engine"], bars["variant"], bars["status"])) == [
        (j.name, j.engine, j.label, j.status) for j in jobs]
    assert bars["started"].tolist() == [pd.Timestamp(j.started_at, tz="UTC") for j in jobs]
    assert bars["ended"].tolist() == [pd.Timestamp(j.finished_at, tz="UTC") for j in jobs]
    assert bars["bar"].tolist() == ["failed" if j.status == "failed" else "measure" for j in jobs]
    assert bars["seconds"].tolist() == pytest.approx([(j.finished_at - j.started_at).total_seconds() for j in jobs])
