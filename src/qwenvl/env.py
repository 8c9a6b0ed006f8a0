"""Every environment variable qwenvl reads, in one place: its name, meaning, default and parsing.

``VARIABLES`` lists them (the README's table is made from it: ``markdown_table()``); one function per
variable reads it. Reads happen when a function is called, never at import, so an ``export`` (or a test's
``monkeypatch.setenv``) before a call is seen. Each function takes an optional ``env`` mapping (default:
``os.environ``) for tests and for resolving settings of another environment.

Rules for every variable: an empty value, or one of spaces only, counts as unset; a value that cannot be used
raises ``UsageError`` (exit 2) with one line that names the variable, e.g. ``$QWENVL_REGION: unknown region
'mars': use one of cn, intl, us``. An argument or a command-line option always wins over the variable; the
callers (``qwenvl.config``, ``qwenvl.client``, the CLI) apply that order.

Besides its own variables, qwenvl reads ``HOME`` (where ``~/.alibabacloud`` and ``~/.dashscope`` are looked
for), ``XDG_DATA_HOME`` (only to notice that the default data folder moved; platformdirs reads it and
``XDG_CACHE_HOME`` for the default folders), ``HF_HUB_OFFLINE`` (huggingface_hub's switch, read to explain a
failed download), the proxy variables (``HTTPS_PROXY``, ``ALL_PROXY``, ``HTTP_PROXY``: only whether one is set, so
that the hub is not probed around a proxy) and glibc's malloc settings ``MALLOC_MMAP_THRESHOLD_``,
``MALLOC_TRIM_THRESHOLD_`` and ``GLIBC_TUNABLES`` (only to leave them alone: ``qwenvl.batch.heap``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import platformdirs

from qwenvl.errors import UsageError

if TYPE_CHECKING:
    from qwenvl.config import Protocol

T = TypeVar("T")
Env = Mapping[str, str]


@dataclass(frozen=True)
class Variable:
    """One environment variable: ``name``, what it ``means`` and its ``default`` (as the README shows them)."""

    name: str
    meaning: str
    default: str


# Names other modules show in messages and help (one home each).
BASE_URL_ENV: dict[str, str] = {"compat": "DASHSCOPE_COMPATIBLE_BASE_URL", "native": "DASHSCOPE_HTTP_BASE_URL"}
SERVE_API_KEY_ENV = "QWENVL_SERVE_API_KEY"
SERVE_CONFIG_ENV = "QWENVL_SERVE_CONFIG"
USAGE_LOG_ENV = "QWENVL_LOG"
CACHE_DIR_ENV = "QWENVL_CACHE_DIR"
HOME_ENV = "QWENVL_HOME"

# The variable that stands for a command-line flag (its default), for hints on a verb that lacks the flag. None
# for --base-url: its variable depends on the backend and the protocol.
FLAG_VARIABLES: dict[str, str] = {
    "--model": "QWENVL_MODEL",
    "--region": "QWENVL_REGION",
    "--protocol": "QWENVL_PROTOCOL",
    "--backend": "QWENVL_BACKEND",
    "--engine": "QWENVL_ENGINE",
    "--family": "QWENVL_FAMILY",
}

VARIABLES: tuple[Variable, ...] = (
    Variable(
        "DASHSCOPE_API_KEY",
        "The DashScope (Model Studio) API key; also read from `./.env` (the environment wins).",
        "none: the files above are tried",
    ),
    Variable(
        "DASHSCOPE_API_KEY_FILE_PATH",
        "A file holding the API key alone (read whole and stripped, as the official SDK does); also read from "
        "`./.env`.",
        "none",
    ),
    Variable(
        "DASHSCOPE_COMPATIBLE_BASE_URL",
        "Base URL of the OpenAI-compatible protocol (as the official SDK reads it); wins over the region.",
        "the region's host + `/compatible-mode/v1`",
    ),
    Variable(
        "DASHSCOPE_HTTP_BASE_URL",
        "Base URL of the native protocol (as the official SDK reads it); wins over the region.",
        "the region's host + `/api/v1`",
    ),
    Variable(
        "ALIBABA_CLOUD_PROFILE",
        "The profile of `~/.alibabacloud/credentials` to take `dashscope_api_key` from.",
        "`$ALICLOUD_PROFILE`, else `default`",
    ),
    Variable("ALICLOUD_PROFILE", "The same, read when `ALIBABA_CLOUD_PROFILE` is not set.", "`default`"),
    Variable("QWENVL_MODEL", "The default model (`--model`).", "`qwen3-vl-plus`"),
    Variable(
        "QWENVL_UNLISTED_MODELS",
        "Model names (comma-separated) sent as given though they look like a misspelling of a listed model "
        "(else refused: did you mean ...?); a name with no Qwen-VL family word stays refused.",
        "none",
    ),
    Variable("QWENVL_REGION", "The service region (`--region`): `cn`, `intl` or `us`.", "`cn`"),
    Variable("QWENVL_PROTOCOL", "The wire protocol (`--protocol`): `compat`, `native` or `openai`.", "`compat`"),
    Variable(
        "QWENVL_BACKEND",
        "Where the model runs (`--backend`): `dashscope`, `openai` or `transformers`.",
        "`dashscope` (`openai` with `--protocol openai`)",
    ),
    Variable(
        "QWENVL_ENGINE",
        "The engine behind the openai backend (`--engine`): auto, vllm, sglang, llamacpp, ollama, qwenvl (a "
        "`qwenvl serve`) or generic.",
        "`auto`",
    ),
    Variable("QWENVL_FAMILY", "A local model's family (`--family`): qwen2-vl, qwen2.5-vl or qwen3-vl.", "the name"),
    Variable("QWENVL_OPENAI_BASE_URL", "The openai backend's server (`--base-url`).", "`http://127.0.0.1:8000/v1`"),
    Variable("QWENVL_OPENAI_API_KEY", "The openai backend's key (local engines take none).", "none"),
    Variable(
        HOME_ENV,
        "The data folder: sessions, chat history, the usage log.",
        "the user data folder (`~/.local/share/qwenvl` on Linux)",
    ),
    Variable(CACHE_DIR_ENV, "The response cache's folder.", "the user cache folder (`~/.cache/qwenvl` on Linux)"),
    Variable(
        USAGE_LOG_ENV, "`0` (or `false`, `off`, `no`) turns the usage log off; `1` (`true`, `on`, `yes`) on.", "on"
    ),
    Variable("QWENVL_DEBUG", "Set (not `0`): an internal error shows its traceback.", "off"),
    Variable(SERVE_API_KEY_ENV, "The key clients of `qwenvl serve` and `qwenvl mcp --http` send.", "none"),
    Variable(SERVE_CONFIG_ENV, "Internal: `qwenvl serve` hands its configuration to its workers in it.", "none"),
)

# Variables read only with one backend, by the flag that selects it, and the DashScope variables of the same role:
# a "did you mean" names both (an unknown BASE_URL variable is as likely meant for DashScope as for a local server).
BACKEND_ONLY: dict[str, tuple[str, tuple[str, ...]]] = {
    "QWENVL_OPENAI_BASE_URL": ("--backend openai", ("DASHSCOPE_COMPATIBLE_BASE_URL", "DASHSCOPE_HTTP_BASE_URL")),
    "QWENVL_OPENAI_API_KEY": ("--backend openai", ("DASHSCOPE_API_KEY",)),
}

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def markdown_table() -> str:
    """``VARIABLES`` as the README's Markdown table (the README holds this text; a test compares them)."""
    rows = ["| variable | meaning | default |", "|---|---|---|"]
    rows += [f"| `{v.name}` | {v.meaning} | {v.default} |" for v in VARIABLES]
    return "\n".join(rows)


