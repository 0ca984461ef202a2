"""A board's result record is untrusted input: checked here, where it enters the controller.

A board may be broken, half-flashed or not ours at all, and what its agent writes is read by
the driver, stored in columns of fixed sizes and summed by selection. So the record is parsed
against the shape ``agent.protocol.ResultRecord`` promises: types, finite numbers, strings that
fit their columns, the job it answers, a bounded size. A record that fails is not an error of the
run: it becomes a failed result at stage ``result`` naming the field and the bad value, stored
like any failure, and the run goes on.

What the schema leaves open (a newer agent's extra keys, the fingerprint, the accuracy details)
is stored as JSON too, so the whole record is walked as well: every number finite, every string
of a bounded length without NUL characters (PostgreSQL refuses them), a bounded nesting depth.

A board's probe record is checked here the same way (``check_probe``): planning reads it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from agent.protocol import PROTOCOL_VERSION, ResultRecord, Stage, failed

# A result holds at most the latency samples of max_seconds of sub-millisecond runs: far less.
MAX_RESULT_BYTES = 64 << 20
MAX_SAMPLES = 1_000_000
MAX_STRING = 100_000  # characters of any one string: a stderr tail is a few thousand
MAX_DEPTH = 16  # nesting of mappings and lists; the protocol's records need 5
MAX_INT = 2**31 - 1  # what an INTEGER column holds on every database

Finite = Annotated[float, Field(allow_inf_nan=False)]
PHASES = ("load_ms", "first_inference_ms")  # read into their columns from every ok result


class _Open(BaseModel):
    # Keys checked here must be right; other keys a newer agent adds travel on, into Result.raw.
    model_config = ConfigDict(extra="allow", strict=True)


class _Failure(_Open):
    stage: Stage
    message: str = Field(max_length=100_000)
    stderr_tail: str | None = Field(None, max_length=100_000)
    lost: bool = False


class _Engine(_Open):
    # Every key present (None where the engine does not say): the columns are filled from them.
    name: str = Field(max_length=32)
    version: str | None = Field(max_length=64)  # the columns' sizes (controller.results.store)
    precision: str | None = Field(max_length=16)
    device: str | None = Field(max_length=256)


class _Latency(_Open):
    samples_ms: list[Finite] = Field(max_length=MAX_SAMPLES)
    p50: Finite | None  # a native tool may print no median: legitimate, stored, not ranked
    p90: Finite | None
    p99: Finite | None
    mean: Finite
    std: Finite | None
    min: Finite
    max: Finite
    n: int = Field(ge=0, le=MAX_INT)
    cv: Finite | None
    # How the agent's sampling ended and how well it knew the median (a native tool says neither).
    stopped_by: str | None = Field(None, max_length=16)
    median_ci95: list[Finite] | None = Field(None, min_length=2, max_length=2)
    precision: Finite | None = Field(None, ge=0)


class _Throughput(_Open):
    # A measured batch ({batch, items_per_s, p50_ms, n}) or one that could not be ({batch, error}).
    batch: int = Field(ge=1, le=MAX_INT)
    items_per_s: Finite | None = None
    p50_ms: Finite | None = None
    n: int | None = Field(None, ge=0, le=MAX_INT)
    error: str | None = Field(None, max_length=MAX_STRING)


class _Accuracy(_Open):
    metric: str | None = Field(None, max_length=32)
    value: Finite | None = None


Millis = Annotated[float, Field(allow_inf_nan=False, ge=0)]


class _E2EStages(_Open):
    decode: Millis
    preprocess: Millis
    infer: Millis
    postprocess: Millis


class _E2E(_Open):
    # The application's view (decode + preprocess + infer + postprocess), or why it could not be had.
    p50_ms: Millis | None = None
    p90_ms: Millis | None = None
    n: int | None = Field(None, ge=1, le=MAX_INT)
    images: int | None = Field(None, ge=1, le=MAX_INT)
    stages_p50_ms: _E2EStages | None = None
    error: str | None = Field(None, max_length=MAX_STRING)

    @model_validator(mode="after")
    def _figures_or_error(self) -> "_E2E":
        if self.error is None:
            for key in ("p50_ms", "p90_ms", "n", "images", "stages_p50_ms"):
                if getattr(self, key) is None:
                    raise ValueError(f"an e2e block without an 'error' needs its {key!r}")
        return self


class _Result(_Open):
    protocol: Literal[1]
    job_id: str
    status: Literal["ok", "failed"]
    failure: _Failure | None = None
    engine: _Engine | None = None
    phases: dict[str, Finite | None] = Field(default_factory=dict)
    latency: _Latency | None = None
    throughput: list[_Throughput] = Field(default_factory=list, max_length=1000)
    memory: dict[str, Finite | None] = Field(default_factory=dict)
    accuracy: _Accuracy | None = None
    e2e: _E2E | None = None
    fingerprint: dict[str, Any] | None = None
    notes: list[str] = Field(default_factory=list, max_length=100)

    @model_validator(mode="after")
    def _complete(self) -> "_Result":
        if self.status == "ok" and (self.latency is None or self.engine is None):
            raise ValueError("an ok result needs its 'latency' and 'engine' blocks")
        missing = [k for k in PHASES if k not in self.phases]
        if self.status == "ok" and missing:
            raise ValueError(f"an ok result needs phases.{missing[0]} (a number, or null)")
        if self.status == "failed" and self.failure is None:
            raise ValueError("a failed result needs its 'failure' block")
        return self


class _Fingerprint(_Open):
    # "auto" chips are named "<arch> <cpu_model>", in a column of 128 characters.
    arch: str | None = Field(None, max_length=32)
    cpu_model: str | None = Field(None, max_length=95)


class _ProbedEngine(_Open):
    available: bool = False
    version: str | None = Field(None, max_length=64)
    # Planning reads it: OpenVINO's CPU default precision labels a configuration ("fp32@bf16").
    default_precision: str | None = Field(None, max_length=16)


class _Probe(_Open):
    protocol: Literal[1]
    fingerprint: _Fingerprint
    engines: dict[Annotated[str, Field(max_length=32)], _ProbedEngine]
    disk_free_mb: Finite | None = None


def read_result(path: Path, job_id: str) -> ResultRecord:
    """The result record in ``path``, a file fetched from the board, checked (``check_result``);
    a file too big, not UTF-8 or not JSON is a failed result at stage ``result`` too."""
    size = path.stat().st_size
    if size > MAX_RESULT_BYTES:
        return failed(job_id, "result", f"the board's result record is {size} bytes, over {MAX_RESULT_BYTES}")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return failed(job_id, "result", f"the board's result record is not UTF-8 text: byte {exc.start} is "
                                        f"{data[exc.start:exc.start + 1]!r}")
    try:
        record = json.loads(text)
    except json.JSONDecodeError as exc:
        return failed(job_id, "result", f"the board's result record is not JSON: {exc.msg} at line {exc.lineno} "
                                        f"column {exc.colno} (found {_shown(text[max(exc.pos - 20, 0):exc.pos + 20])})")
    except (ValueError, RecursionError) as exc:  # an integer of thousands of digits; arrays in arrays...
        return failed(job_id, "result", f"the board's result record cannot be read: {type(exc).__name__}: "
                                        f"{str(exc)[:200]}")
    return check_result(record, job_id)


def check_result(record: object, job_id: str) -> ResultRecord:
    """``record`` as the ResultRecord it claims to be, or a failed result at stage ``result``
    saying what is wrong with it (the first problem: field, and the value found there)."""
    problem = _problem(_Result, record)
    if problem:
        return failed(job_id, "result", f"the board's result record is malformed: {problem}")
    checked: dict[str, Any] = record  # type: ignore[assignment]  # a mapping: the schema passed
    if checked["job_id"] != job_id:
        return failed(job_id, "result", f"the board answered job {checked['job_id'][:80]!r}, not {job_id!r}")
    assert checked["protocol"] == PROTOCOL_VERSION
    result: ResultRecord = record  # type: ignore[assignment]  # checked above, kept as sent
    return result


def check_probe(record: object) -> str | None:
    """What is wrong with a board's probe record (field and value), or None."""
    return _problem(_Probe, record)


