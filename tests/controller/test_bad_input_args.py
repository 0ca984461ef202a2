"""Every kind of bad command-line argument: one line that names the command, the flag and the
value, exit 2, no traceback, and nothing stored changed (the real database's rows as they were,
no file made beside it).

argparse's own errors (an unknown flag, a value that is not a number, a missing argument, a
choice it does not offer) are one line too: ``edgefarm CMD: error: ... (see edgefarm CMD --help)``.
Values argparse accepts but EdgeFarm cannot use (a budget of NaN, a run id of 0, a port of 70000,
a model the database does not have) are checked as the spec's values are.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import pytest

from tests.net import free_port
from tests.refusal import ROOT, Case, Snapshot, assert_refused, real_database

SPEC = str(ROOT / "examples" / "ppocr.yaml")
DB = ("--db", "sqlite:///{db}")


def parser_error(command: str, *needles: str) -> tuple[str, ...]:
    """What an argparse refusal names: the command, the flag and value, and where help is."""
    prog = f"edgefarm {command}".strip()
    return (f"{prog}: error:", *needles, f"(see {prog} --help)")


CASES = [
    # -- select ------------------------------------------------------------------------------------
    Case("select-budget-nan", ("select", "--budget", "nan", *DB), parser_error("select", "argument --budget", "'nan'")),
    Case("select-budget-inf", ("select", "--budget", "inf", *DB), parser_error("select", "--budget", "'inf'", "finite")),
    Case("select-budget-overflows-to-inf", ("select", "--budget", "1e400", *DB), ("--budget", "'1e400'", "finite")),
    Case("select-budget-above-one", ("select", "--budget", "2", *DB), ("--budget", "'2'", "outside [0, 1]")),
    Case("select-budget-negative", ("select", "--budget=-0.1", *DB), ("--budget", "'-0.1'", "outside [0, 1]")),
    Case("select-budget-not-a-number", ("select", "--budget", "one", *DB), ("--budget", "'one'", "not a number")),
    Case("select-budget-without-value", ("select", *DB, "--budget"), parser_error("select", "--budget",
                                                                                 "expected one argument")),
    Case("select-latency-ceiling-zero", ("select", "--objective", "throughput", "--latency-ceiling", "0", *DB),
         ("--latency-ceiling", "'0'", "not a positive number of milliseconds")),
    Case("select-latency-ceiling-negative", ("select", "--objective", "throughput", "--latency-ceiling=-5", *DB),
         ("--latency-ceiling", "'-5'", "positive")),
    Case("select-latency-ceiling-nan", ("select", "--objective", "throughput", "--latency-ceiling", "NaN", *DB),
         ("--latency-ceiling", "'NaN'", "finite")),
    Case("select-latency-ceiling-without-throughput", ("select", "--latency-ceiling", "50", *DB),
         ("edgefarm: error: --latency-ceiling 50", "--objective throughput")),
    Case("select-unknown-format", ("select", "--format", "xml", *DB),
         parser_error("select", "argument --format", "'xml'", "'json'")),
    Case("select-unknown-objective", ("select", "--objective", "speed", *DB), ("--objective", "'speed'", "'latency'")),
    Case("select-unknown-flag", ("select", "--budgte", "0.1", *DB), parser_error("select", "unrecognized arguments",
                                                                                "--budgte")),
    # -- variants ----------------------------------------------------------------------------------
    Case("variants-unknown-model", ("variants", "--model", "ppocr-rec", *DB),
         ("--model 'ppocr-rec'", "no model of that name", "ppocr-cls, ppocr-det")),
    Case("variants-unknown-format", ("variants", "--format", "md", *DB), ("--format", "'md'", "'table'")),
    # -- run ---------------------------------------------------------------------------------------
    Case("run-resume-zero", ("run", "--resume", "0", *DB), parser_error("run", "argument --resume", "'0'", "run id")),
    Case("run-resume-negative", ("run", "--resume=-3", *DB), ("--resume", "'-3'", "run id")),
    Case("run-resume-not-a-number", ("run", "--resume", "last", *DB), ("--resume", "'last'", "whole number")),
    Case("run-resume-unknown-run", ("run", "--resume", "999", *DB), ("--resume 999", "there is no run 999")),
    Case("run-resume-without-database", ("run", "--resume", "1", "--db", "sqlite:///{tmp}/missing.db"),
         ("no database at {tmp}/missing.db",)),
    Case("run-variants-empty", ("run", "--model", "m.onnx", "--variants", ",", *DB), ("--variants ','", "names nothing")),
    Case("run-variants-twice", ("run", "--model", "m.onnx", "--variants", "fp32,int8,fp32", *DB),
         ("--variants 'fp32,int8,fp32'", "fp32 given twice")),
    Case("run-engines-empty", ("run", "--model", "m.onnx", "--engines", " , ", *DB), ("--engines ' , '", "names nothing")),
    Case("run-input-twice", ("run", "--model", "m.onnx", "--input", "x=1x3x8x8", "--input", "x=1x3x16x16", *DB),
         ("--input x=1x3x8x8 --input x=1x3x16x16", "'x' is given more than once")),
    Case("run-input-with-spec", ("run", SPEC, "--input", "x=1x3x8x8", *DB), ("--input goes with --model",)),
    Case("run-spec-and-model", ("run", SPEC, "--model", "m.onnx", *DB), ("a spec file or --model, not both",)),
    Case("run-nothing-to-run", ("run", *DB), ("give a spec file", "--model MODEL.onnx")),
    Case("run-empty-spec-path", ("run", "", *DB), parser_error("run", "argument spec", "an empty path")),
    Case("run-two-specs", ("run", SPEC, SPEC, *DB), parser_error("run", "unrecognized arguments", "ppocr.yaml")),
    # -- nightly -----------------------------------------------------------------------------------
    Case("nightly-without-report", ("nightly", SPEC, *DB), parser_error("nightly", "required", "--report")),
    Case("nightly-without-spec", ("nightly", *DB), parser_error("nightly", "required", "spec")),
    Case("nightly-empty-report-path", ("nightly", SPEC, "--report", "", *DB), ("argument --report", "an empty path")),
    # -- dashboard ---------------------------------------------------------------------------------
    Case("dashboard-port-zero", ("dashboard", "--port", "0", *DB), parser_error("dashboard", "--port", "'0'",
                                                                              "1 to 65535")),
    Case("dashboard-port-too-large", ("dashboard", "--port", "70000", *DB), ("--port", "'70000'", "1 to 65535")),
    Case("dashboard-port-not-a-number", ("dashboard", "--port", "http", *DB), ("--port", "'http'", "whole number")),
    Case("dashboard-address-is-a-url", ("dashboard", "--address", "http://0.0.0.0", *DB),
         ("--address", "'http://0.0.0.0'", "not an IP address or host name")),
    Case("dashboard-address-not-on-this-machine", ("dashboard", "--address", "192.0.2.1", "--port", "{port}", *DB),
         ("--address 192.0.2.1 --port {port}", "cannot listen there")),
    # -- boards, db, and edgefarm itself -----------------------------------------------------------
    Case("boards-release-not-quarantined", ("boards", "--release", "local", *DB),
         ("--release local", "'local' is not in quarantine")),
    Case("boards-unknown-flag", ("boards", "--releese", "local", *DB), parser_error("boards", "--releese")),
    Case("db-without-subcommand", ("db",), parser_error("db", "required", "{upgrade,current}")),
    Case("db-unknown-subcommand", ("db", "downgrade", *DB), parser_error("db", "'downgrade'", "'upgrade'")),
    Case("db-current-unknown-flag", ("db", "current", "--all", *DB), parser_error("db current", "--all")),
    Case("no-command", (), parser_error("", "required", "COMMAND")),
    Case("unknown-command", ("bench", *DB), parser_error("", "'bench'", "'run'")),
]


def files(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): "dir" if p.is_dir() else "shm" if p.name.endswith("-shm")
            else hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*"))}


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_a_bad_argument_is_refused_in_one_line(case: Case, tmp_path: Path) -> None:
    db = real_database(tmp_path)
    Snapshot.of(db)  # its read-only reading leaves SQLite's -wal/-shm: there from the start
    values = {"db": str(db), "tmp": str(tmp_path), "port": str(free_port())}
    fill = lambda s: s.format(**values) if "{" in s and "{upgrade" not in s else s  # noqa: E731
    case = dataclasses.replace(case, argv=tuple(map(fill, case.argv)), needles=tuple(map(fill, case.needles)))
    before = files(tmp_path)
    line = assert_refused(case, tmp_path, db)
    assert files(tmp_path) == before, f"files were made or changed: {case.argv}"
    assert "\n" not in line
