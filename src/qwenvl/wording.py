"""Messages and hints in the words of the surface that shows them: one home for each message, the words chosen
by the caller.

The library writes each error once, naming what to change by its CLI flag (``--max-tokens``), sometimes beside
the library's name for it (``--min-pixels / min_pixels``). A surface says how it names each flag:

- the CLI (``qwenvl.cli.common.fit_hint`` for hints, ``fit_line`` for messages, warnings and notes: every line
  a verb prints that the library wrote): a verb keeps the flags it has; one without a flag gets the request key it
  sets (``analyze``, ``batch --requests``: ``"fetch_urls": true``, as its JSON writes it) or the environment
  variable that stands for it (``QWENVL_REGION=cn``);
- the library (``library_hint``, what ``QwenVLError.hint`` returns): a keyword argument or request field
  (``timeout_s``, ``base_url``, ``region='cn'``) where a flag stands for one; ``raw_hint`` keeps the flags;
- ``qwenvl serve`` (``api_surface``): an HTTP client gets the request field in its protocol's spelling
  (``top_k`` in an OpenAI-compatible body, ``parameters.top_k`` in a native one); a flag with no field (the
  server's ``--engine``, ``--base-url``, ``--timeout``), a qwenvl command and an environment variable name
  nothing the client can change, so a hint sentence naming one is left out.

``fit_hint`` keeps what applies: a parenthesis of flags the surface lacks is left out, and so is an "or ..."
clause or a sentence that still names one (no hint when none is left), or one that asks for a flag the user
already gave. ``fit_message`` changes only the words of a message, never drops any of it. Shell commands in
backticks are left as they are.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import get_args

from qwenvl.config import BACKENDS, DEVICES, ENGINES, FAMILIES, PROTOCOLS, REGIONS
from qwenvl.types import FIELD_FLAGS, GENERATION_FIELDS, Detail

FLAG = re.compile(r"(?<![\w-])--[a-z][a-z-]*")
# "--no-resize / prepare=False": a flag beside the library's name (never part of a flag: "--no-resize / --high-res")
_PAIR = re.compile(
    r"(--[a-z][a-z-]*) / ((?<![\w-])[A-Za-z_]\w*(?:\.\w+)*(?:=\w+)?)(?![\w-])"
    r"|((?<![\w-])[A-Za-z_]\w*(?:\.\w+)*(?:=\w+)?) / (--[a-z][a-z-]*)"
)
_FLAGS_ONLY = re.compile(r" ?\((?:--[a-z][a-z-]*(?:, )?)+\)")  # "(--timeout)", "(--base-url, --region)"
# "(extra, --param)": names beside a flag, restating what the sentence says
_NAMES_WITH_FLAG = re.compile(r" ?\((?:[A-Za-z_][\w.]*, )+--[a-z][a-z-]*\)")
# "(vl_high_resolution_images, vl_high_resolution_images)": a list of names, once a flag became its field
_NAME_LIST = re.compile(r"\(((?:[A-Za-z_][\w.]*(?:=\w+)?, )+[A-Za-z_][\w.]*(?:=\w+)?)\)")
_VARIABLE = re.compile(r"\b(?:QWENVL|DASHSCOPE)_[A-Z_]+\b")  # qwenvl's environment (qwenvl.env.VARIABLES)
# "(see `qwenvl models`)", "`qwenvl models` lists ...": a qwenvl command
_COMMAND = re.compile(r"`qwenvl\b[^`]*`")
_SEE_COMMAND = re.compile(r" ?\((?:see )?`qwenvl\b[^`]*`\)")
_SENTENCE = re.compile(r"(?<=;)\s+|(?<=[.!?])\s+(?=[A-Z])")  # not after "e.g." in a sentence
_OR_CLAUSE = re.compile(r",? or [^,.;:()`]*--[a-z][^,.;:()`]*")
# '--prompt "..."': a flag with a quoted value
_QUOTED_VALUE = re.compile(r'(?<![\w-])(--[a-z][a-z-]*) ("[^"]*")')
# "--param repetition_penalty=1.1": a pass-through parameter with its value
_PARAM_VALUE = re.compile(r"(?<![\w-])--param ([A-Za-z_]\w*)=")
# The values a flag takes, written after it in a hint (``--region cn``): a surface may name the pair together.
FLAG_VALUES: dict[str, tuple[str, ...]] = {
    "--region": tuple(REGIONS),
    "--protocol": PROTOCOLS,
    "--backend": BACKENDS,
    "--engine": ENGINES,
    "--family": FAMILIES,
    "--device": DEVICES,
    "--detail": get_args(Detail),
    "--mode": ("realtime", "batch-api"),  # qwenvl.batch.Batch's modes
    "--video-as": ("frames", "file"),  # Request.video_as
    "--upload": ("auto", "inline", "oss"),  # Request.upload
}
# The Request field a flag sets where it is not the flag's name (``types.FIELD_FLAGS``: --param -> extra, --timeout
# -> timeout_s); not --no-resize (its field takes the opposite, prepare=False).
FLAG_FIELDS = {flag: name for name, flag in FIELD_FLAGS.items() if flag and flag != "--no-resize"}
# "give it with --base-url", "or give --model", "set --api-key": a flag asked for bare (no value after it); not
# "give another --base-url", "use a higher --max-tokens", which ask for a change of what was given
_ASKS_FOR = re.compile(
    r"(?i)\b(?:give|with|use|pass|set)\s+"
    r"(?:(?!(?:another|other|different|new|higher|lower|larger|smaller|more|less)\b)[a-z]+\s+){0,3}?"
    r"(--[a-z][a-z-]*)(?=\s*(?:[.;,)]|$))"
)


def field_of(flag: str) -> str:
    """The Request field ``flag`` sets: ``FLAG_FIELDS``, else the flag's name with underscores (``--max-tokens``
    -> ``max_tokens``; not necessarily a field). Raises nothing."""
    return FLAG_FIELDS.get(flag, flag[2:].replace("-", "_"))


@dataclass(frozen=True)
class Surface:
    """How one surface names a flag. ``name(flag)``: its word for the flag (the flag itself where the surface has
    it), None when it has none. ``pair(flag, other)``: its word for ``--flag / other``. ``with_value(flag,
    value)``: its words for ``--region cn``, or None to name the flag alone. ``keeps``: the flags it shows as
    flags (a sentence naming another flag is not for it). ``given``: flags the user gave (never asked for
    again). ``restate``: a parenthesis of flags whose words it has is kept (else always left out: it restates
    what the sentence says)."""

    name: Callable[[str], str | None]
    pair: Callable[[str, str], str] | None = None
    with_value: Callable[[str, str], str | None] | None = None
    param: Callable[[str], str] | None = None  # ``--param KEY=`` -> the surface's words for KEY
    # ``--prompt "..."``: a flag with a quoted value -> the surface's words for both (None: the flag alone is worded)
    quoted: Callable[[str, str], str | None] | None = None
    keeps: Collection[str] = ()
    given: Collection[str] = ()
    restate: bool = True
    commands: bool = True  # a qwenvl command (in backticks) is something its user can run
    variables: bool = True  # an environment variable (QWENVL_DEBUG=1) is something its user can set
    # a shell command (in backticks: `pip install ...`, `magick in.png ...`) is something its user can run where the
    # answer is made; else a hint sentence with one is left out (an "(e.g. `...`)" beside advice only drops itself)
    shell: bool = True
    # words its user knows for others the library wrote: a model's reference on the server (a folder's path) -> the
    # name its user sends; in messages and hints alike, the longest first
    names: Mapping[str, str] = field(default_factory=dict)
    # the models its user can choose (None: any): a hint clause or sentence proposing another known model (qwenvl's
    # model table) is left out
    models: Collection[str] | None = None
    # a request's media field as a hint names it (``(in a request: "video")``: the library's Request field) -> the
    # surface's own (compat's content part ``video_url``); None: as written
    media_field: Callable[[str], str] | None = None


_IN_REQUEST = re.compile(r'\(in a request: "(\w+)"\)')


def model_references(ref: str, name: str) -> dict[str, str]:
    """The spellings of a local model's reference (``ref``: a folder's path, as given, without its trailing slash,
    absolute, resolved) that a message or a result may carry -> ``name``, the name its user knows it by (the
    served name): a ``Surface.names`` for ``qwenvl serve`` and ``qwenvl mcp``. Raises nothing."""
    from pathlib import Path

    refs = {ref, ref.rstrip("/")}
    try:
        path = Path(ref).expanduser()
        refs |= {str(path), str(path.absolute()), str(path.resolve())}
    except (OSError, ValueError, RuntimeError):
        pass
    return {r: name for r in refs if r and r != name and len(r) > 1}


def _words(text: str, surface: Surface) -> str:
    """``text`` (no backticks) with each flag in the surface's words."""

    def pair(m: re.Match[str]) -> str:
        flag, other = (m[1], m[2]) if m[1] else (m[4], m[3])
        if surface.pair is not None:
            return surface.pair(flag, other)
        return surface.name(flag) or flag

    def parens(m: re.Match[str]) -> str:
        if surface.restate and all(surface.name(f) for f in FLAG.findall(m[0])):
            return m[0]
        return ""

    if surface.param is not None:
        param = surface.param
        text = _PARAM_VALUE.sub(lambda m: param(m[1]) + "=", text)
    if surface.quoted is not None:
        quoted = surface.quoted
        text = _QUOTED_VALUE.sub(lambda m: quoted(m[1], m[2]) or m[0], text)
    text = _PAIR.sub(pair, text)
    text = _FLAGS_ONLY.sub(parens, text)
    if not surface.restate:
        text = _NAMES_WITH_FLAG.sub("", text)
    if surface.with_value is not None:
        with_value = surface.with_value
        for flag, values in FLAG_VALUES.items():
            alternatives = "|".join(re.escape(v) for v in sorted(values, key=len, reverse=True))
            text = re.sub(
                rf"(?<![\w-])({re.escape(flag)}) ({alternatives})(?![\w-]|\.\w)",
                lambda m: with_value(m[1], m[2]) or m[0],
                text,
            )
    text = FLAG.sub(lambda m: surface.name(m[0]) or m[0], text)
    return _NAME_LIST.sub(_once, text)


