"""Key lookup, regions and base URLs (pure: no network)."""

from __future__ import annotations

from pathlib import Path

import pytest

from qwenvl.config import find_api_key, normalize_protocol, normalize_region, require_api_key, resolve_base_url
from qwenvl.errors import MissingAPIKeyError, QwenVLError, UsageError


def test_key_lookup_order(tmp_path: Path):
    home, cwd = tmp_path / "h", tmp_path / "c"
    (home / ".dashscope").mkdir(parents=True)
    cwd.mkdir()
    assert find_api_key(env={}, home=home, cwd=cwd) is None
    (home / ".dashscope" / "api_key").write_text("sk-from-dashscope-file\n")
    assert find_api_key(env={}, home=home, cwd=cwd).key == "sk-from-dashscope-file"
    (home / ".alibabacloud").mkdir()
    (home / ".alibabacloud" / "credentials").write_text(
        "[default]\ndashscope_api_key = sk-default\n[work]\ndashscope_api_key = 'sk-work'\n"
    )
    assert find_api_key(env={}, home=home, cwd=cwd).key == "sk-default"
    assert find_api_key(env={"ALICLOUD_PROFILE": "work"}, home=home, cwd=cwd).key == "sk-work"
    assert (
        find_api_key(env={"ALIBABA_CLOUD_PROFILE": "work", "ALICLOUD_PROFILE": "nope"}, home=home, cwd=cwd).key
        == "sk-work"
    )
    (tmp_path / "keyfile").write_text("sk-keyfile")
    env = {"DASHSCOPE_API_KEY_FILE_PATH": str(tmp_path / "keyfile")}
    assert find_api_key(env=env, home=home, cwd=cwd).key == "sk-keyfile"
    (cwd / ".env").write_text('# comment\nDASHSCOPE_API_KEY="sk-dotenv"\n')
    assert find_api_key(env=env, home=home, cwd=cwd).key == "sk-dotenv"
    found = find_api_key(env={"DASHSCOPE_API_KEY": "sk-env"}, home=home, cwd=cwd)
    assert found.key == "sk-env"  # .env never overrides the environment
    assert "sk-env" not in repr(found)
    assert find_api_key("sk-arg", env={"DASHSCOPE_API_KEY": "sk-env"}).key == "sk-arg"


def test_dotenv_at_repository_root(tmp_path: Path):
    (tmp_path / ".git").mkdir()
    (tmp_path / ".env").write_text("DASHSCOPE_API_KEY=sk-root\n")
    sub = tmp_path / "a" / "b"
    sub.mkdir(parents=True)
    assert find_api_key(env={}, home=tmp_path / "nohome", cwd=sub).key == "sk-root"


def _place_error(tmp_path: Path, env: dict[str, str] | None = None) -> QwenVLError:
    with pytest.raises(QwenVLError) as info:
        require_api_key(env=env or {}, home=tmp_path / "h", cwd=tmp_path / "c")
    assert not isinstance(info.value, MissingAPIKeyError), "a damaged place is not 'no key'"
    assert "\n" not in str(info.value) and info.value.hint
    return info.value


@pytest.mark.parametrize(
    "text,words",
    [
        ("[default\ngarbage\n", "line 1: the profile header [default has no closing ]"),
        ("[default]\ngarbage\n", "line 2: neither a [profile] header nor name = value"),
        ("dashscope_api_key = sk-1\n", "line 1: a setting before any [profile] header"),
        ("[default]\n[default]\n", "line 2: profile [default] is given a second time"),
        ("[default]\ndashscope_api_key=sk-1\ndashscope_api_key=sk-2\n", "line 3: dashscope_api_key is given a second"),
        ("[default]\ndashscope_api_key =\n", "[default]: dashscope_api_key is empty"),
        ("[default]\ndashscope_api_key = sk-1 sk-2\n", "the key holds a space"),
        (b"[default]\ndashscope_api_key = sk-\xff\n", "is not UTF-8 text"),
    ],
)
def test_a_damaged_credentials_file_is_named_with_its_line_not_no_key(tmp_path: Path, text: str | bytes, words: str):
    """`[default` then `garbage` was "no DashScope API key found" (exit 4): the user's file silently ignored, even
    with a key in ~/.dashscope/api_key taken instead."""
    (tmp_path / "h" / ".alibabacloud").mkdir(parents=True)
    (tmp_path / "h" / ".dashscope").mkdir()
    (tmp_path / "h" / ".dashscope" / "api_key").write_text("sk-the-other-one")
    (tmp_path / "c").mkdir()
    path = tmp_path / "h" / ".alibabacloud" / "credentials"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    error = _place_error(tmp_path)
    assert str(path) in str(error) and words in str(error), str(error)
    assert error.exit_code == 2 and "sk-1" not in str(error) and "sk-2" not in str(error)
    assert "sk-1" not in (error.hint or "")


