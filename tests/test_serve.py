"""`qwenvl serve` with the official SDKs, unmodified (base URL and key only), in front of a loopback upstream.

The served app runs on uvicorn in a thread; its backend is the DashScope gateway pointed at the fake
DashScope cloud (tests/dashscope_server.py), so each test sees both ends: what the SDK got back, and what
reached the upstream after qwenvl's media rules.
"""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

import qwenvl
from conftest import API_KEY, write_image
from dashscope_server import DashScopeServer, Reply
from file_server import FileServer, Page
from qwenvl.errors import MediaError
from qwenvl.protocols import inbound
from qwenvl.server.app import ServeSettings, create_app
from qwenvl.server.security import fetch_public, is_public

SERVE_KEY = "sk-serve-local-42"


class Served:
    """A qwenvl server on 127.0.0.1:<free port> in a thread."""

    def __init__(self, app: Any) -> None:
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Served:
        self.thread.start()
        deadline = time.monotonic() + 60  # bounds a hang: a start-up is slow on a busy machine
        while not self.server.started:
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.02)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)


def gateway(upstream: DashScopeServer, **settings: Any) -> Served:
    client = qwenvl.AsyncClient(api_key=API_KEY, base_url=upstream.url, retry_backoff_s=0.01)
    settings.setdefault("api_key", SERVE_KEY)
    return Served(create_app(client, ServeSettings(**settings)))


@pytest.fixture
def served(server: DashScopeServer) -> Iterator[Served]:
    with gateway(server) as s:
        yield s


def data_url(path: Path, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(path.read_bytes()).decode()


def upstream_json(server: DashScopeServer) -> dict:
    calls = [r for r in server.requests if (r.json is not None and "chat" in r.path) or "generation" in r.path]
    return calls[-1].json


# --- the openai SDK against the compatible-mode endpoint ---------------------------------------------


@pytest.fixture
def oai(served: Served):
    openai = pytest.importorskip("openai")
    return openai.OpenAI(base_url=served.url + "/compatible-mode/v1", api_key=SERVE_KEY, max_retries=0)


def test_openai_sdk_one_image(oai, server, png):
    r = oai.chat.completions.create(
        model="qwen3-vl-plus",
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": data_url(png)}},
                    {"type": "text", "text": "What is this?"},
                ],
            }
        ],
    )
    assert r.choices[0].message.content == "echo: What is this? [images=1 videos=0]"
    assert r.choices[0].finish_reason == "stop"
    assert r.usage.prompt_tokens > 0 and r.usage.completion_tokens > 0
    sent = upstream_json(server)
    part = sent["messages"][0]["content"][0]
    assert part["image_url"]["url"].startswith("data:image/")
    # what the caller did not set is not invented: no temperature, no max_tokens upstream
    assert "temperature" not in sent and "max_tokens" not in sent


def test_openai_sdk_values_of_zero_reach_upstream(oai, server, png):
    oai.chat.completions.create(
        model="qwen3-vl-plus",
        temperature=0,
        seed=0,
        max_tokens=7,
        messages=[{"role": "user", "content": "hi"}],
        extra_body={"top_k": 0, "vl_high_resolution_images": False, "enable_thinking": False},
    )
    sent = upstream_json(server)
    assert sent["temperature"] == 0 and sent["seed"] == 0 and sent["max_tokens"] == 7
    assert sent["top_k"] == 0 and sent["vl_high_resolution_images"] is False and sent["enable_thinking"] is False


def test_openai_sdk_several_images_and_multi_turn(oai, server, png, jpeg):
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": data_url(png)}},
                {"type": "image_url", "image_url": {"url": data_url(jpeg, "image/jpeg")}},
                {"type": "text", "text": "Compare"},
            ],
        }
    ]
    r = oai.chat.completions.create(model="qwen3-vl-plus", messages=messages)
    assert r.choices[0].message.content.endswith("[images=2 videos=0]")
    messages += [
        {"role": "assistant", "content": r.choices[0].message.content},
        {"role": "user", "content": "And the colours?"},
    ]
    r2 = oai.chat.completions.create(model="qwen3-vl-plus", messages=messages)
    assert r2.choices[0].message.content.startswith("echo: And the colours?")
    assert len(upstream_json(server)["messages"]) == 3


