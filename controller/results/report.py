"""The nightly report: report.md with a latency chart for people, junit.xml for CI systems.

Both are made from the night's judged benchmarks (``controller.results.regression.Judged``). The
Markdown groups what failed the night by its cause, so one engine upgrade that slowed six
configurations reads as one finding; then what passed with a remark (noise that did not
reproduce, improvements, benchmarks without a baseline yet), a table of every benchmark, the
chart and the selection table. JUnit has one test case per benchmark, failed with the report's
line (which names the cause) when it regressed, and an error when no job could run at all.
"""

from __future__ import annotations

import html
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

from controller.results.regression import Judged

CHART = "latency.svg"


@dataclass(frozen=True)
class Night:
    run_id: int
    judged: list[Judged]
    skipped: dict[str, str] = field(default_factory=dict)  # board -> why it ran nothing
    nothing_ran: str | None = None  # why no job could run, when none could

    def having(self, *verdicts: str) -> list[Judged]:
        return [j for j in self.judged if j.verdict in verdicts]


def write_markdown(path: Path, night: Night, selection_md: str) -> None:
    bad = [j for j in night.judged if j.bad]
    verdict = "NOTHING RAN" if night.nothing_ran else "REGRESSION" if bad else "pass"
    counts = [(len(bad), "regressed"), *((len(night.having(v)), label) for v, label in _REMARKS),
              (len(night.having("unchanged")), "unchanged"), (len(night.having("gone")), "not measured tonight")]
    shown = ", ".join(f"{n} {label}" for n, label in counts if n) or "nothing measured"
    lines = [f"# EdgeFarm nightly: run {night.run_id}", "", f"**Verdict: {verdict}** — {shown}.", ""]
    if night.nothing_ran:
        lines += [f"**No job could run**, so nothing was measured or judged: {night.nothing_ran}.", ""]
    elif night.skipped:
        lines += ["Boards skipped tonight (their benchmarks were not measured):", ""]
        lines += [f"- {board}: {why}" for board, why in sorted(night.skipped.items())] + [""]
    if bad:
        lines += ["## Regressions, by cause", ""]
        for cause in sorted({j.cause for j in bad}):
            lines += [f"### {cause}", ""]
            lines += [f"- {j.line()}{_confirmed_by(j)}" for j in bad if j.cause == cause] + [""]
    accepted = [j for j in night.having("unchanged") if j.note]  # a regression kept long enough is the level now
    if accepted:
        lines += ["## New levels", ""] + [f"- {j.line()}" for j in accepted] + [""]
    for v, label in (*_REMARKS, ("gone", "not measured tonight"), ("never ran", "never ran")):
        rows = night.having(v)
        if rows:
            lines += [f"## {label.capitalize()}", ""] + [f"- {j.line()}" for j in rows] + [""]
    if any(j.job_id is not None for j in night.judged):
        lines += ["## Every benchmark", "", "| benchmark | verdict | p50 (ms) | baseline band (ms) | change | p | "
                  "accuracy | baseline runs | what changed |", "|---|---|---|---|---|---|---|---|---|"]
        lines += [_row(j) for j in night.judged if j.job_id is not None] + [""]
    charted = [j for j in night.judged if _charted(j)]
    if charted:
        write_latency_chart(path.with_name(CHART), charted)
        lines += ["## Latency against the baseline", "", f"![p50 latency against each baseline's band]({CHART})", ""]
    lines += ["## Engine selection after this run", "", selection_md, ""]
    path.write_text("\n".join(lines), encoding="utf-8")


_REMARKS = (("noise", "noise, not confirmed"), ("improvement", "improvements"), ("no baseline", "no baseline yet"))


def _confirmed_by(j: Judged) -> str:
    """The re-runs that confirmed a reported slowdown or failure."""
    suspect = j.finding("latency") or j.finding("status")
    if not j.reruns or suspect is None or suspect.verdict not in ("regression", "failing"):
        return ""
    return f" (measured again: {', '.join(r.shown() for r in j.reruns)})"


def _row(j: Judged) -> str:
    lat, acc = j.finding("latency"), j.finding("accuracy")
    p50 = f"{lat.after:.4g}" if lat and lat.after is not None else "-"
    band = f"{lat.band.low:.4g} – {lat.band.high:.4g}" if lat and lat.band else "-"
    change = f"{lat.change:+.1%}" if lat and lat.change is not None else "-"
    p = f"{lat.p_value:.2g}" if lat and lat.p_value is not None else "-"
    accuracy = f"{acc.after:.4g} ({acc.change:+.4f})" if acc and acc.after is not None and acc.change is not None else "-"
    runs = ", ".join(str(r) for r in j.baseline_runs) or "-"
    cells = [j.name, j.verdict, p50, band, change, p, accuracy, runs, ", ".join(j.causes) or "-"]
    return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"


