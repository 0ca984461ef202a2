"""The nightly report from judged benchmarks: regressions grouped by cause, the remarks, JUnit."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from controller.results.history import Band
from controller.results.regression import NO_CHANGE, Finding, Judged, Rerun
from controller.results.report import Night, write_junit, write_markdown

UPGRADE = ("engine 1.19.2 -> 1.20.0",)


def slower(model: str, label: str, before: float, after: float, causes: tuple[str, ...] = UPGRADE,
           verdict: str = "regression") -> Judged:
    finding = Finding("latency", verdict, before, after, (after - before) / before, 1e-9, Band(before, 0.05 * before))
    reruns = (Rerun(100, True, after), Rerun(101, verdict == "regression", after if verdict == "regression" else before))
    return Judged((model, "local", "onnxruntime", label), verdict, 9, 90, (finding,), causes, (8, 7, 6), reruns=reruns)


def night() -> Night:
    return Night(9, [
        slower("det", "fp32", 12.1, 13.9),
        slower("rec", "fp32", 20.0, 23.0),
        slower("cls", "fp32", 1.0, 1.3, causes=()),
        slower("det", "int8", 5.0, 6.0, causes=(), verdict="noise"),
        Judged(("new", "local", "onnxruntime", "fp32"), "no baseline", 9, 91, note="p50 3 ms; 1 run of history, 2 needed"),
        Judged(("old", "board2", "onnxruntime", "fp32"), "gone", 9, note="measured in run 8, not in this one (board board2 "
               "skipped: unreachable)"),
    ], skipped={"board2": "unreachable"})


def test_markdown_groups_regressions_by_cause(tmp_path: Path) -> None:
    path = tmp_path / "report.md"
    write_markdown(path, night(), "(selection)")
    text = path.read_text()
    assert "**Verdict: REGRESSION** — 3 regressed, 1 noise, not confirmed, 1 no baseline yet, 1 not measured tonight." in text
    regressions = text[text.index("## Regressions, by cause"):text.index("## Noise, not confirmed")]
    assert regressions.index(f"### {UPGRADE[0]}") < regressions.index(f"### {NO_CHANGE}")
    upgrade = regressions.split("### ")[1].splitlines()
    assert [line[:38] for line in upgrade if line.startswith("- ")] == [
        "- Regression in det / local / onnxrunt", "- Regression in rec / local / onnxrunt"]
    assert ("- Regression in det / local / onnxruntime / fp32: +14.9% p50 (12.1 -> 13.9 ms), engine 1.19.2 -> 1.20.0 "
            "(measured again: 13.9 ms (reproduced), 13.9 ms (reproduced))") in upgrade
    assert "- Noise, not confirmed, in det / local / onnxruntime / int8: +20.0% p50 (5 -> 6 ms); re-runs: 6 ms " \
           "(reproduced), 5 ms (not reproduced)" in text
    assert "- board2: unreachable" in text and "## Not measured tonight" in text and "## No baseline yet" in text
    assert "| det / local / onnxruntime / fp32 | regression | 13.9 | 11.49 – 12.71 | +14.9% | 1e-09 | - | 8, 7, 6 | " \
           "engine 1.19.2 -> 1.20.0 |" in text
    chart = ET.parse(tmp_path / "latency.svg").getroot()
    assert len([r for r in chart.iter("{http://www.w3.org/2000/svg}rect") if r.get("class") == "band"]) == 4


def test_junit_fails_each_regressed_benchmark_with_its_cause(tmp_path: Path) -> None:
    path = tmp_path / "junit.xml"
    write_junit(path, night())
    suite = ET.parse(path).getroot()
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors"), suite.get("skipped")) == ("6", "3", "0", "2")
    failures = {c.get("classname") + "/" + c.get("name"): c.find("failure") for c in suite.iter("testcase")}
    det = failures["det.local/onnxruntime.fp32"]
    assert det is not None and det.get("message", "").endswith(", engine 1.19.2 -> 1.20.0")
    assert "baseline runs: 8, 7, 6" in (det.text or "") and "measured again: " in (det.text or "")
    assert failures["det.local/onnxruntime.int8"] is None  # noise passes


def test_a_night_where_nothing_ran_is_an_error(tmp_path: Path) -> None:
    why = "no job could run: board local skipped: unreachable: agent probe exited 1"
    empty = Night(3, [], {"local": "unreachable: agent probe exited 1"}, why)
    write_markdown(tmp_path / "report.md", empty, "")
    text = (tmp_path / "report.md").read_text()
    assert "**Verdict: NOTHING RAN** — nothing measured." in text and f"**No job could run**, so nothing was " \
           f"measured or judged: {why}." in text
    write_junit(tmp_path / "junit.xml", empty)
    suite = ET.parse(tmp_path / "junit.xml").getroot()
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors")) == ("1", "0", "1")
    assert [e.get("message") for e in suite.iter("error")] == [why]
