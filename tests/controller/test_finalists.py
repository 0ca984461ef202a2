"""Selection's finalists measured again in interleaved rounds: the order they are asked for, and two
real runs of one spec on the local board that agree within their intervals."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any, cast

import pytest
import yaml
from sqlalchemy import select

from controller.cli import main
from controller.config.spec import Spec
from controller.results.database import open_db
from controller.results.selection import latest_candidates, stored_candidates
from controller.results.store import Job
from controller.run.finalists import ROUND_ITERATIONS, finalist_rounds, interleaved, round_measure
from controller.run.planning import Planned
from tests.conftest import small_ppocr_spec

ROUNDS = 5


def test_rounds_interleave_each_boards_finalists_and_measure_latency_only() -> None:
    a, b, c, d, e = (cast(Planned, name) for name in "ABCDE")
    spec = Spec.model_validate({"name": "s", "models": [{"name": "m", "path": "m.onnx"}]})
    measure = round_measure(spec)
    repeats = interleaved([[a, b, c], [d, e]], 3, measure)
    assert "".join(cast(str, r.of) for r in repeats) == "ABC" * 3 + "DE" * 3
    assert {r.purpose for r in repeats} == {"round"} and all(r.measure == measure for r in repeats)
    assert measure["batch_sizes"] == [] and measure["accuracy"] is False and measure["e2e"] is False
    assert measure["precision"] is None and measure["min_iterations"] == ROUND_ITERATIONS


def test_the_throughput_objective_and_zero_rounds_ask_for_nothing() -> None:
    for selection in ({"objective": "throughput"}, {"rounds": 0}):
        spec = Spec.model_validate({"name": "s", "models": [{"name": "m", "path": "m.onnx"}], "selection": selection})
        assert finalist_rounds(spec)(cast(Any, None), 1, []) == []  # decided before the database is read


def _spec(tmp_path: Path) -> Path:
    """The orientation classifier, fp32 and fp16, on ONNX Runtime and on OpenVINO (computing in f32
    either way): every configuration within the budget is a finalist, since which ones land within
    a few percent of the best in a single job is itself noise on a busy machine. One thread each:
    on a machine whose other processes come and go, a ratio of two multi-threaded engines moves with
    how many cores they leave free (a change of conditions between the runs, not noise within one)."""
    path = small_ppocr_spec(tmp_path, name="finalists", batch_sizes=[1], e2e=False, precision=None,
                            slower_factor=None)
    spec = yaml.safe_load(path.read_text())
    spec["models"] = [m for m in spec["models"] if m["name"] == "ppocr-cls"]
    spec["variants"] = ["fp32", "fp16"]
    spec["engines"] = [{"name": "onnxruntime", "options": {"threads": 1}},
                       {"name": "openvino", "options": {"precision": "fp32", "threads": 1}}]
    spec["selection"] = {"budget": 0.05, "finalist_margin": 100.0, "rounds": ROUNDS}
    path.write_text(yaml.safe_dump(spec))
    return path


def _without_the_agents_intervals(db: Path) -> None:
    """A result stored before the agent wrote its median's interval, in a run without rounds: selection
    computes the interval from the raw samples, the same as the agent did."""
    old = db.with_name("old.db")
    with sqlite3.connect(db) as source, sqlite3.connect(old) as con:
        source.backup(con)  # with what is still in the write-ahead log, which a file copy would miss
        con.execute("UPDATE results SET raw = json_remove(raw, '$.sampling')")
        con.execute("DELETE FROM results WHERE job_id IN (SELECT id FROM jobs WHERE purpose = 'round')")
        con.execute("DELETE FROM jobs WHERE purpose = 'round'")
    with open_db(f"sqlite:///{db}")() as session:
        stored = {c.job_id: c.median_ci95 for c in stored_candidates(session)}
    with open_db(f"sqlite:///{old}")() as session:
        computed = latest_candidates(session)
    assert computed and all(stored[c.job_id] and c.median_ci95 == pytest.approx(stored[c.job_id]) for c in computed)


def _rounds(url: str) -> list[Job]:
    with open_db(url)() as db:
        jobs = db.scalars(select(Job).order_by(Job.id)).all()
        for job in jobs:
            _ = job.result  # loaded before the session closes
        return list(jobs)


@pytest.mark.slow
def test_two_runs_pick_the_same_configuration_and_their_intervals_overlap(
        tmp_path: Path, edgefarm_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = _spec(tmp_path)
    picked = []
    for run in (1, 2):
        url = f"sqlite:///{tmp_path / f'run{run}.db'}"
        assert main(["run", str(spec), "--db", url]) == 0
        jobs = _rounds(url)
        measured = {j.id: j for j in jobs if j.purpose == "measure"}
        rounds = [j for j in jobs if j.purpose == "round"]
        # A B C A B C ...: the baseline first, the same finalists in the same order every round.
        order = [(j.engine, j.label) for j in rounds]
        finalists = order[:len(order) // ROUNDS]
        assert order == finalists * ROUNDS and finalists[0] == ("onnxruntime", "fp32")
        assert {("openvino", "fp32"), ("openvino", "fp16")} <= set(finalists), order
        for before, after in zip(rounds, rounds[1:]):  # one board, one job at a time, in that order
            assert before.finished_at <= after.started_at
        for job in rounds:
            of = measured[job.repeat_of]
            assert (job.engine, job.label, job.status) == (of.engine, of.label, "ok")
            r = job.result
            assert r.n >= ROUND_ITERATIONS and r.accuracy is None and r.throughput == [] and "e2e" not in r.raw
        capsys.readouterr()
        assert main(["select", "--db", url, "--format", "json"]) == 0
        (rec,) = json.loads(capsys.readouterr().out)
        low, high = rec["speedup_ci95"]
        assert rec["rounds"] == ROUNDS and low <= rec["speedup_vs_baseline"] <= high
        picked.append(rec)
    _without_the_agents_intervals(tmp_path / "run1.db")
    first, second = picked
    assert (first["engine"], first["variant"]) == (second["engine"], second["variant"])
    # The two runs agree: their intervals overlap. Not "each speed-up inside the other's interval":
    # two runs' estimates differ by sqrt(2) of one's standard error, so with exact 95% intervals of
    # five rounds that holds only about 81% of the time on a perfectly steady board (simulated with
    # independent normal rounds), and overlapping intervals 99.5% of the time.
    (low1, high1), (low2, high2) = first["speedup_ci95"], second["speedup_ci95"]
    assert low1 <= high2 and low2 <= high1, (first, second)
