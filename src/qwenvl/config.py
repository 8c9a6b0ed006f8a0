"""Where requests go and with which key: regions, base URLs, protocols, the API key lookup.

Lookup order for the key (the first found wins):
  1. the ``api_key`` argument (``--api-key`` is deliberately not offered: keys in argv leak to `ps`)
  2. ``DASHSCOPE_API_KEY`` in the environment, then in ``.env`` (working folder, then the repository root)
  3. the file named by ``DASHSCOPE_API_KEY_FILE_PATH`` (the key alone in it)
  4. ``~/.alibabacloud/credentials`` (INI; profile ``$ALIBABA_CLOUD_PROFILE``, ``$ALICLOUD_PROFILE`` or
     ``default``; option ``dashscope_api_key``)
  5. ``~/.dashscope/api_key`` (the official SDK's key file; not read when a profile named by
     ``$ALIBABA_CLOUD_PROFILE``/``$ALICLOUD_PROFILE`` has no key: that is "no key", naming the profile)
A ``.env`` file never overrides the real environment. A place that is there but cannot be used (a damaged file, an
empty key file, a key with a space in it) is an error naming it (``find_api_key``), never skipped for the next.
"""

from __future__ import annotations

import configparser
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from qwenvl import env as qenv
from qwenvl.errors import KEY_PAGE, MissingAPIKeyError, UsageError
from qwenvl.spelling import meant

Protocol = Literal["compat", "native", "openai"]
# compat and native: DashScope's two protocols; openai: plain OpenAI chat completions (no DashScope
# extensions), spoken by the ``openai`` backend to any OpenAI-compatible engine (vLLM, llama.cpp, Ollama...).
PROTOCOLS: tuple[str, ...] = ("compat", "native", "openai")
DEFAULT_PROTOCOL: Protocol = "compat"

# Where requests go: DashScope (default), any OpenAI-compatible server, or a model loaded in this process.
BACKENDS: tuple[str, ...] = ("dashscope", "openai", "transformers")
DEFAULT_BACKEND = "dashscope"
# The engine behind an ``openai`` backend (its quirks differ); auto = detected from the server's replies.
ENGINES: tuple[str, ...] = ("auto", "vllm", "sglang", "llamacpp", "ollama", "qwenvl", "generic")
# Model families a local model can be declared as (when its name does not say).
FAMILIES: tuple[str, ...] = ("qwen2-vl", "qwen2.5-vl", "qwen3-vl")
# --backend transformers: where the model runs and in which precision (auto: cuda, then mps, then cpu; the
# checkpoint's dtype on cuda, float32 on cpu, float16 on mps). One table each: the CLI's choices, the backend's check.
DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda", "mps")
DTYPES: tuple[str, ...] = ("auto", "float32", "bfloat16", "float16")
# The OpenAI-compatible server assumed when no --base-url is given (vLLM's default address).
DEFAULT_OPENAI_BASE_URL = "http://127.0.0.1:8000/v1"

COMPAT_PATH = "/compatible-mode/v1"
NATIVE_PATH = "/api/v1"

# Hosts: the OpenAI-compatible page (alibabacloud.com/help/doc-detail/2833609.html, updated 2026-03-18) lists
# Beijing, Singapore and Virginia; the DashScope SDK's defaults (reference/dashscope-api.md §2.5). Billing
# currency and temporary storage per region are in qwenvl.models (REGION_CURRENCY, TEMP_STORAGE_REGIONS).
REGIONS: dict[str, str] = {
    "cn": "https://dashscope.aliyuncs.com",  # Beijing (default)
    "intl": "https://dashscope-intl.aliyuncs.com",  # Singapore
    "us": "https://dashscope-us.aliyuncs.com",  # Virginia (native path UNVERIFIED)
}
REGION_ALIASES = {
    "beijing": "cn",
    "cn-beijing": "cn",
    "singapore": "intl",
    "ap-southeast-1": "intl",
    "virginia": "us",
    "us-east-1": "us",
}
DEFAULT_REGION = "cn"

