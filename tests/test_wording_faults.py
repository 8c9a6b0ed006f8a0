"""Refusals, hints and suggestions a new user found wrong: each fixed as a kind, on every surface where it occurs.

Library errors speak the library's words (keyword arguments) and the CLI its flags; ``dir(qwenvl)`` lists the
public names; the empty-value hint is true for each option; a damaged SQLite file is one refusal naming it; an
option that does not apply to the input is refused; ``ocr --task`` is checked; messages name what the user gave;
"did you mean" comes from one helper everywhere."""

from __future__ import annotations

import json
import pkgutil
import re
import shlex
import sqlite3
from pathlib import Path

import click
import pytest

import qwenvl
from conftest import API_KEY, make_client, run_cli, write_image
from dashscope_server import DashScopeServer
from qwenvl.errors import UsageError

# -- 2. dir(qwenvl) ----------------------------------------------------------------------------------------------


def test_dir_lists_the_public_names_and_submodules_only() -> None:
    names = dir(qwenvl)
    assert set(qwenvl.__all__) <= set(names)  # Client and AsyncClient are lazy, and listed
    assert {"Client", "AsyncClient", "Call", "client", "types", "errors"} <= set(names)
    assert not {"Any", "TYPE_CHECKING", "annotations"} & set(names)
    public_modules = {m.name for m in pkgutil.iter_modules(qwenvl.__path__) if not m.name.startswith("_")}
    assert set(names) == set(qwenvl.__all__) | public_modules


# -- 9. docs -----------------------------------------------------------------------------------------------------

ROOT = Path(__file__).resolve().parent.parent


def test_the_ask_section_names_only_flags_ask_has() -> None:
    from qwenvl.cli.main import cli

    readme = (ROOT / "README.md").read_text()
    start = readme.index("Images are https URLs (passed through)")
    section = readme[start : readme.index("\n\n", start)]
    ask = cli.commands["ask"]  # type: ignore[attr-defined]
    flags = {o for p in ask.params for o in (*p.opts, *p.secondary_opts)}
    named = set(re.findall(r"(?<![\w-])--[a-z][a-z-]*", section))
    assert named and named <= flags, named - flags


def test_the_docs_link_nothing_outside_the_repository() -> None:
    for doc in [ROOT / "README.md", *(ROOT / "docs").glob("*.md")]:
        text = doc.read_text()
        links = [t for t in re.findall(r"\]\(([^)#\s]+)", text) if "://" not in t and not t.startswith("mailto:")]
        for target in links + re.findall(r"`(\.\./[^`\s]+)`", text):  # a link, or a path that leaves the folder
            path = (doc.parent / target).resolve()
            assert path.is_relative_to(ROOT), f"{doc.name} names {target}, outside the repository"
            if target in links:
                assert path.exists(), f"{doc.name} links {target}, which does not exist"


# -- 3. the empty-value hint is true per option ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "hint"),
    [
        (["extract", "x.png", "--schema", ""], "hint: Give a file: --schema is required."),
        (["batch", "run", "x.png", "-p", "hi", "-o", ""], "hint: Give a file: --output is required."),
        (["ground", "x.png", "dog", "--out", ""], "hint: Give a file, or leave --out out to not write one."),
        (["events", "x.png", "--sheet", ""], "hint: Give a file, or leave --sheet out to not write one."),
        (["ocr", "x.png", "-o", ""], "hint: Give a file, or leave --output out to print the result on stdout."),
        (["ask", "x.png", "-p", "hi", "-m", ""], "hint: Give a value, or leave --model out for the default (qwen3"),
        (
            ["ask", "x.png", "-p", "hi", "--pages", ""],
            "hint: Give a value, or leave --pages out for the default (all).",
        ),
        (["ask", "x.png", "-p", "hi", "--system", ""], "hint: Give a value, or leave --system out."),
    ],
)
def test_a_blank_option_gets_a_hint_true_for_it(isolated_env: Path, args: list[str], hint: str) -> None:
    write_image(isolated_env / "x.png")
    r = run_cli(*args)
    assert r.returncode == 2, r.stderr
    assert hint in r.stderr, r.stderr


