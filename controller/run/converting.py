"""A run's conversions, made while its boards measure.

A job whose engine reads its own format (OpenVINO IR, ncnn, MNN, Paddle Lite) waits for its one
conversion, and no other (``controller.run.schedule``); jobs that read ONNX start at once. Where
the conversion tasks run, and which boards wait for every conversion instead, is
``controller.run.hosts.conversion_placement``'s rule. Every conversion of the plan is made, a
resumed run's stored jobs' too, since their finalists' rounds load the same artifact. A board
host that joins a running run adds its own (``start`` again); what is already made is given to
its jobs at once.
"""

from __future__ import annotations

from contextlib import ExitStack
from typing import Any, Callable

from controller.build.cache import Cache
from controller.build.compile import Artifact, ConvertRequest, ModelBuild, start_conversions
from controller.config.inventory import BoardSpec
from controller.config.spec import Spec
from controller.results import recording
from controller.run.hosts import conversion_placement
from controller.run.planning import Planned, attach_conversion, conversions
from controller.run.progress import RunProgress
from controller.run.schedule import Schedule


class Conversions:
    def __init__(self, spec: Spec, builds: list[ModelBuild], cache: Cache, progress: RunProgress) -> None:
        self.spec, self.builds, self.cache, self.progress = spec, builds, cache, progress
        self.wanted: dict[ConvertRequest, list[Planned]] = {}  # each conversion and the jobs waiting for it
        self.request: dict[int, ConvertRequest] = {}  # id(job) -> the conversion it waits for
        self.made: dict[ConvertRequest, Artifact] = {}
        self.landed: list[tuple[ConvertRequest, Artifact]] = []  # done, not yet given to their jobs
        self.boards: list[BoardSpec] = []
        self.held: set[str] = set()  # boards that wait for every conversion
        self.batches: list[Any] = []  # the conversion tasks started by each ``start``
        self.stage = ExitStack()  # the progress stage, open while conversions are under way
        self.step: Callable[[str], None] = lambda _what: None

    def __enter__(self) -> Conversions:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stage.close()

    def start(self, plan: list[Planned], boards: list[BoardSpec]) -> set[ConvertRequest]:
        """Start the conversions ``plan``'s jobs (on ``boards``, joining the run's) need that are
        neither made nor under way; the new ones."""
        self.boards += boards
        options, held = conversion_placement(self.boards)
        self.held |= held
        new = set()
        for request, jobs in conversions(plan).items():
            self.request.update({id(p): request for p in jobs})
            if request not in self.wanted:
                new.add(request)
            elif request in self.made:
                self.landed.append((request, self.made[request]))  # given to these jobs too
            self.wanted.setdefault(request, []).extend(jobs)
        if new:
            if not self.pending():
                self.step = self.stage.enter_context(self.progress.stage("convert for engines", total=None))
            self.batches.append(start_conversions(self.spec, self.builds, new, self.cache, self._landed, self.step, options))
            self._close_stage()
        return new

    def _landed(self, request: ConvertRequest, artifact: Artifact) -> None:
        self.made[request] = artifact
        self.landed.append((request, artifact))

    def waits_for(self, p: Planned) -> ConvertRequest | None:
        return self.request.get(id(p))

    def pending(self) -> list[Any]:
        """The Ray references of the conversions under way."""
        return [ref for batch in self.batches for ref in batch.pending]

    def take(self, ref: Any) -> None:
        """Store the conversion of ``ref``, one of ``pending`` that Ray says is ready."""
        next(batch for batch in self.batches if ref in batch.pending).take(ref)
        self._close_stage()

    def _close_stage(self) -> None:
        if not self.pending():
            self.stage.close()  # the stage's summary line, while the boards go on

    def land(self, db: Any, schedule: Schedule[Planned]) -> None:
        """Give what has been converted to the jobs waiting for it, in their rows too."""
        while self.landed:
            request, artifact = self.landed.pop(0)
            jobs = self.wanted[request]
            attach_conversion(jobs, artifact)
            for p in jobs:
                if p.artifact is not None:
                    recording.job_artifact(db, p.row_id, p.artifact, p.target)
            db.commit()
            schedule.landed(request)
