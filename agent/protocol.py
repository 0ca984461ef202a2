"""The wire contract between the controller and the agent (protocol version 1).

Both sides speak plain JSON files so that the agent stays standard library + numpy and can run
under any Python >= 3.8 on a board. The controller writes ``job.json`` into the job's work
directory, runs ``python agent-<hash>.pyz run job.json --out result.json`` there, and reads
``result.json`` back. File names in a job are relative to the job's work directory.

Job (controller -> agent)::

    {
      "protocol": 1,
      "job_id": "r12-ppocr-det-int8-openvino",
      "engine": {"name": "openvino", "options": {"threads": null, "precision": "f32"}},
      "artifacts": {                      # every file is checked against its sha256 before use
        "model":   {"file": "model.onnx",   "sha256": "..."},
        "inputs":  {"file": "inputs.npz",   "sha256": "..."},    # measurement inputs
        "dataset": {"file": "dataset.npz",  "sha256": "..."}     # accuracy data, or null
      },
      "measure": {"warmup": 5, "min_iterations": 64, "min_seconds": 2.0, "max_seconds": 60.0,
                  "batch_sizes": [1, 4], "throughput_seconds": 1.0},
      "board": {"cpus": [1] | null, "cooldown_s": 0, "max_temperature_c": null | 70,
                "thermal_wait_s": 600}           # optional; from the board's inventory entry
    }

Result (agent -> controller)::

    {
      "protocol": 1, "job_id": "...", "status": "ok" | "failed",
      "failure": null | {"stage": "board|verify|load|measure|accuracy|agent", "message": "...",
                         "stderr_tail": "..."},
      "fingerprint": {"arch", "cpu_model", "cores", "governor", "temperature_c", "os",
                      "python", "hostname"},
      "engine": {"name", "version", "precision", "device"},   # precision really computed in
      "phases": {"load_ms": float, "first_inference_ms": float},
      "latency": {"samples_ms": [...], "p50", "p90", "p99", "mean", "std", "min", "max",
                  "n", "cv", "percentile_method": "linear"},
      "throughput": [{"batch": 1, "items_per_s": float, "p50_ms": float, "n": int}, ...],
      "memory": {"rss_before_load_mb": float, "peak_rss_mb": float},
      "accuracy": null | {"metric": "hmean", "value": float, "samples": int,
                          "metrics": {...every figure the task computes...}},
      "temperature_after_c": float | null,
      "board_state": {"before": {"governor", "cpu_mhz", "temperature_c"}, "after": {...},
                      "cpus": [1] | null, "waited_s": float}
    }

Dataset file (``.npz`` written by ``controller.data.datasets``; the measurement inputs file has the
same layout, usually without labels). No pickled objects, so ``np.load(allow_pickle=False)``
reads it:

- ``__meta__``: 0-d unicode array holding JSON::

      {"task": "det" | "rec" | "cls" | "agreement", "count": N,
       "inputs": {"x": {"normalize": {"scale": 0.00392, "mean": [..3], "std": [..3]} | null}},
       "params": {...task parameters, e.g. det thresholds...}}

- ``input:<name>``: array [N, ...] in model layout (NCHW). uint8 images are turned into the
  model's float32 tensor as ``(x * scale - mean[c]) / std[c]`` per channel; float arrays with
  ``normalize: null`` are fed as they are (cast to float32).
- task labels:
  - det: ``boxes`` float32 [M, 5] = (sample index, x0, y0, x1, y1) in input pixels;
  - rec: ``text`` unicode [N], ``charset`` unicode [K] (CTC index 0 is blank, index i>0 is
    charset[i-1]);
  - cls: ``label`` int64 [N] (0 = upright, 1 = rotated 180 degrees);
  - agreement: ``reference:<output name>`` float32 [N, ...], the fp32 outputs of the source
    model on the same inputs.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Dict

PROTOCOL_VERSION = 1
META_KEY = "__meta__"
INPUT_PREFIX = "input:"
REFERENCE_PREFIX = "reference:"
TASKS = ("det", "rec", "cls", "agreement")
FAILURE_STAGES = ("board", "verify", "load", "measure", "accuracy", "agent", "transport", "convert")


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


def sha256_file(path: str) -> str:
    """Hex sha256 of a file: how every artifact is named and checked on both sides."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def failed(job_id: str, stage: str, message: str, stderr_tail: str = "") -> Dict[str, Any]:
    """A result that records a failure as data, so the run goes on and the row is stored."""
    return {
        "protocol": PROTOCOL_VERSION,
        "job_id": job_id,
        "status": "failed",
        "failure": {"stage": stage, "message": message, "stderr_tail": stderr_tail},
    }
