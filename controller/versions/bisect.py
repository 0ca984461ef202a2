"""``edgefarm bisect``: the first release of an engine where a benchmark regressed.

A and B are measured first. B is judged against A by nightly's rules (``controller.results.
regression``): latency, when the change of the median is significant and above the spec's
threshold; accuracy, when it dropped by more than its threshold; or B does not run where A did.
Nothing of that: the bisect says so and stops. Otherwise each kind of regression B shows is
searched for by halving the releases between the last good and the first regressed one; the
measurements are shared between the kinds.

A release counts as regressed in latency when, against A, its change passes nightly's test AND
is at least half of B's: a release that only drifted by a few percent between two runs minutes
apart is not taken for the one that brought the regression. A release that cannot be installed
or does not run is skipped, as ``git bisect skip`` does: a neighbour is measured instead, and
where skipped releases lie next to the first regressed one, all of them are named.

Each version is measured by a normal run (``controller.run.execute``) of kind ``bisect``, with
the board's interpreter for the engine pointing at that release's environment (``envs``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from controller.config.inventory import BoardSpec, Inventory
from controller.config.spec import LoadedSpec, RegressionSpec
from controller.errors import UserError
from controller.versions.benchmark import KIND, Configuration
from controller.versions.envs import BoardEnvs, InstallFailed
from controller.versions.wheels import Target, Wheel

LATENCY, ACCURACY, FAILURE = "latency", "accuracy", "runs"


@dataclass
class Step:
    """One release, measured (or not: why)."""

    version: str
    status: str = "ok"  # ok | failed
    stage: str | None = None  # install | run, where it failed
    message: str | None = None
    run_id: int | None = None
    env: str | None = None  # its environment on the board
    env_made: bool | None = None  # False: an earlier bisect had made it
    engine_version: str | None = None  # as the agent found it in the environment
    samples: list[float] = field(default_factory=list, repr=False)
    p50_ms: float | None = None
    ci95: tuple[float, float] | None = None
    accuracy: float | None = None
    metric: str | None = None
    seconds: float = 0.0
    change: float | None = None  # relative change of the median against A
    p_value: float | None = None
    latency_verdict: str | None = None  # nightly's test against A: regression | improvement | unchanged
    accuracy_change: float | None = None  # absolute, against A
    regressed: list[str] = field(default_factory=list)  # the kinds in which it regressed against A


@dataclass(frozen=True)
class Finding:
    kind: str
    first: str  # the first regressed release
    last_good: str
    untested: tuple[str, ...] = ()  # skipped releases between them: the regression may be in one of these


@dataclass
class Bisection:
    model: str
    board: str
    engine: str
    package: str
    config: str
    versions: list[str]  # every release from A to B with a wheel for the board
    steps: dict[str, Step] = field(default_factory=dict)  # by version, in the order measured
    kinds: list[str] = field(default_factory=list)  # what B shows against A
    findings: list[Finding] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def a(self) -> Step:
        return self.steps[self.versions[0]]

    @property
    def b(self) -> Step:
        return self.steps[self.versions[-1]]


class Judge:
    """B against A, and every release against A, by the spec's regression rules."""

    def __init__(self, a: Step, rules: RegressionSpec) -> None:
        self.a = a
        self.rules = rules
        self.b_change = 0.0

    def compare(self, step: Step) -> None:
        if step.status != "ok" or step is self.a:
            return
        if self.a.samples and step.samples:
            step.latency_verdict, step.change, step.p_value = latency_change(self.a.samples, step.samples, self.rules)
        if self.a.accuracy is not None and step.accuracy is not None:
            step.accuracy_change = step.accuracy - self.a.accuracy

    def kinds(self, b: Step) -> list[str]:
        """The regressions B shows against A."""
        if b.status != "ok":
            return [FAILURE]
        found = []
        if b.latency_verdict == "regression":
            found.append(LATENCY)
            self.b_change = b.change or 0.0
        if b.accuracy_change is not None and b.accuracy_change < -self.rules.accuracy_threshold:
            found.append(ACCURACY)
        return found

    def regressed(self, kind: str, step: Step) -> bool | None:
        """Whether ``step`` shows ``kind``; None when it cannot say (the release did not run)."""
        if kind == FAILURE:
            return step.status != "ok"
        if step.status != "ok":
            return None
        if kind == LATENCY:
            if step.latency_verdict is None or step.change is None:
                return None
            return step.latency_verdict == "regression" and step.change >= self.b_change / 2
        if step.accuracy_change is None:
            return None
        return step.accuracy_change < -self.rules.accuracy_threshold


