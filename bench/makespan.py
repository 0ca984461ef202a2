"""Benchmark: a run's makespan against its lower bound, on a simulated farm and on a real run.

The lower bound of a run is its busiest board: the board whose jobs, end to end, take longest,
plus what must happen before its first job (the variants compiled, and the shortest conversion
its jobs wait for; nothing when one of its jobs reads ONNX). No schedule beats it; the ratio
makespan / bound says how much the farm loses to boards waiting.

**Simulated farm.** Fifty boards over six board hosts (Android phones on two USB hosts, a Jetson
rack, an RK3399 rack, Atlas boxes, an x86 lab with one local board), driven by the run's own
scheduling rules (``controller.run.schedule``) and conversion placement rule, on a simulated
clock: fifty Ray actors measuring for real do not fit the two cores this runs on. Every figure is
a real one: each job's duration is drawn from what the same model, engine and variant took on
the local board of the demo (``JOB_S``, from ``make demo`` on a clean clone, 2026-12-04, 2 cores),
scaled by a speed factor per board kind and a per-board jitter; conversion times are those of the
demo's cold cache (``CONVERT_S``). The boards' transports are the registered ones (adb, ssh,
local), so which boards wait for every conversion follows each transport's ``measures_on_host``.
Two schedules are printed side by side: conversions first (every conversion done before the first
job, as runs were scheduled before) and pipelined (a job starts as soon as its own conversion has
landed).

**Real run.** With ``--db`` (by default the demo's ``edgefarm.db``, where ``make demo`` has run),
the same ratio for each run stored there: its measuring makespan
(first job's start to last job's end, from the jobs' ``started_at``/``finished_at``) against its
busiest board's total job time, which is what the real boards lost between jobs (dispatch,
storing, conversions waited for).

    .venv/bin/python bench/makespan.py [--seed 0] [--db sqlite:///edgefarm.db [--run ID]]
"""

from __future__ import annotations

import argparse
import heapq
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from controller.plugins import TRANSPORTS  # noqa: E402
from controller.run.schedule import Schedule  # noqa: E402

MODELS = ("ppocr-det", "ppocr-rec", "ppocr-cls")
VARIANTS = ("fp32", "fp16", "int8")
# Seconds each (model, engine, variant) job took on the demo's local board (x86, 2 cores).
JOB_S = {
    ("ppocr-cls", "mnn"): (6.6, 6.6, 2.3), ("ppocr-cls", "ncnn"): (5.7, 5.5, 5.5),
    ("ppocr-cls", "onnxruntime"): (6.6, 6.7, 6.7), ("ppocr-cls", "openvino"): (7.1, 7.1, 10.4),
    ("ppocr-cls", "paddlelite"): (2.5, 2.5, 2.5),
    ("ppocr-det", "mnn"): (6.1, 6.3, 30.7), ("ppocr-det", "ncnn"): (20.7, 19.2, 19.0),
    ("ppocr-det", "onnxruntime"): (25.5, 7.0, 19.8), ("ppocr-det", "openvino"): (22.6, 23.0, 29.0),
    ("ppocr-det", "paddlelite"): (45.1, 45.1, 45.1),
    ("ppocr-rec", "mnn"): (2.4, 2.4, 14.9), ("ppocr-rec", "ncnn"): (8.0, 7.9, 10.1),
    ("ppocr-rec", "onnxruntime"): (9.6, 2.5, 8.9), ("ppocr-rec", "openvino"): (9.5, 9.8, 18.5),
    ("ppocr-rec", "paddlelite"): (17.2, 17.2, 17.2),
}
# Seconds each (model, engine) conversion took from a cold cache in the demo (fp32, fp16, int8):
# int8 for ncnn and MNN calibrates, the slow part.
CONVERT_S = {
    ("ppocr-cls", "mnn"): (5, 5, 9), ("ppocr-cls", "ncnn"): (4, 4, 10), ("ppocr-cls", "openvino"): (4, 4, 6),
    ("ppocr-cls", "paddlelite"): (10, 10, 10),
    ("ppocr-rec", "mnn"): (7, 7, 37), ("ppocr-rec", "ncnn"): (6, 6, 60), ("ppocr-rec", "openvino"): (6, 6, 8),
    ("ppocr-rec", "paddlelite"): (35, 35, 35),
    ("ppocr-det", "mnn"): (10, 10, 20), ("ppocr-det", "ncnn"): (8, 8, 115), ("ppocr-det", "openvino"): (8, 8, 15),
    ("ppocr-det", "paddlelite"): (45, 45, 45),
}
COMPILE_S = 54.0  # the demo's variants compiled and data rendered, cold