def _verbs() -> list[tuple[str, click.Command]]:
    from qwenvl.cli.main import cli

    out: list[tuple[str, click.Command]] = []
    for name, command in cli.commands.items():  # type: ignore[attr-defined]
        subs = command.commands.items() if isinstance(command, click.Group) else [("", command)]
        out += [(f"{name} {sub}".strip(), c) for sub, c in subs]
    return out


def test_no_required_option_is_said_to_have_a_default() -> None:
    from qwenvl.cli.common import _blank_option

    for path, command in _verbs():
        ctx = click.Context(command)
        for param in command.params:
            if not isinstance(param, click.Option) or param.is_flag or param.name is None:
                continue
            hint = _blank_option(ctx, param).hint or ""
            if param.required or param.name in getattr(command, "needs", ()):
                assert "is required" in hint and "leave" not in hint, (path, param.opts, hint)
            else:
                assert "leave" in hint and "Sentinel" not in hint, (path, param.opts, hint)


def test_the_library_says_a_required_blank_value_is_required(server: DashScopeServer, isolated_env: Path) -> None:
    from qwenvl.sessions import Session
    from qwenvl.tasks.grounding import ground

    with make_client(server) as client:
        with pytest.raises(UsageError, match="query is empty") as caught:
            ground(client, write_image(isolated_env / "x.png"), " ")
        assert caught.value.hint == "Give a value: query is required."
        with pytest.raises(UsageError) as caught:
            Session.load("")
        assert "required" in (caught.value.hint or "") and "leave" not in (caught.value.hint or "")
        with pytest.raises(UsageError) as caught:
            qwenvl.Client(api_key=API_KEY, base_url="")
        assert caught.value.hint == "Give a value, or leave base_url out for the default."


# -- 4. a damaged SQLite file: one refusal naming it, exit 3 ------------------------------------------------------


def _garbage(path: Path) -> None:
    path.write_text("garbage\n" * 200)


