"""``python3 DIR/bundle.pyz COMMAND``: the bundle's command line (the zipapp's entry point).

- ``predict IMAGE [IMAGE ...] [--json]``: a readable line per image (or one JSON document, a list
  when several images);
- ``serve --port N [--host 127.0.0.1]``: the HTTP service (``agent.runtime.serve``);
- ``check [--json]``: the files against the manifest, and the board against the requirements;
- ``smoke [--rounds N]``: every golden input N rounds (the first a warm-up), outputs and latency
  figures as one JSON document for the controller to judge.

The bundle is the folder the zipapp sits in (``--bundle DIR`` says another, for tests). Exit
status: 0 ok, 1 the bundle or the board is not fit (edited, a requirement unmet, a model that will
not load), 2 bad usage or an input that cannot be read. Errors are one line on stderr, no traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from typing import Any, Dict, List, NoReturn, Optional

from agent.runtime.bundle import Bundle, BundleError
from agent.runtime.inputs import InputError

PROG = "bundle.pyz"
EXIT_OK, EXIT_UNFIT, EXIT_USAGE = 0, 1, 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, not argparse's usage block
        self.exit(EXIT_USAGE, "%s: error: %s (see %s --help)\n" % (PROG, message, PROG))


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, description="Run the EdgeFarm deployment bundle this file belongs to.")
    p.add_argument("--bundle", metavar="DIR", help="the bundle folder (default: the folder holding this file)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    pr = sub.add_parser("predict", help="run the bundle on images and print the results")
    pr.add_argument("images", nargs="+", metavar="IMAGE")
    pr.add_argument("--json", action="store_true", help="one JSON document (a list for several images)")
    sv = sub.add_parser("serve", help="answer POST /predict and GET /healthz over HTTP")
    sv.add_argument("--port", type=int, required=True)
    sv.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    ck = sub.add_parser("check", help="verify the files and this board's requirements")
    ck.add_argument("--json", action="store_true")
    sm = sub.add_parser("smoke", help="run the golden inputs; print outputs and latency as JSON")
    sm.add_argument("--rounds", type=int, default=None, help="rounds over the golden inputs, the first a warm-up")
    return p


def _say_error(message: str) -> None:
    sys.stderr.write("%s: error: %s\n" % (PROG, message))


def _dumps(doc: Any, indent: Optional[int] = None) -> str:
    return json.dumps(doc, indent=indent, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o))


def _fit(directory: str) -> Bundle:
    """The bundle, verified, with the board meeting its requirements and its models loaded."""
    bundle = Bundle.open(directory, verify=True)
    problems = bundle.check()
    if problems:
        raise BundleError("; ".join(problems))
    bundle.load()
    return bundle


def describe(result: Dict[str, Any]) -> str:
    """One readable line of a result."""
    if "models" in result and isinstance(result["models"], dict) and "lines" not in result:
        return " ; ".join("%s: %s" % (name, describe(r)) for name, r in result["models"].items())
    if "lines" in result:
        lines = result["lines"]
        return "%d line%s: %s" % (len(lines), "" if len(lines) == 1 else "s", " | ".join(ln["text"] for ln in lines))
    if "top" in result:
        top = result["top"]
        return ", ".join("%s %.3f" % (t["label"], t["score"]) for t in top[:3]) if top else "no class"
    if "objects" in result:
        objs = result["objects"]
        return "%d object%s%s" % (len(objs), "" if len(objs) == 1 else "s", ": " + "; ".join(
            "%s %.2f [%s]" % (o["label"], o["score"], ", ".join("%.0f" % v for v in o["box"])) for o in objs)
            if objs else "")
    if "text" in result:
        return "%r (%.3f)" % (result["text"], result.get("score", 0.0))
    if "label" in result:
        return "%s (%.3f)" % (result["label"], result.get("score", 0.0))
    if "boxes" in result:
        return "%d text box%s" % (len(result["boxes"]), "" if len(result["boxes"]) == 1 else "es")
    if "outputs" in result:
        return "; ".join("%s %s mean %.4g max %.4g" % (o["name"], "x".join(str(d) for d in o["shape"]), o["mean"],
                                                       o["max"]) for o in result["outputs"])
    return _dumps({k: v for k, v in result.items() if k != "timing_ms"})


def _predict(directory: str, args: argparse.Namespace) -> int:
    for path in args.images:  # before any model is loaded: a typo costs nothing
        if not os.path.isfile(path):
            raise InputError("%s: no such file" % path)
        if not os.access(path, os.R_OK):
            raise InputError("%s: cannot be read (permission denied)" % path)
    with _fit(directory) as bundle:
        results = bundle.predict(list(args.images))
    if args.json:
        print(_dumps(results[0] if len(results) == 1 else results))
    else:
        for path, result in zip(args.images, results):
            print("%s: %s  [%.1f ms]" % (path, describe(result), result["timing_ms"]["total"]))
    return EXIT_OK


def _serve(directory: str, args: argparse.Namespace) -> int:
    from agent.runtime.serve import serve

    if not 0 <= args.port <= 65535:
        raise InputError("--port %d: not a TCP port" % args.port)
    bundle = _fit(directory)

    def ready(address: Any) -> None:
        print("serving bundle %s on http://%s:%d" % (bundle.id, address[0], address[1]), flush=True)

    try:
        return serve(bundle, args.host, args.port, ready)
    except OSError as exc:  # the port is taken, the address is not this machine's
        bundle.close()
        raise InputError("cannot listen on %s:%d: %s" % (args.host, args.port, exc.strerror or exc)) from None


def _check(directory: str, args: argparse.Namespace) -> int:
    bundle_id = None
    try:
        bundle = Bundle.open(directory, verify=True)
        bundle_id = bundle.id
        problems = bundle.check()
    except BundleError as exc:
        problems = [str(exc)]
    if args.json:
        print(_dumps({"bundle_id": bundle_id, "ok": not problems, "problems": problems}, indent=1))
    else:
        for line in problems:
            print(line)
        if not problems:
            print("bundle %s: files verified, requirements met" % bundle_id)
    return EXIT_UNFIT if problems else EXIT_OK


def _p50(values: List[float]) -> Optional[float]:
    return round(statistics.median(values), 3) if values else None


def _smoke(directory: str, args: argparse.Namespace) -> int:
    try:
        bundle = _fit(directory)
    except (BundleError, InputError) as exc:
        print(_dumps({"error": str(exc)}))
        return EXIT_UNFIT
    with bundle:
        manifest = bundle.manifest
        inputs = [str(n) for n in (manifest.get("golden") or {}).get("inputs") or []]
        rounds = args.rounds or int((manifest.get("smoke") or {}).get("rounds") or 5)
        if rounds < 1:
            raise InputError("--rounds %d: at least 1" % rounds)
        outputs: Dict[str, Any] = {}
        totals: List[float] = []
        infers: List[float] = []
        per_model: Dict[str, List[float]] = {}
        for r in range(rounds):
            for name in inputs:
                try:
                    result = bundle.predict([os.path.join(bundle.directory, *name.split("/"))])[0]
                except Exception as exc:  # reported for the controller to judge, like a wrong output
                    outputs[name] = {"error": "%s: %s" % (type(exc).__name__, exc)}
                    continue
                outputs[name] = result
                if r == 0 and rounds > 1:
                    continue  # warm-up: first-call allocations and caches are not the steady state
                timing = result["timing_ms"]
                totals.append(float(timing["total"]))
                infers.append(float(timing["infer"]))
                for model, t in (timing.get("models") or {}).items():
                    per_model.setdefault(model, []).append(float(t.get("infer", 0.0)))
    print(_dumps({"bundle_id": bundle.id, "rounds": rounds, "outputs": outputs,
                  "latency_ms": {"total_p50": _p50(totals), "infer_p50": _p50(infers),
                                 "per_model_infer_p50": {m: _p50(v) for m, v in sorted(per_model.items())}}},
                 indent=1))
    return EXIT_OK


COMMANDS = {"predict": _predict, "serve": _serve, "check": _check, "smoke": _smoke}


def main(argv: Optional[List[str]] = None) -> int:
    args = _parser().parse_args(argv)
    directory = args.bundle or os.path.dirname(os.path.abspath(sys.argv[0]))
    try:
        return COMMANDS[args.command](directory, args)
    except InputError as exc:
        _say_error(str(exc))
        return EXIT_USAGE
    except BundleError as exc:
        _say_error(str(exc))
        return EXIT_UNFIT
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # predict | head
        return EXIT_OK
    except Exception as exc:  # an engine's own failure: still one line, named
        _say_error("%s: %s" % (type(exc).__name__, str(exc).strip().splitlines()[0] if str(exc).strip() else ""))
        return EXIT_UNFIT


if __name__ == "__main__":
    sys.exit(main())
