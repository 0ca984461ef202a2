"""The wire contract between the controller and the agent (protocol version 1).

Both sides speak plain JSON files so that the agent stays standard library + numpy and can run
under any Python >= 3.8 on a board. The controller writes ``job.json`` into the job's work
directory, runs ``python agent-<hash>.pyz run job.json --out result.json`` there, and reads
``result.json`` back. File names in a job are relative to the job's work directory.

Each record is a TypedDict below (JobRecord, ResultRecord, ProbeRecord), made in one place each (``make_job``,
``new_result``/``failed``, ``make_probe``).

Job (controller -> agent)::

    {
      "protocol": 1,
      "job_id": "r12-ppocr-det-int8-openvino",
      "engine": {"name": "openvino", "options": {"threads": null, "precision": "f32"}},
      "artifacts": {                      # every file is checked against its sha256 before use
        "model":   {"file": "model.onnx",   "sha256": "..."},
        "inputs":  {"file": "inputs.npz",   "sha256": "..."},    # measurement inputs
        "dataset": {"file": "dataset.npz",  "sha256": "..."},    # accuracy data, or null
        "task":    {"file": "task.py",      "sha256": "..."},    # a user's own task module (optional)
        "images":  {"file": "images.tar",   "sha256": "..."}     # optional: a few evaluation image
                                                                 # files (plain tar members), for e2e
      },
      "measure": {"warmup": 5, "min_iterations": 64, "min_seconds": 2.0, "max_seconds": 60.0,
                  "batch_sizes": [1, 4], "throughput_seconds": 1.0},
      "board": {"cpus": [1] | null, "cooldown_s": 0, "max_temperature_c": null | 70,
                "thermal_wait_s": 600}           # optional; from the board's inventory entry
    }

Result (agent -> controller)::

    {
      "protocol": 1, "job_id": "...", "status": "ok" | "failed",
      "failure": null | {"stage": <one of FAILURE_STAGES>, "message": "...", "stderr_tail": "..."},
      "fingerprint": {"arch", "cpu_model", "cores", "governor", "temperature_c", "os",
                      "python", "hostname"},
      "engine": {"name", "version", "precision", "device"},   # precision really computed in
      "phases": {"load_ms": float, "first_inference_ms": float},
      "latency": {"samples_ms": [...], "p50", "p90", "p99", "mean", "std", "min", "max",
                  "n", "cv", "percentile_method": "linear", "elapsed_s": float,
                  "stopped_by": "target" | "precision" | "max_seconds" | "slower",
                  "median_ci95": [low, high], "precision": float},  # the CI's relative half-width
      "throughput": [{"batch": 1, "items_per_s": float, "p50_ms": float, "n": int}, ...],
      "memory": {"rss_before_load_mb": float, "peak_rss_mb": float},
      "accuracy": null | {"metric": "hmean", "value": float, "samples": int,
                          "metrics": {...every figure the task computes...}},
      "e2e": {"p50_ms": float, "p90_ms": float, "n": int, "images": int,     # only when the job has
              "stages_p50_ms": {"decode", "preprocess", "infer", "postprocess"},  # an "images" artifact
              "stopped_by": "target" | "max_seconds"}
             | {"error": "..."},     # the e2e stage failed: the engine figures stand, the job stays ok
      "temperature_after_c": float | null,
      "board_state": {"before": {"governor", "cpu_mhz", "temperature_c"}, "after": {...},
                      "cpus": [1] | null, "waited_s": float}
    }

``e2e`` is what an application sees, beside the engine's own ``latency``: each image file of the
``images`` artifact read as bytes, then decoded, preprocessed, inferred and postprocessed by the
deployment runtime (``agent.runtime.model``) with the task and preprocessing of the job's dataset,
one image at a time (batch 1), cycled with the ``measure`` settings after warm-up. ``p50_ms`` and
``p90_ms`` are of each call's wall time; ``stages_p50_ms`` of each stage's own time.

Dataset file (``.npz`` written by ``controller.data.datasets``; the measurement inputs file has the
same layout, usually without labels). No pickled objects, so ``np.load(allow_pickle=False)``
reads it:

- ``__meta__``: 0-d unicode array holding JSON::

      {"task": "ocr-det" | "ocr-rec" | "ocr-cls" | "raw" | "classification" | "detection"
               | "custom" (agent.tasks; v1 files' "det", "rec", "cls", "agreement" still read),
       "count": N,
       "inputs": {"x": {"preprocess": {...the model's declaration, agent.tasks.preprocess}}}
              or {"x": {"normalize": null}} (tensors fed as they are)
              or, in files of earlier versions, {"x": {"normalize": {"scale": 0.00392, "mean": [..3],
              "std": [..3]}}},
       "params": {...task parameters, e.g. det thresholds, class names, the decoder...}}

- ``input:<name>``: array [N, ...] in model layout. uint8 images (user images and the rendered
  OCR sets alike) are turned into the model's tensor by their ``preprocess`` declaration
  (``agent.tasks.preprocess.to_tensor``: ``(x * scale - mean[c]) / std[c]`` per channel, in its
  dtype); an older file's ``normalize`` does the same in float32 over axis 1; float arrays with
  ``normalize: null`` are fed as they are (cast to float32).
- task labels:
  - det: ``boxes`` float32 [M, 5] = (sample index, x0, y0, x1, y1) in input pixels;
  - rec: ``text`` unicode [N], ``charset`` unicode [K] (CTC index 0 is blank, index i>0 is
    charset[i-1]);
  - cls: ``label`` int64 [N] (0 = upright, 1 = rotated 180 degrees);
  - classification: ``label`` int64 [N] (index into params ``classes``);
  - detection: ``boxes`` float64 [M, 6] = (sample, x0, y0, x1, y1, class) in original image
    pixels, ``image_size`` [N, 2] (w, h), ``geometry`` [N, 4] (sx, sy, tx, ty: input = original
    * s + t), ``image_id`` [N], ``iscrowd`` [M], ``area`` [M] (COCO's own, for the controller's score);
  - custom: ``label_text`` unicode [N], scored on the controller by the task module;
  - agreement: ``reference:<output name>`` float32 [N, ...], the fp32 outputs of the source
    model on the same inputs.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Dict, List, Literal, Optional, Tuple, TypedDict, get_args

PROTOCOL_VERSION = 1
META_KEY = "__meta__"
INPUT_PREFIX = "input:"
REFERENCE_PREFIX = "reference:"

# Where a job failed: the board's conditions, the sha256 check, loading, measuring, scoring, the
# agent itself, reaching the board, converting the model for its engine, the result record the
# board sent back (malformed), the board's host (its Ray node lost, or the job's files not brought
# to it). One list for both sides.
Stage = Literal["board", "verify", "load", "measure", "accuracy", "agent", "transport", "convert", "result", "host"]
FAILURE_STAGES: Tuple[str, ...] = get_args(Stage)


# --- job: controller -> agent -----------------------------------------------------------------

class EngineRequest(TypedDict):
    name: str
    options: Dict[str, Any]


class ArtifactRef(TypedDict):
    file: str  # relative to the job's work directory
    sha256: str


class _MeasureRequired(TypedDict):
    warmup: int
    min_iterations: int
    min_seconds: float
    max_seconds: Optional[float]
    batch_sizes: List[int]
    throughput_seconds: float


class MeasureSettings(_MeasureRequired, total=False):
    # Stop sampling once the 95% CI of the median is within +/- this fraction of it (None: at the
    # two minimums).
    precision: Optional[float]
    # At min_iterations and min_seconds, a median above this stops the job there: no throughput,
    # accuracy or e2e.
    stop_above_ms: Optional[float]
    accuracy: bool  # default True: run the accuracy stage
    e2e: bool  # default True: time the runtime's whole pipeline when the job has images


class NativeSettings(TypedDict):
    """What an engine's own benchmark binary is asked for, on a board without Python."""

    warmup: int
    iterations: int
    threads: Optional[int]
    precision: Optional[str]
    input_shape: List[int]


