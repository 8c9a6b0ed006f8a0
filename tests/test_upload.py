"""Local files through DashScope's temporary storage (native protocol), against the loopback server."""

from __future__ import annotations

import os

import pytest
from PIL import Image

from conftest import API_KEY, make_client, run_cli, write_image
from qwenvl.errors import MediaError, UsageError


def noise_png(path, side: int = 1600):
    Image.frombytes("RGB", (side, side), os.urandom(side * side * 3)).save(path, compress_level=0)
    return path


def native_items(server):
    return server.requests[-1].json["input"]["messages"][-1]["content"]


def test_upload_oss_sends_references_with_one_policy(server, isolated_env, png, jpeg):
    with make_client(server, "native") as c:
        r = c.complete(prompt="compare", images=[str(png), str(jpeg)], upload="oss", prepare=False)
    assert "[images=2" in r.text
    policy_calls = [q for q in server.requests if q.path.endswith("/uploads")]
    assert len(policy_calls) == 1 and policy_calls[0].query["model"] == "qwen3-vl-plus"
    items = native_items(server)
    refs = [i["image"] for i in items[:2]]
    assert all(ref.startswith("oss://") for ref in refs)
    assert server.requests[-1].headers["X-DashScope-OssResourceResolve"] == "enable"
    assert server.uploads[refs[0][len("oss://") :]] == png.read_bytes()
    assert server.uploads[refs[1][len("oss://") :]] == jpeg.read_bytes()


def three_big(folder):
    return [str(noise_png(folder / f"big{i}.png", side=1600 + 10 * i)) for i in range(3)]  # ~7.7 MB each


def test_upload_auto_only_what_does_not_fit(server, isolated_env, png):
    with make_client(server, "native") as c:
        c.complete(prompt="x", images=[str(png), *three_big(isolated_env)], prepare=False)
    items = native_items(server)
    assert items[0]["image"].startswith("data:image/png")  # small: inline
    kinds = ["oss" if i["image"].startswith("oss://") else "inline" for i in items[1:4]]
    assert kinds == ["inline", "inline", "oss"]  # the largest goes to storage until the request fits
    assert len(server.uploads) == 1


def test_upload_inline_keeps_everything_inline(server, png):
    with make_client(server, "native") as c:
        c.complete(prompt="x", image=str(png), upload="inline")
    assert native_items(server)[0]["image"].startswith("data:")
    assert "X-DashScope-OssResourceResolve" not in server.requests[-1].headers
    assert not server.uploads


def test_compat_cannot_upload(server, isolated_env, png):
    with make_client(server, "compat") as c, pytest.raises(UsageError, match="native"):
        c.complete(prompt="x", image=str(png), upload="oss")
    with make_client(server, "compat") as c, pytest.raises(MediaError) as info:
        c.complete(prompt="x", images=three_big(isolated_env), prepare=False)
    # the request's total is over the limit, not any one item: the message says so (it blamed "1 item")
    message = str(info.value)
    assert "the request's inline media take" in message and "(3 items)" in message, message
    assert "20 MiB limit of one request" in message and "1 of them would have to go" in message, message
    assert "only the native protocol" in message
    assert server.requests == []


def test_upload_cli_and_bad_file_never_uploaded(server, isolated_env, png):
    (isolated_env / "notes.png").write_text("text")
    env = {"DASHSCOPE_API_KEY": API_KEY}
    p = run_cli(
        "ask",
        str(png),
        "notes.png",
        "-p",
        "x",
        "--protocol",
        "native",
        "--upload",
        "oss",
        "--base-url",
        server.url,
        env=env,
    )
    assert p.returncode == 3 and server.requests == []
    p = run_cli(
        "ask", str(png), "-p", "x", "--protocol", "native", "--upload", "oss", "--base-url", server.url, env=env
    )
    assert p.returncode == 0, p.stderr
    assert native_items(server)[0]["image"].startswith("oss://")


def test_frames_are_uploaded_too(server, isolated_env):
    frames = [str(write_image(isolated_env / f"f{i}.png", color=(i * 40, 0, 0))) for i in range(4)]
    with make_client(server, "native") as c:
        r = c.complete(prompt="what happens", video=frames, upload="oss")
    assert "videos=1" in r.text
    video = native_items(server)[0]["video"]
    assert len(video) == 4 and all(v.startswith("oss://") for v in video)
    assert len(server.uploads) == 4


