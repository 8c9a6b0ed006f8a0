"""`qwenvl ground IMAGE "QUERY"`: boxes (or points) of what you name, in the original image's pixels."""

from __future__ import annotations

import sys
from typing import Any

import click
from rich.markup import escape

from qwenvl.cli.common import (
    ANSWER_FORMAT_FLAGS,
    FILE_NAME,
    VIDEO_FLAGS,
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
from qwenvl.media.pdf import check_page
from qwenvl.media.sources import classify, first_names, media_kind
from qwenvl.models import spent_fields
from qwenvl.outputs import check_outputs
from qwenvl.tasks.draw import annotate, check_fits, image_format
from qwenvl.tasks.grounding import (
    GROUND_MAX_TOKENS,
    Grounding,
    original_size,
    plan_ground,
    planned_picture,
    read_grounding,
)

READINGS = {
    "relative-1000": "a 0-1000 grid",
    "absolute": "pixels of the image as the model saw it",
    "original-pixels": "pixels of the original image",
}


@click.command(cls=Verb)
@click.argument("image", type=FILE_NAME)
@click.argument("query")
@click.option("--points", is_flag=True, help="Ask for points instead of boxes.")
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print {image, page, width, height, model, boxes: [{label, x1, y1, x2, y2}], points, dropped, truncated, "
    "warnings, convention}, with usage, cost and request ids.",
)
@click.option(
    "--out",
    "out_file",
    type=FILE_NAME,
    metavar="FILE.png",
    callback=not_dash("Name the picture's file, e.g. --out boxes.png."),
    help="Write the image with the boxes and points drawn on it, in the format its suffix names (.png, .jpg...).",
)
@force_option
@click.option("--page", type=click.IntRange(min=1), default=None, help="The page of a PDF (default 1).")
@click.option("--dry-run", is_flag=True, help="Print the request that would be sent; send nothing.")
@generation_options_for(
    max_tokens=f"{GROUND_MAX_TOKENS}, or the model's limit if lower",
    leave_out=(*VIDEO_FLAGS, *ANSWER_FORMAT_FLAGS, "--pages"),
)
@service_options
@pass_opts
def ground(opts: dict[str, Any]) -> None:
    """Find things in an image: qwenvl ground photo.jpg "every person and dog" [--out boxes.png]

    IMAGE and QUERY may come in either order; IMAGE may be - (the file on standard input).

    The model is asked in its family's trained format (Qwen3-VL: a 0-1000 grid; Qwen2.5-VL: pixels of the
    resized image, points as XML) and every box is converted to the ORIGINAL image's pixels. Prints one line
    per box: label x1 y1 x2 y2. Boxes crossing an edge are clipped to it; a box or point wholly outside the
    image, or a box with no area, is dropped. Answers that break the family's convention and answers cut off
    at --max-tokens (default 2048 here) are read as well as they can be, with a warning.
    """
    refuse_structured(opts, "ground")
    query, refs = prompt_and_media(
        (opts["image"], opts["query"]), None, required=False, has_prompt_option=False, single=True
    )
    if query is None or len(refs) != 1:
        given = f"{len(refs)} files given ({first_names(refs)}) and no query; " if len(refs) > 1 else ""
        raise UsageError(
            f'{given}ground takes one image and a query: qwenvl ground photo.jpg "every dog"',
            hint="Either order works; the query is the argument that is not a file or URL.",
        )
    image = refs[0]
    out = None
    if opts["out_file"]:
        if classify(image).is_remote:
            raise UsageError(
                "--out needs the image's pixels: give a local file (or a data: URL), not a URL",
                hint="Download the image first, or leave out --out.",
            )
        out = check_outputs(
            {"--out": opts["out_file"]}, inputs={"IMAGE": image}, pictures={"--out"}, force=opts["force"]
        )["--out"]
        image_format(opts["out_file"], "--out")  # the picture's format follows the suffix: before anything is sent
    fields = request_fields(opts)
    page = opts["page"]
    given = fields.pop("pages", None)  # --pages, of the options every verb shares: ground reads one page
    if given is not None:
        if page is not None:
            raise UsageError("give --page or --pages, not both", hint="ground reads one page: give --page N.")
        if not given.strip().isdigit():
            raise UsageError(f"ground reads one page, not --pages {given}", hint="Give one page: --page N.")
        page = int(given)
    check_pages_apply({"page": page, "pages": page}, [image], "--pages" if given is not None else "--page")
    pdf = media_kind(classify(image)) == "pdf"
    if pdf:
        fields["pages"] = str(page or 1)
        if page is not None and (path := classify(image).path) is not None:  # as given: --page 9, not --pages 9
            check_page(path, page, image, "--pages" if given is not None else "--page")
    client = make_client(opts)
    call = plan_ground(client, image, query, points=opts["points"], **fields)
    if out is not None:  # a format that cannot hold the picture at its size (.ico: 256 px): before it is paid
        check_fits(opts["out_file"], original_size(planned_picture(call) or image), "--out")
    if opts["dry_run"]:
        dry_run(client, call)
        return
    with client:
        response = client.send(call)
    result = read_grounding(call, response, image=image)
    if opts["as_json"]:
        print_json(result.to_json() | spent_fields([response], region=opts["region"]))  # what it took, as ask
    else:
        print_table(result)
    warn(result.warnings)
    if not result.boxes and not result.points and not opts["as_json"]:
        show_raw(result.raw_text)
    if out is not None:
        annotate(result.picture or image, result, out, overwrite=opts["force"])
        err_console().print(f"[dim]wrote {escape(safe_line(out))}[/]", highlight=False)
    summary(result)
    show_usage(response, cut_off=False, region=opts["region"], footer=not opts["as_json"])


def print_table(result: Grounding) -> None:
    boxes = [shown(b.label or "(no label)") for b in result.boxes]  # labels are the model's text
    points = [shown(p.label or "(no label)") for p in result.points]
    width = max((len(n) for n in boxes + points), default=0)
    for label, box in zip(boxes, result.boxes, strict=True):
        click.echo(f"{label:<{width}}  {box.x1:>5} {box.y1:>5} {box.x2:>5} {box.y2:>5}")
    for label, point in zip(points, result.points, strict=True):
        click.echo(f"{label:<{width}}  {point.x:>5} {point.y:>5}")


def summary(result: Grounding) -> None:
    parts = []
    if result.boxes or not result.points:
        parts.append(f"{len(result.boxes)} box{'es' if len(result.boxes) != 1 else ''}")
    if result.points:
        parts.append(f"{len(result.points)} point{'s' if len(result.points) != 1 else ''}")
    if result.dropped:
        parts.append(f"{result.dropped} dropped (see the warning)")
    size = f" on {result.width}x{result.height} px" if result.width else ""
    reading = READINGS.get(result.convention, result.convention)
    model = escape(shown(str(result.model), sys.stderr))
    err_console().print(
        f"[dim]{' and '.join(parts)}{size} · {model}'s coordinates read as {reading}[/]",
        highlight=False,
    )