class BoardConditions(TypedDict):
    cpus: Optional[List[int]]
    cooldown_s: float
    max_temperature_c: Optional[float]
    thermal_wait_s: float


class _JobRequired(TypedDict):
    protocol: int
    job_id: str
    engine: EngineRequest
    artifacts: Dict[str, ArtifactRef]  # filled by the board session, in the board's cache
    measure: MeasureSettings


class JobRecord(_JobRequired, total=False):
    board: BoardConditions
    native: NativeSettings


def make_job(job_id: str, engine: str, options: Dict[str, Any], measure: MeasureSettings,
             native: Optional[NativeSettings] = None) -> JobRecord:
    """The one place a job record is made."""
    job: JobRecord = {"protocol": PROTOCOL_VERSION, "job_id": job_id, "engine": {"name": engine, "options": options},
                "artifacts": {}, "measure": measure}
    if native is not None:
        job["native"] = native
    return job


# --- result: agent -> controller --------------------------------------------------------------

class Failure(TypedDict, total=False):
    stage: Stage
    message: str
    stderr_tail: str
    lost: bool  # the board went away mid-job: the controller reconnects and tries again


class Fingerprint(TypedDict):
    arch: Optional[str]
    cpu_model: Optional[str]
    cores: Optional[int]
    governor: Optional[str]
    cpu_mhz: Optional[float]
    temperature_c: Optional[float]
    os: Optional[str]
    python: Optional[str]
    hostname: Optional[str]


