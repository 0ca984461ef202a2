"""The run's database writes (controller.results.recording) that need no board."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from controller.config.spec import Spec
from controller.errors import UserError
from controller.results import recording
from controller.results.database import open_db


def test_a_run_stored_by_an_earlier_release_resumes_though_its_spec_gained_keys(tmp_path: Path) -> None:
    spec = Spec(name="s", models=[{"name": "m", "path": "m.onnx"}], variants=["fp32", "int8"])
    sessions = open_db(f"sqlite:///{tmp_path / 'r.db'}")
    with sessions() as db:
        run = recording.new_run(db, spec, str(tmp_path), "run")
        # As an earlier release stored it: without the keys this one added, and digested so.
        older = spec.model_dump(mode="json")
        for key in ("nncf_preset", "nncf_model_type", "nncf_fast_bias_correction"):
            del older["quantization"][key]
        run.spec = older
        run.spec_sha256 = hashlib.sha256(json.dumps(older, sort_keys=True).encode()).hexdigest()
        assert run.spec_sha256 != spec.digest()
        run.status = "interrupted"
        db.commit()
        assert recording.resumed_run(db, run.id, spec).status == "running"
        other = spec.model_copy(update={"variants": ["fp32"]})
        with pytest.raises(UserError, match=f"--resume {run.id}: run {run.id} was made from another spec"):
            recording.resumed_run(db, run.id, other)
        with pytest.raises(UserError, match="there is no run 999"):
            recording.resumed_run(db, 999, spec)


class _Planned:
    """What add_jobs reads of a planned job that the run already has a row for."""

    def __init__(self, board: str, model: str, variant: str, engine: str) -> None:
        self.board, self.model_name, self.variant, self.engine, self.label = board, model, variant, engine, variant
        self.row_id, self.stored = 0, False

    def key(self) -> tuple[str, str, str, str, str]:
        return (self.board, self.model_name, self.variant, self.engine, self.label)


def test_jobs_failed_because_their_host_was_lost_run_again_on_resume(tmp_path: Path) -> None:
    from controller.results.store import Board, Job, Model, Variant

    spec = Spec(name="s", models=[{"name": "m", "path": "m.onnx"}], variants=["fp32", "int8"])
    sessions = open_db(f"sqlite:///{tmp_path / 'r.db'}")
    with sessions() as db:
        run = recording.new_run(db, spec, str(tmp_path), "run")
        board = Board(name="jetson-1", chip="orin", transport="ssh")
        model = Model(name="m", sha256="0" * 64, source="m.onnx", task="classification", inputs=[])
        db.add_all([board, model])
        db.flush()
        variants = {v: Variant(model_id=model.id, name=v, sha256=v, size_bytes=1, recipe={}) for v in ("fp32", "int8")}
        db.add_all(variants.values())
        db.flush()
        outcomes = {"fp32": ("failed", "host"), "int8": ("failed", "load")}  # lost host; a real failure
        for v, (status, stage) in outcomes.items():
            db.add(Job(run_id=run.id, board_id=board.id, chip="orin", variant_id=variants[v].id, engine="onnxruntime",
                       options={}, label=v, status=status, stage=stage, message="..."))
        run.status = "done"
        db.commit()

        assert recording.resumed_run(db, run.id, spec).status == "running"  # finished, with a host to redo
        planned = [_Planned("jetson-1", "m", v, "onnxruntime") for v in ("fp32", "int8")]
        recording.add_jobs(db, run.id, planned, resuming=True)
        assert [p.stored for p in planned] == [False, True]
        db.query(Job).filter_by(stage="host").update({"stage": "transport"})
        run.status = "done"
        db.commit()
        with pytest.raises(UserError, match="there is nothing to resume"):
            recording.resumed_run(db, run.id, spec)