def test_openai_sdk_stream_with_usage(oai, server, png):
    stream = oai.chat.completions.create(
        model="qwen3-vl-plus",
        stream=True,
        stream_options={"include_usage": True},
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": data_url(png)}},
                    {"type": "text", "text": "Describe it"},
                ],
            }
        ],
    )
    text, usage, finish = [], None, None
    for chunk in stream:
        if chunk.usage:
            usage = chunk.usage
        for choice in chunk.choices:
            text.append(choice.delta.content or "")
            finish = choice.finish_reason or finish
    assert "".join(text) == "echo: Describe it [images=1 videos=0]"
    assert finish == "stop" and usage is not None and usage.total_tokens > 0


def test_openai_sdk_frame_list_video_and_high_res(oai, server, isolated_env):
    frames = [data_url(write_image(isolated_env / f"f{i}.png", color=(10 * i, 0, 0))) for i in range(4)]
    r = oai.chat.completions.create(
        model="qwen3-vl-plus",
        messages=[
            {
                "role": "user",
                "content": [{"type": "video", "video": frames, "fps": 2}, {"type": "text", "text": "What happens?"}],
            }
        ],
        extra_body={"vl_high_resolution_images": True},
    )
    assert r.choices[0].message.content.endswith("[images=0 videos=1]")
    sent = upstream_json(server)
    assert sent["vl_high_resolution_images"] is True
    assert sent["messages"][0]["content"][0]["type"] == "video"


def test_openai_sdk_thinking_shows_reasoning(oai, server):
    server.enqueue(Reply(text="Four.", reasoning="Two and two make four."))
    r = oai.chat.completions.create(
        model="qwen3-vl-plus", messages=[{"role": "user", "content": "2+2?"}], extra_body={"enable_thinking": True}
    )
    msg = r.choices[0].message
    assert msg.content == "Four." and msg.model_extra["reasoning_content"] == "Two and two make four."
    server.enqueue(Reply(text="Four.", reasoning="Two and two make four."))
    reasoning = []
    for chunk in oai.chat.completions.create(
        model="qwen3-vl-plus",
        stream=True,
        extra_body={"enable_thinking": True},
        messages=[{"role": "user", "content": "2+2?"}],
    ):
        for choice in chunk.choices:
            reasoning.append((choice.delta.model_extra or {}).get("reasoning_content") or "")
    assert "".join(reasoning) == "Two and two make four."


def test_openai_sdk_tool_call(oai, server):
    call = {"id": "call_1", "type": "function", "function": {"name": "zoom", "arguments": '{"x": 1}'}}
    server.enqueue(Reply(tool_calls=[call], text=""))
    tools = [{"type": "function", "function": {"name": "zoom", "parameters": {"type": "object"}}}]
    r = oai.chat.completions.create(
        model="qwen3-vl-plus", tools=tools, messages=[{"role": "user", "content": "zoom in"}]
    )
    assert r.choices[0].finish_reason == "tool_calls"
    got = r.choices[0].message.tool_calls[0]
    assert got.function.name == "zoom" and json.loads(got.function.arguments) == {"x": 1}
    assert upstream_json(server)["tools"] == tools


def test_openai_sdk_errors_in_its_own_format(served, server):
    openai = pytest.importorskip("openai")
    bad = openai.OpenAI(base_url=served.url + "/compatible-mode/v1", api_key="sk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as info:
        bad.chat.completions.create(model="qwen3-vl-plus", messages=[{"role": "user", "content": "hi"}])
    assert info.value.status_code == 401 and info.value.body["code"] == "invalid_api_key"
    good = openai.OpenAI(base_url=served.url + "/compatible-mode/v1", api_key=SERVE_KEY, max_retries=0)
    with pytest.raises(openai.BadRequestError) as info:
        good.chat.completions.create(
            model="qwen3-vl-plus",
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "image_url": {"url": "/etc/passwd"}},
                        {"type": "text", "text": "read"},
                    ],
                }
            ],
        )
    assert "does not read local paths" in info.value.body["message"]
    with pytest.raises(openai.BadRequestError):
        good.chat.completions.create(
            model="qwen3-vl-plus",
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "image_url": {"url": "file:///etc/passwd"}},
                        {"type": "text", "text": "x"},
                    ],
                }
            ],
        )
    server.enqueue(Reply(status=400, error_code="InvalidParameter", error_message="upstream says no"))
    with pytest.raises(openai.BadRequestError) as info:
        good.chat.completions.create(model="qwen3-vl-plus", messages=[{"role": "user", "content": "hi"}])
    assert "upstream says no" in info.value.body["message"]
    assert not [r for r in server.requests if b"passwd" in r.body]


