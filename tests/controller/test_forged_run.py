"""A board that forges its result records cannot crash a run.

Every kind of forgery in ``FORGERIES`` is made with the fake transport's ``forge`` (as a run's
board would send it) and checked where a record enters the controller, in milliseconds. Then
``edgefarm run`` end to end, through real Ray and the real agent, on three boards running the
same jobs of a tiny model: ``forger`` (the fake transport, controller/boards/transports/fake.py)
answers each job with a record forged in another way, one of each path a record takes into the
controller (``IN_THE_RUN``); ``honest`` (the fake, unscripted) and ``local`` (the local board)
measure. The run must end ``done``; every forged record is its job's stored failure at stage
``result`` naming the field and the value; every job of the other boards is stored ok.

One job per forgery: the spec sweeps ``measure.threads`` over as many thread counts as there are
forgeries, and the forger takes them in the order it runs them (one at a time). Which forgery hit
which job is read back from the stored message, so the order does not matter.
"""

from __future__ import annotations

import io
import json
import math
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Iterator

import pytest
import yaml
from rich.console import Console
from sqlalchemy import select

from agent.protocol import new_result
from controller.boards.result_check import MAX_RESULT_BYTES, read_result
from controller.boards.transports import fake
from controller.cli import main
from controller.config.inventory import BoardSpec
from controller.results import recording
from controller.results.database import open_db
from controller.results.store import Job, Run
from controller.run import execute
from controller.run.progress import RunProgress
from tests.refusal import real_database

NAN, INF = float("nan"), float("inf")
JOBS = "/jobs/job-"  # a run's jobs; not the health check's golden job (jobs/health-<board>)


def _nested(depth: int) -> dict[str, Any]:
    inner: dict[str, Any] = {}
    for _ in range(depth):
        inner = {"deeper": inner}
    return inner


