"""``edgefarm bisect``: real ONNX Runtime releases from PyPI, each installed in its own environment
on the local board, measured, and the first regressed release named.

No regression between these releases shows on this machine's small models, so the test plants
one through the environment: into the environments of releases 1.21.0 and later it writes a
``.pth`` file that gives every ONNX Runtime session a bad thread setting, four intra-op threads per
core (an engine that spins on more threads than the board has), and turns its graph optimisation
off (no constant folding, no fused convolutions). That is a real slowdown of the real engine, not
a sleep: on this two-core machine the orientation classifier runs 5 to 20 times slower, the more
the busier the machine, so a busy minute cannot hide it. The board itself runs the engine on one
thread (the inventory's ``threads``), which keeps the good releases' figures steady. The bisect
must find where the slowdown starts from the figures alone. The environments are made first with
bisect's own code, so the bisect finds them complete and reuses them (the cache), then measures.
The model comes from the database: the newest run that measured it, as after a nightly.

The releases come from PyPI (CI reaches it); without it the tests that need it are skipped, and
say why.
"""

from __future__ import annotations

import json
import os
import posixpath
import socket
import sys
from pathlib import Path

import pytest
import yaml
from sqlalchemy import select

from agent.protocol import sha256_file
from controller.boards.agent_bundle import build_agent_bundle
from controller.boards.session import BoardSession
from controller.cli import main
from controller.config.inventory import DEFAULT
from controller.errors import UserError
from controller.results.database import open_db
from controller.results.selection import latest_candidates
from controller.results.store import Run
from controller.versions import wheels
from controller.versions.benchmark import Configuration
from controller.versions.bisect import LATENCY, Bisection, Finding, Step, render, search
from controller.versions.envs import MARKER, BoardEnvs, Env
from controller.versions.wheels import Target
from controller.workspace import cache_dir, workspace
from tests.models import orientation_model
from tests.refusal import Case, assert_refused, one_line_error

VERSIONS = ["1.20.0", "1.20.1", "1.21.0", "1.21.1"]  # every cp311 release from 1.20.0 to 1.21.1
PLANTED_FROM = "1.21.0"

PLANT = '''"""Planted by tests/controller/test_bisect.py: every ONNX Runtime session in this environment
runs on four intra-op threads per core, with graph optimisation off."""
import os

import onnxruntime


class _Slowed(onnxruntime.InferenceSession):
    def __init__(self, path_or_bytes, sess_options=None, providers=None, provider_options=None, **kwargs):
        options = sess_options or onnxruntime.SessionOptions()
        options.intra_op_num_threads = 4 * (os.cpu_count() or 1)
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
        super().__init__(path_or_bytes, options, providers, provider_options, **kwargs)


onnxruntime.InferenceSession = _Slowed
'''


@pytest.fixture(scope="module")
def pypi() -> None:
    """Skip when PyPI cannot be reached (directly, or through a proxy pip is told about)."""
    if os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy"):
        return
    try:
        socket.create_connection(("pypi.org", 443), timeout=5).close()
    except OSError as exc:
        pytest.skip(f"PyPI cannot be reached ({exc}): bisect fetches the engine's releases from it")


def _spec(folder: Path) -> Path:
    """The orientation classifier on seeded inputs, ONNX Runtime fp32, measured briefly."""
    path = folder / "orient.yaml"
    path.write_text(yaml.safe_dump({
        "name": "bisect-orient",
        "models": [{"name": "orient", "path": str(orientation_model()), "inputs": {"x": {"shape": [1, 3, 224, 224]}},
                    "dataset": {"kind": "seeded", "samples": 8}}],
        "variants": ["fp32"], "engines": ["onnxruntime"],
        "measure": {"warmup": 2, "min_iterations": 64, "min_seconds": 0.3, "max_seconds": 3, "batch_sizes": [1],
                    "e2e": False},
        "selection": {"rounds": 0},
    }))
    return path


def _inventory(folder: Path) -> Path:
    """The local board, its engines on one thread."""
    path = folder / "inventory.yaml"
    path.write_text(yaml.safe_dump({"boards": [{"name": "local", "threads": 1}]}))
    return path


