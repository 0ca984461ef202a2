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
