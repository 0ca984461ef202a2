"""The training loop: the pruned student learns from the fp32 teacher (run by ONNX Runtime) and,
where the data has them, the labels; the steps are planned to fit the time limit."""

from __future__ import annotations

import importlib.util
import math
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from controller.passes.finetune import FinetuneUnsupported
from controller.passes.finetune.interpreter import build_module
from controller.passes.finetune.losses import distill_loss, heads
from controller.passes.pruning.options import PruningOptions

BATCH = 32
# Training keeps every intermediate tensor of a batch for the backward pass: the 640x640
# detector holds 0.7 GB of them per sample, so the batch shrinks to fit this much.
ACTIVATION_BYTES = 8 << 30
RMS_FLOOR = 1e-4  # a tensor of zeros (a bias) still moves, in absolute steps of lr * RMS_FLOOR
TEMPERATURE = 2.0
ALPHA = 0.7  # share of the distillation term
SEED = 0
PROBE_STEPS = 3  # steps timed to plan a run within the time limit
TEACHER_CACHE_BYTES = 256 << 20  # teacher outputs kept across epochs up to this size


def available() -> bool:
    """Is torch installed (without importing it)?"""
    return importlib.util.find_spec("torch") is not None


def trainer_version() -> str | None:
    """torch's version, or None: part of the pruned variant's cache key, since with torch the
    variant is fine-tuned and without it surgery alone (read from metadata: no torch import)."""
    from importlib import metadata

    try:
        return metadata.version("torch")
    except metadata.PackageNotFoundError:
        return None


def batch_size(model: Any) -> int:
    """BATCH, or fewer samples where their activations would not fit in ACTIVATION_BYTES."""
    from controller.passes.pruning.surgery import cost

    per_sample = 4 * max(1, cost(model)["activations"])  # float32
    return max(1, min(BATCH, ACTIVATION_BYTES // per_sample))


def finetune(teacher: Any, student: Any, train: Path, options: PruningOptions, batch: int | None = None,
             on_epoch: Callable[[int, float], None] | None = None) -> tuple[Any, dict[str, Any]]:
    """Train ``student`` (a pruned ONNX proto) on the dataset ``train`` with the training keys of
    ``options`` (epochs, lr, distill, max_seconds); returns the trained proto (same graph, new
    weights) and a report (loss per epoch, seconds, settings). ``batch``: samples per step
    (default: what fits, see batch_size)."""
    import onnxruntime as ort
    import torch
    import torch.nn.functional as F

    from agent.dataset import load_dataset

    epochs, lr, distill, max_seconds = options.epochs, options.lr, options.distill, options.max_seconds
    batch = batch or batch_size(student)
    temperature, alpha = TEMPERATURE, ALPHA
    torch.manual_seed(SEED)
    torch.set_num_threads(1)

    data = load_dataset(str(train))
    labels = data.labels.get("label") if data.task in ("cls", "ocr-cls") else None
    if labels is None and not distill:
        raise FinetuneUnsupported(f"a {data.task} dataset has no labels to train on without distillation")
    outputs = heads(student)
    module = build_module(student)
    names = [v.name for v in student.graph.input if v.name in data.input_names]
    want = sorted({h["tensor"] for h in outputs})

    # The teacher runs in ONNX Runtime (exactly the fp32 artifact); outputs kept when small.
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    session = ort.InferenceSession(teacher.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    cache: dict[int, list[np.ndarray]] = {}
    per_sample = None

    def teacher_out(idx: list[int], feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        nonlocal per_sample
        if all(i in cache for i in idx):
            return [np.concatenate([cache[i][k] for i in idx]) for k in range(len(cache[idx[0]]))]
        outs = session.run(None, feed)
        if per_sample is None:
            per_sample = sum(o.nbytes for o in outs) // len(idx)
        if per_sample * data.count <= TEACHER_CACHE_BYTES:
            for j, i in enumerate(idx):
                cache[i] = [o[j:j + 1] for o in outs]
        return outs

    steps_per_epoch = max(1, data.count // batch)
    # The cosine schedule runs over the steps that fit the time limit, planned from the speed
    # of the first steps: a run cut short by the clock would end at a high learning rate.
    plan = {"total": epochs * steps_per_epoch}
    # Adam moves a weight by about its learning rate per step whatever the gradient, and folding
    # batch norm leaves tensors whose scales span five orders of magnitude (RMS 3e-5 to 4 in the
    # PaddleOCR detector): one rate for all wrecks the small ones. Each tensor's rate is lr times
    # its RMS instead, the same relative step everywhere.
    rates = [{"params": [p], "lr": lr * max(float(p.detach().pow(2).mean().sqrt()), RMS_FLOOR)}
             for p in module.parameters()]
    optimizer = torch.optim.Adam(rates, lr=lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, plan["total"]) / plan["total"])))
    rng = np.random.default_rng(SEED)
    history = []
    t0 = time.perf_counter()
    t_probe = t0
    shortened = None
    done = 0
    module.train()
    for epoch in range(epochs):
        if done >= plan["total"]:
            break
        order = rng.permutation(data.count)
        losses = []
        for step in range(steps_per_epoch):
            idx = sorted(order[step * batch:(step + 1) * batch].tolist())
            feed = data.batch(idx)
            feed = {n: feed[n] for n in names}
            outs = module({n: torch.from_numpy(v) for n, v in feed.items()}, want)
            loss: Any = 0.0  # a tensor once a term adds to it
            if labels is not None:
                head = outputs[0]
                logits = outs[head["tensor"]]
                y = torch.from_numpy(np.asarray(labels[idx], dtype=np.int64))
                ce = F.cross_entropy(logits.reshape(len(idx), -1), y)
                loss = (1 - alpha) * ce if distill else ce
            if distill:
                loss = loss + (alpha if labels is not None else 1.0) * distill_loss(
                    outputs, outs, teacher_out(idx, feed), temperature)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            losses.append(float(loss.detach()))
            done += 1
            now = time.perf_counter()
            if done == 1:
                t_probe = now  # the first step pays for warm-up: timed from the second on
            elif done == 1 + PROBE_STEPS:
                fits = done + int((max_seconds - (now - t0)) / ((now - t_probe) / PROBE_STEPS))
                if fits < plan["total"]:
                    plan["total"] = max(done + 1, fits)
                    shortened = f"{plan['total']} of {epochs * steps_per_epoch} steps fit in {max_seconds:.0f} s"
            if done >= plan["total"] or now - t0 > max_seconds:
                break
        history.append(float(np.mean(losses)))
        if on_epoch is not None:
            on_epoch(epoch, history[-1])
        if done >= plan["total"] or time.perf_counter() - t0 > max_seconds:
            break
    module.eval()
    tuned = module.write_back()
    seconds = time.perf_counter() - t0
    return tuned, {"epochs": len(history), "steps": done, "loss": history, "seconds": seconds,
                   "seconds_per_step": seconds / max(done, 1),
                   "samples": data.count, "batch": batch, "lr": lr, "distill": distill,
                   "temperature": temperature if distill else None, "alpha": alpha if distill else None,
                   "labels": labels is not None, "shortened": shortened}