def latency_change(before: list[float], after: list[float], rules: RegressionSpec) -> tuple[str, float, float]:
    """Nightly's test of one run against another, without a history: (regression | improvement |
    unchanged, relative change of the median, p-value). Called when a Mann-Whitney U test of the
    raw samples is significant (p <= ``p_value``) and the median moved by more than
    ``latency_threshold``. Nightly adds a noise band learned from a benchmark's past runs; a
    bisect has one run per release, and the half-of-B rule (``Judge.regressed``) stands in for it."""
    import numpy as np
    from scipy.stats import mannwhitneyu

    m0, m1 = float(np.median(before)), float(np.median(after))
    rel = (m1 - m0) / m0 if m0 > 0 else 0.0
    p = float(mannwhitneyu(after, before, alternative="two-sided").pvalue)
    if p <= rules.p_value and abs(rel) > rules.latency_threshold:
        return ("regression" if rel > 0 else "improvement"), rel, p
    return "unchanged", rel, p


def search(count: int, regressed: Callable[[int], bool | None]) -> tuple[int, int, list[int]]:
    """Halve the releases between index 0 (good) and ``count - 1`` (regressed): (the last good
    index, the first regressed one, the skipped indices between them). ``regressed(i)`` says
    whether release i shows the regression, None when it cannot be told (skipped)."""
    good, bad = 0, count - 1
    skipped: set[int] = set()
    while True:
        inside = [i for i in range(good + 1, bad) if i not in skipped]
        if not inside:
            return good, bad, sorted(i for i in skipped if good < i < bad)
        middle = (good + bad) / 2
        i = min(inside, key=lambda j: (abs(j - middle), j))
        verdict = regressed(i)
        if verdict is None:
            skipped.add(i)
        elif verdict:
            bad = i
        else:
            good = i


# -- the command ---------------------------------------------------------------------------------


def bisect_command(args: argparse.Namespace) -> bool:
    """Run ``edgefarm bisect``; True when a regression was found (and named)."""
    from controller.boards.agent_bundle import build_agent_bundle
    from controller.boards.session import BoardSession
    from controller.config.inventory import load_inventory
    from controller.config.names import check_engine
    from controller.results.database import check_db
    from controller.versions import wheels
    from controller.versions.benchmark import reduced, source_spec
    from controller.workspace import cache_dir, workspace

    started = time.monotonic()
    config = Configuration.parse(args.config)
    try:
        check_engine(args.engine)
    except ValueError as exc:
        raise UserError(f"--engine {args.engine}: {exc}") from None
    package = args.package or wheels.DISTRIBUTIONS.get(args.engine)
    if package is None:
        raise UserError(f"--engine {args.engine}: measured by a native tool, not released as a Python package; "
                        f"bisect installs releases of {', '.join(wheels.DISTRIBUTIONS)}")
    a, b = args.versions
    # With --spec the database may be new (the first run makes it, as `run` does); without, it
    # says what the model is, so it must be there.
    check_db(args.db, create=args.spec is not None)
    loaded = source_spec(args.db, args.model, args.spec)
    inventory, inventory_source = load_inventory(args.inventory)
    board = _board(args, loaded, inventory, inventory_source)
    spec = reduced(loaded, args.model, args.engine, config, board.name)

    session = BoardSession(board, build_agent_bundle(workspace() / "agent"))
    try:
        envs = BoardEnvs(session, args.engine)
        target = envs.target()
        found = wheels.releases(package, target, pre=_pre(a) or _pre(b))
        versions = wheels.between(found, a, b, package, target, f"--versions {a}..{b}")
        pip = wheels.fetch_pip(target, cache_dir())
        result = Bisection(args.model, board.name, args.engine, package, config.label, versions)
        measure = _Measure(result, spec, board, inventory_source, envs, target, pip, args)
        _bisect(result, measure, spec.spec.regression)
    finally:
        session.transport.close()
    result.seconds = time.monotonic() - started
    print(render(result, args.format))
    return bool(result.findings)


def _board(args: argparse.Namespace, loaded: LoadedSpec, inventory: Inventory, source: str) -> BoardSpec:
    """The board to bisect on: --board, else the spec's only board; one that can run the engine's wheels."""
    name = args.board
    if name is None:
        if len(loaded.spec.boards) != 1:
            raise UserError(f"--board: {loaded.source} measures on {', '.join(loaded.spec.boards)}; "
                            "name the board to bisect on")
        name = loaded.spec.boards[0]
    if name not in [b.name for b in inventory.boards]:
        where = "--board" if args.board else f"{loaded.source}: boards:"
        raise UserError(f"{where} {name}: no board of that name in {source}; it has: "
                        f"{', '.join(b.name for b in inventory.boards)}")
    board = inventory.board(name, source)
    if not board.agent:
        raise UserError(f"--board {name}: it has no agent (agent: false in {source}): bisect installs releases "
                        "for the agent's Python")
    if args.engine in board.native:
        raise UserError(f"--board {name}: {source} measures {args.engine} there with its native tool "
                        f"{board.native[args.engine].tool}, not with a Python release")
    if board.engines is not None and args.engine not in board.engines:
        raise UserError(f"--board {name}: {source} allows only {', '.join(board.engines)} on it, not {args.engine}")
    return board


