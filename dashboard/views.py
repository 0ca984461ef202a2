"""Display tables for the dashboard: query results and selections turned into DataFrames.

Pure functions (no Streamlit calls), so the figures shown can be checked without a browser.
Numbers stay numbers in the frames; ``styled`` only decides how they are printed. The History
tab's two look-ups that ``controller.results.history`` does not answer (``regression_rules``,
``newest_regression``) are here too, beside the frames they feed.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict
from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd
    from pandas.io.formats.style import Styler
    from sqlalchemy.orm import Session

    from controller.config.spec import RegressionSpec
    from controller.results.history import HistoryPoint, Key
    from controller.results.queries import BoardRow, DeploymentRow, JobRow, Reading, RunRow, TimelineRow
    from controller.results.selection import Candidate, Selection

BEST = "best within budget"
NONE = "nothing within budget"

# How each display column is printed; latency as `edgefarm select` prints it (4 significant digits).
FORMATS: dict[str, str] = {
    "p50 ms": "{:.4g}", "e2e p50 ms": "{:.4g}", "p90 ms": "{:.4g}", "p99 ms": "{:.4g}", "speed-up": "{:.2f}x",
    "accuracy": "{:.4f}", "drop": "{:+.4f}", "peak MB": "{:.0f}", "infer p50 ms": "{:.4g}", "farm infer ms": "{:.4g}",
    "total p50 ms": "{:.4g}", "items/s": "{:.4g}", "size MB": "{:.3g}", "cv": "{:.1%}",
    "band low ms": "{:.4g}", "band high ms": "{:.4g}",
}


# Integer columns that can be empty: without a nullable dtype a missing value turns 38 into 38.0.
INTEGERS = ("job", "run", "n", "cores", "batch", "rounds")


def _frame(rows: Iterable[dict[str, Any]], columns: Sequence[str]) -> pd.DataFrame:
    import pandas as pd

    df = pd.DataFrame(list(rows), columns=list(columns))
    for col in INTEGERS:
        if col in df.columns:
            df[col] = pd.to_numeric(df[col], errors="coerce").astype("Int64")
    return df


def styled(df: pd.DataFrame) -> Styler:
    """The frame with FORMATS applied to the columns it has; missing values print as a dash."""
    present = {col: fmt for col, fmt in FORMATS.items() if col in df.columns}
    # An em dash, not "-": st.table reads cells as Markdown, where a lone "-" is a bullet.
    return df.style.format(na_rep="—").format(present, na_rep="—")


def _candidate(c: Candidate) -> dict[str, Any]:
    ci = c.speedup_ci95
    return {
        "engine": c.engine, "variant": c.variant, "precision": c.precision, "p50 ms": c.p50_ms,
        "e2e p50 ms": c.e2e_p50_ms, "p90 ms": c.p90_ms, "batch": c.batch, "items/s": c.items_per_s,
        "speed-up": c.speedup_vs_baseline, "95% interval": f"[{ci[0]:.2f}, {ci[1]:.2f}]" if ci else None,
        "rounds": c.rounds, "tied with": ", ".join(c.tied_with) or None, "metric": c.accuracy_metric,
        "accuracy": c.accuracy, "drop": c.accuracy_drop, "peak MB": c.peak_rss_mb,
        "size MB": c.size_bytes / 1e6, "board": c.board, "job": c.job_id,
    }


SELECTION_COLUMNS = ("model", "chip", "result", "engine", "variant", "precision", "p50 ms", "e2e p50 ms", "p90 ms",
                     "batch", "items/s", "speed-up", "95% interval", "rounds", "tied with", "metric", "accuracy", "drop",
                     "peak MB", "size MB", "board", "job")


def selection_frame(sels: Sequence[Selection]) -> pd.DataFrame:
    """One row per (model, chip): the pick, or an empty row saying nothing is within budget."""
    rows = []
    for s in sels:
        row: dict[str, Any] = {"model": s.model, "chip": s.chip, "result": BEST if s.best else NONE}
        if s.best is not None:
            row.update(_candidate(s.best))
        rows.append(row)
    return _frame(rows, SELECTION_COLUMNS)


def nearest_frame(sel: Selection) -> pd.DataFrame:
    """The closest candidates of a (model, chip) where nothing met the budget."""
    return _frame((_candidate(c) for c in sel.nearest), SELECTION_COLUMNS[3:])


def nothing_message(sel: Selection) -> str:
    """Why a (model, chip) has no pick, in words a morning reader can act on."""
    head = f"**{sel.model}** on **{sel.chip}**: nothing within the accuracy budget {sel.budget:g}."
    if all(c.accuracy_drop is None for c in sel.nearest):
        return (head + " No accuracy drop could be computed: no fp32 result with an accuracy figure "
                "on this chip to compare against. Nearest candidates:")
    return head + " Nearest candidates (smallest accuracy drop first):"


def candidates_frame(cands: Sequence[Candidate]) -> pd.DataFrame:
    """The measured configurations, one row each, for the charts (raw field names)."""
    return _frame((asdict(c) for c in cands), [
        "model", "chip", "board", "engine", "variant", "precision", "p50_ms", "e2e_p50_ms", "p90_ms", "accuracy_metric",
        "accuracy", "accuracy_drop", "speedup_vs_baseline", "job_id", "run_id",
    ])


def throughput_frame(cands: Sequence[Candidate]) -> pd.DataFrame:
    """One row per (configuration, measured batch size): items/s and the batch's p50."""
    return _frame(({"model": c.model, "chip": c.chip, "engine": c.engine, "variant": c.variant,
                    "batch": r["batch"], "items_per_s": r["items_per_s"], "batch_p50_ms": r.get("p50_ms")}
                   for c in cands for r in c.throughput if r.get("items_per_s") and "error" not in r),
                  ["model", "chip", "engine", "variant", "batch", "items_per_s", "batch_p50_ms"])