def _problem(schema: type[BaseModel], record: object) -> str | None:
    try:
        schema.model_validate(record)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error["loc"])
        return f"{where}: {error['msg']} (found {_shown(error.get('input'))})" if where else error["msg"]
    return _walk(record, "", 0)


def _walk(value: object, where: str, depth: int) -> str | None:
    """The first value anywhere in ``value`` that no column or JSON document of any database
    holds: a number that is not finite or too big, a string too long, with a NUL or a lone
    surrogate (no UTF-8 has it), nesting too deep."""
    if depth > MAX_DEPTH:
        return f"{where}: nested deeper than {MAX_DEPTH} levels"
    if isinstance(value, float) and not math.isfinite(value):
        return f"{where}: Input should be a finite number (found {value!r})"
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > 2**63 - 1:
        return f"{where}: Input should fit in 64 bits (found {_shown(value)})"
    if isinstance(value, str):
        return _bad_string(value, where, MAX_STRING)
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, inner in items:
        problem = (_bad_string(key, f"{where}: a key" if where else "a key", 256) if isinstance(key, str) else None) \
            or _walk(inner, f"{where}.{key}" if where else str(key), depth + 1)
        if problem:
            return problem
    return None


def _bad_string(value: str, where: str, limit: int) -> str | None:
    if len(value) > limit:
        return f"{where}: String should have at most {limit} characters (found {_shown(value)})"
    if "\0" in value:
        return f"{where}: String should not contain NUL characters (found {_shown(value)})"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        return f"{where}: String should be valid Unicode (found a lone surrogate at character {exc.start})"
    return None


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 120 else f"{text[:100]}... ({len(text)} characters)"
