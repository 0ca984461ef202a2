"""Command line of the agent on a board.

    python agent-<hash>.pyz run job.json --out result.json
    python agent-<hash>.pyz probe
    python agent-<hash>.pyz ls DIR          # file names in DIR as JSON ([] when DIR is absent)
    python agent-<hash>.pyz clean JOBDIR    # remove a finished job's work directory
    python agent-<hash>.pyz prune DIR --max-mb N   # bound the artifact cache, LRU first
    python agent-<hash>.pyz release ACTION ROOT ... # deployed bundles (agent/releases.py)

``run`` exits 0 whenever a result (ok or failed) was written, non-zero only when even the
result could not be written. ``probe`` prints the protocol, fingerprint and engines as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from typing import Any, List, Mapping, Optional

from agent.protocol import ProtocolError, ResultRecord, failed, make_probe, read_job

EXIT_OK = 0
EXIT_NO_RESULT = 3


def _json_default(value: Any) -> Any:
    """numpy scalars and arrays (from an evaluator, say) as plain JSON values."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "item"):
        return value.item()
    raise TypeError("%s is not JSON serializable" % type(value).__name__)


def _write_json(data: Mapping[str, Any], path: str) -> None:
    """Write via a temporary file, so a reader never sees half a result."""
    tmp = "%s.tmp-%d" % (path, os.getpid())
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=1, default=_json_default)
        fh.write("\n")
    os.replace(tmp, path)


def _job_id_of(path: str) -> str:
    """The job id of a job file that failed validation, when it can still be read."""
    try:
        with open(path, encoding="utf-8") as fh:
            return str(json.load(fh).get("job_id", ""))
    except Exception:
        return ""


def cmd_run(job_path: str, out_path: str) -> int:
    result: ResultRecord
    try:
        try:
            job = read_job(job_path)
        except (OSError, ValueError, ProtocolError, AttributeError) as exc:
            result = failed(_job_id_of(job_path), "agent", "cannot read job %s: %s" % (job_path, exc),
                            traceback.format_exc()[-4000:])
        else:
            from agent.job import run_job  # after the job is read: numpy is imported only now

            workdir = os.path.dirname(os.path.abspath(job_path))  # artifacts sit beside the job
            with open(os.path.join(workdir, PID_FILE), "w") as fh:
                fh.write("%d\n" % os.getpid())
            result = run_job(job, workdir)
    except Exception as exc:  # the last line of defence: still try to write a failed result
        result = failed("", "agent", "agent error: %s" % exc, traceback.format_exc()[-4000:])
    try:
        _write_json(result, out_path)
    except Exception as exc:
        print("agent: cannot write result %s: %s" % (out_path, exc), file=sys.stderr)
        return EXIT_NO_RESULT
    failure = result.get("failure") or {}
    try:  # a summary for a person reading the log; the result file is what counts
        print("job %s: %s%s" % (result.get("job_id"), result.get("status"),
                                " at %s: %s" % (failure.get("stage"), failure.get("message")) if failure else ""))
    except Exception:
        pass
    return EXIT_OK


def cmd_probe(workdir: Optional[str]) -> int:
    from agent.engines import probe_engines
    from agent.fingerprint import collect, disk_free_mb

    report = make_probe(collect(), probe_engines(), disk_free_mb(workdir) if workdir else None)
    json.dump(report, sys.stdout, indent=1, default=_json_default)
    sys.stdout.write("\n")
    return EXIT_OK


def cmd_ls(directory: str) -> int:
    path = os.path.expanduser(directory)
    names = sorted(os.listdir(path)) if os.path.isdir(path) else []
    json.dump(names, sys.stdout)
    sys.stdout.write("\n")
    return EXIT_OK


PID_FILE = "agent.pid"


def cmd_clean(directory: str) -> int:
    import shutil

    path = os.path.abspath(os.path.expanduser(directory))
    # Only ever a job directory (<root>/jobs/<job id>): a wrong argument must not wipe a board.
    if os.path.basename(os.path.dirname(path)) != "jobs":
        print("agent: refusing to clean %s: not a job work directory" % path, file=sys.stderr)
        return 2
    _stop_stale_agent(path)
    shutil.rmtree(path, ignore_errors=True)
    return EXIT_OK


