"""A session with one board: push the agent and artifacts, run jobs, bring results back.

The agent is pushed once under its content-hash name (like labgrid's agent) and artifacts
under their sha256, into a cache on the board; a job's work directory holds only job.json and
result.json, and points at the cached files. The agent checks every sha256 before it loads
anything, so a corrupted or stale file is refused on the board itself.
"""

from __future__ import annotations

import json
import posixpath
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

from agent.protocol import (
    PROTOCOL_VERSION,
    BoardConditions,
    Fingerprint,
    JobRecord,
    ProbeRecord,
    ResultRecord,
    failed,
    failure_of,
    sha256_file,
)
from controller.boards.result_check import check_probe, check_result, read_result
from controller.boards.transports import Completed, Transport, open_transport
from controller.config.inventory import BoardSpec
from controller.errors import BoardCommandFailed, BoardUnreachable, CommandTimeout, TransportError, one_line

PROBE_TIMEOUT = 120.0
SMALL_TIMEOUT = 60.0
# Pause before a new attempt after a loss, times the attempt number: a rebooting board or a
# flapping link gets a moment to come back.
RETRY_PAUSE_S = 2.0


class BoardSession:
    def __init__(self, board: BoardSpec, bundle: Path) -> None:
        self.board = board
        self.bundle = bundle
        self.agent_sha256 = sha256_file(bundle)
        self.transport: Transport = open_transport(board)
        self.root = self.transport.resolve(board.workdir or posixpath.join(self.transport.default_workdir, board.name))
        self.agent = posixpath.join(self.root, "agent", bundle.name)
        self.python = board.python or (sys.executable if board.transport == "local" else "python3")
        self._cached: set[str] | None = None
        # A board with concurrency > 1 runs jobs in several threads: their commands may overlap,
        # their file transfers (one SFTP session, one cache listing) may not.
        self._files = threading.RLock()
        self.fingerprint: Fingerprint | None = None
        # How the agent sets the board up before each job (see agent/hygiene.py).
        self.conditions: BoardConditions = {"cpus": board.cpus, "cooldown_s": board.cooldown_s,
                           "max_temperature_c": board.max_temperature_c, "thermal_wait_s": board.thermal_wait_s}

    # -- agent commands --------------------------------------------------------------------

    def _run_agent(self, args: list[str], timeout: float, cwd: str | None = None,
                   python: str | None = None) -> tuple[Completed, bool]:
        """Run the agent with ``args``, its copy on the board re-hashed first, as every artifact is
        (``_VERIFIED_RUN``); a copy that is missing or no longer matches is pushed again once.
        Returns what the command did, and whether the agent had to be pushed."""
        argv = [python or self.python, "-c", _VERIFIED_RUN, self.agent, self.agent_sha256, *args]
        done = self.transport.run(argv, timeout=timeout, cwd=cwd)
        if done.exit_code != AGENT_MISMATCH:
            return done, False
        with self._files:
            self.transport.put(self.bundle, self.agent)
        return self.transport.run(argv, timeout=timeout, cwd=cwd), True

    def run_agent(self, args: list[str], timeout: float, python: str | None = None) -> Completed:
        """Run the hash-verified agent with ``args`` (pushed first where the board lacks it); what it did."""
        return self._run_agent(args, timeout, None, python)[0]

    def put_file(self, local: Path, remote: str) -> None:
        """Copy one file to the board; transfers are serialized (one SFTP session per board)."""
        with self._files:
            self.transport.put(local, remote)

    def _agent(self, *args: str, timeout: float = SMALL_TIMEOUT, cwd: str | None = None,
               python: str | None = None) -> str:
        done, _ = self._run_agent(list(args), timeout, cwd, python)
        if done.exit_code != 0:
            raise BoardCommandFailed(f"agent {args[0]} exited {done.exit_code}: {_tail(done.stderr, 300)}")
        return done.stdout

    def start(self) -> ProbeRecord:
        """Push the agent if the board lacks it and return what the agent finds on the board;
        a board without Python is looked at with shell commands instead."""
        from controller.boards.native.job import native_engines, shell_probe

        probe: ProbeRecord
        if not self.board.agent:
            probe = shell_probe(self)
        else:  # the first agent command pushes the agent where the board lacks it
            probe = _probe(self._agent("probe", "--workdir", self.root, timeout=PROBE_TIMEOUT))
            for engine, python in self.board.engine_python.items():  # that engine as its interpreter sees it
                try:
                    found = _probe(self._agent("probe", timeout=PROBE_TIMEOUT, python=python))["engines"]
                    probe["engines"][engine] = {**found.get(engine, {"available": False}), "python": python}
                except (TransportError, ValueError, KeyError) as exc:
                    probe["engines"][engine] = {"available": False, "version": None,
                                                "reason": f"its interpreter {python} did not run the agent: {exc}"}
        probe["engines"].update(native_engines(self))  # a native tool measures its engine on this board
        problem = check_probe(probe)  # what the agent printed, or the board's shell: planning reads it
        if problem:
            raise TransportError(f"the board's probe record is malformed: {problem}")
        self.fingerprint = probe["fingerprint"]
        return probe

    def push(self, local: Path, sha256: str, force: bool = False) -> str:
        """The artifact's path in the board's cache, pushing it only when it is not there."""
        with self._files:
            if self._cached is None:
                self._cached = self._listing(posixpath.join(self.root, "cache"))
            # The suffix stays: engines pick their loader by it (.onnx, .xml, .nb).
            name = sha256 + local.suffix
            remote = posixpath.join(self.root, "cache", name)
            if force or name not in self._cached:
                self.transport.put(local, remote)
                self._cached.add(name)
            return remote

    def _listing(self, folder: str) -> set[str]:
        if self.board.agent:
            return set(json.loads(self._agent("ls", folder)))
        done = self.transport.run(["ls", "-1", folder], timeout=SMALL_TIMEOUT)
        return set(done.stdout.split()) if done.exit_code == 0 else set()  # no folder yet: nothing cached

    # -- jobs ------------------------------------------------------------------------------

    def run_job(self, job: JobRecord, files: dict[str, tuple[Path, str]], timeout: float) -> ResultRecord:
        """Run one job; every failure comes back as a failed result, never as an exception, and
        whatever the board sent back is checked first (``controller.boards.result_check``).

        A board lost in the middle of a job (link down, sshd or the agent killed) is
        reconnected and the job tried again, up to the board's ``retries``; the result says
        how many attempts it took and why the earlier ones failed.
        """
        notes: list[str] = []
        started_at = time.time()  # the job is this board's from now: its queue wait is not part of it
        for attempt in range(1, self.board.retries + 2):
            if attempt > 1:
                time.sleep(RETRY_PAUSE_S * (attempt - 1))
                try:
                    self.reconnect()
                    self.clean(posixpath.join(self.root, "jobs", job["job_id"]))  # and its stale agent
                except Exception as exc:  # still gone, or back garbled: run_job returns a result, never raises
                    result = failed(job["job_id"], "transport", f"board lost and not back: {one_line(exc)}", lost=True)
                    notes.append(f"attempt {attempt}: {failure_of(result).get('message')}")
                    continue
            try:
                result = self._run_verified(job, files, timeout)
            except Exception as exc:  # noqa: BLE001 - whatever the board or its library raised: this job's failure
                result = failed(job["job_id"], "transport", f"unexpected error talking to the board: {one_line(exc)}")
            if not failure_of(result).get("lost"):
                break
            notes.append(f"attempt {attempt}: {failure_of(result).get('message')}")
        failure = failure_of(result)
        if attempt > 1 and failure.get("lost"):
            failure["message"] = f"board lost during the job on all {attempt} attempts; last: {failure.get('message')}"
        result["attempts"] = attempt
        result["started_at"] = started_at
        result["ended_at"] = time.time()  # the board is done with it: the wait to be stored is not part of it
        result.setdefault("notes", []).extend(notes)
        return result

    def reconnect(self) -> ProbeRecord:
        """A fresh connection and a fresh look at the board: after a loss nothing is assumed."""
        try:
            self.transport.close()
        except TransportError:
            pass  # the old connection is dead; closing it may fail too
        self.transport = open_transport(self.board)
        self._cached = None
        return self.start()

    def start_again_if_lost(self) -> ProbeRecord:
        """``start``, with a link lost on the way (after connecting: pushing the agent over a lossy
        link, say) reconnected and the start tried again, up to the board's ``retries``, as a job is."""
        for attempt in range(self.board.retries + 1):
            try:
                return self.start() if attempt == 0 else self.reconnect()
            except BoardUnreachable:
                if attempt == self.board.retries:
                    raise
                time.sleep(RETRY_PAUSE_S * (attempt + 1))
        raise AssertionError("a start ends in its return or its last attempt's error")

    def _run_verified(self, job: JobRecord, files: dict[str, tuple[Path, str]], timeout: float) -> ResultRecord:
        """A cached artifact whose hash no longer matches on the board (a bad flash card, a
        half-finished copy by hand) is refused by the agent; it is pushed again once."""
        if job["engine"]["name"] in self.board.native:
            from controller.boards.native.job import run_native

            # Made here from what the tool printed on the board: checked like the agent's record.
            return check_result(_as_result(job["job_id"], timeout, lambda: run_native(self, job, files, timeout)),
                                job["job_id"])
        result = self._run_once(job, files, timeout, repush=False)
        if failure_of(result).get("stage") == "verify":
            result = self._run_once(job, files, timeout, repush=True)
            result.setdefault("notes", []).append("an artifact on the board did not match its sha256; pushed again")
        return result

    def _run_once(self, job: JobRecord, files: dict[str, tuple[Path, str]], timeout: float,
                  repush: bool) -> ResultRecord:
        workdir = posixpath.join(self.root, "jobs", job["job_id"])
        try:
            return _as_result(job["job_id"], timeout, lambda: self._agent_job(job, files, timeout, repush, workdir))
        finally:
            self.clean(workdir)

    def _agent_job(self, job: JobRecord, files: dict[str, tuple[Path, str]], timeout: float, repush: bool,
                   workdir: str) -> ResultRecord:
        job = job.copy()  # the caller's record stays as it was, for another attempt
        job["board"] = self.conditions
        job["artifacts"] = {role: {"file": posixpath.relpath(self.push(path, sha, force=repush), workdir), "sha256": sha}
                            for role, (path, sha) in files.items()}
        with tempfile.TemporaryDirectory(prefix="edgefarm-job-") as tmp:
            local_job = Path(tmp) / "job.json"
            local_job.write_text(json.dumps(job))
            with self._files:
                self.transport.put(local_job, posixpath.join(workdir, "job.json"))
            python = self.board.engine_python.get(job["engine"]["name"], self.python)
            done, repushed = self._run_agent(["run", "job.json", "--out", "result.json"], timeout, workdir, python)
            local_result = Path(tmp) / "result.json"
            try:
                with self._files:
                    self.transport.get(posixpath.join(workdir, "result.json"), local_result)
            except TransportError:
                # Killed or crashed before it could write a result: worth another attempt.
                return failed(job["job_id"], "agent", f"the agent exited {done.exit_code} without a result",
                              _tail(done.stderr), lost=True)
            # The agent writes its record whole or not at all (agent/__main__.py): one that is there
            # but unreadable was altered on the board, and is the board's answer, not a lost link.
            result = read_result(local_result, job["job_id"])
        if repushed:
            result.setdefault("notes", []).append("the agent on the board did not match its sha256; pushed again")
        return result

    def health_check(self, golden: dict[str, tuple[Path, str]], engine: str | None) -> str | None:
        """Run the golden job (see controller.boards.health); why the board is unfit, or None."""
        from controller.boards.health import TIMEOUT_S, golden_job, verdict

        if engine is None or not self.board.agent:
            return None  # no engine that runs the golden model: the probe that just passed is all
        return verdict(self._run_verified(golden_job(self.board.name, engine), golden, TIMEOUT_S))

    def clean(self, workdir: str) -> None:
        """Remove a job's work directory on the board (and end an agent left running in it), if it can."""
        if not self.board.agent:
            return  # native tools leave no job directory
        try:
            self._agent("clean", workdir)
        except TransportError:
            pass  # a board that is gone cannot be cleaned; the next session's clean covers it

    def prune_cache(self) -> list[str]:
        """Bound the board's artifact cache (the inventory's cache_mb); returns what went.

        Done at the end of a session, so this run's files are the newest and the last to go.
        A board without the agent keeps its cache: its native tools and models are few.
        """
        if not self.board.agent:
            return []
        out = self._agent("prune", posixpath.join(self.root, "cache"), "--max-mb", str(self.board.cache_mb))
        self._cached = None
        return json.loads(out)["removed"]

    def close(self) -> None:
        try:
            self.prune_cache()
        except (TransportError, ValueError):
            pass  # a board that is gone keeps its cache until the next session ends
        self.transport.close()


