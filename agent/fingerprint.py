"""The board's fingerprint: what the figures were measured on, including what cannot be
controlled from here (CPU frequency governor, temperature). Unreadable facts are None."""

from __future__ import annotations

import glob
import os
import platform
import socket
from typing import Dict, List, Optional

from agent.protocol import Fingerprint

_CPUINFO_MODEL_KEYS = ("model name", "hardware", "cpu model", "model", "processor")


def _read(path: str) -> Optional[str]:
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return fh.read().strip("\x00\n ")
    except OSError:
        return None


def _cpuinfo_fields() -> Dict[str, str]:
    """First value of every key in /proc/cpuinfo, keys lower-cased."""
    fields: Dict[str, str] = {}
    for line in (_read("/proc/cpuinfo") or "").splitlines():
        key, sep, value = line.partition(":")
        key = key.strip().lower()
        if sep and value.strip() and key not in fields:
            fields[key] = value.strip()
    return fields


def cpu_model(fields: Optional[Dict[str, str]] = None) -> Optional[str]:
    """x86 "model name"; on ARM "Hardware" or the device tree's board model; then platform."""
    fields = _cpuinfo_fields() if fields is None else fields
    for key in _CPUINFO_MODEL_KEYS:
        value = fields.get(key, "")
        # On ARM "processor" is just the core number: not a model.
        if value and not value.isdigit():
            return value
    board = _read("/sys/firmware/devicetree/base/model") or _read("/proc/device-tree/model")
    return board or platform.processor() or platform.machine() or None


def governor() -> Optional[str]:
    return _read("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor") or None


def cpu_mhz(fields: Optional[Dict[str, str]] = None) -> Optional[float]:
    """Current frequency of cpu0 from cpufreq (kHz), else /proc/cpuinfo's "cpu MHz"."""
    khz = _read("/sys/devices/system/cpu/cpu0/cpufreq/scaling_cur_freq")
    try:
        if khz:
            return float(khz) / 1000.0
        fields = _cpuinfo_fields() if fields is None else fields
        if "cpu mhz" in fields:
            return float(fields["cpu mhz"])
    except ValueError:
        pass
    return None


def temperature_c() -> Optional[float]:
    """Hottest thermal zone in degrees Celsius (sysfs gives millidegrees), None if none readable."""
    values: List[float] = []
    for path in glob.glob("/sys/class/thermal/thermal_zone*/temp"):
        text = _read(path)
        try:
            values.append(float(text) / 1000.0 if text else float("nan"))
        except ValueError:
            continue
    values = [v for v in values if v == v and -60.0 < v < 200.0]  # drop NaN and sensor junk
    return max(values) if values else None


def collect() -> Fingerprint:
    """The fingerprint recorded with every result."""
    fields = _cpuinfo_fields()
    return {
        "arch": platform.machine() or None,
        "cpu_model": cpu_model(fields),
        "cores": os.cpu_count(),
        "governor": governor(),
        "cpu_mhz": cpu_mhz(fields),
        "temperature_c": temperature_c(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "hostname": socket.gethostname(),
    }


def disk_free_mb(path: str) -> Optional[float]:
    """Free space where the agent keeps artifacts: the folder, or its nearest existing parent."""
    import shutil

    path = os.path.abspath(os.path.expanduser(path))
    while not os.path.isdir(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    try:
        return shutil.disk_usage(path).free / 1e6
    except OSError:
        return None
