"""A real run end to end: Ray, the agent on the local board, both engines, SQLite, selection."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import func, select

from agent.engines import probe_engines
from controller.cli import main
from controller.results.database import open_db
from controller.results.selection import latest_candidates, render, select_best
from controller.results.store import Job, Result, Run, Variant
from tests.conftest import small_ppocr_spec
from tests.models import digits_mlp

pytestmark = pytest.mark.slow

MODELS = ("ppocr-det", "ppocr-rec", "ppocr-cls")
# What the fp32 models reach on the rendered data (see tests/controller/test_datasets.py);
# far below would mean the data, the preprocessing or the metric is broken.
FP32_FLOOR = {"ppocr-det": 0.8, "ppocr-rec": 0.8, "ppocr-cls": 0.9}


def test_every_configuration_is_measured_and_stored(ppocr_db: str) -> None:
    with open_db(ppocr_db)() as db:
        jobs = db.scalars(select(Job).where(Job.purpose == "measure")).all()  # not the finalists' rounds
        failed = [(j.engine, j.label, j.stage, j.message) for j in jobs if j.status != "ok"]
        assert not failed
        # OpenVINO's own default is a configuration of its own only where it is not f32:
        # bf16 on a CPU with AVX512_BF16 or AMX, none on others.
        default = probe_engines()["openvino"]["default_precision"]
        openvino = ["fp32", "fp16", "int8"] + ([f"fp32@{default}"] if default != "fp32" else [])
        expected = {(m, e, label) for m in MODELS
                    for e, labels in (("onnxruntime", ["fp32", "fp16", "int8"]), ("openvino", openvino))
                    for label in labels}
        assert sorted((j.variant.model.name, j.engine, j.label) for j in jobs) == sorted(expected)
        for job in jobs:
            r: Result = job.result
            assert r.n >= 64 and len(r.samples_ms) == r.n
            assert r.min_ms <= r.p50_ms <= r.p90_ms <= r.p99_ms <= r.max_ms
            assert r.load_ms > 0 and r.first_inference_ms > 0
            assert [t["batch"] for t in r.throughput] == [1, 2]
            assert all(t["items_per_s"] > 0 for t in r.throughput)
            assert r.peak_rss_mb and r.peak_rss_mb > 20
            assert r.accuracy is not None and 0.0 <= r.accuracy <= 1.0
            assert r.fingerprint["cpu_model"] and r.fingerprint["cores"] >= 1
            # Set when the job started on its board: jobs of one board do not overlap.
            assert job.started_at is not None and job.run.started_at <= job.started_at <= job.finished_at
            # ONNX Runtime computes in the artifact's precision; OpenVINO was asked for f32
            # (an fp16 artifact is computed in fp32), except in its own default.
            expected_precision = {f"fp32@{default}": default}.get(job.label, job.label)
            if job.engine == "openvino" and job.label == "fp16":
                expected_precision = "fp32"
            assert r.precision == expected_precision, (job.engine, job.label, r.precision)
        for job in jobs:
            if job.engine == "onnxruntime" and job.label == "fp32":
                assert job.result.accuracy >= FP32_FLOOR[job.variant.model.name], job.result.accuracy_detail


def test_variants_are_real_artifacts(ppocr_db: str) -> None:
    with open_db(ppocr_db)() as db:
        sizes = {(v.model.name, v.name): v.size_bytes for v in db.scalars(select(Variant))}
        recipes = {(v.model.name, v.name): v.recipe for v in db.scalars(select(Variant))}
    for model in MODELS:
        # int8 weights are a quarter of fp32; QDQ nodes, scales and int32 biases add to that,
        # which weighs most in the 0.5 MB classifier (its QDQ graph is half the file).
        assert sizes[(model, "int8")] < sizes[(model, "fp32")] / (1.5 if model == "ppocr-cls" else 2.5)
        assert sizes[(model, "fp16")] < sizes[(model, "fp32")] * 0.6
        assert recipes[(model, "int8")]["calibration"] == "minmax"
        assert recipes[(model, "fp32")]["nodes_after"] < recipes[(model, "fp32")]["nodes_before"]
    # The classifier has BatchNormalization after its convolutions: fused away offline.
    assert recipes[("ppocr-cls", "fp32")]["ops_removed"]["BatchNormalization"] > 0
    assert "BatchNormalization" not in recipes[("ppocr-cls", "fp32")]["ops"]


def test_select_json_is_one_row_per_model_and_chip(ppocr_db: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["select", "--db", ppocr_db, "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert sorted(r["model"] for r in rows) == sorted(MODELS)
    assert len({r["chip"] for r in rows}) == 1
    with open_db(ppocr_db)() as db:
        candidates = latest_candidates(db)
    select_best(candidates, 0.01)  # sets each candidate's speed-up
    for row in rows:
        for key in ("model", "chip", "engine", "variant", "p50_ms", "accuracy", "accuracy_drop", "speedup_vs_baseline",
                    "speedup_ci95", "rounds", "tied_with"):
            assert key in row
        assert row["within_budget"] and row["accuracy_drop"] <= 0.01
        mine = [c for c in candidates if c.model == row["model"]]
        base = next(c for c in mine if c.engine == "onnxruntime" and c.variant == "fp32")
        eligible = [c for c in mine if base.accuracy - c.accuracy <= 0.01]
        # Where finalists were measured in rounds, the run's other configurations cannot win or tie.
        rounded = [c for c in eligible if c.rounds and c is not base]
        contenders = [c for c in eligible if c.rounds or c is base] if rounded else eligible
        fastest = max(contenders, key=lambda c: c.speedup_vs_baseline)
        # The fastest, or what the tie-break chose among those it could not be told from.
        assert (row["engine"], row["variant"]) == (fastest.engine, fastest.variant) or (
            f"{fastest.engine} {fastest.variant}" in row["tied_with"])
        pick = next(c for c in mine if (c.engine, c.variant) == (row["engine"], row["variant"]))
        low, high = row["speedup_ci95"]
        assert low <= row["speedup_vs_baseline"] <= high
        # Paired in rounds or not, baseline p50 / p50 as the table shows them (the rounds' geometric
        # means where there are rounds): one baseline figure for every row.
        assert row["speedup_vs_baseline"] == pytest.approx(base.p50_ms / pick.p50_ms)


def test_select_formats_and_budget(ppocr_db: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["select", "--db", ppocr_db, "--format", "csv"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("model,chip,engine,variant") and len(lines) == 4
    assert main(["select", "--db", ppocr_db, "--format", "md", "--budget", "0.5"]) == 0
    md = capsys.readouterr().out
    assert md.count("| ppocr-") == 3


def test_variants_says_what_each_recipe_did(ppocr_db: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["variants", "--db", ppocr_db, "--model", "ppocr-cls"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    by_variant = {line.split()[1]: line for line in lines[1:]}
    assert set(by_variant) == {"fp32", "fp16", "int8"} and all(line.startswith("ppocr-cls") for line in lines[1:])
    assert "569 -> 182 nodes" in by_variant["fp32"] and "conv+bn x35" in by_variant["fp32"]
    # The small spec's quantization settings, read back from the int8 recipe's record.
    assert "minmax calibration on 8 samples, per-channel weights" in by_variant["int8"]
    assert main(["variants", "--db", ppocr_db, "--format", "json"]) == 0
    records = json.loads(capsys.readouterr().out)
    assert {(r["model"], r["variant"]) for r in records} == {
        (m, v) for m in ("ppocr-det", "ppocr-rec", "ppocr-cls") for v in ("fp32", "fp16", "int8")}
    assert all(r["record"]["ops"] for r in records)


def test_nothing_within_budget_shows_nearest(ppocr_db: str) -> None:
    with open_db(ppocr_db)() as db:
        # Without any fp32 figure on the chip nothing can be judged: say so, list the nearest.
        candidates = [c for c in latest_candidates(db) if c.model == "ppocr-rec" and not c.variant.startswith("fp32")]
    (sel,) = select_best(candidates, 0.01)
    assert sel.best is None and 1 <= len(sel.nearest) <= 3
    text = render([sel], "table")
    assert "ppocr-rec on" in text and "nothing within the accuracy budget" in text and "nearest" in text


def test_run_model_on_an_unseen_onnx_model(tmp_path: Path, edgefarm_home: Path) -> None:
    model = tmp_path / "digits-mlp.onnx"
    digits_mlp(model)
    url = f"sqlite:///{tmp_path / 'digits.db'}"
    code = main(["run", "--model", str(model), "--variants", "fp32,int8", "--engines", "onnxruntime", "--db", url])
    assert code == 0
    with open_db(url)() as db:
        results = {j.label: j.result for j in db.scalars(select(Job).where(Job.purpose == "measure")) if j.status == "ok"}
    assert set(results) == {"fp32", "int8"}
    assert results["fp32"].accuracy_metric == "agreement"
    assert results["fp32"].accuracy == pytest.approx(1.0)  # fp32 against its own source outputs
    assert 0.8 <= results["int8"].accuracy <= 1.0


def _counts(url: str) -> tuple[int, int, int]:
    with open_db(url)() as db:
        return tuple(db.scalar(select(func.count()).select_from(t)) for t in (Run, Job, Result))  # type: ignore[return-value]


def test_bad_input_is_one_line_exit_2_and_keeps_results(ppocr_db: str, tmp_path: Path) -> None:
    db_file = tmp_path / "copy.db"
    shutil.copyfile(ppocr_db.removeprefix("sqlite:///"), db_file)
    url = f"sqlite:///{db_file}"
    before = _counts(url)
    not_onnx = tmp_path / "photo.onnx"
    not_onnx.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8)
    spec = small_ppocr_spec(tmp_path)
    bad_engine = tmp_path / "bad-engine.yaml"
    bad_engine.write_text(spec.read_text().replace("- openvino", "- tensorrt-x"))
    bad_board = tmp_path / "bad-board.yaml"
    bad_board.write_text(spec.read_text().replace("- local", "- jetson-9"))
    det_on_cls = tmp_path / "det-data-on-cls.yaml"
    det_on_cls.write_text(spec.read_text().replace("kind: ocr-cls", "kind: ocr-det"))
    cases = [
        (["run", str(det_on_cls)], "model ppocr-cls: dataset ocr-det: ocr-det needs a fixed height >= 128"),
        (["run", "--model", str(tmp_path / "nope.onnx")], "model file not found"),
        (["run", "--model", str(not_onnx)], "is not a readable ONNX model"),
        (["run", "--model", str(_cls_model()), "--input", "image=1x3x48x192"], "has no input 'image'; its inputs: x"),
        (["run", "--model", str(_cls_model()), "--input", "x=1x3x48"], "has rank 4, the shape given has 3"),
        (["run", str(bad_engine)], "unknown engine 'tensorrt-x'"),
        (["run", str(bad_board)], "unknown board 'jetson-9'"),
        (["run", str(tmp_path / "missing.yaml")], "file not found"),
    ]
    for argv, expected in cases:
        proc = subprocess.run([sys.executable, "-m", "controller.cli", *argv, "--db", url],
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2, (argv, proc.stderr)
        err = proc.stderr.strip().splitlines()
        assert err[-1].startswith("edgefarm: error: ") and expected in err[-1], proc.stderr
        assert "Traceback" not in proc.stderr
    assert _counts(url) == before


def test_a_hung_job_is_killed_and_stored_as_failed(tmp_path: Path, edgefarm_home: Path) -> None:
    import yaml

    spec = small_ppocr_spec(tmp_path, name="timeout", job_timeout=0.5)
    url = f"sqlite:///{tmp_path / 't.db'}"
    data = yaml.safe_load(spec.read_text())
    data["models"] = [m for m in data["models"] if m["name"] == "ppocr-cls"]
    data["variants"], data["engines"] = ["fp32"], ["onnxruntime"]
    spec.write_text(yaml.safe_dump(data))
    assert main(["run", str(spec), "--db", url]) == 0  # failed jobs are data, not a failed run
    with open_db(url)() as db:
        (job,) = db.scalars(select(Job)).all()
        run = db.scalars(select(Run)).one()
    assert job.status == "failed" and job.stage == "agent"
    assert "killed after 0.5 s" in job.message
    assert run.status == "done" and run.summary["failed"] == 1
    # The board's job directory was cleaned after the kill.
    assert not any((edgefarm_home / "boards" / "local" / "jobs").iterdir())


def _cls_model() -> Path:
    from tests.models import ocr_model

    return ocr_model("cls")


def test_a_corrupted_artifact_on_the_board_is_refused_and_pushed_again(tmp_path: Path, edgefarm_home: Path) -> None:
    import yaml

    from agent.protocol import sha256_file

    spec = small_ppocr_spec(tmp_path, name="corrupt")
    data = yaml.safe_load(spec.read_text())
    data["models"] = [m for m in data["models"] if m["name"] == "ppocr-cls"]
    data["variants"], data["engines"] = ["fp32"], ["onnxruntime"]
    spec.write_text(yaml.safe_dump(data))
    url = f"sqlite:///{tmp_path / 'c.db'}"
    assert main(["run", str(spec), "--db", url]) == 0
    with open_db(url)() as db:
        model_sha = db.scalars(select(Variant)).one().sha256
    cached = edgefarm_home / "boards" / "local" / "cache" / f"{model_sha}.onnx"
    cached.write_bytes(cached.read_bytes()[:-100] + b"\0" * 100)  # a few bytes rot on the board

    assert main(["run", str(spec), "--db", url]) == 0
    with open_db(url)() as db:
        second = db.scalars(select(Job).order_by(Job.id.desc())).first()
        assert second.status == "ok", second.message
        assert "did not match its sha256; pushed again" in " ".join(second.result.raw["notes"])
    assert sha256_file(str(cached)) == model_sha


def test_a_board_with_concurrency_2_runs_two_jobs_at_once(tmp_path: Path, edgefarm_home: Path) -> None:
    import threading
    import time

    import yaml

    board_dir = tmp_path / "busy"
    inventory = tmp_path / "inventory.yaml"
    inventory.write_text(yaml.safe_dump({"boards": [{"name": "busy", "workdir": str(board_dir), "concurrency": 2}]}))
    spec = small_ppocr_spec(tmp_path, name="concurrent", min_seconds=1.5, batch_sizes=[1])
    data = yaml.safe_load(spec.read_text())
    data["models"] = [m for m in data["models"] if m["name"] == "ppocr-cls"]
    data["variants"], data["engines"], data["boards"] = ["fp32", "fp16"], ["onnxruntime"], ["busy"]
    spec.write_text(yaml.safe_dump(data))
    url = f"sqlite:///{tmp_path / 'c.db'}"

    most, stop = [0], threading.Event()

    def watch() -> None:  # the agents running at once, seen by their pid files
        while not stop.is_set():
            most[0] = max(most[0], len(list((board_dir / "jobs").glob("job-*/agent.pid"))))
            time.sleep(0.02)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        assert main(["run", str(spec), "--inventory", str(inventory), "--db", url]) == 0
    finally:
        stop.set()
        watcher.join()
    with open_db(url)() as db:
        assert [j.status for j in db.scalars(select(Job).where(Job.purpose == "measure"))] == ["ok", "ok"]
    assert most[0] == 2
