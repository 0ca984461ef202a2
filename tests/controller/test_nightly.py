"""`edgefarm nightly` end to end: real runs, a real slowdown, reports and exit codes."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Iterator

import pytest
import yaml

from controller.cli import main
from controller.results.database import open_db
from controller.results.store import Run
from tests.conftest import small_ppocr_spec

pytestmark = pytest.mark.slow


def det_spec(tmp: Path) -> Path:
    """The detector on ONNX Runtime fp32 only: one job a night."""
    path = small_ppocr_spec(tmp, name="nightly-det")
    data = yaml.safe_load(path.read_text())
    data["models"] = [m for m in data["models"] if m["name"] == "ppocr-det"]
    data["variants"] = ["fp32"]
    data["engines"] = ["onnxruntime"]
    data["measure"].update(min_seconds=1.0, batch_sizes=[1])
    data["regression"] = {"latency_threshold": 0.15, "p_value": 0.01, "accuracy_threshold": 0.01}
    path.write_text(yaml.safe_dump(data))
    return path


@contextlib.contextmanager
def noisy_neighbours() -> Iterator[None]:
    """Busy processes on every core: a real slowdown, like a stray job left on a board."""
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(os.cpu_count() or 1)]
    try:
        yield
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()


def test_nightly_flags_a_real_slowdown_then_the_recovery(tmp_path: Path, edgefarm_home: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 'nightly.db'}"
    first, second, third = (tmp_path / n for n in ("r1", "r2", "r3"))

    # Night 1: nothing to compare with yet.
    spec = str(det_spec(tmp_path))
    assert main(["nightly", spec, "--report", str(first), "--db", url]) == 0
    assert "No previous run" in (first / "report.md").read_text()

    # Night 2: something else hogs the board's cores.
    with noisy_neighbours():
        assert main(["nightly", spec, "--report", str(second), "--db", url]) == 1
    report = (second / "report.md").read_text()
    assert "Verdict: REGRESSION" in report and "## Regressions" in report and "ppocr-det" in report
    suite = ET.parse(second / "junit.xml").getroot()
    failures = suite.findall("testcase/failure")
    assert suite.get("failures") == "1" and len(failures) == 1
    assert failures[0].get("message").startswith("regression: latency +")
    assert "REGRESSION" in capsys.readouterr().out
    # The chart the report shows: one bar pair per latency comparison, the regression in red.
    assert "![p50 latency before and after](latency.svg)" in report
    chart = ET.parse(second / "latency.svg").getroot()
    after = [r for r in chart.iter("{http://www.w3.org/2000/svg}rect") if r.get("class") == "after"]
    before = [r for r in chart.iter("{http://www.w3.org/2000/svg}rect") if r.get("class") == "before"]
    assert len(after) == len(before) == 1 and after[0].get("fill") == "#d62728"
    assert float(after[0].get("width")) > float(before[0].get("width"))

    # Night 3: the board is quiet again: faster than night 2, so an improvement and exit 0.
    assert main(["nightly", spec, "--report", str(third), "--db", url]) == 0
    assert "## Improvements" in (third / "report.md").read_text()

    with open_db(url)() as db:
        runs = db.query(Run).order_by(Run.id).all()
    assert [r.verdict for r in runs] == ["pass", "regression", "pass"]
    assert [r.kind for r in runs] == ["nightly"] * 3
    assert runs[2].summary["previous_run"] == runs[1].id


def test_nightly_report_dir_error_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    code = main(["nightly", str(det_spec(tmp_path)), "--report", str(blocker / "sub"), "--db",
                 f"sqlite:///{tmp_path / 'x.db'}"])
    assert code == 2
    assert "report" in capsys.readouterr().err
