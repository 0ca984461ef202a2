"""The wire records (agent/protocol.py): one list of failure stages, one builder per record."""

from __future__ import annotations

import pytest

from agent.protocol import FAILURE_STAGES, PROTOCOL_VERSION, failed, make_job, make_probe, new_result


def test_a_failure_names_a_stage_from_the_one_list() -> None:
    assert {"verify", "load", "measure", "transport", "convert"} <= set(FAILURE_STAGES)
    record = failed("job-1", "load", "no such engine", "tail")
    assert record == {"protocol": PROTOCOL_VERSION, "job_id": "job-1", "status": "failed",
                      "failure": {"stage": "load", "message": "no such engine", "stderr_tail": "tail"}}
    with pytest.raises(ValueError, match="unknown failure stage 'loading'"):
        failed("job-1", "loading", "x")  # type: ignore[arg-type]


def test_each_record_has_its_builder() -> None:
    measure = {"warmup": 1, "min_iterations": 8, "min_seconds": 0.0, "max_seconds": 10.0,
               "batch_sizes": [1], "throughput_seconds": 0.0}
    job = make_job("job-2", "onnxruntime", {"threads": 1}, measure)  # type: ignore[arg-type]
    assert job["engine"] == {"name": "onnxruntime", "options": {"threads": 1}} and "native" not in job
    assert job["artifacts"] == {} and job["protocol"] == PROTOCOL_VERSION
    ok = new_result("job-2")
    assert ok["status"] == "ok" and ok["failure"] is None and ok["latency"] is None
    assert new_result("job-3") is not ok and new_result("job-3")["throughput"] is not ok["throughput"]
    probe = make_probe({"arch": "aarch64"}, {}, None)  # type: ignore[typeddict-item]
    assert probe == {"protocol": PROTOCOL_VERSION, "fingerprint": {"arch": "aarch64"}, "engines": {},
                     "disk_free_mb": None}