def _truncated(path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE t (a TEXT)")
    conn.executemany("INSERT INTO t VALUES (?)", [("x" * 500,)] * 200)
    conn.commit()
    conn.close()
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _folder(path: Path) -> None:
    path.mkdir()


DAMAGES = {
    "garbage": (_garbage, "is not an SQLite database"),
    "truncated": (_truncated, "is damaged (database disk image is malformed)"),
    "a folder": (_folder, "is a folder, not a database file"),
}


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_usage_names_a_damaged_log_and_what_to_do(isolated_env: Path, damage: str) -> None:
    make, words = DAMAGES[damage]
    home = isolated_env.parent / "home" / ".qwenvl"
    home.mkdir(parents=True)
    make(home / "usage.db")
    for args in (["usage"], ["usage", "--json"]):
        r = run_cli(*args)
        assert r.returncode == 3, r.stderr
        lines = r.stderr.strip().splitlines()
        assert lines == [
            f"error: {home / 'usage.db'} {words}",
            f"hint: Move it aside (`mv {home / 'usage.db'} {home / 'usage.db'}.bad`): qwenvl makes a new one at the "
            "next run.",
        ], r.stderr
    if damage != "a folder":
        (home / "usage.db").rename(home / "usage.db.bad")
        assert run_cli("usage").returncode == 0  # the way out works


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_a_damaged_store_is_a_warning_in_the_same_words_while_the_answer_is_kept(
    server: DashScopeServer, env: dict[str, str], isolated_env: Path, damage: str
) -> None:
    make, words = DAMAGES[damage]
    home = isolated_env.parent / "home" / ".qwenvl"
    home.mkdir(parents=True)
    make(home / "usage.db")
    cache = isolated_env.parent / "cache"
    cache.mkdir()
    make(cache / "responses.db")
    write_image(isolated_env / "x.png")
    r = run_cli("batch", "run", "x.png", "-p", "hi", "-o", "out.jsonl", env=env)
    assert r.returncode == 0, r.stderr
    assert f"the usage log {home / 'usage.db'} {words}: usage is not logged there (move it aside" in r.stderr
    assert f"the response cache {cache / 'responses.db'} {words}: answers are not cached (move it" in r.stderr
    assert json.loads(Path("out.jsonl").read_text().splitlines()[0])["result"]["text"].startswith("echo: hi")


# -- 5. an option that does not apply to the input is refused, not ignored (and not paid for) ---------------------


@pytest.fixture
def media(isolated_env: Path) -> Path:
    from test_new_user_faults import _video

    write_image(isolated_env / "x.png")
    _video(isolated_env / "clip.mp4")
    (isolated_env / "s.json").write_text('{"type": "object"}')
    return isolated_env


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["events", "clip.mp4", "--pages", "1"], "--pages applies to PDFs only"),
        (["events", "x.png", "--fps", "1"], "--fps applies to videos only"),
        (["ask", "x.png", "-p", "hi", "--fps", "1"], "--fps applies to videos only"),
        (["ask", "x.png", "-p", "hi", "--video-as", "file"], "--video-as applies to videos only"),
        (["ground", "x.png", "dog", "--fps", "1"], "--fps applies to videos only"),
        (["ocr", "x.png", "--fps", "1"], "--fps applies to videos only"),
        (["extract", "x.png", "--schema", "s.json", "--fps", "1"], "--fps applies to videos only"),
        (["tokens", "x.png", "--fps", "1"], "--fps applies to videos only"),
        (["batch", "run", "x.png", "-p", "hi", "-o", "o.jsonl", "--pages", "1"], "--pages applies to PDFs only"),
        (["batch", "run", "x.png", "-p", "hi", "-o", "o.jsonl", "--fps", "1"], "--fps applies to videos only"),
        # a requests file whose lines are all images (one line too), and chat's files given at start
        (["batch", "--requests", "r2.jsonl", "-o", "o.jsonl", "--fps", "1", "--dry-run"], "--fps applies to videos"),
        (["batch", "--requests", "r1.jsonl", "-o", "o.jsonl", "--fps", "1"], "--fps applies to videos only"),
        (["batch", "--requests", "r1.jsonl", "-o", "o.jsonl", "--pages", "1"], "--pages applies to PDFs only"),
        (["batch", "--requests", "r2.jsonl", "-o", "o.jsonl", "--video-as", "file"], "--video-as applies to videos"),
        (["chat", "x.png", "--pages", "1"], "--pages applies to PDFs only"),
        (["chat", "x.png", "--fps", "1"], "--fps applies to videos only"),
        (["chat", "x.png", "--video-as", "file"], "--video-as applies to videos only"),
    ],
)
def test_an_option_that_does_not_apply_is_refused_before_sending(
    server: DashScopeServer, env: dict[str, str], media: Path, args: list[str], error: str
) -> None:
    for n in (1, 2):
        (media / f"r{n}.jsonl").write_text('{"prompt": "hi", "image": "x.png"}\n' * n)
    r = run_cli(*args, env=env, input="hi\n")
    assert r.returncode == 2, r.stderr
    assert re.search(rf"^error: {error}[ :\n]", r.stderr, re.M) and "hint: Leave out" in r.stderr, r.stderr
    assert server.requests == [] and not (media / "o.jsonl").exists()


@pytest.mark.parametrize(
    "args",
    [
        ["ask", "clip.mp4", "-p", "hi", "--fps", "1"],
        ["ask", "clip.mp4", "-p", "hi", "--video-as", "frames"],
        ["events", "x.png", "x.png", "--fps", "1", "--dry-run"],  # frame images are a video
        ["tokens", "clip.mp4", "--fps", "1"],
        ["batch", "run", "x.png", "clip.mp4", "-p", "hi", "-o", "o.jsonl", "--fps", "1"],  # one input it applies to
        ["chat", "clip.mp4", "--fps", "1"],  # the files given at start; later turns without a video are not refused
    ],
)
def test_the_same_option_where_it_applies_is_taken(
    server: DashScopeServer, env: dict[str, str], media: Path, args: list[str]
) -> None:
    r = run_cli(*args, env=env, input="hi\nagain\n")
    assert r.returncode == 0, r.stderr
    if args[0] == "batch":  # the image item was answered (fps went to the video alone), not an error line
        lines = [json.loads(x) for x in (media / "o.jsonl").read_text().splitlines()]
        assert len(lines) == 2 and all(x.get("error") is None for x in lines), lines
    if args[0] == "chat":
        assert r.stdout.count("echo: ") == 2, r.stdout


