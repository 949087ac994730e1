"""The machine line every benchmark prints (tables must name the hardware)."""

from __future__ import annotations

import platform
from pathlib import Path


def cpu_name() -> str:
    """CPU model from /proc/cpuinfo (Linux), else platform.processor()."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"
