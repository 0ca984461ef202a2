"""What a bisect measures: one benchmark (model, board, engine, configuration label), as the
model's spec describes it, and one version's figures read back from the database.

The model comes from ``--spec FILE`` when given, else from the newest run in the database that
measured it (its stored spec and the folder its relative paths are read from, as ``edgefarm run
--resume`` reloads them): the benchmark as the team last measured it, with its dataset, its
inputs and its measurement and regression settings. That spec is reduced to the one model,
engine, configuration and board; end-to-end timing, the early stop of configurations slower than
the best and selection's finalist rounds are off (a bisect compares the engine's own figures in
full), accuracy stays on (a release that computes worse is a regression too).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from controller.config.spec import EngineSpec, LoadedSpec, Spec, load_spec
from controller.errors import UserError
from controller.results.store import Board, Job, Model, Result, Run, Variant
from controller.validation import parse

KIND = "bisect"  # the kind of every run a bisect stores: history, selection and nightly skip them


def source_spec(db_url: str | None, model: str, spec_path: Path | None) -> LoadedSpec:
    """The spec the model is measured with: ``spec_path``, else the newest run that measured it
    (the database is only read, and must be there)."""
    from controller.results.database import describe, open_db

    if spec_path is not None:
        loaded = load_spec(spec_path)
        names = [m.name for m in loaded.spec.models]
        if model not in names:
            raise UserError(f"--model {model}: {spec_path} has no model of that name; its models: {', '.join(names)}")
        return loaded
    with open_db(db_url, create=False)() as session:
        run = session.scalars(
            select(Run).join(Job, Job.run_id == Run.id).join(Variant, Variant.id == Job.variant_id)
            .join(Model, Model.id == Variant.model_id)
            .where(Model.name == model, Run.kind != KIND, Job.purpose == "measure")
            .order_by(Run.id.desc()).limit(1)
        ).first()
        if run is None:
            stored = sorted(set(session.scalars(select(Model.name))))
            known = f"the models stored are {', '.join(stored)}" if stored else "no model is stored yet"
            raise UserError(f"--model {model}: no run in {describe(db_url)} (bisects aside) measured a model of that name ({known}); "
                            "give --spec FILE with the model in it")
        source = f"run {run.id}'s stored spec"
        return LoadedSpec(spec=parse(Spec, run.spec, source), source=source, base=Path(run.spec_base or "."))


@dataclass(frozen=True)
class Configuration:
    """A configuration label as runs store it: variant, then ``@precision`` where the engine
    computes it otherwise, then ``/tN`` for a thread count of a sweep (``fp32``, ``fp32@bf16``,
    ``int8/t2``)."""

    label: str
    variant: str
    threads: int | None

    @classmethod
    def parse(cls, label: str) -> Configuration:
        from controller.passes import pass_names

        match = re.fullmatch(r"([A-Za-z0-9_.-]+)(@[A-Za-z0-9_]+)?(/t([1-9][0-9]*))?", label)
        if not match:
            raise UserError(f"--config {label!r}: not a configuration label such as fp32, int8, fp32@bf16 or int8/t2")
        if match[1] not in pass_names():
            raise UserError(f"--config {label!r}: {match[1]!r} is not a variant; variants: {', '.join(pass_names())}")
        return cls(label, match[1], int(match[4]) if match[4] else None)


def reduced(loaded: LoadedSpec, model: str, engine: str, config: Configuration, board: str) -> LoadedSpec:
    """The spec cut down to one model, one engine, one configuration, one board."""
    spec = loaded.spec
    data = spec.model_dump(mode="json")
    own = next((e for e in spec.engines if e.name == engine), EngineSpec(name=engine))
    data.update(
        models=[m.model_dump(mode="json") for m in spec.models if m.name == model],
        # fp32 is every variant's accuracy reference: a spec always has it.
        variants=list(dict.fromkeys(["fp32", config.variant])),
        engines=[own.model_dump(mode="json")],
        boards=[board],
        # The configuration measured in full, whatever the others (fp32) measure.
        measure={**data["measure"], "e2e": False, "slower_factor": None,
                 "threads": [config.threads] if config.threads else None},
        selection={**data["selection"], "rounds": 0},
    )
    return LoadedSpec(spec=parse(Spec, data, loaded.source), source=loaded.source, base=loaded.base)


@dataclass(frozen=True)
class Figures:
    """One version's result for the benchmark, as the run stored it."""

    status: str  # ok | failed
    message: str | None
    engine_version: str | None
    samples: list[float]
    p50_ms: float | None
    accuracy: float | None
    metric: str | None


def figures(session: Session, run_id: int, model: str, board: str, engine: str, label: str) -> Figures | list[str]:
    """The benchmark's figures in run ``run_id``; the labels the run measured when it has none of ``label``."""
    rows = session.execute(
        select(Job, Result)
        .join(Board, Board.id == Job.board_id).join(Variant, Variant.id == Job.variant_id)
        .join(Model, Model.id == Variant.model_id).outerjoin(Result, Result.job_id == Job.id)
        .where(Job.run_id == run_id, Job.purpose == "measure", Model.name == model, Board.name == board,
               Job.engine == engine)
    ).all()
    for job, res in rows:
        if job.label == label:
            if res is None:
                return Figures(job.status, job.message or "no result stored", None, [], None, None, None)
            return Figures(job.status, job.message, res.engine_version, list(res.samples_ms), res.p50_ms,
                           res.accuracy, res.accuracy_metric)
    return sorted({job.label for job, _ in rows})
