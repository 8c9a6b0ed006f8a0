"""qwenvl.chat.Conversation: the chat's logic as a library class, against the loopback DashScope double.

(The terminal around it: tests/test_chat.py and tests/test_chat_tty.py.)
"""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path

import pytest
from PIL import Image

import qwenvl
from conftest import API_KEY, make_client, write_image
from dashscope_server import Reply
from qwenvl.chat import COMMANDS, Conversation, image_refs, parse_command
from qwenvl.sessions import Session, sessions_dir


def model_requests(server) -> list[dict]:
    return [r.json for r in server.requests if r.json and r.path.endswith(("/chat/completions", "/generation"))]


def test_turns_carry_the_history_and_the_attachments_once(server, protocol, png):
    with make_client(server, protocol) as client:
        conv = Conversation(client, fields={"max_tokens": 64})
        conv.attach(str(png))
        assert conv.pending == 1
        first = conv.send("what colour?")
        assert first.text == "echo: what colour? [images=1 videos=0]" and conv.pending == 0
        second = conv.send("and the shape?", max_tokens=32)  # a turn's own fields override the conversation's
    assert second.text == "echo: and the shape? [images=1 videos=0]"  # the image of the first turn, kept
    assert [m.role for m in conv.messages] == ["user", "assistant", "user", "assistant"]
    assert conv.messages[1].text() == first.text
    bodies = model_requests(server)
    assert len(bodies) == 2
    if protocol == "compat":
        assert bodies[0]["max_tokens"] == 64 and bodies[1]["max_tokens"] == 32
        assert len(bodies[1]["messages"]) == 3  # user (with the image), assistant, user


def test_stream_takes_the_answer_at_done_and_nothing_when_closed_early(server, png):
    with make_client(server) as client:
        conv = Conversation(client)
        conv.attach(str(png))
        events = []
        for event in conv.stream("describe"):
            events.append(event)
            if event.type == "done":  # the conversation has the answer when "done" is seen
                assert conv.messages[-1].text() == event.response.text
                break
        assert any(e.type == "text" for e in events)
        assert conv.messages[-1].text() == "echo: describe [images=1 videos=0]" and conv.pending == 0

        server.enqueue(Reply(text="a long answer " * 20, chunk_delay_s=0.01))
        conv.attach(str(png))
        stream = conv.stream("again")
        assert next(stream).type in ("text", "reasoning")
        stream.close()  # as Ctrl-C does in the chat
    assert len(conv.messages) == 2 and conv.pending == 1  # unchanged; the attachment waits for a retry


def test_an_error_changes_nothing_and_a_bad_file_is_dropped(server, isolated_env):
    photo = write_image(isolated_env / "p.png")
    with make_client(server, max_retries=0) as client:
        conv = Conversation(client)
        conv.send("hello")
        conv.attach(str(photo))
        server.enqueue(Reply(status=400, error_code="invalid_parameter_error", error_message="bad"))
        with pytest.raises(qwenvl.BadRequestError):
            conv.send("first try")
        assert len(conv.messages) == 2 and conv.pending == 1  # kept for a retry
        server.enqueue(Reply(stream_cut_after=1))
        with pytest.raises(qwenvl.StreamInterruptedError):
            list(conv.stream("second try"))
        assert len(conv.messages) == 2 and conv.pending == 1
        photo.write_bytes(b"not an image any more")  # attached when it was one
        with pytest.raises(qwenvl.MediaError):
            conv.send("third try")
        assert len(conv.messages) == 2 and conv.pending == 0  # the bad attachment is dropped
        assert conv.send("fine").text == "echo: fine [images=0 videos=0]"


def test_session_is_saved_after_each_turn_and_resumes_from_anywhere(server, isolated_env, monkeypatch):
    folder = isolated_env / "trip"
    folder.mkdir()
    photo = write_image(folder / "beach.png")
    monkeypatch.chdir(folder)
    with make_client(server) as client:
        conv = Conversation(client, session="trip", fields={"model": "qwen3-vl-flash"})
        conv.attach("beach.png")  # relative: stored absolute
        conv.send("what is here?")
    saved = json.loads((sessions_dir() / "trip.json").read_text())
    assert saved["model"] == "qwen3-vl-flash"
    assert saved["messages"][0]["content"][0]["image"] == str(photo)

    monkeypatch.chdir(isolated_env)
    with make_client(server) as client:
        again = Conversation(client, session="trip")  # no model given: the session's
        assert again.fields["model"] == "qwen3-vl-flash" and len(again.messages) == 2
        assert again.send("and the colours?").text == "echo: and the colours? [images=1 videos=0]"
        assert model_requests(server)[-1]["model"] == "qwen3-vl-flash"
        assert len(Session.load("trip").messages) == 4

        photo.unlink()
        gone = Conversation(client, session=Session.load("trip"))
        [why] = gone.drop_unavailable()
        assert "beach.png" in why and gone.drop_unavailable() == []  # said once
        assert gone.send("still there?").text == "echo: still there? [images=0 videos=0]"
        assert [m.role for m in gone.messages][:2] == ["user", "assistant"]  # the turn is kept, without its file