# One line (hints are printed as one line: ``qwenvl.errors.printable``), after "no DashScope API key found".
KEY_HELP = (
    "Set DASHSCOPE_API_KEY=sk-... (in the shell, or a line in ./.env), or put dashscope_api_key = sk-... under "
    "[default] in ~/.alibabacloud/credentials, or the key alone in ~/.dashscope/api_key (as the official SDK "
    f"keeps it). Get a key at {KEY_PAGE} (Beijing and Singapore keys "
    "differ)."
)


UNKNOWN_REGION_HINT = "Leave it out for cn (Beijing)"  # the hint of an unknown region, less the endpoint


def normalize_region(region: str | None) -> str:
    name = (region or DEFAULT_REGION).strip().lower()
    name = REGION_ALIASES.get(name, name)
    if name not in REGIONS:
        raise UsageError(
            f"unknown region {region!r}: use one of {', '.join(REGIONS)}{meant(name, [*REGIONS, *REGION_ALIASES])}",
            hint=f"{UNKNOWN_REGION_HINT}, or give the endpoint itself with --base-url.",
            field="region",
        )
    return name


def effective_region(region: str | None = None) -> str:
    """The region in force: the given one, else ``$QWENVL_REGION``, else ``cn`` (normalized)."""
    return normalize_region(region) if region else qenv.region() or DEFAULT_REGION


def effective_protocol(protocol: str | None = None) -> Protocol:
    """The protocol in force: the given one, else ``$QWENVL_PROTOCOL``, else ``compat`` (normalized)."""
    return normalize_protocol(protocol) if protocol else qenv.protocol() or DEFAULT_PROTOCOL


def region_of_url(url: str | None) -> str | None:
    """The region whose DashScope host ``url`` points at, or None (a proxy, a local server)."""
    host = urlsplit(url).hostname if url else None
    return next((r for r, base in REGIONS.items() if host and urlsplit(base).hostname == host), None)


def normalize_protocol(protocol: str | None) -> Protocol:
    name = (protocol or DEFAULT_PROTOCOL).strip().lower()
    aliases = {"compatible": "compat", "dashscope": "native"}
    name = aliases.get(name, name)
    if name not in PROTOCOLS:
        raise UsageError(
            f"unknown protocol {protocol!r}: use compat (DashScope's OpenAI-compatible mode), "
            f"native (DashScope) or openai (plain OpenAI, for other servers){meant(name, [*PROTOCOLS, *aliases])}",
            hint="Use --protocol compat, native or openai.",
        )
    return name  # type: ignore[return-value]


def _choose(kind: str, value: str | None, choices: tuple[str, ...], default: str, hint: str | None = None) -> str:
    name = (value or default).strip().lower()
    if name not in choices:
        raise UsageError(f"unknown {kind} {value!r}: use one of {', '.join(choices)}{meant(name, choices)}", hint=hint)
    return name


def check_backend(name: str) -> str:
    """A backend name, lower-cased; UsageError unless it is one of ``BACKENDS``."""
    return _choose(
        "backend",
        name,
        BACKENDS,
        DEFAULT_BACKEND,
        hint="dashscope (Model Studio), openai (vLLM, llama.cpp, Ollama...) or transformers (in process).",
    )


def check_engine(name: str) -> str:
    """An engine name, lower-cased; UsageError unless it is one of ``ENGINES``."""
    return _choose("engine", name, ENGINES, "auto")


def check_family(name: str) -> str:
    """A model family, normalized (``qwen2_5_vl`` style accepted); UsageError unless it is one of ``FAMILIES``."""
    name = name.strip().lower().replace("_", "-").replace("qwen2-5", "qwen2.5")
    return _choose(
        "model family",
        name,
        FAMILIES,
        "",
        hint="qwen2.5-vl (28 px, absolute boxes) or qwen3-vl (32 px, boxes in 0-1000)",
    )


