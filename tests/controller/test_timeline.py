"""When each job had its board (``jobs.started_at`` / ``finished_at``) and the run's timeline query:
a real run on the local board, and the record's times stored as they came."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import yaml
from sqlalchemy import select
from sqlalchemy.orm import Session

from agent.protocol import failed
from controller.cli import main
from controller.config.spec import Spec
from controller.results import queries, recording
from controller.results.database import open_db
from controller.results.store import Board, Job, Model, Run, Variant, now
from tests.models import digits_mlp

ROUNDS = 2


def _utc(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, timezone.utc).replace(tzinfo=None)


@pytest.mark.slow
def test_each_job_has_its_board_from_start_to_end_and_a_boards_jobs_never_overlap(
        tmp_path: Path, edgefarm_home: Path) -> None:
    """A digits classifier, fp32 and int8 on ONNX Runtime (both finalists, re-measured in rounds) and
    on OpenVINO asked for a device that does not exist (failing at load): measurements, repeats and
    failures, one after another on the local board (concurrency 1)."""
    digits_mlp(tmp_path / "digits.onnx", dynamic_batch=False)
    spec = tmp_path / "timeline.yaml"
    spec.write_text(yaml.safe_dump({
        "name": "digits-timeline",
        "models": [{"name": "digits", "path": str(tmp_path / "digits.onnx"), "dataset": {"kind": "seeded", "samples": 32}}],
        "variants": ["fp32", "int8"],
        "engines": [{"name": "onnxruntime", "options": {"threads": 1}},
                    {"name": "openvino", "options": {"device": "NO_SUCH_DEVICE"}}],
        "measure": {"warmup": 2, "min_iterations": 64, "min_seconds": 0.2, "max_seconds": 10, "batch_sizes": [1],
                    "throughput_seconds": 0.2, "precision": None},
        "selection": {"budget": 1.0, "finalist_margin": 100.0, "rounds": ROUNDS},
    }))
    url = f"sqlite:///{tmp_path / 'edgefarm.db'}"
    assert main(["run", str(spec), "--db", url]) == 0
    with open_db(url)() as db:
        run = db.scalars(select(Run)).one()
        jobs = db.scalars(select(Job).order_by(Job.id)).all()
        # What the run was meant to have: failures, and repeats that are jobs of their own.
        assert {(j.engine, j.status) for j in jobs if j.purpose == "measure"} == {
            ("onnxruntime", "ok"), ("openvino", "failed")}
        assert sum(j.purpose == "round" for j in jobs) == 2 * ROUNDS
        for job in jobs:
            assert job.started_at is not None and job.finished_at is not None, (job.id, job.purpose)
            assert run.started_at <= job.started_at <= job.finished_at <= run.finished_at, job.id
            if job.result is not None:  # the board's own end, not when the driver stored the result
                assert job.finished_at == _utc(job.result.raw["ended_at"])
                assert job.started_at == _utc(job.result.raw["started_at"])
        on_board = sorted((j for j in jobs if j.board.name == "local"), key=lambda j: j.started_at)
        assert len(on_board) == len(jobs)
        for before, after in zip(on_board, on_board[1:]):
            assert before.finished_at <= after.started_at, (before.id, after.id)

        timeline = queries.run_timeline(db, run.id)
        assert [t.job_id for t in timeline] == [j.id for j in on_board]  # in the order the board took them
        by_id = {j.id: j for j in jobs}
        for t in timeline:
            job = by_id[t.job_id]
            assert (t.board, t.model, t.engine, t.label, t.variant) == (
                "local", "digits", job.engine, job.label, job.variant.name)
            assert (t.purpose, t.repeat_of, t.status, t.stage) == (job.purpose, job.repeat_of, job.status, job.stage)
            assert (t.started, t.ended) == (job.started_at, job.finished_at)
        assert {t.repeat_of for t in timeline if t.purpose == "round"} == {
            j.id for j in jobs if j.purpose == "measure" and j.engine == "onnxruntime"}


def _job(db: Session, run: Run) -> Job:
    """A job row of ``run`` on a board "b", as the run's planning writes one before the board is asked."""
    board = Board(name="b", chip="c", transport="local", fingerprint={}, engines={})
    model = Model(name="m", sha256="0" * 64, source="m.onnx", inputs=[], task="raw")
    db.add_all([board, model])
    db.flush()
    variant = Variant(model_id=model.id, name="fp32", sha256="1" * 64, size_bytes=1, recipe={})
    db.add(variant)
    db.flush()
    job = Job(run_id=run.id, board_id=board.id, chip="c", variant_id=variant.id, engine="onnxruntime",
              options={}, label="fp32")
    db.add(job)
    db.flush()
    return job


def test_a_records_board_times_are_stored_and_one_that_never_reached_a_board_ends_when_stored(tmp_path: Path) -> None:
    spec = Spec(name="s", models=[{"name": "m", "path": "m.onnx"}])
    with open_db(f"sqlite:///{tmp_path / 'r.db'}")() as db:
        run = recording.new_run(db, spec, str(tmp_path), "run")
        reached = _job(db, run)
        record = failed("job-1", "load", "no such device")
        record.update(started_at=1.7e9, ended_at=1.7e9 + 12.5)
        recording.job_result(db, reached, record)
        assert (reached.started_at, reached.finished_at) == (_utc(1.7e9), _utc(1.7e9 + 12.5))

        never = Job(run_id=run.id, board_id=reached.board_id, chip="c", variant_id=reached.variant_id,
                    engine="onnxruntime", options={}, label="fp32")
        db.add(never)
        db.flush()
        before = now()
        recording.job_result(db, never, failed("job-2", "transport", "board unreachable"))
        assert never.started_at is None and before <= never.finished_at <= now() + timedelta(seconds=1)
        db.commit()
        rows = {t.job_id: t for t in queries.run_timeline(db, run.id)}
        assert [t.job_id for t in queries.run_timeline(db, run.id)] == [reached.id, never.id]  # never started: last
        assert (rows[reached.id].started, rows[reached.id].ended) == (_utc(1.7e9), _utc(1.7e9 + 12.5))
        assert (rows[never.id].started, rows[never.id].ended) == (None, None)
