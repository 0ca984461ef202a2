"""Altair charts for the dashboard, built from ``views.candidates_frame`` and raw samples.

One small chart per model (and chip): a detection model's 100 ms next to a classifier's 1 ms on
a shared axis would flatten every bar that matters, so each facet keeps its own scale.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import altair as alt
    import pandas as pd

VARIANT_ORDER = ("fp32", "fp16", "int8", "pruned")
# One fixed palette: Streamlit's default gives two engines two shades of the same blue.
ENGINE_COLOR = {"scale": {"scheme": "tableau10"}, "legend": {"orient": "top"}}
TOOLTIP = ["model", "chip", "engine", "variant", "precision", "p50_ms", "p90_ms", "accuracy_metric",
           "accuracy", "accuracy_drop", "speedup_vs_baseline", "job_id"]


def _prepare(df: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """Adds the facet column ("model" or "model · chip") and returns the variant order."""
    df = df.copy()
    several_chips = df["chip"].nunique() > 1
    df["group"] = df["model"] + (" · " + df["chip"] if several_chips else "")
    seen = list(dict.fromkeys(df["variant"]))
    order = [v for v in VARIANT_ORDER if v in seen] + sorted(v for v in seen if v not in VARIANT_ORDER)
    return df, order


def _facet(chart: alt.Chart | alt.LayerChart, data: pd.DataFrame, columns: int) -> alt.FacetChart:
    import altair as alt

    return chart.facet(facet=alt.Facet("group:N", title=None), columns=columns, data=data).resolve_scale(
        x="independent", xOffset="independent", y="independent"
    )


def latency_bars(df: pd.DataFrame, width: int = 220, columns: int = 3) -> alt.FacetChart:
    """Grouped bars: p50 latency per engine x variant, one panel per model."""
    import altair as alt

    data, order = _prepare(df)
    bars = alt.Chart().mark_bar().encode(
        x=alt.X("variant:N", sort=order, title=None, axis=alt.Axis(labelAngle=0)),
        xOffset=alt.XOffset("engine:N"),
        y=alt.Y("p50_ms:Q", title="p50 latency (ms)"),
        color=alt.Color("engine:N", **ENGINE_COLOR),
        tooltip=TOOLTIP,
    ).properties(width=width, height=200)
    return _facet(bars, data, columns)


def accuracy_points(df: pd.DataFrame, budget: float, width: int = 220, columns: int = 3) -> alt.FacetChart:
    """Accuracy per engine x variant, with a dashed line at reference - budget.

    Dots rather than bars: the differences that matter are a fraction of a percent, which a bar
    starting at zero hides and a bar starting elsewhere exaggerates.
    """
    import altair as alt

    data, order = _prepare(df.dropna(subset=["accuracy"]))
    # Each panel names its model's metric (top1, mAP50, hmean, ...): a shared axis title cannot.
    data["group"] = data["group"] + " · " + data["accuracy_metric"].fillna("accuracy")
    data["floor"] = data["accuracy"] + data["accuracy_drop"] - budget  # NaN where no reference
    x = alt.X("variant:N", sort=order, title=None, axis=alt.Axis(labelAngle=0))
    points = alt.Chart().mark_point(filled=True, size=90).encode(
        x=x, xOffset=alt.XOffset("engine:N"),
        y=alt.Y("accuracy:Q", scale=alt.Scale(zero=False), title="task metric (named above each panel)",
              axis=alt.Axis(format=".4~f")),
        color=alt.Color("engine:N", **ENGINE_COLOR),
        tooltip=TOOLTIP,
    )
    floor = alt.Chart().mark_rule(strokeDash=[4, 3], color="#b33").encode(
        y=alt.Y("mean(floor):Q"), tooltip=[alt.Tooltip("mean(floor):Q", title="reference - budget")]
    )
    return _facet(alt.layer(points, floor).properties(width=width, height=200), data, columns)


def latency_vs_accuracy(df: pd.DataFrame, width: int = 220, columns: int = 3) -> alt.FacetChart:
    """Each configuration as a point: further left is faster, higher is more accurate."""
    import altair as alt

    data, order = _prepare(df.dropna(subset=["accuracy"]))
    points = alt.Chart().mark_point(filled=True, size=90).encode(
        x=alt.X("p50_ms:Q", scale=alt.Scale(zero=False), title="p50 latency (ms)"),
        y=alt.Y("accuracy:Q", scale=alt.Scale(zero=False), title="accuracy", axis=alt.Axis(format=".4~f")),
        color=alt.Color("engine:N", **ENGINE_COLOR),
        shape=alt.Shape("variant:N", sort=order, legend=alt.Legend(orient="top")),
        tooltip=TOOLTIP,
    ).properties(width=width, height=200)
    return _facet(points, data, columns)


def throughput_lines(df: pd.DataFrame, width: int = 220, columns: int = 3) -> alt.FacetChart:
    """Items/s against batch size, a line per engine x variant, one panel per model."""
    import altair as alt

    data, order = _prepare(df)
    data["configuration"] = data["engine"] + " " + data["variant"]
    lines = alt.Chart().mark_line(point=True).encode(
        x=alt.X("batch:O", title="batch size", axis=alt.Axis(labelAngle=0)),
        y=alt.Y("items_per_s:Q", title="items/s"),
        color=alt.Color("engine:N", **ENGINE_COLOR),
        strokeDash=alt.StrokeDash("variant:N", sort=order, legend=alt.Legend(orient="top")),
        detail="configuration:N",
        tooltip=["model", "chip", "engine", "variant", "batch", "items_per_s", "batch_p50_ms"],
    ).properties(width=width, height=200)
    return _facet(lines, data, columns)


def distribution(samples: Sequence[float], width: int = 420) -> alt.VConcatChart:
    """Histogram of raw samples with p50/p90/p99 rules, and the samples in measurement order
    (drift there means thermal throttling or a noisy neighbour, not the engine)."""
    import altair as alt
    import numpy as np
    import pandas as pd

    data = pd.DataFrame({"iteration": range(len(samples)), "ms": list(samples)})
    # The agent reports percentiles with the linear method; use the same so the rules match the table.
    marks = pd.DataFrame({"percentile": ["p50", "p90", "p99"],
                          "ms": np.percentile(data["ms"], [50, 90, 99], method="linear")})
    hist = alt.Chart(data).mark_bar(color="#9aa5b1").encode(
        x=alt.X("ms:Q", bin=alt.Bin(maxbins=40), title="latency (ms)"), y=alt.Y("count():Q", title="samples"),
    )
    rules = alt.Chart(marks).mark_rule(strokeDash=[5, 3], strokeWidth=2).encode(
        x="ms:Q", color=alt.Color("percentile:N", scale=alt.Scale(scheme="set1"), legend=alt.Legend(orient="top")),
        tooltip=["percentile", alt.Tooltip("ms:Q", format=".3g")],
    )
    # Dots only while they can be told apart; a 1 ms model can leave 20 000 samples.
    line = alt.MarkDef(type="line", point=alt.OverlayMarkDef(size=12) if len(data) <= 500 else False)
    order = alt.Chart(data, mark=line).encode(
        x=alt.X("iteration:Q", title="iteration"), y=alt.Y("ms:Q", scale=alt.Scale(zero=False), title="ms"),
    ).properties(width=width, height=120)
    return alt.vconcat(alt.layer(hist, rules).properties(width=width, height=200), order)


STATUS_COLOR = {"domain": ["ok", "failed", "rolled-back"], "range": ["#2e7d32", "#c62828", "#ef6c00"]}


def deployment_timeline(df: pd.DataFrame, width: int = 720) -> alt.Chart:
    """One mark per deploy or rollback on a time axis, a row per board: when each board changed
    release, and which changes failed. ``df``: ``views.deployment_history_frame``."""
    import altair as alt

    rows = max(1, df["board"].nunique())
    return alt.Chart(df).mark_point(filled=True, size=140).encode(
        x=alt.X("when (UTC):T", title=None),
        y=alt.Y("board:N", title=None),
        color=alt.Color("status:N", scale=alt.Scale(**STATUS_COLOR), legend=alt.Legend(orient="top")),
        shape=alt.Shape("action:N", legend=alt.Legend(orient="top")),
        tooltip=["when (UTC):T", "board", "action", "bundle", "previous", "status", "models", "reason"],
    ).properties(width=width, height=40 + 36 * rows)


# A job's bar: its purpose (a measurement, a finalist's round, nightly's confirmation), red where it failed.
TIMELINE_COLOR = {"domain": ["measure", "round", "confirm", "failed"],
                  "range": ["#1f77b4", "#9467bd", "#17becf", "#c62828"]}


def job_timeline(df: pd.DataFrame, width: int = 720) -> alt.Chart:
    """A Gantt chart of one run: a row per board, a bar per job from when its board took it to when
    the board was done with it, coloured by ``bar``. ``df``: ``views.timeline_frame``."""
    import altair as alt
    import pandas as pd

    # Naive UTC from the database, marked as UTC so that the browser draws the instants they are
    # (as history_chart does); the tooltip's text says them in UTC whatever the browser's zone.
    started, ended = (pd.to_datetime(df[c]).dt.tz_localize("UTC") for c in ("started", "ended"))
    data = df.assign(started=started, ended=ended, start=started.dt.strftime("%H:%M:%S UTC"),
                     end=ended.dt.strftime("%H:%M:%S UTC"))
    shown = set(data["bar"])
    colors = dict(zip(TIMELINE_COLOR["domain"], TIMELINE_COLOR["range"]))
    domain = [b for b in colors if b in shown] + sorted(shown - set(colors))  # a purpose added later: grey
    boards = sorted(set(data["board"]))
    return alt.Chart(data).mark_bar(stroke="white", strokeWidth=0.5).encode(
        x=alt.X("started:T", title="time (UTC)", scale=alt.Scale(type="utc")),
        x2="ended:T",
        y=alt.Y("board:N", sort=boards, title=None),
        color=alt.Color("bar:N", scale=alt.Scale(domain=domain, range=[colors.get(b, "#9e9e9e") for b in domain]),
                        legend=alt.Legend(title=None, orient="top")),
        tooltip=["job:Q", "board:N", "model:N", "engine:N", "variant:N", "purpose:N", "status:N", "stage:N",
                 "start:N", "end:N", alt.Tooltip("seconds:Q", format=".3~f", title="duration (s)")],
    ).properties(width=width, height=40 + 36 * max(1, len(boards)), usermeta={"embedOptions": {"renderer": "svg"}})


# What nightly judged each point (``jobs.verdict``) and the band's shade on one colour scale, so that
# one legend says what every mark is. A point without a verdict (no baseline yet, or a plain run
# that nightly never judged) is pale inside its outline; the shape says whether it was a nightly.
VERDICT_COLOR = {
    "domain": ["regression", "accuracy-regression", "improvement", "noise", "unchanged", "no baseline", "not judged",
               "noise band"],
    "range": ["#c62828", "#ad1457", "#2e7d32", "#9e9e9e", "#1f77b4", "white", "#e0e0e0", "#cfd8dc"],
}
BAND = "noise band"
CHANGE_COLOR = "#ef6c00"
OUTLINE = "#37474f"
LABEL_CHARS = 48  # a change label longer than this is cut on the chart; the tooltip and the table have it whole


def history_chart(df: pd.DataFrame, width: int = 720) -> alt.VConcatChart:
    """One benchmark's p50 run after run: the noise band as it stood before each run (shaded),
    every point coloured by its verdict, and a labelled rule where the setup changed since the
    previous point; accuracy below on the same time axis when the benchmark has it.

    ``df``: ``views.history_frame`` (run, kind, started, p50_ms, band_low, band_high, verdict, change,
    accuracy, metric).
    """
    import altair as alt

    # The database keeps naive UTC. Marked as UTC, the times reach the browser as the instants they
    # are (a naive one is read in the browser's own zone), and a "utc" scale prints them in UTC.
    data = df.assign(band=BAND, started=df["started"].dt.tz_localize("UTC"),
                     when=df["started"].dt.strftime("%Y-%m-%d %H:%M:%S UTC"),
                     label=[c if len(c) <= LABEL_CHARS else c[:LABEL_CHARS - 3] + "..." for c in df["change"].fillna("")])
    x = alt.X("started:T", title="run started (UTC)", scale=alt.Scale(type="utc"))
    # Only what this chart shows in the legend, each in its fixed colour (a verdict nightly may add later in amber).
    shown = set(data["verdict"]) | ({BAND} if data["band_low"].notna().any() else set())
    colors = dict(zip(VERDICT_COLOR["domain"], VERDICT_COLOR["range"]))
    domain = [v for v in colors if v in shown] + sorted(shown - set(colors))
    color = {"scale": alt.Scale(domain=domain, range=[colors.get(v, "#ffb300") for v in domain]), "legend": alt.Legend(
        title=None, orient="top", symbolStrokeColor=OUTLINE, symbolStrokeWidth=1, symbolOpacity=1)}
    tooltip = ["run:Q", "kind:N", "when:N",
               alt.Tooltip("p50_ms:Q", format=".4g"), alt.Tooltip("band_low:Q", format=".4g"),
               alt.Tooltip("band_high:Q", format=".4g"), "verdict:N", "change:N", "engine_version:N"]
    band = alt.Chart(data).mark_area(opacity=0.6).encode(
        x=x, y=alt.Y("band_low:Q"), y2="band_high:Q", color=alt.Color("band:N", **color))
    line = alt.Chart(data).mark_line(color="#607d8b").encode(
        x=x, y=alt.Y("p50_ms:Q", scale=alt.Scale(zero=False), title="p50 latency (ms)"))
    points = alt.Chart(data).mark_point(size=80, filled=True, opacity=1, stroke=OUTLINE, strokeWidth=1.5).encode(
        x=x, y="p50_ms:Q", color=alt.Color("verdict:N", **color), tooltip=tooltip,
        shape=alt.Shape("kind:N", scale=alt.Scale(domain=["nightly", "run"], range=["circle", "square"]),
                        legend=alt.Legend(title=None, orient="top")),
    )
    changes = data[data["label"] != ""]
    rules = alt.Chart(changes).mark_rule(color=CHANGE_COLOR, strokeDash=[5, 3], strokeWidth=1.5).encode(
        x=x, tooltip=["run:Q", "change:N"])
    # A label reads away from the chart's nearer edge, so the newest change's is not cut off on the right.
    middle = data["started"].min() + (data["started"].max() - data["started"].min()) / 2
    labels = [alt.Chart(part).mark_text(align=align, baseline="top", dx=4 if align == "left" else -4, dy=4,
                                        color=CHANGE_COLOR, fontSize=11).encode(x=x, y=alt.value(0), text="label:N")
              for align, part in (("left", changes[changes["started"] <= middle]),
                                  ("right", changes[changes["started"] > middle]))]
    charts: list[alt.LayerChart] = [alt.layer(band, line, points, rules, *labels).properties(width=width, height=260)]
    measured = data.dropna(subset=["accuracy"])
    if len(measured):
        metric = measured["metric"].dropna()
        accuracy = alt.Chart(measured).mark_line(color="#6a1b9a", point=alt.OverlayMarkDef(color="#6a1b9a")).encode(
            x=x, y=alt.Y("accuracy:Q", scale=alt.Scale(zero=False), axis=alt.Axis(format=".4~f"),
                         title=metric.iloc[-1] if len(metric) else "accuracy"),
            tooltip=["run:Q", alt.Tooltip("accuracy:Q", format=".4f"), "metric:N"],
        )
        charts.append(alt.layer(accuracy, rules).properties(width=width, height=120))
    # SVG, not canvas: the change labels and the legend stay text that a reader can select and a test can find.
    return alt.vconcat(*charts).properties(usermeta={"embedOptions": {"renderer": "svg"}})
