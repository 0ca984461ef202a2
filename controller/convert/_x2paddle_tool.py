"""ONNX -> Paddle inference model -> Paddle Lite .nb, run in the Paddle tool interpreter.

x2paddle, paddlepaddle and Paddle Lite's opt install where the controller's packages do not
(Paddle Lite's wheels stop at Python 3.10, paddlepaddle 2.6 wants numpy < 2), so the controller
runs this file by path in that interpreter (controller.convert.paddlelite). It imports nothing
from EdgeFarm and writes what it did as JSON to ``--result``; a failure ends with exit code 2
and one line on stderr, starting with "error: ".

    python _x2paddle_tool.py versions --result versions.json
    python _x2paddle_tool.py convert --onnx m.onnx --work dir --target x86 --out m.nb --result r.json
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import re
import sys
from pathlib import Path
from typing import Any, Dict, List

# Run by path, this folder is sys.path[0]: its paddlelite.py (the controller's converter) would
# shadow the paddlelite package. The controller also runs it with -I, which leaves it out.
_HERE = str(Path(__file__).resolve().parent)
sys.path[:] = [p for p in sys.path if p and str(Path(p).resolve()) != _HERE]


class ToolError(Exception):
    """A conversion step failed; the message is the one line the controller reports."""


def versions() -> Dict[str, str]:
    from importlib.metadata import version

    return {name: version(name) for name in ("x2paddle", "paddlepaddle", "paddlelite")}


def onnx_to_paddle(onnx_path: Path, work: Path) -> Path:
    """x2paddle's ONNX front end, step by step: an unsupported op is named in the error, and
    x2paddle.convert.onnx2paddle's telemetry requests (no internet here) are never made."""
    from x2paddle.decoder.onnx_decoder import ONNXDecoder
    from x2paddle.op_mapper.onnx2paddle.onnx_op_mapper import ONNXOpMapper
    from x2paddle.optimizer.optimizer import GraphOptimizer

    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            decoder = ONNXDecoder(str(onnx_path), True, None)
            mapper = ONNXOpMapper(decoder)
    except Exception as exc:
        # op_checker prints "========== Op ============" for each op it cannot map.
        missing = sorted(set(re.findall(r"^=+ (\w+) =+$", printed.getvalue(), re.M)))
        if missing:
            raise ToolError("x2paddle cannot convert ONNX op(s) %s" % ", ".join(missing)) from None
        raise ToolError("x2paddle: %s: %s" % (type(exc).__name__, _line(exc))) from None
    finally:
        sys.stderr.write(printed.getvalue())
    save_dir = work / "paddle"
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            mapper.paddle_graph.build()
            GraphOptimizer(source_frame="onnx").optimize(mapper.paddle_graph)
            mapper.paddle_graph.gen_model(str(save_dir))
    except SystemExit:  # x2paddle prints the export error and calls exit(0)
        lines = [ln.strip() for ln in printed.getvalue().splitlines() if ln.strip()]
        raise ToolError("x2paddle could not export the Paddle model: %s" % (lines[-1][:300] if lines else "no message")) from None
    except Exception as exc:
        raise ToolError("x2paddle: %s: %s" % (type(exc).__name__, _line(exc))) from None
    finally:
        sys.stderr.write(printed.getvalue())
    model = save_dir / "inference_model" / "model.pdmodel"
    if not model.is_file():
        raise ToolError("x2paddle wrote no inference model in %s" % save_dir)
    return model


def rename_feeds(model: Path, names: List[str], work: Path) -> Dict[str, Any]:
    """Give the model's inputs the original ONNX names (x2paddle prefixes every name with
    "x2paddle_"; Paddle names may hold '.', '@', '/'), so the board feeds the .nb by the same
    names as the ONNX model; save it again
    and return its feed names and shapes and its fetch names, in order."""
    import paddle

    paddle.enable_static()
    exe = paddle.static.Executor(paddle.CPUPlace())
    program, feeds, fetches = paddle.static.load_inference_model(str(model.with_suffix("")), exe)
    if names and len(names) != len(feeds):
        raise ToolError("x2paddle made %d inputs %s from the ONNX inputs %s" % (len(feeds), feeds, names))
    block = program.global_block()
    for old, new in zip(feeds, names):
        if old != new:
            block._rename_var(old, new)
    feed_vars = [block.var(n) for n in (names or feeds)]
    renamed = work / "renamed" / "model"
    paddle.static.save_inference_model(str(renamed), feed_vars, fetches, exe, program=program)
    return {
        "model": str(renamed) + ".pdmodel",
        "inputs": [{"name": v.name, "shape": list(v.shape)} for v in feed_vars],
        "outputs": [v.name for v in fetches],
    }