# kind: (the forgery: fake.forge's arguments, what the stored message must say)
FORGERIES: dict[str, tuple[dict[str, Any], str]] = {
    "p50-a-string": ({"change": {"latency.p50": "fast"}}, "latency.p50: Input should be a valid number (found 'fast')"),
    "p50-nan": ({"change": {"latency.p50": NAN}}, "latency.p50: Input should be a finite number"),
    "mean-null": ({"change": {"latency.mean": None}}, "latency.mean: Input should be a valid number (found None)"),
    "max-infinite": ({"change": {"latency.max": INF}}, "latency.max: Input should be a finite number"),
    "sample-infinite": ({"change": {"latency.samples_ms": [1.0, -INF]}}, "latency.samples_ms.1: Input should be a finite"),
    "no-latency-block": ({"drop": ["latency"]}, "an ok result needs its 'latency' and 'engine' blocks"),
    "latency-a-list": ({"change": {"latency": [1, 2]}}, "latency: Input should be a valid dictionary"),
    "n-negative": ({"change": {"latency.n": -1}}, "latency.n: Input should be greater than or equal to 0"),
    "n-past-a-column": ({"change": {"latency.n": 10**30}}, "latency.n: Input should be less than or equal to 2147483647"),
    "no-load-phase": ({"drop": ["phases.load_ms"]}, "an ok result needs phases.load_ms"),
    "phase-a-string": ({"change": {"phases.first_inference_ms": "slow"}}, "phases.first_inference_ms: Input should be a valid number"),
    "no-engine-version": ({"drop": ["engine.version"]}, "engine.version: Field required"),
    "version-past-its-column": ({"change": {"engine.version": "v" * 65}}, "engine.version: String should have at most 64"),
    "precision-a-number": ({"change": {"engine.precision": 16}}, "engine.precision: Input should be a valid string (found 16)"),
    "accuracy-a-string": ({"change": {"accuracy": {"metric": "agreement", "value": "0.9"}}}, "accuracy.value: Input should be a valid number"),
    "throughput-batch-a-string": ({"change": {"throughput": [{"batch": "one", "items_per_s": 5.0}]}},
                                  "throughput.0.batch: Input should be a valid integer (found 'one')"),
    "throughput-nan": ({"change": {"throughput": [{"batch": 1, "items_per_s": NAN}]}}, "throughput.0.items_per_s: Input should be a finite"),
    "memory-a-string": ({"change": {"memory.peak_rss_mb": "lots"}}, "memory.peak_rss_mb: Input should be a valid number"),
    "notes-not-a-list": ({"change": {"notes": "read me"}}, "notes: Input should be a valid list (found 'read me')"),
    "huge-string-anywhere": ({"change": {"fingerprint.hostname": "h" * 200_000}},
                             "fingerprint.hostname: String should have at most 100000 characters (found 'hhhh"),
    "nul-in-a-string": ({"change": {"fingerprint.os": "linux\x00"}}, "fingerprint.os: String should not contain NUL"),
    "lone-surrogate": ({"change": {"status": "failed", "failure": {"stage": "measure", "message": "\ud800 boom"}}},
                       "failure.message: Input should be a valid string, unable to parse raw data as a unicode string"),
    "surrogate-anywhere": ({"change": {"fingerprint.os": "linux\udc80"}},
                           "fingerprint.os: String should be valid Unicode (found a lone surrogate at character 5)"),
    "key-with-a-nul": ({"change": {"fingerprint.bad\x00key": 1}}, "fingerprint: a key: String should not contain NUL"),
    "nan-anywhere": ({"change": {"board_state.waited_s": NAN}}, "board_state.waited_s: Input should be a finite number (found nan)"),
    "nested-too-deep": ({"change": {"fingerprint.extra": _nested(20)}}, "nested deeper than 16 levels"),
    "wrong-job-id": ({"change": {"job_id": "job-999999"}}, "the board answered job 'job-999999', not 'job-"),
    "other-protocol": ({"change": {"protocol": 2}}, "protocol: Input should be 1 (found 2)"),
    "unknown-status": ({"change": {"status": "great"}}, "status: Input should be 'ok' or 'failed' (found 'great')"),
    "failed-without-failure": ({"change": {"status": "failed"}}, "a failed result needs its 'failure' block"),
    "unknown-failure-stage": ({"change": {"status": "failed", "failure": {"stage": "oops", "message": "m"}}},
                              "failure.stage: Input should be 'board'"),
    "not-json": ({"text": "ok, 3 ms {"}, "the board's result record is not JSON: Expecting value at line 1 column 1"),
    "empty": ({"text": ""}, "the board's result record is not JSON: Expecting value"),
    "not-utf8": ({"text": b"\xff\xfe{}"}, "the board's result record is not UTF-8 text: byte 0 is b'\\xff'"),
    "json-not-a-mapping": ({"text": "[1, 2, 3]"}, "Input should be a valid dictionary"),
    "json-nested-past-the-parser": ({"text": "[" * 100_000 + "]" * 100_000}, "cannot be read: RecursionError"),
    "integer-of-5000-digits": ({"text": '{"protocol": 1' + "0" * 5000 + "}"}, "cannot be read: ValueError: Exceeds the limit"),
    "oversized": ({"text": b" " * (MAX_RESULT_BYTES + 1)}, f"the board's result record is {MAX_RESULT_BYTES + 1} bytes, over"),
}


# One of each path a record takes into the controller, each of which ended the run before it was
# checked: a crash in the driver (KeyError, OverflowError, UnicodeEncodeError in the database), in
# the board's session (a list where notes go), a record read as a lost board and run again (not
# JSON), and the parser's own limits.
IN_THE_RUN = ["p50-a-string", "p50-nan", "no-latency-block", "no-load-phase", "no-engine-version", "n-past-a-column",
              "lone-surrogate", "nul-in-a-string", "notes-not-a-list", "huge-string-anywhere", "wrong-job-id",
              "not-json", "not-utf8", "json-nested-past-the-parser", "oversized"]