def _pre(version: str) -> bool:
    from packaging.version import Version

    return Version(version).is_prerelease


class _Measure:
    """Measures one release: its wheels, its environment on the board, a run of kind bisect."""

    def __init__(self, result: Bisection, spec: LoadedSpec, board: BoardSpec, inventory_source: str,
                 envs: BoardEnvs, target: Target, pip: Wheel, args: argparse.Namespace) -> None:
        self.result, self.spec, self.board, self.inventory_source = result, spec, board, inventory_source
        self.envs, self.target, self.pip, self.args = envs, target, pip, args

    def __call__(self, version: str) -> Step:
        steps = self.result.steps
        if version not in steps:
            started = time.monotonic()
            steps[version] = step = Step(version)
            self._measure(step, f"[{len(steps)}] {self.result.engine} {version}")
            step.seconds = time.monotonic() - started
        return steps[version]

    def _measure(self, step: Step, say: str) -> None:
        from controller.run.execute import execute
        from controller.versions.wheels import fetch
        from controller.workspace import cache_dir

        _say(f"{say}: wheels for {self.target.describe()}")
        wheels = fetch(self.result.package, step.version, self.args.require, self.target, cache_dir())
        _say(f"{say}: environment on board {self.board.name}"
             + (" (wheels downloaded)" if wheels.downloaded else " (wheels from the cache)"))
        try:
            env = self.envs.ensure(wheels, self.pip)
        except InstallFailed as exc:
            step.status, step.stage, step.message = "failed", "install", str(exc)
            _say(f"{say}: did not install: {exc}")
            return
        step.env, step.env_made, step.engine_version = env.folder, env.made, env.version
        _say(f"{say}: {'installed' if env.made else 'already installed'} in {env.folder}; measuring")
        engine = self.result.engine
        board = self.board.model_copy(update={"engine_python": {**self.board.engine_python, engine: env.python},
                                              "engines": [engine]})
        outcome = execute(self.spec, Inventory(boards=[board]), self.inventory_source, self.args.db,
                          self.args.ray_address, kind=KIND)
        step.run_id = outcome.run_id or None
        self._read(step, outcome.skipped)
        _say(f"{say}: " + (f"p50 {step.p50_ms:.4g} ms" if step.status == "ok" else f"failed: {step.message}"))

    def _read(self, step: Step, skipped: dict[str, str]) -> None:
        from agent.measure import median_ci95
        from controller.results.database import open_db
        from controller.versions.benchmark import figures

        r = self.result
        got: Any = []
        if step.run_id is not None:
            with open_db(self.args.db)() as db:
                got = figures(db, step.run_id, r.model, r.board, r.engine, r.config)
        if isinstance(got, list):
            if got:  # the run measured the engine, in other configurations only
                raise UserError(f"--config {r.config}: {r.engine} {step.version} on board {r.board} measured "
                                f"{r.model} as {', '.join(got)}, not {r.config}")
            why = skipped.get(r.board) or "the run stored no job for it"
            step.status, step.stage, step.message = "failed", "run", f"board {r.board} measured nothing: {why}"
            return
        step.status, step.message = got.status, got.message
        if got.status != "ok":
            step.stage = "run"
            return
        step.samples, step.p50_ms = got.samples, got.p50_ms
        step.ci95 = median_ci95(got.samples) if got.samples else None
        step.accuracy, step.metric = got.accuracy, got.metric
        step.engine_version = got.engine_version or step.engine_version


def _bisect(result: Bisection, measure: Callable[[str], Step], rules: RegressionSpec) -> None:
    versions = result.versions
    a = measure(versions[0])
    if a.status != "ok":
        raise UserError(f"--versions {versions[0]}..{versions[-1]}: {result.engine} {versions[0]} did not run on "
                        f"board {result.board}, so there is nothing to compare with: {a.message}")
    judge = Judge(a, rules)
    b = measure(versions[-1])
    judge.compare(b)
    result.kinds = judge.kinds(b)
    b.regressed = list(result.kinds)
    for kind in result.kinds:
        def regressed(i: int, kind: str = kind) -> bool | None:
            step = measure(versions[i])
            judge.compare(step)
            verdict = judge.regressed(kind, step)
            if verdict and kind not in step.regressed:
                step.regressed.append(kind)
            return verdict

        good, bad, skipped = search(len(versions), regressed)
        result.findings.append(Finding(kind, versions[bad], versions[good], tuple(versions[i] for i in skipped)))


def _say(text: str) -> None:
    print(f"bisect: {text}", file=sys.stderr, flush=True)


