"""Video events: a timeline ``[{start, end, event}]`` with HH:mm:ss times, as in the seed docs' example
(``{"events": [{"start_time": "00:00:00", "end_time": "00:00:05", "event": "..."}]}``).

    t = qwenvl.tasks.events(client, "clip.mp4")
    for e in t.events:
        print(e.start, e.end, e.event)          # "00:00:00" "00:00:05" "A person carries a box ..."
    t.duration, t.warnings, t.frame_times

The answer is asked for with a JSON Schema (the core validates it and repairs once). The times are then
checked: every one parses, start <= end, within the clip's duration (a 1 s allowance for HH:mm:ss rounding;
beyond it they are clipped, and an event that starts after the end is dropped), and sorted by start. Each fix
is a warning. An answer that is still not valid for the schema after the repair is read leniently, and
whatever events it holds are kept (with a warning); only an answer with no readable event is an error.
"""

from __future__ import annotations

import io
import math
import re
from typing import Any

from PIL import Image
from pydantic import BaseModel, Field

from qwenvl.errors import MediaError, StructuredOutputError
from qwenvl.interfaces import SupportsAsyncComplete, SupportsComplete, SupportsPlan
from qwenvl.models import VIDEO_FPS
from qwenvl.plan import Call
from qwenvl.structured import extract_json
from qwenvl.tasks.draw import hms
from qwenvl.tasks.grounding import (
    async_client,
    check_task_media,
    in_thread,
    library_worded,
    model_for,
    plan_task,
    refuse_thinking,
    shown_ref,
    sync_client,
    task_fields,
    task_media,
)
from qwenvl.types import Response, media_refs

EVENTS_READS = "a video, or several frames as images in order"  # what events reads, as its refusals say it
EVENTS_PDF_HINT = f"events reads {EVENTS_READS}; for a PDF use ask, ocr or extract."
EVENTS_MAX_TOKENS = 2048
TIME_PATTERN = r"^\d{1,2}(:\d{1,2}){1,2}(\.\d+)?$"  # HH:mm:ss (also H:mm:ss, mm:ss, with fractions): normalised
EVENTS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "events": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "start_time": {"type": "string", "pattern": TIME_PATTERN},
                    "end_time": {"type": "string", "pattern": TIME_PATTERN},
                    "event": {"type": "string", "minLength": 1},
                },
                "required": ["start_time", "end_time", "event"],
            },
        },
    },
    "required": ["events"],
}
EVENTS_PROMPT = (
    "Describe the series of events in the video, in order. For each event give its start time "
    "(start_time), end time (end_time) and what happens (event); write the timestamps as HH:mm:ss, "
    "counted from the start of the video."
)
ROUNDING_ALLOWANCE_S = 1.0


class Event(BaseModel):
    """One event of a timeline: ``start``/``end`` as ``HH:mm:ss`` (start rounded down, end up, to whole seconds),
    ``start_s``/``end_s`` in seconds from the start of the clip (as the model gave them, after the checks), and
    what happens (``event``). Raises pydantic.ValidationError when built with a wrong type."""

    start: str  # HH:mm:ss
    end: str
    event: str
    start_s: float  # seconds from the start of the clip
    end_s: float

    def plain(self) -> dict[str, Any]:
        """``{"start", "end", "event"}`` (the CLI's JSON). Raises nothing."""
        return {"start": self.start, "end": self.end, "event": self.event}


class Timeline(BaseModel):
    """What ``events`` returns: the clip's ``events`` sorted by start, ``duration`` in seconds (None for a URL),
    ``warnings`` (each fix made to the answer's times), ``frame_times`` (seconds: when each frame the model saw
    was taken), the answering ``model``, the answer's ``raw_text`` and ``response``. Raises
    pydantic.ValidationError when built with a wrong type."""

    video: str | None = None
    duration: float | None = None  # seconds (None when unknown, e.g. a video URL)
    events: list[Event] = Field(default_factory=list)
    warnings: list[str] = Field(default_factory=list)
    frame_times: list[float] = Field(default_factory=list)  # when each frame the model saw was taken
    model: str | None = None
    raw_text: str = ""
    response: Response | None = Field(default=None, exclude=True, repr=False)

    def to_json(self) -> dict[str, Any]:
        """``{"video", "duration", "model", "events": [{"start", "end", "event"}], "warnings"}``. Raises nothing."""
        return {
            "video": self.video,
            "duration": self.duration,
            "model": self.model,
            "events": [e.plain() for e in self.events],
            "warnings": self.warnings,
        }


