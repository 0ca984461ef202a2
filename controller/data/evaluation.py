"""The task metric and the latency of an ONNX model on the controller, on ONNX Runtime's CPU
provider: what the variant searches (int8-mixed, pruning) decide on. Boards measure the figures
in the results table; these only rank candidates before anything is pushed."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np


def accuracy(model: Any, dataset: Path, threads: int = 1) -> float:
    """The task metric of an ONNX model (proto or path) on a labelled dataset, as the agent
    computes it, on ONNX Runtime's CPU provider in batches where the model allows them."""
    import onnxruntime as ort

    from agent.dataset import load_dataset
    from agent.tasks import evaluator_for
    from controller.data.scoring import needs_scoring, score

    data = load_dataset(str(dataset))
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    blob = model if isinstance(model, (str, Path)) else model.SerializeToString()
    session = ort.InferenceSession(str(blob) if isinstance(blob, Path) else blob, opts,
                                   providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    fixed = any(isinstance(i.shape[0], int) for i in session.get_inputs())
    step = 1 if fixed else 16
    evaluator = evaluator_for(data)
    for start in range(0, data.count, step):
        idx = list(range(start, min(start + step, data.count)))
        batch = data.batch(idx)
        outs = session.run(None, {n: batch[n] for n in names})
        for k, i in enumerate(idx):
            evaluator.add(i, [o[k:k + 1] for o in outs])
    result = evaluator.result()
    if needs_scoring(result):  # detection's mAP: scored here as after a board's job
        result = score(result, dataset)
    return float(result["value"])


def latency_ms(model: Any, dataset: Path, runs: int = 30, threads: int = 1) -> float:
    """Median single-sample latency on ONNX Runtime's CPU provider (a tie-breaker and a bench
    figure, not a board measurement)."""
    import onnxruntime as ort

    from agent.dataset import load_dataset

    data = load_dataset(str(dataset))
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    blob = str(model) if isinstance(model, (str, Path)) else model.SerializeToString()
    session = ort.InferenceSession(blob, opts, providers=["CPUExecutionProvider"])
    feed = {i.name: data.batch([0])[i.name] for i in session.get_inputs()}
    session.run(None, feed)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        session.run(None, feed)
        times.append((time.perf_counter() - t0) * 1000.0)
    return float(np.median(times))