def check_http_url(url: str, example: str = "http://127.0.0.1:8000/v1") -> str:
    """``url`` stripped, without a trailing slash; UsageError (with ``example`` as the hint) unless it is an
    http(s) URL with a host (and no control character), and UsageError for a full endpoint (ending in a
    protocol's ``endpoint``), the hint giving the base. Messages quote the URL as given (``'http://'``, not what is
    left of it without its slash)."""
    given = url.strip()
    url = given.rstrip("/")
    try:
        if not url.isprintable():  # a tab, a newline, ESC: httpx refused them later, as a crash
            raise ValueError("it holds a control character")
        parts = urlsplit(url)
        parts.port  # noqa: B018  # "Port out of range 0-65535", "Port could not be cast to integer value"
    except ValueError as exc:  # "http://[bad": an IPv6 host not closed; a port that is no port
        raise UsageError(f"base URL {given!r} is not a valid URL ({exc})", hint=f"For example {example}") from None
    if parts.scheme not in ("http", "https"):
        raise UsageError(f"base URL {given!r} is not an http(s) URL", hint=f"For example {example}")
    if not parts.netloc:
        raise UsageError(f"base URL {given!r} has no host", hint=f"For example {example}")
    from qwenvl import protocols  # the paths they append (protocols do not import this module at load time)

    for endpoint in {protocols.get(name).endpoint for name in protocols.names()}:  # a full one would be doubled
        if parts.path.endswith(endpoint):
            base = url[: url.rindex(endpoint)]
            raise UsageError(
                f"base URL {url!r} is a full endpoint; qwenvl appends {endpoint} itself",
                hint=f"Give the base URL without it: {base}",
            )
    return url


def check_dashscope_url(url: str) -> str:
    """``check_http_url`` with a DashScope endpoint as the example."""
    return check_http_url(url, "https://dashscope-intl.aliyuncs.com/compatible-mode/v1")


def normalize_backend(backend: str | None, *, protocol: str | None = None, env: Mapping[str, str] | None = None) -> str:
    """The backend name: the argument, else ``QWENVL_BACKEND``, else ``openai`` when the protocol is
    ``openai``, else ``dashscope``. Raises UsageError for an unknown name."""
    if backend:
        return check_backend(backend)
    return qenv.backend(env) or ("openai" if protocol == "openai" else DEFAULT_BACKEND)


# The options each backend takes besides its model (one home: ``Client``, ``make_backend``, ``qwenvl serve`` and
# ``qwenvl mcp`` check against it): anything else given for that backend is a usage error, never dropped silently.
BACKEND_TAKES: dict[str, frozenset[str]] = {
    "dashscope": frozenset({"protocol", "region", "base_url"}),
    "openai": frozenset({"base_url", "engine", "family"}),
    "transformers": frozenset({"family", "device", "dtype", "attn_implementation"}),
}
# How each option is spelt on the command line (``qwenvl serve`` passes its own: ``--upstream`` for base_url).
OPTION_FLAGS: dict[str, str] = {
    "protocol": "--protocol",
    "region": "--region",
    "base_url": "--base-url",
    "engine": "--engine",
    "family": "--family",
    "device": "--device",
    "dtype": "--dtype",
    "attn_implementation": "--attn-implementation",
}


def check_backend_options(backend: str, given: Mapping[str, Any], flags: Mapping[str, str] | None = None) -> None:
    """UsageError (exit 2) for an option in ``given`` (name -> value; None or "" is not given) that ``backend``
    does not take (``BACKEND_TAKES``), naming it as ``flags`` spell it (default ``OPTION_FLAGS``) and the backends
    that take it. ``protocol="openai"`` is the local backends' own protocol, so it passes there. Raises nothing
    for a backend not in the table (an object given as the backend)."""
    takes = BACKEND_TAKES.get(backend)
    if takes is None:
        return
    spelt = {**OPTION_FLAGS, **(flags or {})}
    for name, value in given.items():
        if (
            value in (None, "")
            or name in takes
            or (name == "protocol" and value == "openai" and backend != "dashscope")
        ):
            continue
        if name == "engine" and value == "auto":  # the default of every backend: says nothing
            continue
        owners = [b for b, opts in BACKEND_TAKES.items() if name in opts]
        flag = spelt.get(name, name)
        raise UsageError(
            f"{flag} does not apply to --backend {backend} (it is for --backend {' or '.join(owners)})",
            hint=f"Leave out {flag}, or use --backend {owners[0]}.",
        )


def normalize_engine(engine: str | None, env: Mapping[str, str] | None = None) -> str:
    """``--engine`` / ``QWENVL_ENGINE`` (default auto)."""
    return check_engine(engine) if engine else qenv.engine(env) or "auto"


