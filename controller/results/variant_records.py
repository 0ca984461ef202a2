"""What each variant's pass did, from the records stored with the variants.

Every pass returns a record (controller.passes): the fusions applied, the calibration used,
the nodes int8-mixed kept in float and why, the channels pruning cut. ``edgefarm variants``
prints one line per variant from it, or the whole records as JSON.
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from controller.results.store import Job, Variant

SHOWN_FLOAT_NODES = 5  # the line names the worst few; the JSON record has them all


def latest_variants(session: Session, model: str | None = None) -> list[Variant]:
    """The variant each (model, name) had in the most recent job that used one of that name."""
    newest: dict[tuple[str, str], Variant] = {}
    query = select(Variant).join(Job, Job.variant_id == Variant.id).order_by(Job.id)
    for v in session.scalars(query):
        if model is None or v.model.name == model:
            newest[v.model.name, v.name] = v  # later jobs overwrite earlier ones
    from controller.passes import pass_names

    order = pass_names()  # fp32 first, then in the manifest's order
    return [newest[k] for k in sorted(newest, key=lambda k: (k[0], order.index(k[1]) if k[1] in order else len(order)))]


def summary(name: str, record: dict[str, Any]) -> str:
    """One line: what the recipe did to this model."""
    if "pruning" in record:
        return _pruning(record["pruning"])
    if "mixed" in record:
        return _mixed(record["mixed"])
    if "applied" in record:
        applied = ", ".join(f"{k} x{n}" for k, n in record["applied"].items())
        nodes = record.get("nodes") or {}  # how an older release's records said it
        before = record.get("nodes_before", nodes.get("before", "?"))
        after = record.get("nodes_after", nodes.get("after", "?"))
        return f"{before} -> {after} nodes; {applied or 'nothing to fuse'}"
    if record.get("quantizer") == "nncf":
        weights = (record.get("quantized") or {}).get("int8_weight_ops") or {}
        return (f"NNCF {record.get('nncf')} ({record.get('preset')} preset) on {record.get('calibration_samples')} "
                f"samples; int8 weights in {', '.join(f'{op} x{n}' for op, n in weights.items()) or 'no op'}")
    if "calibration" in record:
        calibration: Any = record["calibration"]
        samples = record.get("calibration_samples", "?")
        if isinstance(calibration, dict):  # an older release's record: {"samples": N, "seed": S}, no method
            calibration, samples = "int8", calibration.get("samples", "?")
        scope = record.get("op_types") or "all"
        channels = "per-channel" if record.get("per_channel", True) else "per-tensor"
        return (f"{calibration} calibration on {samples} samples, "
                f"{channels} weights, ops quantized: {scope if isinstance(scope, str) else ', '.join(scope)}")
    ops = record.get("ops") or {}
    casts = f", {ops['Cast']} Cast" if ops.get("Cast") else ""
    return f"{sum(ops.values())} nodes{casts}" if ops else name


def _mixed(m: dict[str, Any]) -> str:
    kept = m.get("kept_float") or []
    chosen = m.get("chosen") or {}
    head = f"{m['scope']}; {len(kept)} more node(s) in float"
    if kept:
        head += ": " + ", ".join(f"{k['node']} ({k['sqnr_drop_db']:.1f} dB)" for k in kept[:SHOWN_FLOAT_NODES])
        head += ", ..." if len(kept) > SHOWN_FLOAT_NODES else ""
    verdict = "within" if m.get("met_budget") else "MISSED"
    return (f"{head}; calibration drop {chosen.get('drop', float('nan')):+.4f} on {m.get('samples', '?')} samples, "
            f"{verdict} budget {m['budget']:g}")


def _pruning(p: dict[str, Any]) -> str:
    tuned = "fine-tuned" if p.get("finetuned") else f"surgery alone ({(p.get('finetune') or {}).get('status', 'off')})"
    verdict = "within" if p.get("met_budget") else "MISSED"
    return (f"MACs -{100 * p['flops_removed']:.0f}%, weights -{100 * p['params_removed']:.0f}%, "
            f"{p['size_before'] / max(p['size_after'], 1):.2f}x smaller, {len(p.get('pruned', []))} groups cut, "
            f"{tuned}; calibration drop {p['drop_on_calibration']:+.4f}, {verdict} budget {p['budget']:g}")


def rows(variants: list[Variant]) -> list[dict[str, Any]]:
    """One row per variant: model, variant, size in MB, how many times smaller than fp32, summary."""
    fp32 = {v.model.name: v.size_bytes for v in variants if v.name == "fp32"}
    return [{"model": v.model.name, "variant": v.name, "size_mb": v.size_bytes / 1e6,
             "smaller_x": fp32[v.model.name] / v.size_bytes if v.model.name in fp32 and v.size_bytes else None,
             "what_the_recipe_did": summary(v.name, v.recipe or {})} for v in variants]


def render(variants: list[Variant], fmt: str) -> str:
    if fmt == "json":
        return json.dumps([{"model": v.model.name, "variant": v.name, "sha256": v.sha256, "size_bytes": v.size_bytes,
                            "record": v.recipe} for v in variants], indent=2, default=str)
    if not variants:
        return "no variants yet: run `edgefarm run` first"
    lines = [f"{'model':<12} {'variant':<10} {'size':>10} {'vs fp32':>7}  what the recipe did"]
    for r in rows(variants):
        ratio = f"{r['smaller_x']:.2f}x" if r["smaller_x"] else "-"
        lines.append(f"{r['model']:<12} {r['variant']:<10} {r['size_mb']:7.2f} MB {ratio:>7}  {r['what_the_recipe_did']}")
    return "\n".join(lines)
