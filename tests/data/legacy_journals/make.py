"""How the journals here were written: by qwenvl's own CLI at two earlier commits, against the loopback DashScope
double, so that tests can check that a rerun of this version reuses their answers (nothing re-paid).

    git archive 4ccd000 src | tar -x -C /tmp/l0      # before 6a6d848: raw fields with the client defaults
    git archive 572774f src | tar -x -C /tmp/l1      # 6a6d848 to 572774f: fields at their defaults left out
    python tests/data/legacy_journals/make.py /tmp/l0/src l0
    python tests/data/legacy_journals/make.py /tmp/l1/src l1

Each NAME/ folder holds requests.jsonl, out.jsonl and out.jsonl.journal from
``qwenvl batch --requests requests.jsonl -o out.jsonl --max-tokens 16 -t 0 --no-cache``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))

from dashscope_server import DashScopeServer  # noqa: E402

ARGS = ("--max-tokens", "16", "-t", "0", "--no-cache")


def main(src: str, name: str) -> None:
    folder = HERE / name
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    (folder / "requests.jsonl").write_text(
        "".join(json.dumps({"id": f"q{i}", "prompt": f"question {i}"}) + "\n" for i in range(3))
    )
    env = {**os.environ, "PYTHONPATH": src, "DASHSCOPE_API_KEY": "sk-test", "QWENVL_LOG": "0"}
    env.pop("QWENVL_MODEL", None)
    with DashScopeServer() as srv:
        cmd = [sys.executable, "-m", "qwenvl", "batch", "--requests", "requests.jsonl", "-o", "out.jsonl", *ARGS]
        subprocess.run([*cmd, "--base-url", srv.url], cwd=folder, env=env, check=True)
    for extra in ("out.jsonl.journal-wal", "out.jsonl.journal-shm"):
        assert not (folder / extra).exists(), extra


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