def normalize_family(family: str | None, env: Mapping[str, str] | None = None) -> str | None:
    """``--family`` / ``QWENVL_FAMILY``, or None (then the model name decides). ``qwen2_5_vl`` style accepted."""
    return check_family(family) if family else qenv.family(env)


def openai_base_url(base_url: str | None = None, env: Mapping[str, str] | None = None) -> str:
    """An OpenAI-compatible server's base URL, taken as given (no path appended), without a trailing slash:
    the argument, else ``QWENVL_OPENAI_BASE_URL``, else vLLM's default ``http://127.0.0.1:8000/v1``."""
    if base_url:
        return check_http_url(base_url)
    return qenv.openai_base_url(env) or DEFAULT_OPENAI_BASE_URL


def openai_api_key(explicit: str | None = None, env: Mapping[str, str] | None = None) -> str:
    """The key for an OpenAI-compatible server: optional (local engines take none). The argument, else
    ``QWENVL_OPENAI_API_KEY``; never ``DASHSCOPE_API_KEY`` or ``OPENAI_API_KEY`` (they belong to clouds)."""
    return (explicit or qenv.openai_api_key(env) or "").strip()


def resolve_base_url(
    protocol: Protocol, *, region: str | None = None, base_url: str | None = None, env: Mapping[str, str] | None = None
) -> str:
    """The base URL for one protocol, without a trailing slash.

    An explicit ``base_url`` wins. One that ends in ``/compatible-mode/v1`` or ``/api/v1`` also gives the
    other protocol's URL on the same host; a bare ``http://host:port`` gets the protocol's standard path;
    any other path is used as given (a proxy). Otherwise ``DASHSCOPE_COMPATIBLE_BASE_URL`` /
    ``DASHSCOPE_HTTP_BASE_URL`` (as the official SDK reads them), then the region's host.
    """
    if protocol == "openai":
        return openai_base_url(base_url, env)
    wanted = COMPAT_PATH if protocol == "compat" else NATIVE_PATH
    if base_url:
        return _derive(base_url, wanted)
    from_env = qenv.dashscope_base_url(protocol, env)
    if from_env:
        return _derive(from_env, wanted)
    return REGIONS[normalize_region(region)] + wanted


CLOUD_HOST_SUFFIX = ".aliyuncs.com"  # the hosts of DashScope's own endpoints (REGIONS)


def needs_dashscope_key(base_url: str) -> bool:
    """Whether ``base_url`` is one of DashScope's own endpoints (an ``*.aliyuncs.com`` host), which need a DashScope
    key. A key is still asked for with another server (tests and proxies stand in for DashScope there), but the
    missing-key hint says that a server taking no key (``qwenvl serve --no-auth``) accepts any."""
    host = (urlsplit(base_url).hostname or "").lower()
    return host.endswith(CLOUD_HOST_SUFFIX)


def _derive(url: str, wanted: str) -> str:
    url = check_dashscope_url(url)
    parts = urlsplit(url)
    root = f"{parts.scheme}://{parts.netloc}"
    for known in (COMPAT_PATH, NATIVE_PATH):
        if parts.path.endswith(known):
            prefix = parts.path[: -len(known)]
            return root + prefix + wanted
    if parts.path in ("", "/"):
        return root + wanted
    return url


# --- the API key -------------------------------------------------------------------------------------------
#
# Each place is read as the tool that writes it reads it, and a place that is there but cannot be used is refused
# (UsageError, exit 2, naming the file, the line and what is wrong; MediaError, exit 3, for a file that cannot be
# read at all), never skipped for the next place: the user would be sent with another key, or told "no key".
#   .env: python-dotenv's syntax (``export``, quotes, comments, CRLF, a BOM).
#   a key file (DASHSCOPE_API_KEY_FILE_PATH, ~/.dashscope/api_key): the whole file, stripped, as the official SDK
#     reads it (dashscope/common/api_key.py ``get_default_api_key``: ``f.read().strip()``).
#   ~/.alibabacloud/credentials: INI as configparser reads it, the way Alibaba Cloud's credentials SDK does
#     (alibabacloud_credentials provider/profile.py ``_load_ini``: an inline ``#`` comment is cut from a value;
#     a duplicated profile or option is an error), option ``dashscope_api_key`` (cinience/alicloud-skills).
# A place that is absent, or a profile that has no ``dashscope_api_key``, is simply not a key: the next is tried;
# but a profile named by ``$ALIBABA_CLOUD_PROFILE``/``$ALICLOUD_PROFILE`` is an explicit choice: with no key there,
# ``~/.dashscope/api_key`` is not read (no key, naming the profile), as the user's choice is not overridden.

