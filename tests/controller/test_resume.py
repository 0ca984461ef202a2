"""A controller killed mid-run, then `edgefarm run --resume RUN_ID`: the missing jobs run,
the stored ones are neither run again nor duplicated."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from sqlalchemy import select

from controller.cli import main
from controller.results.database import open_db
from controller.results.store import Job, Result, Run
from tests.conftest import ROOT, small_ppocr_spec

pytestmark = pytest.mark.slow


def _stored(url: str) -> list[tuple[int, str, int | None]]:
    with open_db(url)() as db:
        return [(j.id, j.status, j.result.id if j.result else None)
                for j in db.scalars(select(Job).where(Job.purpose == "measure").order_by(Job.id))]


def test_an_interrupted_run_is_finished_by_resume(tmp_path: Path, edgefarm_home: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    spec = small_ppocr_spec(tmp_path, name="resume", min_seconds=1.5, batch_sizes=[1])
    data = yaml.safe_load(spec.read_text())
    data["models"] = [m for m in data["models"] if m["name"] == "ppocr-cls"]
    data["variants"], data["engines"] = ["fp32", "fp16"], ["onnxruntime", "openvino"]
    spec.write_text(yaml.safe_dump(data))
    url = f"sqlite:///{tmp_path / 'resume.db'}"

    # The controller in its own process group, killed outright (no cleanup of any kind) as
    # soon as the first result is stored.
    controller = subprocess.Popen([sys.executable, "-m", "controller.cli", "run", str(spec), "--db", url],
                                  cwd=ROOT, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while not (Path(tmp_path / "resume.db").exists() and any(s == "ok" for _, s, _ in _stored(url))):
        assert controller.poll() is None, f"the run ended before it could be killed: {controller.stderr.read()}"
        assert time.monotonic() < deadline, "no job finished in time"
        time.sleep(0.2)
    os.killpg(controller.pid, signal.SIGKILL)
    controller.wait()

    before = _stored(url)
    done_before = [row for row in before if row[1] == "ok"]
    assert 1 <= len(done_before) < len(before), before  # killed mid-run: some stored, some missing
    with open_db(url)() as db:
        run_id = db.scalars(select(Run)).one().id

    assert main(["run", "--resume", str(run_id), "--db", url]) == 0
    assert f"({len(done_before)} stored before, not run again)" in capsys.readouterr().out
    after = _stored(url)
    assert [row[0] for row in after] == [row[0] for row in before]  # no job row added or lost
    assert all(status == "ok" for _, status, _ in after), after
    for row in done_before:  # the stored results are the very same rows
        assert row in after
    with open_db(url)() as db:
        run = db.get(Run, run_id)
        own = db.query(Result).join(Job).filter(Job.purpose == "measure").count()
        assert run.status == "done" and own == len(after)
        assert run.summary["ok"] == len(after) and run.summary["resumed"] == len(done_before)
        # Selection's rounds follow the whole run: the baseline, stored before the kill, is among them.
        repeated = set(db.scalars(select(Job.repeat_of).where(Job.run_id == run_id, Job.purpose == "round")))
        assert repeated and repeated & {job_id for job_id, _, _ in done_before}, (repeated, done_before)

    # A finished run has nothing to resume; an unknown one is a one-line error.
    assert main(["run", "--resume", str(run_id), "--db", url]) == 2
    assert main(["run", "--resume", "999", "--db", url]) == 2
    err = capsys.readouterr().err
    assert "nothing to resume" in err and "there is no run 999" in err
