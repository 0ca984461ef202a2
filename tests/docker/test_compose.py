"""docker/compose.yaml end to end: the images are built, the stack comes up, a spec runs through
the controller container on a board that only the worker container serves, its results are read
back with psql inside the PostgreSQL container, and the dashboard answers over HTTP.

Real parts only: Docker's engine, the images built from this checkout (on the Debian base
docker/base.sh makes from Debian packages, unless $EDGEFARM_BASE names another), a real Ray
cluster of three containers, a real PostgreSQL server. Skipped only where no container engine
answers (`docker info` fails); an engine without a compose tool is a failure, not a skip.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest
import yaml

from tests.models import digits_mlp
from tests.net import free_port

pytestmark = [pytest.mark.slow, pytest.mark.docker]

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker" / "compose.yaml"
WORKER_HOST = "boardhost-1"
BOARD = "container-board"
SPEC = "docker-e2e"
# The first build of the images installs EdgeFarm's packages (torch, OpenVINO, Ray...) on two cores.
BUILD_TIMEOUT = 2400


def _engine_refused() -> str | None:
    """Why no container engine can run here, or None when one answers."""
    docker = shutil.which("docker")
    if docker is None:
        return "no container engine: the docker client is not installed (scripts/setup.sh installs docker.io)"
    try:
        done = subprocess.run([docker, "info", "--format", "{{json .ServerVersion}}"], capture_output=True,
                              text=True, timeout=60)
    except subprocess.TimeoutExpired:
        return "no container engine: `docker info` did not answer in 60 s"
    if done.returncode != 0 or done.stdout.strip() in ("", "null", '""'):
        said = (done.stderr.strip().splitlines() or ["no answer"])[-1]
        return f"no container engine answers `docker info` here: {said}"
    return None


def _compose_command() -> list[str]:
    """`docker compose` (the plugin) where it is installed, else the standalone docker-compose."""
    if subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    standalone = shutil.which("docker-compose")
    if standalone:
        return [standalone]
    pytest.fail("a container engine runs here but neither `docker compose` nor docker-compose is installed "
                "(scripts/setup.sh installs docker-compose)")


class Stack:
    """One compose project of docker/compose.yaml, named for this test so it meets no other."""

    def __init__(self, farm: Path, base: str) -> None:
        self.command = [*_compose_command(), "--file", str(COMPOSE_FILE)]
        self.port = free_port()
        self.env = dict(
            os.environ,
            COMPOSE_PROJECT_NAME=f"edgefarmtest{secrets.token_hex(4)}",
            EDGEFARM_DB_PASSWORD=secrets.token_hex(16),
            EDGEFARM_RAY_TOKEN=secrets.token_hex(32),
            EDGEFARM_BASE=base,
            EDGEFARM_FARM_DIR=str(farm),
            EDGEFARM_WORKER_HOST=WORKER_HOST,
            EDGEFARM_DASHBOARD_PORT=str(self.port),
        )

    def run(self, *argv: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([*self.command, *argv], env=self.env, capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL)
        if check and done.returncode != 0:
            raise AssertionError(f"{' '.join(argv[:3])} exited {done.returncode}:\n{done.stdout[-3000:]}\n"
                                 f"{done.stderr[-3000:]}\n{self.logs()}")
        return done

    def exec(self, service: str, *argv: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run("exec", "-T", service, *argv, timeout=timeout, check=check)

    def container(self, service: str) -> str:
        return self.run("ps", "-q", service).stdout.strip()

    def health(self, service: str) -> str:
        cid = self.container(service)
        if not cid:
            return "no container"
        done = subprocess.run(["docker", "inspect", "--format", "{{json .State}}", cid], capture_output=True,
                              text=True, timeout=60)
        if done.returncode != 0:
            return "gone"
        state = json.loads(done.stdout)
        return state.get("Health", {}).get("Status") or state.get("Status", "unknown")

    def wait_healthy(self, *services: str, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while True:
            states = {s: self.health(s) for s in services}
            if all(v == "healthy" for v in states.values()):
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"not healthy after {timeout:.0f} s: {states}\n{self.logs()}")
            time.sleep(3)

    def logs(self) -> str:
        try:
            done = subprocess.run([*self.command, "logs", "--no-color", "--tail", "40"], env=self.env,
                                  capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            return "(compose logs did not answer)"
        return "the stack's logs:\n" + done.stdout[-8000:]

    def down(self) -> None:
        # Volumes too: the test's database and caches are its own; the images stay (the build cache).
        self.run("down", "--volumes", "--remove-orphans", "--timeout", "20", timeout=300, check=False)
        # Earlier builds' images that the new ones replaced (untagged), and only EdgeFarm's.
        subprocess.run(["docker", "image", "prune", "--force", "--filter", "label=io.edgefarm.image"],
                       capture_output=True, timeout=300)


def _base_image() -> str:
    """$EDGEFARM_BASE where set, else the Debian base docker/base.sh builds (idempotently) here."""
    if os.environ.get("EDGEFARM_BASE"):
        return os.environ["EDGEFARM_BASE"]
    done = subprocess.run([str(ROOT / "docker" / "base.sh")], capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, f"docker/base.sh failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
    return "edgefarm-base:bookworm"


def _farm(folder: Path) -> Path:
    """What a user keeps in the folder the stack mounts as /farm: a model, a spec, an inventory."""
    folder.mkdir()
    digits_mlp(folder / "digits.onnx")
    spec = {
        "name": SPEC,
        "models": [{"name": "digits", "path": "digits.onnx"}],
        "variants": ["fp32"],
        "engines": ["onnxruntime"],
        "boards": [BOARD],
        "measure": {"warmup": 2, "min_iterations": 64, "min_seconds": 0.2, "max_seconds": 20,
                    "throughput_seconds": 0.2, "e2e": False, "precision": None, "slower_factor": None},
    }
    (folder / "spec.yaml").write_text(yaml.safe_dump(spec))
    # The board is the worker container itself (transport local), reached only from its host.
    inventory = {"boards": [{"name": BOARD, "chip": "auto", "transport": "local", "host": WORKER_HOST}]}
    (folder / "inventory.yaml").write_text(yaml.safe_dump(inventory))
    # The containers run as an unprivileged user, who must read what the test (root) wrote.
    folder.chmod(0o755)
    for path in folder.iterdir():
        path.chmod(0o644)
    return folder


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    why = _engine_refused()
    if why:
        pytest.skip(why)
    farm = _farm(tmp_path_factory.mktemp("compose") / "farm")
    up = Stack(farm, _base_image())
    try:
        up.run("build", timeout=BUILD_TIMEOUT)
        up.run("up", "--detach", timeout=600)
        up.wait_healthy("postgres", "ray-head", "dashboard")
        yield up
    finally:
        up.down()


def _wait_for_worker(stack: Stack, timeout: float = 180) -> None:
    """`edgefarm cluster` from the controller, once it lists the worker's host."""
    deadline = time.monotonic() + timeout
    while True:
        done = stack.exec("controller", "edgefarm", "cluster", "--ray-address", "ray-head:6379", check=False,
                          timeout=120)
        if done.returncode == 0 and WORKER_HOST in done.stdout:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"the worker never joined: edgefarm cluster exited {done.returncode}:\n"
                                 f"{done.stdout}\n{done.stderr}\n{stack.logs()}")
        time.sleep(3)


