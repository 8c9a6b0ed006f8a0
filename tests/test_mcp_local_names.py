"""`qwenvl mcp --backend transformers --model FOLDER`: the model is named as it is served (the folder's own name,
``backends.transformers.served_name``, as `qwenvl serve` names it), never by its path, in results, progress and
errors; and the served name is taken as the ``model`` argument. Through the MCP SDK's stdio client."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from conftest import write_image
from test_mcp import run, stdio_session, text_of
from tiny_models import build


def test_the_local_model_is_named_by_its_served_name(isolated_env: Path) -> None:
    folder = build("qwen2.5-vl", isolated_env / "models" / "tiny-vl")
    image = write_image(isolated_env / "x.png", (64, 48))
    path = str(folder.resolve())
    said: list[str] = []

    async def main() -> None:
        async with stdio_session(
            {"HF_HUB_OFFLINE": "1"},
            *("--backend", "transformers", "--model", str(folder), "--device", "cpu"),
            *("--allow-dir", str(isolated_env)),
        ) as c:

            async def on_progress(progress: float, total: float | None, message: str | None) -> None:
                said.append(message or "")

            options: dict[str, Any] = {"max_tokens": 4}
            for model in (None, "tiny-vl", str(folder)):  # the default, its served name, its folder
                arguments = {"prompt": "hi", "media": [str(image)], "options": options}
                if model is not None:
                    arguments["model"] = model
                r = await c.call_tool("ask", arguments, progress_callback=on_progress)
                assert not r.is_error, text_of(r)
                assert r.structured_content is not None and r.structured_content["model"] == "tiny-vl", text_of(r)
                assert path not in text_of(r) and str(folder) not in text_of(r), text_of(r)
            r = await c.call_tool("estimate", {"files": [str(image)], "model": "tiny-vl"})
            assert not r.is_error and r.structured_content is not None, text_of(r)
            assert r.structured_content["model"] == "tiny-vl" and path not in json.dumps(r.structured_content)
            r = await c.call_tool("ask", {"prompt": "hi", "model": "another-model"})
            assert r.is_error and "tiny-vl" in text_of(r) and path not in text_of(r), text_of(r)
            # an error about the model itself (a prompt longer than it can take) names it as served, too
            r = await c.call_tool("ask", {"prompt": "word " * 100_000, "model": "tiny-vl"})
            assert r.is_error and path not in text_of(r) and str(folder) not in text_of(r), text_of(r)

    run(main)
    assert said and not any(path in m or str(folder) in m for m in said), said
    assert any("tiny-vl" in m for m in said), said