RUN_COLUMNS = ("run", "spec", "kind", "status", "verdict", "started (UTC)", "finished (UTC)", "jobs ok",
               "jobs failed", "jobs")


def runs_frame(runs: Sequence[RunRow]) -> pd.DataFrame:
    return _frame((dict(zip(RUN_COLUMNS, (
        r.id, r.spec, r.kind, r.status, r.verdict, _seconds(r.started), _seconds(r.finished), r.jobs_ok,
        r.jobs_failed, r.jobs_total,
    ))) for r in runs), RUN_COLUMNS)


def verdict_style(value: object) -> str:
    """CSS for a verdict or status cell: a regression or a failed run must catch the eye."""
    if value in ("regression", "accuracy-regression", "failed", "interrupted", "rolled-back", "DRIFT"):
        return "background-color: #fde2e1; color: #8a1c14"
    if value in ("pass", "ok"):
        return "background-color: #e3f5e1; color: #1d5e1a"
    return ""


JOB_COLUMNS = ("job", "purpose", "model", "board", "chip", "engine", "variant", "precision", "status", "p50 ms", "p90 ms",
               "p99 ms", "n", "cv", "peak MB", "metric", "accuracy", "stage", "message")


def jobs_frame(jobs: Sequence[JobRow]) -> pd.DataFrame:
    return _frame(({
        "job": j.job_id, "purpose": _purpose(j), "model": j.model, "board": j.board, "chip": j.chip,
        "engine": j.engine, "variant": j.label, "precision": j.precision, "status": j.status, "p50 ms": j.p50_ms,
        "p90 ms": j.p90_ms, "p99 ms": j.p99_ms, "n": j.n, "cv": j.cv, "peak MB": j.peak_rss_mb,
        "metric": j.accuracy_metric, "accuracy": j.accuracy, "stage": j.stage, "message": j.message,
    } for j in jobs), JOB_COLUMNS)


def _purpose(j: JobRow | TimelineRow) -> str:
    """``measure``, or what a repeat is and the job it repeats: ``round of 12``, ``confirm of 7``."""
    return j.purpose if j.repeat_of is None else f"{j.purpose} of {j.repeat_of}"


TIMELINE_COLUMNS = ("job", "board", "model", "engine", "variant", "purpose", "status", "stage", "bar", "started",
                    "ended", "seconds")


def timeline_frame(rows: Sequence[TimelineRow]) -> pd.DataFrame:
    """The jobs of a run that reached a board, one row each, as ``charts.job_timeline`` draws them:
    ``bar`` is what the bar's colour says (``failed``, else the job's purpose: measure, round,
    confirm), ``seconds`` how long the board had the job."""
    return _frame(({
        "job": r.job_id, "board": r.board, "model": r.model, "engine": r.engine, "variant": r.label,
        "purpose": _purpose(r), "status": r.status, "stage": r.stage,
        "bar": "failed" if r.status == "failed" else r.purpose, "started": r.started, "ended": r.ended,
        "seconds": (r.ended - r.started).total_seconds(),
    } for r in rows if r.started is not None and r.ended is not None), TIMELINE_COLUMNS)


FAILED_COLUMNS = ("job", "model", "board", "engine", "variant", "stage", "message", "stderr, last line")