@pytest.mark.parametrize(
    "text",
    [
        "\ufeff[default]\r\ndashscope_api_key = sk-good\r\n",  # a BOM and CRLF (Notepad)
        "[default]\ndashscope_api_key = sk-good  # my key\n",  # an inline comment, as Alibaba Cloud's SDK reads it
        '[default]\nDASHSCOPE_API_KEY = "sk-good"\n[other]\naccess_key_id = x\n',
        "[other]\ndashscope_api_key = sk-other\n[default]\ndashscope_api_key = sk-good\n",
    ],
)
def test_credentials_files_that_the_official_tools_read_work(tmp_path: Path, text: str):
    (tmp_path / ".alibabacloud").mkdir()
    (tmp_path / ".alibabacloud" / "credentials").write_text(text, newline="")
    assert find_api_key(env={}, home=tmp_path, cwd=tmp_path).key == "sk-good"


def test_a_profile_without_a_key_is_not_damage(tmp_path: Path):
    """A credentials file for the Alibaba Cloud CLI (access keys only) is fine: the next place is tried."""
    (tmp_path / ".alibabacloud").mkdir()
    (tmp_path / ".alibabacloud" / "credentials").write_text("[default]\naccess_key_id = x\n[work]\n")
    (tmp_path / ".dashscope").mkdir()
    (tmp_path / ".dashscope" / "api_key").write_text("sk-file\n")
    assert find_api_key(env={}, home=tmp_path, cwd=tmp_path).key == "sk-file"
    # a profile named by the variable is an explicit choice: with no key there it is no key, not another place's
    assert find_api_key(env={"ALIBABA_CLOUD_PROFILE": "work"}, home=tmp_path, cwd=tmp_path) is None
    (tmp_path / ".dashscope" / "api_key").unlink()
    with pytest.raises(MissingAPIKeyError, match=r"profile \[nope\] \(ALIBABA_CLOUD_PROFILE\)"):
        require_api_key(env={"ALIBABA_CLOUD_PROFILE": "nope"}, home=tmp_path, cwd=tmp_path)


@pytest.mark.parametrize(
    "content,words",
    [
        (b"", "is empty: it holds no key"),
        (b"  \n\n", "is empty: it holds no key"),
        (b"sk-a\nsk-b\n", "holds 2 lines"),
        (b"\x00\xff\xfebinary", "is not UTF-8 text"),
        (b"sk-a\x07b", "the key holds the character '\\x07'"),
    ],
)
def test_a_dashscope_key_file_that_holds_no_key_is_named(tmp_path: Path, content: bytes, words: str):
    (tmp_path / "h" / ".dashscope").mkdir(parents=True)
    (tmp_path / "c").mkdir()
    (tmp_path / "h" / ".dashscope" / "api_key").write_bytes(content)
    error = _place_error(tmp_path)
    assert str(tmp_path / "h" / ".dashscope" / "api_key") in str(error) and words in str(error), str(error)
    assert error.exit_code == 2


def test_a_key_file_is_read_as_the_official_sdk_reads_it(tmp_path: Path):
    """The whole file stripped (dashscope/common/api_key.py): trailing spaces, a CRLF, a BOM, blank lines."""
    (tmp_path / ".dashscope").mkdir()
    for content in (b"sk-good  \n\n", b"\r\n sk-good\r\n", b"\xef\xbb\xbfsk-good\n"):
        (tmp_path / ".dashscope" / "api_key").write_bytes(content)
        assert find_api_key(env={}, home=tmp_path, cwd=tmp_path).key == "sk-good"


