"""The run's scheduling rules (controller.run.schedule), on plain jobs: no Ray, no board."""

from __future__ import annotations

from dataclasses import dataclass

from controller.run.schedule import Schedule


@dataclass(frozen=True)
class J:
    board: str
    name: str
    needs: str | None = None  # the conversion it waits for


def schedule(jobs: list[J], limits: dict[str, int] | None = None, held: tuple[str, ...] = ()) -> Schedule[J]:
    return Schedule(jobs, lambda j: j.board, lambda j: j.needs, limits or {}, {j.needs for j in jobs if j.needs}, held)


def names(jobs: list[J]) -> list[str]:
    return [j.name for j in jobs]


def test_a_board_runs_its_jobs_in_order_one_at_a_time_by_default() -> None:
    s = schedule([J("a", "a1"), J("a", "a2"), J("b", "b1")])
    first = s.ready()
    assert names(first) == ["a1", "b1"] and s.ready() == []
    s.finished(first[0])
    assert names(s.ready()) == ["a2"]


def test_a_board_with_room_for_two_runs_two() -> None:
    s = schedule([J("a", "a1"), J("a", "a2"), J("a", "a3")], {"a": 2})
    assert names(s.ready()) == ["a1", "a2"]


def test_a_job_waiting_for_its_conversion_is_passed_over_until_it_lands() -> None:
    jobs = [J("a", "ir", needs="openvino"), J("a", "onnx"), J("b", "ncnn", needs="ncnn")]
    s = schedule(jobs)
    (onnx,) = s.ready()
    assert onnx.name == "onnx"  # board b has nothing ready: it waits for its own conversion only
    s.landed("ncnn")
    assert names(s.ready()) == ["ncnn"]
    s.finished(onnx)
    assert s.ready() == []  # board a is free, its job still waits
    s.landed("openvino")
    assert names(s.ready()) == ["ir"]


def test_a_held_board_starts_only_once_every_conversion_has_landed() -> None:
    jobs = [J("local", "onnx"), J("remote", "onnx"), J("remote", "ir", needs="openvino")]
    s = schedule(jobs, held=("local",))
    assert [(j.board, j.name) for j in s.ready()] == [("remote", "onnx")]
    s.landed("openvino")  # the last conversion, another board's
    assert [(j.board, j.name) for j in s.ready()] == [("local", "onnx")]


def test_a_schedule_is_true_while_a_job_is_queued_or_running() -> None:
    s = schedule([J("a", "a1")])
    assert s
    (job,) = s.ready()
    assert s
    s.finished(job)
    assert not s


def test_jobs_added_later_queue_after_those_given_and_wait_for_their_conversions() -> None:
    s = schedule([J("a", "a1")])
    (a1,) = s.ready()
    s.add([J("a", "a2"), J("late", "l1", needs="ncnn"), J("late", "l2")], {"ncnn"})
    assert names(s.ready()) == ["l2"]  # a is busy; the late board's first job waits for its conversion
    s.finished(a1)
    s.landed("ncnn")
    assert names(s.ready()) == ["a2"]  # the late board still runs l2
