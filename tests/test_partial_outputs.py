"""A multi-request verb's output of a run that stopped part-way keeps what was paid for, is marked partial (a later
run onto it is refused unless --force, with a hint), and is gone on from without paying again for what it holds:
``extract --csv`` with ``--resume``, as ``ocr -o`` with ``--pages N-``."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from conftest import API_KEY, run_cli, write_image
from dashscope_server import Reply

SCHEMA = {"type": "object", "properties": {"total": {"type": "number"}}, "required": ["total"]}
FAILURE = Reply(status=500, error_code="InternalError", error_message="boom")


def model_calls(server) -> int:
    return sum(r.path.endswith(("/chat/completions", "/generation")) for r in server.requests)


def files(folder: Path, n: int) -> list[str]:
    (folder / "s.json").write_text(json.dumps(SCHEMA))
    return [str(write_image(folder / f"f{i}.png", color=(40 * i, 90, 20)).name) for i in range(n)]


def read_csv(path: Path) -> list[list[str]]:
    return list(csv.reader(io.StringIO(path.read_text(encoding="utf-8"), newline="")))


def extract(env, *args: str):
    p = run_cli("extract", *args, "--schema", "s.json", "--yes", "--max-retries", "0", env=env)
    assert "Traceback" not in p.stderr, p.stderr
    assert API_KEY not in p.stderr
    return p


def whole_csv(server, env, isolated_env: Path, images: list[str]) -> bytes:
    """The CSV one run writes when every file is answered (1, 2, 3...)."""
    server.enqueue(*(Reply(text=json.dumps({"total": i + 1})) for i in range(len(images))))
    p = extract(env, *images, "--csv", "whole.csv")
    assert p.returncode == 0, p.stderr
    server.reset()
    return (isolated_env / "whole.csv").read_bytes()


def test_a_csv_stopped_by_a_401_is_partial_and_resumed_without_paying_again(server, env, isolated_env):
    images = files(isolated_env, 4)
    whole = whole_csv(server, env, isolated_env, images)
    server.enqueue(Reply(text='{"total": 1}'), Reply(text='{"total": 2}'), Reply(status=401))
    first = extract(env, *images, "--csv", "out.csv")
    assert first.returncode == 4, first.stderr
    kept = (isolated_env / "out.csv").read_bytes()
    assert read_csv(isolated_env / "out.csv")[1:] == [[images[0], "1"], [images[1], "2"]]
    assert f"stopped at {images[2]}" in first.stderr and "--resume" in first.stderr, first.stderr
    # the same command again would replace rows paid for: refused before anything is sent, with the way on
    server.reset()
    again = extract(env, *images, "--csv", "out.csv")
    assert again.returncode == 2, again.stderr
    assert "stopped" in again.stderr and "--resume" in again.stderr and "--force" in again.stderr, again.stderr
    assert server.requests == [] and (isolated_env / "out.csv").read_bytes() == kept
    # --resume sends only the files not read, and the file is then what one run writes
    server.enqueue(Reply(text='{"total": 3}'), Reply(text='{"total": 4}'))
    rest = extract(env, *images, "--csv", "out.csv", "--resume")
    assert rest.returncode == 0, rest.stderr
    assert model_calls(server) == 2
    assert (isolated_env / "out.csv").read_bytes() == whole
    # complete now: a re-run writes it again without --force, and --resume has nothing left to send
    server.reset()
    done = extract(env, *images, "--csv", "out.csv", "--resume")
    assert done.returncode == 0 and "nothing left to read" in done.stderr, done.stderr
    assert server.requests == [] and (isolated_env / "out.csv").read_bytes() == whole
    server.enqueue(*(Reply(text=json.dumps({"total": i + 1})) for i in range(4)))
    assert extract(env, *images, "--csv", "out.csv").returncode == 0


def test_a_file_failed_by_the_service_is_sent_again_by_resume_in_its_place(server, env, isolated_env):
    images = files(isolated_env, 3)
    whole = whole_csv(server, env, isolated_env, images)
    server.enqueue(Reply(text='{"total": 1}'), FAILURE, Reply(text='{"total": 3}'))
    first = extract(env, *images, "--csv", "out.csv")
    assert first.returncode == 5, first.stderr
    rows = read_csv(isolated_env / "out.csv")
    assert [r[:2] for r in rows[1:]] == [[images[0], "1"], [images[1], ""], [images[2], "3"]] and rows[2][2]
    assert "--resume" in first.stderr
    server.reset()
    refused = extract(env, *images, "--csv", "out.csv")
    assert refused.returncode == 2 and server.requests == [], refused.stderr
    server.enqueue(Reply(text='{"total": 2}'))
    rest = extract(env, *images, "--csv", "out.csv", "--resume")
    assert rest.returncode == 0, rest.stderr
    assert model_calls(server) == 1  # only the file that got no answer
    assert (isolated_env / "out.csv").read_bytes() == whole  # in its place, the error column gone


def test_an_answer_not_valid_for_the_schema_was_paid_and_is_kept_by_resume(server, env, isolated_env):
    images = files(isolated_env, 2)
    server.enqueue(Reply(text="not json", times=2), Reply(status=401))
    first = extract(env, *images, "--csv", "out.csv")
    assert first.returncode == 4, first.stderr
    server.reset()
    server.enqueue(Reply(text='{"total": 2}'))
    rest = extract(env, *images, "--csv", "out.csv", "--resume")
    assert model_calls(server) == 1, rest.stderr  # the paid answer (and its repair) is not asked again
    rows = read_csv(isolated_env / "out.csv")
    assert rows[0] == ["file", "total", "error", "raw_answer"]
    assert rows[1][0] == images[0] and rows[1][3] == "not json" and rows[2][:2] == [images[1], "2"]


def test_resume_refuses_a_file_qwenvl_did_not_leave_so(server, env, isolated_env):
    images = files(isolated_env, 2)
    (isolated_env / "out.csv").write_text("file,total\nf0.png,9\n")
    p = extract(env, *images, "--csv", "out.csv", "--resume")
    assert p.returncode == 2 and "not as qwenvl's extract left it" in p.stderr, p.stderr
    assert server.requests == []
    for args, words in ((["--resume"], "--csv"), (["--csv", "out.csv", "--resume", "--force"], "--force")):
        p = extract(env, *images, *args)
        assert p.returncode == 2 and words in p.stderr and server.requests == [], p.stderr


def test_a_killed_run_leaves_its_csv_partial(server, env, isolated_env):
    """Nothing runs after SIGKILL: the file is recorded partial as each row is written, not only at the end."""
    import signal
    import threading

    from test_money_outputs import _start, wait_for

    images = files(isolated_env, 3)
    whole = whole_csv(server, env, isolated_env, images)
    hold = threading.Event()
    server.enqueue(Reply(text='{"total": 1}'), Reply(hold=hold))
    proc = _start(["extract", *images, "--schema", "s.json", "--csv", "out.csv", "--yes"], env)
    try:
        out = isolated_env / "out.csv"
        assert wait_for(lambda: model_calls(server) == 2 and out.exists() and len(out.read_text().splitlines()) == 2)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        hold.set()
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=30)
    server.reset()
    again = extract(env, *images, "--csv", "out.csv")
    assert again.returncode == 2 and "--resume" in again.stderr and server.requests == [], again.stderr
    server.enqueue(Reply(text='{"total": 2}'), Reply(text='{"total": 3}'))
    rest = extract(env, *images, "--csv", "out.csv", "--resume")
    assert rest.returncode == 0 and model_calls(server) == 2, rest.stderr
    assert (isolated_env / "out.csv").read_bytes() == whole
