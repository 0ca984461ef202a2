"""One benchmark job, start to finish: verify -> load -> measure -> accuracy -> e2e -> Result.

Every exception becomes a failed Result naming the stage it happened in; the agent never
crashes on a bad job, because a failed measurement is data the controller stores. The e2e
stage is the exception: by then the engine's own figures are measured and good, so a failure
there is recorded in the result's ``e2e`` block and the job stays ok.

The job's ``measure`` settings may leave stages out: ``accuracy: false``, ``e2e: false``, no
``batch_sizes`` (no throughput). A latency stopped as "slower" (above ``stop_above_ms``: the
configuration cannot be chosen) ends the job there, with a note saying so.
"""

from __future__ import annotations

import os
import time
import traceback
from typing import Any, Callable, Dict, List, Optional

import numpy as np

from agent import fingerprint, hygiene
from agent.artifacts import read_images, unpack_model, verify_artifacts
from agent.dataset import Dataset, load_dataset
from agent.engines import Engine, get_engine
from agent.measure import measure_latency, measure_throughput, memory_mb, one_line
from agent.protocol import (
    PROTOCOL_VERSION,
    EngineReport,
    ProtocolError,
    ResultRecord,
    Stage,
    failed,
    new_result,
)

MEASURE_DEFAULTS: Dict[str, Any] = {
    "warmup": 5, "min_iterations": 64, "min_seconds": 2.0, "max_seconds": 60.0,
    "batch_sizes": [1], "throughput_seconds": 1.0,
}
# Latency cycles over at most this many pre-built samples: enough variety, bounded memory.
LATENCY_SAMPLE_POOL = 32
STDERR_TAIL_CHARS = 4000


def _feeds_for(engine: Engine, data: Dataset, what: str) -> Callable[[List[int]], Dict[str, np.ndarray]]:
    """A function indices -> the model's inputs only, after checking the file has them all."""
    names = engine.input_names()
    missing = [n for n in names if n not in data.input_names]
    if missing:
        raise ValueError(
            "model input(s) %s not in the %s file (it has %s)"
            % (", ".join(missing), what, ", ".join(data.input_names) or "no inputs")
        )

    def feed(indices: List[int]) -> Dict[str, np.ndarray]:
        tensors = data.batch(indices)
        return {n: tensors[n] for n in names}

    return feed


def _optional_float(value: Any) -> Optional[float]:
    """A measure setting that may be null (no cap, no target, no ceiling), as a float."""
    return None if value is None else float(value)


def _fixed_batch(engine: Engine) -> Optional[int]:
    """The batch size the model's first input is fixed at, or None when it is dynamic."""
    for shape in engine.input_shapes().values():
        return shape[0] if shape and shape[0] is not None else None
    return None


