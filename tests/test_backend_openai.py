"""The openai backend against loopback doubles of vLLM, llama.cpp's server, Ollama and a strict generic server."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import socket
from pathlib import Path

import pytest
from PIL import Image

import qwenvl
from conftest import run_cli, write_image
from engine_server import EngineServer, grid
from qwenvl.errors import APIConnectionError, UsageError


def make_video(path: Path, frames: int = 40, size: tuple[int, int] = (160, 96)) -> Path:
    import av
    import numpy as np

    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=10)
        s.width, s.height, s.pix_fmt = size[0], size[1], "yuv420p"
        for i in range(frames):
            for packet in s.encode(
                av.VideoFrame.from_ndarray(np.full((size[1], size[0], 3), i * 6, np.uint8), format="rgb24")
            ):
                c.mux(packet)
        for packet in s.encode():
            c.mux(packet)
    return path


def client_for(srv: EngineServer, **kw) -> qwenvl.Client:
    kw.setdefault("retry_backoff_s", 0.01)
    return qwenvl.Client(backend="openai", base_url=srv.base_url, **kw)


@pytest.mark.parametrize("engine", ["vllm", "llamacpp", "ollama", "generic"])
@pytest.mark.parametrize("owned_by", ["default", None])
def test_engine_is_detected(engine: str, owned_by: str | None) -> None:
    with EngineServer(engine=engine, owned_by=owned_by) as srv, client_for(srv) as client:
        client.resolve_model()
        assert client.backend.engine == engine


def test_vllm_plain_parts_budget_in_mm_processor_kwargs_and_usage(isolated_env: Path) -> None:
    img = write_image(isolated_env / "a.png", (100, 60))
    with EngineServer(engine="vllm") as srv, client_for(srv) as client:
        r = client.ask("What is this?", str(img), max_pixels=200_000, top_k=5, seed=3)
        body = srv.chats()[-1].json
        assert body["model"] == "Qwen/Qwen2.5-VL-3B-Instruct"  # the only served model, by default
        assert body["mm_processor_kwargs"] == {"max_pixels": 200_000} and body["top_k"] == 5
        parts = body["messages"][-1]["content"]
        assert parts[0] == {"type": "image_url", "image_url": {"url": parts[0]["image_url"]["url"]}}
        assert "vl_high_resolution_images" not in body and "Authorization" not in srv.chats()[-1].headers
        assert r.text.startswith("images=1 sizes=100x60") and r.protocol == "openai"
        expected = grid(100, 60, 28)
        # computed from the resized grid (no details from the server), with the image's two vision markers as the
        # service counts them: the estimate's count
        assert (
            r.usage.image_tokens
            == expected + 2
            == client.plan(prompt="x", image=str(img), max_pixels=200_000).media[0].tokens
        )
        assert r.usage.input_tokens == 3 + expected + 2


def test_vllm_details_and_frames(isolated_env: Path) -> None:
    clip = make_video(isolated_env / "clip.mp4")
    with (
        EngineServer(engine="vllm", details=True, served="qwen3-vl-tiny", family_factor=32) as srv,
        client_for(srv) as client,
    ):
        r = client.complete(prompt="What happens?", video=str(clip))
        body = srv.chats()[-1].json
        part = body["messages"][-1]["content"][0]
        assert part["type"] == "video_url" and part["video_url"]["url"].startswith("data:video/jpeg;base64,")
        frames = len(part["video_url"]["url"].split(",")) - 1
        assert f"frames={frames}" in r.text and frames >= 4
        assert body["mm_processor_kwargs"]["fps"] > 0
        # vLLM's count is the placeholders alone: the video's two vision markers are added, as the service counts
        assert r.usage.video_tokens == r.usage.raw["prompt_tokens_details"]["multimodal_tokens"]["video"] + 2


def test_llamacpp_adds_image_tokens_and_counts_a_stream(isolated_env: Path) -> None:
    img = write_image(isolated_env / "a.png", (56, 84))
    with EngineServer(engine="llamacpp", served="qwen2.5-vl-7b-q4") as srv, client_for(srv) as client:
        r = client.ask("Describe it", str(img))
        seen = grid(56, 84, 28)
        assert r.usage.image_tokens == seen + 2  # the grid and the two vision markers, as the service counts
        assert r.usage.input_tokens == 2 + seen + 2  # the server's text tokens + the image's it left out
        events = list(client.stream(prompt="Describe it", image=str(img)))
        done = events[-1].response
        assert done.usage.raw == {} and done.usage.output_tokens == len(done.text.split())
        assert done.usage.image_tokens == seen + 2 and "".join(e.text for e in events[:-1]) == done.text


def test_ollama_urls_downloaded_and_video_as_frames(isolated_env: Path) -> None:
    buf = io.BytesIO()
    Image.new("RGB", (70, 50), (1, 2, 3)).save(buf, "PNG")
    clip = make_video(isolated_env / "clip.mp4", frames=20)
    with (
        EngineServer(engine="ollama", served="qwen2.5vl:7b", files={"x.png": buf.getvalue()}) as srv,
        client_for(srv) as client,
    ):
        r = client.ask("What?", srv.root_url + "/files/x.png")
        url = srv.chats()[-1].json["messages"][-1]["content"][0]["image_url"]["url"]
        assert url.startswith("data:image/png;base64,") and "sizes=70x50" in r.text
        r = client.complete(prompt="What happens?", video=str(clip))
        parts = srv.chats()[-1].json["messages"][-1]["content"]
        assert [p["type"] for p in parts[:-1]] == ["image_url"] * (len(parts) - 1) and len(parts) - 1 >= 4
        assert r.text.startswith(f"images={len(parts) - 1}")
        with pytest.raises(UsageError, match="ollama engine does not take it"):
            client.ask("x", top_k=3)


def test_generic_is_strict_and_names_what_it_cannot_take(isolated_env: Path) -> None:
    with EngineServer(engine="generic", served="my-qwen3-vl") as srv, client_for(srv) as client:
        assert client.ask("hello").text.endswith("| hello")
        with pytest.raises(UsageError, match="top_k"):
            client.ask("hello", top_k=2)
        with pytest.raises(UsageError, match="thinking"):
            client.ask("hello", enable_thinking=True)
        with pytest.raises(UsageError, match="takes no video"):
            client.complete(prompt="x", video="https://example.com/v.mp4")


def test_served_name_family_and_engine_down_errors() -> None:
    with EngineServer(engine="vllm", served="tiny") as srv:
        with client_for(srv) as client, pytest.raises(UsageError, match="cannot tell the model family of 'tiny'"):
            client.ask("hi")
        with client_for(srv, family="qwen3-vl") as client:
            assert client.resolve_model().factor == 32 and client.ask("hi").text.endswith("| hi")
        with client_for(srv, family="qwen3-vl") as client, pytest.raises(UsageError, match="does not serve"):
            client.ask("hi", model="qwen3-vl-other")
    with (
        EngineServer(engine="vllm", served="tiny", root="/models/Qwen2.5-VL-3B-Instruct") as srv,
        client_for(srv) as client,
    ):
        assert client.resolve_model().family == "qwen2.5-vl"  # from the path vLLM loaded it from
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    with (
        qwenvl.Client(backend="openai", base_url=f"http://127.0.0.1:{port}/v1") as client,
        pytest.raises(APIConnectionError, match="cannot reach") as info,
    ):
        client.ask("hi")
    assert "running" in (info.value.hint or "")


def test_api_key_is_sent_when_given() -> None:
    with EngineServer(engine="vllm", api_key="local-key") as srv:
        with client_for(srv, api_key="local-key") as client:
            assert client.ask("hi").text
        with client_for(srv) as client, pytest.raises(qwenvl.AuthenticationError):
            client.ask("hi")


def test_cache_and_async(isolated_env: Path) -> None:
    img = write_image(isolated_env / "a.png", (64, 64))
    with EngineServer(engine="vllm") as srv:
        with client_for(srv, cache=True) as client:
            first = client.ask("Same?", str(img))
            second = client.ask("Same?", str(img))
            assert second.cached and second.text == first.text and len(srv.chats()) == 1

        async def run() -> tuple[str, list[str]]:
            async with qwenvl.AsyncClient(backend="openai", base_url=srv.base_url) as client:
                r = await client.ask("Async?", str(img))
                deltas = [e.text async for e in client.stream(prompt="Streamed", image=str(img)) if e.type == "text"]
                return r.text, deltas

        text, deltas = asyncio.run(run())
        assert text.endswith("| Async?") and "".join(deltas).endswith("| Streamed")


def test_cli_verbs_on_the_openai_backend(isolated_env: Path) -> None:
    # in process: a verb that ends early (--dry-run, a refused model) closes the client that probed the engine
    # too (an unclosed one is a ResourceWarning, an error under the project's pytest settings)
    write_image(isolated_env / "a.png", (112, 84))
    with EngineServer(engine="vllm", served="Qwen/Qwen2.5-VL-3B-Instruct") as srv:
        base = ["--backend", "openai", "--base-url", srv.base_url]
        p = run_cli("ask", "a.png", "What is it?", *base)
        assert p.returncode == 0, p.stderr
        assert "images=1 sizes=112x84" in p.stdout
        p = run_cli("ask", "a.png", "What is it?", *base, "--dry-run")
        assert p.returncode == 0, p.stderr
        preview = json.loads(p.stdout)
        assert preview["url"] == srv.base_url + "/chat/completions" and "mm_processor_kwargs" not in preview["body"]
        p = run_cli("ground", "a.png", "the cat", *base, "--json")
        assert p.returncode == 0, p.stderr
        from qwenvl.backends.family import family_model
        from qwenvl.tasks.grounding import grounding_prompt

        sent = srv.chats()[-1].json["messages"][-1]["content"][-1]["text"]
        assert sent.startswith(grounding_prompt(family_model("x", "qwen2.5-vl"), "the cat"))  # the 2.5 convention
        assert json.loads(p.stdout)["convention"] == "absolute"
        for n in range(3):
            write_image(isolated_env / f"b{n}.png", (56 + 28 * n, 56))
        p = run_cli("batch", "run", "b0.png", "b1.png", "-p", "Describe", "-o", "dry.jsonl", "--dry-run", *base)
        assert p.returncode == 0 and '"event": "estimate"' in p.stdout  # the planning client is closed too
        p = run_cli("batch", "run", "b0.png", "b1.png", "b2.png", "-p", "Describe", "-o", "out.jsonl", *base)
        assert p.returncode == 0, p.stderr
        lines = [json.loads(x) for x in (isolated_env / "out.jsonl").read_text().splitlines()]
        assert sorted(r["status"] for r in lines) == ["ok"] * 3
        p = run_cli("ask", "a.png", "hi", *base, "--model", "other")
        assert p.returncode == 2 and "does not serve 'other'" in p.stderr and "Traceback" not in p.stderr
    p = run_cli("ask", "a.png", "hi", *base)  # the server is gone
    assert p.returncode == 5 and "cannot reach" in p.stderr and "Traceback" not in p.stderr


def test_frame_list_for_vllm_is_one_video_part(isolated_env: Path) -> None:
    frames = [str(write_image(isolated_env / f"f{i}.png", (56, 56), (i * 40, 0, 0))) for i in range(4)]
    with EngineServer(engine="vllm") as srv, client_for(srv) as client:
        r = client.complete(prompt="order?", video=frames, fps=1.0)
        url = srv.chats()[-1].json["messages"][-1]["content"][0]["video_url"]["url"]
        payloads = url.split(",")[1:]
        assert len(payloads) == 4 and "frames=4" in r.text
        assert Image.open(io.BytesIO(base64.b64decode(payloads[1]))).getpixel((0, 0))[0] == 40
        assert srv.chats()[-1].json["mm_processor_kwargs"]["fps"] == 1.0


def test_backend_by_instance_and_by_environment(monkeypatch) -> None:
    from qwenvl.backends.openai import OpenAIBackend

    with EngineServer(engine="vllm") as srv:
        with qwenvl.Client(backend=OpenAIBackend(base_url=srv.base_url)) as client:
            assert client.is_local and client.ask("hi").text.endswith("| hi")
        monkeypatch.setenv("QWENVL_BACKEND", "openai")
        monkeypatch.setenv("QWENVL_OPENAI_BASE_URL", srv.base_url)
        with qwenvl.Client() as client:
            assert client.backend_name == "openai" and client.ask("env").text.endswith("| env")
        p = run_cli(
            "ask", "from the environment", env={"QWENVL_BACKEND": "openai", "QWENVL_OPENAI_BASE_URL": srv.base_url}
        )
        assert p.returncode == 0 and "| from the environment" in p.stdout, p.stderr
    with pytest.raises(UsageError, match="unknown backend"):
        qwenvl.Client(backend="ollama")