def _once(m: re.Match[str]) -> str:
    """A parenthesis of names with each said once (``parameters.x`` stands for ``x`` too)."""
    names = m[1].split(", ")
    kept = [n for i, n in enumerate(names) if n not in names[:i] and f"parameters.{n}" not in names]
    return f"({', '.join(kept)})"


def _split_quoted(text: str) -> tuple[list[str], list[str]]:
    parts = re.split(r"(`[^`]*`)", text)  # odd parts are in backticks: kept as they are, never split
    return parts, parts[1::2]


# "`pip install torch==2.14.1`", "`magick in.png -resize 50% out.png`": a command line in backticks (a lower-case
# program name and its arguments, or a pipe); not a value or a name (`json`, `data:`)
_SHELL = re.compile(r"`(?:[a-z][\w.+-]*\s[^`]*|\|[^`]*)`|\bpip install\b")
# "(e.g. `magick ...`)", ", e.g. `...`": an example command beside advice that stands without it
_SHELL_EXAMPLE = re.compile(
    r" ?\((?:e\.g\.|for example|say)?,? ?`[^`]*\s[^`]*`\)|,? (?:e\.g\.|for example),? `[^`]*\s[^`]*`"
)
# ", or use qwen3-vl-plus or qwen-vl-max": a clause proposing something else
_OR_ANY = re.compile(r",? or (?:use |try |switch to )[^,.;:()`]*")


