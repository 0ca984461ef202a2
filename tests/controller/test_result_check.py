"""A board's result record is untrusted: malformed kinds become failures at stage ``result``."""

from __future__ import annotations

import copy
import json
from typing import Any, Callable

import pytest

from agent.protocol import new_result
from controller.boards.result_check import check_result


def _good() -> dict[str, Any]:
    record: dict[str, Any] = dict(new_result("job-1"))
    record.update(
        engine={"name": "onnxruntime", "version": "1.20", "precision": "fp32", "device": "CPU"},
        latency={"samples_ms": [1.0, 2.5, 2.0], "p50": 2.0, "p90": 2.5, "p99": 2.5, "mean": 1.8, "std": 0.6,
                 "min": 1.0, "max": 2.5, "n": 3, "cv": 0.3, "percentile_method": "linear"},
        phases={"load_ms": 3.0, "first_inference_ms": 1.0}, memory={"peak_rss_mb": 12.5},
        fingerprint={"arch": "x86_64"}, accuracy={"metric": "accuracy", "value": 0.98},
    )
    return json.loads(json.dumps(record))  # as it arrives: parsed JSON


def test_a_well_formed_record_passes_as_it_was_sent() -> None:
    record = _good()
    assert check_result(record, "job-1") is record
    no_median = _good()
    no_median["latency"].update(p50=None, p90=None, p99=None, samples_ms=[])  # a native tool's summary
    assert check_result(no_median, "job-1") is no_median


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(record: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        for key in parents:
            record = record[key]
        record[last] = value
    return change


def _drop(key: str) -> Callable[[dict[str, Any]], None]:
    return lambda record: record.pop(key)


FORGED = {
    "p50 a string": (_set("latency.p50", "fast"), "latency.p50: Input should be a valid number (found 'fast')"),
    "p50 not finite": (_set("latency.p50", float("nan")), "latency.p50: Input should be a finite number"),
    "mean null": (_set("latency.mean", None), "latency.mean: Input should be a valid number (found None)"),
    "no latency block": (_drop("latency"), "an ok result needs its 'latency' and 'engine' blocks"),
    "latency a list": (_set("latency", [1, 2]), "latency: Input should be a valid dictionary"),
    "negative count": (_set("latency.n", -1), "latency.n: Input should be greater than or equal to 0"),
    "a sample infinite": (_set("latency.samples_ms", [1.0, float("inf")]), "latency.samples_ms.1: Input should be a finite"),
    "version too long": (_set("engine.version", "v" * 65), "engine.version: String should have at most 64 characters"),
    "precision a number": (_set("engine.precision", 16), "engine.precision: Input should be a valid string (found 16)"),
    "metric too long": (_set("accuracy.metric", "m" * 33), "accuracy.metric: String should have at most 32"),
    "accuracy a string": (_set("accuracy.value", "0.9"), "accuracy.value: Input should be a valid number"),
    "unknown status": (_set("status", "great"), "status: Input should be 'ok' or 'failed' (found 'great')"),
    "failed without failure": (_set("status", "failed"), "a failed result needs its 'failure' block"),
    "unknown stage": (lambda r: r.update(status="failed", failure={"stage": "oops", "message": "m"}),
                      "failure.stage: Input should be 'board', 'verify'"),
    "other protocol": (_set("protocol", 2), "protocol: Input should be 1 (found 2)"),
    "phase a string": (_set("phases.load_ms", "slow"), "phases.load_ms: Input should be a valid number"),
}


@pytest.mark.parametrize("kind", sorted(FORGED))
def test_a_malformed_record_is_a_failure_at_stage_result_naming_field_and_value(kind: str) -> None:
    change, said = FORGED[kind]
    record = _good()
    change(record)
    before = copy.deepcopy(record)
    result = check_result(record, "job-1")
    assert result["status"] == "failed" and result["job_id"] == "job-1"
    failure = result["failure"]
    assert failure is not None and failure["stage"] == "result"
    assert failure["message"].startswith("the board's result record is malformed: ")
    assert said in failure["message"] and "\n" not in failure["message"]
    assert record == before or kind in ("p50 not finite", "a sample infinite")  # nan != nan; nothing altered


def test_a_record_that_is_not_a_mapping_or_answers_another_job_is_refused() -> None:
    for record in ([1, 2], "ok", None, 7):
        failure = check_result(record, "job-1")["failure"]
        assert failure is not None and failure["stage"] == "result", record
    failure = check_result(_good(), "job-2")["failure"]
    assert failure is not None and failure["message"] == "the board answered job 'job-1', not 'job-2'"
