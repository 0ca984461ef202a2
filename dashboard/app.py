"""EdgeFarm dashboard: ``edgefarm dashboard [--db URL] [--address ADDR] [--port N]``, or
``streamlit run dashboard/app.py -- --db URL``.

The database is ``--db``, else $EDGEFARM_DB, else ./edgefarm.db (``controller.results.database.database_url``).
It is opened as every reading command opens it (``open_db(url, create=False)``): the page never makes
a database, and says why it cannot read one (``edgefarm dashboard`` refuses the same things in the
terminal before Streamlit starts). It is read only through ``controller.results.queries``,
``controller.results.selection`` and ``controller.results.history``, so the figures here are the ones
the CLI's selection tables and nightly reports print, and the bands the ones nightly judged with.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

try:
    import controller  # noqa: F401
except ImportError:  # a plain checkout: `streamlit run` puts dashboard/ on sys.path, not the repo root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import streamlit as st
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from controller.errors import UserError
from controller.results import database, history, queries, selection, variant_records
from dashboard import charts, views

MAX_TAILS = 20  # a run where everything failed would otherwise bury the page in tracebacks
EMPTY = ("No results yet: run `edgefarm run <spec.yaml>` (with `--db` or $EDGEFARM_DB naming this database), "
         "then reload this page.")


def cli_db(argv: list[str]) -> str | None:
    """``--db URL`` from the arguments after ``--``; unknown ones are ignored (under pytest too)."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("--db")
    return parser.parse_known_args(argv)[0].db


@st.cache_resource(show_spinner=False)
def sessions(given: str | None, url: str) -> sessionmaker[Session]:
    """``given`` as the user gave it (None: $EDGEFARM_DB or the default), so that a refusal says where
    the URL came from; ``url`` is what it resolves to, the cache's key."""
    # One engine (and connection pool) per database for the whole server, not one per rerun; a
    # refusal is not cached, so the page reads the database once it is there or upgraded.
    return database.open_db(given, create=False)


@dataclass
class Controls:
    budget: float
    objective: str  # "latency" or "throughput"
    ceiling_ms: float | None
    models: list[str]
    chips: list[str]


def controls(models: list[str], chips: list[str]) -> Controls:
    """Selection rule and filters in the sidebar; an empty filter means all."""
    with st.sidebar:
        budget = st.slider("Accuracy budget (max drop vs ONNX Runtime fp32)", 0.0, 0.1, 0.01, step=0.001,
                           format="%.3f", key="budget")
        objective = st.radio("Optimize for", ["latency", "throughput"], horizontal=True, key="objective",
                             help="latency: lowest p50 at batch 1; throughput: most items/s at any batch size")
        ceiling = st.number_input("Latency ceiling per batch (ms, 0 = none)", min_value=0.0, value=0.0,
                                  key="ceiling", disabled=objective != "throughput")
        picked_models = st.multiselect("Models", models, placeholder="all models", key="models")
        picked_chips = st.multiselect("Chips", chips, placeholder="all chips", key="chips")
    return Controls(budget, objective, ceiling or None, picked_models or models, picked_chips or chips)


def banner(runs: list[queries.RunRow]) -> None:
    """What a morning reader wants first: last night's verdict and the newest run's failures."""
    nightly = next((r for r in runs if r.kind == "nightly"), None)
    if nightly is not None:
        when = f"nightly run #{nightly.id} ({nightly.spec}, started {nightly.started:%Y-%m-%d %H:%M} UTC)"
        if nightly.verdict == "regression":
            st.error(f"Last {when}: **regression**. See its report under Runs.")
        elif nightly.verdict == "pass":
            st.success(f"Last {when}: pass.")
        elif nightly.verdict == "nothing ran":  # every board unreachable, failing its check or quarantined
            why = (nightly.summary or {}).get("nothing_ran") or "no board could run a job"
            st.error(f"Last {when}: **nothing ran**: {why}")
        else:
            st.info(f"Last {when}: {nightly.status}, no verdict yet.")
    newest = runs[0]
    if newest.jobs_failed:
        st.warning(f"Run #{newest.id} ({newest.spec}): {newest.jobs_failed} of {newest.jobs_total} jobs failed; "
                   "their stage and message are under Runs.")