def test_the_library_estimate_names_fps_in_its_own_words(media: Path) -> None:
    from qwenvl.estimate import estimate_files

    with pytest.raises(UsageError, match=r"^fps applies to videos only$"):
        estimate_files(["x.png"], fps=1)


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        ({"pages": "1"}, "pages applies to PDFs only"),
        ({"fps": 2}, "fps applies to videos only"),
        ({"video_as": "file"}, "video_as applies to videos only"),
    ],
)
def test_the_library_refuses_an_option_that_does_not_apply(
    server: DashScopeServer, media: Path, fields: dict, error: str
) -> None:
    """Client.ask(image="a.png", pages="1") (fps=2, video_as="file") succeeded, the option silently ignored."""
    with make_client(server, "native") as client:
        with pytest.raises(UsageError, match=rf"^{error}$"):
            client.ask("hi", image="x.png", **fields)
        with pytest.raises(UsageError, match=rf"^{error}$"):
            client.plan(prompt="hi", image="x.png", estimate_only=True, **fields)
        if "pages" not in fields:  # where it applies it is taken
            client.ask("hi", video="clip.mp4", **({"fps": 2} if "fps" in fields else {}))
    assert sum(1 for r in server.requests if r.path.endswith("/generation")) == (0 if "pages" in fields else 1)


# -- 1. library errors in the library's words, the CLI's in its flags (one mechanism: QwenVLError.hint) ----------


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_time_out_names_timeout_s_in_the_library_and_timeout_in_the_cli(
    server: DashScopeServer, env: dict[str, str], isolated_env: Path
) -> None:
    from dashscope_server import Reply

    server.enqueue(Reply(delay_s=1.5))
    with make_client(server, timeout_s=0.3, max_retries=0) as client, pytest.raises(qwenvl.APITimeoutError) as caught:
        client.ask("hi")
    assert "(timeout_s)" in (caught.value.hint or "") and "--timeout" not in (caught.value.hint or "")
    server.enqueue(Reply(delay_s=1.5))
    r = run_cli("ask", "-p", "hi", "--timeout", "0.3", "--max-retries", "0", env=env)
    assert r.returncode == 5 and "hint: The service took too long; raise the time-out (--timeout)" in r.stderr, r.stderr


def test_a_dead_base_url_and_an_unknown_region_name_keyword_arguments() -> None:
    dead = f"http://127.0.0.1:{_free_port()}"
    client = qwenvl.Client(api_key=API_KEY, base_url=dead, max_retries=0)
    with client, pytest.raises(qwenvl.APIConnectionError) as caught:
        client.ask("hi")
    hint = caught.value.hint or ""
    assert "it comes from base_url, else" in hint and "(region)" in hint and "--" not in hint, hint
    assert "--base-url" in (caught.value.raw_hint or "")  # the flags, kept for the CLI, serve and MCP to fit
    with pytest.raises(UsageError) as refused:
        qwenvl.Client(region="eu")
    assert refused.value.hint == "Leave it out for cn (Beijing), or give the endpoint itself with base_url."


