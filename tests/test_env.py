"""qwenvl.env (the one reader of the environment) and qwenvl._constants (the one home of shared defaults)."""

from __future__ import annotations

import inspect
import json
import os
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

import qwenvl
from qwenvl import _constants as constants
from qwenvl import env as qenv
from qwenvl.errors import UsageError

SRC = Path(qwenvl.__file__).parent
README = SRC.parents[1] / "README.md"

# Only env.py reads the environment. The response cache and the usage log are being moved out of batch/ (into a
# store package) by another change; they read their two variables through env.py once moved.
NOT_YET: set[str] = set()  # every module reads the environment through env.py
ENV_ACCESS = re.compile(r"\bos\.(environ|getenv|putenv|unsetenv)\b|\bfrom os import\b[^\n]*\b(environ|getenv)\b")


def sources() -> list[tuple[str, str]]:
    return [(p.relative_to(SRC).as_posix(), p.read_text(encoding="utf-8")) for p in sorted(SRC.rglob("*.py"))]


def test_no_module_but_env_reads_the_environment() -> None:
    offenders = [
        f"{name}:{text[: m.start()].count(chr(10)) + 1}: {m.group(0)}"
        for name, text in sources()
        if name != "env.py" and name not in NOT_YET
        for m in ENV_ACCESS.finditer(text)
    ]
    assert offenders == [], "read the environment through qwenvl.env: " + "; ".join(offenders)


def test_the_check_finds_a_read() -> None:
    assert ENV_ACCESS.search('x = os.environ.get("QWENVL_MODEL")')
    assert ENV_ACCESS.search('os.getenv("HOME")')
    assert ENV_ACCESS.search("from os import environ")
    assert not ENV_ACCESS.search("os.path.join(a, b)")


def test_every_variable_named_in_the_code_is_known() -> None:
    """A QWENVL_*/DASHSCOPE_* name anywhere in the package (messages, help, docstrings) is one env.py knows."""
    known = {v.name for v in qenv.VARIABLES}
    named = {
        (name, m.group(0))
        for name, text in sources()
        for m in re.finditer(r"\b(?:QWENVL|DASHSCOPE)_[A-Z0-9_]*[A-Z0-9]\b", text)
    }
    unknown = sorted(f"{name}: {var}" for name, var in named if var not in known)
    assert unknown == []


def test_readme_lists_every_variable_as_env_py_says() -> None:
    readme = README.read_text(encoding="utf-8")
    table = qenv.markdown_table()
    assert table in readme, (
        "README's environment table differs from qwenvl.env.VARIABLES; paste the output of "
        "python -c 'from qwenvl import env; print(env.markdown_table())'"
    )
    for variable in qenv.VARIABLES:
        assert f"`{variable.name}`" in table and variable.meaning and variable.default
    for other in ("HOME", "XDG_DATA_HOME", "HF_HUB_OFFLINE"):
        assert f"`{other}`" in readme


def test_documented_defaults_are_the_real_ones() -> None:
    from qwenvl import config
    from qwenvl.models import DEFAULT_MODEL

    doc = {v.name: v.default for v in qenv.VARIABLES}
    assert doc["QWENVL_MODEL"] == f"`{DEFAULT_MODEL}`"
    assert doc["QWENVL_REGION"] == f"`{config.DEFAULT_REGION}`"
    assert doc["QWENVL_PROTOCOL"] == f"`{config.DEFAULT_PROTOCOL}`"
    assert doc["QWENVL_BACKEND"].startswith(f"`{config.DEFAULT_BACKEND}`")
    assert doc["QWENVL_ENGINE"] == f"`{config.ENGINES[0]}`"
    assert doc["QWENVL_OPENAI_BASE_URL"] == f"`{config.DEFAULT_OPENAI_BASE_URL}`"
    assert config.effective_region() == config.DEFAULT_REGION and config.effective_protocol() == "compat"
    assert config.normalize_backend(None) == config.DEFAULT_BACKEND and config.normalize_engine(None) == "auto"
    assert config.openai_base_url() == config.DEFAULT_OPENAI_BASE_URL


