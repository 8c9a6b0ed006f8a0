"""qwenvl.outputs: the one check of an output path and the one atomic write (issue 11 section 5).

The CLI verbs had their own output check, laxer than the batch runner's: it took a FIFO (whose write waits
for a reader for ever) or a device, and named a parent that is a file only as "File exists". Both now use
the batch's stricter check; these tests show it, through the library and through the CLI.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import API_KEY
from dashscope_server import DashScopeServer
from qwenvl.cli.main import cli
from qwenvl.errors import UsageError
from qwenvl.outputs import check_writable, write_atomic
from qwenvl.sessions import Session

needs_fifo = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes here")


def test_check_writable_creates_missing_folders_and_expands_home(isolated_env: Path) -> None:
    path = check_writable("~/out/deeper/result.txt")
    assert path == Path(os.environ["HOME"]) / "out" / "deeper" / "result.txt"
    assert path.parent.is_dir() and not path.exists()
    assert not list(path.parent.iterdir())  # the probe file is gone


@needs_fifo
def test_check_writable_refuses_a_fifo(isolated_env: Path) -> None:
    fifo = isolated_env / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(UsageError, match="not a regular file"):
        check_writable(fifo)


def test_check_writable_refuses_a_device_a_folder_and_a_file_as_parent(isolated_env: Path) -> None:
    if Path("/dev/null").exists():
        with pytest.raises(UsageError, match="not a regular file"):
            check_writable("/dev/null")
    with pytest.raises(UsageError, match="is a directory"):
        check_writable(isolated_env)
    (isolated_env / "plain").write_text("x")
    with pytest.raises(UsageError, match=r"plain is a file, not a folder"):
        check_writable(isolated_env / "plain" / "sub" / "out.txt")


def test_check_writable_probes_a_folder_that_refuses_files() -> None:
    if not Path("/proc/self").is_dir():
        pytest.skip("no /proc here")
    with pytest.raises(UsageError, match="cannot create files in /proc"):  # access(2) would say yes to root
        check_writable("/proc/qwenvl-out.txt")


@needs_fifo
@pytest.mark.parametrize(
    "verb", [["ocr", "{img}", "-o", "{out}"], ["ground", "{img}", "dog", "--out", "{out}"], ["extract", "{img}"]]
)
def test_cli_refuses_a_fifo_output_before_sending(verb: list[str], isolated_env: Path, png: Path) -> None:
    """Before: the verbs' own check took the FIFO and the write then waited for a reader for ever (after a
    paid request). Now: exit 2 at once, nothing sent."""
    fifo = isolated_env / "out.fifo"
    os.mkfifo(fifo)
    args = [a.format(img=png, out=fifo) for a in verb]
    if verb[0] == "extract":
        (isolated_env / "s.json").write_text('{"type": "object"}')
        args += ["--schema", str(isolated_env / "s.json"), "--csv", str(fifo)]
    with DashScopeServer(api_key=API_KEY) as srv:
        env = {"DASHSCOPE_API_KEY": API_KEY, "DASHSCOPE_COMPATIBLE_BASE_URL": srv.compat_base}
        result = CliRunner().invoke(cli, args, env=env)
        assert result.exit_code == 2, result.output
        assert "not a regular file" in result.output
        assert not srv.requests


def test_write_atomic_replaces_whole_and_fsyncs_file_and_folder(
    isolated_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = isolated_env / "out.jsonl"
    target.write_text("old\n")
    synced: list[bool] = []  # True for a folder
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(stat.S_ISDIR(os.fstat(fd).st_mode)), real_fsync(fd)))
    write_atomic(target, ["a\n", "b\n"])
    assert target.read_text() == "a\nb\n"
    assert synced == [False, True]
    assert [p.name for p in isolated_env.iterdir()] == ["out.jsonl"]  # no temp file left


def test_write_atomic_keeps_the_old_file_when_writing_fails(isolated_env: Path) -> None:
    target = isolated_env / "out.csv"
    target.write_text("old\n")

    def chunks():
        yield "new, half"
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space"):
        write_atomic(target, chunks())
    assert target.read_text() == "old\n"
    assert [p.name for p in isolated_env.iterdir()] == ["out.csv"]


def test_session_files_stay_private(isolated_env: Path) -> None:
    session = Session("private", model="qwen3-vl-plus")
    session.save()
    assert stat.S_IMODE(session.path.stat().st_mode) == 0o600
    assert [p.name for p in session.path.parent.iterdir()] == [session.path.name]