def _clip(path, seconds: int = 3, fps: int = 10):
    import av
    import numpy as np

    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=fps)
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        for i in range(seconds * fps):
            frame = np.full((48, 64, 3), i * 8 % 255, np.uint8)
            for packet in s.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                c.mux(packet)
        for packet in s.encode():
            c.mux(packet)
    return path


def test_whole_video_is_uploaded_for_the_service_to_sample(server, isolated_env):
    clip = _clip(isolated_env / "clip.mp4")
    with make_client(server, "native") as c:
        call = c.plan(prompt="what happens?", video=str(clip), video_as="file", fps=1.0)
        assert call.media[0].tokens and call.media[0].sent.startswith("file://")
        r = c.send(call)
    assert "videos=1" in r.text
    item = native_items(server)[0]
    assert item["video"].startswith("oss://") and item["fps"] == 1.0
    assert server.uploads[item["video"][len("oss://") :]] == clip.read_bytes()
    assert server.requests[-1].headers["X-DashScope-OssResourceResolve"] == "enable"


def test_whole_video_needs_native_and_storage(server, isolated_env):
    clip = _clip(isolated_env / "clip.mp4")
    with make_client(server, "compat") as c, pytest.raises(UsageError, match="native"):
        c.complete(prompt="x", video=str(clip), video_as="file")
    with make_client(server, "native") as c, pytest.raises(UsageError, match="inline"):
        c.complete(prompt="x", video=str(clip), video_as="file", upload="inline")
    assert server.requests == []


@pytest.mark.parametrize("how", ["sync", "async"])
def test_a_conversation_uploads_each_file_once(server, isolated_env, png, jpeg, how):
    """Each turn sends the whole history: its files were uploaded again every turn (a policy and a POST each). A
    backend sends its oss:// reference again while it is valid (48 h, less an hour), so each file goes up once and
    a turn with nothing new to upload asks for no policy; past that it is uploaded anew."""
    import asyncio

    import qwenvl
    from qwenvl.backends import oss
    from qwenvl.chat import Conversation

    now = [1_000_000.0]
    clock = oss.Uploaded(clock=lambda: now[0])

    def policies() -> int:
        return sum(1 for q in server.requests if q.path.endswith("/uploads"))

    def posts() -> int:
        return sum(1 for q in server.requests if q.path.endswith("/oss"))

    fields = {"upload": "oss", "prepare": False}
    if how == "sync":
        with make_client(server, "native") as c:
            c.backend.uploaded = clock
            conv = Conversation(c, fields=fields)
            conv.attach(str(png))
            for turn in range(5):
                conv.send(f"turn {turn}")
                if turn == 2:
                    conv.attach(str(jpeg))
            assert (policies(), posts()) == (2, 2)  # the first turn's file, then the third's
            now[0] += oss.UPLOAD_REUSE_S + 1  # its references about to expire: uploaded again
            conv.send("later")
            assert (policies(), posts()) == (3, 4)
    else:

        async def run() -> None:
            async with qwenvl.AsyncClient(
                api_key=API_KEY, protocol="native", base_url=server.url, retry_backoff_s=0.01
            ) as c:
                (await c._ready())._sync.uploaded = clock
                conv = Conversation(c, fields=fields)
                await conv.aattach(str(png), str(jpeg))
                for turn in range(5):
                    await conv.asend(f"turn {turn}")

        asyncio.run(run())
        assert (policies(), posts()) == (1, 2)
    messages = server.requests[-1].json["input"]["messages"]
    refs = [i["image"] for m in messages if isinstance(m["content"], list) for i in m["content"] if "image" in i]
    assert len(refs) == 2 and all(ref.startswith("oss://") for ref in refs)  # the last turn was answered from them


def test_an_upload_is_kept_per_model(server, isolated_env, png):
    """A temporary file is bound to the model named at upload: another model gets its own."""
    with make_client(server, "native") as c:
        for model in ("qwen3-vl-plus", "qwen3-vl-plus", "qwen-vl-max"):
            c.complete(prompt="x", image=str(png), upload="oss", prepare=False, model=model)
    assert sum(1 for q in server.requests if q.path.endswith("/oss")) == 2
