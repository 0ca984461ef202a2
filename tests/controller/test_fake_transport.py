"""Faults a board session must survive, scripted on the fake transport: no root, no network.

The fake board runs the real agent on the golden model (controller.boards.health), as the local
board would; only the scripted attempts fail (controller/boards/transports/fake.py). The same
faults done for real to SSH boards are in test_faults.py (slow, and needs network namespaces).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from agent.protocol import sha256_file
from controller.boards import session as session_module
from controller.boards.agent_bundle import build_agent_bundle
from controller.boards.health import Golden, golden, golden_job, record
from controller.boards.session import BoardSession
from controller.boards.transports import fake, open_transport
from controller.boards.transports.fake import FakeTransport
from controller.build.cache import Cache
from controller.config.inventory import BoardSpec
from controller.errors import BoardUnreachable, TransportError
from controller.plugins import TRANSPORTS
from controller.results.database import open_db
from controller.results.store import Board as BoardRow
from tests.conftest import ROOT

TIMEOUT = 120.0
AGENT_JOB = "run job.json"  # in the command line of an agent job, and of no other command


@pytest.fixture(autouse=True)
def no_script_outlives_its_test(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(session_module, "RETRY_PAUSE_S", 0.0)  # a fake board is back at once
    yield
    fake.reset()


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_agent_bundle(tmp_path_factory.mktemp("agent"))


@pytest.fixture(scope="module")
def gold(tmp_path_factory: pytest.TempPathFactory) -> Golden:
    return golden(Cache(tmp_path_factory.mktemp("cache")))


def _session(tmp_path: Path, bundle: Path, name: str, **board: object) -> BoardSession:
    entry = {"name": name, "transport": "fake", "python": sys.executable, "workdir": str(tmp_path / name), **board}
    session = BoardSession(BoardSpec.model_validate(entry), bundle)
    session.start()
    return session


def _run(session: BoardSession, gold: Golden) -> dict:
    return session.run_job(golden_job(session.board.name, "onnxruntime"), gold.files(), TIMEOUT)


def test_the_fake_is_registered_as_a_transport_and_refuses_what_it_cannot_do() -> None:
    assert TRANSPORTS.get("fake") is FakeTransport
    assert isinstance(open_transport(BoardSpec(name="b", transport="fake")), FakeTransport)
    fake.script("b", "connect", ["refused"])
    with pytest.raises(BoardUnreachable, match="b: cannot connect: connection refused"):
        open_transport(BoardSpec(name="b", transport="fake"))
    open_transport(BoardSpec(name="b", transport="fake")).close()  # past its script: "ok"
    assert fake.events("b") == ["connect ok", "connect refused", "connect ok"]
    with pytest.raises(ValueError, match="connect cannot be 'corrupt'"):
        fake.script("b", "connect", ["corrupt"])
    with pytest.raises(ValueError, match="no operation 'reboot'"):
        fake.script("b", "reboot", ["ok"])


def test_a_job_that_loses_the_link_is_retried_on_a_new_connection_and_lands(
        tmp_path: Path, bundle: Path, gold: Golden) -> None:
    session = _session(tmp_path, bundle, "flaky")
    first = session.transport
    fake.script("flaky", "run", ["lost"], match=AGENT_JOB)
    result = _run(session, gold)
    assert result["status"] == "ok", result.get("failure")
    assert result["attempts"] == 2
    assert len(result["notes"]) == 1
    assert result["notes"][0].startswith("attempt 1: flaky: the connection was lost during ")
    assert session.transport is not first  # reconnected: the lost connection is not used again
    assert [e.split(":")[0] for e in fake.events("flaky")] == ["connect ok", "run lost", "connect ok"]
    assert not any((tmp_path / "flaky" / "jobs").iterdir())  # the lost attempt's folder was cleaned too
    session.close()


def test_a_start_that_loses_the_link_is_tried_again_on_a_new_connection(tmp_path: Path, bundle: Path) -> None:
    board = BoardSpec(name="lossy", transport="fake", python=sys.executable, workdir=str(tmp_path / "lossy"), retries=2)
    session = BoardSession(board, bundle)
    fake.script("lossy", "run", ["lost", "lost"], match=" probe ")  # the agent's probe, twice
    probe = session.start_again_if_lost()
    assert probe["engines"]["onnxruntime"]["available"] and session.fingerprint == probe["fingerprint"]
    assert [e.split(":")[0] for e in fake.events("lossy")] == [
        "connect ok", "run lost", "connect ok", "run lost", "connect ok"]
    session.close()
    # One loss more than its retries: the board is unreachable, as it was before they were added.
    fake.script("lossy", "run", ["lost"] * 3, match=" probe ")
    with pytest.raises(BoardUnreachable, match="lost"):
        BoardSession(board, bundle).start_again_if_lost()


def test_a_board_refusing_the_reconnect_is_tried_again_until_it_answers(
        tmp_path: Path, bundle: Path, gold: Golden) -> None:
    session = _session(tmp_path, bundle, "rebooting", retries=2)
    fake.script("rebooting", "connect", ["refused"])  # the first reconnect: the board is still booting
    fake.script("rebooting", "run", ["lost"], match=AGENT_JOB)
    result = _run(session, gold)
    assert result["status"] == "ok", result.get("failure")
    assert result["attempts"] == 3
    assert "the connection was lost during" in result["notes"][0]
    assert result["notes"][1].startswith("attempt 2: board lost and not back: BoardUnreachable: ")
    assert [e for e in fake.events("rebooting") if e.startswith("connect")] == [
        "connect ok", "connect refused", "connect ok"]
    session.close()


def test_a_board_lost_for_good_fails_its_job_after_every_retry(tmp_path: Path, bundle: Path, gold: Golden) -> None:
    session = _session(tmp_path, bundle, "gone", retries=1)
    fake.script("gone", "run", ["lost"], match=AGENT_JOB)
    fake.script("gone", "connect", ["refused"])
    result = _run(session, gold)
    assert result["status"] == "failed" and result["attempts"] == 2
    failure = result["failure"]
    assert failure["stage"] == "transport" and failure["lost"]
    assert failure["message"].startswith("board lost during the job on all 2 attempts; last: board lost and not back")
    session.close()


def test_a_hung_job_is_killed_and_failed_without_a_retry(tmp_path: Path, bundle: Path, gold: Golden) -> None:
    session = _session(tmp_path, bundle, "stuck")
    fake.script("stuck", "run", ["hung"], match=AGENT_JOB)
    result = _run(session, gold)
    assert result["status"] == "failed" and result["attempts"] == 1  # a hang is the job's, not the link's
    assert result["failure"]["stage"] == "agent"
    assert result["failure"]["message"] == f"killed after {TIMEOUT:g} s without finishing"
    session.close()


def test_a_corrupt_artifact_on_the_board_is_pushed_again_once(tmp_path: Path, bundle: Path, gold: Golden) -> None:
    session = _session(tmp_path, bundle, "rotten")
    model_sha = gold.files()["model"][1]
    fake.script("rotten", "put", ["corrupt"], match=model_sha)  # a bad flash card, once
    result = _run(session, gold)
    assert result["status"] == "ok", result.get("failure")
    assert result["notes"] == ["an artifact on the board did not match its sha256; pushed again"]
    assert result["attempts"] == 1
    assert [e.split(":")[0] for e in fake.events("rotten")] == ["connect ok", "put corrupt"]
    cached = tmp_path / "rotten" / "cache" / f"{model_sha}.onnx"
    assert sha256_file(str(cached)) == model_sha  # the new copy is sound
    session.close()


def test_a_board_failing_its_health_check_in_a_row_is_quarantined(tmp_path: Path, bundle: Path, gold: Golden) -> None:
    session = _session(tmp_path, bundle, "sick", quarantine_after=2)
    sessions = open_db(f"sqlite:///{tmp_path / 'health.db'}")
    with sessions() as db:
        row = BoardRow(name="sick", chip="auto", transport="fake")
        db.add(row)

        def check(hangs: bool) -> bool:
            if hangs:
                fake.script("sick", "run", ["hung"], match=AGENT_JOB)
            problem = session.health_check(gold.files(), "onnxruntime")
            assert (problem is not None) == hangs, problem
            quarantined = record(row, problem, session.board.quarantine_after)
            db.commit()
            return quarantined

        assert check(hangs=True) is False and row.health_failures == 1
        assert check(hangs=False) is False and row.health_failures == 0  # a pass ends the series
        assert check(hangs=True) is False
        assert check(hangs=True) is True  # the second failure in a row
        assert row.quarantined_at is not None
        assert row.quarantine_reason == ("2 failed health checks in a row; last: golden job failed at agent: "
                                         "killed after 120 s without finishing")
    with sessions() as db:  # stored
        assert db.query(BoardRow).filter_by(name="sick").one().quarantined_at is not None
    session.close()


def test_a_forged_result_record_is_a_failure_at_stage_result_and_the_next_job_lands(
        tmp_path: Path, bundle: Path, gold: Golden) -> None:
    session = _session(tmp_path, bundle, "forger")
    fake.forge("forger", '{"protocol": 1, "job_id": "health-forger", "status": "ok", "latency": {"p50": null}}')
    fake.forge("forger", "[1, 2, 3]")
    first, second = _run(session, gold), _run(session, gold)
    for result in (first, second):
        assert result["status"] == "failed" and result["failure"]["stage"] == "result"
        assert result["attempts"] == 1  # a malformed record is data, not a lost board: no new attempt
    assert "latency.samples_ms: Field required" in first["failure"]["message"]
    assert _run(session, gold)["status"] == "ok"  # the real agent's record passes the check
    session.close()


def test_an_agent_altered_on_the_board_is_never_run_and_is_pushed_again(
        tmp_path: Path, bundle: Path, gold: Golden) -> None:
    session = _session(tmp_path, bundle, "tampered")
    assert _run(session, gold)["status"] == "ok"
    agent = Path(session.agent)
    marker = tmp_path / "the altered agent ran"
    # Someone else's program under the agent's name: it would leave the marker if it ever ran.
    agent.write_text(f"open({str(marker)!r}, 'w').close()\n")
    result = _run(session, gold)
    assert result["status"] == "ok", result
    assert "the agent on the board did not match its sha256; pushed again" in result["notes"]
    assert not marker.exists()
    assert sha256_file(str(agent)) == sha256_file(str(bundle))
    agent.unlink()  # a board that lost it: the next command pushes it, nothing fails
    assert session.prune_cache() == []
    assert agent.is_file()
    session.close()


def test_a_forgery_can_edit_the_real_record_and_only_matching_records_count(
        tmp_path: Path, bundle: Path, gold: Golden) -> None:
    session = _session(tmp_path, bundle, "editor")
    fake.forge("editor", change={"latency.mean": None}, drop=["engine.version"], match="/jobs/job-")
    assert _run(session, gold)["status"] == "ok"  # the golden job (jobs/health-editor) does not match
    fake.forge("editor", change={"latency.mean": None}, drop=["engine.version"])
    result = _run(session, gold)
    assert result["status"] == "failed" and result["failure"]["stage"] == "result"
    assert "engine.version: Field required" in result["failure"]["message"]  # the first problem found
    assert fake.events("editor")[-1].startswith("forged result: ")
    session.close()


def test_a_forged_probe_is_refused_as_a_board_that_does_not_answer(tmp_path: Path, bundle: Path) -> None:
    entry = {"name": "prober", "transport": "fake", "python": sys.executable, "workdir": str(tmp_path / "prober")}
    for forgery, said in (({"change": {"engines": {"onnxruntime": "yes"}}},
                           "the board's probe record is malformed: engines.onnxruntime: Input should be a valid dictionary"),
                          ({"change": {"fingerprint.cores": float("nan")}},
                           "the board's probe record is malformed: fingerprint.cores: Input should be a finite number"),
                          ({"change": {"fingerprint.cpu_model": "EPYC " * 40}},
                           "the board's probe record is malformed: fingerprint.cpu_model: String should have at most 95"),
                          ({"change": {"engines.openvino.default_precision": "x" * 100}},
                           "engines.openvino.default_precision: String should have at most 16 characters"),
                          ({"text": "[]"}, "the agent's probe is not a probe record (found '[]')"),
                          ({"text": "probe: ok"}, "the agent's probe is not JSON"),
                          ({"change": {"protocol": 7}}, "agent speaks protocol 7, not 1")):
        fake.forge("prober", record="probe", **forgery)  # type: ignore[arg-type]
        session = BoardSession(BoardSpec.model_validate(entry), bundle)
        with pytest.raises(TransportError, match=re.escape(said)):
            session.start()
        session.close()
    session = BoardSession(BoardSpec.model_validate(entry), bundle)
    assert session.start()["engines"]["onnxruntime"]["available"]  # the real probe passes its check
    session.close()


def test_what_one_process_scripts_another_process_obeys(tmp_path: Path) -> None:
    """A run drives its boards from Ray actors: the script is shared through files, not memory."""
    code = ("from controller.boards.transports import fake\n"
            "fake.script('shared', 'connect', ['refused'])\n"
            "fake.forge('shared', 'not a record')\n")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
    with pytest.raises(BoardUnreachable, match="connection refused"):
        open_transport(BoardSpec(name="shared", transport="fake"))
    remote = tmp_path / "result.json"
    remote.write_text("{}")
    open_transport(BoardSpec(name="shared", transport="fake")).get(str(remote), tmp_path / "fetched.json")
    assert (tmp_path / "fetched.json").read_text() == "not a record"
    with pytest.raises(ValueError, match="forge either a text or a change"):
        fake.forge("shared")
    with pytest.raises(ValueError, match="no record 'config'"):
        fake.forge("shared", "{}", record="config")  # type: ignore[arg-type]