@pytest.mark.parametrize(
    "text,key",
    [
        ("\ufeffDASHSCOPE_API_KEY=sk-good\n", "sk-good"),
        ("DASHSCOPE_API_KEY=sk-good\r\nOTHER=1\r\n", "sk-good"),
        ("export DASHSCOPE_API_KEY='sk-good'\n", "sk-good"),
        ("# a comment\nDASHSCOPE_API_KEY=sk-good # mine\n", "sk-good"),
    ],
)
def test_dotenv_files_are_read_as_python_dotenv_reads_them(tmp_path: Path, text: str, key: str):
    (tmp_path / ".env").write_text(text, newline="")
    assert find_api_key(env={}, home=tmp_path / "h", cwd=tmp_path).key == key


@pytest.mark.parametrize(
    "text,words",
    [
        ("OTHER=1\nDASHSCOPE_API_KEY: sk-secret\n", "line 2: not KEY=VALUE (it starts 'DASHSCOPE_API_KEY')"),
        ('DASHSCOPE_API_KEY="sk-secret\n', "line 1: not KEY=VALUE"),
        ("DASHSCOPE_API_KEY=sk-sec ret\n", "DASHSCOPE_API_KEY in .env: the key holds a space"),
    ],
)
def test_a_malformed_dotenv_is_named_with_its_line(tmp_path: Path, text: str, words: str):
    """python-dotenv skips a line it cannot parse (with a log line): the key on it was lost, and "no key" said."""
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / ".env").write_text(text)
    error = _place_error(tmp_path)
    assert words in str(error) and "secret" not in str(error) and "sec ret" not in str(error), str(error)
    assert error.exit_code == 2


def test_a_key_in_the_environment_wins_and_later_places_are_not_read(tmp_path: Path):
    (tmp_path / ".alibabacloud").mkdir()
    (tmp_path / ".alibabacloud" / "credentials").write_text("[default\n")
    (tmp_path / ".env").write_text("DASHSCOPE_API_KEY=sk-dotenv\n")
    assert find_api_key(env={}, home=tmp_path, cwd=tmp_path).key == "sk-dotenv"
    assert find_api_key(env={"DASHSCOPE_API_KEY": "sk-env"}, home=tmp_path, cwd=tmp_path / "x").key == "sk-env"
    with pytest.raises(UsageError, match=r"\$DASHSCOPE_API_KEY: the key holds the character"):
        find_api_key(env={"DASHSCOPE_API_KEY": "sk-\u00e9"}, home=tmp_path, cwd=tmp_path)


@pytest.mark.parametrize(
    "protocol,kw,expected",
    [
        ("compat", {}, "https://dashscope.aliyuncs.com/compatible-mode/v1"),
        ("native", {}, "https://dashscope.aliyuncs.com/api/v1"),
        ("compat", {"region": "intl"}, "https://dashscope-intl.aliyuncs.com/compatible-mode/v1"),
        ("native", {"region": "singapore"}, "https://dashscope-intl.aliyuncs.com/api/v1"),
        ("compat", {"region": "us"}, "https://dashscope-us.aliyuncs.com/compatible-mode/v1"),
        ("native", {"base_url": "http://127.0.0.1:8000"}, "http://127.0.0.1:8000/api/v1"),
        ("native", {"base_url": "https://x.example/compatible-mode/v1/"}, "https://x.example/api/v1"),
        ("compat", {"base_url": "https://x.example/api/v1"}, "https://x.example/compatible-mode/v1"),
        ("compat", {"base_url": "https://proxy.example/openai/v1"}, "https://proxy.example/openai/v1"),
        (
            "compat",
            {"env": {"DASHSCOPE_COMPATIBLE_BASE_URL": "http://h:1/compatible-mode/v1"}},
            "http://h:1/compatible-mode/v1",
        ),
        ("native", {"env": {"DASHSCOPE_HTTP_BASE_URL": "http://h:1/api/v1"}, "region": "intl"}, "http://h:1/api/v1"),
    ],
)
def test_base_urls(protocol, kw, expected):
    kw.setdefault("env", {})
    assert resolve_base_url(protocol, **kw) == expected


def test_bad_region_protocol_and_url():
    with pytest.raises(UsageError, match="unknown region"):
        normalize_region("eu")
    with pytest.raises(UsageError, match="unknown protocol"):
        normalize_protocol("grpc")
    assert normalize_protocol("openai") == "openai" and normalize_protocol("DashScope") == "native"
    with pytest.raises(UsageError, match="not an http"):
        resolve_base_url("compat", base_url="ftp://x", env={})