def _session() -> BoardSession:
    """The local board as `edgefarm bisect` opens it without --inventory."""
    return BoardSession(DEFAULT.boards[0], build_agent_bundle(workspace() / "agent"))


def _install(envs: BoardEnvs, target: Target, version: str) -> Env:
    return envs.ensure(wheels.fetch("onnxruntime", version, [], target, cache_dir()),
                       wheels.fetch_pip(target, cache_dir()))


def _plant(env: Env) -> None:
    site = Path(env.folder) / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}" / "site-packages"
    assert site.is_dir(), site
    (site / "edgefarm_planted.py").write_text(PLANT)
    (site / "edgefarm_planted.pth").write_text("import edgefarm_planted\n")


@pytest.mark.slow
def test_bisect_names_the_release_where_a_planted_slowdown_appears(
        tmp_path: Path, edgefarm_home: Path, pypi: None, capsys: pytest.CaptureFixture[str]) -> None:
    session = _session()
    try:
        envs = BoardEnvs(session, "onnxruntime")
        target = envs.target()
        # A half-made environment (no marker: a copy cut short) is removed and made again.
        first = wheels.fetch("onnxruntime", VERSIONS[0], [], target, cache_dir())
        half = Path(envs.folder(first))
        half.mkdir(parents=True)
        (half / "left-over").write_text("a copy cut short")
        made = {VERSIONS[0]: _install(envs, target, VERSIONS[0])}
        assert not (half / "left-over").exists() and (half / MARKER).is_file()
        # A wheel altered on the board (one the next release shares: numpy, ...) is caught by its
        # sha256 before anything is installed, and pushed again.
        second = wheels.fetch("onnxruntime", VERSIONS[1], [], target, cache_dir())
        shared = next(w for w in second.wheels if w.name in {f.name for f in first.wheels})
        altered = Path(posixpath.join(session.root, "wheels", shared.name))
        altered.write_bytes(b"not a wheel")
        made.update({v: _install(envs, target, v) for v in VERSIONS[1:]})
        assert sha256_file(altered) == shared.sha256
        assert all(env.made and env.version == v for v, env in made.items()), made
        assert len({env.folder for env in made.values()}) == len(VERSIONS)  # one environment each
        assert not wheels.fetch("onnxruntime", VERSIONS[1], [], target, cache_dir()).downloaded  # the controller's cache
        # A complete environment is used as it is.
        assert not _install(envs, target, VERSIONS[0]).made
    finally:
        session.transport.close()
    for version, env in made.items():
        if version >= PLANTED_FROM:
            _plant(env)

    # The benchmark as a team measures it: a run of the spec, whose stored spec the bisect reads.
    db = f"sqlite:///{tmp_path / 'bisect.db'}"
    where = ["--inventory", str(_inventory(tmp_path)), "--db", db]
    assert main(["run", str(_spec(tmp_path)), *where]) == 0
    capsys.readouterr()
    code = main(["bisect", "--model", "orient", "--engine", "onnxruntime", *where,
                 "--versions", f"{VERSIONS[0]}..{VERSIONS[-1]}", "--format", "json"])
    out, err = capsys.readouterr()
    record = json.loads(out)
    print(out, file=sys.stderr)  # the figures, in the test's log
    assert code == 1, err
    assert record["versions"] == VERSIONS
    assert record["findings"] == [{"kind": "latency", "first": PLANTED_FROM, "last_good": "1.20.1", "untested": []}]
    steps = {s["version"]: s for s in record["steps"]}
    assert list(steps) == VERSIONS  # A and B, then halving: 1.20.1 good, 1.21.0 regressed
    for version, step in steps.items():
        assert step["status"] == "ok" and step["engine_version"] == version, step
        assert step["env_made"] is False and step["env"] == made[version].folder  # the environments made above
        low, high = step["p50_ci95"]
        assert low <= step["p50_ms"] <= high
        assert step["accuracy"] is not None  # accuracy is measured too: a release that computes worse regressed
    slow = [steps[v]["p50_ms"] for v in VERSIONS if v >= PLANTED_FROM]
    fast = [steps[v]["p50_ms"] for v in VERSIONS if v < PLANTED_FROM]
    assert min(slow) > 3 * max(fast), steps
    assert steps[PLANTED_FROM]["regressed"] == ["latency"] and steps["1.20.1"]["regressed"] == []
    assert "(wheels from the cache)" in err and "already installed" in err
    with open_db(db)() as s:  # each release measured by a run of its own, of kind bisect
        runs = s.scalars(select(Run).order_by(Run.id)).all()
    assert [r.kind for r in runs] == ["run"] + ["bisect"] * 4 and {r.status for r in runs} == {"done"}
    assert sorted(r.id for r in runs[1:]) == sorted(s["run_id"] for s in steps.values())
    with open_db(db)() as s:  # a bisect's figures (old releases, planted slowdowns) are never a choice
        chosen = {(c.model, c.engine, c.variant): c.run_id for c in latest_candidates(s)}
    assert chosen and set(chosen.values()) == {runs[0].id}, chosen



