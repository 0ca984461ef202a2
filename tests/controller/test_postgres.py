"""The store on a real PostgreSQL server: a team's database, not only a SQLite file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from sqlalchemy import select, text

from controller.cli import main
from controller.results.database import describe, open_db
from controller.results.store import Job
from tests.conftest import small_ppocr_spec
from tests.postgres import postgres_server

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pg_url() -> str:
    try:
        with postgres_server() as url:
            yield url
    except FileNotFoundError as exc:
        pytest.skip(str(exc))


def test_run_and_select_on_postgresql(pg_url: str, tmp_path: Path, edgefarm_home: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    spec = small_ppocr_spec(tmp_path, name="pg")
    data = yaml.safe_load(spec.read_text())
    data["models"] = [m for m in data["models"] if m["name"] == "ppocr-cls"]
    data["variants"], data["engines"] = ["fp32", "int8"], ["onnxruntime"]
    spec.write_text(yaml.safe_dump(data))

    assert main(["run", str(spec), "--db", pg_url]) == 0
    out = capsys.readouterr().out
    assert "not-a-real-secret" not in out and "edgefarm:***@127.0.0.1" in out

    with open_db(pg_url)() as db:
        assert db.get_bind().dialect.name == "postgresql"
        jobs = db.scalars(select(Job).where(Job.purpose == "measure")).all()  # not the finalists' rounds
        assert sorted(j.label for j in jobs) == ["fp32", "int8"]
        assert all(j.status == "ok" and j.result.n >= 64 for j in jobs)
        # No credential is ever stored: search every text column of every table.
        dump = " ".join(
            str(row) for table in ("runs", "boards", "models", "variants", "jobs", "results")
            for row in db.execute(text(f"SELECT * FROM {table}"))  # noqa: S608 - fixed table names
        )
    assert "not-a-real-secret" not in dump

    assert main(["select", "--db", pg_url, "--format", "json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["model"] == "ppocr-cls" and row["within_budget"]


def test_describe_hides_passwords() -> None:
    assert describe("postgresql+psycopg://u:hunter2@db.lab/edgefarm") == "postgresql+psycopg://u:***@db.lab/edgefarm"
