"""Benchmark: what engine selection buys, per model, measured side by side in one run, and how sure it is.

Runs a spec (default: examples/ppocr.yaml, 200 labelled samples per model) on its boards
into a fresh database, then prints for every (model, chip) each configuration's p50 latency,
accuracy and size, and the selected configuration's speed-up against ONNX Runtime fp32 at
default settings with its 95% interval (its width, how many interleaved rounds it comes from,
what it is tied with), its accuracy drop, and the time the finalists' rounds added to the run.
With ``--runs 2`` the spec runs again into a second database and the two runs' picks and
speed-ups are printed side by side, with whether each speed-up lies inside the other's interval.
Last, how long ``edgefarm select`` takes on the run's database grown to thousands of results.

    .venv/bin/python bench/selection.py [--spec examples/ppocr.yaml] [--budget 0.01] [--runs 2]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sqlite3
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from controller.results.selection import Candidate

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

GROWN_RESULTS = 5000  # `edgefarm select` is timed on a copy of the database with about this many results


def main() -> int:
    from controller.config.spec import load_spec

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spec", type=Path, default=ROOT / "examples" / "ppocr.yaml")
    ap.add_argument("--budget", type=float, default=None, help="default: the spec's own")
    ap.add_argument("--runs", type=int, default=1, help="2: run the spec twice and compare the picks")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "out")
    args = ap.parse_args()

    args.out.mkdir(parents=True, exist_ok=True)
    budget = args.budget if args.budget is not None else load_spec(args.spec).spec.selection.budget
    stamp = time.strftime('%Y%m%d-%H%M%S')
    picks = []
    for n in range(1, args.runs + 1):
        db = args.out / f"selection-{stamp}-{n}.db"
        code, chosen = _run(args.spec, db, budget)
        if code:
            return code
        picks.append(chosen)
    if len(picks) > 1:
        _side_by_side(picks[0], picks[-1])
    _select_speed(db, args.out / f"selection-{stamp}-grown.db")
    return 0


def _run(spec: Path, db: Path, budget: float) -> tuple[int, dict[tuple[str, str], Candidate | None]]:
    from controller.cli import main as edgefarm
    from controller.results.database import open_db
    from controller.results.selection import latest_candidates, select_best

    url = f"sqlite:///{db}"
    started = time.perf_counter()
    code = edgefarm(["run", str(spec), "--db", url])
    if code:
        return code, {}
    elapsed = time.perf_counter() - started
    with open_db(url)() as session:
        candidates = latest_candidates(session)
    chosen = select_best(candidates, budget)

    print(f"\n== all configurations (database {db}) ==")
    print(f"{'model':<11} {'chip':<18} {'engine':<12} {'config':<10} {'prec':<5} {'p50 ms':>8} {'speed-up':>20} "
          f"{'rounds':>6} {'metric':<12} {'accuracy':>8} {'drop':>8} {'size MB':>8}")
    for c in sorted(candidates, key=lambda c: (c.model, c.chip, c.p50_ms)):
        print(f"{c.model:<11} {c.chip[:18]:<18} {c.engine:<12} {c.variant:<10} {c.precision:<5} {c.p50_ms:8.2f} "
              f"{_x(c):>20} {c.rounds or '-':>6} {c.accuracy_metric or '-':<12} {_f(c.accuracy):>8} "
              f"{_f(c.accuracy_drop):>8} {c.size_bytes / 1e6:8.2f}")

    print(f"\n== selected per (model, chip), accuracy budget {budget:g} ==")
    for s in chosen:
        if s.best is None:
            print(f"{s.model:<11} {s.chip}: nothing within the budget")
            continue
        b = s.best
        source = f"{b.rounds} interleaved rounds" if b.rounds else "the two jobs' samples"
        print(f"{s.model:<11} {s.chip}: {b.engine} {b.variant} ({b.precision}) p50 {b.p50_ms:.2f} ms, "
              f"speed-up {_x(b)} vs onnxruntime fp32 defaults (interval {_width(b)} wide, from {source}), "
              f"{b.accuracy_metric} {_f(b.accuracy)} (drop {_f(b.accuracy_drop)})"
              + (f"; tied with {', '.join(b.tied_with)}" if b.tied_with else ""))
    rounds, span = _rounds_time(db)
    print(f"\nwhole run: {elapsed:.0f} s; the finalists' {rounds} rounds: {span:.0f} s of it")
    return 0, {(s.model, s.chip): s.best for s in chosen}


def _side_by_side(first: dict[tuple[str, str], Candidate | None],
                  second: dict[tuple[str, str], Candidate | None]) -> None:
    print("\n== the two runs side by side ==")
    for key in sorted(first.keys() | second.keys()):
        a, b = first.get(key), second.get(key)
        inside = a is not None and b is not None and _inside(a, b) and _inside(b, a)
        print(f"{key[0]:<11} {key[1][:18]:<18} {_pick(a):<22} {_x(a):>20} | {_pick(b):<22} {_x(b):>20} | "
              f"same pick: {'yes' if _pick(a) == _pick(b) else 'NO'}, each inside the other's interval: "
              f"{'yes' if inside else 'NO'}")


def _pick(c: Candidate | None) -> str:
    return "-" if c is None else f"{c.engine} {c.variant}"


def _inside(c: Candidate, other: Candidate) -> bool:
    ci = other.speedup_ci95
    return bool(ci and c.speedup_vs_baseline is not None and ci[0] <= c.speedup_vs_baseline <= ci[1])


def _rounds_time(db: Path) -> tuple[int, float]:
    """How many round jobs the run measured, and the seconds from the first one's start to the last one's end."""
    with sqlite3.connect(db) as con:
        n, first, last = con.execute("SELECT count(*), min(started_at), max(finished_at) FROM jobs "
                                     "WHERE purpose = 'round'").fetchone()
        span = con.execute("SELECT (julianday(?) - julianday(?)) * 86400", (last, first)).fetchone()[0] if n else 0
    return n, float(span or 0)


def _select_speed(db: Path, grown: Path) -> None:
    """``edgefarm select`` on the run's database, then on a copy holding every job and result many times over
    (as if the spec had run every night for months), then on that copy as an older EdgeFarm stored it (no
    median intervals in the results: selection reads the raw samples of the candidates that need them)."""
    from controller.cli import main as edgefarm

    with sqlite3.connect(db) as source, sqlite3.connect(grown) as copy:
        source.backup(copy)  # with what is still in the write-ahead log, which a file copy would miss
    older = grown.with_name(grown.stem + "-older.db")
    with sqlite3.connect(grown) as con:
        jobs = [r[1] for r in con.execute("PRAGMA table_info(jobs)")]
        results = [r[1] for r in con.execute("PRAGMA table_info(results)")]
        max_job, max_result, count = con.execute(
            "SELECT (SELECT max(id) FROM jobs), (SELECT max(id) FROM results), (SELECT count(*) FROM results)").fetchone()
        for k in range(1, max(GROWN_RESULTS // max(count, 1), 1)):
            shift = {"id": f"id + {k * max_job}", "repeat_of": f"repeat_of + {k * max_job}"}
            con.execute(f"INSERT INTO jobs ({', '.join(jobs)}) SELECT {', '.join(shift.get(c, c) for c in jobs)} "
                        f"FROM jobs WHERE id <= {max_job}")
            shift = {"id": f"id + {k * max_result}", "job_id": f"job_id + {k * max_job}"}
            con.execute(f"INSERT INTO results ({', '.join(results)}) SELECT "
                        f"{', '.join(shift.get(c, c) for c in results)} FROM results WHERE id <= {max_result}")
        total = con.execute("SELECT count(*) FROM results").fetchone()[0]
    with sqlite3.connect(grown) as source, sqlite3.connect(older) as copy:
        source.backup(copy)
        copy.execute("UPDATE results SET raw = json_remove(raw, '$.sampling')")
    with contextlib.redirect_stdout(io.StringIO()):  # imports once, untimed: a user's command pays them anyway
        edgefarm(["select", "--db", f"sqlite:///{db}", "--format", "json"])
    for path, what in ((db, f"{count} results"), (grown, f"{total} results"),
                       (older, f"{total} results without stored median intervals")):
        started = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            edgefarm(["select", "--db", f"sqlite:///{path}", "--format", "json"])
        print(f"edgefarm select on {what}: {time.perf_counter() - started:.2f} s")


def _f(v: float | None) -> str:
    return "-" if v is None else f"{v:.4f}"


def _x(c: Candidate | None) -> str:
    from controller.results.selection import speedup_text

    return "-" if c is None else speedup_text(c)


def _width(c: Candidate) -> str:
    ci = c.speedup_ci95
    return "-" if not ci or not c.speedup_vs_baseline else f"+/-{(ci[1] - ci[0]) / 2 / c.speedup_vs_baseline:.0%}"


if __name__ == "__main__":
    sys.exit(main())
