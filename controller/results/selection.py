"""Engine selection: for each (model, chip), the fastest configuration within the accuracy budget.

"Fastest" follows the spec's objective: the lowest p50 latency at batch 1 (``latency``, the
default, for a camera frame or a request waiting on its answer), or the most items per second
at any measured batch size whose p50 per batch stays under a latency ceiling (``throughput``,
for a queue of images). Selection decides on measurements only. The accuracy reference on a chip is ONNX Runtime
running the fp32 variant at its default settings (falling back to the best fp32 figure of any
engine when ONNX Runtime did not run there), and the speed-up is against that same baseline.

Beside the engine's own p50, a candidate shows its end-to-end p50 (``e2e_p50_ms``: decode +
preprocess + infer + postprocess of an image file by the deployment runtime, where the run measured
it), read from the stored result record in the same query. It is shown, not ranked on: the
objective is the engine's own figure, and a board without Python (a native tool) has no e2e figure.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import asdict, dataclass, field

from sqlalchemy import select
from sqlalchemy.orm import Session

from controller.results.store import Board, Job, Model, Result, Variant

BASELINE_ENGINE = "onnxruntime"
BASELINE_LABEL = "fp32"


@dataclass
class Candidate:
    model: str
    chip: str
    board: str
    engine: str
    variant: str  # the configuration's label: artifact variant plus computed precision if different
    artifact: str  # the variant artifact to deploy
    precision: str
    engine_options: dict
    engine_version: str
    p50_ms: float
    p90_ms: float
    peak_rss_mb: float | None
    size_bytes: int
    accuracy_metric: str | None
    accuracy: float | None
    run_id: int
    job_id: int
    throughput: list = field(default_factory=list)  # the agent's rows: {batch, items_per_s, p50_ms} or {batch, error}
    accuracy_drop: float | None = None
    speedup_vs_baseline: float | None = None
    batch: int | None = None  # the batch size the throughput objective chose
    items_per_s: float | None = None
    e2e_p50_ms: float | None = None  # the whole pipeline on an image file, when the run measured it

    def best_throughput(self, ceiling_ms: float | None) -> tuple[int, float] | None:
        """(batch, items/s) of the measured batch size with the most items/s under the ceiling."""
        rows = [r for r in self.throughput if r.get("items_per_s") and "error" not in r
                and (ceiling_ms is None or (r.get("p50_ms") is not None and r["p50_ms"] <= ceiling_ms))]
        best = max(rows, key=lambda r: r["items_per_s"], default=None)
        return (int(best["batch"]), float(best["items_per_s"])) if best else None


@dataclass
class Selection:
    model: str
    chip: str
    budget: float
    best: Candidate | None
    nearest: list[Candidate] = field(default_factory=list)  # shown when nothing meets the budget


def latest_candidates(session: Session) -> list[Candidate]:
    """The newest successful result per (model, chip, engine, configuration), newest model file only.

    The chip is the one each job recorded when it ran, not what its board is declared as today.
    """
    # Only the columns selection needs: raw samples and agent records stay in the database.
    rows = session.execute(
        select(Model.name, Model.sha256, Job.chip, Board.name, Job.engine, Job.label, Variant.name,
               Result.precision, Job.options, Result.engine_version, Result.p50_ms, Result.p90_ms,
               Result.peak_rss_mb, Variant.size_bytes, Result.accuracy_metric, Result.accuracy,
               Job.run_id, Job.id, Result.throughput, Job.artifact,
               # A JSON path, not a column: results stored before e2e existed need no migration.
               Result.raw["e2e"]["p50_ms"].as_float())
        .join(Result, Result.job_id == Job.id)
        .join(Board, Board.id == Job.board_id)
        .join(Variant, Variant.id == Job.variant_id)
        .join(Model, Model.id == Variant.model_id)
        # A tool that prints no median is stored, not ranked: p50 is what selection compares.
        .where(Job.status == "ok", Job.purpose == "measure", Result.p50_ms.is_not(None))
        .order_by(Job.id)
    ).all()
    newest_model = {row[0]: row[1] for row in rows}
    latest: dict[tuple, Candidate] = {}
    for (model, sha, chip, board, engine, label, variant, precision, options, version, p50, p90, rss, size,
         metric, accuracy, run_id, job_id, throughput, artifact, e2e_p50) in rows:
        if newest_model[model] == sha:
            c = Candidate(model, chip, board, engine, label, variant, precision, options, version, p50, p90, rss,
                          size, metric, accuracy, run_id, job_id, throughput=throughput or [], e2e_p50_ms=e2e_p50)
            if artifact:  # the engine loaded a converted file: that is what gets deployed
                c.size_bytes = artifact.get("size_bytes", c.size_bytes)
            latest[(model, chip, engine, label)] = c
    return list(latest.values())


def select_best(candidates: list[Candidate], budget: float, objective: str = "latency",
                latency_ceiling_ms: float | None = None) -> list[Selection]:
    groups: dict[tuple[str, str], list[Candidate]] = {}
    for c in candidates:
        groups.setdefault((c.model, c.chip), []).append(c)
    out = []
    for (model, chip), group in sorted(groups.items()):
        baseline = next((c for c in group if c.engine == BASELINE_ENGINE and c.variant == BASELINE_LABEL), None)
        fp32 = [c for c in group if c.variant == BASELINE_LABEL and c.accuracy is not None]
        reference = baseline.accuracy if baseline and baseline.accuracy is not None else (
            max(c.accuracy for c in fp32) if fp32 else None  # type: ignore[type-var]
        )
        for c in group:
            c.accuracy_drop = None if reference is None or c.accuracy is None else reference - c.accuracy
            c.speedup_vs_baseline = baseline.p50_ms / c.p50_ms if baseline and c.p50_ms > 0 else None
        eligible = [c for c in group if c.accuracy_drop is not None and c.accuracy_drop <= budget + 1e-12]
        if objective == "throughput":
            for c in group:
                c.batch, c.items_per_s = c.best_throughput(latency_ceiling_ms) or (None, None)
            eligible = [c for c in eligible if c.items_per_s is not None]
            best = max(eligible, key=lambda c: c.items_per_s) if eligible else None  # type: ignore[arg-type,return-value]
        else:
            best = min(eligible, key=lambda c: c.p50_ms) if eligible else None
        nearest = [] if best else sorted(
            group, key=lambda c: (c.accuracy_drop is None, c.accuracy_drop or 0.0, c.p50_ms)
        )[:3]
        out.append(Selection(model, chip, budget, best, nearest))
    return out


def describe_rule(budget: float, objective: str, latency_ceiling_ms: float | None) -> str:
    """How the table was chosen, in words: "accuracy budget 0.01, most items/s with p50 <= 50 ms"."""
    if objective != "throughput":
        return f"accuracy budget {budget:g}, lowest p50"
    ceiling = f" with a batch p50 <= {latency_ceiling_ms:g} ms" if latency_ceiling_ms else ""
    return f"accuracy budget {budget:g}, most items/s{ceiling}"


def selections(session: Session, budget: float, objective: str = "latency",
               latency_ceiling_ms: float | None = None) -> list[Selection]:
    return select_best(latest_candidates(session), budget, objective, latency_ceiling_ms)


# --- output formats ---------------------------------------------------------------------

COLUMNS = ("model", "chip", "engine", "variant", "precision", "p50_ms", "e2e_p50_ms", "p90_ms", "peak_rss_mb",
           "size_mb", "accuracy_metric", "accuracy", "accuracy_drop", "speedup_vs_baseline")
# The throughput objective's table also says which batch size and how many items per second.
_AFTER_P90 = COLUMNS.index("p90_ms") + 1
THROUGHPUT_COLUMNS = COLUMNS[:_AFTER_P90] + ("batch", "items_per_s") + COLUMNS[_AFTER_P90:]


def _row(sel: Selection, c: Candidate | None) -> dict:
    if c is None:
        return {"model": sel.model, "chip": sel.chip, "engine": None, "variant": None, "within_budget": False}
    fields = asdict(c)
    del fields["throughput"]  # every batch's figures: in the database and the dashboard, not the table
    row: dict = {}
    for key, value in fields.items():  # the end-to-end p50 next to the engine's own
        if key != "e2e_p50_ms":
            row[key] = value
        if key == "p50_ms":
            row["e2e_p50_ms"] = c.e2e_p50_ms
    row["size_mb"] = c.size_bytes / 1e6
    row["within_budget"] = sel.best is c
    return row


def as_records(sels: list[Selection]) -> list[dict]:
    records = []
    for s in sels:
        rec = _row(s, s.best)
        rec["budget"] = s.budget
        if s.best is None:
            rec["nearest"] = [_row(s, c) for c in s.nearest]
        records.append(rec)
    return records


def _fmt(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def render(sels: list[Selection], fmt: str) -> str:
    columns = THROUGHPUT_COLUMNS if any(s.best and s.best.items_per_s is not None for s in sels) else COLUMNS
    if fmt == "json":
        return json.dumps(as_records(sels), indent=2, default=str)
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=[*columns, "within_budget"], extrasaction="ignore")
        writer.writeheader()
        for rec in as_records(sels):
            writer.writerow(rec)
        return buf.getvalue()
    lines = []
    rows = []
    for s in sels:
        if s.best:
            rows.append([_fmt(_row(s, s.best).get(k)) for k in columns])
        else:
            lines.append(f"{s.model} on {s.chip}: nothing within the accuracy budget {s.budget:g}; nearest:")
            for c in s.nearest:
                e2e = f" (e2e {_fmt(c.e2e_p50_ms)} ms)" if c.e2e_p50_ms is not None else ""
                lines.append(f"  {c.engine} {c.variant}: drop {_fmt(c.accuracy_drop)}, p50 {_fmt(c.p50_ms)} ms{e2e}")
    if not sels:
        return "no results yet: run `edgefarm run` first"
    if fmt == "md":
        head = "| " + " | ".join(columns) + " |\n|" + "---|" * len(columns) + "\n"
        table = head + "".join("| " + " | ".join(r) + " |\n" for r in rows)
        return table + ("\n" + "\n".join(lines) if lines else "")
    widths = [max(len(c), *(len(r[i]) for r in rows)) if rows else len(c) for i, c in enumerate(columns)]
    fmt_line = "  ".join(f"{{:{w}}}" for w in widths)
    table = "\n".join([fmt_line.format(*columns), *(fmt_line.format(*r) for r in rows)])
    return table + ("\n" + "\n".join(lines) if lines else "")