def test_analyze_names_the_keys_of_its_request_not_the_flags(isolated_env: Path) -> None:
    write_image(isolated_env / "x.png")
    dead = f"http://127.0.0.1:{_free_port()}"
    (isolated_env / "req.json").write_text(json.dumps({"prompt": "hi", "image": "x.png", "base_url": dead}))
    r = run_cli("analyze", "--file", "req.json", "--max-retries", "0", env={"DASHSCOPE_API_KEY": API_KEY})
    assert r.returncode == 5, r.stderr
    assert "it comes from base_url, else" in r.stderr and "--base-url" not in r.stderr, r.stderr
    r = run_cli(
        "analyze", "--file", "req.json", "--base-url", dead, "--max-retries", "0", env={"DASHSCOPE_API_KEY": API_KEY}
    )
    assert "it comes from --base-url, else" in r.stderr, r.stderr  # given as a flag: named as one


@pytest.mark.parametrize(
    ("fields", "hint"),
    [
        ({"temperature": 5}, "temperature takes a number in [0, 2); leave it out for its default."),
        ({"top_p": 0}, "top_p takes a number in (0, 1]; leave it out for its default."),
        ({"max_tokens": 0}, "max_tokens takes a number 1 or more; leave it out for its default."),
        ({"images": "a.jpg"}, "images takes a list (images=[...]); one file goes in image=."),
        ({"detail": "hgh"}, "Did you mean 'high'? detail is one of auto, low, high."),
        ({"max_token": 5}, "Did you mean 'max_tokens' (not 'max_token')?"),
    ],
)
def test_pydantic_refusals_get_a_useful_hint_in_the_librarys_words(
    server: DashScopeServer, fields: dict[str, object], hint: str
) -> None:
    with make_client(server) as client, pytest.raises(UsageError) as caught:
        client.complete(prompt="x", **fields)
    assert caught.value.hint == hint
    assert server.requests == []


def test_the_cli_says_the_range_with_its_flag(server: DashScopeServer, env: dict[str, str], isolated_env: Path) -> None:
    write_image(isolated_env / "x.png")
    req = json.dumps({"prompt": "hi", "image": "x.png", "temperature": 5})
    r = run_cli("analyze", "--request", req, env=env)
    assert r.returncode == 2 and "hint: temperature takes a number in [0, 2)" in r.stderr, r.stderr


def test_request_itself_suggests_the_field_meant() -> None:
    import pydantic

    with pytest.raises(pydantic.ValidationError, match=r"did you mean 'max_tokens'\?"):
        qwenvl.Request(prompt="x", max_token=5)
    # a value not among the choices: the one meant, as client.ask(detail="hihg") says it
    with pytest.raises(pydantic.ValidationError, match=r"'auto', 'low' or 'high' \(did you mean 'high'\?\)"):
        qwenvl.Request(prompt="x", detail="hihg")
    with pytest.raises(pydantic.ValidationError, match=r"did you mean 'file'\?"):
        qwenvl.Request(prompt="x", video_as="fil")
    with pytest.raises(pydantic.ValidationError) as caught:
        qwenvl.Request(prompt="x", zzzzqq=1)
    assert "did you mean" not in str(caught.value)


# -- 8. one "did you mean" rule everywhere ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kw", "said"),
    [
        ({"backend": "transformer"}, "(did you mean 'transformers'?)"),
        ({"protocol": "nativ"}, "(did you mean 'native'?)"),
        ({"region": "intll"}, "(did you mean 'intl'?)"),
    ],
)
def test_the_library_client_says_the_choice_meant(kw: dict[str, str], said: str) -> None:
    for cls in (qwenvl.Client, qwenvl.AsyncClient):
        with pytest.raises(UsageError) as caught:
            cls(api_key=API_KEY, **kw)
        assert caught.value.message.endswith(said), caught.value.message


def test_a_misspelt_client_keyword_is_a_usage_error_naming_the_closest() -> None:
    for cls in (qwenvl.Client, qwenvl.AsyncClient):
        with pytest.raises(UsageError) as caught:
            cls(protocl="native")
        assert caught.value.message == f"{cls.__name__}() takes no keyword 'protocl'"
        assert (caught.value.hint or "").startswith("Did you mean 'protocol'?")


