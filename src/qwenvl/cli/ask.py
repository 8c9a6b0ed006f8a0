"""`qwenvl ask IMAGE... -p PROMPT`: one question, the answer streamed to the terminal."""

from __future__ import annotations

import sys
from typing import Any

import click
from rich.markup import escape

from qwenvl.cli.common import (
    FILE_NAME,
    Verb,
    check_pages_apply,
    err_console,
    generation_options,
    make_client,
    pass_opts,
    print_json,
    print_usage_line,
    prompt_and_media,
    request_fields,
    service_options,
    shown,
)
from qwenvl.cli.render import stream_to_terminal, warn_answer
from qwenvl.media.sources import split_media
from qwenvl.models import spent_fields


@click.command(cls=Verb)
@click.argument("media", type=FILE_NAME, nargs=-1)
@click.option(
    "-p", "--prompt", help="The question ('-' reads it from stdin). Or give it as an argument, first or last."
)
@click.option("--json", "as_json", is_flag=True, help="Print the whole response as JSON (no streaming).")
@click.option("--no-stream", is_flag=True, help="Wait for the whole answer instead of streaming it.")
@click.option("--hide-reasoning", is_flag=True, help="Do not show the model's thinking.")
@click.option("--dry-run", is_flag=True, help="Print the request that would be sent, with estimates; send nothing.")
@generation_options
@service_options
@pass_opts
def ask(opts: dict[str, Any]) -> None:
    """Ask about images, a video or a PDF: qwenvl ask photo.jpg -p "What is this?"

    MEDIA are local files, https:// URLs, file:// or data: URLs, or - (a file on standard input); a video file
    becomes sampled frames. Without -p the prompt is the one argument that is not a file or URL (first or
    last); a missing file is an error (exit 3), never the prompt.
    """
    prompt, refs = prompt_and_media(opts["media"], opts["prompt"])
    check_pages_apply(opts, refs)
    images, video = split_media(refs)
    fields = request_fields(opts)
    client = make_client(opts)
    call = client.plan(prompt=prompt, images=images, video=video, **fields)
    if opts["dry_run"]:
        print_json(client.preview(call, stream=not (opts["as_json"] or opts["no_stream"])))
        return
    structured = call.request.json_mode or call.schema is not None
    with client:
        if opts["as_json"] or opts["no_stream"] or structured:
            response = client.send(call)
            if opts["as_json"]:
                spent = spent_fields([response], region=client.region)  # the footer's facts: cost, requests
                print_json(
                    response.record() | {k: spent[k] for k in ("cost", "currency", "local", "requests", "request_ids")}
                )
                warn_answer(response, call.request.max_tokens, items_shown=True)
                return
            if response.reasoning and not opts["hide_reasoning"]:  # as in a stream: dimmed, on stderr
                err_console().print(
                    f"[dim]thinking…[/]\n[dim italic]{escape(shown(response.reasoning, sys.stderr))}[/]"
                )
            if structured:
                print_json(response.json)
            elif response.text:
                click.echo(shown(response.text))
            warn_answer(response, call.request.max_tokens)
        else:
            response = stream_to_terminal(
                client.send_stream(call), show_reasoning=not opts["hide_reasoning"], max_tokens=call.request.max_tokens
            )
    if err_console().is_terminal:
        print_usage_line(response, client.region)