@pytest.mark.slow
def test_a_release_is_installed_on_an_ssh_board_whose_python_is_not_ours(tmp_path: Path, edgefarm_home: Path,
                                                                        pypi: None) -> None:
    """Over SSH (argv quoted by the transport, wheels pushed over SFTP), for the board's Python 3.10:
    the controller fetches cp310 wheels, though its own Python is 3.11."""
    from controller.config.inventory import BoardSpec
    from tests.conftest import ROOT
    from tests.sshboard import netns_refusal, ssh_board

    if why := netns_refusal():
        pytest.skip(why)
    board_python = ROOT / ".venv-board" / "bin" / "python"
    assert board_python.is_file(), "scripts/setup.sh makes .venv-board (Python 3.10) for the test boards"
    with ssh_board("bisectssh", 47) as ssh:
        board = BoardSpec.model_validate(ssh.inventory_entry(python=str(board_python), workdir=str(tmp_path / "b")))
        session = BoardSession(board, build_agent_bundle(workspace() / "agent"))
        try:
            envs = BoardEnvs(session, "onnxruntime")
            target = envs.target()
            assert target.abi == "cp310" and target.key.startswith("cp310-manylinux_")
            env = _install(envs, target, VERSIONS[1])
            assert env.made and env.version == VERSIONS[1]
            assert env.folder.startswith(str(tmp_path / "b" / "envs" / f"onnxruntime-{VERSIONS[1]}-"))
            assert not _install(envs, target, VERSIONS[1]).made
        finally:
            session.transport.close()


# -- refusals ------------------------------------------------------------------------------------

def _refusals(tmp: Path) -> list[Case]:
    spec = str(_spec(tmp))
    base = ("bisect", "--spec", spec, "--model", "orient", "--engine", "onnxruntime", "--db", f"sqlite:///{tmp}/x.db")
    home = {"EDGEFARM_HOME": str(tmp / "home")}
    return [
        Case("no-dots", (*base, "--versions", "1.20.0"), ("argument --versions", "'1.20.0'", "A..B")),
        Case("b-before-a", (*base, "--versions", "1.21.0..1.20.0"), ("--versions", "older release than B")),
        Case("same", (*base, "--versions", "1.21.0..1.21"), ("--versions", "older release than B")),
        Case("not-a-version", (*base, "--versions", "one..two"), ("--versions", "'one'", "release number")),
        Case("empty-end", (*base, "--versions", "1.20.0.."), ("--versions", "A..B")),
        Case("unknown-engine", (*base[:6], "nosuch", *base[7:], "--versions", "1.20.0..1.21.1"),
             ("--engine nosuch", "unknown engine", "onnxruntime"), env=home),
        Case("native-only-engine", (*base[:6], "tflite", *base[7:], "--versions", "1.20.0..1.21.1"),
             ("--engine tflite", "native tool"), env=home),
        Case("unknown-model", (*base[:4], "nosuch", *base[5:], "--versions", "1.20.0..1.21.1"),
             ("--model nosuch", "has no model of that name", "orient"), env=home),
        Case("unknown-config", (*base, "--versions", "1.20.0..1.21.1", "--config", "fp33"),
             ("--config 'fp33'", "not a variant"), env=home),
        Case("unknown-board", (*base, "--versions", "1.20.0..1.21.1", "--board", "nosuch"),
             ("--board nosuch", "no board of that name", "local"), env=home),
        Case("bad-package", (*base, "--versions", "1.20.0..1.21.1", "--package", "onnxruntime==1"),
             ("--package", "not a package name"), env=home),
        Case("bad-requirement", (*base, "--versions", "1.20.0..1.21.1", "--require", "numpy<<2"),
             ("--require", "'numpy<<2'", "not a requirement"), env=home),
    ]


