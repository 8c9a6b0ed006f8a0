"""Hints that fit the case: a structured answer without a schema has no schema to loosen; a model the server
does not serve points at `qwenvl models`; a refused key at a server that is not DashScope's names the variable
to set, without regions."""

from __future__ import annotations

import errno
import os

import pytest

import qwenvl
from conftest import make_client
from dashscope_server import Reply


@pytest.mark.parametrize("repair", [True, False])
def test_invalid_json_without_a_schema_is_not_told_to_loosen_one(server, protocol, repair):
    server.enqueue(Reply(text="not json at all", times=2))
    with make_client(server, protocol) as client, pytest.raises(qwenvl.StructuredOutputError) as info:
        client.complete(prompt="give json", json_mode=True, repair=repair)
    assert "schema" not in str(info.value.message) and "schema" not in (info.value.hint or "")
    assert "JSON only" in (info.value.hint or "")


def test_invalid_json_for_a_schema_keeps_the_schema_hint(server, protocol):
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    server.enqueue(Reply(text='{"m": 1}', times=2))
    with make_client(server, protocol) as client, pytest.raises(qwenvl.StructuredOutputError) as info:
        client.complete(prompt="give json", schema=schema)
    assert "for the schema" in info.value.message and "loosen the schema" in (info.value.hint or "")


@pytest.mark.parametrize(("status", "code"), [(404, "model_not_found"), (400, "InvalidParameter.ModelNotFound")])
def test_an_unknown_model_points_at_qwenvl_models(server, protocol, status, code):
    server.enqueue(Reply(status=status, error_code=code))
    with make_client(server, protocol) as client, pytest.raises(qwenvl.APIStatusError) as info:
        client.complete(prompt="hi")
    assert "`qwenvl models`" in (info.value.hint or "")


def test_a_refused_key_at_another_server_says_which_variable(server, protocol):
    with make_client(server, protocol, api_key="sk-wrong") as client, pytest.raises(qwenvl.AuthenticationError) as info:
        client.complete(prompt="hi")
    hint = info.value.hint or ""
    assert "the key given as api_key" in hint and "Singapore" not in hint  # the caller's own key was refused


@pytest.mark.parametrize(
    ("err", "says"),
    [
        (errno.ENOENT, "does not exist"),
        (errno.EACCES, "permissions"),
        (errno.EROFS, "read-only"),
        (errno.ENOSPC, "disk is full"),
        (errno.EIO, "Check the path"),
    ],
)
def test_a_write_failure_hint_gives_its_cause(err, says):
    from qwenvl.outputs import write_failure_hint

    hint = write_failure_hint(OSError(err, os.strerror(err)), "give another file with -o")
    assert says in hint and hint.endswith("give another file with -o.")


def test_a_missing_folder_is_not_called_a_permissions_problem(tmp_path):
    from conftest import run_cli

    (tmp_path / "file.txt").write_text("x")
    r = run_cli("skill", "--install", str(tmp_path / "file.txt" / "sub"), env={})
    assert r.returncode == 2 and "permissions" not in r.stderr and "hint: A file stands where a folder" in r.stderr


def test_a_folder_that_exists_but_refuses_new_files_is_not_called_missing(tmp_path):
    """procfs answers ENOENT for a file it will not create: the folder is there, so it is not "missing"."""
    from conftest import run_cli
    from qwenvl.outputs import write_failure_hint

    gone = OSError(errno.ENOENT, os.strerror(errno.ENOENT), str(tmp_path / "no" / "x.txt"))
    assert write_failure_hint(gone).startswith("The folder does not exist")
    there = OSError(errno.ENOENT, os.strerror(errno.ENOENT), str(tmp_path / "x.txt"))
    assert write_failure_hint(there).startswith(f"{tmp_path} exists but takes no new files")
    if os.path.isdir("/proc/self"):
        (tmp_path / "a.png").write_bytes(b"")
        r = run_cli("ocr", str(tmp_path / "a.png"), "-o", "/proc/self/x.txt", env={"DASHSCOPE_API_KEY": "sk-x"})
        assert r.returncode == 2 and "does not exist" not in r.stderr, r.stderr
        assert "hint: /proc/self exists but takes no new files" in r.stderr, r.stderr