class _JobRun:
    """The state of one job while it runs, so a failure can say how far it got."""

    def __init__(self, job: Dict[str, Any], workdir: str) -> None:
        self.job = job
        self.workdir = workdir
        self.stage: Stage = "agent"
        self.engine: Optional[Engine] = None
        self.result: ResultRecord = new_result(str(job.get("job_id", "")))

    def run(self) -> ResultRecord:
        try:
            self._prepare_board(self.job.get("board") or {})
            self.result["fingerprint"] = fingerprint.collect()
            self._stages()
        except Exception as exc:
            tail = traceback.format_exc()[-STDERR_TAIL_CHARS:]
            self.result.update(failed(self.result["job_id"], self.stage, one_line(exc), tail))
        finally:
            if self.engine is not None:
                try:
                    self.engine.close()
                except Exception:  # the result is what matters now
                    pass
            try:
                after = hygiene.state()
            except Exception:  # an unreadable sensor is recorded as no reading
                after = {"governor": None, "cpu_mhz": None, "temperature_c": None}
            self.result["board_state"]["after"] = after
            self.result["temperature_after_c"] = after["temperature_c"]
        return self.result

    def _prepare_board(self, board: Dict[str, Any]) -> None:
        """Pin, cool down and wait under the ceiling, as the inventory asks; record the state."""
        self.stage = "board"
        record = self.result["board_state"]
        record["cpus"] = hygiene.pin(board.get("cpus"))
        ceiling = board.get("max_temperature_c")
        record["waited_s"] = hygiene.settle(float(board.get("cooldown_s") or 0.0),
                                            None if ceiling is None else float(ceiling),
                                            float(board.get("thermal_wait_s") or 600.0))
        record["before"] = hygiene.state()

    def _stages(self) -> None:
        job, result = self.job, self.result
        if job.get("protocol") != PROTOCOL_VERSION:
            raise ProtocolError("job protocol %r is not the agent's %d" % (job.get("protocol"), PROTOCOL_VERSION))
        measure = dict(MEASURE_DEFAULTS)
        measure.update(job.get("measure") or {})
        engine_spec = job.get("engine") or {}
        name = str(engine_spec.get("name"))
        options = dict(engine_spec.get("options") or {})
        report: EngineReport = {"name": name, "version": None, "precision": None, "device": None}
        result["engine"] = report

        self.stage = "verify"
        paths = verify_artifacts(job.get("artifacts"), self.workdir)

        self.stage = "load"
        inputs_path = paths.get("inputs") or paths.get("dataset")
        if inputs_path is None:
            raise ProtocolError("job has neither an 'inputs' nor a 'dataset' artifact to measure on")
        inputs = load_dataset(inputs_path, require_task=False)
        if inputs.count < 1:
            raise ValueError("the measurement inputs file holds no sample")
        rss_before = memory_mb()["rss_mb"]
        engine = self.engine = get_engine(name)
        report["version"] = engine.version()
        t0 = time.perf_counter()
        engine.load(unpack_model(paths["model"]), options)
        result["phases"]["load_ms"] = (time.perf_counter() - t0) * 1000.0
        report.update({"precision": engine.precision(), "device": engine.device()})

        self.stage = "measure"
        feed = _feeds_for(engine, inputs, "measurement inputs")
        pool = [feed([i]) for i in range(min(inputs.count, LATENCY_SAMPLE_POOL))]
        t0 = time.perf_counter()
        engine.run(pool[0])
        result["phases"]["first_inference_ms"] = (time.perf_counter() - t0) * 1000.0
        latency = result["latency"] = measure_latency(
            lambda i: engine.run(pool[i % len(pool)]),
            warmup=int(measure["warmup"]),
            min_iterations=int(measure["min_iterations"]),
            min_seconds=float(measure["min_seconds"]),
            max_seconds=_optional_float(measure["max_seconds"]),
            inner=engine.last_latency_ms,
            precision=_optional_float(measure.get("precision")),
            stop_above_ms=_optional_float(measure.get("stop_above_ms")),
        )
        pool.clear()  # free the samples before the throughput batches are built
        slower = latency["stopped_by"] == "slower"
        if not slower:
            result["throughput"] = measure_throughput(
                engine.run,
                lambda b: feed([i % inputs.count for i in range(b)]),
                batch_sizes=list(measure["batch_sizes"] or []),
                seconds=float(measure["throughput_seconds"]),
                max_seconds=_optional_float(measure["max_seconds"]),
                fixed_batch=_fixed_batch(engine),
            )
        # Right after measuring, so the accuracy dataset does not count in the peak.
        after = memory_mb()
        result["memory"] = {
            "rss_before_load_mb": rss_before,
            "peak_rss_mb": after["peak_rss_mb"],
            "rss_after_measure_mb": after["rss_mb"],
        }
        if slower:  # it cannot be chosen: its other figures would only cost the board time
            result.setdefault("notes", []).append(
                "stopped at %d samples: median %.4g ms is above the %.4g ms limit (the run's slower_factor "
                "times the best configuration within the accuracy budget on this board); accuracy, "
                "throughput and e2e not measured" % (latency["n"], latency["p50"], float(measure["stop_above_ms"])))
            return

        if paths.get("dataset") and measure.get("accuracy", True):
            self.stage = "accuracy"
            result["accuracy"] = self._accuracy(engine, paths["dataset"], paths.get("task"))

        if paths.get("images") and measure.get("e2e", True):
            # The engine is freed first: the runtime loads its own instance of the same artifact with
            # the same options, so the two are never in memory together.
            self.engine = None
            try:
                engine.close()
            except Exception:  # its figures are taken; the runtime's instance is a fresh one
                pass
            result["e2e"] = measure_e2e(job, paths, measure)

    def _accuracy(self, engine: Engine, path: str, module: Optional[str]) -> Dict[str, Any]:
        """Feed the dataset one sample at a time (batch 1) to the task's evaluator (a user's own
        task brings its module as the job's ``task`` artifact)."""
        from agent.tasks import evaluator_for  # here: a task problem fails only this stage

        data = load_dataset(path)
        evaluator = evaluator_for(data, module)
        feed = _feeds_for(engine, data, "dataset")
        t0 = time.perf_counter()
        for i in range(data.count):
            evaluator.add(i, engine.run(feed([i])))
        self.result["phases"]["accuracy_ms"] = (time.perf_counter() - t0) * 1000.0
        return dict(evaluator.result())