# Board kinds: transport, converter target, engines, how many times slower than the demo's board.
KINDS = {
    "phone": ("adb", "arm64", ("onnxruntime", "ncnn", "mnn", "paddlelite"), (1.5, 3.0)),
    "jetson": ("ssh", "arm64", ("onnxruntime", "ncnn", "mnn"), (0.8, 1.2)),
    "rk3399": ("ssh", "arm64", ("onnxruntime", "ncnn", "mnn", "paddlelite"), (2.0, 3.0)),
    "atlas": ("ssh", "arm64", ("onnxruntime", "mnn"), (1.2, 1.8)),
    "x86": ("ssh", "x86", ("onnxruntime", "openvino", "ncnn", "mnn", "paddlelite"), (0.8, 1.2)),
    "local": ("local", "x86", ("onnxruntime", "openvino", "ncnn", "mnn", "paddlelite"), (1.0, 1.0)),
}
# host -> its boards' kinds, in the inventory's order.
FARM = {
    "phones-1": ["phone"] * 10, "phones-2": ["phone"] * 10, "jetson-rack": ["jetson"] * 8,
    "rk-rack": ["rk3399"] * 8, "atlas": ["atlas"] * 6, "x86-lab": ["x86"] * 7 + ["local"],
}
CONVERT_SLOTS = 8  # the controller's node converts (8 cores); board hosts lend no cores to it


@dataclass(frozen=True)
class Job:
    board: str
    name: str
    seconds: float
    conversion: tuple[str, str, str, str] | None  # (model, variant, engine, target) it waits for


@dataclass
class Farm:
    jobs: list[Job]
    conversions: dict[tuple[str, str, str, str], float]  # request -> seconds
    held_if_converting_here: set[str] = field(default_factory=set)  # boards measuring on their host's cores


def farm(seed: int) -> Farm:
    rng = random.Random(seed)
    jobs: list[Job] = []
    conversions: dict[tuple[str, str, str, str], float] = {}
    on_host = set()
    for host, kinds in FARM.items():
        for n, kind in enumerate(kinds):
            transport, target, engines, (slow, fast) = KINDS[kind]
            board = f"{host}/{kind}-{n}"
            if TRANSPORTS.get(transport).measures_on_host:
                on_host.add(board)
            speed = rng.uniform(slow, fast)
            for model in MODELS:
                for v, variant in enumerate(VARIANTS):
                    for engine in engines:
                        request = None
                        if (model, engine) in CONVERT_S:
                            request = (model, variant, engine, target)
                            conversions[request] = float(CONVERT_S[(model, engine)][v])
                        seconds = JOB_S[(model, engine)][v] * speed * rng.uniform(0.8, 1.2)
                        jobs.append(Job(board, f"{model} {variant} {engine}", seconds, request))
    return Farm(jobs, conversions, on_host)


def landings(conversions: dict[tuple[str, str, str, str], float], slots: int, start: float) -> dict[tuple, float]:
    """When each conversion is done: run in the order the controller submits them, ``slots`` at once."""
    free = [start] * slots
    done = {}
    for request in sorted(conversions):
        begin = heapq.heappop(free)
        done[request] = begin + conversions[request]
        heapq.heappush(free, done[request])
    return done


