"""`--ray-address`: a run joins a Ray cluster started apart from EdgeFarm, as a lab's would be."""

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

from controller.results.database import open_db
from controller.results.store import Job
from tests.conftest import small_ppocr_spec
from tests.net import free_port

pytestmark = pytest.mark.slow



def test_run_joins_an_existing_cluster(tmp_path: Path, edgefarm_home: Path) -> None:
    port = free_port()
    env = dict(os.environ, RAY_AUTH_MODE="token")  # the cluster and its clients share the token
    ray = str(Path(sys.executable).with_name("ray"))
    head = subprocess.Popen(
        [ray, "start", "--head", "--block", "--node-ip-address", "127.0.0.1", "--port", str(port),
         "--num-cpus", "2", "--include-dashboard", "false", "--disable-usage-stats"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    try:
        spec = small_ppocr_spec(tmp_path, name="cluster")
        data = yaml.safe_load(spec.read_text())
        data["models"] = [m for m in data["models"] if m["name"] == "ppocr-cls"]
        data["variants"], data["engines"] = ["fp32", "int8"], ["onnxruntime"]
        spec.write_text(yaml.safe_dump(data))
        url = f"sqlite:///{tmp_path / 'c.db'}"
        deadline = time.monotonic() + 90
        while True:  # the head takes a few seconds to open its port
            proc = subprocess.run([sys.executable, "-m", "controller.cli", "run", str(spec), "--db", url,
                                   "--ray-address", f"127.0.0.1:{port}"], env=env, capture_output=True, text=True,
                                  timeout=600)
            if proc.returncode == 0 or "no Ray head answers" not in proc.stderr or time.monotonic() > deadline:
                break
            time.sleep(2)
        assert proc.returncode == 0, proc.stderr[-2000:]
        with open_db(url)() as db:
            jobs = db.scalars(select(Job).where(Job.purpose == "measure")).all()  # not the finalists' rounds
        assert sorted(j.label for j in jobs) == ["fp32", "int8"] and all(j.status == "ok" for j in jobs)
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
        for _ in range(30):  # the head's raylet and GCS leave with it
            if subprocess.run(["pgrep", "-f", f"gcs_server.*{port}"], capture_output=True).returncode != 0:
                break
            time.sleep(1)


def test_an_address_where_nothing_listens_fails_at_once(tmp_path: Path) -> None:
    spec = small_ppocr_spec(tmp_path, name="nohead")
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "controller.cli", "run", str(spec), "--db",
                           f"sqlite:///{tmp_path / 'x.db'}", "--ray-address", f"127.0.0.1:{free_port()}"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("edgefarm: error: --ray-address 127.0.0.1:")
    assert "no Ray head answers there" in proc.stderr and "Traceback" not in proc.stderr
    assert time.monotonic() - started < 60