@pytest.mark.parametrize("verb", [["ask", "x.png", "-p", "hi", "--dry-run"], ["tokens", "x.png"], ["models"]])
def test_the_cli_region_says_the_one_meant(isolated_env: Path, verb: list[str]) -> None:
    write_image(isolated_env / "x.png")
    r = run_cli(*verb, "--region", "intll")
    assert r.returncode == 2 and "unknown region 'intll': use one of cn, intl, us (did you mean 'intl'?)" in r.stderr
    r = run_cli(*verb, env={"QWENVL_REGION": "intll"})
    assert r.returncode == 2 and "(did you mean 'intl'?)" in r.stderr, r.stderr


@pytest.mark.parametrize(
    ("args", "hint"),
    [
        (["ask", "x.png", "-p", "hi", "--versoin"], "hint: Did you mean `qwenvl --version`?"),
        (["ask", "x.png", "-p", "hi", "--protocol", "nativ"], "hint: Did you mean 'native'?"),
        (["ask", "x.png", "-p", "hi", "--detail", "hgh"], "hint: Did you mean 'high'?"),
        (["ocr", "x.png", "-f", "markdwn"], "hint: Did you mean 'markdown'?"),
        (
            ["batch", "run", "x.png", "-p", "hi", "-o", "o.jsonl", "--mode", "batchapi"],
            "hint: Did you mean 'batch-api'?",
        ),
        (["ask", "x.png", "-p", "hi", "--xyzzy"], "hint: `qwenvl ask --help` lists the options."),  # none close
        (["ask", "x.png", "-p", "hi", "--detail", "zzzzz"], "hint: `qwenvl ask --help` lists the options."),
    ],
)
def test_did_you_mean_is_the_closest_or_nothing(isolated_env: Path, args: list[str], hint: str) -> None:
    write_image(isolated_env / "x.png")
    r = run_cli(*args)
    assert r.returncode == 2, r.stderr
    [said] = [line for line in r.stderr.splitlines() if line.startswith("hint:")]
    assert said.startswith(hint), said
    assert "--hide-reasoning" not in said


def test_there_is_one_home_for_did_you_mean() -> None:
    src = Path(qwenvl.__file__).parent
    users = sorted(str(p.relative_to(src)) for p in src.rglob("*.py") if "import difflib" in p.read_text())
    assert users == ["spelling.py"], users


# -- 6. ocr's task is checked, library and CLI -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "hint"),
    [
        (["--task", "table_parsin"], "hint: Did you mean 'table_parsing'? The tasks (--task): text_recognition,"),
        (["--ocr-options", '{"task": "zzz"}'], "hint: The tasks (--task): text_recognition,"),
    ],
)
def test_ocr_refuses_an_unknown_task_before_sending(
    server: DashScopeServer, env: dict[str, str], isolated_env: Path, args: list[str], hint: str
) -> None:
    write_image(isolated_env / "x.png")
    r = run_cli("ocr", "x.png", "-m", "qwen-vl-ocr", *args, env=env)
    assert r.returncode == 2, r.stderr
    assert "is not an OCR task: nothing was sent" in r.stderr and hint in r.stderr, r.stderr
    assert "note:" not in r.stderr  # the refusal alone: no note on what would have been sent
    assert server.requests == []
    r = run_cli("ocr", "x.png", "-m", "qwen-vl-ocr", "--task", "table_parsing", env=env)
    assert r.returncode == 0, r.stderr
    assert server.requests[-1].json["ocr_options"] == {"task": "table_parsing"}  # compat: a top-level field


def test_the_library_ocr_refuses_an_unknown_task(server: DashScopeServer, isolated_env: Path) -> None:
    from qwenvl import tasks

    image = write_image(isolated_env / "x.png")
    with make_client(server) as client, pytest.raises(UsageError, match="'table_parsin' is not an OCR task") as caught:
        tasks.ocr(client, str(image), model="qwen-vl-ocr", task="table_parsin")
    assert caught.value.hint is not None and caught.value.hint.startswith(
        "Did you mean 'table_parsing'? The tasks (task)"
    )
    assert server.requests == []


# -- 7. a message names what the user gave ------------------------------------------------------------------------