# --- the dashscope SDK against the native endpoint ---------------------------------------------------


@pytest.fixture
def ds(served: Served, monkeypatch):
    dashscope = pytest.importorskip("dashscope")
    monkeypatch.setattr(dashscope, "base_http_api_url", served.url + "/api/v1")
    monkeypatch.setenv("DASHSCOPE_HTTP_BASE_URL", served.url + "/api/v1")
    return dashscope


def test_dashscope_sdk_one_image_and_local_file(ds, server, png):
    r = ds.MultiModalConversation.call(
        api_key=SERVE_KEY,
        model="qwen3-vl-plus",
        messages=[{"role": "user", "content": [{"image": data_url(png)}, {"text": "What is this?"}]}],
    )
    assert r.status_code == 200, (r.code, r.message)
    assert r.output.choices[0].message.content[0]["text"] == "echo: What is this? [images=1 videos=0]"
    assert r.usage["input_tokens"] > 0
    # a local file as a file:// path: the SDK uploads it to the server's temporary storage first
    r = ds.MultiModalConversation.call(
        api_key=SERVE_KEY,
        model="qwen3-vl-plus",
        messages=[{"role": "user", "content": [{"image": f"file://{png}"}, {"text": "And this?"}]}],
    )
    assert r.status_code == 200, (r.code, r.message)
    assert r.output.choices[0].message.content[0]["text"] == "echo: And this? [images=1 videos=0]"
    sent = upstream_json(server)
    assert sent["messages"][0]["content"][0]["image_url"]["url"].startswith("data:image/")


def test_dashscope_sdk_files_sharing_a_base_name(ds, server, isolated_env):
    """The SDK (>= 1.25.2) asks for one upload policy per call and keys each file ``upload_dir/basename``: two copies
    of a frame in two folders, or one file twice in a frame list, post one key twice. The same bytes again are
    accepted (the key still names them); other bytes under the key are refused, saying why, since one
    ``oss://`` reference cannot stand for two files."""
    for cam in ("cam1", "cam2", "cam3"):
        (isolated_env / cam).mkdir()
    a = write_image(isolated_env / "cam1" / "0001.png", color=(10, 200, 10))
    b = isolated_env / "cam2" / "0001.png"
    b.write_bytes(a.read_bytes())
    r = ds.MultiModalConversation.call(
        api_key=SERVE_KEY,
        model="qwen3-vl-plus",
        messages=[{"role": "user", "content": [{"image": f"file://{a}"}, {"image": f"file://{b}"}, {"text": "same?"}]}],
    )
    assert r.status_code == 200, (r.code, r.message)
    sent = upstream_json(server)["messages"][0]["content"]
    assert sent[0]["image_url"]["url"] == sent[1]["image_url"]["url"] == data_url(a)
    frames = [f"file://{a}", f"file://{write_image(isolated_env / '0002.png', color=(9, 9, 9))}", f"file://{a}"]
    r = ds.MultiModalConversation.call(
        api_key=SERVE_KEY,
        model="qwen3-vl-plus",
        messages=[{"role": "user", "content": [{"video": frames}, {"text": "what happens?"}]}],
    )
    assert r.status_code == 200, (r.code, r.message)
    assert r.output.choices[0].message.content[0]["text"] == "echo: what happens? [images=0 videos=1]"
    c = write_image(isolated_env / "cam3" / "0001.png", color=(200, 10, 10))  # other bytes, the same base name
    with pytest.raises(ds.common.error.UploadFileException) as caught:
        ds.MultiModalConversation.call(
            api_key=SERVE_KEY,
            model="qwen3-vl-plus",
            messages=[{"role": "user", "content": [{"image": f"file://{a}"}, {"image": f"file://{c}"}, {"text": "x"}]}],
        )
    said = str(caught.value)
    assert "FileAlreadyExists" in said and "another file named 0001.png" in said and "rename one" in said, said