def _rename(text: str, surface: Surface) -> str:
    """``text`` with each of ``surface.names`` replaced where it stands whole or begins a path (not inside a longer
    name)."""
    if surface.media_field is not None:
        media_field = surface.media_field
        text = _IN_REQUEST.sub(lambda m: f'(in a request: "{media_field(m[1])}")', text)
    for name in sorted(surface.names, key=len, reverse=True):
        if name:
            replacement = surface.names[name].replace("\\", "\\\\")  # a literal, not a template
            text = re.sub(rf"(?<![\w./-]){re.escape(name)}(?![\w-])", replacement, text)
    return text


def _other_models(text: str, surface: Surface) -> bool:
    """Whether ``text`` proposes a known model (``qwenvl.models.MODELS``) its user cannot choose."""
    if surface.models is None:
        return False
    from qwenvl.models import MODELS

    words = set(re.findall(r"[\w.-]+", text))
    return any(name in words and name not in surface.models for name in MODELS)


def fit_message(message: str, surface: Surface) -> str:
    """``message`` with each flag in ``surface``'s words and each of its ``names`` replaced; nothing dropped (a flag
    it has no word for stays) but a parenthesis that only restates names in CLI words. Raises nothing."""
    message = _rename(message, surface)
    if not surface.commands:
        message = _SEE_COMMAND.sub("", message)
    parts, _ = _split_quoted(message)
    return "".join(p if i % 2 else _words(p, surface) for i, p in enumerate(parts))


