"""Write one benchmark's section of bench/RESULTS.md, leaving every other section as it is."""

from __future__ import annotations

import os
import platform
import re
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}, Python {sys.version.split()[0]}"


def load_words(before: float, after: float) -> str:
    """How busy the machine was around a run, from the 1-minute load averages before and after it (2 cores here):
    "quiet" under 1.5, else "busy: shared with other work". The one wording every benchmark's record uses."""
    return "quiet" if max(before, after) < 1.5 else "busy: shared with other work"


def write_section(heading: str, body: str) -> None:
    """Replace the section ``## {heading}`` (up to the next ``## ``) with ``body``, or append it."""
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    section = f"## {heading}\n\n{body.strip()}\n"
    pattern = re.compile(rf"^## {re.escape(heading)}\n.*?(?=^## |\Z)", re.DOTALL | re.MULTILINE)
    if pattern.search(text):
        text = pattern.sub(lambda _: section + "\n", text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    RESULTS.write_text(text.rstrip("\n") + "\n")
