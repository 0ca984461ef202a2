"""Native benchmark tools: measure an engine on a board that has no Python, with the engine's own binary.

Phones have no Python, so the agent cannot run there. Each engine ships a benchmark binary that
loads a model, times it and prints its own summary; a :class:`NativeBenchmark` knows one such
binary: how to call it (an argv list, never a shell string) and how to read what it prints.
:func:`to_result` turns the summary into the result record the agent writes, with None wherever the
tool is silent: the tool's aggregates are kept as it computed them, and no percentile is made up
from a mean.

A setting a tool cannot honour is refused with ValueError when the argv is built, rather than
dropped: a record that says warmup=5 for a binary that always warms up 8 times would be wrong.

The registry is ``controller.plugins.NATIVE_TOOLS``: a lazy table name -> "module:Class", so
importing this package imports no tool module; a tool module registers its class when imported,
and a second class for a name is refused.

The tools write their reports to different streams (benchncnn and benchmark_model to stderr,
benchmark_bin and MNN's benchmark.out to stdout), so ``parse`` takes the whole console output:
stdout and stderr together, as ``adb shell`` returns them or one after the other.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar, Literal, NoReturn

from agent.protocol import ResultRecord, new_result
from controller.errors import EdgeFarmError
from controller.plugins import NATIVE_TOOLS

__all__ = [
    "NativeBenchmark", "NativeOutputError", "NativeRun", "NativeSummary",
    "native_benchmark", "register", "to_result",
]

# As much of the output as a result keeps, like the agent's stderr tail: enough for a person to
# see what the tool said, small enough for a database row.
RAW_TAIL_CHARS = 4000

Cores = Literal["big", "little", "all"]
CORES: tuple[Cores, ...] = ("big", "little", "all")


class NativeOutputError(EdgeFarmError):
    """A tool's output lacks what a summary needs (a line missing, a crash): one line saying which."""


@dataclass(frozen=True)
class NativeRun:
    """What to ask a tool for.

    A field left None is not passed, so the tool's own default holds. A tool that takes a setting
    by position (so it cannot be left out) or has no such setting refuses the run with ValueError.

    - ``input_shape``: the model's single input, batch first (NCHW), as EdgeFarm writes shapes;
      each tool converts it to its own order. A list is accepted and kept as a tuple.
    - ``cores``: which CPU cluster the tool binds to, for tools with such an option.
    - ``backend`` and ``precision``: in the tool's own words; each tool class lists what it takes.
    """

    warmup: int
    iterations: int
    threads: int | None = None
    input_shape: tuple[int, ...] | None = None
    cores: Cores | None = None
    backend: str | None = None
    precision: str | None = None

    def __post_init__(self) -> None:
        if self.warmup < 0:
            raise ValueError(f"warmup must be >= 0, not {self.warmup}")
        if self.iterations < 1:
            raise ValueError(f"iterations must be >= 1, not {self.iterations}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be >= 1, not {self.threads}")
        if self.cores is not None and self.cores not in CORES:
            raise ValueError(f"cores must be one of {', '.join(CORES)}, not {self.cores!r}")
        if self.input_shape is not None:
            shape = tuple(int(d) for d in self.input_shape)
            if not shape or min(shape) < 1:
                raise ValueError(f"input_shape needs positive dimensions, not {list(self.input_shape)}")
            object.__setattr__(self, "input_shape", shape)


@dataclass(frozen=True)
class NativeSummary:
    """What one run of a tool reported, in milliseconds, and nothing it did not report.

    ``n`` is the number of timed runs the tool says it measured (benchmark_model may stop early at
    its time cap, so it can differ from the run asked for). ``std_ms`` is the tool's own figure
    (benchmark_model's is the population standard deviation). ``p50_ms`` is set only where the tool
    prints a median. ``init_ms`` is the tool's model-loading time, ``first_ms`` its first
    inference. ``peak_memory_mb`` is the peak RSS where a tool reports one: none does under the
    flags EdgeFarm passes, because their memory monitors add a sampling thread that disturbs the
    timing. ``warmup``, ``device`` and ``precision`` are what the tool echoes of its settings.
    """

    n: int
    mean_ms: float
    min_ms: float
    max_ms: float
    raw_tail: str
    std_ms: float | None = None
    p50_ms: float | None = None
    init_ms: float | None = None
    first_ms: float | None = None
    peak_memory_mb: float | None = None
    tool_version: str | None = None
    warmup: int | None = None
    device: str | None = None
    precision: str | None = None


