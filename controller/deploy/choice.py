"""Which configuration of each model a bundle ships: the selection's for the chip within the
accuracy budget, or the measured one ``--engine``/``--variant`` names; and every stored row the
bundle reads about it (job, result, variant, model, run). Each refusal is one line that says why.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from controller.errors import UserError
from controller.results.selection import Candidate, latest_candidates, select_best
from controller.results.store import Job, Model, Result, Run, Variant


@dataclass
class Chosen:
    """One model's configuration to bundle, with every row the bundle reads."""

    candidate: Candidate
    task: str  # the model's task (agent.tasks name)
    inputs: list[dict[str, Any]]  # as measured: name, shape (None = dynamic), dtype
    artifact_sha256: str  # the file the engine loaded: the converted file, else the variant's ONNX
    artifact_size: int
    dataset_sha256: str | None  # the evaluation data of its run
    spec: dict[str, Any]  # the run's spec, for a user's task module
    spec_base: str | None


def choose(session: Session, chip: str, models: list[str], budget: float, engine: str | None = None,
           variant: str | None = None) -> list[Chosen]:
    """The configuration of each model on ``chip``: the selection's within ``budget``, or the one
    ``engine``/``variant`` names; a one-line ``UserError`` says why one cannot be had."""
    candidates = latest_candidates(session)
    chips = sorted({c.chip for c in candidates})
    if chip not in chips:
        raise UserError(f"--chip {chip!r}: no results on this chip; the database has "
                        f"{', '.join(repr(c) for c in chips) or 'no results yet (run `edgefarm run` first)'}")
    stored = sorted(set(session.scalars(select(Model.name))))
    out = []
    for name in sorted(models):
        if name not in stored:
            raise UserError(f"--model {name}: not in the database; it has {', '.join(stored)}")
        mine = [c for c in candidates if c.model == name]
        group = [c for c in mine if c.chip == chip]
        if not group:
            where = sorted({c.chip for c in mine})
            raise UserError(f"--model {name}: no result on chip {chip!r}"
                            + (f"; it was measured on {', '.join(repr(c) for c in where)}" if where else
                               "; it has no successful result yet"))
        (sel,) = select_best(group, budget)
        if engine is not None:
            pick = next((c for c in group if c.engine == engine and c.variant == variant), None)
            if pick is None:
                measured = ", ".join(f"{c.engine} {c.variant}" for c in sorted(group, key=lambda c: (c.engine,
                                                                                                     c.variant)))
                raise UserError(f"--engine {engine} --variant {variant}: {name} was not measured so on {chip!r}; "
                                f"measured: {measured}")
        elif sel.best is None:
            nearest = "; ".join(f"{c.engine} {c.variant}: drop {_fmt(c.accuracy_drop)}, p50 {_fmt(c.p50_ms)} ms"
                                for c in sel.nearest)
            raise UserError(f"--model {name} on {chip!r}: nothing within the accuracy budget {budget:g}; nearest: "
                            f"{nearest or 'none'} (raise --budget, or name one with --engine and --variant)")
        else:
            pick = sel.best
        out.append(_rows(session, pick))
    return out


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def _rows(session: Session, c: Candidate) -> Chosen:
    job = session.get(Job, c.job_id)
    assert job is not None  # the candidate was read from it
    result = session.scalars(select(Result).where(Result.job_id == job.id)).one()
    variant = session.get(Variant, job.variant_id)
    assert variant is not None
    model = session.get(Model, variant.model_id)
    run = session.get(Run, job.run_id)
    assert model is not None and run is not None
    # The selection row carries these too; read from the job's own rows so the bundle says what ran.
    c.engine_options, c.engine_version, c.precision = dict(job.options or {}), result.engine_version, result.precision
    if job.artifact:
        sha, size = job.artifact["sha256"], int(job.artifact["size_bytes"])
    else:
        sha, size = variant.sha256, variant.size_bytes
    data = ((run.summary or {}).get("datasets") or {}).get(c.model) or {}
    return Chosen(c, model.task, list(model.inputs), sha, size, data.get("sha256"), dict(run.spec or {}),
                  run.spec_base)