# --- parsing ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "read,name,given,expected",
    [
        (qenv.region, "QWENVL_REGION", " Singapore ", "intl"),
        (qenv.region, "QWENVL_REGION", "us", "us"),
        (qenv.protocol, "QWENVL_PROTOCOL", "Native", "native"),
        (qenv.protocol, "QWENVL_PROTOCOL", "dashscope", "native"),
        (qenv.backend, "QWENVL_BACKEND", "OpenAI", "openai"),
        (qenv.engine, "QWENVL_ENGINE", "vLLM", "vllm"),
        (qenv.family, "QWENVL_FAMILY", "qwen2_5_vl", "qwen2.5-vl"),
        (qenv.openai_base_url, "QWENVL_OPENAI_BASE_URL", "http://127.0.0.1:9/v1/ ", "http://127.0.0.1:9/v1"),
        (qenv.model, "QWENVL_MODEL", " qwen3-vl-flash ", "qwen3-vl-flash"),
        (qenv.openai_api_key, "QWENVL_OPENAI_API_KEY", " sk-local ", "sk-local"),
        (qenv.serve_api_key, "QWENVL_SERVE_API_KEY", "sk-serve\n", "sk-serve"),
        (qenv.dashscope_api_key, "DASHSCOPE_API_KEY", " sk-x ", "sk-x"),
        (qenv.usage_log_enabled, "QWENVL_LOG", "off", False),
        (qenv.usage_log_enabled, "QWENVL_LOG", "YES", True),
    ],
)
def test_a_value_is_parsed(read, name: str, given: str, expected: object) -> None:
    assert read({name: given}) == expected


@pytest.mark.parametrize(
    "read",
    [
        qenv.region,
        qenv.protocol,
        qenv.backend,
        qenv.engine,
        qenv.family,
        qenv.openai_base_url,
        qenv.model,
        qenv.openai_api_key,
        qenv.serve_api_key,
        qenv.dashscope_api_key,
        qenv.dashscope_api_key_file,
    ],
)
def test_unset_empty_and_blank_are_unset(read) -> None:
    name = {v.name for v in qenv.VARIABLES}
    assert read({}) is None
    for value in ("", "   "):
        assert read({n: value for n in name}) is None


@pytest.mark.parametrize(
    "read,name,bad,words",
    [
        (qenv.region, "QWENVL_REGION", "mars", "unknown region 'mars'"),
        (qenv.protocol, "QWENVL_PROTOCOL", "grpc", "unknown protocol 'grpc'"),
        (qenv.backend, "QWENVL_BACKEND", "ollama", "unknown backend 'ollama'"),
        (qenv.engine, "QWENVL_ENGINE", "tgi", "unknown engine 'tgi'"),
        (qenv.family, "QWENVL_FAMILY", "llava", "unknown model family 'llava'"),
        (qenv.openai_base_url, "QWENVL_OPENAI_BASE_URL", "127.0.0.1:8000", "is not an http(s) URL"),
        (qenv.usage_log_enabled, "QWENVL_LOG", "maybe", "'maybe' is not a switch"),
        (qenv.serve_config, "QWENVL_SERVE_CONFIG", "{not json", "not JSON"),
        (qenv.serve_config, "QWENVL_SERVE_CONFIG", "[1, 2]", "not a JSON object"),
    ],
)
def test_a_bad_value_is_one_line_naming_the_variable(read, name: str, bad: str, words: str) -> None:
    with pytest.raises(UsageError) as info:
        read({name: bad})
    message = str(info.value)
    assert message.startswith(f"${name}: ") and words in message and "\n" not in message
    assert info.value.exit_code == 2


@pytest.mark.parametrize(
    "protocol,name", [("compat", "DASHSCOPE_COMPATIBLE_BASE_URL"), ("native", "DASHSCOPE_HTTP_BASE_URL")]
)
def test_dashscope_base_urls(protocol: str, name: str) -> None:
    assert qenv.dashscope_base_url(protocol, {name: "http://127.0.0.1:1/api/v1/"}) == "http://127.0.0.1:1/api/v1"
    assert qenv.dashscope_base_url(protocol, {}) is None
    with pytest.raises(UsageError, match=rf"^\${name}: base URL 'dashscope' is not an http\(s\) URL") as info:
        qenv.dashscope_base_url(protocol, {name: "dashscope"})
    assert "dashscope-intl.aliyuncs.com" in (info.value.hint or "")