KEY_FILE_HINT = "Put the key alone in the file (sk-...), or delete the file."
CREDENTIALS_HINT = (
    "Each line is a [profile] header, name = value, or a # comment; e.g. [default] then dashscope_api_key = sk-..."
)
REPEAT_HINT = "Keep one of them: configparser, as Alibaba Cloud's SDKs use it, refuses a repeat."
DOTENV_HINT = "Write KEY=VALUE on each line (quotes and `export` allowed), or start the line with # to comment it out."
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,63}")


@dataclass(frozen=True)
class KeyFound:
    key: str
    source: str  # where it came from, for `qwenvl config` style diagnostics (never the key itself)

    def __repr__(self) -> str:
        return f"KeyFound(source={self.source!r})"


def _read_config_text(path: Path, what: str) -> str | None:
    """The text of a configuration file qwenvl reads on the user's behalf, its BOM removed; None when there is no
    such file. MediaError (exit 3) for a folder, a pipe, a file that cannot be read; UsageError (exit 2) for bytes
    that are not UTF-8 text."""
    from qwenvl.media.sources import read_regular_text  # media imports this module's callers

    try:
        path.lstat()
    except (FileNotFoundError, NotADirectoryError):
        return None
    except (OSError, ValueError):  # a folder that cannot be searched, a NUL: read_regular_text says which
        pass
    try:
        text = read_regular_text(path, what=what)
    except UsageError as exc:  # not UTF-8: a binary file, or another encoding
        raise UsageError(exc.message, hint=f"Save {path} as UTF-8 text.") from None
    return text.removeprefix("\ufeff")


def checked_key(raw: str, source: str) -> str:
    """``raw`` stripped, when it can be a key: printable ASCII with no space inside (it is sent in an HTTP header);
    UsageError naming ``source`` (never the key) otherwise."""
    key = raw.strip()
    bad = next((c for c in key if not (c.isascii() and c.isprintable()) or c.isspace()), None)
    if bad is not None:
        what = "a line break" if bad in "\r\n" else "a space" if bad.isspace() else f"the character {bad!r}"
        raise UsageError(
            f"{source}: the key holds {what}, which no key has",
            hint="A DashScope key is one word (sk-...): check for a pasted space, line break or quote.",
        )
    return key


def load_dotenv_files(cwd: Path | None = None) -> dict[str, str]:
    """Values from ``.env`` in the working folder, then the repository root (the first file wins), read as
    python-dotenv reads them (``export``, quotes, comments, CRLF; a BOM is dropped). UsageError naming the file and
    the line for a line python-dotenv cannot parse (it would skip it: the key may be on it) or a file that is not
    UTF-8; MediaError when ``.env`` is a folder or cannot be read."""
    import io

    from dotenv import dotenv_values
    from dotenv.parser import parse_stream

    cwd = Path.cwd() if cwd is None else cwd
    found: dict[str, str] = {}
    candidates = [cwd / ".env"]
    for parent in [cwd, *cwd.parents]:
        if (parent / ".git").exists():
            candidates.append(parent / ".env")
            break
    for path in dict.fromkeys(candidates):
        text = _read_config_text(path, ".env file")
        if text is None:
            continue
        for binding in parse_stream(io.StringIO(text)):
            if binding.error:
                start = _NAME.match(binding.original.string.strip().removeprefix("export").strip())
                starts = f" (it starts {start.group()!r})" if start else ""  # never the rest: a key may be in it
                raise UsageError(
                    f"{path} line {binding.original.line}: not KEY=VALUE{starts}",
                    hint=DOTENV_HINT,
                )
        for k, v in dotenv_values(stream=io.StringIO(text), interpolate=True).items():
            if v is not None:
                found.setdefault(k, v)
    return found