@pytest.fixture
def no_forgery_left() -> Iterator[None]:
    fake.reset()
    yield
    fake.reset()


def _as_the_agent_writes_it(job_id: str) -> dict[str, Any]:
    record: dict[str, Any] = dict(new_result(job_id))
    record.update(
        engine={"name": "onnxruntime", "version": "1.20", "precision": "fp32", "device": "CPU"},
        latency={"samples_ms": [1.0, 2.5, 2.0], "p50": 2.0, "p90": 2.5, "p99": 2.5, "mean": 1.8, "std": 0.6,
                 "min": 1.0, "max": 2.5, "n": 3, "cv": 0.3, "percentile_method": "linear"},
        phases={"load_ms": 3.0, "first_inference_ms": 1.0}, throughput=[{"batch": 1, "items_per_s": 500.0, "p50_ms": 2.0,
                                                                          "n": 64}],
        memory={"rss_before_load_mb": 10.0, "peak_rss_mb": 12.5}, accuracy={"metric": "agreement", "value": 1.0},
        fingerprint={"arch": "x86_64", "os": "linux", "hostname": "board"},
    )
    return record


@pytest.mark.parametrize("kind", list(FORGERIES))
def test_every_forgery_is_a_failure_at_stage_result_where_the_record_enters(
        kind: str, tmp_path: Path, no_forgery_left: None) -> None:
    board = fake.FakeTransport(BoardSpec(name="forger", transport="fake"))
    remote = tmp_path / "jobs" / "job-7" / "result.json"
    remote.parent.mkdir(parents=True)
    remote.write_text(json.dumps(_as_the_agent_writes_it("job-7")))
    forgery, said = FORGERIES[kind]
    fake.forge("forger", match=JOBS, **forgery)
    board.get(str(remote), tmp_path / "fetched.json")
    result = read_result(tmp_path / "fetched.json", "job-7")
    assert result["status"] == "failed" and result["job_id"] == "job-7"
    failure = result["failure"]
    assert failure is not None and failure["stage"] == "result" and not failure.get("lost")
    assert said in failure["message"], failure["message"]
    assert "\n" not in failure["message"] and len(failure["message"]) < 1000
    assert fake.events("forger") == ["connect ok", f"forged result: {remote}"]
    board.get(str(remote), tmp_path / "fetched.json")  # used once: the next fetch is the agent's own
    assert read_result(tmp_path / "fetched.json", "job-7")["status"] == "ok"


def test_a_result_without_a_median_is_no_forgery(tmp_path: Path) -> None:
    """Paddle Lite's tool prints no median: stored as measured, ranked by nothing."""
    record = _as_the_agent_writes_it("job-7")
    record["latency"].update(p50=None, p90=None, p99=None, samples_ms=[])
    (tmp_path / "result.json").write_text(json.dumps(record))
    assert read_result(tmp_path / "result.json", "job-7") == record


