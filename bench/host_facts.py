"""The machine a benchmark ran on, for the header of its table."""

import os
import platform
from pathlib import Path


def memory_gib() -> float:
    kb = next(
        int(line.split()[1])
        for line in Path("/proc/meminfo").read_text().splitlines()
        if line.startswith("MemTotal:")
    )
    return round(kb / 1024 / 1024, 1)


def describe(postgres_version: str) -> str:
    """One line: CPUs, memory, kernel, Python and the PostgreSQL the figures came from."""
    return (
        f"{os.cpu_count()} CPUs (nproc), {memory_gib():.1f} GiB RAM,"
        f" {platform.system()} {platform.release()}, Python {platform.python_version()},"
        f" PostgreSQL {postgres_version}"
    )