def test_switches_and_profiles() -> None:
    assert qenv.usage_log_enabled({}) is True
    for off in ("0", "false", "Off", "no"):
        assert qenv.usage_log_enabled({"QWENVL_LOG": off}) is False
    assert qenv.debug({}) is False and qenv.debug({"QWENVL_DEBUG": "1"}) is True
    assert qenv.debug({"QWENVL_DEBUG": "0"}) is False and qenv.debug({"QWENVL_DEBUG": "anything"}) is True
    assert qenv.hf_hub_offline({"HF_HUB_OFFLINE": "1"}) and qenv.hf_hub_offline({"HF_HUB_OFFLINE": "True"})
    assert not qenv.hf_hub_offline({"HF_HUB_OFFLINE": "0"}) and not qenv.hf_hub_offline({})
    assert qenv.credentials_profile({}) == "default"
    assert qenv.credentials_profile({"ALICLOUD_PROFILE": "b"}) == "b"
    assert qenv.credentials_profile({"ALIBABA_CLOUD_PROFILE": "a", "ALICLOUD_PROFILE": "b"}) == "a"


def test_folders(tmp_path: Path) -> None:
    assert qenv.data_dir({"QWENVL_HOME": str(tmp_path / "d")}) == tmp_path / "d"
    assert qenv.data_dir({"QWENVL_HOME": "~/q", "HOME": str(tmp_path)}).name == "q"
    assert qenv.data_dir({}).name == "qwenvl" and qenv.cache_dir({}).name == "qwenvl"
    assert qenv.cache_dir({"QWENVL_CACHE_DIR": str(tmp_path / "c")}) == tmp_path / "c"
    assert qenv.user_home({"HOME": str(tmp_path)}) == tmp_path and qenv.user_home({}) == Path.home()
    assert qenv.data_dir_key({"QWENVL_HOME": "a", "XDG_DATA_HOME": "x"}) == ("a", None, "x")


