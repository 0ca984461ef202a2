"""Expected against actual outputs of a bundle, within each task's tolerance.

The controller computes the golden outputs with the same artifacts and runtime code; a board's
engine build, CPU kernels or thread count may still move a score in its last digits, so "the same"
is what a user would call the same: the same top-1 label (score within 0.05), the same detections
by label (IoU >= 0.8), the same text or direction label, the same OCR lines in order (boxes IoU >=
0.8), raw outputs whose means agree within 1%. A user's own task's predictions are compared as
JSON, numbers within 1%.

``compare(manifest, expected, actual)`` takes {input name: result} (or a golden.json / smoke
document holding them under "outputs") and returns the differences, one readable line each.
"""

from __future__ import annotations

from typing import Any, Dict, List

from agent.metrics import iou

SCORE_TOLERANCE = 0.05
BOX_IOU = 0.8
RELATIVE = 1e-2


def _outputs(doc: Dict[str, Any]) -> Dict[str, Any]:
    inner = doc.get("outputs") if isinstance(doc, dict) else None
    return inner if isinstance(inner, dict) else doc


def compare(manifest: Dict[str, Any], expected: Dict[str, Any], actual: Dict[str, Any]) -> List[str]:
    """Differences beyond tolerance between two {input: result} tables ([] = the same)."""
    exp, act = _outputs(expected), _outputs(actual)
    out: List[str] = []
    for name in sorted(exp):
        if name not in act:
            out.append("%s: no output" % name)
            continue
        out += ["%s: %s" % (name, d) for d in compare_result(manifest, exp[name], act[name])]
    return out


def compare_result(manifest: Dict[str, Any], expected: Dict[str, Any], actual: Dict[str, Any]) -> List[str]:
    """Differences between one input's expected and actual result."""
    if not isinstance(actual, dict):
        return ["not a result: %r" % (actual,)]
    if "error" in actual:
        return ["failed: %s" % actual["error"]]
    models = manifest.get("models") or []
    if manifest.get("pipeline") == "ocr":
        return _ocr_lines(expected, actual)
    if len(models) == 1:
        return _by_task(str(models[0].get("task")), expected, actual)
    out = []
    for m in models:
        name = str(m.get("name"))
        e, a = (expected.get("models") or {}).get(name), (actual.get("models") or {}).get(name)
        if e is None:
            continue
        if a is None:
            out.append("model %s: no output" % name)
        else:
            out += ["model %s: %s" % (name, d) for d in _by_task(str(m.get("task")), e, a)]
    return out


def _by_task(task: str, e: Dict[str, Any], a: Dict[str, Any]) -> List[str]:
    if task == "classification":
        return _classification(e, a)
    if task == "detection":
        return _detection(e, a)
    if task == "ocr-det":
        return _boxes([_xyxy(b) for b in e.get("boxes", [])], [_xyxy(b) for b in a.get("boxes", [])], "text box")
    if task == "ocr-rec":
        return [] if e.get("text") == a.get("text") else ["text %r, expected %r" % (a.get("text"), e.get("text"))]
    if task == "ocr-cls":
        return [] if e.get("label") == a.get("label") else ["label %r, expected %r" % (a.get("label"), e.get("label"))]
    if task == "raw":
        return _raw(e, a)
    strip = ("timing_ms",)
    return _json({k: v for k, v in e.items() if k not in strip}, {k: v for k, v in a.items() if k not in strip}, "")


def _classification(e: Dict[str, Any], a: Dict[str, Any]) -> List[str]:
    et, at = (e.get("top") or [None])[0], (a.get("top") or [None])[0]
    if et is None or at is None:
        return [] if et is at else ["top-1 %s, expected %s" % (at, et)]
    if et.get("label") != at.get("label"):
        return ["top-1 %r, expected %r" % (at.get("label"), et.get("label"))]
    if abs(float(et.get("score", 0)) - float(at.get("score", 0))) > SCORE_TOLERANCE:
        return ["top-1 %r score %.4f, expected %.4f (+-%.2f)"
                % (at.get("label"), float(at["score"]), float(et["score"]), SCORE_TOLERANCE)]
    return []


