"""One Ray actor per board: it holds the board's session and runs its jobs one at a time.

A board measures one job at a time, or the figures lie; boards run in parallel. The actor only
reaches its board: the driver alone writes the database (``controller.results.recording``).
"""

from __future__ import annotations

import contextlib
from typing import Any

from agent.protocol import JobRecord, ProbeRecord, ResultRecord, failed
from controller.boards.health import engine_for
from controller.config.inventory import BoardSpec
from controller.errors import one_line
from controller.run.depot import FetchError, FileRef, HostFiles


def actor_class() -> Any:
    import ray

    from controller.boards.session import BoardSession

    # num_cpus=0: an actor mostly waits on its board; it must not take a compile task's core.
    @ray.remote(num_cpus=0)
    class BoardActor:
        def __init__(self, board: BoardSpec, bundle: FileRef, depot: Any) -> None:
            # The driver's files are pulled to this host as they are needed (controller.run.depot).
            self.files = HostFiles(depot, ray.get_runtime_context().get_node_id())
            self.board, self.bundle = board, bundle
            self._session: BoardSession | None = None

        @property
        def session(self) -> BoardSession:
            # Made on first use, not in __init__: pulling the agent bundle may fail, and a failure
            # in start() is the board's, recorded as unreachable, where one in __init__ kills the actor.
            if self._session is None:
                self._session = BoardSession(self.board, self.files.local(self.bundle))
            return self._session

        def start(self) -> ProbeRecord:
            return self.session.start_again_if_lost()

        def health(self, golden: dict[str, FileRef], engine: str | None) -> str | None:
            return self.session.health_check(self.files.local_all(golden), engine)

        def run_job(self, job: JobRecord, files: dict[str, FileRef], timeout: float) -> ResultRecord:
            try:
                local = self.files.local_all(files)
            except FetchError as exc:  # the job's failure, stored like any other
                return failed(job["job_id"], "host", one_line(exc))
            return self.session.run_job(job, local, timeout)

        def close(self) -> None:
            if self._session is not None:
                self._session.close()

    return BoardActor


# Placing a board's actor, pulling the agent to its host and probing the board (PROBE_TIMEOUT per
# interpreter) fit well within this.
START_TIMEOUT_S = 900.0


def start_boards(boards: list[BoardSpec], actors: dict[str, Any],
                 golden: dict[str, FileRef]) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """Probe every board and run its health check: (the probes of boards fit to measure, and why
    each other board is not).

    An unreachable board fails its health check too: a board that is never there is as useless
    to the nightly run as one that computes wrong numbers.
    """
    import ray

    started = {name: actor.start.remote() for name, actor in actors.items()}
    probes: dict[str, dict[str, Any]] = {}
    problems: dict[str, str] = {}
    # One deadline for all: an actor whose host's node left between the check and its placement
    # is never placed, and its start would never answer.
    _, silent = ray.wait(list(started.values()), num_returns=len(started), timeout=START_TIMEOUT_S)
    for name, future in started.items():
        if future in silent:
            problems[name] = (f"unreachable: its actor did not start within {START_TIMEOUT_S:.0f} s "
                              "(the Ray node of its host gone, or the cluster out of room)")
            continue
        try:
            probes[name] = ray.get(future)
        except Exception as exc:  # noqa: BLE001 - whatever the actor raised, the board is recorded and the run goes on
            problems[name] = f"unreachable: {one_line(exc)}"
    by_name = {b.name: b for b in boards}
    checks = {name: actors[name].health.remote(golden, engine_for(probe, by_name[name].engines))
              for name, probe in probes.items()}
    for name, future in checks.items():
        try:
            problem = ray.get(future)
        except Exception as exc:  # noqa: BLE001 - as above
            problem = one_line(exc)
        if problem:
            problems[name] = f"health check failed: {problem}"
            del probes[name]
    return probes, problems


def close_boards(actors: dict[str, Any], reachable: dict[str, Any]) -> None:
    """End every board session: connections to boards must not outlive the run."""
    import ray

    for name, actor in actors.items():
        if name in reachable:
            # A lost board cannot be closed politely; the kill below ends it.
            with contextlib.suppress(Exception):
                ray.get(actor.close.remote(), timeout=30)
        ray.kill(actor)