def fit_hint(hint: str, surface: Surface) -> str:
    """``hint`` in ``surface``'s words, keeping only what applies to it (see the module doc). Returns "" when
    nothing of the hint applies. Raises nothing."""
    hint = _rename(hint, surface)
    if not surface.commands:
        hint = _SEE_COMMAND.sub("", hint)
    if not surface.shell:
        hint = _SHELL_EXAMPLE.sub("", hint)
    if surface.models is not None:
        hint = _OR_ANY.sub(lambda m: "" if _other_models(m[0], surface) else m[0], hint)
    parts, quoted = _split_quoted(hint)

    def foreign(text: str) -> bool:  # names a flag the surface lacks, or asks for one the user already gave
        spans = [quoted[int(i)] for i in re.findall(r"\0(\d+)\0", text)]
        if not surface.commands and any(_COMMAND.fullmatch(q) for q in spans):
            return True
        if not surface.shell and (any(_SHELL.fullmatch(q) for q in spans) or _SHELL.search(text)):
            return True
        if _other_models(text, surface):
            return True
        bare = re.sub(r"`[^`]*`", "", text)
        if not surface.variables and _VARIABLE.search(bare):
            return True
        return any(f not in surface.keeps for f in FLAG.findall(bare)) or any(
            m[1] in surface.given for m in _ASKS_FOR.finditer(bare)
        )

    fitted = "".join(f"\0{i // 2}\0" if i % 2 else _words(p, surface) for i, p in enumerate(parts))
    fitted = _OR_CLAUSE.sub(lambda m: "" if foreign(m[0]) else m[0], fitted)  # ", or raise --max-retries"
    sentences = _SENTENCE.split(fitted)
    kept = " ".join(s for s in sentences if not foreign(s))
    if sentences and foreign(sentences[0]):  # the hint now starts mid-way: as a sentence
        kept = kept[:1].upper() + kept[1:]
    kept = re.sub(r"[;,]\s*$", ".", kept.rstrip())  # the clause after it was dropped: "Use top_k;" -> "Use top_k."
    return re.sub(r"\0(\d+)\0", lambda m: quoted[int(m[1])], kept).strip()


# --- the API of `qwenvl serve` ------------------------------------------------------------------------------