def test_the_missing_key_hint_reads_as_one_line_and_does_not_repeat_the_error(tmp_path: Path):
    """Hints are printed as one line (``printable``): a hint laid out in lines and columns came out as one jumbled
    run ("Set one of: export ... (shell, ...) ~/.alibabacloud/credentials: [default] dashscope_api_key = ...")."""
    from qwenvl.errors import printable

    with pytest.raises(MissingAPIKeyError) as info:
        require_api_key(env={}, home=tmp_path, cwd=tmp_path)
    hint = info.value.hint
    assert hint is not None and printable(hint) == hint  # printed as written
    assert str(info.value).lower() not in hint.lower()
    for place in ("DASHSCOPE_API_KEY", "./.env", "~/.alibabacloud/credentials", "~/.dashscope/api_key"):
        assert place in hint


def test_a_key_file_named_by_the_variable_that_cannot_be_read_is_named(tmp_path: Path):
    """$DASHSCOPE_API_KEY_FILE_PATH naming a missing file, a folder or an empty file: the official SDK fails on it;
    qwenvl says what is wrong with the file it names (it was "no key", exit 4, and a key found in a later place was
    used silently)."""
    (tmp_path / "folder").mkdir()
    (tmp_path / "empty").write_text("\n")
    (tmp_path / ".dashscope").mkdir()
    (tmp_path / ".dashscope" / "api_key").write_text("sk-the-other-one")
    for name, needle, hint, code in (
        ("missing", "key file not found", "Check the path", 3),
        ("folder", "is a directory", "not a folder", 3),
        ("empty", "is empty: it holds no key", "alone", 2),
    ):
        env = {"DASHSCOPE_API_KEY_FILE_PATH": str(tmp_path / name)}
        with pytest.raises(QwenVLError) as info:
            require_api_key(env=env, home=tmp_path, cwd=tmp_path)
        assert info.value.exit_code == code
        assert needle in str(info.value) and str(tmp_path / name) in str(info.value), str(info.value)
        assert "DASHSCOPE_API_KEY_FILE_PATH" in str(info.value)
        assert hint in (info.value.hint or ""), info.value.hint


def test_the_cli_names_the_damaged_credentials_file(tmp_path: Path):
    """The new user's example, end to end: one line naming the file, the line and what is wrong, a hint, exit 2;
    `qwenvl config` shows the rest of the settings and the same fault; `--dry-run` (which needs no key) still runs."""
    from PIL import Image

    from conftest import run_cli

    home = Path.home()  # the test's own (conftest: isolated_env)
    (home / ".alibabacloud").mkdir()
    (home / ".alibabacloud" / "credentials").write_text("[default\ngarbage\n")
    Image.new("RGB", (64, 64)).save("photo.png")
    result = run_cli("ask", "what is this?", "photo.png")
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[0].startswith("error: ") and ".alibabacloud/credentials line 1" in lines[0], lines
    assert "no DashScope API key" not in result.stderr and lines[1].startswith("hint: ")
    shown = run_cli("config")
    assert shown.returncode == 2 and "cannot be read" in shown.stdout and "region cn" in shown.stdout
    assert run_cli("config", "--json").returncode == 2
    dry = run_cli("ask", "--dry-run", "what is this?", "photo.png")
    assert dry.returncode == 0 and "the key cannot be read" in dry.stdout, dry.stderr


def test_a_qwenvl_variable_that_is_not_read_is_warned_about():
    """QWENVL_TIMEOUT=abc (a setting with a flag only) or a misspelt QWENVL_REGOIN were silently ignored."""
    from conftest import run_cli

    result = run_cli("models", env={"QWENVL_TIMEOUT": "abc", "QWENVL_REGOIN": "intl", "QWENVL_MODEL": "qwen3-vl-plus"})
    assert result.returncode == 0
    assert "$QWENVL_REGOIN is not a variable qwenvl reads; it is ignored (did you mean $QWENVL_REGION?)" in (
        result.stderr
    )
    assert "$QWENVL_TIMEOUT is not a variable qwenvl reads" in result.stderr
    assert "QWENVL_MODEL" not in result.stderr
    asked = run_cli("ask", "--dry-run", "hi", env={"QWENVL_TIMEOUT": "abc"})
    assert "(give --timeout instead)" in asked.stderr