class EngineReport(TypedDict):
    name: str
    version: Optional[str]
    precision: Optional[str]  # what the engine really computed in
    device: Optional[str]


class ResultRecord(TypedDict, total=False):
    """A job's result. ``protocol``, ``job_id``, ``status`` and ``failure`` are always there; an
    ``ok`` result has the measurement blocks; the controller's session adds ``attempts``,
    ``notes``, ``started_at`` and ``ended_at``."""

    protocol: int
    job_id: str
    status: Literal["ok", "failed"]
    failure: Optional[Failure]
    fingerprint: Optional[Fingerprint]
    engine: Optional[EngineReport]
    phases: Dict[str, Optional[float]]
    latency: Optional[Dict[str, Any]]
    throughput: List[Dict[str, Any]]
    memory: Dict[str, Optional[float]]
    accuracy: Optional[Dict[str, Any]]
    e2e: Dict[str, Any]  # only when the job sent images: figures, or {"error": ...}
    temperature_after_c: Optional[float]
    board_state: Dict[str, Any]
    native: Dict[str, Any]
    attempts: int
    notes: List[str]
    started_at: float  # seconds since the epoch, when the job started on its board
    # Seconds since the epoch, when the board was done with the job (its retries included), before
    # the result waits for the driver to store it: a board's jobs end before its next one starts.
    ended_at: float


def new_result(job_id: str) -> ResultRecord:
    """The one place an ``ok`` result record starts: every block present, nothing measured yet."""
    return {
        "protocol": PROTOCOL_VERSION, "job_id": job_id,
        "status": "ok", "failure": None, "fingerprint": None, "engine": None,
        "phases": {}, "latency": None, "throughput": [], "memory": {},
        "accuracy": None, "temperature_after_c": None,
        "board_state": {"before": None, "after": None, "cpus": None, "waited_s": 0.0},
    }


def failed(job_id: str, stage: Stage, message: str, stderr_tail: str = "", lost: bool = False) -> ResultRecord:
    """A result that records a failure as data, so the run goes on and the row is stored.
    ``lost``: the board went away during the job, so the controller reconnects and tries again."""
    if stage not in FAILURE_STAGES:
        raise ValueError("unknown failure stage %r; one of %s" % (stage, ", ".join(FAILURE_STAGES)))
    failure: Failure = {"stage": stage, "message": message, "stderr_tail": stderr_tail}
    if lost:
        failure["lost"] = True
    return {"protocol": PROTOCOL_VERSION, "job_id": job_id, "status": "failed", "failure": failure}


def failure_of(result: ResultRecord) -> Failure:
    """The result's failure block; empty for a result that did not fail."""
    return result.get("failure") or {}


# --- probe: agent -> controller ---------------------------------------------------------------

class ProbeRecord(TypedDict):
    protocol: int
    fingerprint: Fingerprint
    engines: Dict[str, Dict[str, Any]]  # name -> {"available", "version", "reason", ...facts}
    disk_free_mb: Optional[float]


def make_probe(fingerprint: Fingerprint, engines: Dict[str, Dict[str, Any]],
               disk_free_mb: Optional[float]) -> ProbeRecord:
    """The one place a probe record is made (by the agent, or from shell commands on a board without Python)."""
    return {"protocol": PROTOCOL_VERSION, "fingerprint": fingerprint, "engines": engines,
            "disk_free_mb": disk_free_mb}


class ProtocolError(ValueError):
    """A job file the agent cannot accept (wrong version, missing field)."""


def read_job(path: str) -> Dict[str, Any]:
    with open(path, encoding="utf-8") as fh:
        job = json.load(fh)
    if job.get("protocol") != PROTOCOL_VERSION:
        raise ProtocolError(
            "job protocol %r is not the agent's %d" % (job.get("protocol"), PROTOCOL_VERSION)
        )
    for key in ("job_id", "engine", "artifacts", "measure"):
        if key not in job:
            raise ProtocolError("job has no %r" % key)
    return job


def sha256_file(path: "str | os.PathLike[str]") -> str:
    """Hex sha256 of a file: how every artifact is named and checked on both sides."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