# Request fields a wire body sets under the same name (``protocols.inbound``): top level in an OpenAI-compatible
# body, inside ``parameters`` in a native one.
WIRE_PARAMETERS = (*GENERATION_FIELDS, "vl_high_resolution_images")
# Flags whose field is a key of an image or video part, in both protocols (beside ``image_url`` / in the item).
_PART_KEYS = {"--min-pixels": "min_pixels", "--max-pixels": "max_pixels", "--fps": "fps"}
# Flags whose request field is another one on the wire.
_WIRE_SAME = {"--model": "model", "--json-mode": "response_format", "--schema": "response_format"}


def api_name(flag: str, protocol: str) -> str | None:
    """The field of a request in ``protocol`` (``compat`` or ``native``, as ``qwenvl serve`` speaks them) that
    does what ``flag`` does: ``--top-k`` -> ``top_k`` (compat) or ``parameters.top_k`` (native); a media part's
    ``max_pixels``; ``model``; None for a flag no request field stands for (``--engine``, ``--timeout``, the
    server's own options). Raises nothing."""
    if flag in _WIRE_SAME:
        return _WIRE_SAME[flag]
    if flag in _PART_KEYS:
        return _PART_KEYS[flag]
    name = field_of(flag)
    if name in WIRE_PARAMETERS:
        return f"parameters.{name}" if protocol == "native" else name
    return None


def api_surface(
    protocol: str, names: Mapping[str, str] | None = None, models: Collection[str] | None = None
) -> Surface:
    """The words of ``qwenvl serve``'s answers to a client speaking ``protocol`` (``compat`` or ``native``):
    request fields (``api_name``), a pass-through parameter as a field of the body (compat) or of
    ``parameters`` (native); never a flag, a qwenvl command, an environment variable or a shell command (install
    advice, a tool to run: the server's, not the client's). ``names``: the server's model references (a folder's
    path) -> the name the client sent; ``models``: the models this server serves (None: any, a gateway), so a hint
    proposing another is left out."""

    def param(key: str) -> str:
        return f"parameters.{key}" if protocol == "native" else key

    def pair(flag: str, other: str) -> str:  # "--thinking / enable_thinking=True" -> "enable_thinking=true"
        name = api_name(flag, protocol)
        if name is None:
            return flag
        _, eq, value = other.partition("=")
        return f"{name}={value.lower() if value in ('True', 'False') else value}" if eq else name

    return Surface(
        name=lambda flag: api_name(flag, protocol),
        pair=pair,
        param=param,
        restate=False,
        commands=False,
        variables=False,
        shell=False,
        names=dict(names or {}),
        models=models,
        media_field=lambda kind: f"{kind}_url" if protocol == "compat" and kind in ("image", "video") else kind,
    )


# --- the library ------------------------------------------------------------------------------------------------

# Keyword arguments of ``Client`` / ``AsyncClient`` that a CLI flag stands for (the flag's name with underscores,
# or ``FLAG_FIELDS``: --timeout -> timeout_s); the rest of the library's names are Request fields.
CLIENT_ARGUMENTS = frozenset(
    {
        "api_key",
        "protocol",
        "region",
        "base_url",
        "timeout_s",
        "max_retries",
        "retry_backoff_s",
        "backend",
        "engine",
        "family",
        "device",
        "dtype",
        "attn_implementation",
    }
)