def simulate(f: Farm, pipelined: bool) -> float:
    """The makespan of the farm's run: compile, then conversions and jobs as the rules allow."""
    landed_at = landings(f.conversions, CONVERT_SLOTS, COMPILE_S)
    boards = {j.board for j in f.jobs}
    # The boards that measure on their host's cores are on hosts the conversions avoid (the
    # controller's node converts), so none waits; conversions-first holds every board.
    held = set() if pipelined else boards
    schedule: Schedule[Job] = Schedule(f.jobs, lambda j: j.board, lambda j: j.conversion, {}, set(f.conversions), held)
    events: list[tuple[float, int, str, object]] = [(t, n, "landed", r) for n, (r, t) in enumerate(landed_at.items())]
    heapq.heapify(events)
    now, order, end = COMPILE_S, len(events), COMPILE_S
    while True:
        for job in schedule.ready():
            order += 1
            heapq.heappush(events, (now + job.seconds, order, "finished", job))
        if not events:
            return end
        now, _, kind, what = heapq.heappop(events)
        if kind == "landed":
            schedule.landed(what)  # type: ignore[arg-type]
        else:
            schedule.finished(what)  # type: ignore[arg-type]
            end = max(end, now)


def lower_bound(f: Farm) -> tuple[float, str]:
    """The busiest board's jobs plus the compile and the shortest wait before its first job."""
    best, busiest = 0.0, ""
    for board in sorted({j.board for j in f.jobs}):
        jobs = [j for j in f.jobs if j.board == board]
        first = min((f.conversions[j.conversion] if j.conversion else 0.0) for j in jobs)
        total = COMPILE_S + first + sum(j.seconds for j in jobs)
        if total > best:
            best, busiest = total, board
    return best, busiest


def real_runs(url: str, run_id: int | None) -> None:
    from sqlalchemy import select

    from controller.results.database import open_db
    from controller.results.store import Board
    from controller.results.store import Job as JobRow

    with open_db(url)() as db:
        rows = db.execute(select(JobRow.run_id, Board.name, JobRow.started_at, JobRow.finished_at)
                          .join(Board, Board.id == JobRow.board_id)
                          .where(JobRow.started_at.is_not(None), JobRow.finished_at.is_not(None))).all()
    runs = sorted({r.run_id for r in rows} if run_id is None else {run_id})
    for run in runs:
        mine = [r for r in rows if r.run_id == run]
        if not mine:
            print(f"run {run}: no job with a start and an end")
            continue
        span = (max(r.finished_at for r in mine) - min(r.started_at for r in mine)).total_seconds()
        per_board: dict[str, float] = {}
        for r in mine:
            per_board[r.name] = per_board.get(r.name, 0.0) + (r.finished_at - r.started_at).total_seconds()
        board, busiest = max(per_board.items(), key=lambda kv: kv[1])
        print(f"real run {run}: {len(mine)} jobs on {len(per_board)} boards; makespan {span:.0f} s, "
              f"busiest board {board} {busiest:.0f} s of jobs: ratio {span / busiest:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0, help="the draw of job durations and board speeds")
    demo = ROOT / "edgefarm.db"  # what `make demo` measured, when it has run here
    parser.add_argument("--db", default=f"sqlite:///{demo}" if demo.is_file() else None,
                        help="also the real runs of this results database (default: the demo's, where it has run)")
    parser.add_argument("--run", type=int, help="with --db: only this run")
    args = parser.parse_args()

    f = farm(args.seed)
    bound, busiest = lower_bound(f)
    print(f"simulated farm: {len({j.board for j in f.jobs})} boards on {len(FARM)} hosts, {len(f.jobs)} jobs, "
          f"{len(f.conversions)} conversions on {CONVERT_SLOTS} cores; lower bound {bound:.0f} s ({busiest})")
    for name, pipelined in (("conversions first", False), ("pipelined", True)):
        span = simulate(f, pipelined)
        print(f"  {name:>17}: makespan {span:6.0f} s, ratio {span / bound:.3f}")
    if args.db:
        real_runs(args.db, args.run)


if __name__ == "__main__":
    main()