def runtime_spec(job: Dict[str, Any], paths: Dict[str, str]) -> Dict[str, Any]:
    """The job's model as a bundle's manifest entry (``agent.runtime.model``): its artifact, engine
    and options, and the task, task parameters and preprocessing its evaluation dataset declares,
    so the runtime runs exactly what the accuracy stage scored."""
    if not paths.get("dataset"):
        raise ValueError("no evaluation dataset in the job: it declares the task and the preprocessing")
    data = load_dataset(paths["dataset"])
    if data.task == "raw" or not data.input_names:
        raise ValueError("task %r takes tensors, not images" % data.task)
    params = dict(data.params)
    if data.task in ("ocr-rec", "rec") and "charset" in data.labels:
        params["charset"] = [str(c) for c in data.labels["charset"].tolist()]
    if paths.get("task"):
        params["module_path"] = os.path.abspath(paths["task"])
    spec = (data.meta.get("inputs") or {}).get(data.input_names[0]) or {}
    engine = job.get("engine") or {}
    return {
        "name": str(job.get("job_id", "model")), "task": data.task, "task_params": params,
        "engine": str(engine.get("name")), "options": dict(engine.get("options") or {}),
        "artifact": {"file": os.path.abspath(paths["model"])}, "preprocess": spec.get("preprocess"),
    }


def measure_e2e(job: Dict[str, Any], paths: Dict[str, str], measure: Dict[str, Any]) -> Dict[str, Any]:
    """What a user's application sees: an image file's bytes decoded, preprocessed, inferred and
    postprocessed by the deployment runtime (``agent.runtime``), one image at a time (batch 1),
    cycling through the job's images with the latency settings. p50/p90 are of each call's wall
    time, ``stages_p50_ms`` of each stage's own. Any failure is returned as {"error": ...}."""
    try:
        return _measure_e2e(job, paths, measure)
    except Exception as exc:  # the engine-only figures stand; this block says what went wrong
        return {"error": one_line(exc)}


def _measure_e2e(job: Dict[str, Any], paths: Dict[str, str], measure: Dict[str, Any]) -> Dict[str, Any]:
    from agent.measure import latency_stats
    from agent.runtime.model import STAGES, LoadedModel
    from agent.tasks.preprocess import decode_image

    images = read_images(paths["images"])
    if not images:
        raise ValueError("the images artifact holds no image")
    model = LoadedModel(os.path.dirname(os.path.abspath(paths["model"])), runtime_spec(job, paths))
    stages: Dict[str, List[float]] = {k: [] for k in STAGES}
    try:
        model.load()

        def call(i: int) -> None:
            start = time.perf_counter()
            image = decode_image(images[i % len(images)][1])
            decode = (time.perf_counter() - start) * 1000.0
            timing = model.run_images([image])[0]["timing_ms"]
            stages["decode"].append(decode)
            for k in STAGES[1:]:
                stages[k].append(float(timing[k]))

        warmup = int(measure["warmup"])
        latency = measure_latency(
            call, warmup=warmup, min_iterations=int(measure["min_iterations"]),
            min_seconds=float(measure["min_seconds"]), max_seconds=_optional_float(measure["max_seconds"]),
        )
    finally:
        model.close()
    return {
        "p50_ms": latency["p50"], "p90_ms": latency["p90"], "n": latency["n"], "images": len(images),
        # The warm-up calls were timed by stage too: only the measured ones count.
        "stages_p50_ms": {k: latency_stats(v[warmup:])["p50"] for k, v in stages.items()},
        "stopped_by": latency["stopped_by"],
    }


def run_job(job: Dict[str, Any], workdir: str) -> ResultRecord:
    """Run one job whose artifact files sit in ``workdir``; always returns a Result dict."""
    if not isinstance(job, dict):
        return failed("", "agent", "a job must be a JSON object, not %s" % type(job).__name__)
    return _JobRun(job, workdir).run()