# What a caller of the library writes for a CLI flag that is no keyword of its own name: switches and arguments of
# the library's batch (``qwenvl.batch.Batch``), and a field's value that an off switch stands for.
LIBRARY_SWITCHES = {
    "--fresh": "fresh=True",
    "--force": "overwrite=True",  # an output over a file qwenvl did not write (qwenvl.outputs.check_outputs)
    "--retry-errors": "retry_errors=True",
    "--mode": "mode",
    "--no-high-res": "vl_high_resolution_images=False",  # a Request field's value, as --no-resize is prepare=False
    "--output": "output",  # Batch's output file, and its other arguments a flag stands for
    "--csv": "csv",
    "--concurrency": "concurrency",
    "--rpm": "rpm",
    "--tpm": "tpm",
    "--poll-interval": "poll_interval_s",
    "--no-wait": "wait=False",
    "--format": "format",  # qwenvl.tasks.ocr's
}
# The CLI's short flags a message or hint may name (``-o another.jsonl``), by the long flag each stands for: the
# library says them as it says that flag (``output='another.jsonl'``).
SHORT_FLAGS = {"-o": "--output", "-p": "--prompt"}
_SHORT = re.compile(r"(?<![\w-])(-[a-zA-Z])(?=\s)")
# "--model Qwen/Qwen2.5-VL-3B-Instruct", "-o another.jsonl", '-p "..."', "--pages 2-9": a flag with its value (a
# quoted string, or a token with a digit, a dot, a slash: never a word of the sentence, "raise --max-tokens for more")
_FLAG_VALUE = re.compile(
    r"(?<![\w-])(--[a-z][a-z-]*) "
    r"(\"[^\"]*\"|'[^']*'|(?=[\w./:~,-]*[\d./:~])(?=[\w./:~,-]*\w)[\w./:~,-]*[\w/-])(?![\w-])"
)
# "(prompt=\"...\", prompt=\"...\")": a parenthesis saying one thing twice once the flag became the keyword
_PARENS = re.compile(r"\(([^()]*)\)")
# The key: what a library caller passes (the variable is read too, so a hint naming it stays true beside it).
_KEY_VARIABLE = re.compile(r"\bDASHSCOPE_API_KEY\b(?!_)")
_KEY_ARGUMENT = re.compile(r"(?<![\w/])api_key\b")  # the argument, not ~/.dashscope/api_key


def library_name(flag: str) -> str | None:
    """The keyword argument or request field of the library that does what ``flag`` does (``--timeout`` ->
    ``timeout_s``, ``--max-tokens`` -> ``max_tokens``, ``--param`` -> ``extra``, ``--fresh`` -> ``fresh=True``),
    or None for a flag that only the CLI has (``--yes``...). Raises nothing."""
    from qwenvl.types import Request

    if flag in LIBRARY_SWITCHES:
        return LIBRARY_SWITCHES[flag]
    name = field_of(flag)
    return name if name in CLIENT_ARGUMENTS or name in Request.model_fields else None


def _library_surface() -> Surface:
    def pair(flag: str, other: str) -> str:  # "--no-resize / prepare=False": the library's own name
        return other

    def with_value(flag: str, value: str) -> str | None:  # "--region cn" -> "region='cn'"
        said = library_name(flag)
        return f"{said}={value!r}" if said else None

    return Surface(name=library_name, pair=pair, with_value=with_value, param=lambda key: f"extra {key}")


def library_message(message: str) -> str:
    """``message`` (written in CLI flags) in the library's words (``QwenVLError.message`` and ``str()``): each flag
    the library has a name for becomes it as ``library_hint`` does (``--pages`` -> ``pages``, ``--pages 2-9`` ->
    ``pages='2-9'``, ``--param`` -> ``extra``), a name then said twice once (``max_pixels (--max-pixels)`` ->
    ``max_pixels``); a flag only the CLI has stays, and nothing is left out (``fit_message``). Raises nothing."""
    return _library_words(message, once=True)


def _library_words(text: str, *, once: bool = False) -> str:
    """``text`` with each flag (long or ``SHORT_FLAGS``) in the library's words, a flag's value as the keyword's
    (``--pages 2-9`` -> ``pages='2-9'``, ``-o out.jsonl`` -> ``output='out.jsonl'``), a parenthesis saying nothing
    twice; ``once``: a name beside itself said once too."""
    parts, _ = _split_quoted(text)
    parts = [p if i % 2 else _SHORT.sub(lambda m: SHORT_FLAGS.get(m[1], m[1]), p) for i, p in enumerate(parts)]
    if not any(FLAG.search(p) for p in parts[::2]):
        return text
    parts = [p if i % 2 else _PARAM_KEY.sub(_extra_entry, p) for i, p in enumerate(parts)]
    parts = [p if i % 2 else _FLAG_VALUE.sub(_keyword_value, p) for i, p in enumerate(parts)]
    said = fit_message("".join(parts), _library_surface())
    if once:  # a message: "max_pixels (max_pixels)" -> "max_pixels"; a hint keeps "the region (region)"
        said = _SAID_TWICE.sub(r"\1", said)
    return _PARENS.sub(_said_once, said)


