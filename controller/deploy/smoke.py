"""Judging a smoke run on the controller: the report ``bundle.pyz smoke`` printed on a board, held
against the bundle's golden outputs and the farm's figures.

* outputs: every golden input's result against golden.json (computed on the controller with the
  same artifacts and runtime), within each task's tolerance (``agent.runtime.golden.compare``);
* latency: the farm measured each model's engine alone (``measured.p50_ms``), so the board's
  inference time is held against that: per model, its infer p50 on the board must be within
  ``--latency-factor`` times the farm's p50 times the calls the model makes per input (one; for
  the OCR pipeline the direction classifier and recognizer run once per text line, so times the
  most lines a golden page has). Where the farm also measured the whole pipeline
  (``measured.e2e_p50_ms`` of every model, a bundle that is not a pipeline), the board's total
  p50 is held against the sum of those too. The total (decode to postprocess) is always reported.

A board without Python is smoke-tested by its engines' native tools (``controller.deploy.native``):
their report has the same latency keys (each model's p50 as the tool prints it, or its mean where it
prints no median) and a ``native`` entry, and no outputs: a benchmark tool prints none, so the
outputs are not compared and the figures say so.
"""

from __future__ import annotations

from typing import Any

NOT_COMPARED_NATIVE = "not compared: a native tool prints no outputs"


def _lines(result: Any) -> int:
    return len(result.get("lines", [])) if isinstance(result, dict) else 0


def judge(manifest: dict[str, Any], expected: dict[str, Any] | None, report: dict[str, Any],
          factor: float) -> tuple[list[str], dict[str, Any]]:
    """What is wrong with a smoke run (one line each; [] = it passed) and its figures."""
    if report.get("error"):
        return [f"smoke test: {report['error']}"], {"error": report["error"]}
    latency = report.get("latency_ms") or {}
    outputs = report.get("outputs") or {}
    problems: list[str] = []
    figures: dict[str, Any] = {"total_p50_ms": latency.get("total_p50"), "infer_p50_ms": latency.get("infer_p50"),
                               "per_model_infer_p50_ms": latency.get("per_model_infer_p50") or {},
                               "latency_factor": factor}
    if report.get("native") is not None:
        figures["outputs"] = NOT_COMPARED_NATIVE
        figures["native"] = report["native"]
    elif expected is None:
        figures["outputs"] = "not compared: the bundle has no golden outputs"
    else:
        from agent.runtime.golden import compare

        differences = compare(manifest, expected, outputs)
        figures["outputs"] = "same" if not differences else "differ"
        figures["differences"] = differences[:20]
        problems += [f"outputs differ from golden.json: {d}" for d in differences[:3]]
        if len(differences) > 3:
            problems.append(f"... and {len(differences) - 3} more differences")
    pipeline = manifest.get("pipeline") == "ocr"
    most_lines = max([_lines(r) for r in outputs.values()] or [0])
    farm: dict[str, float] = {}
    for m in manifest.get("models", []):
        calls = max(most_lines, 1) if pipeline and m.get("task") in ("ocr-cls", "ocr-rec") else 1
        farm[m["name"]] = float(m["measured"]["p50_ms"]) * calls
    figures["farm_infer_ms"] = farm
    figures["farm_infer_total_ms"] = sum(farm.values())
    per_model = figures["per_model_infer_p50_ms"]
    for name, allowed in farm.items():
        board_ms = per_model.get(name)
        if board_ms is not None and board_ms > factor * allowed:
            problems.append(f"latency: {name} infer p50 {board_ms:.1f} ms on the board > {factor:g} x the farm's "
                            f"{allowed:.1f} ms")
    infer = figures["infer_p50_ms"]
    if not per_model and infer is not None and infer > factor * figures["farm_infer_total_ms"]:
        problems.append(f"latency: infer p50 {infer:.1f} ms on the board > {factor:g} x the farm's "
                        f"{figures['farm_infer_total_ms']:.1f} ms")
    e2e = [m["measured"].get("e2e_p50_ms") for m in manifest.get("models", [])]
    total = figures["total_p50_ms"]
    if not pipeline and e2e and all(v is not None for v in e2e) and total is not None:
        figures["farm_e2e_ms"] = sum(e2e)
        if total > factor * figures["farm_e2e_ms"]:
            problems.append(f"latency: total p50 {total:.1f} ms on the board > {factor:g} x the farm's end-to-end "
                            f"{figures['farm_e2e_ms']:.1f} ms")
    return problems, figures


def describe_smoke(figures: dict[str, Any]) -> str:
    if "error" in figures:
        return f"smoke test failed: {figures['error']}"
    infer, total = figures.get("infer_p50_ms"), figures.get("total_p50_ms")
    text = "smoke test: infer p50 " + (f"{infer:.1f} ms" if infer is not None else "?")
    text += f" vs farm {figures['farm_infer_total_ms']:.1f} ms (x{figures['latency_factor']:g} allowed)"
    if total is not None:
        text += f", total p50 {total:.1f} ms"
    native = figures.get("native")
    if native:
        text += ", by " + ", ".join(sorted({str(r.get("tool")) for r in native.values()}))
    outputs = figures.get("outputs")
    return text + (", outputs same" if outputs == "same" else f", outputs {outputs}")