def _psql(stack: Stack, query: str) -> list[list[str]]:
    done = stack.exec("postgres", "psql", "--username", "edgefarm", "--dbname", "edgefarm", "--no-align",
                      "--tuples-only", "--field-separator", "|", "--command", query)
    return [line.split("|") for line in done.stdout.splitlines() if line]


@pytest.fixture(scope="module")
def ran(stack: Stack) -> Stack:
    """The stack once the spec has run through the controller container."""
    _wait_for_worker(stack)
    done = stack.exec("controller", "edgefarm", "run", "/farm/spec.yaml", "--inventory", "/farm/inventory.yaml",
                      "--ray-address", "ray-head:6379", timeout=900, check=False)
    assert done.returncode == 0, f"edgefarm run exited {done.returncode}:\n{done.stdout[-3000:]}\n" \
                                 f"{done.stderr[-3000:]}\n{stack.logs()}"
    return stack


def test_the_results_are_in_postgresql_measured_on_the_workers_board(ran: Stack) -> None:
    # The job's fingerprint names the host the agent ran on: the worker container's hostname, so
    # the board's actor ran there and not on the controller's node.
    rows = _psql(ran, "SELECT r.status, b.name, j.engine, j.label, j.status, j.fingerprint->>'hostname', "
                      "res.p50_ms FROM jobs j JOIN runs r ON r.id = j.run_id JOIN boards b ON b.id = j.board_id "
                      f"JOIN results res ON res.job_id = j.id WHERE r.spec_name = '{SPEC}' AND j.purpose = 'measure'")
    assert len(rows) == 1, rows
    run_status, board, engine, label, status, hostname, p50 = rows[0]
    assert (run_status, board, engine, label, status) == ("done", BOARD, "onnxruntime", "fp32", "ok"), rows
    assert hostname == WORKER_HOST, f"the job ran on {hostname!r}, not in the worker container"
    assert float(p50) > 0


def test_the_dashboard_serves_the_run_over_http(ran: Stack, tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{ran.port}/"
    with urllib.request.urlopen(f"{url}_stcore/health", timeout=30) as reply:
        assert reply.status == 200 and reply.read().decode().strip() == "ok"
    with urllib.request.urlopen(url, timeout=30) as reply:
        assert reply.status == 200
        page = reply.read().decode()
    assert '<div id="root">' in page, page[:500]
    # Streamlit draws the page in the browser from a websocket: a real browser shows that the
    # dashboard reads the run from the stack's PostgreSQL (the model and board the run measured).
    from tests.dashboard.test_browser import CHROMIUM, Chromium

    if not CHROMIUM.exists():
        return  # the HTTP answers above are all this machine can check
    wanted = ("Engine selection", "digits", "onnxruntime")
    with Chromium(tmp_path / "profile") as browser:
        dom = browser.open(url, lambda html: 'id="boards"' in html and all(w in html for w in wanted))
    missing = [w for w in wanted if w not in dom]
    assert not missing and 'id="boards"' in dom, f"the dashboard's page lacks {missing}"
    assert 'data-testid="stException"' not in dom
    assert BOARD in dom  # the Boards table lists the worker's board
