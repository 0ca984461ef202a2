"""The ``edgefarm`` command line.

    edgefarm run SPEC.yaml | --model M.onnx   measure every variant x engine x board, store it
    edgefarm boards                          what each board is and which engines it has
    edgefarm select                          the best engine + variant per (model, chip)
    edgefarm nightly SPEC.yaml --report DIR  run, compare with the previous run, exit 1 on regression
    edgefarm dashboard                       the Streamlit app over the database
    edgefarm db upgrade | current            the database's schema revision: upgrade it in place, or print it

A user's mistake (a bad spec, a missing model) is one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from controller.errors import UserError

EXIT_USAGE = 2
EXIT_REGRESSION = 1


def _db_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--db", metavar="URL", help="SQLAlchemy URL (default: $EDGEFARM_DB, else sqlite:///edgefarm.db)")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edgefarm", description="Benchmark and deploy AI models on a farm of edge boards.")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the job a spec describes, or one ONNX model with no spec")
    run.add_argument("spec", nargs="?", type=Path, help="spec YAML (see examples/ppocr.yaml)")
    run.add_argument("--model", type=Path, help="an ONNX model to measure without writing a spec")
    run.add_argument("--input", action="append", default=[], metavar="NAME=DIMS",
                     help="fixed shape of a dynamic input, e.g. x=1x3x224x224 (repeatable)")
    run.add_argument("--variants", help="comma-separated, e.g. fp32,fp16,int8")
    run.add_argument("--engines", help="comma-separated, e.g. onnxruntime,openvino")
    run.add_argument("--inventory", type=Path, help="inventory YAML (default: the local board)")
    run.add_argument("--ray-address", help="join this Ray cluster instead of starting a local Ray")
    run.add_argument("--resume", type=int, metavar="RUN_ID",
                     help="finish an interrupted run: only its missing jobs run, stored results stay")
    _db_flag(run)

    boards = sub.add_parser("boards", help="list boards, their chips, reachability, engines and quarantine")
    boards.add_argument("--inventory", type=Path)
    boards.add_argument("--release", metavar="BOARD", help="end a board's quarantine, so runs use it again")
    _db_flag(boards)

    sel = sub.add_parser("select", help="print the engine-selection table")
    sel.add_argument("--budget", type=float, default=0.01, help="largest accepted accuracy drop against fp32")
    sel.add_argument("--objective", choices=["latency", "throughput"], default="latency",
                     help="lowest p50 at batch 1, or most items/s at any measured batch size")
    sel.add_argument("--latency-ceiling", type=float, metavar="MS",
                     help="with --objective throughput: a batch's p50 must stay under this")
    sel.add_argument("--format", choices=["table", "md", "csv", "json"], default="table")
    _db_flag(sel)

    var = sub.add_parser("variants", help="what each variant's recipe did: fusions, calibration, float nodes, pruning")
    var.add_argument("--model", help="only this model")
    var.add_argument("--format", choices=["table", "json"], default="table", help="json: the full records")
    _db_flag(var)

    nightly = sub.add_parser("nightly", help="run a spec and report regressions against the previous run")
    nightly.add_argument("spec", type=Path)
    nightly.add_argument("--report", type=Path, required=True, metavar="DIR", help="writes DIR/report.md and DIR/junit.xml")
    nightly.add_argument("--inventory", type=Path)
    nightly.add_argument("--ray-address")
    _db_flag(nightly)

    dash = sub.add_parser("dashboard", help="start the Streamlit dashboard")
    dash.add_argument("--port", type=int, default=8501)
    _db_flag(dash)

    db = sub.add_parser("db", help="the database's schema: upgrade it in place, or print its revision")
    db_sub = db.add_subparsers(dest="db_command", required=True)
    _db_flag(db_sub.add_parser("upgrade", help="upgrade the database to this EdgeFarm's schema; every row stays"))
    _db_flag(db_sub.add_parser("current", help="print the database's schema revision"))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        check_installation()
        return COMMANDS[args.command](args)
    except UserError as exc:  # only what the user can fix; a board's failure is stored, not an exit
        print(f"edgefarm: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("edgefarm: interrupted; results measured so far are stored", file=sys.stderr)
        return 130


def check_installation() -> None:
    """EdgeFarm installs three top-level packages (docs/architecture.md says why not one namespace);
    another distribution's ``agent`` or ``dashboard`` earlier on the path would be imported in
    place of ours and fail in ways far from the cause, so a stranger is named here instead."""
    import agent
    import controller
    import dashboard

    def home(module: object) -> Path:
        return Path(next(iter(getattr(module, "__path__")))).resolve().parent

    ours = home(controller)
    for module in (agent, dashboard):
        if home(module) != ours:
            raise UserError(f"the package {module.__name__!r} is imported from {home(module)}, not from EdgeFarm's "
                            f"{ours}: another package of that name shadows it; install EdgeFarm in a virtual "
                            "environment of its own (scripts/setup.sh makes .venv)")


def _load(args: argparse.Namespace):  # -> LoadedSpec
    from controller.config.spec import load_spec, spec_from_model

    if getattr(args, "model", None):
        if args.spec:
            raise UserError("give a spec file or --model, not both")
        split = lambda s: [x.strip() for x in s.split(",") if x.strip()] if s else None  # noqa: E731
        return spec_from_model(args.model, args.input, split(args.variants), split(args.engines))
    if not args.spec:
        raise UserError("give a spec file (edgefarm run examples/ppocr.yaml) or --model MODEL.onnx")
    if getattr(args, "input", None) or getattr(args, "variants", None) or getattr(args, "engines", None):
        raise UserError("--input, --variants and --engines go with --model; a spec file says them itself")
    return load_spec(args.spec)


def cmd_run(args: argparse.Namespace) -> int:
    from controller.config.inventory import load_inventory
    from controller.run.execute import execute

    loaded = _resumed_spec(args) if args.resume and not (args.spec or args.model) else _load(args)
    inventory, source = load_inventory(args.inventory)
    outcome = execute(loaded, inventory, source, args.db, args.ray_address, resume=args.resume)
    _finish(args.db, outcome, [m.name for m in loaded.spec.models], loaded.spec.selection)
    return 0


def _resumed_spec(args: argparse.Namespace):  # -> LoadedSpec
    """The spec a run was started with, as the database keeps it."""
    from controller.config.spec import LoadedSpec, Spec
    from controller.results.database import open_db
    from controller.results.store import Run
    from controller.validation import parse

    with open_db(args.db)() as db:
        run = db.get(Run, args.resume)
        if run is None:
            raise UserError(f"--resume {args.resume}: there is no run {args.resume} in this database")
        source = f"run {run.id}'s stored spec"
        return LoadedSpec(spec=parse(Spec, run.spec, source), source=source, base=Path(run.spec_base or "."))


def _finish(db: str | None, outcome, models: list[str], rule) -> None:  # rule: SelectionSpec
    from controller.results.database import describe, open_db
    from controller.results.selection import describe_rule, latest_candidates, render, select_best

    with open_db(db)() as session:
        chosen = select_best([c for c in latest_candidates(session) if c.model in models], rule.budget,
                             rule.objective, rule.latency_ceiling_ms)
    resumed = f" ({outcome.resumed} stored before, not run again)" if outcome.resumed else ""
    print(f"\nrun {outcome.run_id}: {outcome.ok} jobs ok, {outcome.failed} failed{resumed}")
    for board, why in outcome.skipped.items():
        print(f"board {board} skipped: {why}")
    print(f"\nengine selection ({describe_rule(rule.budget, rule.objective, rule.latency_ceiling_ms)}):\n"
          f"{render(chosen, 'table')}\n")
    print(f"database:  {describe(db)}")
    print(f"dashboard: edgefarm dashboard --db {describe(db)}")


def cmd_boards(args: argparse.Namespace) -> int:
    from controller.boards.status import list_boards, release

    if args.release:
        print(release(args.release, args.db))
        return 0
    print(list_boards(args.inventory, args.db))
    return 0


def cmd_select(args: argparse.Namespace) -> int:
    from controller.results.database import open_db
    from controller.results.selection import render, selections

    with open_db(args.db)() as session:
        print(render(selections(session, args.budget, args.objective, args.latency_ceiling), args.format))
    return 0


def cmd_variants(args: argparse.Namespace) -> int:
    from controller.results.database import open_db
    from controller.results.variant_records import latest_variants, render

    with open_db(args.db)() as session:
        print(render(latest_variants(session, args.model), args.format))
    return 0


def cmd_nightly(args: argparse.Namespace) -> int:
    from controller.config.inventory import load_inventory
    from controller.run.nightly import nightly

    loaded = _load(args)
    inventory, source = load_inventory(args.inventory)
    regressed = nightly(loaded, inventory, source, args.db, args.report, args.ray_address)
    return EXIT_REGRESSION if regressed else 0


def cmd_dashboard(args: argparse.Namespace) -> int:
    import dashboard
    from controller.results.database import database_url

    app = Path(dashboard.__file__).parent / "app.py"
    env = dict(os.environ, EDGEFARM_DB=database_url(args.db))
    argv = [sys.executable, "-m", "streamlit", "run", str(app), "--server.port", str(args.port),
            "--server.headless", "true", "--browser.gatherUsageStats", "false"]
    os.execvpe(argv[0], argv, env)
    return 0  # not reached: the process is now Streamlit


def cmd_db(args: argparse.Namespace) -> int:
    from controller.results.database import (
        database_url,
        describe,
        head_revision,
        schema_state,
        upgrade_command,
        upgrade_db,
    )
    from controller.results.queries import database_exists

    head, where = head_revision(), describe(args.db)
    if args.db_command == "upgrade":
        before, after = upgrade_db(args.db)
        print(f"{where}: schema revision {after} (head), was {before or 'none'}" if before != after
              else f"{where}: already at schema revision {after} (head)")
        return 0
    revision, tables = schema_state(args.db) if database_exists(args.db) else (None, False)
    if revision == head:
        print(f"{revision} (head)")
    elif revision is None and not tables:
        print(f"none (no EdgeFarm tables yet: the first command makes them at {head})")
    else:
        print(f"{revision or 'none'} (this EdgeFarm needs {head}: {upgrade_command(database_url(args.db))})")
    return 0


COMMANDS = {"run": cmd_run, "boards": cmd_boards, "select": cmd_select, "variants": cmd_variants, "nightly": cmd_nightly,
            "dashboard": cmd_dashboard, "db": cmd_db}

if __name__ == "__main__":
    sys.exit(main())