def test_serve_config_round_trip(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(qenv.SERVE_CONFIG_ENV, " ")  # blank is unset; the variable is removed after the test
    with pytest.raises(UsageError, match=r"^\$QWENVL_SERVE_CONFIG is not set"):
        qenv.serve_config()
    qenv.set_serve_config({"backend": "dashscope", "settings": {"max_media_items": 3}})
    assert qenv.serve_config() == {"backend": "dashscope", "settings": {"max_media_items": 3}}
    assert json.loads(os.environ[qenv.SERVE_CONFIG_ENV])["backend"] == "dashscope"  # uvicorn's workers inherit it


# --- reads happen at call time, and an option wins over a bad variable ------------------------------------------


def test_reads_are_lazy_and_options_win(monkeypatch: pytest.MonkeyPatch) -> None:
    from conftest import API_KEY

    monkeypatch.setenv("QWENVL_REGION", "intl")
    monkeypatch.setenv("QWENVL_PROTOCOL", "native")
    monkeypatch.setenv("QWENVL_MODEL", "qwen3-vl-flash")
    with qwenvl.Client(api_key=API_KEY) as client:
        assert (client.region, client.protocol, client.defaults["model"]) == ("intl", "native", "qwen3-vl-flash")
    monkeypatch.setenv("QWENVL_REGION", "mars")
    monkeypatch.setenv("QWENVL_PROTOCOL", "grpc")
    with qwenvl.Client(api_key=API_KEY, region="cn", protocol="compat") as client:  # never asked: no error
        assert (client.region, client.protocol) == ("cn", "compat")
    with pytest.raises(UsageError, match=r"^\$QWENVL_PROTOCOL: unknown protocol 'grpc'"):
        qwenvl.Client(api_key=API_KEY, region="cn")
    with pytest.raises(UsageError, match=r"^\$QWENVL_REGION: unknown region 'mars'"):
        qwenvl.Client(api_key=API_KEY, protocol="compat")


@pytest.mark.parametrize(
    "name,value,args",
    [
        ("QWENVL_REGION", "mars", ["config"]),
        ("QWENVL_PROTOCOL", "grpc", ["config"]),
        ("DASHSCOPE_HTTP_BASE_URL", "dashscope.example", ["config"]),
        ("QWENVL_BACKEND", "ollama", ["ask", "hi"]),
        ("QWENVL_ENGINE", "tgi", ["ask", "--backend", "openai", "hi"]),
    ],
)
def test_the_cli_names_a_bad_variable(monkeypatch: pytest.MonkeyPatch, name: str, value: str, args: list[str]) -> None:
    from qwenvl.cli.main import cli

    monkeypatch.setenv(name, value)
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2, result.output
    assert f"${name}: " in result.output and "Traceback" not in result.output


def test_a_key_in_the_environment_and_in_dotenv_follow_the_same_rules(tmp_path: Path) -> None:
    from qwenvl.config import find_api_key

    (tmp_path / ".env").write_text("DASHSCOPE_API_KEY=   \nDASHSCOPE_API_KEY_FILE_PATH=" + str(tmp_path / "k") + "\n")
    (tmp_path / "k").write_text("sk-file\n")
    found = find_api_key(env={"DASHSCOPE_API_KEY": "  "}, home=tmp_path / "h", cwd=tmp_path)
    assert found is not None and found.key == "sk-file" and found.source == f"file {tmp_path / 'k'}"


# --- the shared defaults --------------------------------------------------------------------------------------


def test_every_user_of_a_default_reads_the_one_home() -> None:
    from qwenvl import retry, transport
    from qwenvl.batch import limiter
    from qwenvl.batch.batchapi import BatchAPI
    from qwenvl.media.prepare import MediaOptions
    from qwenvl.server.app import ServeSettings
    from qwenvl.types import Request

    fields = Request.model_fields
    assert fields["timeout_s"].default == constants.DEFAULT_TIMEOUT_S
    assert fields["max_retries"].default == constants.DEFAULT_MAX_RETRIES
    assert fields["retry_backoff_s"].default == constants.DEFAULT_RETRY_BACKOFF_S
    policy = transport.Policy()
    assert (policy.timeout_s, policy.max_retries, policy.backoff_s) == (
        constants.DEFAULT_TIMEOUT_S,
        constants.DEFAULT_MAX_RETRIES,
        constants.DEFAULT_RETRY_BACKOFF_S,
    )
    assert policy.cap_s == max(constants.STREAM_CAP_FACTOR * policy.timeout_s, constants.STREAM_CAP_MIN_S)
    batch_api = inspect.signature(BatchAPI).parameters
    assert batch_api["max_retries"].default == constants.DEFAULT_MAX_RETRIES
    assert batch_api["retry_backoff_s"].default == constants.DEFAULT_RETRY_BACKOFF_S
    assert retry.retry_delay(99, 1.5, rng=lambda: 0.0) == constants.MAX_RETRY_DELAY_S
    assert retry.retry_delay(0, 1.0, rng=lambda: 1.0) == pytest.approx(1 - constants.JITTER)
    assert limiter.JITTER is constants.JITTER
    assert inspect.signature(transport.fetch_url).parameters["timeout_s"].default == constants.FETCH_TIMEOUT_S
    assert MediaOptions(model=qwenvl.model_info("qwen3-vl-plus")).fetch_timeout_s == constants.FETCH_TIMEOUT_S
    assert ServeSettings().download_timeout_s == constants.FETCH_TIMEOUT_S


def test_serve_and_batch_defaults_have_one_home() -> None:
    from qwenvl.batch.runner import Batch
    from qwenvl.cli.batch import run as batch_run
    from qwenvl.cli.serve import serve
    from qwenvl.server.app import ServeSettings

    settings = ServeSettings()
    options = {p.name: p.default for p in serve.params}
    assert settings.max_body_bytes == constants.SERVE_MAX_BODY_BYTES == options["max_body_mb"] * 1024 * 1024
    assert settings.max_media_items == constants.SERVE_MAX_MEDIA_ITEMS == options["max_images"]
    assert settings.max_concurrent_per_key == constants.SERVE_MAX_CONCURRENT_PER_KEY == options["max_concurrent"]
    assert settings.request_timeout_s == constants.SERVE_REQUEST_TIMEOUT_S == options["request_timeout"]
    poll = inspect.signature(Batch).parameters["poll_interval_s"].default
    assert poll == constants.BATCH_POLL_INTERVAL_S == {p.name: p.default for p in batch_run.params}["poll_interval"]


def test_the_cli_help_tells_the_real_defaults() -> None:
    from qwenvl.cli.main import cli

    text = " ".join(CliRunner().invoke(cli, ["ask", "--help"], terminal_width=200).output.split())
    assert f"(default {constants.DEFAULT_TIMEOUT_S:g})" in text
    assert f"(default {constants.DEFAULT_MAX_RETRIES}; 0: none)" in text
    assert f"at most {constants.MAX_RETRY_DELAY_S:g} s" in text
    assert f"(default {constants.DEFAULT_RETRY_BACKOFF_S:g}; 0: retry at once)" in text
