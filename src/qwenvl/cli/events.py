"""`qwenvl events clip.mp4`: a timeline of what happens in a video, start and end as HH:mm:ss."""

from __future__ import annotations

from typing import Any

import click
from rich.markup import escape

from qwenvl.cli.common import (
    ANSWER_FORMAT_FLAGS,
    FILE_NAME,
    IMAGE_BUDGET_FLAGS,
    THINKING_FLAGS,
    Verb,
    check_pages_apply,
    err_console,
    force_option,
    generation_options_for,
    make_client,
    not_dash,
    pass_opts,
    print_json,
    prompt_and_media,
    request_fields,
    service_options,
    shown,
)
from qwenvl.cli.tasks_common import dry_run, refuse_structured, show_raw, show_usage, warn
from qwenvl.errors import UsageError, safe_line
from qwenvl.media.sources import classify, first_names, split_media
from qwenvl.models import spent_fields
from qwenvl.outputs import check_outputs
from qwenvl.tasks.draw import check_fits, contact_sheet, hms, image_format, sheet_size_at_least
from qwenvl.tasks.events import (
    EVENTS_MAX_TOKENS,
    Timeline,
    frames,
    plan_events,
    send_events,
    sent_fps,
    sheet_frame_count,
)


@click.command(cls=Verb)
@click.argument("media", type=FILE_NAME, nargs=-1, required=True)
@click.option("-p", "--prompt", help="What to describe (default: the series of events, as in the docs' example).")
@click.option(
    "--json", "as_json", is_flag=True, help="Print {video, duration, events: [{start, end, event}], warnings}."
)
@click.option(
    "--sheet",
    "sheet_file",
    type=FILE_NAME,
    metavar="FILE.png",
    callback=not_dash("Name the sheet's file, e.g. --sheet frames.png."),
    help="Write a contact sheet: the frames the model saw, with their times, and the timeline (its format follows "
    "the suffix: .png, .jpg...).",
)
@force_option
@click.option("--dry-run", is_flag=True, help="Print the request that would be sent; send nothing.")
@generation_options_for(
    max_tokens=f"{EVENTS_MAX_TOKENS}, or the model's limit if lower",
    leave_out=("--pages", *IMAGE_BUDGET_FLAGS, *ANSWER_FORMAT_FLAGS, *THINKING_FLAGS),
)
@service_options
@pass_opts
def events(opts: dict[str, Any]) -> None:
    """A timeline of a video: qwenvl events clip.mp4 [--sheet frames.png]

    MEDIA is a video file or URL (- for standard input), or several frame images (sampled at --fps, default 2);
    a prompt may be given as an argument instead of -p. The answer is
    validated as JSON, its times are checked against the clip's duration and sorted; prints one line per
    event: start–end event.
    """
    refuse_structured(opts, "events")
    prompt, refs = prompt_and_media(opts["media"], opts["prompt"], required=False)
    if not refs:
        raise UsageError(
            "events needs a video (a file or URL) or frame images", hint="For example: qwenvl events clip.mp4"
        )
    images, video = split_media(refs)
    if video is not None and images:
        stills = f"{len(images)} image{'s' if len(images) > 1 else ''}"
        raise UsageError(
            f"a video ({video}) and {stills} ({first_names(images)}) given: give one video or frame images, not both",
            hint="Give the video alone, or the frames alone (in order).",
        )
    check_pages_apply(opts, refs, frames=True)  # --pages: events takes no PDF
    target: str | list[str] = video if video is not None else images
    sheet = None
    if opts["sheet_file"]:
        if isinstance(target, str) and classify(target).is_remote:
            raise UsageError(
                "--sheet needs the frames: give a local video file (or frame images), not a URL",
                hint="Download the video first, or leave out --sheet.",
            )
        sheet = check_outputs(
            {"--sheet": opts["sheet_file"]}, inputs={"MEDIA": refs}, pictures={"--sheet"}, force=opts["force"]
        )["--sheet"]
        image_format(opts["sheet_file"], "--sheet")  # the format follows the suffix: before anything is sent
    fields = request_fields(opts)
    client = make_client(opts)
    call = plan_events(client, target, prompt=prompt, **fields)
    if sheet is not None:  # a format too small for the sheet (.ico: 256 px) is refused before it is paid
        check_fits(opts["sheet_file"], sheet_size_at_least(sheet_frame_count(call)), "--sheet", at_least=True)
    if opts["dry_run"]:
        dry_run(client, call)
        return
    with client:
        timeline = send_events(client, call)
    if opts["as_json"]:
        print_json(timeline.to_json() | spent_fields([timeline.response], region=opts["region"]))  # what it took
    else:
        print_timeline(timeline)
    warn(timeline.warnings)
    if not timeline.events and not opts["as_json"]:
        show_raw(timeline.raw_text)
    if sheet is not None:
        pictures, times = frames(call)
        if pictures:
            rate = sent_fps(call)  # as sent: a long video is sampled below the rate asked
            length = f"{hms(timeline.duration, decimals=True)} · " if timeline.duration is not None else ""
            total = len(timeline.frame_times)
            shown = f"{len(pictures)} of {total}" if total > len(pictures) else f"{len(pictures)}"
            title = f"{timeline.video} · {length}{shown} frames at {rate:g} fps"
            contact_sheet(
                pictures,
                times,
                sheet,
                title=title,
                events=[(e.start, e.end, e.event) for e in timeline.events],
                overwrite=opts["force"],
            )
            err_console().print(f"[dim]wrote {escape(safe_line(sheet))}[/]", highlight=False)
        else:
            warn(["no local frames to draw: the contact sheet was not written"])
    show_usage(timeline.response, cut_off=False, region=opts["region"], footer=not opts["as_json"])


def print_timeline(timeline: Timeline) -> None:
    for e in timeline.events:
        click.echo(f"{e.start}–{e.end}  {shown(e.event)}")