@pytest.mark.parametrize("incremental", [True, False])
def test_dashscope_sdk_stream(ds, server, png, incremental):
    responses = ds.MultiModalConversation.call(
        api_key=SERVE_KEY,
        model="qwen3-vl-plus",
        stream=True,
        incremental_output=incremental,
        messages=[{"role": "user", "content": [{"image": data_url(png)}, {"text": "Describe it"}]}],
    )
    pieces, last = [], None
    for r in responses:
        assert r.status_code == 200, (r.code, r.message)
        content = r.output.choices[0].message.content
        pieces.append(content[0]["text"] if content else "")
        last = r
    want = "echo: Describe it [images=1 videos=0]"
    assert ("".join(pieces) if incremental else pieces[-1]) == want
    assert last.output.choices[0].finish_reason == "stop" and last.usage["output_tokens"] > 0


def test_dashscope_sdk_thinking_and_errors(ds, server):
    server.enqueue(Reply(text="Four.", reasoning="Two and two."))
    r = ds.MultiModalConversation.call(
        api_key=SERVE_KEY,
        model="qwen3-vl-plus",
        enable_thinking=True,
        messages=[{"role": "user", "content": [{"text": "2+2?"}]}],
    )
    assert r.status_code == 200
    assert r.output.choices[0].message.reasoning_content == "Two and two."
    r = ds.MultiModalConversation.call(
        api_key="sk-wrong", model="qwen3-vl-plus", messages=[{"role": "user", "content": [{"text": "hi"}]}]
    )
    assert r.status_code == 401 and r.code == "InvalidApiKey"


# --- security and limits ------------------------------------------------------------------------------


