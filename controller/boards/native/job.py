"""One job through an engine's own benchmark binary, and the look at a board without Python.

What the agent does on a board with Python is done here from the controller, with shell
commands sent as argv lists: push the tool and the model into the board's cache, check both
by sha256 on the board (``sha256sum``, in toybox and coreutils alike), pin and cool as the
inventory asks, run the tool, read its summary into the agent's result record.
"""

from __future__ import annotations

import posixpath
import tarfile
import time
from pathlib import Path, PurePosixPath
from typing import Any, Protocol

from agent.artifacts import archive_members
from agent.protocol import Fingerprint, JobRecord, ProbeRecord, ResultRecord, Stage, failed, make_probe, sha256_file
from controller.boards.native import NativeOutputError, NativeRun, native_benchmark, to_result
from controller.boards.transports import Transport
from controller.config.inventory import BoardSpec
from controller.errors import BoardCommandFailed, FileCorrupt, one_line


class NativeHost(Protocol):
    """What a native job needs of the board's session (controller.boards.session.BoardSession)."""

    board: BoardSpec
    transport: Transport
    fingerprint: Fingerprint | None

    def push(self, local: Path, sha256: str, force: bool = False) -> str: ...

SHELL_TIMEOUT = 60.0

# A constant script (nothing is pasted into it): one key=value line per fact, empty when unknown.
# getprop answers on Android; elsewhere /proc/cpuinfo names the CPU.
_FINGERPRINT = (
    'echo "arch=$(uname -m)"; echo "os=$(uname -sr)"; echo "hostname=$(uname -n)"; '
    'echo "cores=$(grep -c ^processor /proc/cpuinfo)"; '
    'echo "cpu_model=$( (getprop ro.soc.model || getprop ro.hardware) 2>/dev/null | head -n1)"; '
    'echo "cpuinfo_model=$(grep -m1 -iE "^(model name|hardware)" /proc/cpuinfo | cut -d: -f2)"; '
    'echo "governor=$(cat /sys/devices/system/cpu/cpu0/cpufreq/scaling_governor 2>/dev/null)"'
)


def shell_probe(session: NativeHost) -> ProbeRecord:
    """The probe record the agent would print, from shell commands (a board without Python)."""
    done = session.transport.run(["sh", "-c", _FINGERPRINT], timeout=SHELL_TIMEOUT)
    if done.exit_code != 0:
        raise BoardCommandFailed(f"the board's shell exited {done.exit_code}: {done.stderr.strip()[-300:]}")
    facts: dict[str, str | None] = {}
    for line in done.stdout.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            facts[key] = value.strip() or None
    cores = facts.get("cores")
    return make_probe(
        {"arch": facts.get("arch"), "cpu_model": facts.get("cpu_model") or facts.get("cpuinfo_model"),
         "cores": int(cores) if cores and cores.isdigit() else None, "governor": facts.get("governor"),
         "cpu_mhz": None, "temperature_c": None, "os": facts.get("os"), "python": None,
         "hostname": facts.get("hostname")},
        {}, None)


def native_engines(session: NativeHost) -> dict[str, dict[str, Any]]:
    """The engines the board's native tools measure, as the probe lists engines."""
    engines = {}
    for engine, spec in session.board.native.items():
        here = Path(spec.binary).expanduser().is_file()
        engines[engine] = {"available": here, "version": None, "native": spec.tool,
                           "reason": None if here else f"{spec.binary} is not on this machine"}
    return engines


def run_native(session: NativeHost, job: JobRecord, files: dict[str, tuple[Path, str]],
               timeout: float) -> ResultRecord:
    """Run ``job`` with the board's native tool for its engine; failures come back as results."""
    job_id, engine = job["job_id"], job["engine"]["name"]
    spec = session.board.native[engine]
    bench = native_benchmark(spec.tool)
    model, model_sha = files["model"]
    try:
        members = archive_members(str(model)) if model.suffix == ".tar" else None
    except (OSError, ValueError, tarfile.TarError) as exc:
        return failed(job_id, "verify", one_line(exc))
    loads = PurePosixPath(members[0]).suffix if members else model.suffix
    if loads not in bench.model_suffixes:
        return failed(job_id, "convert", f"{bench.name} takes {', '.join(bench.model_suffixes)} models; "
                                         f"this variant is a {loads} file")
    stage: Stage = "verify"
    try:
        binary = Path(spec.binary).expanduser()
        remote_binary = push_verified(session, binary, sha256_file(str(binary)))
        session.transport.run(["chmod", "755", remote_binary], timeout=SHELL_TIMEOUT)
        remote_model = push_verified(session, model, model_sha)
        if members:
            remote_model = unpack_on_board(session, remote_model, members)
        stage = "measure"
        asked = job["native"]
        run = NativeRun(warmup=bench.fixed_warmup if bench.fixed_warmup is not None else asked["warmup"],
                        iterations=asked["iterations"], threads=asked.get("threads"),
                        input_shape=tuple(asked["input_shape"]), precision=asked.get("precision"),
                        backend=spec.backend, cores=spec.cores)
        argv = bench.argv(remote_binary, [remote_model], run)
        if session.board.cpus:  # a hex mask: what both toybox's and util-linux's taskset take
            argv = ["taskset", format(sum(1 << c for c in session.board.cpus), "x"), *argv]
        if session.board.cooldown_s:
            time.sleep(session.board.cooldown_s)
        done = session.transport.run(argv, timeout=timeout)
        output = done.stdout + done.stderr
        if done.exit_code != 0:
            return failed(job_id, "measure", f"{bench.name} exited {done.exit_code}", output[-4000:])
        result = to_result(job_id, bench, bench.parse(output, model=remote_model), None)
    except (NativeOutputError, ValueError, BoardCommandFailed, FileCorrupt) as exc:
        # The board said no at this stage; a lost board or a timeout goes on up to the session.
        return failed(job_id, stage, one_line(exc))
    result["fingerprint"] = session.fingerprint
    return result


def unpack_on_board(session: NativeHost, archive: str, members: list[str]) -> str:
    """Unpack a verified model archive into ``<archive>.d`` on the board with its own tar (toybox
    and busybox have one); the tool loads the first member, and finds the rest beside it."""
    folder = archive + ".d"
    for argv in (["mkdir", "-p", folder], ["tar", "-xf", archive, "-C", folder]):
        done = session.transport.run(argv, timeout=SHELL_TIMEOUT)
        if done.exit_code != 0:
            raise BoardCommandFailed(f"{argv[0]} on the board exited {done.exit_code}: {done.stderr.strip()[-300:]}")
    return posixpath.join(folder, members[0])


def push_verified(session: NativeHost, local: Path, sha256: str) -> str:
    """Push into the board's cache and check the copy's sha256 there; a bad copy is pushed again once."""
    remote = session.push(local, sha256)
    for attempt in (1, 2):
        done = session.transport.run(["sha256sum", remote], timeout=SHELL_TIMEOUT)
        if done.exit_code == 0 and done.stdout.split()[:1] == [sha256]:
            return remote
        if attempt == 1:
            remote = session.push(local, sha256, force=True)
    raise FileCorrupt(f"{remote} on the board does not match sha256 {sha256}, even after a new push")
