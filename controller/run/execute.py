"""A run: validate, compile, plan jobs, run them on boards through Ray, store every result.

The stages, each in its own module: building (``controller.build``), one actor per board
(``controller.run.actors``), planning (``controller.run.planning``, pure), recording
(``controller.results.recording``, the only database writes) and progress. The driver commits
after every job, so whatever was measured before an interruption stays.

A user's error leaves no run behind. Everything the user wrote is checked before the run's row
is written (``execute`` lists the order), and the row is written in one transaction with its job
rows, once the boards are probed and the jobs planned; from then on only boards are left, and a
board's failure is stored data, not an error of the run. So a run is never half-written: there
is no ``failed`` run to clean up after a typo, because there is no run row before the last check.
The run's ``started_at`` is when its measuring began, after its variants were compiled.

Conversions for engines that do not read ONNX are made while the boards measure
(``Conversions``): a job starts as soon as its own conversion has landed, on nodes where no
local board measures, or, where there is no such node, before the local boards' first job
(``controller.run.schedule`` has the rules). A conversion's failure is its jobs' stored failure.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field, replace
from typing import Any, Sequence

from agent.protocol import ResultRecord, failed, sha256_file
from controller.boards.chip_check import contradiction
from controller.boards.health import golden, record
from controller.build.cache import Cache
from controller.build.compile import ModelBuild, build_all, prepare_sources
from controller.config.inventory import BoardSpec, Inventory
from controller.config.spec import LoadedSpec, Spec
from controller.errors import UserError, one_line
from controller.results import recording
from controller.results.database import open_db
from controller.results.store import Job, Run
from controller.run.actors import actor_class, close_boards, start_boards
from controller.run.adaptive import EarlyStop
from controller.run.checks import check_datasets, check_resumable
from controller.run.cluster import ensure_ray
from controller.run.converting import Conversions
from controller.run.depot import Depot, FileRef
from controller.run.hosts import LateHosts, live_hosts, no_worker, placement, several_workers, unserved
from controller.run.planning import Planned, job_files, job_payload, plan_board
from controller.run.progress import RunProgress
from controller.run.repeats import FollowUp, Repeat
from controller.run.schedule import Schedule
from controller.workspace import cache_dir, workspace

__all__ = ["FollowUp", "Repeat", "RunOutcome", "ensure_ray", "execute"]


@dataclass
class RunOutcome:
    run_id: int = 0  # 0 until the run's row is written
    ok: int = 0
    failed: int = 0
    skipped: dict[str, str] = field(default_factory=dict)  # board -> why it ran nothing
    resumed: int = 0  # jobs a resumed run found already stored
    repeats: int = 0  # confirmations and finalists' rounds measured after the run's own jobs

    def nothing_ran(self) -> str | None:
        """Why no job could run, in one line; None when one did (or all were stored before).
        ``run`` and ``nightly`` exit non-zero on it: a cron job reads exit 0 as "measured and fine",
        while a job that ran and failed is a stored result, not this."""
        if self.ok + self.failed + self.resumed > 0:
            return None
        if not self.skipped:
            return ("no job could run: no board was given one "
                    "(the inventory allows none of the spec's engines on its boards)")
        boards = "; ".join(f"board {name} skipped: {why}" for name, why in sorted(self.skipped.items()))
        return f"no job could run: {boards}"


def execute(loaded: LoadedSpec, inventory: Inventory, inventory_source: str, db_url: str | None,
            ray_address: str | None = None, kind: str = "run", resume: int | None = None,
            follow_ups: Sequence[FollowUp] = ()) -> RunOutcome:
    """Run a spec on its boards; with ``resume``, finish that run's missing jobs instead. Then
    measure again what ``follow_ups`` ask for (selection's finalists always), on the same boards.

    The user's input is checked first, cheapest first, and nothing is written until all of it
    passed: the run to resume, the spec's boards in the inventory, every model, the first sample
    of every dataset (no Ray yet), then the variants compiled and the whole datasets rendered.
    Then the boards are probed (their rows say what was found) and the jobs planned, and only then
    the run's row and its jobs' rows are written, in one transaction; the conversions follow, while
    the boards measure.
    """
    from controller.boards.agent_bundle import build_agent_bundle

    spec = loaded.spec
    if resume is not None:
        check_resumable(db_url, resume, spec)
    boards = [inventory.board(name, inventory_source, loaded.source) for name in spec.boards]
    cache = Cache(cache_dir())
    prepared = prepare_sources(loaded, cache)
    user_data = check_datasets(loaded, prepared, cache)
    ensure_ray(ray_address)

    progress = RunProgress()
    outcome = RunOutcome()
    actors: dict[str, Any] = {}
    probes: dict[str, dict[str, Any]] = {}
    status = "interrupted"
    sessions: Any = None
    depot: Depot | None = None
    try:
        with progress.stage("compile variants and render data", total=None) as step:
            builds = build_all(loaded, cache, prepared, user_data, on_step=step)  # a dataset that fails in full stops here
        sessions = open_db(db_url)
        bundle = build_agent_bundle(workspace() / "agent")
        depot = Depot()  # the driver's files, for board hosts that share no disk with it
        with sessions() as db:
            outcome.skipped.update(recording.quarantined(db, boards))
        outcome.skipped.update(unserved(b for b in boards if b.name not in outcome.skipped))
        hosts = {b.host for b in boards if b.host is not None and b.name not in outcome.skipped}
        for warning in several_workers({h: ids for h, ids in live_hosts().items() if h in hosts}):
            print(f"edgefarm: warning: {warning}", file=sys.stderr)
        actor_cls, bundle_ref, golden_files = actor_class(), depot.ship(bundle, sha256_file(str(bundle))), depot.ship_all(golden(cache).files())

        def make_actor(b: BoardSpec) -> Any:
            return actor_cls.options(max_concurrency=b.concurrency, **placement(b)).remote(b, bundle_ref, depot.actor)

        actors.update({b.name: make_actor(b) for b in boards if b.name not in outcome.skipped})
        probes.update(_start(sessions, boards, actors, outcome, golden_files))

        plan = [p for b in boards if b.name in probes for p in plan_board(b, probes[b.name], builds, spec)]
        with sessions() as db:  # the run and its jobs: one transaction, after every check
            run: Run = (recording.resumed_run(db, resume, spec) if resume is not None
                        else recording.new_run(db, spec, str(loaded.base), kind, _datasets(builds)))
            recording.add_jobs(db, run.id, plan, resuming=resume is not None)
            db.commit()
            outcome.run_id = run.id
        outcome.resumed = sum(1 for p in plan if p.stored)
        limits = {b.name: b.concurrency for b in boards}

        def join(joined: list[BoardSpec]) -> list[Planned]:
            """Start the boards of hosts that joined the running run, and plan and write their jobs."""
            for b in joined:
                outcome.skipped.pop(b.name, None)
            new_actors = {b.name: make_actor(b) for b in joined}
            actors.update(new_actors)
            probes.update(_start(sessions, joined, new_actors, outcome, golden_files))
            more = [p for b in joined if b.name in probes for p in plan_board(b, probes[b.name], builds, spec)]
            with sessions() as db:
                recording.add_jobs(db, outcome.run_id, more, resuming=resume is not None)
                db.commit()
            plan.extend(more)  # the finalists' rounds are drawn from the whole plan
            outcome.resumed += sum(1 for p in more if p.stored)
            progress.boards({b.name: sum(1 for p in more if p.board == b.name and not p.stored) for b in joined
                             if b.name in probes})
            return [p for p in more if not p.stored]

        with Conversions(spec, builds, cache, progress) as converting:
            converting.start(plan, [b for b in boards if b.name in probes])
            to_measure = [p for p in plan if not p.stored]
            progress.boards({b: sum(1 for p in to_measure if p.board == b) for b in probes})
            late = LateHosts([b for b in boards if b.host is not None and outcome.skipped.get(b.name) == no_worker(b.host)],
                             join)
            _measure(sessions, spec, [(p, {}) for p in to_measure], actors, depot, limits, outcome, progress,
                     EarlyStop(spec), converting, late)
        # The whole plan: a resumed run's finalists include the jobs stored before the interruption.
        _repeat(sessions, spec, plan, actors, depot, limits, [*_finalists(spec), *follow_ups], outcome, progress)
        status = "done"
    except UserError:
        status = "failed"  # none is raised once the rows are written; were one, its measured jobs stay
        raise
    finally:
        progress.close()
        close_boards(actors, probes)
        if depot is not None:
            depot.close()
        if outcome.run_id:
            with sessions() as db:
                recording.finish_run(db, outcome.run_id, status, outcome.skipped, outcome.resumed)
                db.commit()
    return outcome


def _datasets(builds: list[ModelBuild]) -> dict[str, Any]:
    """What each model was scored on, for the run's record."""
    return {b.spec.name: {"task": b.task, "sha256": b.dataset.sha256, **b.dataset.meta.get("split", {})}
            for b in builds}


def _start(sessions: Any, boards: list[BoardSpec], actors: dict[str, Any], outcome: RunOutcome,
           golden_files: dict[str, FileRef]) -> dict[str, dict[str, Any]]:
    """Probe and health-check every board; record each one's state (and quarantine) in the database."""
    probes, problems = start_boards(boards, actors, golden_files)
    by_name = {b.name: b for b in boards}
    for name, probe in probes.items():
        if why := contradiction(by_name[name].chip, probe.get("fingerprint")):
            print(f"edgefarm: warning: board {name}: {why}; its results are filed under that chip "
                  "(correct chip: in the inventory)", file=sys.stderr)
    with sessions() as db:
        for name in actors:
            row = recording.board_seen(db, by_name[name], probes.get(name), problems.get(name))
            if record(row, problems.get(name), by_name[name].quarantine_after):
                problems[name] += f"; quarantined after {row.health_failures} failed checks in a row"
        db.commit()
    outcome.skipped.update(problems)
    return probes


def _measure(sessions: Any, spec: Spec, jobs: list[tuple[Planned, dict[str, Any]]], actors: dict[str, Any],
             depot: Depot, limits: dict[str, int], outcome: RunOutcome, progress: RunProgress,
             early: EarlyStop | None = None, converting: Conversions | None = None, late: LateHosts | None = None) -> None:
    """Send each job (with its measure overrides) to its board's actor and store each result as it
    arrives. A board is sent its next job only when it has room (its ``concurrency``), so that each
    job's settings can follow what the board has measured so far (``early``), and a board's jobs
    run in the order given (a finalists' rounds interleave A B C A B C), each one as soon as its
    conversion, if it needs one, has landed (``converting``). While jobs are under way, boards
    whose host joins the cluster are given theirs too (``late``)."""
    import ray

    overrides = {id(p): o for p, o in jobs}
    schedule: Schedule[Planned] = Schedule(
        [p for p, _ in jobs], lambda p: p.board, converting.waits_for if converting else lambda p: None,
        limits, converting.wanted if converting else (), converting.held if converting else ())
    futures: dict[Any, Planned] = {}
    with sessions() as db:
        while True:
            boards, joined = late.joined() if late and converting else ([], [])
            if boards:
                overrides.update({id(p): {} for p in joined})
                schedule.add(joined, converting.start(joined, boards))  # type: ignore[union-attr]
                schedule.held |= converting.held  # type: ignore[union-attr]
            if converting:
                converting.land(db, schedule)
            sent = schedule.ready()
            for p in sent:
                if p.failure:
                    _stored(db, p, failed(f"job-{p.row_id}", *p.failure), outcome, progress)
                    schedule.finished(p)
                    continue
                payload = job_payload(p, spec)
                payload["measure"].update({**(early.measure_for(p) if early else {}), **overrides[id(p)]})  # type: ignore[typeddict-item]
                files = depot.ship_all(job_files(p))
                futures[actors[p.board].run_job.remote(payload, files, spec.measure.job_timeout)] = p
            pending = [*futures, *(converting.pending() if converting else ())]
            if not pending:
                if not schedule:
                    return
                # Jobs failed at once freed their boards: send the next ones.
                assert sent, "jobs wait for a conversion that was never started"
                continue
            ready, _ = ray.wait(pending, num_returns=1, timeout=late.wait_s() if late else None)
            if not ready:
                continue  # time to look for hosts that joined
            if ready[0] not in futures:
                converting.take(ready[0])  # type: ignore[union-attr]
                continue
            p = futures.pop(ready[0])
            schedule.finished(p)
            try:
                result = ray.get(ready[0])
            except Exception as exc:  # noqa: BLE001 - the actor itself died: still a stored failure
                result = _actor_lost(p, exc)
            job = _stored(db, p, result, outcome, progress)
            if early:
                early.observe(p, job)


def _actor_lost(p: Planned, exc: Exception) -> ResultRecord:
    """A job whose board actor died under it, or before it: stage ``host`` when the actor (or the
    Ray node it lived on, the board's host) is gone, so that ``--resume`` runs it again once the
    host is back; anything else the actor raised is the transport's."""
    from ray.exceptions import ActorUnavailableError, RayActorError

    if isinstance(exc, (RayActorError, ActorUnavailableError)):
        return failed(f"job-{p.row_id}", "host", f"the board's host was lost: {one_line(exc)}")
    return failed(f"job-{p.row_id}", "transport", one_line(exc))


def _finalists(spec: Spec) -> list[FollowUp]:
    """Selection's interleaved rounds of each board's finalists, unless the spec turns them off."""
    from controller.run.finalists import finalist_rounds

    return [finalist_rounds(spec)] if spec.selection.rounds > 0 else []


def _repeat(sessions: Any, spec: Spec, plan: list[Planned], actors: dict[str, Any], depot: Depot, limits: dict[str, int],
            follow_ups: Sequence[FollowUp], outcome: RunOutcome, progress: RunProgress) -> None:
    """Measure again what the follow-ups ask for, batch after batch, until none asks for more."""
    while follow_ups:
        with sessions() as db:
            repeats = [r for follow_up in follow_ups for r in follow_up(db, outcome.run_id, plan)]
            if not repeats:
                return
            ids = recording.add_repeats(db, outcome.run_id, [(r.of.row_id, r.purpose) for r in repeats])
            db.commit()
        jobs = [(replace(r.of, row_id=row_id, failure=None, stored=False), r.measure)
                for r, row_id in zip(repeats, ids)]
        counts: dict[str, int] = {}
        for p, _ in jobs:
            counts[p.board] = counts.get(p.board, 0) + 1
        progress.boards(counts, what="repeats (" + ", ".join(sorted({r.purpose for r in repeats})) + ")")
        _measure(sessions, spec, jobs, actors, depot, limits, outcome, progress)


def _stored(db: Any, p: Planned, result: ResultRecord, outcome: RunOutcome, progress: RunProgress) -> Job:
    """Store one job's result and show it. A result the database will not take (the record's
    check let through what a column refuses) is stored as the job's failure at stage ``result``:
    what a board sent never ends the run, nor keeps the other boards' results from being stored."""
    job = db.get(Job, p.row_id)
    result = _scored(p, result)
    try:
        recording.job_result(db, job, result)
        db.commit()
    except Exception as exc:  # noqa: BLE001 - this job's failure, not the run's
        db.rollback()
        job = db.get(Job, p.row_id)
        refused = failed(f"job-{p.row_id}", "result", f"the board's result record could not be stored: {_cause(exc)}")
        recording.job_result(db, job, _with_session_figures(refused, result))
        db.commit()
    if job.purpose != "measure":
        outcome.repeats += 1
    elif job.status == "ok":
        outcome.ok += 1
    else:
        outcome.failed += 1
    if job.status == "ok":
        r = job.result
        # A native tool may print no median (Paddle Lite's benchmark_bin): its mean, then.
        detail = "" if r is None else f"{r.p50_ms:.2f} ms p50" if r.p50_ms is not None else f"{r.mean_ms:.2f} ms mean"
    else:
        detail = f"failed at {job.stage}: {job.message}"
    progress.job_done(p.board, p.describe(), job.status == "ok", _printable(detail))
    return job


def _scored(p: Planned, result: ResultRecord) -> ResultRecord:
    """A result whose task the controller scores (detection's COCO mAP, a user's own metric) with
    its figures in place of the predictions the board returned; a scoring failure fails the job
    at stage ``accuracy``."""
    from controller.data.scoring import needs_scoring, score

    if result.get("status") != "ok" or not needs_scoring(result.get("accuracy")):
        return result
    module = p.model.task_module.path if p.model.task_module else None
    try:
        return {**result, "accuracy": score(dict(result["accuracy"] or {}), p.model.dataset.path, module)}
    except Exception as exc:  # noqa: BLE001 - what the board returned or the user's metric raised: this job's failure
        refused = failed(f"job-{p.row_id}", "accuracy", f"scoring the board's predictions failed: {one_line(exc)}")
        return _with_session_figures(refused, result)


def _with_session_figures(refused: ResultRecord, result: ResultRecord) -> ResultRecord:
    """A failure standing in for ``result``, with the session's own figures (not the board's) kept."""
    if "attempts" in result:
        refused["attempts"] = result["attempts"]
    if "started_at" in result:
        refused["started_at"] = result["started_at"]
    if "ended_at" in result:
        refused["ended_at"] = result["ended_at"]
    return refused


def _cause(exc: BaseException) -> str:
    """The database driver's own complaint (SQLAlchemy's ends with a link), on one line, no NUL."""
    cause = getattr(exc, "orig", None) or exc
    lines = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {lines[0] if lines else ''}"[:300].replace("\0", "?")


def _printable(text: str, limit: int = 300) -> str:
    """A board's words as they may reach a terminal: one bounded line, no control characters."""
    return "".join(c if c.isprintable() else "?" for c in text[:limit]) + ("..." if len(text) > limit else "")