def post(served: Served, path: str, body: Any, key: str | None = SERVE_KEY, **kw: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    headers.update(kw.pop("headers", {}))
    return httpx.post(served.url + path, json=body, headers=headers, timeout=30, **kw)


NATIVE = "/api/v1/services/aigc/multimodal-generation/generation"
COMPAT = "/compatible-mode/v1/chat/completions"


def test_caps_and_errors_in_each_protocol(server, png):
    with gateway(server, max_body_bytes=4096, max_media_items=2, model_map={"local-vl": "qwen3-vl-plus"}) as s:
        big = {"model": "local-vl", "messages": [{"role": "user", "content": "x" * 5000}]}
        r = post(s, COMPAT, big)
        assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
        r = post(s, NATIVE, {"model": "other", "input": {"messages": [{"role": "user", "content": [{"text": "hi"}]}]}})
        assert r.status_code == 404 and r.json()["code"] == "ModelNotFound"
        three = [{"image": "https://example.com/a.png"}] * 3
        r = post(
            s,
            NATIVE,
            {"model": "local-vl", "input": {"messages": [{"role": "user", "content": [*three, {"text": "x"}]}]}},
        )
        assert r.status_code == 400 and "more than 2" in r.json()["message"]
        r = post(s, COMPAT, {"model": "local-vl"})
        assert r.status_code == 400 and "messages" in r.json()["error"]["message"]
        r = httpx.post(s.url + COMPAT, content=b"{not json", headers={"Authorization": f"Bearer {SERVE_KEY}"})
        assert r.status_code == 400
        r = post(s, COMPAT, {"model": "local-vl", "messages": [{"role": "user", "content": "hi"}]}, key=None)
        assert r.status_code == 401 and SERVE_KEY not in r.text
        ok = post(s, COMPAT, {"model": "local-vl", "messages": [{"role": "user", "content": "hi"}]})
        assert ok.status_code == 200 and ok.json()["model"] == "local-vl"
        assert upstream_json(server)["model"] == "qwen3-vl-plus"
        models = httpx.get(s.url + "/v1/models", headers={"Authorization": f"Bearer {SERVE_KEY}"}).json()
        assert [m["id"] for m in models["data"]] == ["local-vl"]
        assert httpx.get(s.url + "/health").json() == {"status": "ok"}
        assert httpx.get(s.url + "/ready").json()["ready"] is True


def test_oss_references_only_to_own_uploads(served, server):
    r = post(
        served,
        NATIVE,
        {
            "model": "qwen3-vl-plus",
            "input": {"messages": [{"role": "user", "content": [{"image": "oss://elsewhere/x.png"}, {"text": "x"}]}]},
        },
        headers={"X-DashScope-OssResourceResolve": "enable"},
    )
    assert r.status_code == 400 and "does not exist on this server" in r.json()["message"]


def test_concurrency_per_key_and_disconnect_frees_the_slot(server):
    server.enqueue(Reply(text=" ".join(["word"] * 40), chunk_delay_s=0.5, times=10))
    with gateway(server, max_concurrent_per_key=1) as s:
        body = {"model": "qwen3-vl-plus", "stream": True, "messages": [{"role": "user", "content": "slow"}]}
        headers = {"Authorization": f"Bearer {SERVE_KEY}"}
        with httpx.Client(timeout=30) as h, h.stream("POST", s.url + COMPAT, json=body, headers=headers) as first:
            assert first.status_code == 200
            lines = first.iter_lines()
            next(lines)  # the stream is running
            second = post(s, COMPAT, {**body, "stream": False})
            assert second.status_code == 429 and second.headers["Retry-After"] == "1", list(lines)
        # the first client went away mid-stream: its slot is free again
        deadline = time.monotonic() + 15
        while True:
            again = post(s, COMPAT, {**body, "stream": False})
            if again.status_code == 200 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert again.status_code == 200


def test_no_key_in_any_output(server, capfd):
    with gateway(server) as s:
        post(s, COMPAT, {"model": "qwen3-vl-plus", "messages": [{"role": "user", "content": "hi"}]}, key="sk-bad-1")
    out, err = capfd.readouterr()
    assert SERVE_KEY not in out + err and API_KEY not in out + err and "sk-bad-1" not in out + err


# --- fetching URLs (local backends) ----------------------------------------------------------------------


@pytest.fixture
def files_server(file_server: FileServer) -> str:
    file_server.add("/a.png", b"\x89PNG fake", "image/png")
    file_server.pages["/redirect"] = Page(status=302, headers={"Location": "http://127.0.0.1:1/x"})
    return file_server.url


def test_private_addresses_are_refused_after_resolution(files_server):
    assert not is_public("127.0.0.1") and not is_public("169.254.169.254") and not is_public("10.1.2.3")
    assert not is_public("::ffff:127.0.0.1") and not is_public("fd00::1") and is_public("8.8.8.8")
    with pytest.raises(MediaError, match="private or reserved"):
        asyncio.run(fetch_public(files_server + "/a.png", max_bytes=1000, timeout_s=5))
    with pytest.raises(MediaError, match="private or reserved"):
        asyncio.run(fetch_public("http://localhost:9/x", max_bytes=1000, timeout_s=5))
    assert (
        asyncio.run(fetch_public(files_server + "/a.png", max_bytes=1000, timeout_s=5, allow_private=True))
        == b"\x89PNG fake"
    )
    with pytest.raises(MediaError, match="larger than"):
        asyncio.run(fetch_public(files_server + "/a.png", max_bytes=3, timeout_s=5, allow_private=True))


def test_each_redirect_is_checked_again(files_server):
    """The first hop is allowed (its address counts as public here), the redirect's target is not."""
    port = int(files_server.rsplit(":", 1)[1])

    async def resolver(host: str, p: int) -> list[str]:
        return ["127.0.0.1"] if p == port else ["10.0.0.1"]  # /redirect points at port 1

    import qwenvl.server.security as sec

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sec, "is_public", lambda a: a == "127.0.0.1")
        assert (
            asyncio.run(fetch_public(files_server + "/a.png", max_bytes=1000, timeout_s=5, resolver=resolver))
            == b"\x89PNG fake"
        )  # the first hop alone passes
        with pytest.raises(MediaError, match=r"10\.0\.0\.1"):
            asyncio.run(fetch_public(files_server + "/redirect", max_bytes=1000, timeout_s=5, resolver=resolver))


# --- the protocols in reverse are the forward ones' inverse ----------------------------------------------

SEED_COMPAT = {
    "model": "qwen3-vl-plus",
    "messages": [
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": "https://example.com/dog_and_girl.jpeg"}},
                {"type": "text", "text": "图中描绘的是什么景象?"},
            ],
        }
    ],
}
SEED_NATIVE = {
    "model": "qwen3-vl-plus",
    "input": {
        "messages": [
            {
                "role": "user",
                "content": [{"image": "https://example.com/dog_and_girl.jpeg"}, {"text": "图中描绘的是什么景象?"}],
            }
        ]
    },
    "parameters": {"result_format": "message"},
}
SEED_VIDEO_NATIVE = {
    "model": "qwen3-vl-plus",
    "input": {
        "messages": [
            {
                "role": "user",
                "content": [
                    {
                        "video": [
                            "https://example.com/1.jpg",
                            "https://example.com/2.jpg",
                            "https://example.com/3.jpg",
                            "https://example.com/4.jpg",
                        ],
                        "fps": 2,
                    },
                    {"text": "描述这个视频的具体过程"},
                ],
            }
        ]
    },
    "parameters": {"result_format": "message", "vl_high_resolution_images": True, "temperature": 0},
}