def selection_section(sels: list[selection.Selection], c: Controls) -> None:
    st.header("Engine selection")
    fastest = "Most items/s at any measured batch size" if c.objective == "throughput" else "Lowest p50"
    ceiling = f" with a batch p50 of at most **{c.ceiling_ms:g} ms**" if c.objective == "throughput" and c.ceiling_ms else ""
    st.caption(f"{fastest}{ceiling} per (model, chip), among configurations whose accuracy drop against ONNX "
               f"Runtime fp32 on that chip is at most **{c.budget:g}**; speed-up is against the same baseline. "
               "e2e p50 is the whole pipeline an application runs (decode an image file, preprocess, infer, "
               "postprocess) on the board, beside the engine's own p50. Newest result per configuration. "
               "Each speed-up has its 95% interval: from the finalists' interleaved rounds on the board where "
               "\"rounds\" says how many (p50 and p90 too), else from the two jobs' samples. \"tied with\": the "
               "configurations whose intervals overlap the fastest one's; among them the higher accuracy, then the "
               "lower peak memory, then the smaller artifact is shown.")
    frame = views.selection_frame(sels)
    if c.objective != "throughput":  # batch and items/s say which batch the throughput rule chose
        frame = frame.drop(columns=["batch", "items/s"])
    st.table(views.styled(frame), hide_index=True)
    for sel in sels:
        if sel.best is None:
            st.warning(views.nothing_message(sel))
            st.table(views.styled(views.nearest_frame(sel)), hide_index=True)
    left, right, _ = st.columns([1, 1, 4])
    left.download_button("selection.csv", selection.render(sels, "csv"), "selection.csv", "text/csv")
    right.download_button("selection.json", selection.render(sels, "json"), "selection.json", "application/json")


def charts_section(session: Session, cands: list[selection.Candidate], budget: float) -> None:
    st.header("Latency and accuracy")
    df = views.candidates_frame(cands)
    st.subheader("p50 latency per engine x variant")
    st.altair_chart(charts.latency_bars(df))
    st.subheader("Accuracy per engine x variant")
    st.caption("Dashed line: the reference accuracy minus the budget; dots below it are outside the budget.")
    st.altair_chart(charts.accuracy_points(df, budget))
    st.subheader("Latency vs accuracy")
    st.altair_chart(charts.latency_vs_accuracy(df))
    batches = views.throughput_frame(cands)
    if not batches.empty:
        st.subheader("Throughput per batch size")
        st.caption("Items per second at each measured batch size; a model whose batch is fixed has one point.")
        st.altair_chart(charts.throughput_lines(batches))

    st.subheader("Latency distribution of one result")
    by_job = {c.job_id: c for c in cands}
    job_id = st.selectbox("Result", list(by_job), key="result", format_func=lambda j: (
        f"{by_job[j].model} · {by_job[j].chip} · {by_job[j].engine} · {by_job[j].variant} (job {j})"))
    samples = queries.latency_samples(session, job_id) if job_id is not None else []
    if samples:
        c = by_job[job_id]
        st.caption(f"{len(samples)} raw samples from run #{c.run_id}; p50 {c.p50_ms:.4g} ms, p90 {c.p90_ms:.4g} ms.")
        st.altair_chart(charts.distribution(samples))
    else:
        st.info("This result has no raw samples stored.")


