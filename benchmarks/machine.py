"""One description of the machine a benchmark ran on, shared by every benchmark script."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def cpu_model() -> str:
    """The CPU model name (from /proc/cpuinfo on Linux)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def describe() -> str:
    """``"<cpu>, <n> cores, Python <version>"``."""
    return f"{cpu_model()}, {os.cpu_count()} cores, Python {platform.python_version()}"