def _rebuilt(proto: str, body: dict) -> dict:
    from qwenvl.protocols import compat, native

    parsed = inbound.parse_compat_body(body) if proto == "compat" else inbound.parse_native_body(body)
    client = qwenvl.Client(api_key="sk-x")
    call = client.plan(parsed.request, prepare=False)
    call.params = {k: v for k, v in call.params.items() if k in parsed.given}
    return (compat if proto == "compat" else native).build_body(call, stream=False)


@pytest.mark.parametrize(
    ("proto", "body"), [("compat", SEED_COMPAT), ("native", SEED_NATIVE), ("native", SEED_VIDEO_NATIVE)]
)
def test_build_body_of_parse_body_is_identity(proto, body):
    assert _rebuilt(proto, body) == body


def test_response_round_trip_both_protocols():
    from qwenvl.protocols import compat, native

    resp = qwenvl.Response(
        text="hi",
        model="m",
        finish_reason="stop",
        reasoning="think",
        usage=qwenvl.Usage(input_tokens=10, output_tokens=2, total_tokens=12, image_tokens=8),
    )
    back = compat.parse_response(inbound.compat_response(resp, completion_id="c", created=1, model="m"), model="m")
    assert (back.text, back.reasoning, back.usage.image_tokens, back.usage.total_tokens) == ("hi", "think", 8, 12)
    back = native.parse_response(inbound.native_response(resp, request_id="r"), model="m")
    assert (back.text, back.reasoning, back.usage.image_tokens, back.request_id) == ("hi", "think", 8, "r")


# --- the command ---------------------------------------------------------------------------------------


def test_serve_command_refuses_unsafe_or_incomplete_settings(env):
    from conftest import run_cli

    p = run_cli("serve", env={k: v for k, v in env.items() if k != "QWENVL_SERVE_API_KEY"})
    assert p.returncode == 2 and "needs an API key" in p.stderr and "Traceback" not in p.stderr
    p = run_cli("serve", "--no-auth", "--host", "0.0.0.0", env=env)
    assert p.returncode == 2 and "loopback" in p.stderr
    p = run_cli("serve", "--api-key", "k", "--backend", "transformers", "--workers", "2", env=env)
    assert p.returncode == 2


def test_serve_command_answers_the_sdk_and_stops_on_ctrl_c(env, server, tmp_path):
    """`qwenvl serve --port 0` picks a free port (no port chosen here that another process could take first) and
    says it once it listens: the SDK connects at once. Ctrl-C stops it."""
    import os
    import re
    import signal
    import subprocess
    import sys

    from conftest import ctrl_c_reaches_children

    full = {
        **{k: v for k, v in os.environ.items() if not k.startswith("DASHSCOPE_")},
        **env,
        "QWENVL_SERVE_API_KEY": SERVE_KEY,
    }
    with ctrl_c_reaches_children():
        proc = subprocess.Popen(
            [sys.executable, "-m", "qwenvl", "serve", "--port", "0"],
            env=full,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
    try:
        assert proc.stderr is not None
        banner: list[str] = []
        reader = threading.Thread(target=lambda: banner.append(proc.stderr.readline()), daemon=True)
        reader.start()
        reader.join(60)  # bounds a hang of the start-up only
        found = re.search(r" on (http://127\.0\.0\.1:\d+):", banner[0] if banner else "")
        assert found, banner
        openai = pytest.importorskip("openai")
        sdk = openai.OpenAI(base_url=f"{found.group(1)}/compatible-mode/v1", api_key=SERVE_KEY, max_retries=0)
        r = sdk.chat.completions.create(model="qwen3-vl-plus", messages=[{"role": "user", "content": "hi"}])
        assert r.choices[0].message.content.startswith("echo: hi")
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=20)
    assert proc.returncode in (0, 130) and "Traceback" not in err
    assert SERVE_KEY not in out + err and API_KEY not in out + err


