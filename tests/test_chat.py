"""`qwenvl chat` with piped input: local commands, attachments checked at once, sessions that resume anywhere.

(On a real terminal, with Ctrl-C and line editing: tests/test_chat_tty.py.)
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from conftest import run_cli, write_image
from dashscope_server import Reply


def _texts(server) -> list[str]:
    """The last user text of each model request."""
    return [r.json["messages"][-1]["content"][-1]["text"] for r in server.requests if r.json]


def test_slash_commands_are_never_sent(server, env, png):
    lines = [
        "/help",
        "/foo",
        "/image",
        "/image nothere.png",
        "/IMAGE   ",
        "/usr/bin holds programs?",
        "/exit",
        "never read",
    ]
    p = run_cli("chat", env=env, input="\n".join(lines) + "\n")
    assert p.returncode == 3, p.stderr  # the refused /image nothere.png (a file: exit 3)
    for usage in ("/image PATH", "/reset", "/history", "/help", "/exit"):  # /help lists the commands
        assert usage in p.stderr
    assert "unknown command /foo" in p.stderr and "nothing was sent" in p.stderr
    assert p.stderr.count("usage: /image PATH") == 2  # a bare /image, in any case, with trailing spaces
    assert "file not found: nothere.png" in p.stderr  # checked at once, when attached
    assert _texts(server) == ["/usr/bin holds programs?"]  # a path is a message, not a command


def test_image_command_attaches_checked_files(server, env, png, isolated_env):
    write_image(isolated_env / "my photo.jpg", fmt="JPEG")
    p = run_cli("chat", env=env, input=f"/image {png.name} 'my photo.jpg'\nwhat are these?\nand now?\n")
    assert p.returncode == 0, p.stderr
    assert "attached" in p.stderr
    assert "echo: what are these? [images=2" in p.stdout
    assert "echo: and now? [images=2" in p.stdout  # attached once, kept in the conversation


def test_chat_refuses_a_missing_file_before_starting(server, env):
    p = run_cli("chat", "nothere.jpg", env=env, input="hello\n")
    assert p.returncode == 3 and "file not found: nothere.jpg" in p.stderr
    p = run_cli("chat", "-", env=env, input="hello\n")
    assert p.returncode == 2 and "standard input" in p.stderr
    assert server.requests == []


def test_session_resumes_from_any_folder_and_a_vanished_file_is_said_once(
    server, env, isolated_env, monkeypatch: pytest.MonkeyPatch
):
    trip = isolated_env / "trip"
    trip.mkdir()
    photo = write_image(trip / "beach.png")
    monkeypatch.chdir(trip)
    p = run_cli("chat", "beach.png", "--session", "trip", env=env, input="what is here?\n")  # a relative path
    assert p.returncode == 0 and "[images=1" in p.stdout, p.stderr
    saved = json.loads((Path.home() / ".qwenvl" / "sessions" / "trip.json").read_text())
    assert saved["messages"][0]["content"][0]["image"] == str(photo)  # stored absolute

    elsewhere = isolated_env / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    p = run_cli("chat", "--session", "trip", env=env, input="and the colours?\n")
    assert p.returncode == 0, p.stderr
    assert "echo: and the colours? [images=1" in p.stdout  # the image of the first turn, found from here

    photo.unlink()
    p = run_cli("chat", "--session", "trip", env=env, input="still there?\nand now?\n")
    assert p.returncode == 0, p.stderr
    assert p.stderr.count("file not found") == 1 and "kept" in p.stderr  # said once, not on every message
    assert "echo: still there? [images=0" in p.stdout and "echo: and now? [images=0" in p.stdout
    last = server.requests[-1].json["messages"]
    assert last[0]["content"][-1]["text"] == "what is here?"  # the turn is kept, without the file
    assert len(last) == 7


def test_piped_chat_exits_with_the_last_failed_turns_code(server, env):
    """A script feeding the chat learns that a turn failed (at a terminal the user sees each error)."""
    p = run_cli("chat", "--base-url", "http://127.0.0.1:9", "--max-retries", "0", env=env, input="hello\nagain\n")
    assert p.returncode == 5 and p.stderr.count("error:") == 2 and "Traceback" not in p.stderr
    p = run_cli("chat", env=env, input="hello\n/exit\n")
    assert p.returncode == 0 and "echo: hello" in p.stdout


def bad_media(folder: Path) -> dict[str, str]:
    """Files that exist but that sending refuses, by name: what the error says about each."""
    (folder / "text.jpg").write_text("just some text, not a picture\n")
    write_image(folder / "one.png", size=(1, 1))
    frames = [Image.new("RGB", (40, 40), c) for c in ((255, 0, 0), (0, 255, 0))]
    frames[0].save(folder / "anim.gif", save_all=True, append_images=frames[1:], duration=100)
    (folder / "empty.png").write_bytes(b"")
    return {"text.jpg": "text.jpg", "one.png": "one.png", "anim.gif": "anim.gif", "empty.png": "empty.png"}


def test_image_refuses_at_once_what_sending_would_refuse(server, env, isolated_env):
    """/image runs the checks of sending: a bad file is refused with sending's one-line error, the files attached
    before stay, and a piped chat exits 3 whether the file is missing or bad."""
    write_image(isolated_env / "beach.jpg", fmt="JPEG")
    names = bad_media(isolated_env)
    lines = ["/image beach.jpg", *[f"/image {n}" for n in names], "/image beach.jpg text.jpg", "hi"]
    p = run_cli("chat", env=env, input="\n".join(lines) + "\n")
    assert p.returncode == 3 and "Traceback" not in p.stderr
    assert p.stderr.count("error:") == len(names) + 1
    for name in names:
        assert f"attached {name}" not in p.stderr
    assert p.stderr.count("attached beach.jpg: 1 file") == 1
    assert "echo: hi [images=1 videos=0]" in p.stdout  # only beach.jpg, once
    for name in names:  # the same error as sending gives
        q = run_cli("ask", "x", name, env=env)
        assert q.returncode == 3
        assert q.stderr.splitlines()[0] in p.stderr
    p = run_cli("chat", env=env, input="/image nothere.png\nhi\n")
    assert p.returncode == 3 and "echo: hi" in p.stdout


def test_a_failed_turn_keeps_its_attachments_for_the_retry(server, env, isolated_env):
    write_image(isolated_env / "beach.jpg", fmt="JPEG")
    server.enqueue(Reply(status=500, error_code="InternalError", error_message="boom"))
    p = run_cli("chat", "--max-retries", "0", env=env, input="/image beach.jpg\nhi\nhi again\n")
    assert "1 file still attached: send your message again" in p.stderr
    assert "echo: hi again [images=1 videos=0]" in p.stdout
    assert p.returncode == 5


def test_a_damaged_session_file_is_a_usage_error_not_an_internal_one(server, env, isolated_env):
    folder = isolated_env.parent / "home" / ".qwenvl" / "sessions"
    folder.mkdir(parents=True)
    (folder / "trip.json").write_text('{"messages": 5}')
    p = run_cli("chat", "--session", "trip", env=env, input="hi\n")
    assert p.returncode == 2 and "internal error" not in p.stderr
    assert f"session file {folder / 'trip.json'} is damaged: messages: Input should be a valid list" in p.stderr
    assert server.requests == []


@pytest.mark.parametrize(
    ("message", "says"),
    [
        ('{"role": "user"}', "messages[1] (user) has no content"),
        ('{"role": "user", "content": null}', "messages[1] (user) has no content (null)"),
        ('{"content": "hi"}', "messages[1] has no role"),
        ('{"role": "robot", "content": "hi"}', "messages[1] has the unknown role 'robot'"),
        ('{"role": "assistant", "content": 42}', "messages[1] (assistant): its content is a number"),
    ],
)
def test_a_session_message_without_content_or_role_is_one_line_naming_file_and_index(
    server, env, isolated_env, message, says
):
    """A message with no content (or null) was loaded and sent as an empty turn; now the file is refused as the
    other damaged session files are (exit 2), by the message's index, before anything is sent."""
    folder = isolated_env.parent / "home" / ".qwenvl" / "sessions"
    folder.mkdir(parents=True)
    (folder / "trip.json").write_text(f'{{"messages": [{{"role": "user", "content": "hi"}}, {message}]}}')
    p = run_cli("chat", "--session", "trip", env=env, input="hi\n")
    assert p.returncode == 2 and "Traceback" not in p.stderr
    [line] = [x for x in p.stderr.splitlines() if x.startswith("error:")]
    assert line == f"error: session file {folder / 'trip.json'} is damaged: {says}" or line.startswith(
        f"error: session file {folder / 'trip.json'} is damaged: {says}"
    )
    assert server.requests == []


@pytest.mark.parametrize("home", ["a file", "/proc/no/such"])
def test_a_sessions_folder_that_cannot_be_made_is_said_before_sending(server, env, isolated_env, home):
    """$QWENVL_HOME naming a file (or a place no folder can be made) ended a chat with an internal error after
    the answer was paid for; now the session is refused at once, naming the variable, and nothing is sent."""
    if home == "a file":
        (isolated_env / "homefile").write_text("x")
        home = str(isolated_env / "homefile")
    p = run_cli("chat", "--session", "z", env={**env, "QWENVL_HOME": home}, input="hi\n")
    assert p.returncode == 2 and "cannot keep session 'z'" in p.stderr and "QWENVL_HOME" in p.stderr, p.stderr
    assert "internal error" not in p.stderr and not server.requests


def test_a_piped_unknown_command_exits_2(server, env):
    """A script that feeds the chat a mistyped command learns of it (exit 2, as a usage error); nothing is sent."""
    p = run_cli("chat", env=env, input="/bogus\n")
    assert p.returncode == 2 and "unknown command /bogus" in p.stderr, p.stderr
    assert not server.requests
