"""``edgefarm nightly``: run a spec, confirm what looks slower, judge every benchmark against its
history (``controller.results.regression``), keep the verdicts, write the reports.

The night's verdict is ``regression`` when a benchmark regressed (confirmed), has lost accuracy or
fails where it ran before; ``nothing ran`` when no job could run at all (every board skipped);
else ``pass``: noise that did not reproduce, improvements and benchmarks without a baseline yet are
reported and pass.
"""

from __future__ import annotations

import sys
from pathlib import Path

from controller.config.inventory import Inventory
from controller.config.spec import LoadedSpec

PASS, REGRESSION, NOTHING_RAN = "pass", "regression", "nothing ran"


def nightly(loaded: LoadedSpec, inventory: Inventory, inventory_source: str, db_url: str | None,
            report_dir: Path, ray_address: str | None) -> str:
    """The night's verdict: ``pass``, ``regression`` or ``nothing ran``."""
    from controller.errors import UserError
    from controller.results import regression, report
    from controller.results.database import open_db
    from controller.results.selection import latest_candidates, render, select_best
    from controller.results.store import Run
    from controller.run.confirm import confirmations
    from controller.run.execute import execute

    try:
        report_dir.mkdir(parents=True, exist_ok=True)  # fail early, before an hour of measuring
    except OSError as exc:
        raise UserError(f"--report {report_dir}: cannot create the report folder: {exc.strerror}") from None
    rules = loaded.spec.regression
    outcome = execute(loaded, inventory, inventory_source, db_url, ray_address, kind="nightly",
                      follow_ups=[confirmations(rules)])
    empty = outcome.nothing_ran()
    with open_db(db_url)() as db:
        run = db.get(Run, outcome.run_id)
        assert run is not None  # execute() made it
        judged = regression.judge_run(db, run, rules)
        regression.record(db, judged)
        verdict = NOTHING_RAN if empty else REGRESSION if any(j.bad for j in judged) else PASS
        run.verdict = verdict
        run.summary = {**(run.summary or {}), "verdicts": regression.summary(judged), "nothing_ran": empty}
        db.commit()
        models = [m.name for m in loaded.spec.models]
        rule = loaded.spec.selection
        chosen = select_best([c for c in latest_candidates(db) if c.model in models], rule.budget,
                             rule.objective, rule.latency_ceiling_ms)
    night = report.Night(run.id, judged, outcome.skipped, empty)
    report.write_markdown(report_dir / "report.md", night, render(chosen, "md"))
    report.write_junit(report_dir / "junit.xml", night)
    bad = [j for j in judged if j.bad]
    counts = ", ".join(f"{n} {v}" for v, n in sorted(regression.summary(judged).items())) or "nothing judged"
    print(f"nightly run {run.id}: {verdict.upper() if verdict != PASS else verdict} ({counts}); "
          f"report: {report_dir / 'report.md'}")
    for j in bad:
        print(f"  {j.line()}")
    if empty:  # on stderr too, as `run` says it: a cron job's mail shows it
        print(f"edgefarm: nightly run {run.id}: {empty}", file=sys.stderr)
    return verdict