# -- the report ----------------------------------------------------------------------------------


def as_record(result: Bisection) -> dict[str, Any]:
    a = result.versions[0]
    return {
        "model": result.model, "board": result.board, "engine": result.engine, "package": result.package,
        "config": result.config, "a": a, "b": result.versions[-1], "versions": result.versions,
        "regressed": bool(result.findings), "b_shows": result.kinds,
        "findings": [{"kind": f.kind, "first": f.first, "last_good": f.last_good, "untested": list(f.untested)}
                     for f in result.findings],
        "steps": [{
            "version": s.version, "status": s.status, "stage": s.stage, "message": s.message, "run_id": s.run_id,
            "engine_version": s.engine_version, "p50_ms": s.p50_ms, "p50_ci95": list(s.ci95) if s.ci95 else None,
            "n": len(s.samples) or None, "change_vs_a": s.change, "p_value": s.p_value,
            "latency_verdict": s.latency_verdict, "accuracy_metric": s.metric, "accuracy": s.accuracy,
            "accuracy_change_vs_a": s.accuracy_change, "regressed": s.regressed, "env": s.env,
            "env_made": s.env_made, "seconds": round(s.seconds, 1),
        } for s in sorted(result.steps.values(), key=lambda s: result.versions.index(s.version))],
        "seconds": round(result.seconds, 1),
    }


def render(result: Bisection, fmt: str) -> str:
    if fmt == "json":
        return json.dumps(as_record(result), indent=2)
    a, b = result.versions[0], result.versions[-1]
    metric = result.a.metric or "accuracy"
    head = ["version", "run", "p50 ms", "95% CI of p50", f"vs {a}", "p-value", metric, f"vs {a}", "verdict"]
    rows = []
    for v in result.versions:
        s = result.steps.get(v)
        if s is None:
            continue
        role = " (A)" if v == a else " (B)" if v == b else ""
        if s.status != "ok":
            verdict = "regressed: does not run" if FAILURE in s.regressed else f"did not run ({s.stage})"
        else:
            verdict = ("regressed: " + ", ".join(s.regressed)) if s.regressed else "good"
        rows.append([v + role, _fmt(s.run_id), _fmt(s.p50_ms), _ci(s.ci95), _pct(s.change), _p(s.p_value),
                     _fmt(s.accuracy), _signed(s.accuracy_change), verdict])
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    line = "  ".join(f"{{:{w}}}" for w in widths)
    table = [line.format(*head).rstrip(), *(line.format(*r).rstrip() for r in rows)]
    title = (f"bisect {result.model} on {result.board}, {result.engine} {result.config}: {result.package} {a}..{b}, "
             f"{len(result.versions)} releases with a wheel for the board, {len(result.steps)} measured "
             f"in {_duration(result.seconds)}")
    failed = [s for s in result.steps.values() if s.status != "ok"]
    notes = [f"{s.version} did not run ({s.stage}): {s.message}" for s in failed]
    return "\n".join([title, "", *table, "", *notes, *_conclusion(result)])


def _conclusion(result: Bisection) -> list[str]:
    a, b = result.a, result.b
    if not result.findings:
        what = (f"p50 {_fmt(a.p50_ms)} -> {_fmt(b.p50_ms)} ms ({_pct(b.change)}, {b.latency_verdict or 'not compared'})"
                if b.status == "ok" else "")
        return [f"no regression from {a.version} to {b.version}: {what}".rstrip(": ")]
    lines = []
    for f in result.findings:
        first = result.steps[f.first]
        where = f"one of {', '.join(f.untested)} (did not run) or {f.first}" if f.untested else f.first
        if f.kind == LATENCY:
            said = f"p50 {_fmt(a.p50_ms)} -> {_fmt(first.p50_ms)} ms ({_pct(first.change)})"
        elif f.kind == ACCURACY:
            said = f"{first.metric or 'accuracy'} {_fmt(a.accuracy)} -> {_fmt(first.accuracy)}"
        else:
            said = f"does not run: {first.message}"
        lines.append(f"{f.kind} regression first appears in {result.engine} {where}: {said} against {a.version}; "
                     f"last good: {f.last_good}")
    return lines


def _fmt(value: float | int | None) -> str:
    if value is None:
        return "-"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _ci(ci: tuple[float, float] | None) -> str:
    return f"[{ci[0]:.4g}, {ci[1]:.4g}]" if ci else "-"


def _pct(change: float | None) -> str:
    return f"{change:+.1%}" if change is not None else "-"


def _signed(change: float | None) -> str:
    return f"{change:+.4f}" if change is not None else "-"


def _p(p: float | None) -> str:
    if p is None:
        return "-"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def _duration(seconds: float) -> str:
    minutes, rest = divmod(int(round(seconds)), 60)
    return f"{minutes} min {rest} s" if minutes else f"{rest} s"