# "--param enable_search", "--param repetition_penalty=1.1", "--param top_k=...": a pass-through parameter, with its
# value when one is written (a number, ``...``, a word or a quoted string)
_PARAM_KEY = re.compile(
    r'(?<![\w-])--param ([A-Za-z_]\w*)(?:=(\.\.\.|-?\d+(?:\.\d+)?(?!\w|\.\d)|"[^"]*"|[\w-]+))?(?![\w=])'
)


def _extra_entry(m: re.Match[str]) -> str:
    """``--param KEY[=VALUE]`` as the library's keyword argument for it, valid Python for the call:
    ``extra={"KEY": VALUE}`` (``...`` for a value not written)."""
    key, value = m[1], m[2]
    if value is None or value == "..." or re.fullmatch(r"-?\d+(?:\.\d+)?", value) or value[0] == '"':
        said = value or "..."
    else:
        said = {"true": "True", "false": "False", "null": "None"}.get(value) or json.dumps(value)
    return f'extra={{"{key}": {said}}}'


def _keyword_value(m: re.Match[str]) -> str:
    """``--flag VALUE`` as the library's keyword with it (``model='Qwen/...'``, ``max_tokens=4096``); as it was
    when the library has no name for the flag, or the flag takes an enumerated value (``FLAG_VALUES``)."""
    flag, value = m[1], m[2]
    name = library_name(flag)
    if name is None or "=" in name or flag in FLAG_VALUES:
        return m[0]
    if value[0] in "\"'" or (re.fullmatch(r"-?\d+(?:\.\d+)?", value) and _numeric(name)):
        return f"{name}={value}"
    return f"{name}={value!r}"


def _numeric(name: str) -> bool:
    """Whether the library's ``name`` (a Request field, or a keyword of ``Client`` or ``Batch``) takes a number."""
    import inspect

    from qwenvl.batch.runner import Batch
    from qwenvl.client import Client
    from qwenvl.types import Request

    info = Request.model_fields.get(name)
    if info is not None:
        return bool(re.search(r"\b(?:int|float)\b", str(info.annotation)))
    params = {**inspect.signature(Batch.__init__).parameters, **inspect.signature(Client.__init__).parameters}
    return name in params and bool(re.search(r"\b(?:int|float)\b", str(params[name].annotation)))


def _said_once(m: re.Match[str]) -> str:
    items = m[1].split(", ")
    return f"({', '.join(dict.fromkeys(items))})" if len(items) > 1 else m[0]


# "max_pixels (max_pixels)", "extra (extra)": a name beside itself once a flag became it
_SAID_TWICE = re.compile(r"(?<![\w.-])([A-Za-z_][\w.]*(?:=\w+)?) \(\1\)")


def library_hint(hint: str) -> str:
    """``hint`` (written in CLI flags) in the library's words (``QwenVLError.hint``): ``--timeout`` ->
    ``timeout_s``, ``--base-url`` -> ``base_url``, ``--region cn`` -> ``region='cn'``, ``--no-resize /
    prepare=False`` -> ``prepare=False``, ``--param KEY=`` -> ``extra KEY=``, ``--fresh`` -> ``fresh=True``;
    a hint naming ``DASHSCOPE_API_KEY`` also says the key can be passed as ``api_key``; a flag only the CLI has
    (``--yes``) stays as it is, and nothing is left out (``fit_message``). Raises nothing."""
    said = _library_words(hint)
    if _KEY_VARIABLE.search(said) and not _KEY_ARGUMENT.search(said):  # the variable is read, the argument first
        said = f"{said.rstrip()} In Python the key can also be passed as Client(api_key=...)."
    return said