def find_api_key(
    explicit: str | None = None,
    *,
    env: Mapping[str, str] | None = None,
    home: Path | None = None,
    cwd: Path | None = None,
) -> KeyFound | None:
    """The DashScope key and where it came from, trying the places in the module's order; None when none holds one.

    Raises UsageError (exit 2) naming the place, the line and what is wrong when a place that is read cannot be
    used: a key with a space, line break or non-ASCII character in it; a ``.env`` line python-dotenv cannot parse;
    a credentials file that is not INI (``[default`` with no ``]``, a line that is neither a header nor
    ``name = value``, a profile or option given twice) or whose profile has an empty ``dashscope_api_key``; a key
    file that is empty or holds more than one line; a file that is not UTF-8. Raises MediaError (exit 3) when
    ``$DASHSCOPE_API_KEY_FILE_PATH`` names a file that is missing, a folder or unreadable, or another place is a
    folder or unreadable. Places after the one that holds a key are not read, nor those after a credentials
    profile named by ``$ALIBABA_CLOUD_PROFILE`` (or ``$ALICLOUD_PROFILE``) that has none (None: no key)."""
    if explicit:
        return KeyFound(checked_key(explicit, "the api_key argument"), "argument")
    home = qenv.user_home(env) if home is None else home
    key = qenv.dashscope_api_key(env)
    if key:
        return KeyFound(checked_key(key, "$DASHSCOPE_API_KEY"), "environment DASHSCOPE_API_KEY")
    dotenv = load_dotenv_files(cwd)
    key = qenv.dashscope_api_key(dotenv)  # .env files follow the environment's rules
    if key:
        return KeyFound(checked_key(key, "DASHSCOPE_API_KEY in .env"), ".env DASHSCOPE_API_KEY")
    key_file = qenv.dashscope_api_key_file(env) or qenv.dashscope_api_key_file(dotenv)
    if key_file:
        path = Path(key_file.strip()).expanduser()
        key = _read_key_file(path, named_by="DASHSCOPE_API_KEY_FILE_PATH")
        if key:
            return KeyFound(key, f"file {key_file}")
    profile = qenv.credentials_profile(env)
    key = _read_credentials(home / ".alibabacloud" / "credentials", profile)
    if key:
        return KeyFound(key, f"~/.alibabacloud/credentials [{profile}]")
    if qenv.credentials_profile_variable(env) is not None:
        return None  # a profile asked for by name that has no key is "no key", never another place's key
    key = _read_key_file(home / ".dashscope" / "api_key")
    if key:
        return KeyFound(key, "~/.dashscope/api_key")
    return None


def require_api_key(explicit: str | None = None, *, endpoint: str | None = None, **kw: Any) -> KeyFound:
    """The key ``find_api_key`` finds (same arguments, same errors for a place that cannot be used). Raises
    MissingAPIKeyError (exit 4) when there is none; when ``$ALIBABA_CLOUD_PROFILE`` (or ``$ALICLOUD_PROFILE``)
    names a profile, the message says that profile has no key. ``endpoint``: the URL the key is for; when it is
    not DashScope's, the hint first says that a server taking no key accepts any (``other_endpoint_key_hint``):
    the one hint of the library, the CLI and ``qwenvl config``."""
    found = find_api_key(explicit, **kw)
    if found is None:
        message, hint = no_key_words(kw.get("env"))
        elsewhere = other_endpoint_key_hint(endpoint) if endpoint else None
        raise MissingAPIKeyError(message, hint=f"{elsewhere} Otherwise: {hint}" if elsewhere else hint)
    return found


def other_endpoint_key_hint(endpoint: str) -> str | None:
    """For an endpoint that is not DashScope's own (``needs_dashscope_key``: e.g. a loopback ``qwenvl serve
    --no-auth``): that such a server takes any key, e.g. ``DASHSCOPE_API_KEY=local``; None for DashScope's."""
    if needs_dashscope_key(endpoint):
        return None
    host = urlsplit(endpoint).netloc or endpoint
    return (
        f"{host} is not a DashScope endpoint: if it takes no key (a `qwenvl serve --no-auth`), any key will do, "
        "e.g. DASHSCOPE_API_KEY=local."
    )


