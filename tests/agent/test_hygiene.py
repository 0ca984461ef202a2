"""Measurement hygiene in the agent: pinning, cool-down, the temperature ceiling, and the board
state recorded around a job."""

from __future__ import annotations

import os

import pytest

from agent import hygiene


def test_pinning_restricts_the_process_and_is_undone(monkeypatch: pytest.MonkeyPatch) -> None:
    before = os.sched_getaffinity(0)
    try:
        assert hygiene.pin([0]) == [0]
        assert os.sched_getaffinity(0) == {0}
        assert hygiene.pin(None) is None and os.sched_getaffinity(0) == {0}  # None leaves it alone
    finally:
        os.sched_setaffinity(0, before)


def test_a_hot_board_is_waited_for_until_it_cools(monkeypatch: pytest.MonkeyPatch) -> None:
    readings = iter([82.0, 76.0, 69.5])
    slept: list[float] = []
    monkeypatch.setattr(hygiene, "POLL_SECONDS", 0.0)
    hygiene.settle(0.0, 70.0, 60.0, sleep=slept.append, read=lambda: next(readings))
    assert slept == [0.0, 0.0]  # polled twice, then under the ceiling


def test_a_board_that_stays_hot_fails_with_the_reading(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hygiene, "POLL_SECONDS", 0.01)
    with pytest.raises(hygiene.ThermalError, match=r"stayed at 91.0 C, above its ceiling of 70.0 C"):
        hygiene.settle(0.0, 70.0, 0.05, read=lambda: 91.0)


def test_cooldown_sleeps_and_an_unreadable_sensor_passes_the_ceiling() -> None:
    slept: list[float] = []
    hygiene.settle(3.0, 70.0, 60.0, sleep=slept.append, read=lambda: None)
    assert slept == [3.0]


def test_a_job_records_the_board_state_before_and_after(tmp_path) -> None:
    from agent.job import run_job

    before = os.sched_getaffinity(0)
    try:  # the agent pins the process it runs in: here, this test's own
        result = run_job({"protocol": 1, "job_id": "j", "engine": {"name": "onnxruntime"}, "artifacts": {},
                          "measure": {}, "board": {"cpus": [0]}}, str(tmp_path))
    finally:
        os.sched_setaffinity(0, before)
    state = result["board_state"]
    assert state["cpus"] == [0] and set(state["before"]) == {"governor", "cpu_mhz", "temperature_c"}
    assert set(state["after"]) == {"governor", "cpu_mhz", "temperature_c"}
    assert result["failure"]["stage"] == "verify"  # the job itself had no model: it got past the board stage
