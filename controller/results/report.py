"""The nightly report: report.md with a latency chart for people, junit.xml for CI systems."""

from __future__ import annotations

import html
import xml.etree.ElementTree as ET
from pathlib import Path

from controller.results.regression import Change


def _fmt(value: float | None, what: str) -> str:
    if value is None:
        return "-"
    return f"{value:.3f} ms" if what == "latency" else f"{value:.4f}"


def _change(c: Change) -> str:
    if c.change is None:
        return "-"
    return f"{c.change:+.1%}" if c.what == "latency" else f"{c.change:+.4f}"


def write_markdown(path: Path, run_id: int, previous_id: int | None, changes: list[Change], selection_md: str) -> None:
    bad = [c for c in changes if c.bad]
    good = [c for c in changes if c.verdict == "improvement"]
    other = [c for c in changes if c.verdict in ("not comparable", "new", "gone")]
    lines = [
        f"# EdgeFarm nightly: run {run_id}",
        "",
        f"Compared with run {previous_id}." if previous_id else "No previous run of this spec: nothing to compare yet.",
        "",
        f"**Verdict: {'REGRESSION' if bad else 'pass'}** — {len(bad)} regressions, {len(good)} improvements, "
        f"{sum(c.verdict == 'unchanged' for c in changes)} unchanged, {len(other)} new, gone or not comparable.",
        "",
    ]
    for title, rows in (("Regressions", bad), ("Improvements", good), ("New, gone or not comparable", other)):
        if not rows:
            continue
        lines += [f"## {title}", "", "| model | board | engine | config | what | before | after | change | p | note |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for c in rows:
            p = f"{c.p_value:.2g}" if c.p_value is not None else "-"
            lines.append(f"| {' | '.join(c.key)} | {c.what} | {_fmt(c.before, c.what)} | {_fmt(c.after, c.what)} "
                         f"| {_change(c)} | {p} | {c.note} |")
        lines.append("")
    latency = [c for c in changes if c.what == "latency" and c.before is not None and c.after is not None]
    if latency:
        write_latency_chart(path.with_name(CHART), latency)
        lines += ["## Latency, previous run against this one", "", f"![p50 latency before and after]({CHART})", ""]
    lines += ["## Engine selection after this run", "", selection_md, ""]
    path.write_text("\n".join(lines), encoding="utf-8")


CHART = "latency.svg"
_COLOUR = {"regression": "#d62728", "improvement": "#2ca02c", "unchanged": "#4c78a8"}


def write_latency_chart(path: Path, changes: list[Change]) -> None:
    """Paired horizontal bars of p50 latency per configuration: grey before, coloured after.

    Plain SVG, so the report needs no plotting library and renders wherever Markdown does.
    """
    row, bar, left, width = 34, 11, 330, 420
    top = max(max(c.before or 0, c.after or 0) for c in changes) or 1.0
    height = 40 + row * len(changes)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{left + width + 90}" height="{height}" '
           'font-family="sans-serif" font-size="12">',
           f'<text x="{left}" y="16" font-weight="bold">p50 latency (ms): grey = previous run, '
           'colour = this run (red slower, green faster)</text>']
    for i, c in enumerate(changes):
        y = 30 + i * row
        label = html.escape(" ".join(c.key))
        out.append(f'<text x="{left - 8}" y="{y + bar + 4}" text-anchor="end">{label}</text>')
        for offset, value, colour, cls in ((0, c.before, "#bbbbbb", "before"), (bar + 2, c.after, _COLOUR[c.verdict], "after")):
            w = max(1.0, width * (value or 0) / top)
            out.append(f'<rect class="{cls}" x="{left}" y="{y + offset}" width="{w:.1f}" height="{bar}" fill="{colour}"/>')
        out.append(f'<text x="{left + width * (c.after or 0) / top + 6:.1f}" y="{y + 2 * bar}">'
                   f'{c.after:.3g} ({_change(c)})</text>')
    out.append("</svg>")
    path.write_text("\n".join(out), encoding="utf-8")


def write_junit(path: Path, run_id: int, changes: list[Change]) -> None:
    suite = ET.Element("testsuite", name="edgefarm-nightly", tests=str(len(changes)),
                       failures=str(sum(c.bad for c in changes)))
    ET.SubElement(ET.SubElement(suite, "properties"), "property", name="run_id", value=str(run_id))
    for c in changes:
        model, board, engine, label = c.key
        case = ET.SubElement(suite, "testcase", classname=f"{model}.{board}", name=f"{engine}.{label}.{c.what}")
        if c.bad:
            failure = ET.SubElement(case, "failure", message=f"{c.verdict}: {c.what} {_change(c)}")
            failure.text = f"before {_fmt(c.before, c.what)}, after {_fmt(c.after, c.what)}, p={c.p_value} {c.note}"
        elif c.verdict in ("new", "gone", "not comparable"):
            ET.SubElement(case, "skipped", message=f"{c.verdict} {c.note}".strip())
    ET.ElementTree(suite).write(path, encoding="utf-8", xml_declaration=True)