def failed_frame(jobs: Sequence[JobRow]) -> pd.DataFrame:
    """Failed jobs with stage and message, plus the last stderr line: an engine's message often
    names only where it failed on its first line and why on its last one."""
    return _frame(({
        "job": j.job_id, "model": j.model, "board": j.board, "engine": j.engine, "variant": j.label,
        "stage": j.stage, "message": j.message, "stderr, last line": last_line(j.stderr_tail),
    } for j in jobs if j.status == "failed"), FAILED_COLUMNS)


def last_line(text: str | None) -> str | None:
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    return lines[-1] if lines else None


# Fingerprint fields worth a column; the rest stays in the per-board JSON.
FINGERPRINT_KEYS = ("arch", "cpu_model", "cores", "governor", "temperature_c", "os", "python")


def boards_frame(boards: Sequence[BoardRow]) -> pd.DataFrame:
    """One row per board as declared now (each job keeps the chip it ran as); "chip check" says
    where the declared chip contradicts what the board last reported."""
    from controller.boards.chip_check import contradiction

    columns = ("board", "chip", "chip check", "transport", "quarantine", "last seen (UTC)", "engines",
               *FINGERPRINT_KEYS, "last error")
    return _frame(({
        "board": b.name, "chip": b.chip, "chip check": contradiction(b.chip, b.fingerprint),
        "transport": b.transport, "quarantine": b.quarantine,
        "last seen (UTC)": _seconds(b.last_seen), "engines": _engines(b.engines),
        **{k: _scalar(b.fingerprint.get(k)) for k in FINGERPRINT_KEYS}, "last error": b.last_error,
    } for b in boards), columns)


DEPLOYED_COLUMNS = ("board", "chip", "bundle", "models", "status", "deployed (UTC)", "previous", "drift",
                    "board runs", "read (UTC)", "infer p50 ms", "farm infer ms", "total p50 ms", "outputs", "serving on",
                    "last change")


def deployed_frame(summaries: Sequence[dict[str, Any]], readings: dict[str, Reading]) -> pd.DataFrame:
    """What runs where: one row per board (``controller.results.queries.board_state``), and drift from
    the board's newest reading of its own release."""
    from controller.results.queries import drift

    def smoke(summary: dict[str, Any], key: str) -> Any:
        return (summary.get("smoke") or {}).get(key)

    def drift_cell(summary: dict[str, Any]) -> str:
        found = drift(summary, readings.get(summary["board"]))
        return "unknown: " + str(found["why"]) if found["drift"] is None else "DRIFT" if found["drift"] else "none"

    return _frame(({
        "board": s["board"], "chip": s["chip"], "bundle": s["bundle"], "models": ", ".join(s["models"]) or None,
        "status": s["status"], "deployed (UTC)": s["deployed_at"], "previous": s["previous"], "drift": drift_cell(s),
        "board runs": getattr(readings.get(s["board"]), "release", None),
        "read (UTC)": _seconds(getattr(readings.get(s["board"]), "read_at", None)),
        "infer p50 ms": smoke(s, "infer_p50_ms"), "farm infer ms": smoke(s, "farm_infer_total_ms"),
        "total p50 ms": smoke(s, "total_p50_ms"),
        "outputs": smoke(s, "outputs"), "serving on": f"port {s['serve_port']}" if s.get("serve_port") else None,
        "last change": f"{s['action']} {s['status']}" + (f": {s['reason']}" if s.get("reason") else ""),
    } for s in summaries), DEPLOYED_COLUMNS)


HISTORY_COLUMNS = ("when (UTC)", "board", "action", "bundle", "previous", "status", "canary", "models", "reason")


def deployment_history_frame(rows: Sequence[DeploymentRow]) -> pd.DataFrame:
    """Every deploy and rollback, newest first."""
    return _frame(({
        "when (UTC)": _seconds(r.finished_at or r.started_at), "board": r.board, "action": r.action,
        "bundle": r.bundle_id, "previous": r.previous_bundle_id, "status": r.status, "canary": r.canary,
        "models": ", ".join(f"{m.get('name')} {m.get('engine')}/{m.get('label') or m.get('variant')}" for m in r.models),
        "reason": r.reason,
    } for r in reversed(rows)), HISTORY_COLUMNS)


def _seconds(when: datetime | None) -> datetime | None:
    return when.replace(microsecond=0) if when else None  # microseconds are noise to a reader


def _engines(engines: object) -> str:
    """``{"openvino": "2024.6", ...}`` (or a list of names, or name -> details) as one line."""
    if isinstance(engines, dict):
        parts = []
        for name, info in sorted(engines.items()):
            version = info.get("version") if isinstance(info, dict) else info
            parts.append(f"{name} {version}" if isinstance(version, (str, int, float)) and version != "" else name)
        return ", ".join(parts)
    return ", ".join(map(str, engines)) if isinstance(engines, (list, tuple)) else ""


