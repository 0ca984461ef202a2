"""The ``edgefarm`` command line.

    edgefarm run SPEC.yaml | --model M.onnx   measure every variant x engine x board, store it
    edgefarm boards                          what each board is and which engines it has
    edgefarm select                          the best engine + variant per (model, chip)
    edgefarm variants                        what each variant's recipe did
    edgefarm nightly SPEC.yaml --report DIR  run, judge each benchmark against its history, exit 1 on regression
    edgefarm bisect --model M --engine E --versions A..B   the first engine release where M regressed
    edgefarm dashboard                       the Streamlit app over the database
    edgefarm db upgrade | current            the database's schema revision: upgrade it in place, or print it
    edgefarm bundle --chip C --model M --out D   a deployment bundle from the selection for a chip
    edgefarm deploy BUNDLE --board B         install it on boards: verify, switch, smoke-test, roll back on failure
    edgefarm deployments                     what runs where, and drift from what the database says
    edgefarm predict --board B IMAGE         run a board's current bundle on an image
    edgefarm worker --address HEAD:PORT --host NAME   join a farm's Ray cluster as the host of NAME's boards
    edgefarm cluster                         the Ray cluster's nodes, their hosts and CPUs, and the boards each serves

A user's mistake (a bad spec, a missing model, a flag's value out of range, a database URL that
points nowhere) is one line on stderr and exit status 2; docs/cli.md lists every command, its flags
and the exit statuses. Only ``run``, ``nightly`` and ``db upgrade`` make a database; the others
refuse one that is not there.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import math
import os
import re
import socket
import sys
from pathlib import Path
from typing import Any, NoReturn

from controller.errors import UserError

EXIT_OK = 0
EXIT_REGRESSION = 1
EXIT_USAGE = 2
EXIT_NOTHING_RAN = 3
EXIT_INTERRUPTED = 130


class Parser(argparse.ArgumentParser):
    """argparse with its errors in one line that names the command: ``edgefarm select: error:
    argument --budget: ... (see edgefarm select --help)``, exit status 2. Subcommands' parsers are
    of this class too (``add_subparsers`` uses the parent's class)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.commands: dict[str, Parser] = {}  # subcommand name -> its parser

    def error(self, message: str) -> NoReturn:
        line = " ".join(message.split())  # argparse's messages are one line; make sure
        self.exit(EXIT_USAGE, f"{self.prog}: error: {line} (see {self.prog} --help)\n")

    def command(self, sub: argparse._SubParsersAction[Parser], name: str, **kwargs: Any) -> Parser:
        parser = sub.add_parser(name, **kwargs)
        self.commands[name] = parser
        return parser


# -- flag values, checked as the spec's are -----------------------------------------------------

def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def _budget(text: str) -> float:
    value = _number(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"{text!r} is outside [0, 1] (the largest accuracy drop accepted, "
                                         "e.g. 0.01)")
    return value


def _milliseconds(text: str) -> float:
    value = _number(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of milliseconds")
    return value


def _integer(text: str, low: int, high: int | None, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < low or (high is not None and value > high):
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}")
    return value


def _run_id(text: str) -> int:
    return _integer(text, 1, None, "a run id (runs are numbered from 1; edgefarm dashboard lists them)")


def _port(text: str) -> int:
    return _integer(text, 1, 65535, "a TCP port (1 to 65535)")


def _path(text: str) -> Path:
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty path")
    return Path(text)


# An IP address or a host name (RFC 1123 labels): a URL or a port here is a mistake, caught before
# a name lookup that could wait on a DNS server.
_HOST = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$")


def _address(text: str) -> str:
    try:
        ipaddress.ip_address(text)
        return text
    except ValueError:
        pass
    if not _HOST.match(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not an IP address or host name (e.g. 127.0.0.1, "
                                         "0.0.0.0 for every interface, or this machine's name)")
    return text


def _head(text: str) -> str:
    """``HOST:PORT`` of a Ray head."""
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT, a Ray head's address such as 10.0.0.5:6379")
    try:
        _address(host.strip("[]"))
        _port(port)
    except argparse.ArgumentTypeError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT, a Ray head's address such as 10.0.0.5:6379 "
                                         f"({exc})") from None
    return text


def _host(text: str) -> str:
    from controller.config.inventory import check_host

    try:
        return check_host(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: {exc}") from None


def _resources(text: str) -> dict[str, float]:
    import json

    from controller.run.worker import check_resources

    try:
        return check_resources(json.loads(text))
    except (ValueError, json.JSONDecodeError) as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: {exc}") from None


def _version_range(text: str) -> tuple[str, str]:
    """``A..B``: two releases, the older first (PEP 440 versions, as the package index has them)."""
    from packaging.version import InvalidVersion, Version

    a, sep, b = (part.strip() for part in text.partition(".."))
    if not sep or not a or not b:
        raise argparse.ArgumentTypeError(f"{text!r} is not A..B, two releases such as 1.19.2..1.20.1")
    try:
        older, newer = Version(a), Version(b)
    except InvalidVersion as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: {exc} (a release number such as 1.19.2)") from None
    if older >= newer:
        raise argparse.ArgumentTypeError(f"{text!r}: A must be an older release than B")
    return a, b


def _package(text: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?", text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a package name (e.g. onnxruntime-gpu)")
    return text


def _requirement(text: str) -> str:
    from packaging.requirements import InvalidRequirement, Requirement

    try:
        Requirement(text)
    except InvalidRequirement as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not a requirement such as 'numpy<2' ({exc})") from None
    return text


def _db_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--db", metavar="URL", help="SQLAlchemy URL (default: $EDGEFARM_DB, else sqlite:///edgefarm.db)")


def _parser() -> Parser:
    parser = Parser(prog="edgefarm", description="Benchmark and deploy AI models on a farm of edge boards.",
                    epilog="exit status: 0 done, 1 nightly found a regression, 2 a mistake in the input (one line on "
                           "stderr says which), 3 run or nightly: no job could run (every board skipped; the "
                           "reasons on stderr), 130 interrupted. docs/cli.md has every command and flag.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = parser.command(sub, "run", help="run the job a spec describes, or one ONNX model with no spec")
    run.add_argument("spec", nargs="?", type=_path, help="spec YAML (see examples/ppocr.yaml)")
    run.add_argument("--model", type=_path, help="an ONNX model to measure without writing a spec")
    run.add_argument("--input", action="append", default=[], metavar="NAME=DIMS",
                     help="fixed shape of a dynamic input, e.g. x=1x3x224x224 (repeatable)")
    run.add_argument("--variants", help="comma-separated, e.g. fp32,fp16,int8")
    run.add_argument("--engines", help="comma-separated, e.g. onnxruntime,openvino")
    run.add_argument("--data", type=_path, metavar="PATH",
                     help="your labelled images: a folder of class sub-folders, a CSV of path,label, or a COCO "
                          "JSON file; without it, accuracy is agreement with fp32 on seeded inputs")
    run.add_argument("--task", choices=["classification", "detection"],
                     help="with --data (default: detection for a .json file, else classification)")
    run.add_argument("--labels", type=_path, metavar="FILE",
                     help="class names, one per line, in the model's output order (default: sorted folder names)")
    run.add_argument("--preprocess", action="append", default=[], metavar="KEY=VALUE",
                     help="resize=WxH, resize_short=N, crop=N|WxH, letterbox=WxH, scale=F, mean=A,B,C, std=A,B,C, "
                          "color=rgb|bgr, layout=nchw|nhwc, dtype=float32|float16|uint8 (repeatable)")
    run.add_argument("--postprocess", action="append", default=[], metavar="KEY=VALUE",
                     help="detection: decoder=yolo|ssd, score=F, iou=F, metric=mAP50|mAP50-95, ... (repeatable)")
    run.add_argument("--inventory", type=_path, help="inventory YAML (default: the local board)")
    run.add_argument("--ray-address", help="join this Ray cluster instead of starting a local Ray")
    run.add_argument("--resume", type=_run_id, metavar="RUN_ID",
                     help="finish an interrupted run: only its missing jobs run, stored results stay")
    _db_flag(run)

    boards = parser.command(sub, "boards", help="list boards, their chips, reachability, engines and quarantine")
    boards.add_argument("--inventory", type=_path, help="inventory YAML (default: the local board)")
    boards.add_argument("--release", metavar="BOARD", help="end a board's quarantine, so runs use it again")
    _db_flag(boards)

    sel = parser.command(sub, "select", help="print the engine-selection table")
    sel.add_argument("--budget", type=_budget, default=0.01, help="largest accepted accuracy drop against fp32, in [0, 1]")
    sel.add_argument("--objective", choices=["latency", "throughput"], default="latency",
                     help="lowest p50 at batch 1, or most items/s at any measured batch size")
    sel.add_argument("--latency-ceiling", type=_milliseconds, metavar="MS",
                     help="with --objective throughput: a batch's p50 must stay under this")
    sel.add_argument("--format", choices=["table", "md", "csv", "json"], default="table",
                     help="md: Markdown; json: what deployment code reads")
    _db_flag(sel)

    var = parser.command(sub, "variants", help="what each variant's recipe did: fusions, calibration, float nodes, pruning")
    var.add_argument("--model", help="only this model")
    var.add_argument("--format", choices=["table", "json"], default="table", help="json: the full records")
    _db_flag(var)

    nightly = parser.command(sub, "nightly", help="run a spec and judge every benchmark against its history")
    nightly.add_argument("spec", type=_path, help="spec YAML, as for run")
    nightly.add_argument("--report", type=_path, required=True, metavar="DIR",
                         help="writes DIR/report.md and DIR/junit.xml")
    nightly.add_argument("--inventory", type=_path, help="inventory YAML (default: the local board)")
    nightly.add_argument("--ray-address", help="join this Ray cluster instead of starting a local Ray")
    _db_flag(nightly)

    bis = parser.command(sub, "bisect", help="the first release of an engine where a benchmark regressed",
                         epilog="exit status: 0 no regression from A to B, 1 the release that brought it is named, "
                                "2 a mistake in the input (one line on stderr says which). docs/bisect.md says how.")
    bis.add_argument("--model", required=True, metavar="NAME",
                     help="a model the database has measured (its newest run's spec says how), or one of --spec")
    bis.add_argument("--engine", required=True, help="an engine the agent runs, e.g. onnxruntime or openvino")
    bis.add_argument("--versions", required=True, type=_version_range, metavar="A..B",
                     help="a good release and a later one that regressed, e.g. 1.19.2..1.20.1")
    bis.add_argument("--board", metavar="NAME", help="the board to measure on (default: the spec's only board)")
    bis.add_argument("--config", default="fp32", metavar="LABEL",
                     help="the configuration, as `edgefarm select` labels it: fp32 (default), int8, fp32@bf16, ...")
    bis.add_argument("--spec", type=_path, help="a spec with the model, instead of the newest run that measured it")
    bis.add_argument("--package", type=_package, metavar="NAME",
                     help="the package the engine is released as, e.g. onnxruntime-gpu (default: the engine's own)")
    bis.add_argument("--require", action="append", default=[], type=_requirement, metavar="REQ",
                     help="installed with every release, e.g. 'numpy<2' for releases built before numpy 2 (repeatable)")
    bis.add_argument("--format", choices=["table", "json"], default="table", help="json: every figure of every release")
    bis.add_argument("--inventory", type=_path, help="inventory YAML (default: the local board)")
    bis.add_argument("--ray-address", help="join this Ray cluster instead of starting a local Ray")
    _db_flag(bis)

    dash = parser.command(sub, "dashboard", help="start the Streamlit dashboard")
    dash.add_argument("--port", type=_port, default=8501, help="the TCP port to listen on (default 8501)")
    dash.add_argument("--address", type=_address, default="127.0.0.1", metavar="ADDR",
                      help="the address to listen on (default 127.0.0.1: this machine only; docs/results.md "
                           "says how to serve a team behind an authenticating proxy)")
    _db_flag(dash)

    bundle = parser.command(sub, "bundle", help="build a deployment bundle for a chip from the selection table")
    bundle.add_argument("--chip", required=True, help="the chip, as `edgefarm select` names it")
    bundle.add_argument("--model", action="append", required=True, metavar="NAME",
                        help="a model of the database (repeatable; an OCR detector, classifier and recognizer "
                             "together make one pipeline)")
    bundle.add_argument("--budget", type=_budget, default=0.01, help="largest accepted accuracy drop against fp32")
    bundle.add_argument("--engine", help="with --variant: this engine instead of the selection's (one --model only)")
    bundle.add_argument("--variant", help="with --engine: this configuration label, e.g. int8 or fp32@bf16")
    bundle.add_argument("--out", type=_path, required=True, metavar="DIR|FILE.tar.gz",
                        help="a new folder, or a .tar.gz file")
    _db_flag(bundle)

    deploy = parser.command(sub, "deploy", help="install a bundle on boards, smoke-test it, roll back on failure")
    deploy.add_argument("bundle", nargs="?", type=_path, help="a bundle folder or .tar.gz from `edgefarm bundle`")
    deploy.add_argument("--board", action="append", required=True, metavar="NAME", help="a board (repeatable)")
    deploy.add_argument("--canary", type=lambda t: _integer(t, 1, None, "a number of boards (1 or more)"),
                        metavar="N", help="deploy to the first N boards first; the rest only if all of them pass")
    deploy.add_argument("--rollback", action="store_true", help="go back one release on each --board")
    deploy.add_argument("--serve", type=_port, metavar="PORT",
                        help="also run the bundle's HTTP server on the board, as a service that outlives the deploy")
    deploy.add_argument("--serve-address", type=_address, default="127.0.0.1", metavar="ADDR",
                        help="with --serve: the address the server listens on (default 127.0.0.1: programs on the "
                             "board only; 0.0.0.0 lets the network reach it, unauthenticated)")
    deploy.add_argument("--latency-factor", type=_number, default=3.0, metavar="F",
                        help="the smoke test fails when a model's inference p50 on the board exceeds F times the "
                             "farm's figure (or the whole pipeline's, where the farm measured it end to end)")
    deploy.add_argument("--keep", type=lambda t: _integer(t, 2, None, "a number of releases (2 or more)"), default=3,
                        metavar="N", help="releases kept on each board (default 3)")
    deploy.add_argument("--inventory", type=_path, help="inventory YAML (default: the local board)")
    _db_flag(deploy)

    deps = parser.command(sub, "deployments", help="what runs where: current and previous bundle, status, drift")
    deps.add_argument("--board", metavar="NAME", help="only this board")
    deps.add_argument("--inventory", type=_path, help="inventory YAML (default: the local board)")
    deps.add_argument("--format", choices=["table", "json"], default="table")
    _db_flag(deps)

    predict = parser.command(sub, "predict", help="run a board's current bundle on an image")
    predict.add_argument("image", type=_path, help="a JPEG or PNG file on this machine")
    predict.add_argument("--board", required=True, metavar="NAME")
    predict.add_argument("--json", action="store_true", help="print the JSON result")
    predict.add_argument("--inventory", type=_path, help="inventory YAML (default: the local board)")
    _db_flag(predict)

    worker = parser.command(sub, "worker", help="join a farm's Ray cluster as a board host, in the foreground",
                            epilog="exit status: 0 left the cluster on Ctrl-C or SIGTERM, 1 the Ray node stopped by "
                                   "itself (the head went away), 2 a mistake in the input or a head that does not "
                                   "answer or refuses the node. docs/cluster.md says how to set up a lab.")
    worker.add_argument("--address", required=True, type=_head, metavar="HEAD_HOST:PORT",
                        help="the Ray head's address, as `ray start --head` printed it (port 6379 by default)")
    worker.add_argument("--host", required=True, type=_host, metavar="NAME",
                        help="the host this machine is: the inventory's boards with `host: NAME` run here")
    worker.add_argument("--resources", type=_resources, default={}, metavar="JSON",
                        help="what this node offers, e.g. '{\"CPU\": 4, \"GPU\": 1}' (default: what Ray finds)")
    worker.add_argument("--inventory", type=_path, help="inventory YAML: the boards this host serves are probed")

    cluster = parser.command(sub, "cluster", help="the Ray cluster's nodes, their hosts and CPUs, the boards each serves")
    cluster.add_argument("--ray-address", help="the cluster's head (default: a private local Ray, as a run without it)")
    cluster.add_argument("--inventory", type=_path, help="inventory YAML (default: the local board)")
    cluster.add_argument("--format", choices=["table", "json"], default="table")

    db = parser.command(sub, "db", help="the database's schema: upgrade it in place, or print its revision")
    db_sub = db.add_subparsers(dest="db_command", required=True, metavar="{upgrade,current}")
    _db_flag(db.command(db_sub, "upgrade", help="upgrade the database to this EdgeFarm's schema; every row stays"))
    _db_flag(db.command(db_sub, "current", help="print the database's schema revision"))
    return parser


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The arguments, or exit 2 with one line; arguments no parser knows are named by the
    subcommand they were given to, not by ``edgefarm``."""
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        owner = parser.commands.get(getattr(args, "command", None) or "", parser)
        owner = owner.commands.get(getattr(args, "db_command", None) or "", owner)
        owner.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        check_installation()
        return COMMANDS[args.command](args)
    except UserError as exc:  # only what the user can fix; a board's failure is stored, not an exit
        print(f"edgefarm: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("edgefarm: interrupted; results measured so far are stored", file=sys.stderr)
        return EXIT_INTERRUPTED


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


def _names(flag: str, text: str | None) -> list[str] | None:
    """A comma-separated flag's names; None when not given. Naming nothing, or a name twice, is refused."""
    if text is None:
        return None
    names = [x.strip() for x in text.split(",") if x.strip()]
    if not names:
        example = {"--variants": "fp32,int8", "--engines": "onnxruntime,openvino"}.get(flag, "a,b")
        raise UserError(f"{flag} {text!r}: names nothing; give comma-separated names, e.g. {flag} {example}")
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise UserError(f"{flag} {text!r}: {', '.join(twice)} given twice")
    return names


def _inputs(flags: list[str]) -> list[str]:
    """``--input NAME=DIMS`` flags: the same input named twice is refused (the last would win
    silently); the form of each is checked where it is parsed (``parse_input_flag``)."""
    names = [flag.split("=", 1)[0].strip() for flag in flags if "=" in flag]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        given = " ".join(f"--input {f}" for f in flags if f.split("=", 1)[0].strip() in twice)
        raise UserError(f"{given}: the input {twice[0]!r} is given more than once")
    return flags


def _load(args: argparse.Namespace):  # -> LoadedSpec
    from controller.config.spec import load_spec, spec_from_model

    if getattr(args, "model", None):
        if args.spec:
            raise UserError("give a spec file or --model, not both")
        data_flags = {"--task": args.task, "--labels": args.labels, "--preprocess": args.preprocess,
                      "--postprocess": args.postprocess}
        if not args.data and any(data_flags.values()):
            raise UserError(f"{', '.join(k for k, v in data_flags.items() if v)}: go with --data PATH (your labelled "
                            "images); without --data the model is measured on seeded inputs")
        return spec_from_model(args.model, _inputs(args.input), _names("--variants", args.variants),
                               _names("--engines", args.engines), dataset=args.data, task=args.task,
                               labels=args.labels, preprocess=args.preprocess, postprocess=args.postprocess)
    if not args.spec:
        raise UserError("give a spec file (edgefarm run examples/ppocr.yaml) or --model MODEL.onnx")
    given = [flag for flag in ("--input", "--variants", "--engines", "--data", "--task", "--labels", "--preprocess",
                               "--postprocess") if getattr(args, flag[2:], None)]
    if given:
        raise UserError(f"{', '.join(given)} go{'es' if len(given) == 1 else ''} with --model; "
                        "a spec file says them itself")
    return load_spec(args.spec)


def cmd_run(args: argparse.Namespace) -> int:
    from controller.config.inventory import load_inventory
    from controller.results.database import check_db
    from controller.run.execute import execute

    resuming = args.resume and not (args.spec or args.model)
    # The database first, making nothing: a wrong URL is one line now, not after the variants are built.
    check_db(args.db, create=not resuming)
    loaded = _resumed_spec(args) if resuming else _load(args)
    inventory, source = load_inventory(args.inventory)
    outcome = execute(loaded, inventory, source, args.db, args.ray_address, resume=args.resume)
    _finish(args.db, outcome, [m.name for m in loaded.spec.models], loaded.spec.selection)
    if why := outcome.nothing_ran():  # a cron job must not read an empty run as a measured one
        print(f"edgefarm: run {outcome.run_id}: {why}", file=sys.stderr)
        return EXIT_NOTHING_RAN
    return EXIT_OK


def _resumed_spec(args: argparse.Namespace):  # -> LoadedSpec
    """The spec a run was started with, as the database keeps it."""
    from controller.config.spec import LoadedSpec, Spec
    from controller.results.database import describe, open_db
    from controller.results.store import Run
    from controller.validation import parse

    with open_db(args.db, create=False)() as db:
        run = db.get(Run, args.resume)
        if run is None:
            raise UserError(f"--resume {args.resume}: there is no run {args.resume} in {describe(args.db)}")
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

    # Releasing needs the database; listing reads its quarantines where there is one (a missing
    # file stays missing, a URL that cannot be a database is refused), before probing any board.
    if args.release:
        print(release(args.release, args.db))
        return EXIT_OK
    print(list_boards(args.inventory, args.db))
    return EXIT_OK


def cmd_select(args: argparse.Namespace) -> int:
    from controller.results.database import open_db
    from controller.results.selection import render, selections

    if args.latency_ceiling is not None and args.objective != "throughput":
        raise UserError(f"--latency-ceiling {args.latency_ceiling:g} applies to --objective throughput only "
                        f"(a batch's p50 under it); add --objective throughput, or drop it")
    with open_db(args.db, create=False)() as session:
        print(render(selections(session, args.budget, args.objective, args.latency_ceiling), args.format))
    return EXIT_OK


def cmd_variants(args: argparse.Namespace) -> int:
    from sqlalchemy import select

    from controller.results.database import describe, open_db
    from controller.results.store import Model
    from controller.results.variant_records import latest_variants, render

    with open_db(args.db, create=False)() as session:
        if args.model is not None:
            known = sorted(set(session.scalars(select(Model.name))))
            if args.model not in known:
                stored = f"the models stored are {', '.join(known)}" if known else "no model is stored yet"
                raise UserError(f"--model {args.model!r}: no model of that name in {describe(args.db)}; {stored}")
        print(render(latest_variants(session, args.model), args.format))
    return EXIT_OK


def cmd_nightly(args: argparse.Namespace) -> int:
    from controller.config.inventory import load_inventory
    from controller.results.database import check_db
    from controller.run.nightly import NOTHING_RAN, REGRESSION, nightly

    check_db(args.db)  # before the report folder is made and the variants built
    loaded = _load(args)
    inventory, source = load_inventory(args.inventory)
    verdict = nightly(loaded, inventory, source, args.db, args.report, args.ray_address)
    return {NOTHING_RAN: EXIT_NOTHING_RAN, REGRESSION: EXIT_REGRESSION}.get(verdict, EXIT_OK)


def cmd_bisect(args: argparse.Namespace) -> int:
    from controller.versions.bisect import bisect_command

    return EXIT_REGRESSION if bisect_command(args) else EXIT_OK


def _listenable(address: str, port: int) -> None:
    """Refuse an address this machine does not have, or a port already taken, before Streamlit
    starts (it would say so in a log, after a browser tab has opened on nothing)."""
    try:
        family, kind, proto, _, where = socket.getaddrinfo(address, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as exc:
        raise UserError(f"--address {address}: not an address of this machine ({exc.strerror})") from None
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as Streamlit's server does
        try:
            probe.bind(where)
        except OSError as exc:
            raise UserError(f"--address {address} --port {port}: cannot listen there ({exc.strerror})") from None


def cmd_dashboard(args: argparse.Namespace) -> int:
    import dashboard
    from controller.results.database import check_db, database_url

    # As the page will open it, now: a URL that points nowhere, a missing file or an older schema
    # is one line here and a non-zero exit, not a message in a browser tab.
    check_db(args.db, create=False)
    _listenable(args.address, args.port)
    if not ipaddress.ip_address(socket.getaddrinfo(args.address, None)[0][4][0]).is_loopback:
        print(f"edgefarm: the dashboard listens on {args.address}: anyone who can reach it reads every result; "
              "docs/results.md says how to put it behind a proxy that asks who they are", file=sys.stderr)
    app = Path(dashboard.__file__).parent / "app.py"
    env = dict(os.environ, EDGEFARM_DB=database_url(args.db))
    argv = [sys.executable, "-m", "streamlit", "run", str(app), "--server.address", args.address,
            "--server.port", str(args.port), "--server.headless", "true", "--browser.gatherUsageStats", "false"]
    os.execvpe(argv[0], argv, env)
    return EXIT_OK  # not reached: the process is now Streamlit


def cmd_db(args: argparse.Namespace) -> int:
    from controller.results.database import (
        database_url,
        describe,
        head_revision,
        schema_state,
        upgrade_command,
        upgrade_db,
    )

    head, where = head_revision(), describe(args.db)
    if args.db_command == "upgrade":
        before, after = upgrade_db(args.db)
        print(f"{where}: schema revision {after} (head), was {before or 'none'}" if before != after
              else f"{where}: already at schema revision {after} (head)")
        return EXIT_OK
    revision, tables = schema_state(args.db)  # a SQLite file that is not there is refused, not made
    if revision == head:
        print(f"{revision} (head)")
    elif revision is None and not tables:
        print(f"none (no EdgeFarm tables yet: `edgefarm run` or `edgefarm db upgrade` makes them at {head})")
    else:
        print(f"{revision or 'none'} (this EdgeFarm needs {head}: {upgrade_command(database_url(args.db))})")
    return EXIT_OK


def cmd_bundle(args: argparse.Namespace) -> int:
    from controller.deploy.bundler import bundle_command

    return bundle_command(args)


def cmd_deploy(args: argparse.Namespace) -> int:
    from controller.deploy.deployer import deploy_command

    return deploy_command(args)


def cmd_deployments(args: argparse.Namespace) -> int:
    from controller.deploy.status import deployments_command

    return deployments_command(args)


def cmd_predict(args: argparse.Namespace) -> int:
    from controller.deploy.deployer import predict_command

    return predict_command(args)


def cmd_worker(args: argparse.Namespace) -> int:
    from controller.run.worker import serve

    return serve(args.address, args.host, args.resources, args.inventory)


def cmd_cluster(args: argparse.Namespace) -> int:
    import ray

    from controller.config.inventory import load_inventory
    from controller.run.cluster import ensure_ray, nodes, render

    inventory, _ = load_inventory(args.inventory)
    # Ray prints the cluster's own messages (a node marked dead, say) on the driver's stdout, from a
    # thread of its own: here they go to stderr, and Ray is left before the answer is printed, so
    # that stdout is the table or the JSON alone.
    with contextlib.redirect_stdout(sys.stderr):
        ensure_ray(args.ray_address)
        answer = render(nodes(inventory), args.format)
        ray.shutdown()
    print(answer)
    return EXIT_OK


COMMANDS = {"run": cmd_run, "boards": cmd_boards, "select": cmd_select, "variants": cmd_variants, "nightly": cmd_nightly,
            "bisect": cmd_bisect, "dashboard": cmd_dashboard, "db": cmd_db, "bundle": cmd_bundle, "deploy": cmd_deploy,
            "deployments": cmd_deployments, "predict": cmd_predict, "worker": cmd_worker, "cluster": cmd_cluster}

if __name__ == "__main__":
    sys.exit(main())