def no_key_words(env: Mapping[str, str] | None) -> tuple[str, str]:
    """(message, hint) for no key: the credentials profile asked for (``$ALIBABA_CLOUD_PROFILE``), if not
    ``default``; else the places to put one. The one wording of the library, the CLI and ``qwenvl config``."""
    profile, variable = qenv.credentials_profile(env), qenv.credentials_profile_variable(env)
    if variable is not None:  # the profile asked for, not the generic [default] advice
        return (
            f"no DashScope API key found: profile [{profile}] ({variable}) of ~/.alibabacloud/credentials "
            "has no dashscope_api_key",
            f"Put dashscope_api_key = sk-... under [{profile}] in ~/.alibabacloud/credentials, or unset "
            f"{variable} to use [default]; or set DASHSCOPE_API_KEY=sk-...",
        )
    return "no DashScope API key found", KEY_HELP


def _read_key_file(path: Path, *, named_by: str | None = None) -> str | None:
    """The key in a key file: the whole file stripped (as the official SDK reads it). None when the file does not
    exist, unless a variable (``named_by``) names it: then MediaError, as for a folder or an unreadable file;
    UsageError when it is empty, holds more than one line, or what it holds cannot be a key."""
    from qwenvl.errors import MediaError
    from qwenvl.media.sources import check_regular

    label = f"{path} ({named_by})" if named_by else str(path)
    try:
        if named_by:
            check_regular(path, what="key file")  # missing too: the variable asks for this file
        text = _read_config_text(path, "key file")
    except MediaError as exc:
        raise MediaError(
            f"{named_by}: {exc.raw_message}" if named_by else exc.raw_message, source=exc.source, hint=exc.raw_hint
        ) from None
    if text is None:
        return None
    lines = [n for n, line in enumerate(text.strip().splitlines(), 1) if line.strip()]
    if not lines:
        raise UsageError(f"{label} is empty: it holds no key", hint=KEY_FILE_HINT)
    if len(lines) > 1:
        raise UsageError(
            f"{label} holds {len(lines)} lines; a key file holds the key alone (line {lines[1]} is more)",
            hint=KEY_FILE_HINT,
        )
    return checked_key(text, label)


def _read_credentials(path: Path, profile: str) -> str | None:
    """``dashscope_api_key`` of ``[profile]`` in the INI file ``path`` (quotes and an inline ``#`` comment
    removed); None when the file, the profile or the option is absent. UsageError naming the line for a file
    configparser cannot read (as Alibaba Cloud's SDKs would fail on it), or an empty value."""
    text = _read_config_text(path, "credentials file")
    if text is None:
        return None
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read_string(text, source=str(path))
    except configparser.Error as exc:
        fault = _ini_fault(exc)
        repeated = "a second time" in fault
        raise UsageError(f"{path} {fault}", hint=REPEAT_HINT if repeated else CREDENTIALS_HINT) from None
    if not parser.has_option(profile, "dashscope_api_key"):
        return None
    value = parser.get(profile, "dashscope_api_key").split("#")[0].strip().strip("'\"")
    if not value:
        raise UsageError(f"{path} [{profile}]: dashscope_api_key is empty", hint="Give it the key: sk-...")
    return checked_key(value, f"{path} [{profile}] dashscope_api_key")


def _ini_fault(exc: configparser.Error) -> str:
    """What configparser found wrong, as "line N: ..." (never a value: it may hold a key)."""
    if isinstance(exc, configparser.MissingSectionHeaderError):
        line = exc.line.strip()
        if line.startswith("[") and "]" not in line:
            name = _NAME.match(line[1:].strip())
            shown = f" [{name.group()}" if name else ""
            return f"line {exc.lineno}: the profile header{shown} has no closing ]"
        return f"line {exc.lineno}: a setting before any [profile] header"
    if isinstance(exc, configparser.DuplicateSectionError):
        return f"line {exc.lineno}: profile [{exc.section}] is given a second time"
    if isinstance(exc, configparser.DuplicateOptionError):
        return f"line {exc.lineno}: {exc.option} is given a second time in [{exc.section}]"
    if isinstance(exc, configparser.ParsingError) and exc.errors:
        lineno, raw = exc.errors[0][0], str(exc.errors[0][1]).strip("'\"")
        if raw.strip().startswith("["):
            return f"line {lineno}: a profile header with no closing ]"
        return f"line {lineno}: neither a [profile] header nor name = value"
    return f"cannot be read as INI ({type(exc).__name__})"
