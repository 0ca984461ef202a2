"""Every engine with its own model format, through a real run: converted on the controller, pushed,
checked by sha256, measured on the local board, stored, and selected among on measurements."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from sqlalchemy import select

from controller.cli import main
from controller.results.database import open_db
from controller.results.selection import selections
from controller.results.store import Job
from tests.conftest import small_ppocr_spec

CONVERTED = ("openvino", "paddlelite", "ncnn", "mnn")


@pytest.mark.slow
def test_every_engine_runs_its_own_format(tmp_path: Path, edgefarm_home: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    spec_path = small_ppocr_spec(tmp_path, "engines")
    spec = yaml.safe_load(spec_path.read_text())
    spec["models"] = [m for m in spec["models"] if m["name"] == "ppocr-cls"]
    spec["engines"] = ["onnxruntime", *CONVERTED]
    spec["variants"] = ["fp32", "int8", "pruned"]
    # A short pruning: one ratio per layer, one brief fine-tuning run.
    spec["pruning"] = {"budget": 0.03, "samples": 64, "ratios": [0.5], "target_flops": 0.3,
                       "train_samples": 256, "epochs": 1, "attempts": 1}
    spec_path.write_text(yaml.safe_dump(spec))
    url = f"sqlite:///{tmp_path / 'engines.db'}"
    assert main(["run", str(spec_path), "--db", url]) == 0

    with open_db(url)() as db:
        jobs = db.scalars(select(Job).where(Job.purpose == "measure")).all()  # not the finalists' rounds
        rows = [(j.engine, j.variant.name, j.label, j.status, j.stage, j.message, j.artifact,
                 j.variant.sha256, j.result) for j in jobs]
        picked = selections(db, 0.01)
    by_engine: dict[str, list] = {}
    for row in rows:
        by_engine.setdefault(row[0], []).append(row)
    assert set(by_engine) == {"onnxruntime", *CONVERTED}
    (reference,) = [r[8].accuracy for r in by_engine["onnxruntime"] if r[1] == "fp32"]
    for engine in CONVERTED:
        fp32 = [r for r in by_engine[engine] if r[1] == "fp32"]
        assert fp32 and all(r[3] == "ok" for r in fp32), (engine, [(r[4], r[5]) for r in fp32])
        for _, variant, label, status, stage, message, artifact, variant_sha, result in by_engine[engine]:
            if status == "ok":
                # The board loaded the converted file, not the ONNX variant, and measured it.
                assert artifact and artifact["sha256"] != variant_sha and artifact["size_bytes"] > 0
                assert result.p50_ms > 0 and result.accuracy is not None
                if variant == "fp32":  # the same model in another format computes the same answers
                    assert abs(result.accuracy - reference) <= 0.02, (engine, result.accuracy, reference)
            else:  # an engine that cannot take a variant says so, in the converter's or engine's words
                assert stage in ("convert", "load") and message, (engine, label)
    # ncnn's int8 is calibrated by EdgeFarm in ncnn itself: it converts and runs in int8.
    (ncnn_int8,) = [r for r in by_engine["ncnn"] if r[1] == "int8"]
    assert ncnn_int8[3] == "ok" and ncnn_int8[8].precision == "int8", ncnn_int8[4:6]
    # The pruned model is plain ONNX with fewer channels: every engine loads it.
    for engine, rows_of in by_engine.items():
        pruned = [r for r in rows_of if r[1] == "pruned"]
        assert pruned and all(r[3] == "ok" for r in pruned), (engine, [(r[4], r[5]) for r in pruned])
    with open_db(url)() as db:
        sizes = {j.variant.name: j.variant.size_bytes for j in db.scalars(select(Job).filter_by(engine="onnxruntime"))}
    assert sizes["pruned"] < sizes["fp32"]
    assert main(["variants", "--db", url]) == 0
    (line,) = [x for x in capsys.readouterr().out.splitlines() if x.split()[1:2] == ["pruned"]]
    assert "MACs -" in line and "groups cut" in line and "budget 0.03" in line
    (sel,) = picked
    assert sel.best is not None and sel.best.engine in {"onnxruntime", *CONVERTED}
