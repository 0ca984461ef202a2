"""Which job each board runs next, as conversions land and boards free up.

The run's scheduling rules, pure (no Ray, no database, no clock), so that a run
(``controller.run.execute``) and the simulated farm of ``bench/makespan.py`` follow the same ones:

- A board runs its jobs in the order given, at most ``limit`` at a time (its ``concurrency``).
- A job that waits for a conversion (its engine reads the converter's output, not ONNX) is passed
  over until that conversion lands, and the board's next ready job runs instead: no board waits
  for conversions meant for other boards or other engines.
- A held board starts nothing until every conversion has landed. A board is held when it measures
  on the CPUs the conversions run on (a local board on the node converting), so that measurement
  never overlaps compilation there.
"""

from __future__ import annotations

from collections import deque
from typing import Callable, Generic, Hashable, Iterable, TypeVar

J = TypeVar("J")


class Schedule(Generic[J]):
    def __init__(self, jobs: Iterable[J], board: Callable[[J], str], waits_for: Callable[[J], Hashable | None],
                 limits: dict[str, int], converting: Iterable[Hashable] = (), held: Iterable[str] = ()) -> None:
        """``jobs`` in their order; ``board(job)`` its board; ``waits_for(job)`` the conversion it
        needs (None: none); ``converting`` every conversion not landed yet (a held board waits for
        all of them, its own or not)."""
        self.board, self.waits_for, self.limits = board, waits_for, limits
        self.converting: set[Hashable] = set()
        self.held = set(held)
        self.queues: dict[str, deque[J]] = {}
        self.running: dict[str, int] = {}
        self.add(jobs, converting)

    def add(self, jobs: Iterable[J], converting: Iterable[Hashable] = ()) -> None:
        """More jobs, after those given (a board host that joined while the run is going), and the
        conversions they add."""
        self.converting.update(converting)
        for job in jobs:
            self.queues.setdefault(self.board(job), deque()).append(job)
            self.running.setdefault(self.board(job), 0)

    def landed(self, conversion: Hashable) -> None:
        """A conversion is done (made, failed or found in the cache): its jobs may go."""
        self.converting.discard(conversion)

    def finished(self, job: J) -> None:
        """A job sent by ``ready`` is over: its board has room again."""
        self.running[self.board(job)] -= 1

    def ready(self) -> list[J]:
        """The jobs to start now, each board's in its order, as many as the boards have room for."""
        out = []
        for name, queue in self.queues.items():
            if name in self.held and self.converting:
                continue
            room = self.limits.get(name, 1) - self.running[name]
            for job in [j for j in queue if self.waits_for(j) not in self.converting][:max(room, 0)]:
                queue.remove(job)
                self.running[name] += 1
                out.append(job)
        return out

    def __bool__(self) -> bool:
        """Whether any job is still to start or running."""
        return any(self.queues.values()) or any(self.running.values())
