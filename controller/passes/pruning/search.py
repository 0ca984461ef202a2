"""The search: each group's sensitivity, the greedy plan, the cut that meets the budget, and
fine-tuning past it (``prune``, the pruned variant's entry point)."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from controller.data.datasets import count, extend_dataset, rendered, sample_bytes
from controller.data.evaluation import accuracy
from controller.passes.pruning import PruningError
from controller.passes.pruning.groups import Group, find_groups
from controller.passes.pruning.options import PruningOptions
from controller.passes.pruning.surgery import apply, channel_activity, cost, keep_indices

# Fine-tuning samples are rendered with a seed apart from both calibration and evaluation.
TRAIN_SEED_OFFSET = 2_000_033
# With fine-tuning and no target given, prune this share of the MACs (the 30-50%).
DEFAULT_TARGET_FLOPS = 0.4
TRAIN_BYTES = 1 << 30  # rendered fine-tuning samples are capped at this much memory
EPS_DROP = 0.002  # a step predicted to cost nothing still costs something: ties go by MACs



def sensitivity(model: Any, groups: list[Group], dataset: Path, ratios: tuple[float, ...], round_to: int,
                threads: int = 1, activity: dict[str, np.ndarray] | None = None) -> list[dict[str, Any]]:
    """Accuracy of the model with each prunable group alone cut at each ratio."""
    base_cost = cost(model)
    rows = []
    for grp in groups:
        if not grp.prunable:
            continue
        points = []
        seen: set[int] = set()
        for r in ratios:
            keep = keep_indices(model, grp, r, round_to, activity)
            if keep.size == grp.channels or keep.size in seen:
                continue  # too few channels for this ratio at this granularity
            seen.add(keep.size)
            pruned = apply(model, groups, {grp.id: keep})
            c = cost(pruned)
            points.append({"ratio": r, "keep": int(keep.size), "accuracy": accuracy(pruned, dataset, threads),
                           "macs_saved": base_cost["macs"] - c["macs"], "params_saved": base_cost["params"] - c["params"]})
        if points:
            rows.append({"group": grp.id, "channels": grp.channels, "producers": grp.producers, "points": points})
    return rows


# --- choice ----------------------------------------------------------------------------------


def greedy_order(table: list[dict[str, Any]], reference: float, max_ratio: float,
                 weigh: dict[str, float]) -> list[tuple[int, int, float]]:
    """Every step (group, point index, predicted total drop after it), cheapest accuracy per
    saving first: a group moves to its next ratio only after its previous one was taken.

    ``weigh`` says what a saving is worth: {"macs": 1/total MACs} and/or {"params": 1/total}.
    """
    level = {row["group"]: -1 for row in table}
    rows = {row["group"]: row for row in table}
    drop_now = {gid: 0.0 for gid in level}
    saved_now = {gid: 0.0 for gid in level}
    steps: list[tuple[int, int, float]] = []
    while True:
        best = None
        for gid, row in rows.items():
            nxt = level[gid] + 1
            if nxt >= len(row["points"]) or row["points"][nxt]["ratio"] > max_ratio + 1e-9:
                continue
            p = row["points"][nxt]
            drop = max(reference - p["accuracy"], 0.0)
            saved = sum(p[f"{k}_saved"] * w for k, w in weigh.items())
            gain = saved - saved_now[gid]
            worse = max(drop - drop_now[gid], 0.0) + EPS_DROP
            if gain <= 0:
                continue
            score = gain / worse
            if best is None or score > best[0]:
                best = (score, gid, nxt, drop, saved)
        if best is None:
            return steps
        _, gid, nxt, drop, saved = best
        level[gid], drop_now[gid], saved_now[gid] = nxt, drop, saved
        steps.append((gid, nxt, sum(drop_now.values())))


def plan_of(model: Any, groups: list[Group], table: list[dict[str, Any]], steps: list[tuple[int, int, float]],
            round_to: int, activity: dict[str, np.ndarray] | None = None) -> dict[int, np.ndarray]:
    """The channels kept after taking ``steps`` (each group at the last ratio the steps reached)."""
    rows = {row["group"]: row for row in table}
    by_id = {grp.id: grp for grp in groups}
    level: dict[int, int] = {}
    for gid, idx, _ in steps:
        level[gid] = idx
    return {gid: keep_indices(model, by_id[gid], rows[gid]["points"][idx]["ratio"], round_to, activity)
            for gid, idx in level.items()}


def _longest_prefix(n: int, ok: Any) -> int:
    """The longest prefix length k in 0..n with ok(k), assuming ok is (roughly) monotone;
    ok(0) is taken as true."""
    if n == 0 or ok(n):
        return n
    low, high = 0, n  # ok(low), not ok(high)
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (mid, high) if ok(mid) else (low, mid)
    return low


# --- the search -------------------------------------------------------------------------------


def prune(fp32: Path, calibration: Path, out: Path, options: PruningOptions, train: Path | None = None,
          keep: dict[str, Any] | None = None, threads: int = 1) -> dict[str, Any]:
    """Write the pruned (and, where torch is installed, fine-tuned) model to ``out``; the report
    says which groups were cut and how far, which were skipped and why, and every measurement.

    ``options.budget`` must be set (the pruned pass sets selection's when the spec does not).
    ``calibration`` is extended to ``samples`` when it was rendered (else used as it is);
    ``train`` is the fine-tuning set, rendered here with a seed of its own when not given.
    ``keep``, when given, receives the intermediate models (for benchmarks): "surgery" (the
    budget met by surgery alone) and "untrained" (the fine-tuned plan before training)."""
    import onnx

    t_start = time.perf_counter()
    if options.budget is None:
        raise PruningError("pruning needs an accuracy budget (options.budget)")
    budget = options.budget
    ratios = tuple(options.ratios)
    round_to, criterion = options.round_to, options.criterion
    target_flops, target_params = options.target_flops, options.target_params
    if options.finetune == "auto" and target_flops is None and target_params is None:
        from controller.passes.finetune.training import available

        if available():  # training can win accuracy back: aim past what surgery alone keeps
            target_flops = DEFAULT_TARGET_FLOPS
    model = onnx.load(str(fp32))
    groups = find_groups(model)
    base = cost(model)
    weigh: dict[str, float] = {}
    if target_params is not None:
        weigh["params"] = 1.0 / max(base["params"], 1)
    if target_flops is not None or not weigh:
        weigh["macs"] = 1.0 / max(base["macs"], 1)

    with tempfile.TemporaryDirectory(prefix="edgefarm-prune-") as tmp_dir:
        tmp = Path(tmp_dir)
        data = (extend_dataset(calibration, options.samples, fp32, tmp / "sensitivity.npz")
                if rendered(calibration) else calibration)
        used = count(data)
        reference = accuracy(model, data, threads)
        t0 = time.perf_counter()
        activity = channel_activity(model, groups, data, threads=threads) if criterion == "activation" else None
        table = sensitivity(model, groups, data, ratios, round_to, threads, activity)
        t_sens = time.perf_counter() - t0
        order = greedy_order(table, reference, options.max_ratio, weigh)

        def build(k: int) -> Any:
            """The model after the first k greedy steps."""
            return apply(model, groups, plan_of(model, groups, table, order[:k], round_to, activity))

        def reached(k: int) -> bool:
            """Do the first k steps meet the MAC / parameter targets?"""
            c = cost(build(k))
            return ((target_flops is None or 1 - c["macs"] / base["macs"] >= target_flops)
                    and (target_params is None or 1 - c["params"] / base["params"] >= target_params))

        # The steps a target asks for (all of them without a target: as far as the budget allows).
        wanted = len(order)
        if target_flops is not None or target_params is not None:
            wanted = next((k for k in range(1, len(order) + 1) if reached(k)), len(order))
        measured: dict[int, float] = {}

        def holds(k: int) -> bool:
            if k not in measured:
                measured[k] = accuracy(build(k), data, threads)
            return reference - measured[k] <= budget

        # Surgery alone: the greedy prefix the predicted drops allow, cut to what really holds.
        predicted = next((k for k, (_, _, d) in enumerate(order) if d > budget), len(order))
        chosen = _longest_prefix(min(predicted, wanted), holds)
        holds(chosen)
        result: dict[str, Any] = {"steps": chosen, "accuracy": measured[chosen], "finetuned": False}
        best_model = build(chosen)
        if keep is not None:
            keep["surgery"] = best_model

        tuning: dict[str, Any] = {"status": "off"}
        if options.finetune != "off" and wanted > chosen:
            tuning = _finetune_search(model, groups, table, order, chosen, wanted, reference, budget, data,
                                      fp32, calibration, train, tmp, options, round_to, threads, activity)
            if tuning.get("chosen") is not None:
                k = tuning["chosen"]["steps"]
                if keep is not None:
                    keep["untrained"] = build(k)
                best_model = tuning.pop("model")
                result = {"steps": k, "accuracy": tuning["chosen"]["accuracy"], "finetuned": True}
            tuning.pop("model", None)
        onnx.checker.check_model(best_model)
        onnx.save(best_model, str(out))

    after = cost(best_model)
    plan = plan_of(model, groups, table, order[:result["steps"]], round_to, activity)
    by_id = {grp.id: grp for grp in groups}
    return {
        "budget": budget, "criterion": criterion,
        "target_flops": target_flops, "target_params": target_params,
        "samples": used,
        "fp32_accuracy_on_calibration": reference,
        "accuracy_on_calibration": result["accuracy"],
        "drop_on_calibration": reference - result["accuracy"],
        "met_budget": reference - result["accuracy"] <= budget,
        "finetuned": result["finetuned"],
        "macs_before": base["macs"], "macs_after": after["macs"],
        "params_before": base["params"], "params_after": after["params"],
        "flops_removed": 1 - after["macs"] / max(base["macs"], 1),
        "params_removed": 1 - after["params"] / max(base["params"], 1),
        "size_before": fp32.stat().st_size, "size_after": out.stat().st_size,
        "pruned": [{"group": gid, "channels": by_id[gid].channels, "kept": int(keep.size),
                    "producers": by_id[gid].producers} for gid, keep in sorted(plan.items())],
        "skipped": [grp.describe() for grp in groups if not grp.prunable] + [
            dict(grp.describe(), skipped=[f"{grp.channels} channels: nothing to cut in steps of {round_to}"])
            for grp in groups if grp.prunable and grp.id not in {row["group"] for row in table}],
        "sensitivity": table,
        "surgery_only": {"steps": chosen, "accuracy": measured[chosen]},
        "finetune": tuning,
        "seconds": {"sensitivity": t_sens, "total": time.perf_counter() - t_start},
    }


def _finetune_search(model: Any, groups: list[Group], table: list[dict[str, Any]],
                     order: list[tuple[int, int, float]], floor: int, wanted: int, reference: float,
                     budget: float, data: Path, fp32: Path, calibration: Path, train: Path | None, tmp: Path,
                     options: PruningOptions, round_to: int, threads: int,
                     activity: dict[str, np.ndarray] | None) -> dict[str, Any]:
    """Prune to the target, fine-tune, check the budget on the calibration samples; on a miss,
    back off halfway towards what surgery alone reached, a bounded number of times."""
    from controller.passes.finetune import FinetuneUnsupported
    from controller.passes.finetune.training import available, finetune

    if not available():
        return {"status": "unavailable: torch is not installed"}
    if train is None:
        if not rendered(calibration):
            return {"status": "no training data: the calibration set was not rendered and none was given"}
        # Rendered samples stay in memory as uint8: a 640x640 detector would need 5 GB for 4000.
        samples = max(64, min(options.train_samples, TRAIN_BYTES // sample_bytes(calibration)))
        train = extend_dataset(calibration, samples, fp32, tmp / "train.npz", seed_offset=TRAIN_SEED_OFFSET)
    samples = count(train)
    tried: list[dict[str, Any]] = []
    best: dict[str, Any] | None = None
    best_model = None
    k = wanted
    for _ in range(options.attempts):
        student = apply(model, groups, plan_of(model, groups, table, order[:k], round_to, activity))
        try:
            tuned, report = finetune(model, student, train, options)
        except FinetuneUnsupported as exc:
            return {"status": f"unsupported: {exc}", "attempts": tried}
        acc = accuracy(tuned, data, threads)
        c = cost(tuned)
        entry = {"steps": k, "accuracy": acc, "drop": reference - acc, "macs": c["macs"], "params": c["params"],
                 "train": report}
        tried.append(entry)
        if reference - acc <= budget:
            best, best_model = entry, tuned
            break
        nxt = floor + (k - floor) // 2
        if nxt <= floor or nxt == k:
            break
        k = nxt
    out: dict[str, Any] = {"status": "ok" if best else "missed the budget", "attempts": tried,
                           "train_samples": samples,
                           "chosen": {k: v for k, v in best.items() if k != "train"} if best else None}
    if best_model is not None:
        out["model"] = best_model
    return out
