"""Progress in a log (no terminal): every step and job is a line of its own as it happens."""

from __future__ import annotations

import io

from rich.console import Console

from controller.run.progress import RunProgress


def test_a_log_gets_a_line_per_step_with_its_time_and_per_job() -> None:
    out = io.StringIO()
    progress = RunProgress(Console(file=out, force_terminal=False, width=200))
    with progress.stage("compile variants and render data", total=None) as step:
        step("ppocr-det fp32: done")
        assert out.getvalue().splitlines()[-1] == "  0:00 ppocr-det fp32: done"  # printed at once
        step("ppocr-det int8: cached")
    progress.boards({"local": 1})
    progress.job_done("local", "ppocr-det int8 ncnn", False, "failed at convert: [x86] no kernels")
    progress.close()
    assert out.getvalue().splitlines() == [
        "compile variants and render data",
        "  0:00 ppocr-det fp32: done",
        "  0:00 ppocr-det int8: cached",
        "  2 steps done",
        "board local: 1 jobs",
        "  [local] ppocr-det int8 ncnn: FAILED failed at convert: [x86] no kernels",
    ]