class NativeBenchmark(ABC):
    """One engine's benchmark binary: the argv that runs it and the parser of what it prints."""

    name: ClassVar[str]  # the registry key, also the "source" of the latency it reports
    engine: ClassVar[str]  # the EdgeFarm engine the binary measures
    binary: ClassVar[str]  # the binary's usual file name on the device
    model_suffixes: ClassVar[tuple[str, ...]]  # the artifact files it takes, in argv order
    # How the tool picks its median, for readers of p50; None for tools that print no percentile.
    percentile_method: ClassVar[str | None] = None
    # Warm-up runs the tool always does by itself (not an argument); None: it takes NativeRun.warmup.
    fixed_warmup: ClassVar[int | None] = None

    @abstractmethod
    def argv(self, binary: str, models: list[str], run: NativeRun) -> list[str]:
        """The command line for ``run``, one argv item per argument whatever the paths contain.

        ``binary`` and ``models`` are paths on the device; ``models`` holds one file per entry of
        ``model_suffixes``, in that order. Raises ValueError for a setting the tool cannot honour.
        """

    @abstractmethod
    def parse(self, stdout: str, model: str | None = None) -> NativeSummary:
        """The summary in the tool's console output (stdout and stderr together).

        ``model`` is the model path the argv named: a tool that reports several models is read at
        that model's line, and a tool that names its model is checked against it. Raises
        NativeOutputError when a line the summary needs is missing.
        """

    def check_models(self, models: list[str]) -> None:
        """Refuse a model list that does not match ``model_suffixes`` before building an argv."""
        if len(models) != len(self.model_suffixes) or not all(
            m.endswith(suffix) for m, suffix in zip(models, self.model_suffixes)
        ):
            raise ValueError(
                f"{self.name} takes model files ending in {', '.join(self.model_suffixes)}, in that order; "
                f"got {models}"
            )

    def fail(self, what: str, output: str) -> NoReturn:
        """Raise NativeOutputError naming the tool, what is missing and the output's last line."""
        lines = [line.strip() for line in output.splitlines() if line.strip()]
        last = lines[-1] if lines else "(no output)"
        raise NativeOutputError(f"{self.name}: {what}; last output line: {last[:200]!r}")


def raw_tail(output: str) -> str:
    return output[-RAW_TAIL_CHARS:]


def register(cls: type[NativeBenchmark]) -> type[NativeBenchmark]:
    """Class decorator adding ``cls`` under ``cls.name``; a name already taken is refused."""
    return NATIVE_TOOLS.register(cls.name)(cls)


def native_benchmark(name: str) -> NativeBenchmark:
    """An instance of the tool registered as ``name``, importing its module on first use."""
    return NATIVE_TOOLS.get(name)()


def to_result(job_id: str, bench: NativeBenchmark, summary: NativeSummary,
              engine_version: str | None) -> ResultRecord:
    """The agent's result record (agent/protocol.py) for a native run, None where the tool is silent.

    ``latency["source"]`` says the figures are the tool's own aggregates; ``samples_ms`` is empty
    because no tool prints its raw times. The engine version is ``engine_version`` (what the
    caller knows of the binary), else the version the tool printed. The board's fingerprint is
    left to the caller: no agent ran on the board to collect it.
    """
    result = new_result(job_id)
    del result["board_state"]  # no agent ran on the board to pin, cool or read its sensors
    result.update({
        "engine": {"name": bench.engine, "version": engine_version or summary.tool_version,
                   "precision": summary.precision, "device": summary.device},
        "phases": {"load_ms": summary.init_ms, "first_inference_ms": summary.first_ms},
        "latency": {
            "samples_ms": [],
            "p50": summary.p50_ms, "p90": None, "p99": None,
            "mean": summary.mean_ms, "std": summary.std_ms,
            "min": summary.min_ms, "max": summary.max_ms,
            "n": summary.n, "cv": None,
            "percentile_method": bench.percentile_method if summary.p50_ms is not None else None,
            "warmup": summary.warmup,
            "source": f"{bench.name} summary",
        },
        "memory": {"peak_rss_mb": summary.peak_memory_mb},
        "native": {"tool": bench.name, "tool_version": summary.tool_version, "output_tail": summary.raw_tail},
    })
    return result
