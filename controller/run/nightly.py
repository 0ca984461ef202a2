"""``edgefarm nightly``: run a spec, judge it against the previous run, write the reports."""

from __future__ import annotations

from pathlib import Path

from controller.config.inventory import Inventory
from controller.config.spec import LoadedSpec


def nightly(loaded: LoadedSpec, inventory: Inventory, inventory_source: str, db_url: str | None,
            report_dir: Path, ray_address: str | None) -> bool:
    """True when something regressed."""
    from controller.errors import UserError
    from controller.results import regression, report
    from controller.results.database import open_db
    from controller.results.selection import latest_candidates, render, select_best
    from controller.results.store import Run
    from controller.run.execute import execute

    try:
        report_dir.mkdir(parents=True, exist_ok=True)  # fail early, before an hour of measuring
    except OSError as exc:
        raise UserError(f"--report {report_dir}: cannot create the report folder: {exc.strerror}") from None
    outcome = execute(loaded, inventory, inventory_source, db_url, ray_address, kind="nightly")
    rules = loaded.spec.regression
    with open_db(db_url)() as db:
        run = db.get(Run, outcome.run_id)
        assert run is not None  # execute() made it
        prev = regression.previous_run(db, run)
        after = regression.run_results(db, run.id)
        before = regression.run_results(db, prev.id) if prev else {}
        changes = regression.compare(before, after, rules) if prev else []
        regressed = any(c.bad for c in changes)
        run.verdict = "regression" if regressed else "pass"
        run.summary = {**(run.summary or {}), "previous_run": prev.id if prev else None,
                       "changes": regression.summary(changes)}
        db.commit()
        models = [m.name for m in loaded.spec.models]
        rule = loaded.spec.selection
        chosen = select_best([c for c in latest_candidates(db) if c.model in models], rule.budget,
                             rule.objective, rule.latency_ceiling_ms)
    report.write_markdown(report_dir / "report.md", run.id, prev.id if prev else None, changes, render(chosen, "md"))
    report.write_junit(report_dir / "junit.xml", run.id, changes)
    bad = [c for c in changes if c.bad]
    print(f"nightly run {run.id}: {'REGRESSION' if bad else 'pass'} "
          f"({len(bad)} regressions against run {prev.id if prev else '-'}); report: {report_dir / 'report.md'}")
    for c in bad:
        print(f"  {' '.join(c.key)}: {c.what} {c.verdict} ({c.before} -> {c.after})")
    return regressed