def runs_section(session: Session, runs: list[queries.RunRow]) -> None:
    st.header("Runs")
    frame = views.runs_frame(runs)
    st.dataframe(frame.style.map(views.verdict_style, subset=["status", "verdict"]), hide_index=True)
    run_id = st.selectbox("Jobs of run", [r.id for r in runs], key="run", format_func=lambda i: next(
        f"#{r.id} {r.kind} {r.spec} ({r.started:%Y-%m-%d %H:%M} UTC): {r.status}" for r in runs if r.id == i))
    run = next(r for r in runs if r.id == run_id)
    jobs = queries.run_jobs(session, run.id)
    failed = views.failed_frame(jobs)
    if len(failed):
        st.markdown(f"**Failed jobs of run #{run.id}** ({len(failed)})")
        # A dataframe, not st.table: messages are free text, and st.table would read them as Markdown.
        st.dataframe(failed, hide_index=True, column_config={"message": st.column_config.TextColumn(width="large")})
        tails = [j for j in jobs if j.status == "failed" and j.stderr_tail]
        for j in tails[:MAX_TAILS]:
            with st.expander(f"stderr tail of job {j.job_id}: {j.model} {j.engine} {j.label} ({j.stage})"):
                st.code(j.stderr_tail, language=None)
        if len(tails) > MAX_TAILS:
            st.caption(f"{len(tails) - MAX_TAILS} more stderr tails not shown.")
    else:
        st.markdown(f"No failed jobs in run #{run.id}.")
    st.dataframe(views.styled(views.jobs_frame(jobs)), hide_index=True)
    timeline_section(session, run)
    if run.summary:
        with st.expander(f"Summary of run #{run.id}" + (" (nightly report)" if run.kind == "nightly" else "")):
            st.json(run.summary)


def timeline_section(session: Session, run: queries.RunRow) -> None:
    """The run as a Gantt chart of its boards: which board did what when, and where one sat idle."""
    rows = queries.run_timeline(session, run.id)
    frame = views.timeline_frame(rows)
    st.markdown(f"**Timeline of run #{run.id}**")
    never = len(rows) - len(frame)
    if frame.empty:
        st.info(f"No job of run #{run.id} reached a board" + (" yet." if run.status == "running" else "."))
        return
    st.caption("A row per board, a bar per job from when its board took it to when the board was done with it "
               "(the wait for its result to be stored is not part of it), in UTC. Colour: what the job was for "
               "(a measurement, a finalist's round, nightly's confirmation), red where it failed. Hover over a bar "
               "for its model, engine, variant and duration."
               + (f" Not drawn: {never} jobs that never reached a board (or have not yet)." if never else ""))
    st.altair_chart(charts.job_timeline(frame))


def main() -> None:
    st.set_page_config(page_title="EdgeFarm", layout="wide")
    given = cli_db(sys.argv[1:])  # None: $EDGEFARM_DB (where `edgefarm dashboard` puts it) or the default
    st.title("EdgeFarm")
    with st.sidebar:
        st.subheader("Database")
        st.code(database.describe(given), language=None, wrap_lines=True)  # describe() hides a password
    try:
        if not database.exists(given):
            st.info(f"{EMPTY}\n\n(There is no database file at `{database.describe(given)}` yet.)")
            return
        with sessions(given, database.database_url(given))() as session:
            render(session)
    except UserError as exc:  # a wrong URL, a server that is down, an older EdgeFarm's database (the line
        st.error(f"Cannot read the database: {exc}")  # names the command that upgrades it): said, not a trace
    except SQLAlchemyError as exc:  # the server went away while the page was read
        detail = str(getattr(exc, "orig", None) or exc).splitlines()[0]
        st.error(f"Cannot read {database.describe(given)}: {detail}")


def deployments_section(session: Session) -> None:
    """What runs where, the history of every deploy and rollback, and drift."""
    rows = queries.deployments(session)
    st.header("Deployments")
    if not rows:
        st.info("Nothing deployed yet: `edgefarm bundle --chip CHIP --model NAME --out DIR`, then "
                "`edgefarm deploy DIR --board NAME`.")
        return
    summaries = queries.deployment_states(rows)
    st.subheader("What runs where")
    st.caption("Per board, the bundle the database says is current (its newest deploy or rollback that passed), "
               "drift from the release the board itself said it runs when last read (`edgefarm deploy` and "
               "`edgefarm deployments` read it; run the latter to read every board now), the smoke test's "
               "inference p50 on the board against the farm's engine figure for the same calls, its total p50 "
               "(decode to postprocess), and the last change.")
    frame = views.deployed_frame(summaries, queries.latest_readings(session))
    st.dataframe(views.styled(frame).map(views.verdict_style, subset=["status", "drift"]), hide_index=True)
    st.subheader("History")
    history = views.deployment_history_frame(rows)
    st.altair_chart(charts.deployment_timeline(history))
    st.dataframe(history.style.map(views.verdict_style, subset=["status"]), hide_index=True,
                 column_config={"reason": st.column_config.TextColumn(width="large")})