# --- reading ----------------------------------------------------------------------------------------------


def _raw(name: str, env: Env | None) -> str | None:
    value = (os.environ if env is None else env).get(name)
    return value if value is not None and value.strip() else None


def _parsed(name: str, parse: Callable[[str], T], env: Env | None) -> T | None:
    """``parse(value)``, or None when unset; a UsageError from ``parse`` is told with the variable's name."""
    raw = _raw(name, env)
    if raw is None:
        return None
    try:
        return parse(raw)
    except UsageError as exc:
        raise UsageError(f"${name}: {exc.raw_message}", hint=exc.raw_hint, field=exc.field) from None


def _text(name: str, env: Env | None) -> str | None:
    raw = _raw(name, env)
    return raw.strip() if raw is not None else None


def _switch(value: str) -> bool:
    word = value.strip().lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise UsageError(
        f"{value!r} is not a switch: use 1 or 0 (true/false, on/off, yes/no)",
        hint="Set the variable to 1 or 0, or unset it.",
    )


def unknown_variables(env: Env | None = None) -> list[tuple[str, str | None]]:
    """Variables named ``QWENVL_...`` that are set (not blank) but that qwenvl does not read (a typo, or a
    setting that has only a flag, such as a time-out): each with the closest variable it does read
    (``qwenvl.spelling.nearest``), or None. Sorted by name. Raises nothing."""
    from qwenvl.spelling import nearest

    known = [v.name for v in VARIABLES]
    source = os.environ if env is None else env
    names = sorted(n for n in source if n.startswith("QWENVL_") and n not in known and _raw(n, env) is not None)
    return [(n, nearest(n, known, cutoff=0.8)) for n in names]


