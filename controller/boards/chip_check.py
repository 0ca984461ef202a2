"""Does a board's declared ``chip:`` fit what its agent reports? A warning, never a refusal.

The declared chip names the group a board's results are filed under, so a wrong one files real
figures under the wrong hardware. Only a plain contradiction is called: the chip names a family
whose CPU architecture (or, on x86, vendor) differs from the one the board reports, e.g. an
x86_64 EPYC declared as a Jetson. A name this table does not know is not judged: it may be a
lab's own naming, and being quiet beats a false alarm.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

# Architectures as `uname -m` (Python's platform.machine) reports them, grouped.
_ARCH_FAMILY = {
    "aarch64": "Arm", "arm64": "Arm", "armv7l": "Arm", "armv8l": "Arm", "armv6l": "Arm",
    "x86_64": "x86", "amd64": "x86", "i686": "x86", "i386": "x86",
    "riscv64": "RISC-V",
}

# Words in a declared chip name -> the architecture family that chip has. Only names that are
# one architecture whatever the host: "NVIDIA" alone could be a GPU in an x86 server.
_CHIP_FAMILY = [
    (r"jetson|tegra|orin|xavier|\btx2\b", "Arm"),
    (r"\brk\d{4}\b|\brv11\d\d\b|rockchip", "Arm"),
    (r"atlas|ascend|kunpeng|hi3\d{3}|kirin", "Arm"),
    (r"snapdragon|\bsm\d{4}\b|qualcomm|dimensity|helio|mediatek|\bmt\d{4}\b|exynos|\btensor g\d", "Arm"),
    (r"raspberry|\bbcm27\d\d\b|cortex|\bimx8|i\.mx|amlogic|allwinner|neoverse|graviton|altra", "Arm"),
    (r"\bepyc\b|ryzen|threadripper|athlon|xeon|\bcore i[3579]\b|celeron|pentium|\batom\b|x86", "x86"),
    (r"risc-?v|jh7110|spacemit|sophgo|\bc906\b|\bc910\b", "RISC-V"),
]

# On x86 the vendor tells two declared chips apart as surely as the architecture does.
_X86_VENDOR = [(r"\bepyc\b|ryzen|threadripper|athlon|\bamd\b", "AMD"),
               (r"xeon|\bcore i[3579]\b|celeron|pentium|\batom\b|intel", "Intel")]


def _first(table: list[tuple[str, str]], text: str) -> str | None:
    return next((value for pattern, value in table if re.search(pattern, text, re.IGNORECASE)), None)


def contradiction(chip: str, fingerprint: Mapping[str, Any] | None) -> str | None:
    """Why ``chip`` cannot be the board that reported ``fingerprint``, or None if it may be."""
    if chip == "auto" or not fingerprint:
        return None
    arch, cpu = str(fingerprint.get("arch") or ""), str(fingerprint.get("cpu_model") or "")
    reported = f"the board reports {arch or '?'} {cpu or '?'}"
    declared, found = _first(_CHIP_FAMILY, chip), _ARCH_FAMILY.get(arch.lower())
    if declared and found and declared != found:
        return f"chip {chip!r} declares {declared} hardware, but {reported}"
    if declared == found == "x86":
        said, seen = _first(_X86_VENDOR, chip), _first(_X86_VENDOR, cpu)
        if said and seen and said != seen:
            return f"chip {chip!r} declares {said} hardware, but {reported}"
    return None