def quantize(model: Path, calibration: Path, work: Path, algo: str) -> Path:
    """Paddle's own post-training quantization of the fp32 inference model on the calibration
    samples (a plain .npz, input name -> float32 [N, ...]): quantize/dequantize pairs opt turns
    into int8 kernels. x2paddle cannot read ONNX QDQ models, so int8 starts from fp32 here."""
    import numpy as np
    import paddle
    from paddle.static.quantization import PostTrainingQuantization

    with np.load(calibration) as data:
        arrays = {name: data[name] for name in data.files}
    count = min(len(a) for a in arrays.values())
    samples = [{name: a[i:i + 1] for name, a in arrays.items()} for i in range(count)]

    class Samples(paddle.io.DataLoader):  # PTQ accepts only a DataLoader; it just iterates it
        def __init__(self) -> None:  # noqa: D107 (no worker processes, no dataset: a list)
            pass

        def __call__(self) -> Any:
            return iter(samples)

        def __len__(self) -> int:
            return count

    paddle.enable_static()
    ptq = PostTrainingQuantization(
        executor=paddle.static.Executor(paddle.CPUPlace()), model_dir=str(model.parent),
        model_filename=model.name, params_filename=model.with_suffix(".pdiparams").name,
        # onnx_format=True (quantize_linear ops) makes a graph with a cycle for some set orders
        # (PYTHONHASHSEED) on the cls model; the fake_quantize format Paddle Lite also reads does not.
        data_loader=Samples(), batch_nums=count, algo=algo, onnx_format=False,
        quantizable_op_type=["conv2d", "depthwise_conv2d", "mul", "matmul", "matmul_v2"],
        weight_quantize_type="channel_wise_abs_max",
    )
    ptq.quantize()
    out = work / "quantized"
    ptq.save_quantized_model(str(out), model_filename="model.pdmodel", params_filename="model.pdiparams")
    return out / "model.pdmodel"


def lite_opt(model: Path, target: str, out: Path, fp16: bool) -> None:
    """Paddle Lite's opt: the inference model -> a naive-buffer .nb for ``target``."""
    from paddlelite.lite import Opt

    opt = Opt()
    opt.set_model_file(str(model))
    opt.set_param_file(str(model.with_suffix(".pdiparams")))
    opt.set_valid_places(target)
    opt.set_model_type("naive_buffer")
    opt.set_optimize_out(str(out.with_suffix("")))  # opt appends ".nb" itself
    if fp16:
        opt.enable_fp16()
    opt.run()
    if not out.is_file():
        raise ToolError("paddle_lite_opt wrote no %s for valid_targets %r" % (out.name, target))


# Kernel keys a .nb stores per op, "op/alias/target/precision/layout", with Paddle Lite's enums.
_KERNEL = re.compile(rb"([a-z][a-z0-9_]*)/([a-z0-9_]+)/(\d{1,2})/(\d{1,2})/(\d{1,2})(?![0-9])")
_TARGETS = {1: "host", 2: "x86", 4: "arm", 5: "opencl", 6: "any", 18: "nnadapter"}
_PRECISIONS = {1: "fp32", 2: "int8", 3: "int32", 4: "any", 5: "fp16", 6: "bool", 7: "int64"}


def kernel_summary(nb: Path) -> Dict[str, int]:
    """How many ops run on which back end in which precision, e.g. {"arm/int8": 53, ...}:
    what opt really chose, since it ignores a request its build cannot honour."""
    counts: Dict[str, int] = {}
    for match in _KERNEL.finditer(nb.read_bytes()):
        target, precision = int(match.group(3)), int(match.group(4))
        key = "%s/%s" % (_TARGETS.get(target, str(target)), _PRECISIONS.get(precision, str(precision)))
        counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items()))


def _line(exc: BaseException) -> str:
    text = [line for line in str(exc).strip().splitlines() if line.strip()]
    return (text[-1] if text else type(exc).__name__)[:300]


def main(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["versions", "convert"])
    parser.add_argument("--result", required=True, type=Path)
    parser.add_argument("--onnx", type=Path)
    parser.add_argument("--work", type=Path)
    parser.add_argument("--target", default="x86")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--fp16", action="store_true")
    parser.add_argument("--calibration", type=Path, help="int8: calibration samples, a plain .npz")
    parser.add_argument("--algo", default="KL", help="int8: PTQ algorithm (KL, hist, mse, avg, abs_max, min_max)")
    parser.add_argument("--input-names", default="[]", help="the ONNX input names, a JSON list, in order")
    args = parser.parse_args(argv)
    try:
        if args.command == "versions":
            result: Dict[str, Any] = versions()
        else:
            if args.onnx is None or args.work is None or args.out is None:
                raise ToolError("convert needs --onnx, --work and --out")
            model = onnx_to_paddle(args.onnx, args.work)
            names = [str(n) for n in json.loads(args.input_names)]
            result = rename_feeds(model, names, args.work)
            model = Path(result.pop("model"))
            if args.calibration is not None:
                model = quantize(model, args.calibration, args.work, args.algo)
            lite_opt(model, args.target, args.out, args.fp16)
            result["kernels"] = kernels = kernel_summary(args.out)
            wanted = "fp16" if args.fp16 else "int8" if args.calibration is not None else None
            if wanted and not any(k.endswith("/" + wanted) for k in kernels):
                raise ToolError("paddle_lite_opt %s made no %s kernel for valid_targets %r (kernels: %s); its build "
                                "lacks them" % (versions()["paddlelite"], wanted, args.target,
                                                ", ".join("%s %d" % kv for kv in kernels.items())))
            result["versions"] = versions()
    except ToolError as exc:
        sys.stderr.write("error: %s\n" % exc)
        return 2
    args.result.write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
