"""The files a request line's ``messages`` name (earlier turns' images and videos) are inputs of the batch too: an
output over one is refused before anything is sent or written, as for the line's own ``image``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import API_KEY, run_cli
from dashscope_server import DashScopeServer
from qwenvl.batch import Batch, BatchItem
from qwenvl.errors import UsageError

NOTES = "my notes, not an image\n"


def _history(name: str, key: str = "image") -> list[dict]:
    return [
        {"role": "user", "content": [{key: name}, {"text": "what is this?"}]},
        {"role": "assistant", "content": "a cat"},
    ]


@pytest.mark.parametrize("key", ["image", "video"])
def test_the_cli_refuses_an_output_over_a_file_of_the_history(
    key: str, server: DashScopeServer, env: dict[str, str], isolated_env: Path
) -> None:
    (isolated_env / "notes.txt").write_text(NOTES)
    line = {"id": "1", "prompt": "and now?", "messages": _history("notes.txt", key)}
    (isolated_env / "rqs.jsonl").write_text(json.dumps(line) + "\n")
    for args in (["-o", "notes.txt", "--fresh", "--yes"], ["-o", "r.jsonl", "--csv", "notes.txt", "--fresh", "--yes"]):
        r = run_cli("batch", "--requests", "rqs.jsonl", *args, env=env)
        assert r.returncode == 2, r.stderr
        assert f"notes.txt is also an input of this command (rqs.jsonl line 1: messages[0] {key})" in r.stderr
        assert (isolated_env / "notes.txt").read_text() == NOTES
    assert server.requests == []


def test_the_library_batch_refuses_it_too(server: DashScopeServer, isolated_env: Path) -> None:
    (isolated_env / "notes.txt").write_text(NOTES)
    item = BatchItem(id="1", request={"prompt": "and now?", "messages": _history("notes.txt")})
    with pytest.raises(UsageError) as caught:  # refused as the items are taken
        Batch(
            [item], isolated_env / "r.jsonl", csv=isolated_env / "notes.txt", api_key=API_KEY, base_url=server.url
        ).run()
    assert "csv" in str(caught.value) and "(item '1': messages[0] image)" in str(caught.value), str(caught.value)
    assert (isolated_env / "notes.txt").read_text() == NOTES
    assert server.requests == []