def pick_benchmark(known: list[views.Benchmark], default: views.Benchmark) -> views.Benchmark:
    """A selector per level (spec only when there are several), each offering only what exists
    under the ones before it, and opening on ``default``."""
    first = (default[0], *default[1])
    levels = views.LEVELS if len(views.benchmark_options(known, [])) > 1 else views.LEVELS[1:]
    picked = [] if len(levels) == len(views.LEVELS) else [first[0]]
    for column, level in zip(st.columns(len(levels)), levels):
        options = views.benchmark_options(known, picked)
        on_default = tuple(picked) == first[:len(picked)] and first[len(picked)] in options
        picked.append(column.selectbox(level.capitalize(), options, key=f"history_{level}",
                                       index=options.index(first[len(picked)]) if on_default else 0))
    return picked[0], (picked[1], picked[2], picked[3], picked[4])


def history_section(session: Session) -> None:
    """One benchmark's runs as a line, with the band nightly judged each against and the changes marked."""
    st.header("History")
    known = history.benchmarks(session)
    if not known:
        st.info("No benchmark has a successful measurement in a finished run yet; the runs under Benchmarks "
                "say what happened.")
        return
    regressed = views.newest_regression(session)
    spec, key = pick_benchmark(known, regressed if regressed in known else known[0])
    rules = views.regression_rules(session, spec)
    frame = views.history_frame(history.benchmark_history(session, spec, key, rules.history, rules.band))
    if len(frame) < 2:
        st.info(f"**{' / '.join(key)}** has one run so far (run #{frame['run'].iloc[0]}): its history becomes a "
                "line with the next run, and nightly judges it once two good runs make a baseline.")
    else:
        st.caption(
            f"p50 of every finished run of spec **{spec}** that measured this benchmark. Shaded: the noise band as "
            f"it stood at each run (what nightly judged it against), made of the last {rules.history} good runs "
            f"before it: their median ± the larger of {rules.band:g} run-to-run standard deviations and the "
            "farthest of them; none until two runs exist. Colour: nightly's verdict; squares are plain runs, never "
            "judged but part of later baselines. Dashed orange: the setup changed since the run before, as labelled.")
        st.altair_chart(charts.history_chart(frame))
    table = views.history_table(frame)
    st.dataframe(views.styled(table).map(views.verdict_style, subset=["verdict"]), hide_index=True,
                 column_config={"what changed": st.column_config.TextColumn(width="large")})


def render(session: Session) -> None:
    runs = queries.runs(session)
    cands = selection.latest_candidates(session)
    picked = controls(sorted({c.model for c in cands}), sorted({c.chip for c in cands}))
    if not runs:
        st.info(EMPTY)
        return
    benchmarks, histories, deployed = st.tabs(["Benchmarks", "History", "Deployments"])
    with deployed:
        deployments_section(session)
    with histories:
        history_section(session)
    with benchmarks:
        render_benchmarks(session, runs, cands, picked)


def render_benchmarks(session: Session, runs: list[queries.RunRow], cands: list[selection.Candidate],
                      picked: Controls) -> None:
    banner(runs)
    cands = [c for c in cands if c.model in picked.models and c.chip in picked.chips]
    if cands:
        # select_best also sets each candidate's drop and speed-up, which the charts show.
        selection_section(selection.select_best(cands, picked.budget, picked.objective, picked.ceiling_ms), picked)
        charts_section(session, cands, picked.budget)
    else:
        st.info("No successful measurement matches the filters yet; the runs below say what happened.")
    st.header("Variants")
    st.caption("What each variant's recipe did; `edgefarm variants --format json` gives the full records.")
    st.dataframe(variant_records.rows(variant_records.latest_variants(session)), hide_index=True,
                 column_config={"what_the_recipe_did": st.column_config.TextColumn(width="large")})
    runs_section(session, runs)
    st.header("Boards")
    st.dataframe(views.boards_frame(queries.boards(session)), hide_index=True)


main()