def _stop_stale_agent(jobdir: str) -> None:
    """An agent left running by a lost connection would load the board under the next
    measurement: end it. Only a process still working in this very job directory is touched,
    so a reused pid cannot hit anything else."""
    import signal

    try:
        with open(os.path.join(jobdir, PID_FILE)) as fh:
            pid = int(fh.read().strip())
        if os.path.realpath("/proc/%d/cwd" % pid) == os.path.realpath(jobdir):
            os.kill(pid, signal.SIGKILL)
    except (OSError, ValueError):
        pass  # no pid file, no such process, or no /proc: nothing left to stop


def cmd_prune(directory: str, max_mb: float) -> int:
    """Keep the artifact cache under ``max_mb``: the least recently used files go first.

    Prints what was removed as JSON. A file in use is safe: a job's artifacts were touched
    when the job verified them, and the newest files are the last to go. A packed model's
    unpacked folder (``<file>.d``) counts with its file and goes with it. Only the files the
    controller pushed, named by their sha256, are ever candidates: a work directory set to a
    folder that holds other files loses none of them.
    """
    import re
    import shutil

    pushed = re.compile(r"^[0-9a-f]{64}(\.[A-Za-z0-9]+)*$")  # sha256 + the artifact's own suffix
    path = os.path.expanduser(directory)
    entries = []
    for name in os.listdir(path) if os.path.isdir(path) else []:
        full = os.path.join(path, name)
        if pushed.match(name) and os.path.isfile(full):
            st = os.stat(full)
            unpacked = full + ".d"
            extra = sum(os.path.getsize(os.path.join(unpacked, f)) for f in os.listdir(unpacked)) \
                if os.path.isdir(unpacked) else 0
            entries.append((st.st_mtime, st.st_size + extra, name))
    total = sum(size for _, size, _ in entries)
    removed = []
    for _, size, name in sorted(entries):
        if total <= max_mb * 1e6:
            break
        os.remove(os.path.join(path, name))
        shutil.rmtree(os.path.join(path, name + ".d"), ignore_errors=True)
        total -= size
        removed.append(name)
    json.dump({"removed": removed, "kept_mb": total / 1e6}, sys.stdout)
    sys.stdout.write("\n")
    return EXIT_OK


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="agent", description="EdgeFarm agent: runs benchmark jobs on a board.")
    sub = parser.add_subparsers(dest="command")
    run = sub.add_parser("run", help="run one job file and write its result")
    run.add_argument("job", help="job.json; its artifact files sit in the same folder")
    run.add_argument("--out", default="result.json", help="where to write the result JSON")
    sub.add_parser("probe", help="print this board's fingerprint and engines as JSON").add_argument(
        "--workdir", help="also report the free disk space where the agent keeps its files")
    sub.add_parser("ls", help="list a directory's file names as JSON").add_argument("dir")
    sub.add_parser("clean", help="remove a job work directory").add_argument("dir")
    prune = sub.add_parser("prune", help="keep an artifact cache under a size, least recently used first")
    prune.add_argument("dir")
    prune.add_argument("--max-mb", type=float, required=True)
    from agent.releases import add_parser as add_release_parser

    add_release_parser(sub)
    args = parser.parse_args(argv)
    if args.command == "release":
        from agent.releases import main as release_main

        if args.action is None:
            parser.parse_args(["release", "--help"])
        return release_main(args)
    if args.command == "run":
        return cmd_run(args.job, args.out)
    if args.command == "probe":
        return cmd_probe(args.workdir)
    if args.command == "ls":
        return cmd_ls(args.dir)
    if args.command == "clean":
        return cmd_clean(args.dir)
    if args.command == "prune":
        return cmd_prune(args.dir, args.max_mb)
    parser.print_help(sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