# --- the DashScope key and endpoints ----------------------------------------------------------------------------


def dashscope_api_key(env: Env | None = None) -> str | None:
    """``$DASHSCOPE_API_KEY`` (stripped), or None. ``qwenvl.config.find_api_key`` gives the whole lookup order."""
    return _text("DASHSCOPE_API_KEY", env)


def dashscope_api_key_file(env: Env | None = None) -> str | None:
    """``$DASHSCOPE_API_KEY_FILE_PATH`` as given (``~`` not yet expanded), or None."""
    return _raw("DASHSCOPE_API_KEY_FILE_PATH", env)


def credentials_profile(env: Env | None = None) -> str:
    """The ``~/.alibabacloud/credentials`` profile: ``$ALIBABA_CLOUD_PROFILE``, ``$ALICLOUD_PROFILE``, ``default``."""
    return _text("ALIBABA_CLOUD_PROFILE", env) or _text("ALICLOUD_PROFILE", env) or "default"


def credentials_profile_variable(env: Env | None = None) -> str | None:
    """The variable ``credentials_profile`` took the profile from, or None for ``default`` (neither set)."""
    return next((n for n in ("ALIBABA_CLOUD_PROFILE", "ALICLOUD_PROFILE") if _text(n, env)), None)


def dashscope_base_url(protocol: str, env: Env | None = None) -> str | None:
    """``$DASHSCOPE_COMPATIBLE_BASE_URL`` (compat) or ``$DASHSCOPE_HTTP_BASE_URL`` (native), checked to be an
    http(s) URL, or None. ``KeyError`` for another protocol (it has no such variable)."""
    from qwenvl.config import check_dashscope_url  # config imports this module

    return _parsed(BASE_URL_ENV[protocol], check_dashscope_url, env)


# --- what to ask and where ------------------------------------------------------------------------------------


def model(env: Env | None = None) -> str | None:
    """``$QWENVL_MODEL`` (stripped), or None (then ``qwenvl.models.DEFAULT_MODEL``)."""
    return _text("QWENVL_MODEL", env)


def unlisted_models(env: Env | None = None) -> tuple[str, ...]:
    """``$QWENVL_UNLISTED_MODELS``: the model names (comma-separated, stripped) to send though they look like a
    misspelling of a listed one (``qwenvl.models.typo_error``); empty when unset."""
    raw = _text("QWENVL_UNLISTED_MODELS", env)
    return tuple(n.strip() for n in (raw or "").split(",") if n.strip())