def _charted(j: Judged) -> bool:
    lat = j.finding("latency")
    return lat is not None and lat.band is not None and lat.after is not None


_COLOUR = {"regression": "#d62728", "improvement": "#2ca02c", "unchanged": "#4c78a8", "noise": "#ff9f1c"}


def write_latency_chart(path: Path, judged: list[Judged]) -> None:
    """Per benchmark: its baseline's noise band (shaded), the band's centre (grey bar) and the
    night's median (coloured bar: red a confirmed regression, orange noise that did not reproduce,
    green faster, blue unchanged).

    Plain SVG, so the report needs no plotting library and renders wherever Markdown does.
    """
    rows = [(j, f) for j in judged if (f := j.finding("latency")) is not None and f.band is not None]
    row, bar, left, width = 34, 11, 330, 420
    top = max(max(f.band.high, f.after or 0) for _, f in rows if f.band) or 1.0
    height = 40 + row * len(rows)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{left + width + 110}" height="{height}" '
           'font-family="sans-serif" font-size="12">',
           f'<text x="{left}" y="16" font-weight="bold">p50 latency (ms): shaded = noise band, grey = baseline, '
           'colour = this run</text>']
    for i, (j, f) in enumerate(rows):
        assert f.band is not None and f.before is not None and f.after is not None
        y = 30 + i * row
        out.append(f'<text x="{left - 8}" y="{y + bar + 4}" text-anchor="end">{html.escape(j.name)}</text>')
        low, high = max(0.0, f.band.low), f.band.high
        out.append(f'<rect class="band" x="{left + width * low / top:.1f}" y="{y - 2}" '
                   f'width="{max(1.0, width * (high - low) / top):.1f}" height="{2 * bar + 6}" fill="#e3e3e3"/>')
        colour = _COLOUR.get(f.verdict, "#4c78a8")
        for offset, value, fill, cls in ((0, f.before, "#9e9e9e", "before"), (bar + 2, f.after, colour, "after")):
            out.append(f'<rect class="{cls}" x="{left}" y="{y + offset}" width="{max(1.0, width * value / top):.1f}" '
                       f'height="{bar}" fill="{fill}"/>')
        change = f" ({f.change:+.1%})" if f.change is not None else ""
        out.append(f'<text x="{left + width * max(f.after, high) / top + 6:.1f}" y="{y + 2 * bar}">'
                   f'{f.after:.3g}{change}</text>')
    out.append("</svg>")
    path.write_text("\n".join(out), encoding="utf-8")


def write_junit(path: Path, night: Night) -> None:
    """One test case per benchmark: failed when it regressed (the message names the cause), skipped
    when it could not be judged; an error case when no job could run."""
    judged = night.judged
    errors = 1 if night.nothing_ran else 0
    suite = ET.Element("testsuite", name="edgefarm-nightly", tests=str(len(judged) + errors),
                       failures=str(sum(j.bad for j in judged)), errors=str(errors), skipped=str(
                           sum(j.verdict in _SKIPPED for j in judged)))
    ET.SubElement(ET.SubElement(suite, "properties"), "property", name="run_id", value=str(night.run_id))
    if night.nothing_ran:
        case = ET.SubElement(suite, "testcase", classname="edgefarm-nightly", name="jobs ran")
        ET.SubElement(case, "error", message=night.nothing_ran, type="nothing ran")
    for j in judged:
        model, board, engine, label = j.key
        case = ET.SubElement(suite, "testcase", classname=f"{model}.{board}", name=f"{engine}.{label}")
        if j.bad:
            failure = ET.SubElement(case, "failure", message=j.line(), type=j.verdict)
            failure.text = _details(j)
        elif j.verdict in _SKIPPED:
            ET.SubElement(case, "skipped", message=j.line())
        else:
            ET.SubElement(case, "system-out").text = j.line() + _confirmed_by(j)
    ET.ElementTree(suite).write(path, encoding="utf-8", xml_declaration=True)


_SKIPPED = ("no baseline", "gone", "never ran")


def _details(j: Judged) -> str:
    parts = [f"run {j.run_id}, job {j.job_id}", f"baseline runs: {', '.join(map(str, j.baseline_runs)) or '-'}"]
    for f in j.findings:
        p = f", p={f.p_value:.2g}" if f.p_value is not None else ""
        band = f", band {f.band.low:.4g} - {f.band.high:.4g}" if f.band else ""
        parts.append(f"{f.what}: {f.verdict}, before {f.before}, after {f.after}{band}{p} {f.note}".rstrip())
    if j.reruns:
        parts.append("measured again: " + ", ".join(r.shown() for r in j.reruns))
    if j.since is not None:
        parts.append(f"first seen in run {j.since}")
    return "\n".join(parts)