def test_a_result_the_database_refuses_is_stored_as_the_jobs_failure(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever the record's check let through and the database will not take is the job's failure."""
    sessions = open_db(f"sqlite:///{real_database(tmp_path)}")
    store = recording.job_result

    def refused_once(db: Any, job: Job, result: Any) -> None:
        if result["status"] == "ok":
            store(db, job, result)  # half written when the database refuses it
            raise OverflowError("Python int too large to convert to SQLite INTEGER")
        store(db, job, result)

    monkeypatch.setattr(recording, "job_result", refused_once)
    with sessions() as db:
        job = db.scalars(select(Job).where(Job.status == "failed")).first()  # no result row yet
        assert job is not None
        p = SimpleNamespace(row_id=job.id, board=job.board.name, describe=lambda: "a job")
        outcome, out = execute.RunOutcome(run_id=job.run_id), io.StringIO()
        result = _as_the_agent_writes_it(f"job-{job.id}")
        result.update(attempts=1, started_at=1.0e9)
        execute._stored(db, p, result, outcome, RunProgress(Console(file=out)))  # type: ignore[arg-type]
    with sessions() as db:
        stored = db.get(Job, job.id)
        assert stored is not None and stored.status == "failed" and stored.stage == "result"
        assert stored.message == ("the board's result record could not be stored: "
                                  "OverflowError: Python int too large to convert to SQLite INTEGER")
        assert stored.attempts == 1
    assert (outcome.ok, outcome.failed) == (0, 1)
    assert "FAILED failed at result" in out.getvalue()


def _tiny_model(path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "tiny",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))


def test_a_board_forging_every_kind_of_record_fails_only_its_own_jobs(
        tmp_path: Path, edgefarm_home: Path, no_forgery_left: None) -> None:
    _tiny_model(tmp_path / "tiny.onnx")
    threads = list(range(1, len(IN_THE_RUN) + 2))  # one job per forgery, and one with p50 null
    spec = tmp_path / "forged.yaml"
    spec.write_text(yaml.safe_dump({
        "name": "forged",
        "models": [{"name": "tiny", "path": "tiny.onnx", "inputs": {"x": {"shape": [1, 8]}},
                    "dataset": {"kind": "seeded", "samples": 4}}],
        "variants": ["fp32"], "engines": ["onnxruntime"], "boards": ["forger", "honest", "local"],
        "measure": {"warmup": 1, "min_iterations": 64, "min_seconds": 0, "max_seconds": 5, "batch_sizes": [1],
                    "throughput_seconds": 0.01, "threads": threads},
    }))
    inventory = tmp_path / "inventory.yaml"
    inventory.write_text(yaml.safe_dump({"boards": [
        {"name": name, "transport": transport, "python": sys.executable, "workdir": str(tmp_path / name),
         "retries": 0}
        for name, transport in (("forger", "fake"), ("honest", "fake"), ("local", "local"))]}))
    # A result without a median is no forgery (Paddle Lite's tool prints none): stored, ranked by nothing.
    fake.forge("forger", change={"latency.p50": None, "latency.p90": None, "latency.p99": None}, match=JOBS)
    for kind in IN_THE_RUN:
        fake.forge("forger", match=JOBS, **FORGERIES[kind][0])
    url = f"sqlite:///{tmp_path / 'forged.db'}"

    assert main(["run", str(spec), "--inventory", str(inventory), "--db", url]) == 0

    with open_db(url)() as db:
        run = db.scalars(select(Run)).one()
        jobs = db.scalars(select(Job)).all()
        by_board: dict[str, list[Job]] = {}
        for job in jobs:
            by_board.setdefault(job.board.name, []).append(job)
        assert run.status == "done", run.summary
        assert {b: len(j) for b, j in by_board.items()} == {b: len(threads) for b in ("forger", "honest", "local")}
        assert not [j for j in jobs if j.status not in ("ok", "failed")]  # nothing pending

        for board in ("honest", "local"):
            for job in by_board[board]:
                assert job.status == "ok", (board, job.label, job.stage, job.message)
                assert job.result is not None and job.result.p50_ms is not None and job.result.p50_ms > 0

        forged = by_board["forger"]
        (no_median,) = [j for j in forged if j.status == "ok"]
        assert no_median.result is not None and no_median.result.p50_ms is None
        assert math.isfinite(no_median.result.mean_ms) and no_median.result.mean_ms > 0
        messages = [j.message or "" for j in forged if j.status == "failed"]
        assert {j.stage for j in forged if j.status == "failed"} == {"result"}
        assert all("\n" not in m and len(m) < 1000 for m in messages), messages
        unmatched = {kind: FORGERIES[kind][1] for kind in IN_THE_RUN if not any(FORGERIES[kind][1] in m for m in messages)}
        assert not unmatched, (unmatched, messages)
        assert len(messages) == len(IN_THE_RUN)
        assert run.summary["ok"] == 2 * len(threads) + 1 and run.summary["failed"] == len(IN_THE_RUN)
    assert not [e for e in fake.events("honest") if e.startswith("forged")]  # the forger's records only