# --- under load -------------------------------------------------------------------------------------------


def _rss_mb() -> float:
    import resource

    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


@pytest.mark.parametrize("backend", ["openai", "dashscope"])
def test_200_concurrent_streaming_clients_all_finish_with_memory_flat(server, backend):
    """200 streams at once through the server to the loopback upstream (a vLLM double behind the openai
    backend, or the DashScope double behind the gateway), twice: every stream completes with the whole answer
    and no error, and the second round does not grow the process (no per-request leak)."""
    from engine_server import EngineServer

    clients = 200

    async def one(h: httpx.AsyncClient, url: str, i: int) -> str:
        body = {
            "model": "qwen3-vl-plus",
            "stream": True,
            "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": f"question {i}"}],
        }
        text, done = [], False
        async with h.stream("POST", url, json=body, headers={"Authorization": f"Bearer {SERVE_KEY}"}) as r:
            assert r.status_code == 200, await r.aread()
            async for line in r.aiter_lines():
                if line.startswith("data:"):
                    data = line[5:].strip()
                    if data == "[DONE]":
                        done = True
                        continue
                    chunk = json.loads(data)
                    assert "error" not in chunk, chunk
                    for c in chunk["choices"]:
                        text.append(c["delta"].get("content") or "")
        assert done
        return "".join(text)

    async def round_(url: str) -> list[str]:
        limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
        async with httpx.AsyncClient(timeout=120, limits=limits) as h:
            return await asyncio.gather(*(one(h, url, i) for i in range(clients)))

    server.enqueue(Reply(chunk_delay_s=0.05, times=2 * clients))
    with EngineServer(engine="vllm", served="qwen2.5-vl-tiny") as engine:
        app = (
            engine_gateway(engine, max_concurrent_per_key=clients)
            if backend == "openai"
            else gateway(server, max_concurrent_per_key=clients)
        )
        with app as s:
            url = s.url + COMPAT
            first = asyncio.run(round_(url))
            before = _rss_mb()
            second = asyncio.run(round_(url))
            after = _rss_mb()
    for i, text in enumerate(first + second):
        want = f"question {i % clients}"
        assert text.endswith(want) if backend == "openai" else text == f"echo: {want} [images=0 videos=0]"
    assert after - before < 40, f"memory grew {after - before:.1f} MB over 200 more streams"


def test_slots_are_given_back_after_every_kind_of_answer(server):
    """More requests in sequence than the per-key limit: each frees its slot (answer, error, stream)."""
    with gateway(server, max_concurrent_per_key=2) as s:
        ok = {"model": "qwen3-vl-plus", "messages": [{"role": "user", "content": "hi"}]}
        for _ in range(3):
            assert post(s, COMPAT, ok).status_code == 200
            assert post(s, COMPAT, {**ok, "stream": True}).status_code == 200
            server.enqueue(Reply(status=400, error_code="InvalidParameter", error_message="no"))
            assert (
                post(
                    s,
                    NATIVE,
                    {"model": "qwen3-vl-plus", "input": {"messages": [{"role": "user", "content": [{"text": "hi"}]}]}},
                ).status_code
                == 400
            )
            assert (
                post(
                    s,
                    COMPAT,
                    {
                        "model": "qwen3-vl-plus",
                        "messages": [
                            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "/etc/passwd"}}]}
                        ],
                    },
                ).status_code
                == 400
            )


# --- in front of a local engine (the openai backend and a loopback vLLM double) ------------------------------


def engine_gateway(srv: Any, **settings: Any) -> Served:
    client = qwenvl.AsyncClient(backend="openai", base_url=srv.base_url, retry_backoff_s=0.01)
    settings.setdefault("api_key", SERVE_KEY)
    settings.setdefault("pass_model_names", False)
    settings.setdefault("fetch_urls", True)
    return Served(create_app(client, ServeSettings(**settings)))


