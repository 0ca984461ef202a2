"""A board's result record is untrusted input: checked here, where it enters the controller.

A board may be broken, half-flashed or not ours at all, and what its agent writes is read by
the driver, stored in columns of fixed sizes and summed by selection. So the record is parsed
against the shape ``agent.protocol.ResultRecord`` promises: types, finite numbers, strings that
fit their columns, the job it answers, a bounded size. A record that fails is not an error of the
run: it becomes a failed result at stage ``result`` naming the field and the bad value, stored
like any failure, and the run goes on.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from agent.protocol import PROTOCOL_VERSION, ResultRecord, Stage, failed

# A result holds at most the latency samples of max_seconds of sub-millisecond runs: far less.
MAX_RESULT_BYTES = 64 << 20
MAX_SAMPLES = 1_000_000

Finite = Annotated[float, Field(allow_inf_nan=False)]


class _Open(BaseModel):
    # Keys checked here must be right; other keys a newer agent adds travel on, into Result.raw.
    model_config = ConfigDict(extra="allow", strict=True)


class _Failure(_Open):
    stage: Stage
    message: str = Field(max_length=100_000)
    stderr_tail: str | None = Field(None, max_length=100_000)
    lost: bool = False


class _Engine(_Open):
    name: str = Field(max_length=32)
    version: str | None = Field(None, max_length=64)  # the columns' sizes (controller.results.store)
    precision: str | None = Field(None, max_length=16)
    device: str | None = Field(None, max_length=256)


class _Latency(_Open):
    samples_ms: list[Finite] = Field(max_length=MAX_SAMPLES)
    p50: Finite | None  # a native tool may print no median: legitimate, stored, not ranked
    p90: Finite | None
    p99: Finite | None
    mean: Finite
    std: Finite | None
    min: Finite
    max: Finite
    n: int = Field(ge=0)
    cv: Finite | None


class _Accuracy(_Open):
    metric: str | None = Field(None, max_length=32)
    value: Finite | None = None


class _Result(_Open):
    protocol: Literal[1]
    job_id: str
    status: Literal["ok", "failed"]
    failure: _Failure | None = None
    engine: _Engine | None = None
    phases: dict[str, Finite | None] = Field(default_factory=dict)
    latency: _Latency | None = None
    throughput: list[dict[str, Any]] = Field(default_factory=list)
    memory: dict[str, Finite | None] = Field(default_factory=dict)
    accuracy: _Accuracy | None = None
    fingerprint: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _complete(self) -> "_Result":
        if self.status == "ok" and (self.latency is None or self.engine is None):
            raise ValueError("an ok result needs its 'latency' and 'engine' blocks")
        if self.status == "failed" and self.failure is None:
            raise ValueError("a failed result needs its 'failure' block")
        return self


def check_result(record: object, job_id: str) -> ResultRecord:
    """``record`` as the ResultRecord it claims to be, or a failed result at stage ``result``
    saying what is wrong with it (the first problem: field, and the value found there)."""
    try:
        checked = _Result.model_validate(record)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error["loc"])
        said = f"{where}: {error['msg']} (found {repr(error.get('input'))[:120]})" if where else error["msg"]
        return failed(job_id, "result", f"the board's result record is malformed: {said}")
    if checked.job_id != job_id:
        return failed(job_id, "result", f"the board answered job {checked.job_id[:80]!r}, not {job_id!r}")
    assert checked.protocol == PROTOCOL_VERSION
    result: ResultRecord = record  # type: ignore[assignment]  # checked above, kept as sent
    return result
