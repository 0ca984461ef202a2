"""The board fingerprint, read from this machine's /proc and /sys."""

from __future__ import annotations

import glob
import os
import platform
import socket

import pytest

from agent import fingerprint

KEYS = {"arch", "cpu_model", "cores", "governor", "cpu_mhz", "temperature_c", "os", "python", "hostname"}


def test_fingerprint_describes_this_machine() -> None:
    fp = fingerprint.collect()
    assert KEYS <= set(fp)
    assert fp["arch"] == platform.machine()
    assert fp["cores"] == os.cpu_count()
    assert fp["python"] == platform.python_version()
    assert fp["hostname"] == socket.gethostname()


def test_cpu_model_comes_from_proc_cpuinfo() -> None:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            names = [line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")]
    except OSError:
        pytest.skip("no /proc/cpuinfo")
    if not names:
        pytest.skip("this CPU's /proc/cpuinfo has no 'model name'")
    assert fingerprint.collect()["cpu_model"] == names[0]


def test_cpu_model_falls_back_on_arm_fields() -> None:
    arm = {"processor": "0", "hardware": "Rockchip RK3399", "cpu part": "0xd08"}
    assert fingerprint.cpu_model(arm) == "Rockchip RK3399"
    assert fingerprint.cpu_model({"processor": "3"}) not in ("3", "")


def test_governor_and_temperature_are_read_when_the_kernel_offers_them() -> None:
    path = "/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor"
    expected = open(path).read().strip() if os.access(path, os.R_OK) else None
    assert fingerprint.governor() == expected
    zones = [p for p in glob.glob("/sys/class/thermal/thermal_zone*/temp") if os.access(p, os.R_OK)]
    temperature = fingerprint.temperature_c()
    if not zones:
        assert temperature is None
    elif temperature is not None:
        assert -60.0 < temperature < 200.0