def test_an_unsaved_conversation_writes_no_file(server):
    with make_client(server) as client:
        Conversation(client).send("hi")
    assert not sessions_dir().exists()


def test_invalid_session_name():
    with qwenvl.Client(usage_log=False) as client, pytest.raises(qwenvl.UsageError, match="invalid session name"):
        Conversation(client, session="../etc")


def test_parse_command():
    assert parse_command("/reset") == ("reset", "")
    assert parse_command("/IMAGE   ") == ("image", "")
    assert parse_command("/image 'my photo.jpg' b.png") == ("image", "'my photo.jpg' b.png")
    assert parse_command("/usr/bin holds programs?") is None  # a path is a message
    assert parse_command("hello") is None and parse_command("/") is None
    assert image_refs("'my photo.jpg' b.png") == ["my photo.jpg", "b.png"]
    assert image_refs("it's.png") == ["it's.png"]  # an unbalanced quote: the rest is one name
    assert set(COMMANDS) == {"image", "reset", "history", "help", "exit"}


def test_commands_never_send(server, png, isolated_env):
    write_image(isolated_env / "my photo.jpg", fmt="JPEG")
    with make_client(server) as client:
        conv = Conversation(client)
        assert conv.command("help").outcome == "help"
        assert conv.command("foo").outcome == "unknown"
        assert conv.command("image").outcome == "needs-path"
        refused = conv.command("image", "nothere.png")
        assert refused.outcome == "not-attached" and isinstance(refused.error, qwenvl.MediaError)
        assert "file not found: nothere.png" in str(refused.error) and conv.pending == 0
        both = conv.command("image", f"{png.name} 'my photo.jpg'")
        assert both.outcome == "attached" and both.attached == [png.name, "my photo.jpg"] and both.pending == 2
        part = conv.command("image", f"{png.name} nothere.png")  # one bad name: nothing of it attached
        assert part.outcome == "not-attached" and conv.pending == 2
        conv.send("what are these?")
        history = conv.command("history")
        assert [m.role for m in history.messages] == ["user", "assistant"]
        assert conv.command("reset").outcome == "cleared" and conv.messages == [] and conv.pending == 0
        assert conv.command("exit").end and conv.command("QUIT").end
    assert len(model_requests(server)) == 1


def test_one_video_per_message(server):
    with make_client(server) as client:
        conv = Conversation(client)
        with pytest.raises(qwenvl.UsageError, match="one video"):
            conv.attach("https://example.com/a.mp4", "https://example.com/b.mp4")
        conv.attach("https://example.com/a.mp4")
        result = conv.command("image", "https://example.com/b.mp4")
        assert result.outcome == "not-attached" and "one video per message" in str(result.error)
        assert conv.video == "https://example.com/a.mp4" and conv.images == []


def test_async_turns(server, png, isolated_env):
    async def main() -> Conversation:
        async with qwenvl.AsyncClient(api_key=API_KEY, base_url=server.url, retry_backoff_s=0.01) as client:
            conv = Conversation(client, session="async")
            with pytest.raises(qwenvl.MediaError):
                await conv.aattach(str(png.with_name("missing.png")))
            loop_thread = threading.get_ident()
            checked_in: list[int] = []
            check = conv.check
            conv.check = lambda *a, **k: (checked_in.append(threading.get_ident()), check(*a, **k))[1]  # type: ignore[method-assign]
            await conv.aattach(str(png))
            assert conv.images == [str(png)] and checked_in and checked_in[0] != loop_thread  # off the loop
            r = await conv.asend("first")
            assert r.text == "echo: first [images=1 videos=0]"
            events = [e async for e in conv.astream("second")]
            assert events[-1].type == "done"
            return conv

    conv = asyncio.run(main())
    assert [m.text() for m in conv.messages if m.role == "assistant"] == [
        "echo: first [images=1 videos=0]",
        "echo: second [images=1 videos=0]",
    ]
    assert len(Session.load("async").messages) == 4
    assert Path(sessions_dir() / "async.json").exists()


def test_attach_checks_as_sending_would_and_keeps_the_others(server, isolated_env):
    from test_chat import bad_media

    good = write_image(isolated_env / "beach.jpg", fmt="JPEG")
    with make_client(server) as client:
        conv = Conversation(client)
        conv.attach(str(good))
        for name in bad_media(isolated_env):
            with pytest.raises(qwenvl.MediaError, match=name.replace(".", r"\.")):
                conv.attach(name)
            with pytest.raises(qwenvl.MediaError):
                conv.attach(str(good), name)  # nothing of one failing call is attached
            assert conv.images == [str(good)]
        assert model_requests(server) == []
        assert conv.send("hi").text == "echo: hi [images=1 videos=0]"