def region(env: Env | None = None) -> str | None:
    """``$QWENVL_REGION`` normalized (``cn``, ``intl`` or ``us``; aliases such as ``singapore`` accepted), or None."""
    from qwenvl.config import normalize_region  # config imports this module

    return _parsed("QWENVL_REGION", normalize_region, env)


def protocol(env: Env | None = None) -> Protocol | None:
    """``$QWENVL_PROTOCOL`` normalized (``compat``, ``native`` or ``openai``), or None."""
    from qwenvl.config import normalize_protocol  # config imports this module

    return _parsed("QWENVL_PROTOCOL", normalize_protocol, env)


def backend(env: Env | None = None) -> str | None:
    """``$QWENVL_BACKEND`` normalized (``dashscope``, ``openai`` or ``transformers``), or None."""
    from qwenvl.config import check_backend  # config imports this module

    return _parsed("QWENVL_BACKEND", check_backend, env)


def engine(env: Env | None = None) -> str | None:
    """``$QWENVL_ENGINE`` normalized (``qwenvl.config.ENGINES``), or None."""
    from qwenvl.config import check_engine  # config imports this module

    return _parsed("QWENVL_ENGINE", check_engine, env)


def family(env: Env | None = None) -> str | None:
    """``$QWENVL_FAMILY`` normalized (``qwen2-vl``, ``qwen2.5-vl`` or ``qwen3-vl``; ``qwen2_5_vl`` style accepted)."""
    from qwenvl.config import check_family  # config imports this module

    return _parsed("QWENVL_FAMILY", check_family, env)


def openai_base_url(env: Env | None = None) -> str | None:
    """``$QWENVL_OPENAI_BASE_URL`` checked to be an http(s) URL (no trailing slash), or None."""
    from qwenvl.config import check_http_url  # config imports this module

    return _parsed("QWENVL_OPENAI_BASE_URL", check_http_url, env)


def openai_api_key(env: Env | None = None) -> str | None:
    """``$QWENVL_OPENAI_API_KEY`` (stripped), or None."""
    return _text("QWENVL_OPENAI_API_KEY", env)


# --- folders and switches ---------------------------------------------------------------------------------------


def user_home(env: Env | None = None) -> Path:
    """``$HOME``, else the account's home folder (``Path.home()``)."""
    raw = _raw("HOME", env)
    return Path(raw) if raw is not None else Path.home()


def data_dir(env: Env | None = None) -> Path:
    """qwenvl's data folder: ``$QWENVL_HOME`` (``~`` expanded), else the platform's user data folder."""
    raw = _raw(HOME_ENV, env)
    return Path(raw).expanduser() if raw is not None else Path(platformdirs.user_data_dir("qwenvl", appauthor=False))


def data_dir_key(env: Env | None = None) -> tuple[str | None, ...]:
    """The variables ``data_dir()`` depends on (``$QWENVL_HOME``, ``$HOME``, ``$XDG_DATA_HOME``), as a key for
    remembering it per environment."""
    source = os.environ if env is None else env
    return tuple(source.get(name) for name in (HOME_ENV, "HOME", "XDG_DATA_HOME"))


def cache_dir(env: Env | None = None) -> Path:
    """The response cache's folder: ``$QWENVL_CACHE_DIR`` (``~`` expanded), else the platform's user cache folder."""
    raw = _raw(CACHE_DIR_ENV, env)
    return Path(raw).expanduser() if raw is not None else Path(platformdirs.user_cache_dir("qwenvl", appauthor=False))


def usage_log_enabled(env: Env | None = None) -> bool:
    """``$QWENVL_LOG`` as a switch (default on); UsageError for a value that is not one."""
    value = _parsed(USAGE_LOG_ENV, _switch, env)
    return True if value is None else value