def test_ground_names_page_as_given(server: DashScopeServer, env: dict[str, str], isolated_env: Path) -> None:
    from test_media_pdf import make_pdf

    (isolated_env / "multi.pdf").write_bytes(make_pdf([(200, 200, (1, 0, 0))] * 3))
    r = run_cli("ground", "multi.pdf", "dog", "--page", "9", env=env)
    assert r.returncode == 3, r.stderr
    assert "page 9 (from --page 9) is out of range" in r.stderr and "--pages" not in r.stderr, r.stderr
    r = run_cli("ground", "multi.pdf", "dog", "--pages", "9", env=env)
    assert "page 9 (from --pages 9) is out of range" in r.stderr, r.stderr
    r = run_cli("ask", "multi.pdf", "-p", "hi", "--pages", "2-9", env=env)
    assert "page 9 (from --pages 2-9) is out of range" in r.stderr, r.stderr
    assert server.requests == []


@pytest.mark.parametrize(
    ("url", "error"),
    [
        ("http://", "error: base URL 'http://' has no host"),
        ("http:///v1", "error: base URL 'http:///v1' has no host"),
        ("ftp://x/", "error: base URL 'ftp://x/' is not an http(s) URL"),
    ],
)
def test_a_bad_base_url_is_quoted_as_given(isolated_env: Path, url: str, error: str) -> None:
    write_image(isolated_env / "x.png")
    r = run_cli("ask", "x.png", "-p", "hi", "--base-url", url, env={"DASHSCOPE_API_KEY": API_KEY})
    assert r.returncode == 2 and error in r.stderr, r.stderr


@pytest.mark.parametrize("name", ["scan.tif", "holiday photo.png", "big.jpg"])
def test_the_downscale_hint_names_the_users_own_file(
    server: DashScopeServer, env: dict[str, str], isolated_env: Path, name: str
) -> None:
    from test_media_limits import sparse

    sparse(isolated_env / name, 3 * 1024**3)
    r = run_cli("ask", name, "-p", "what?", env=env)
    assert r.returncode == 3, r.stderr
    stem, suffix = Path(name).stem, Path(name).suffix
    out = f"{stem}-small{suffix if suffix in ('.png', '.jpg') else '.jpg'}"
    assert f"`magick {shlex.quote(name)} -resize 50% {shlex.quote(out)}`" in r.stderr, r.stderr
    assert "in.tif" not in r.stderr


def test_a_url_might_be_a_video_so_fps_is_not_refused_for_it(server: DashScopeServer, env: dict[str, str]) -> None:
    r = run_cli("ask", "https://example.com/stream?id=1", "-p", "hi", "--fps", "1", "--dry-run", env=env)
    assert "applies to videos only" not in r.stderr, r.stderr


# -- a batch's output errors name the CLI's flags on the CLI, the keywords in the library --------------------------


def test_batch_output_errors_name_the_cli_flags_and_the_library_keywords(
    server: DashScopeServer, env: dict[str, str], isolated_env: Path
) -> None:
    """`batch ... -o r.jsonl --csv r.jsonl.journal` said "csv r.jsonl.journal is also an input", "Give csv a new
    file name": the library's keyword where every other CLI message says --csv."""
    from qwenvl.batch import Batch, BatchItem

    write_image(isolated_env / "x.png")
    (isolated_env / "r.jsonl.journal").write_text("")
    r = run_cli("batch", "x.png", "-p", "hi", "-o", "r.jsonl", "--csv", "r.jsonl.journal", env=env)
    assert r.returncode == 2, r.stderr
    assert "error: --csv r.jsonl.journal is also an input" in r.stderr and "hint: Give --csv a new" in r.stderr
    item = BatchItem(id="x", request={"prompt": "hi", "image": "x.png"})
    with (
        Batch([item], "r.jsonl", csv="r.jsonl.journal", api_key=API_KEY, base_url=server.url) as job,
        pytest.raises(UsageError) as caught,
    ):
        job.run()
    assert caught.value.message.startswith("csv r.jsonl.journal is also an input"), caught.value.message
    assert server.requests == []
