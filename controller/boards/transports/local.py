"""The local board: this machine, each job a subprocess in its own work directory."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Sequence

from controller.boards.transports import Completed, ErrorTable, Transport, mapped_errors, register
from controller.errors import CommandTimeout, FileNotOnBoard, TransportError

# Everything here is the operating system's: a missing file, else a refusal (permissions, a full disk).
_ERRORS: ErrorTable = (
    ((FileNotFoundError,), FileNotOnBoard),
    ((OSError, shutil.Error), TransportError),
)


@register("local")
class LocalTransport(Transport):
    measures_on_host = True

    @property
    def default_workdir(self) -> str:  # type: ignore[override]
        return os.path.join(os.environ.get("EDGEFARM_HOME", ".edgefarm"), "boards")

    def resolve(self, path: str) -> str:
        return _expand(path)

    def run(self, argv: Sequence[str], timeout: float, cwd: str | None = None) -> Completed:
        # A new session so that a hung agent and every child it started die together.
        with mapped_errors(_ERRORS, f"cannot start {argv[0]}"):
            proc = subprocess.Popen(
                list(argv), cwd=_expand(cwd) if cwd else None, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, text=True, start_new_session=True, env=_board_env(),
            )
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            raise CommandTimeout(argv, timeout, err[-2000:]) from None
        return Completed(proc.returncode, out, err)

    def put(self, local: Path, remote: str) -> None:
        target = Path(_expand(remote))
        tmp = target.with_name(target.name + ".part")
        with mapped_errors(_ERRORS, f"{self.board.name}: cannot write {remote}"):
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(local, tmp)
            os.replace(tmp, target)  # never leave a half-written artifact under its final name

    def get(self, remote: str, local: Path) -> None:
        with mapped_errors(_ERRORS, f"{self.board.name}: cannot read {remote}"):
            shutil.copyfile(_expand(remote), local)


# Ray sets OMP_NUM_THREADS=1 in its workers, and ONNX Runtime follows it: a local agent that
# inherited it measured the detector 1.8x slower than the same job run by hand. A board's
# thread count comes from the inventory (`threads`), never from the process that launched it.
_NOT_FOR_BOARDS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS")


def _board_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in _NOT_FOR_BOARDS and not k.startswith("RAY_")}


def _expand(path: str) -> str:
    return os.path.abspath(os.path.expanduser(path))