def _scalar(value: object) -> object:
    # Arrow needs one type per column: anything nested becomes text.
    return value if value is None or isinstance(value, (str, int, float)) else str(value)


# --- a benchmark's history -----------------------------------------------------------------------

Benchmark = tuple[str, "Key"]  # (spec name, (model, board, engine, configuration label))
LEVELS = ("spec", "model", "board", "engine", "configuration")
REGRESSED = ("regression", "accuracy-regression")  # the verdicts the History tab opens on
NOT_JUDGED = "not judged"  # a plain `edgefarm run`: part of the history, never judged


def benchmark_options(known: Sequence[Benchmark], picked: Sequence[str]) -> list[str]:
    """The values the next selector offers (LEVELS[len(picked)]), among the benchmarks that
    match what is picked so far, in order; so every selector offers only what exists."""
    flat = [(spec, *key) for spec, key in known]
    level = len(picked)
    return list(dict.fromkeys(f[level] for f in flat if tuple(f[:level]) == tuple(picked)))


def regression_rules(session: Session, spec_name: str) -> RegressionSpec:
    """The spec's regression rules as its newest run stored them: the history and band width
    that nightly drew its bands with. A spec stored before the rules existed gets the defaults."""
    from pydantic import ValidationError
    from sqlalchemy import select

    from controller.config.spec import RegressionSpec
    from controller.results.store import Run

    spec = session.scalars(select(Run.spec).where(Run.spec_name == spec_name).order_by(Run.id.desc()).limit(1)).first()
    try:
        return RegressionSpec.model_validate((spec or {}).get("regression") or {})
    except ValidationError:  # an older EdgeFarm's keys: the band is still drawn, with today's defaults
        return RegressionSpec()


def newest_regression(session: Session) -> Benchmark | None:
    """The benchmark whose regression nightly reported most recently (a confirmed latency or an
    accuracy regression), or None: what the History tab shows first."""
    from sqlalchemy import select

    from controller.results.history import KINDS
    from controller.results.store import Board, Job, Model, Run, Variant

    row = session.execute(
        select(Run.spec_name, Model.name, Board.name, Job.engine, Job.label)
        .join(Run, Run.id == Job.run_id).join(Board, Board.id == Job.board_id)
        .join(Variant, Variant.id == Job.variant_id).join(Model, Model.id == Variant.model_id)
        .where(Job.purpose == "measure", Job.verdict.in_(REGRESSED), Run.status == "done", Run.kind.in_(KINDS))
        .order_by(Run.id.desc(), Job.id).limit(1)
    ).first()
    return (row[0], (row[1], row[2], row[3], row[4])) if row else None


HISTORY_POINT_COLUMNS = ("run", "kind", "started", "p50_ms", "band_low", "band_high", "verdict", "change",
                         "accuracy", "metric", "engine_version", "job")


def history_frame(points: Sequence[HistoryPoint]) -> pd.DataFrame:
    """One row per run of a benchmark, oldest first, as ``charts.history_chart`` draws it: the p50
    (the mean where a native tool printed no median, as the band is made of), the band it was judged
    against (empty while there was no baseline), nightly's verdict and what changed since the run before."""
    return _frame(({
        "run": h.point.run_id, "kind": h.point.kind, "started": h.point.started, "p50_ms": h.point.figure,
        "band_low": h.band.low if h.band else None, "band_high": h.band.high if h.band else None,
        "verdict": h.point.verdict or NOT_JUDGED, "change": ", ".join(h.changed), "accuracy": h.point.accuracy,
        "metric": h.point.metric, "engine_version": h.point.setup.engine_version, "job": h.point.job_id,
    } for h in reversed(points)), HISTORY_POINT_COLUMNS)


HISTORY_TABLE_COLUMNS = ("run", "kind", "when (UTC)", "p50 ms", "band low ms", "band high ms", "accuracy", "verdict",
                         "what changed", "engine", "job")


def history_table(frame: pd.DataFrame) -> pd.DataFrame:
    """``history_frame`` for reading, newest first."""
    return _frame(({
        "run": r["run"], "kind": r["kind"], "when (UTC)": _seconds(r["started"]), "p50 ms": r["p50_ms"],
        "band low ms": r["band_low"], "band high ms": r["band_high"], "accuracy": r["accuracy"],
        "verdict": r["verdict"], "what changed": r["change"] or None, "engine": r["engine_version"], "job": r["job"],
    } for r in reversed(frame.to_dict("records"))), HISTORY_TABLE_COLUMNS)
