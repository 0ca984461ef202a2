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