def debug(env: Env | None = None) -> bool:
    """``$QWENVL_DEBUG``: on when set to anything but ``0``/``false``/``off``/``no``. Never raises: it is read
    while another error is being reported."""
    raw = _raw("QWENVL_DEBUG", env)
    return raw is not None and raw.strip().lower() not in _FALSE


def hf_hub_offline(env: Env | None = None) -> bool:
    """huggingface_hub's ``$HF_HUB_OFFLINE``, as it reads it (``1``, ``on``, ``yes`` or ``true``, any case;
    huggingface_hub/constants.py ``_is_true``). Never raises: the variable is not ours."""
    raw = _raw("HF_HUB_OFFLINE", env)
    return raw is not None and raw.strip().upper() in ("1", "ON", "YES", "TRUE")


def shell_completion(var: str = "_QWENVL_COMPLETE", env: Env | None = None) -> bool:
    """Whether click's completion variable (``$_QWENVL_COMPLETE``, or ``var``) is set: the shell asks for
    completions (``qwenvl.cli.completion``). Never raises: the variable is click's protocol."""
    return _raw(var, env) is not None


PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy", "HTTP_PROXY", "http_proxy")


def proxy_set(env: Env | None = None) -> bool:
    """Whether a proxy variable (``HTTPS_PROXY``, ``ALL_PROXY``, ``HTTP_PROXY``, either case) is set: then the
    Hugging Face hub is reached through it and cannot be probed directly (``backends.transformers.hub_reachable``).
    Never raises: the variables are not ours."""
    return any(_raw(name, env) for name in PROXY_VARIABLES)


def malloc_thresholds_set(env: Env | None = None) -> bool:
    """Whether the user set glibc malloc's mmap or trim threshold: ``$MALLOC_MMAP_THRESHOLD_``,
    ``$MALLOC_TRIM_THRESHOLD_``, or a ``glibc.malloc.`` tunable in ``$GLIBC_TUNABLES`` (mallopt(3), tunables(7)).
    Never raises: the variables are glibc's."""
    return (
        _raw("MALLOC_MMAP_THRESHOLD_", env) is not None
        or _raw("MALLOC_TRIM_THRESHOLD_", env) is not None
        or "glibc.malloc." in (_raw("GLIBC_TUNABLES", env) or "")
    )


def pillow_blocks_set(env: Env | None = None) -> bool:
    """Whether the user set Pillow's block cache (``$PILLOW_BLOCKS_MAX``, Pillow's "Block allocator" settings).
    Never raises: the variable is Pillow's."""
    return _raw("PILLOW_BLOCKS_MAX", env) is not None


# --- the server ------------------------------------------------------------------------------------------------


def serve_api_key(env: Env | None = None) -> str | None:
    """``$QWENVL_SERVE_API_KEY`` (stripped), or None."""
    return _text(SERVE_API_KEY_ENV, env)


def serve_config(env: Env | None = None) -> dict[str, Any]:
    """The configuration ``qwenvl serve`` left in ``$QWENVL_SERVE_CONFIG`` for its workers (a JSON object).
    UsageError when it is missing or not a JSON object."""

    def parse(raw: str) -> dict[str, Any]:
        try:
            value = json.loads(raw)
        except ValueError:
            raise UsageError("not JSON", hint="It is set by `qwenvl serve` for its workers.") from None
        if not isinstance(value, dict):
            raise UsageError("not a JSON object", hint="It is set by `qwenvl serve` for its workers.")
        return value

    config = _parsed(SERVE_CONFIG_ENV, parse, env)
    if config is None:
        raise UsageError(f"${SERVE_CONFIG_ENV} is not set", hint="Start the server with `qwenvl serve`.")
    return config


def set_serve_config(config: Mapping[str, Any]) -> None:
    """Put ``config`` in ``$QWENVL_SERVE_CONFIG`` of this process (uvicorn's workers inherit it)."""
    os.environ[SERVE_CONFIG_ENV] = json.dumps(config)