def test_sdks_run_unchanged_on_a_local_engine(png):
    """The seed docs' code (model="qwen-vl-max") against a local vLLM: the served model answers."""
    openai = pytest.importorskip("openai")
    dashscope = pytest.importorskip("dashscope")
    from engine_server import EngineServer

    with EngineServer(engine="vllm", details=True, served="qwen2.5-vl-tiny") as srv, engine_gateway(srv) as s:
        sdk = openai.OpenAI(base_url=s.url + "/compatible-mode/v1", api_key=SERVE_KEY, max_retries=0)
        r = sdk.chat.completions.create(
            model="qwen-vl-max",
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "image_url": {"url": data_url(png)}},
                        {"type": "text", "text": "What?"},
                    ],
                }
            ],
        )
        assert r.choices[0].message.content.startswith("images=1 ") and r.model == "qwen-vl-max"
        # 64x48 resized up to the 4-token floor (56x56), + its 2 vision markers as the service counts them
        assert r.usage.prompt_tokens_details.image_tokens == 4 + 2
        assert srv.requests[-1].json["model"] == "qwen2.5-vl-tiny"  # the served model, whatever the name
        chunks = sdk.chat.completions.create(
            model="qwen-vl-max",
            stream=True,
            stream_options={"include_usage": True},
            messages=[{"role": "user", "content": "hello there"}],
        )
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text.endswith("hello there")
        models = httpx.get(s.url + "/v1/models", headers={"Authorization": f"Bearer {SERVE_KEY}"}).json()
        assert [m["id"] for m in models["data"]] == ["qwen2.5-vl-tiny"]
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(dashscope, "base_http_api_url", s.url + "/api/v1")
            r = dashscope.MultiModalConversation.call(
                api_key=SERVE_KEY,
                model="qwen-vl-max",
                messages=[{"role": "user", "content": [{"image": f"file://{png}"}, {"text": "Local file?"}]}],
            )
        assert r.status_code == 200, (r.code, r.message)
        assert r.output.choices[0].message.content[0]["text"].startswith("images=1 ")


def test_a_local_backend_refuses_private_urls_and_names_not_served(png):
    from engine_server import EngineServer

    with (
        EngineServer(engine="vllm", served="qwen2.5-vl-tiny") as srv,
        engine_gateway(srv, model_map={"local-vl": None}) as s,
    ):
        private = {
            "model": "local-vl",
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "image_url": {"url": "http://169.254.169.254/latest/meta-data"}},
                        {"type": "text", "text": "x"},
                    ],
                }
            ],
        }
        r = post(s, COMPAT, private)
        assert r.status_code == 400 and "private or reserved" in r.json()["error"]["message"]
        r = post(s, COMPAT, {"model": "qwen-vl-max", "messages": [{"role": "user", "content": "x"}]})
        assert r.status_code == 404
        assert not [q for q in srv.requests if q.path.endswith("/chat/completions")]


def test_upstream_key_refused_is_the_servers_problem_not_the_callers(server):
    client = qwenvl.AsyncClient(api_key="sk-wrong-upstream", base_url=server.url, retry_backoff_s=0.01)
    with Served(create_app(client, ServeSettings(api_key=SERVE_KEY))) as s:
        r = post(s, COMPAT, {"model": "qwen3-vl-plus", "messages": [{"role": "user", "content": "hi"}]})
        assert r.status_code == 502 and "this server's own credentials" in r.json()["error"]["message"]
        r = post(
            s,
            NATIVE,
            {"model": "qwen3-vl-plus", "input": {"messages": [{"role": "user", "content": [{"text": "hi"}]}]}},
        )
        assert r.status_code == 502 and r.json()["code"] != "InvalidApiKey"


def test_errors_name_the_callers_reference_not_the_servers_folder(served, isolated_env):
    dashscope = pytest.importorskip("dashscope")
    notimg = isolated_env / "notimg.png"
    notimg.write_text("this is not an image")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(dashscope, "base_http_api_url", served.url + "/api/v1")
        r = dashscope.MultiModalConversation.call(
            api_key=SERVE_KEY,
            model="qwen3-vl-plus",
            messages=[{"role": "user", "content": [{"image": f"file://{notimg}"}, {"text": "What?"}]}],
        )
    assert r.status_code == 400
    assert "oss://" in r.message and "qwenvl-serve-uploads" not in r.message and "/tmp/" not in r.message


def test_unknown_paths_answer_in_the_services_shape(served):
    r = httpx.get(served.url + "/api/v1/nothing")
    assert r.status_code == 404 and set(r.json()) == {"code", "message", "request_id"}
    r = httpx.get(served.url + "/compatible-mode/v1/chat/completions")
    assert r.status_code == 405 and "error" in r.json()
