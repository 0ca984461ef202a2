"""Benchmark: what adaptive measurement would have cost a run already stored, job by job.

Replays the rules on a results database's stored jobs, in the order they ran: the controller's
``EarlyStop`` sets each job's ceiling from the jobs before it (as the replay left them: a stopped job
keeps no accuracy figure), and the agent's own ``measure_latency`` runs again on the job's stored
samples through a clock that only those samples move, with the spec's precision and the ceiling.
A job that stops as "slower" loses its throughput, accuracy and e2e time (estimated from its stored
figures: the accuracy stage's own time, each throughput batch's runs times their p50, the e2e calls
times theirs) and its latency samples past the stop. A job whose median the stored samples do not
pin down to the precision would have sampled on: the extra samples are estimated from how the
interval narrows (as 1/sqrt(n)), up to the cap. Prints seconds before and after for every job and
the run. The database is read from a copy (upgraded there when older), never changed.

    .venv/bin/python bench/adaptive_stop.py --db sqlite:///edgefarm.db [--run ID]
        [--precision 0.02|none] [--slower-factor 3|none] [--budget 0.01]
"""

from __future__ import annotations

import argparse
import math
import shutil
import statistics
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


KEEP = object()  # a rule the command line leaves as the spec has it


def _setting(text: str) -> float | None:
    return None if text.lower() in ("none", "null", "off") else float(text)


class OutOfSamples(Exception):
    """The rule wanted a sample past the stored ones."""


@dataclass
class Replayed:
    model: str
    engine: str
    label: str
    p50_ms: float
    before_s: float  # the job's time on its board, as run
    after_s: float  # the same job under the rules
    rule: str  # how its sampling ended under the rules
    n_before: int
    n_after: int
    dropped_s: float  # accuracy + throughput + e2e seconds a "slower" stop skips


def replay_latency(samples_ms: list[float], measure: Any, min_seconds: float,
                   stop_above_ms: float | None) -> dict[str, Any]:
    """The agent's sampling loop run again on stored samples; "stopped_by" is "stored" when the
    rule would have gone on past them."""
    from agent.measure import measure_latency, median_ci95, relative_half_width

    state = {"now": 0.0, "i": 0}

    def run(_: int) -> None:
        if state["i"] >= len(samples_ms):
            raise OutOfSamples
        state["now"] += samples_ms[state["i"]] / 1000.0
        state["i"] += 1

    try:
        return measure_latency(run, warmup=0, min_iterations=measure.min_iterations, min_seconds=min_seconds,
                               max_seconds=measure.max_seconds, clock=lambda: state["now"],
                               precision=measure.precision, stop_above_ms=stop_above_ms)
    except OutOfSamples:
        low, high = median_ci95(samples_ms)
        reached = relative_half_width(low, high, statistics.median(samples_ms))
        return {"stopped_by": "stored", "n": len(samples_ms), "precision": reached,
                "elapsed_s": sum(samples_ms) / 1000.0, "p50": statistics.median(samples_ms)}


def dropped_seconds(raw: dict[str, Any], throughput: list[dict[str, Any]]) -> float:
    """Seconds of the stages a slower stop skips, from the stored figures."""
    accuracy = ((raw.get("phases") or {}).get("accuracy_ms") or 0.0) / 1000.0
    through = sum((t.get("n") or 0) * (t.get("p50_ms") or 0.0) for t in throughput) / 1000.0
    e2e = raw.get("e2e") or {}
    e2e_s = (e2e.get("n") or 0) * (e2e.get("p50_ms") or 0.0) / 1000.0
    return accuracy + through + e2e_s