# Runs on the board with its own interpreter before every use of the agent: hashes the zipapp and
# runs it only if it still is the code the controller pushed. Paths and hashes arrive as argv,
# never in the code; a missing or altered copy exits AGENT_MISMATCH without running anything.
AGENT_MISMATCH = 86
_VERIFIED_RUN = (
    "import hashlib,os,runpy,sys\n"
    "p,h=os.path.expanduser(sys.argv[1]),sys.argv[2]\n"
    "d=hashlib.sha256()\n"
    "try:\n"
    " with open(p,'rb') as f:\n"
    "  for c in iter(lambda:f.read(1<<20),b''):d.update(c)\n"
    "except OSError as e:\n"
    " sys.stderr.write('agent %s: %s\\n'%(p,e));sys.exit(MISMATCH)\n"
    "if d.hexdigest()!=h:\n"
    " sys.stderr.write('agent %s does not match sha256 %s\\n'%(p,h));sys.exit(MISMATCH)\n"
    "sys.argv=[p]+sys.argv[3:]\n"
    "runpy.run_path(p,run_name='__main__')\n"
).replace("MISMATCH", str(AGENT_MISMATCH))


def _probe(text: str) -> ProbeRecord:
    """The agent's probe record, parsed: a mapping in the controller's protocol (``start`` checks the rest)."""
    try:
        record = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise TransportError(f"the agent's probe is not JSON: {type(exc).__name__}: {str(exc)[:200]}") from None
    if not isinstance(record, dict) or not isinstance(record.get("engines"), dict):
        raise TransportError(f"the agent's probe is not a probe record (found {str(record)[:80]!r})")
    if record.get("protocol") != PROTOCOL_VERSION:
        raise TransportError(f"agent speaks protocol {str(record.get('protocol'))[:40]}, not {PROTOCOL_VERSION}")
    probe: ProbeRecord = record  # type: ignore[assignment]  # its fields are checked once it is whole
    return probe


def _as_result(job_id: str, timeout: float, attempt: Callable[[], ResultRecord]) -> ResultRecord:
    """The result ``attempt`` returns, or the failed result its transport error amounts to."""
    try:
        return attempt()
    except CommandTimeout as exc:
        return failed(job_id, "agent", f"killed after {timeout:g} s without finishing", exc.stderr)
    except BoardUnreachable as exc:
        return failed(job_id, "transport", str(exc), lost=True)  # the link went away: worth another attempt
    except TransportError as exc:
        return failed(job_id, "transport", str(exc))


def _tail(text: str, limit: int = 2000) -> str:
    return text[-limit:]