def parse_time(value: Any) -> float | None:
    """Seconds from "HH:mm:ss", "H:mm:ss.s", "mm:ss" or a number of seconds; None when unreadable. Raises nothing."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value) if value >= 0 and math.isfinite(value) else None
    if not isinstance(value, str):
        return None
    text = value.strip()
    if re.fullmatch(r"\d+(\.\d+)?\s*s?", text):
        return float(text.rstrip("s ").strip())
    if not re.fullmatch(TIME_PATTERN, text):
        return None
    parts = [float(p) for p in text.split(":")]
    seconds = 0.0
    for p in parts:
        seconds = seconds * 60 + p
    if len(parts) > 1 and any(p >= 60 for p in parts[1:]):
        return None
    return seconds


# --- planning ----------------------------------------------------------------------------------------------


def _one_still(video: str | list[str]) -> bool:
    """One still image where a video or a sequence of frames is needed: a one-item frame list (not a PDF), or
    a local image given as the video (a URL without a video suffix may be one: not refused)."""
    from qwenvl.media.sources import classify, media_kind

    if isinstance(video, list):
        return len(video) == 1 and media_kind(video[0]) != "pdf"
    try:
        remote = classify(video).is_remote
    except MediaError:
        return False  # preparing it says what is wrong
    return not remote and media_kind(video) == "image"


def _still_refused(video: str | list[str]) -> MediaError:
    """The refusal of one still image (MediaError, exit 3: a wrong kind of input, as ``check_task_media``'s)."""
    ref = video[0] if isinstance(video, list) else video
    label = shown_ref(ref) or "the image"  # bytes or a PIL image given: no name to show
    return MediaError(
        f"{label} is one still image, which has no events in time: events reads {EVENTS_READS}",
        source=label,
        hint="Give a video file or URL, or several frame images in order; for one image use "
        '`qwenvl ask IMAGE -p "..."` (in Python: client.ask(prompt, image)).',
    )


def plan_events(client: SupportsPlan, video: Any, *, prompt: str | None = None, **fields: Any) -> Call:
    """The request ``events`` sends (nothing is sent): the timeline prompt (or ``prompt``), ``video``, the
    timeline JSON Schema (``EVENTS_SCHEMA``), and ``max_tokens`` 2048 unless given (capped by the model's own
    limit). ``fields`` are any Request fields (fps, model, ...).

    Raises UsageError (invalid fields, thinking asked for (``enable_thinking``, ``thinking_budget``: the
    timeline is JSON, given only in non-thinking mode)), SchemaDefinitionError, MediaError (media that cannot be
    sent, a PDF, or one still image: a single frame, or a still image given as ``video``; a frame list's frames are
    checked first), as ``Client.plan``."""
    refuse_thinking("events", fields)
    video = task_media(video) if isinstance(video, list | tuple) else media_refs(video, images=False)
    check_task_media("events", video, ("video", "image"), EVENTS_PDF_HINT, reads=EVENTS_READS)  # frames: images
    if isinstance(video, str) and _one_still(video):  # planning would call it "not a readable video"
        raise _still_refused(video)
    model = model_for(client, fields)
    prompt = EVENTS_PROMPT if prompt is None else prompt
    own = task_fields("events", fields, prompt=prompt, video=video, schema=EVENTS_SCHEMA)
    call = plan_task(client, model, EVENTS_MAX_TOKENS, **own)
    if isinstance(video, list) and _one_still(video):  # after planning: an unreadable frame is told as such
        raise _still_refused(video)
    return call


def _video_item(call: Call) -> Any:
    items = [m for m in call.media if m.kind == "video"]
    return items[-1] if items else None


def sent_fps(call: Call) -> float:
    """The frame rate the video of ``call`` is sent at (frames per second): the sampled rate as planned (a long
    video is sampled more sparsely than asked, to stay within the model's frame cap), else the one asked, else
    ``VIDEO_FPS``. Rounded as the body carries it (4 decimals). Raises nothing."""
    item = _video_item(call)
    rate = item.fps if item is not None and item.fps is not None else call.request.fps or VIDEO_FPS
    return round(rate, 4)


def video_duration(call: Call) -> float | None:
    """The clip's length: probed for a local file; frames / fps for a frame list; None for a URL.
    Raises MediaError when a local video cannot be read."""
    video = call.request.video
    rate = call.request.fps or VIDEO_FPS
    if isinstance(video, list):
        return len(video) / rate
    if video is None:
        return None
    from qwenvl.media.sources import classify

    source = classify(video)
    if source.is_remote:
        return None
    from qwenvl.media import video as video_mod
    from qwenvl.media.prepare import video_content

    src = video_content(source)
    return video_mod.probe_video(src, source.label).duration


def frame_times(call: Call) -> list[float]:
    """Seconds from the clip's start at which each frame the model saw was taken ([] without a video; a frame
    list is spaced 1 / fps apart, fps defaulting to 2.0). Raises nothing."""
    item = _video_item(call)
    if item is None:
        return []
    if item.frame_times:
        return list(item.frame_times)
    rate = call.request.fps or VIDEO_FPS
    return [i / rate for i in range(len(item.sent))] if isinstance(item.sent, list) else []


SHEET_MAX_FRAMES = 48  # a contact sheet shows at most this many frames, evenly spread


def sheet_frame_count(call: Call, limit: int = SHEET_MAX_FRAMES) -> int:
    """How many frames a contact sheet of ``call`` shows (``frames``), at most: the local frames sent, at most
    ``limit``; nothing is decoded. Raises nothing."""
    item = _video_item(call)
    if item is None or not isinstance(item.sent, list):
        return 0
    return min(limit, sum(url.startswith("data:") for url in item.sent))


def frames(call: Call, limit: int | None = SHEET_MAX_FRAMES) -> tuple[list[Image.Image], list[float]]:
    """The frames the model was sent (decoded from their data URLs) and their times, at most ``limit`` of them
    evenly spread; remote frames are skipped. Raises nothing for frames qwenvl prepared."""
    from qwenvl.media.sources import decode_data_url

    item = _video_item(call)
    if item is None or not isinstance(item.sent, list):
        return [], []
    pairs = list(zip(item.sent, frame_times(call), strict=False))
    if limit is not None and len(pairs) > limit:
        step = (len(pairs) - 1) / (limit - 1)
        pairs = [pairs[round(i * step)] for i in range(limit)]
    images: list[Image.Image] = []
    times: list[float] = []
    for url, t in pairs:
        if not url.startswith("data:"):
            continue
        img = Image.open(io.BytesIO(decode_data_url(url)))
        img.load()
        images.append(img)
        times.append(t)
    return images, times


# --- reading the answer ---------------------------------------------------------------------------------------

_START_KEYS = ("start_time", "start", "begin", "from", "start_timestamp")
_END_KEYS = ("end_time", "end", "finish", "to", "end_timestamp")
_TEXT_KEYS = ("event", "description", "text", "action", "caption")


def _first(obj: dict[str, Any], keys: tuple[str, ...]) -> Any:
    for key in keys:
        if key in obj:
            return obj[key]
    return None


def raw_events(value: Any) -> list[dict[str, Any]]:
    """The event objects in a parsed answer: ``{"events": [...]}``, a bare list, or one wrapper deeper.
    Raises nothing."""
    if isinstance(value, dict):
        for key in ("events", "timeline", "segments", "results"):
            if isinstance(value.get(key), list):
                return [e for e in value[key] if isinstance(e, dict)]
        if _first(value, _START_KEYS) is not None:
            return [value]
        for inner in value.values():
            if isinstance(inner, list) and inner and all(isinstance(e, dict) for e in inner):
                return list(inner)
    if isinstance(value, list):
        return [e for e in value if isinstance(e, dict)]
    return []


def build_timeline(items: list[dict[str, Any]], duration: float | None) -> tuple[list[Event], list[str]]:
    """Checked, normalised and sorted events, and what was fixed on the way. Raises nothing: every fix is a warning."""
    warnings: list[str] = []
    events: list[Event] = []
    limit = duration + ROUNDING_ALLOWANCE_S if duration is not None else None
    for n, obj in enumerate(items, 1):
        start_raw, end_raw = _first(obj, _START_KEYS), _first(obj, _END_KEYS)
        text = _first(obj, _TEXT_KEYS)
        text = str(text).strip() if text is not None else ""
        start, end = parse_time(start_raw), parse_time(end_raw)
        if start is None or end is None:
            warnings.append(f"event {n} skipped: unreadable time {start_raw!r}–{end_raw!r} ({text[:60]!r})")
            continue
        if start > end:
            warnings.append(f"event {n} ({text[:40]!r}) ended before it started ({start_raw}–{end_raw}): swapped")
            start, end = end, start
        if limit is not None and duration is not None:
            if start > limit:
                warnings.append(
                    f"event {n} ({text[:40]!r}) starts at {start_raw}, after the clip ends "
                    f"({hms(duration, decimals=True)}): dropped"
                )
                continue
            if end > limit:
                warnings.append(
                    f"event {n} ({text[:40]!r}) ends at {end_raw}, after the clip ends "
                    f"({hms(duration, decimals=True)}): clipped to the end"
                )
                end = duration
        if not text:
            warnings.append(f"event {n} ({start_raw}–{end_raw}) has no description (kept)")
        first, stop = math.floor(start), math.ceil(end)  # the seconds it spans, never printed past the clip's end
        if duration is not None and stop > duration:
            first, stop = min(first, math.floor(duration)), math.floor(duration)
        events.append(Event(start=hms(first), end=hms(stop), event=text, start_s=start, end_s=end))
    ordered = sorted(events, key=lambda e: (e.start_s, e.end_s))
    if ordered != events:
        warnings.append("the events were not in time order: sorted by start")
    return ordered, warnings


def read_timeline(
    call: Call, response: Response | None, *, text: str | None = None, duration: float | None = None
) -> Timeline:
    """The timeline in an answer (``response.json`` when it validated, else ``text`` read leniently).

    ``duration`` (seconds) is the clip's length, probed from a local video when not given. Raises MediaError
    only when the planned local video can no longer be read; an answer without events gives an empty timeline
    with a warning."""
    warnings: list[str] = []
    if response is not None and response.json is not None:
        value = response.json
    else:
        try:
            value = extract_json(text if text is not None else (response.text if response else ""))
        except ValueError:
            value = None
    items = raw_events(value)
    if duration is None:
        duration = video_duration(call)
    events, fixes = build_timeline(items, duration)
    warnings.extend(fixes)
    if duration is None:
        warnings.append("the clip's duration is unknown (a URL): times are not checked against it")
    if not events:
        warnings.append("the answer has no events")
    if response is not None and response.finish_reason == "length":
        warnings.append(f"the answer was cut off at max_tokens ({call.request.max_tokens}); raise --max-tokens")
    video = call.request.video
    return Timeline(
        video=video if isinstance(video, str) else f"{len(video or [])} frames",
        duration=duration,
        events=events,
        warnings=warnings,
        frame_times=frame_times(call),
        model=(response.model if response else None) or call.request.model,
        raw_text=text if text is not None else (response.text if response else ""),
        response=response,
    )


def events(client: SupportsComplete, video: Any, *, prompt: str | None = None, **fields: Any) -> Timeline:
    """The clip's events, checked against its duration and sorted. ``video``: a file, a URL or frame images.

    One request; times are checked as the module docstring says (each fix a warning in ``Timeline.warnings``).
    ``fields`` are any Request fields (``fps`` frames per second sampled, default 2.0; ``model``; ...).

    Raises what ``plan_events`` and ``Client.send`` raise (UsageError, MediaError, APIError and its
    subclasses), and StructuredOutputError only when the answer holds no readable event even after the repair
    request; TypeError for an AsyncClient (use ``aevents``). ``video``: a path (``str`` or ``os.PathLike``), a URL,
    or a list of frames (paths, bytes or PIL images)."""
    sync_client(client, "events")
    call = plan_events(client, video, prompt=prompt, **fields)
    return library_worded(send_events(client, call))


async def aevents(client: SupportsAsyncComplete, video: Any, *, prompt: str | None = None, **fields: Any) -> Timeline:
    """``events`` with an AsyncClient, awaited (planned in a worker thread; the same reading). Raises what
    ``events`` raises; TypeError for a synchronous Client (use ``events``)."""
    async_client(client, "events")
    call = await in_thread(plan_events, client, video, prompt=prompt, **fields)
    try:
        response = await client.send(call)
    except StructuredOutputError as exc:
        return library_worded(_invalid_timeline(call, exc))
    return library_worded(read_timeline(call, response))


NO_EVENTS_HINT = (
    "The model's answer held no readable event (it is kept, in the error); ask again, or another model (--model)."
)


def send_events(client: SupportsComplete, call: Call) -> Timeline:
    """Send a call planned by ``plan_events`` and read its timeline (``read_timeline``).

    Raises what ``Client.send`` raises (APIError and its subclasses), and StructuredOutputError only when the
    answer holds no readable event; an answer invalid for the schema but with events is kept, with a warning."""
    try:
        response = client.send(call)
    except StructuredOutputError as exc:
        return _invalid_timeline(call, exc)
    return read_timeline(call, response)


def _invalid_timeline(call: Call, exc: StructuredOutputError) -> Timeline:
    """The events of an answer invalid for the schema, with a warning; ``exc`` raised again when it has none."""
    timeline = read_timeline(call, None, text=exc.raw_text or "")
    if not timeline.events:  # the schema is qwenvl's own: there is none to loosen
        exc.hint = NO_EVENTS_HINT
        raise exc
    timeline.response = exc.response
    timeline.warnings.insert(
        0,
        f"the answer is not valid for the timeline schema even after a retry ({exc.as_written()}); "
        f"kept the {len(timeline.events)} events that could be read",
    )
    return timeline
