"""The manifest of the controller's plugins: every built-in converter, native benchmark tool,
transport and variant pass, by name, as a lazy "module:Class" entry (``agent.registry``).

One table per kind, in one small module at the bottom of the layering, so that the layers above
can name and validate plugins (the inventory checks a board's transport, the spec its variants)
without importing the packages that implement them, and without those packages importing back.
A plugin's module registers its class with the registry's decorator when first imported; a
plugin from outside the tree registers itself the same way and needs no line here.

Engines run on the boards and live in the agent's own registry (``agent.engines.ENGINES``).
"""

from __future__ import annotations

from typing import Any

from agent.registry import Registry

# The element types are the base classes of the packages above (Converter, NativeBenchmark,
# Transport, Pass); naming them here would import those packages, so each package's own lookup
# function (converter_for, native_benchmark, open_transport, get_pass) returns the typed object.

# An engine whose models need converting -> its converter (controller.convert).
CONVERTERS: Registry[Any] = Registry("converter", {
    "openvino": "controller.convert.openvino:OpenVinoConverter",
    "paddlelite": "controller.convert.paddlelite:PaddleLiteConverter",
    "ncnn": "controller.convert.ncnn:NcnnConverter",
    "mnn": "controller.convert.mnn:MnnConverter",
})

# A benchmark binary an engine ships, for boards without Python (controller.boards.native).
NATIVE_TOOLS: Registry[Any] = Registry("native benchmark", {
    "benchmark_bin": "controller.boards.native.paddlelite:PaddleLiteBenchmark",
    "benchmark_model": "controller.boards.native.tflite:TfLiteBenchmark",
    "benchncnn": "controller.boards.native.ncnn:NcnnBenchmark",
    "mnn_benchmark": "controller.boards.native.mnn:MnnBenchmark",
    "benchmark_app": "controller.boards.native.openvino:BenchmarkApp",
})

# How the controller reaches a board (controller.boards.transports).
TRANSPORTS: Registry[Any] = Registry("transport", {
    "local": "controller.boards.transports.local:LocalTransport",
    "ssh": "controller.boards.transports.ssh:SshTransport",
    "adb": "controller.boards.transports.adb:AdbTransport",
    "fake": "controller.boards.transports.fake:FakeTransport",
})

# Variant passes, in the order a run builds and reports them: fp32 first, the reference every
# other variant is judged against (controller.passes).
PASSES: Registry[Any] = Registry("variant", {
    "fp32": "controller.passes.fp32:Fp32Fused",
    "fp16": "controller.passes.fp16:Fp16",
    "int8": "controller.passes.int8:Int8",
    "int8-mixed": "controller.passes.int8_mixed:Int8Mixed",
    "int8-nncf": "controller.passes.int8_nncf:Int8Nncf",
    "pruned": "controller.passes.pruned:Pruned",
})

__all__ = ["CONVERTERS", "NATIVE_TOOLS", "PASSES", "TRANSPORTS"]