def test_bisect_refuses_bad_input_in_one_line(tmp_path: Path) -> None:
    for case in _refusals(tmp_path):
        assert_refused(case, tmp_path)
    assert not (tmp_path / "x.db").exists()  # refused before anything was made


def test_the_model_comes_from_the_newest_run_that_measured_it(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    missing = f"sqlite:///{tmp_path / 'none.db'}"
    argv = ["bisect", "--model", "orient", "--engine", "onnxruntime", "--versions", "1.20.0..1.21.1"]
    assert main([*argv, "--db", missing]) == 2  # neither --spec nor a database: nothing says what the model is
    assert "no database at" in one_line_error(capsys.readouterr().err)
    empty = f"sqlite:///{tmp_path / 'empty.db'}"
    assert main(["db", "upgrade", "--db", empty]) == 0
    capsys.readouterr()
    assert main([*argv, "--db", empty]) == 2
    line = one_line_error(capsys.readouterr().err)
    assert "--model orient: no run in" in line and "give --spec FILE" in line


def test_a_board_whose_python_cannot_make_an_environment_is_refused(tmp_path: Path) -> None:
    """A wrapper interpreter that runs everything but the venv module, as a python3 without its
    distribution's venv package does."""
    wrapper = tmp_path / "python-without-venv"
    wrapper.write_text('#!/bin/sh\nif [ "$1" = "-m" ] && [ "$2" = "venv" ]; then\n'
                       f'  echo "{sys.executable}: No module named venv" >&2; exit 1\nfi\n'
                       f'exec {sys.executable} "$@"\n')
    wrapper.chmod(0o755)
    inventory = tmp_path / "inventory.yaml"
    inventory.write_text(yaml.safe_dump({"boards": [{"name": "local", "python": str(wrapper)}]}))
    case = Case("no-venv", ("bisect", "--spec", str(_spec(tmp_path)), "--model", "orient", "--engine", "onnxruntime",
                            "--versions", "1.20.0..1.21.1", "--inventory", str(inventory),
                            "--db", f"sqlite:///{tmp_path}/x.db"),
                ("board local", str(wrapper), "cannot make a virtual environment", "No module named venv",
                 "python3-venv"), env={"EDGEFARM_HOME": str(tmp_path / "home")})
    assert_refused(case, tmp_path)


def test_a_release_without_a_wheel_for_the_board_is_refused(tmp_path: Path, pypi: None) -> None:
    """ONNX Runtime 1.0.0 is on PyPI, but has no wheel for this machine's Python 3.11."""
    case = Case("no-wheel", ("bisect", "--spec", str(_spec(tmp_path)), "--model", "orient", "--engine", "onnxruntime",
                             "--versions", "1.0.0..1.21.1", "--db", f"sqlite:///{tmp_path}/x.db"),
                ("--versions 1.0.0..1.21.1", "onnxruntime 1.0.0 has no wheel for this board", "CPython 3.11",
                 "releases around it that have one", "1.15.0"), env={"EDGEFARM_HOME": str(tmp_path / "home")})
    assert_refused(case, tmp_path)


# -- the parts, on their own ----------------------------------------------------------------------

def test_the_search_halves_and_skips_releases_that_do_not_run() -> None:
    def probe(regressed_from: int, broken: set[int]):
        asked: list[int] = []

        def regressed(i: int) -> bool | None:
            asked.append(i)
            return None if i in broken else i >= regressed_from
        return regressed, asked

    for first in range(1, 16):
        regressed, asked = probe(first, set())
        assert search(16, regressed)[:2] == (first - 1, first)
        assert len(asked) <= 4  # log2 of the 14 releases between A and B, rounded up
    regressed, asked = probe(5, {4, 5})
    assert search(10, regressed) == (3, 6, [4, 5])  # the regression is in 4, 5 or 6: all named
    regressed, _ = probe(5, {3})
    assert search(10, regressed) == (4, 5, [])  # a neighbour stands in for a release that does not run


def test_the_platform_tags_pip_is_told_about() -> None:
    x86 = Target.from_facts({"system": "Linux", "libc": "glibc", "libc_version": "2.28", "implementation": "cpython",
                             "python": "3.11", "abiflags": "", "machine": "x86_64", "executable": "/usr/bin/python3"},
                            "board b")
    tags = x86.platforms()
    assert tags[0] == "manylinux_2_28_x86_64" and "manylinux_2_17_x86_64" in tags and "manylinux2014_x86_64" in tags
    assert "manylinux1_x86_64" in tags and "manylinux_2_29_x86_64" not in tags
    assert x86.abi == "cp311" and x86.key == "cp311-manylinux_2_28_x86_64"
    arm = Target.from_facts({"system": "Linux", "libc": "glibc", "libc_version": "2.17", "implementation": "cpython",
                             "python": "3.13", "abiflags": "t", "machine": "aarch64", "executable": "python3"},
                            "board b")
    assert arm.platforms() == ["manylinux_2_17_aarch64", "manylinux2014_aarch64"] and arm.abi == "cp313t"
    with pytest.raises(UserError, match="musl"):
        Target.from_facts({"system": "Linux", "libc": "musl", "libc_version": "1.2", "implementation": "cpython",
                           "python": "3.11", "machine": "x86_64", "executable": "python3"}, "board b")


def test_the_report_gives_every_measured_release_and_names_the_first_regressed() -> None:
    steps = {v: Step(v, run_id=i + 1, p50_ms=p50, ci95=(p50 * 0.98, p50 * 1.02), samples=[p50] * 64, accuracy=0.97,
                     metric="top1")
             for i, (v, p50) in enumerate([("1.0", 2.0), ("1.3", 8.0), ("1.1", 2.02), ("1.2", 8.1)])}
    steps["1.1"].change, steps["1.1"].p_value, steps["1.1"].accuracy_change = 0.01, 0.4, 0.0
    steps["1.2"].change, steps["1.2"].p_value, steps["1.2"].regressed = 3.05, 1e-9, ["latency"]
    steps["1.3"].change, steps["1.3"].p_value, steps["1.3"].regressed = 3.0, 1e-9, ["latency"]
    result = Bisection("orient", "local", "onnxruntime", "onnxruntime", "fp32", ["1.0", "1.1", "1.1.5", "1.2", "1.3"],
                       steps, [LATENCY], [Finding(LATENCY, "1.2", "1.1")], seconds=75)
    table = render(result, "table")
    assert "5 releases with a wheel for the board, 4 measured in 1 min 15 s" in table
    assert "1.0 (A)" in table and "1.3 (B)" in table and "1.1.5" not in table  # only what was measured
    assert "[1.96, 2.04]" in table and "+305.0%" in table and "<0.001" in table and "top1" in table
    assert ("latency regression first appears in onnxruntime 1.2: p50 2 -> 8.1 ms (+305.0%) against 1.0; "
            "last good: 1.1") in table
    record = json.loads(render(result, "json"))
    assert record["findings"] == [{"kind": "latency", "first": "1.2", "last_good": "1.1", "untested": []}]
    assert [s["version"] for s in record["steps"]] == ["1.0", "1.1", "1.2", "1.3"]
    assert record["steps"][2]["p50_ci95"] == [8.1 * 0.98, 8.1 * 1.02] and record["steps"][2]["n"] == 64


def test_configuration_labels() -> None:
    assert Configuration.parse("fp32") == Configuration("fp32", "fp32", None)
    assert Configuration.parse("int8/t2") == Configuration("int8/t2", "int8", 2)
    assert Configuration.parse("fp32@bf16") == Configuration("fp32@bf16", "fp32", None)
    assert Configuration.parse("int8-mixed") == Configuration("int8-mixed", "int8-mixed", None)
