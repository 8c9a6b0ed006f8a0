"""Found under load: a ``qwenvl serve`` and a CLI on one usage log, at the file's first use, and one of them got
"database is locked" from switching the file to WAL (SQLite does not wait for that) and logged nothing."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

SCRIPT = """
import sys, time
from pathlib import Path
from qwenvl.store.db import connect
from qwenvl.store.usage import MIGRATIONS
start = float(sys.argv[2])
while time.time() < start:
    pass
conn = connect(Path(sys.argv[1]), MIGRATIONS)
conn.close()
"""


def test_processes_opening_a_new_store_at_once_all_open_it(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    for round_ in range(4):
        path = tmp_path / f"usage-{round_}.db"
        start = time.time() + 1.5  # every process imported and waiting, then all open the new file together
        procs = [
            subprocess.Popen([sys.executable, "-c", SCRIPT, str(path), repr(start)], env=env, stderr=subprocess.PIPE)
            for _ in range(6)
        ]
        errors = [p.communicate(timeout=120)[1].decode() for p in procs]
        failed = [e.strip().splitlines()[-1] for p, e in zip(procs, errors, strict=True) if p.returncode]
        assert not failed, failed
