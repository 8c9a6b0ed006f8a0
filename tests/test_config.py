"""Key lookup, regions and base URLs (pure: no network)."""

from __future__ import annotations

from pathlib import Path

import pytest

from qwenvl.config import find_api_key, normalize_protocol, normalize_region, require_api_key, resolve_base_url
from qwenvl.errors import MissingAPIKeyError, UsageError


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


def test_broken_credentials_file_is_ignored(tmp_path: Path):
    (tmp_path / ".alibabacloud").mkdir()
    (tmp_path / ".alibabacloud" / "credentials").write_text("this is [not ini\n=")
    assert find_api_key(env={}, home=tmp_path, cwd=tmp_path) is None
    with pytest.raises(MissingAPIKeyError) as info:
        require_api_key(env={}, home=tmp_path, cwd=tmp_path)
    assert "DASHSCOPE_API_KEY" in info.value.hint


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


def test_a_key_file_that_cannot_be_read_is_named_in_the_missing_key_error(tmp_path: Path):
    """$DASHSCOPE_API_KEY_FILE_PATH naming a missing file, a folder or an empty file: still no key (exit 4), but
    the error says what is wrong with the file it names, with a hint about it."""
    (tmp_path / "folder").mkdir()
    (tmp_path / "empty").write_text("\n")
    for name, needle, hint in (
        ("missing", "key file not found", "Check the path"),
        ("folder", "is a directory", "not a folder"),
        ("empty", "holds no key", "first line"),
    ):
        env = {"DASHSCOPE_API_KEY_FILE_PATH": str(tmp_path / name)}
        with pytest.raises(MissingAPIKeyError) as info:
            require_api_key(env=env, home=tmp_path, cwd=tmp_path)
        assert info.value.exit_code == 4
        assert needle in str(info.value) and str(tmp_path / name) in str(info.value), str(info.value)
        assert hint in (info.value.hint or ""), info.value.hint