def replay_run(db: Any, run: Any, spec: Any) -> list[Replayed]:
    from sqlalchemy import select

    from controller.results.store import Job
    from controller.run.adaptive import EarlyStop

    early = EarlyStop(spec)
    m = spec.measure
    out = []
    jobs = db.scalars(select(Job).where(Job.run_id == run.id, Job.purpose == "measure").order_by(Job.id)).all()
    for job in jobs:
        r = job.result
        if job.status != "ok" or r is None or not r.samples_ms or job.started_at is None or job.finished_at is None:
            continue  # nothing measured on a board: the rules change nothing
        planned = SimpleNamespace(board=job.board.name, model=SimpleNamespace(spec=SimpleNamespace(
            name=job.variant.model.name)), engine=job.engine, label=job.label)
        ceiling = early.measure_for(planned).get("stop_above_ms")  # type: ignore[arg-type]
        samples = [float(v) for v in r.samples_ms]
        before = (job.finished_at - job.started_at).total_seconds()
        # The stored run stopped where both minimums were met in wall time, a little past the samples'
        # own sum: the replay meets them there too.
        min_seconds = min(m.min_seconds, sum(samples) / 1000.0)
        lat = replay_latency(samples, m, min_seconds, ceiling)
        sampled_before = sum(samples) / 1000.0
        dropped = 0.0
        n_after = lat["n"]
        if lat["stopped_by"] == "slower":
            dropped = dropped_seconds(r.raw or {}, r.throughput or [])
            after = before - dropped - (sampled_before - lat["elapsed_s"])
            accuracy = None
        elif lat["stopped_by"] == "stored":
            # The interval narrows as 1/sqrt(n): the samples it would have taken, up to the cap.
            wanted = len(samples) * (lat["precision"] / m.precision) ** 2 if m.precision and lat["precision"] else 0
            mean_s = sampled_before / len(samples)
            n_after = min(int(math.ceil(wanted)), int(m.max_seconds / mean_s)) if mean_s > 0 else len(samples)
            after = before + max(n_after - len(samples), 0) * mean_s
            accuracy = r.accuracy
        else:
            after = before - (sampled_before - lat["elapsed_s"])
            accuracy = r.accuracy
        p50 = float(lat["p50"])
        early.observe(planned, SimpleNamespace(  # type: ignore[arg-type]
            status="ok", result=SimpleNamespace(p50_ms=p50, accuracy=accuracy)))
        out.append(Replayed(job.variant.model.name, job.engine, job.label, p50, before, after,
                            lat["stopped_by"], len(samples), n_after, dropped))
    return out


def main() -> int:
    from sqlalchemy import select

    from controller.config.spec import Spec
    from controller.results.database import open_db, upgrade_db
    from controller.results.store import Run

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--db", required=True, help="SQLAlchemy URL of a SQLite results database")
    ap.add_argument("--run", type=int, default=None, help="default: the newest run")
    ap.add_argument("--precision", type=_setting, default=KEEP, help="'none': off; default: the spec's own, else 0.02")
    ap.add_argument("--slower-factor", type=_setting, default=KEEP, help="'none': off; default: the spec's own, else 3")
    ap.add_argument("--budget", type=float, default=None, help="default: the spec's own")
    args = ap.parse_args()

    source = Path(args.db.removeprefix("sqlite:///"))
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "copy.db"
        shutil.copyfile(source, copy)
        url = f"sqlite:///{copy}"
        upgrade_db(url)
        with open_db(url, create=False)() as db:
            run = db.get(Run, args.run) if args.run else db.scalars(select(Run).order_by(Run.id.desc())).first()
            if run is None:
                print("no run in the database", file=sys.stderr)
                return 1
            spec = Spec.model_validate(run.spec)
            measure = {k: v for k, v in (("precision", args.precision), ("slower_factor", args.slower_factor))
                       if v is not KEEP}
            spec = spec.model_copy(update={
                "measure": spec.measure.model_copy(update=measure),
                "selection": spec.selection.model_copy(update={} if args.budget is None else {"budget": args.budget})})
            rows = replay_run(db, run, spec)
            wall = (run.finished_at - run.started_at).total_seconds() if run.finished_at else None

    m = spec.measure
    print(f"run {run.id} ({run.spec_name}), rules: precision {m.precision}, slower_factor {m.slower_factor}, "
          f"budget {spec.selection.budget}, min_iterations {m.min_iterations}, min_seconds {m.min_seconds}, "
          f"max_seconds {m.max_seconds}\n")
    print(f"{'model':<11} {'engine':<12} {'config':<11} {'p50 ms':>8} {'n':>6} {'n new':>6} {'rule':<12} "
          f"{'s before':>9} {'s after':>9}")
    for x in rows:
        print(f"{x.model:<11} {x.engine:<12} {x.label:<11} {x.p50_ms:8.2f} {x.n_before:6d} {x.n_after:6d} "
              f"{x.rule:<12} {x.before_s:9.1f} {x.after_s:9.1f}")
    before = sum(x.before_s for x in rows)
    after = sum(x.after_s for x in rows)
    slower = [x for x in rows if x.rule == "slower"]
    print(f"\njobs: {before:.0f} s as run -> {after:.0f} s under the rules ({before - after:+.0f} s saved)")
    print(f"  {len(slower)} stopped as slower: {sum(x.before_s for x in slower):.0f} s -> "
          f"{sum(x.after_s for x in slower):.0f} s ({sum(x.dropped_s for x in slower):.0f} s of accuracy, "
          "throughput and e2e not measured)")
    more = [x for x in rows if x.rule == "stored"]
    if more:
        print(f"  {len(more)} whose median the stored samples do not pin to {m.precision:g}: "
              f"+{sum(x.after_s - x.before_s for x in more):.0f} s of sampling, estimated")
    if wall is not None:
        print(f"run (first job to last): {wall:.0f} s -> about {wall - (before - after):.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
