"""Measurement hygiene on the board: the conditions a job runs in, set and recorded.

A phone or a Jetson that is hot, throttled or sharing its cores measures slower than the
same board at rest, and the difference looks exactly like a regression. So the agent pins
itself to the cores the inventory names, cools down and waits under a temperature ceiling
when asked, and records governor, frequency and temperature before and after every job.
"""

from __future__ import annotations

import os
import time
from typing import Any, Dict, List, Optional

from agent import fingerprint

# How often the temperature is read while waiting for the board to cool.
POLL_SECONDS = 2.0


class ThermalError(RuntimeError):
    """The board stayed above its temperature ceiling for longer than the job may wait."""


def state() -> Dict[str, Any]:
    """What can change under a measurement without anyone touching the board."""
    return {"governor": fingerprint.governor(), "cpu_mhz": fingerprint.cpu_mhz(),
            "temperature_c": fingerprint.temperature_c()}


def pin(cpus: Optional[List[int]]) -> Optional[List[int]]:
    """Restrict this process (and the engine threads it starts) to ``cpus``; None leaves it."""
    if not cpus:
        return None
    if not hasattr(os, "sched_setaffinity"):
        raise RuntimeError("CPU pinning needs Linux sched_setaffinity, which this board's Python lacks")
    os.sched_setaffinity(0, set(int(c) for c in cpus))
    return sorted(os.sched_getaffinity(0))


def settle(cooldown_s: float, max_temperature_c: Optional[float], wait_s: float,
           sleep=time.sleep, read=fingerprint.temperature_c) -> float:
    """Cool down, then wait until the board is under its ceiling; returns the seconds waited.

    A board whose sensors cannot be read passes the ceiling: there is nothing to wait for,
    and the missing reading is already recorded as None.
    """
    start = time.monotonic()
    if cooldown_s > 0:
        sleep(cooldown_s)
    if max_temperature_c is None:
        return time.monotonic() - start
    while True:
        temp = read()
        if temp is None or temp <= max_temperature_c:
            return time.monotonic() - start
        if time.monotonic() - start >= wait_s:
            raise ThermalError("board stayed at %.1f C, above its ceiling of %.1f C, for %.0f s"
                               % (temp, max_temperature_c, time.monotonic() - start))
        sleep(POLL_SECONDS)