def test_a_file_damaged_after_attaching_is_dropped_alone(server, isolated_env):
    good, bad = write_image(isolated_env / "a.png"), write_image(isolated_env / "b.png")
    with make_client(server) as client:
        conv = Conversation(client)
        conv.attach(str(good), str(bad))
        bad.write_bytes(b"not an image any more")
        with pytest.raises(qwenvl.MediaError):
            conv.send("first")
        assert conv.dropped == [str(bad)] and conv.images == [str(good)]
        assert conv.send("again").text == "echo: again [images=1 videos=0]"


def test_attaching_a_file_cut_short_is_refused_at_once(server, isolated_env):
    """Found by a new user: `/image trunc.jpg` attached it and the turn failed later; attaching now runs the
    completeness check that sending runs (the README says so)."""
    photo = isolated_env / "cut.jpg"
    Image.new("RGB", (400, 300), (10, 120, 200)).save(photo, quality=85)
    data = photo.read_bytes()
    photo.write_bytes(data[: len(data) * 9 // 10])  # the header whole, the scan cut
    with make_client(server) as client:
        conv = Conversation(client)
        with pytest.raises(qwenvl.MediaError, match="truncated or corrupt"):
            conv.attach(str(photo))
        assert conv.images == []
    assert model_requests(server) == []


def test_a_file_of_an_earlier_turn_damaged_since_is_dropped_from_its_turn(server, isolated_env):
    """Found by a new user: every later turn failed for good ("dropped" named nothing); now the earlier turn keeps
    its text without the file, and the next turn goes."""
    photo = isolated_env / "c3.jpg"
    Image.new("RGB", (400, 300), (10, 120, 200)).save(photo, quality=85)
    with make_client(server) as client:
        conv = Conversation(client)
        conv.attach(str(photo))
        conv.send("first")
        photo.write_bytes(photo.read_bytes()[:300])  # cut short since
        with pytest.raises(qwenvl.MediaError):
            conv.send("second")
        assert conv.dropped == [str(photo)]
        assert conv.send("third").text == "echo: third [images=0 videos=0]"
        first = conv.messages[0]
        assert first.media() == [] and "first" in json.dumps(first.model_dump())  # its text kept, not the file


@pytest.mark.parametrize(
    ("content", "says"),
    [
        ('{"messages": 5}', "messages: Input should be a valid list"),
        ("[1, 2]", "valid dictionary"),
        ('{"messages": [5]}', "messages[0] is a number, not a message object"),
        ('{"messages": [{"role": "bot", "content": "x"}]}', "messages[0] has the unknown role 'bot' (one of system"),
        ('{"messages": [{"role": "user", "content": 5}]}', "messages[0] (user): its content is a number, not a"),
        (
            '{"messages": [{"role": "user", "content": [{"image": 3}]}]}',
            'messages[0] (user): content part 0 is not a text, image or video part: {"image": 3}',
        ),
        # a message without content would be sent as an empty turn: refused, by its index
        ('{"messages": [{"role": "user", "content": "a"}, {"role": "user"}]}', "messages[1] (user) has no content"),
        ('{"messages": [{"role": "user", "content": null}]}', "messages[0] (user) has no content (null)"),
        ('{"messages": [{"role": "user", "content": " "}]}', "messages[0] (user) has empty content"),
        ('{"messages": [{"role": "user", "content": []}]}', "messages[0] (user) has empty content"),
        ('{"messages": [{"content": "x"}]}', "messages[0] has no role (system, user, assistant, tool)"),
        ('{"messages": [{"role": ["user"], "content": "x"}]}', 'messages[0] has the unknown role ["user"]'),
        ('{"messages": [{"role": "assistant", "content": {"text": "x"}}]}', "(assistant): its content is an object"),
        ('{"messages": [{"role": "user", "content": "x", "bogus": 1}]}', "messages[0] (user): bogus: Extra inputs"),
        ('{"messages": ["hi"]}', "messages[0] is a string, not a message object"),
        ('{"model": 3, "messages": []}', "model: Input should be a valid string"),
        ('{"created": "yesterday", "messages": []}', "created"),
        ("{nope", "Expecting property name"),
    ],
)
def test_a_session_file_of_the_wrong_shape_is_a_one_line_error(content, says):
    path = sessions_dir() / "bad.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content)
    with pytest.raises(qwenvl.UsageError) as caught:
        Session.load("bad")
    message = str(caught.value)
    assert f"session file {path} is damaged" in message and says in message and "\n" not in message
