"""Benchmark: what an application sees against what an engine benchmark says, on the local board.

One small real run (the three PaddleOCR models of examples/ppocr.yaml, and the classification and
detection examples when examples/data exists; ONNX Runtime, fp32 and int8) in a fresh workspace
and database. Each job measures the engine alone (its p50 on ready tensors) and, beside it, the
deployment runtime's whole pipeline on evaluation image files (decode + preprocess + infer +
postprocess, batch 1): the table prints both, their ratio and the pipeline's stages, measured side
by side in one run. Then the OCR pipeline: a bundle of the three OCR models built from that
database (``edgefarm bundle``), timed over 16 rendered pages, one ``predict`` call per page
against one call with all 16 (the recognizer batched, its batch being dynamic).

    .venv/bin/python bench/bundle_e2e.py [--home DIR] [--out bench/out]

``--home`` reuses a workspace (its compile cache); by default a temporary one, so the figures
include nothing from an earlier run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

OCR_MODELS = ("ppocr-det", "ppocr-rec", "ppocr-cls")
PAGES = 16
ROUNDS = 3  # each way of calling, alternated; the median round counts
MEASURE = {"warmup": 5, "min_iterations": 64, "min_seconds": 1.0, "max_seconds": 20.0, "batch_sizes": [1],
           "throughput_seconds": 0.2}


def bench_spec(folder: Path) -> Path:
    """examples/ppocr.yaml made small, plus the user-data examples where their data exists: ONNX
    Runtime fp32 and int8 on the local board."""
    examples = ROOT / "examples"
    spec = yaml.safe_load((examples / "ppocr.yaml").read_text())
    spec["name"] = "bundle-e2e"
    for m in spec["models"]:
        m["dataset"]["samples"] = 24
    if (examples / "data").is_dir():
        for name, samples in (("classification", 64), ("detection", 48)):
            for m in yaml.safe_load((examples / f"{name}.yaml").read_text())["models"]:
                m["dataset"]["path"] = str(examples / m["dataset"]["path"])
                m["dataset"]["samples"] = samples
                if m.get("labels"):
                    m["labels"] = str(examples / m["labels"])
                spec["models"].append(m)
    spec.update(engines=["onnxruntime"], variants=["fp32", "int8"], boards=["local"], measure=MEASURE,
                quantization={"calibration": "minmax", "samples": 16, "per_channel": True})
    path = folder / "bundle-e2e.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def e2e_table(url: str) -> tuple[list[str], str]:
    """Per model and configuration: engine-only p50, e2e p50, their ratio, the e2e stages. Returns
    the lines and the chip."""
    from controller.results.database import open_db
    from controller.results.selection import latest_candidates
    from controller.results.store import Result

    with open_db(url)() as session:
        cands = sorted(latest_candidates(session), key=lambda c: (c.model, c.engine, c.variant))
        raws = {c.job_id: session.query(Result).filter(Result.job_id == c.job_id).one().raw for c in cands}
    head = (f"| {'model':<12} | {'engine':<11} | {'variant':<7} | {'engine p50 ms':>13} | {'e2e p50 ms':>10} | "
            f"{'e2e/engine':>10} | {'decode':>7} | {'preproc':>7} | {'infer':>7} | {'postproc':>8} | {'e2e/infer':>9} | "
            "images |")
    lines = [head, "|" + "|".join("-" * (len(cell) + 0) for cell in head.split("|")[1:-1]) + "|"]
    for c in cands:
        e2e = raws[c.job_id].get("e2e") or {}
        if "p50_ms" not in e2e:
            lines.append(f"| {c.model:<12} | {c.engine:<11} | {c.variant:<7} | {c.p50_ms:13.2f} | "
                         f"e2e: {e2e.get('error', 'not measured')} |")
            continue
        st = e2e["stages_p50_ms"]
        lines.append(f"| {c.model:<12} | {c.engine:<11} | {c.variant:<7} | {c.p50_ms:13.2f} | {e2e['p50_ms']:10.2f} | "
                     f"{e2e['p50_ms'] / c.p50_ms:9.2f}x | {st['decode']:7.2f} | {st['preprocess']:7.2f} | "
                     f"{st['infer']:7.2f} | {st['postprocess']:8.2f} | {e2e['p50_ms'] / st['infer']:8.2f}x | "
                     f"{e2e['images']:>6} |")
    chips = sorted({c.chip for c in cands})
    return lines, chips[0] if chips else ""


def pages(folder: Path) -> list[bytes]:
    """16 rendered pages (the ocr-det dataset's renderer: 1-4 lines of text, distractor shapes), as PNG."""
    import io
    import json

    import numpy as np
    from PIL import Image

    from controller.data.datasets import make_dataset, stored_image

    path = folder / "pages.npz"
    make_dataset("ocr-det", {"x": ((1, 3, 640, 640), "float32")}, PAGES, 12345, path)  # not the evaluation seed
    with np.load(path, allow_pickle=False) as npz:
        meta = json.loads(str(npz["__meta__"]))
        stored = npz["input:x"]
    out = []
    for image in stored:
        buf = io.BytesIO()
        Image.fromarray(stored_image(meta, "x", image), "RGB").save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


def pipeline_rate(bundle_dir: Path, page_files: list[bytes]) -> list[str]:
    """Pages per second of the OCR bundle, one call per page against one call for all."""
    from agent.runtime.bundle import Bundle

    b = Bundle.open(str(bundle_dir), verify=True)
    problems = b.check()
    if problems:
        return [f"OCR bundle cannot run here: {'; '.join(problems)}"]
    b.load()
    try:
        b.predict(page_files[:2])  # warm-up: first calls allocate
        one, batched = [], []
        per_page: dict[str, list[dict[str, Any]]] = {"one": [], "batched": []}
        for _ in range(ROUNDS):
            start = time.perf_counter()
            results = [b.predict([p])[0] for p in page_files]
            one.append(len(page_files) / (time.perf_counter() - start))
            per_page["one"] += [r["timing_ms"] for r in results]
            start = time.perf_counter()
            results = b.predict(page_files)
            batched.append(len(page_files) / (time.perf_counter() - start))
            per_page["batched"] += [r["timing_ms"] for r in results]
        lines_read = sum(len(r.get("lines", [])) for r in results)
    finally:
        b.close()
    models = ", ".join(f"{m['name']} {m['engine']} {m['variant']}" for m in b.manifest["models"])
    out = [f"OCR pipeline ({models}), {len(page_files)} rendered 640x640 pages, {lines_read} lines read "
           f"in the last batched call; median of {ROUNDS} rounds:", "",
           "| calls | pages/s | decode ms | preproc ms | infer ms | postproc ms | per page ms |",
           "|---|---|---|---|---|---|---|"]
    for label, rates, key in (("one page per call", one, "one"), (f"{len(page_files)} pages in one call", batched, "batched")):
        t = per_page[key]
        mean = {k: statistics.fmean(float(x[k]) for x in t) for k in ("decode", "preprocess", "infer", "postprocess", "total")}
        out.append(f"| {label} | {statistics.median(rates):.2f} | {mean['decode']:.1f} | {mean['preprocess']:.1f} | "
                   f"{mean['infer']:.1f} | {mean['postprocess']:.1f} | {mean['total']:.1f} |")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--home", type=Path, default=None, help="EDGEFARM_HOME to use (default: a fresh temporary one)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "out")
    args = ap.parse_args()

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="edgefarm-bench-e2e-") as tmp:
        folder = Path(tmp)
        os.environ["EDGEFARM_HOME"] = str(args.home.resolve() if args.home else folder / "home")
        from controller.cli import main as edgefarm

        url = f"sqlite:///{folder / 'edgefarm.db'}"
        spec = bench_spec(folder)
        if edgefarm(["run", str(spec), "--db", url]):
            return 1
        run_s = time.perf_counter() - started
        table, chip = e2e_table(url)
        bundle_dir = folder / "ocr-bundle"
        argv = ["bundle", "--chip", chip, "--db", url, "--budget", "0.05", "--out", str(bundle_dir)]
        for name in OCR_MODELS:
            argv += ["--model", name]
        if edgefarm(argv):
            return 1
        rate = pipeline_rate(bundle_dir, pages(folder))
    elapsed = time.perf_counter() - started
    import platform

    text = "\n".join([
        f"## End-to-end against engine-only, local board ({chip}; {os.cpu_count()} cores, {platform.python_version()})",
        "", "Engine p50: the engine on ready tensors (the farm's figure). e2e p50: the deployment runtime on an "
        "evaluation image file, decode + preprocess + infer + postprocess, batch 1; stage columns are each "
        "stage's own p50 (ms). e2e/engine compares two measurements taken one after the other in the same job; "
        "e2e/infer compares the same calls (the call's total against its own inference), so a board whose load "
        "changes between the two does not move it.", "", *table, "", *rate, "",
        f"Run {run_s:.0f} s, whole benchmark {elapsed:.0f} s."])
    print("\n" + text)
    args.out.mkdir(parents=True, exist_ok=True)
    report = args.out / f"bundle-e2e-{time.strftime('%Y%m%d-%H%M%S')}.md"
    report.write_text(text + "\n")
    print(f"\n(written to {report})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