def _detection(e: Dict[str, Any], a: Dict[str, Any]) -> List[str]:
    out = []
    labels = sorted({str(o.get("label")) for o in (e.get("objects") or []) + (a.get("objects") or [])})
    for label in labels:
        eb = [o["box"] for o in e.get("objects") or [] if str(o.get("label")) == label]
        ab = [o["box"] for o in a.get("objects") or [] if str(o.get("label")) == label]
        out += _boxes(eb, ab, "%r object" % label)
    return out


def _xyxy(box: Any) -> List[float]:
    """A box as [x0, y0, x1, y1] from corner points or from itself."""
    if box and isinstance(box[0], (list, tuple)):
        xs, ys = [float(p[0]) for p in box], [float(p[1]) for p in box]
        return [min(xs), min(ys), max(xs), max(ys)]
    return [float(v) for v in box]


def _boxes(expected: List[Any], actual: List[Any], what: str) -> List[str]:
    """One-to-one matching, best IoU first; each box left over is a difference."""
    pairs = sorted(((iou(p, t), i, j) for i, p in enumerate(expected) for j, t in enumerate(actual)), reverse=True)
    used_e, used_a = set(), set()
    for value, i, j in pairs:
        if value < BOX_IOU:
            break
        if i not in used_e and j not in used_a:
            used_e.add(i)
            used_a.add(j)
    out = ["%s %s expected, not found (IoU >= %.1f)" % (what, [round(v, 1) for v in expected[i]], BOX_IOU)
           for i in range(len(expected)) if i not in used_e]
    out += ["%s %s found, not expected" % (what, [round(v, 1) for v in actual[j]])
            for j in range(len(actual)) if j not in used_a]
    return out


def _ocr_lines(e: Dict[str, Any], a: Dict[str, Any]) -> List[str]:
    el, al = e.get("lines") or [], a.get("lines") or []
    et, at = [ln.get("text") for ln in el], [ln.get("text") for ln in al]
    if et != at:
        return ["lines %s, expected %s" % (at, et)]
    out = []
    for k, (x, y) in enumerate(zip(el, al)):
        value = iou(_xyxy(x["box"]), _xyxy(y["box"]))
        if value < BOX_IOU:
            out.append("line %d %r: box moved (IoU %.2f < %.1f)" % (k + 1, x.get("text"), value, BOX_IOU))
    return out


def _raw(e: Dict[str, Any], a: Dict[str, Any]) -> List[str]:
    eo, ao = e.get("outputs") or [], a.get("outputs") or []
    if len(eo) != len(ao):
        return ["%d outputs, expected %d" % (len(ao), len(eo))]
    out = []
    for x, y in zip(eo, ao):
        if list(x.get("shape") or []) != list(y.get("shape") or []):
            out.append("output %s shape %s, expected %s" % (x.get("name"), y.get("shape"), x.get("shape")))
            continue
        # Relative to the mean, but not below a thousandth of the output's range: a mean near 0
        # would otherwise turn rounding noise into a difference.
        scale = max(abs(float(x["mean"])), 1e-3 * max(abs(float(x.get("max", 0.0))), 1.0))
        if abs(float(x["mean"]) - float(y["mean"])) > RELATIVE * scale:
            out.append("output %s mean %.6g, expected %.6g (+-%g%%)"
                       % (x.get("name"), float(y["mean"]), float(x["mean"]), RELATIVE * 100))
    return out


def _json(e: Any, a: Any, where: str) -> List[str]:
    """Structural equality, numbers within 1% (or 1e-4 near 0)."""
    at = where or "prediction"
    if isinstance(e, bool) or isinstance(a, bool):
        return [] if e == a else ["%s %r, expected %r" % (at, a, e)]
    if isinstance(e, (int, float)) and isinstance(a, (int, float)):
        return [] if abs(e - a) <= max(RELATIVE * abs(e), 1e-4) else ["%s %r, expected %r" % (at, a, e)]
    if isinstance(e, dict) and isinstance(a, dict):
        if set(e) != set(a):
            return ["%s keys %s, expected %s" % (at, sorted(a), sorted(e))]
        return [d for k in sorted(e) for d in _json(e[k], a[k], "%s.%s" % (where, k) if where else str(k))]
    if isinstance(e, list) and isinstance(a, list):
        if len(e) != len(a):
            return ["%s has %d items, expected %d" % (at, len(a), len(e))]
        return [d for k, (x, y) in enumerate(zip(e, a)) for d in _json(x, y, "%s[%d]" % (where, k))]
    return [] if e == a else ["%s %r, expected %r" % (at, a, e)]
