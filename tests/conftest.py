"""Shared fixtures: an isolated user environment, the fake DashScope server, images, the CLI runners (in process,
and in a process of its own for the smoke tests)."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))

import qwenvl
import qwenvl.store
from batch_server import BatchServer
from dashscope_server import DashScopeServer
from file_server import FileServer

with contextlib.suppress(ImportError):
    # The MCP SDK's stdio client takes ``errlog=sys.stderr`` as a default bound when it is first imported; were that
    # inside an in-process CLI run (run_cli), the default would be the run's stream, with no file descriptor, and
    # every later stdio session would fail (io.UnsupportedOperation: fileno). Import it now, with the real stderr.
    import mcp.client.stdio  # noqa: F401

API_KEY = "sk-test-0123456789abcdef"


@pytest.fixture(autouse=True)
def restored_logger() -> Iterator[None]:
    """The ``qwenvl`` logger as it was: a CLI invoked in process (``CliRunner`` in a test, not ``run_cli``) routes
    the library's warnings to stderr and stops their propagation, which would change later tests' logging."""
    logger = logging.getLogger("qwenvl")
    saved = (list(logger.handlers), logger.propagate, logger.level)
    yield
    logger.handlers[:], logger.propagate, logger.level = saved


@pytest.fixture(autouse=True)
def isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No real key, config or .env can leak into a test: HOME, QWENVL_HOME and the cwd are temporary."""
    for name in list(os.environ):
        if name.startswith(("DASHSCOPE_", "QWENVL_", "ALIBABA_CLOUD_", "ALICLOUD_")):
            monkeypatch.delenv(name, raising=False)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("QWENVL_HOME", str(home / ".qwenvl"))
    monkeypatch.setenv("QWENVL_CACHE_DIR", str(tmp_path / "cache"))  # the default response cache (qwenvl.store)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    return work


@pytest.fixture
def stores(tmp_path: Path) -> Iterator[tuple[qwenvl.store.ResponseCache, qwenvl.store.UsageLog]]:
    """A response cache and a usage log of this test's own, in temporary files, to pass to a client
    (``Client(cache=cache, usage_log=log)``), a Batch or an app: nothing global is touched. Closed afterwards."""
    cache = qwenvl.store.ResponseCache(tmp_path / "stores" / "responses.db")
    log = qwenvl.store.UsageLog(tmp_path / "stores" / "usage.db")
    yield cache, log
    log.close()
    cache.close()


@pytest.fixture
def server() -> Iterator[DashScopeServer]:
    with DashScopeServer(api_key=API_KEY) as srv:
        yield srv


@pytest.fixture
def file_server() -> Iterator[FileServer]:
    """A loopback HTTP file server counting its GETs (tests/file_server.py); each test adds its files."""
    with FileServer() as srv:
        yield srv


@pytest.fixture
def bserver() -> Iterator[BatchServer]:
    """The Batch API double (/files + /batches, tests/batch_server.py) on loopback."""
    with BatchServer(api_key=API_KEY) as srv:
        yield srv


@pytest.fixture(params=["compat", "native"])
def protocol(request: pytest.FixtureRequest) -> str:
    return request.param


def make_client(server: DashScopeServer, protocol: str = "compat", **kw) -> qwenvl.Client:
    kw.setdefault("retry_backoff_s", 0.01)
    return qwenvl.Client(api_key=kw.pop("api_key", API_KEY), protocol=protocol, base_url=server.url, **kw)


@pytest.fixture
def env(server: DashScopeServer) -> dict[str, str]:
    """Environment for a CLI subprocess that talks to the loopback server (both protocols)."""
    return {
        "DASHSCOPE_API_KEY": API_KEY,
        "DASHSCOPE_COMPATIBLE_BASE_URL": server.compat_base,
        "DASHSCOPE_HTTP_BASE_URL": server.native_base,
    }


@pytest.fixture
def client(server: DashScopeServer, protocol: str) -> Iterator[qwenvl.Client]:
    with make_client(server, protocol) as c:
        yield c


def write_image(
    path: Path, size: tuple[int, int] = (64, 48), color: tuple[int, int, int] = (200, 30, 30), fmt: str | None = None
) -> Path:
    Image.new("RGB", size, color).save(path, format=fmt)
    return path


@pytest.fixture
def png(isolated_env: Path) -> Path:
    return write_image(isolated_env / "red.png")


@pytest.fixture
def jpeg(isolated_env: Path) -> Path:
    return write_image(isolated_env / "blue.jpg", color=(20, 40, 220), fmt="JPEG")


CHILD_ENV_DROPPED = ("DASHSCOPE_", "ALIBABA_CLOUD_")  # never inherited by a CLI run: each test gives its own


@dataclass
class CliRun:
    """A finished ``qwenvl`` run, shaped like ``subprocess.CompletedProcess``: exit code, stdout, stderr.

    ``exception`` is what escaped the command other than its exit (a bug; None otherwise): as in a real process, its
    traceback is also at the end of ``stderr`` and the exit code is 1, so "no Traceback in stderr" means the same in
    and out of process."""

    args: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str
    exception: BaseException | None = None


class _Hung(BaseException):  # not an Exception: passes the CLI's own handlers and click's
    pass


def in_process_env(env: dict[str, str] | None) -> dict[str, str | None]:
    """The environment changes for a CLI run: DASHSCOPE_*/ALIBABA_CLOUD_* dropped, then ``env``; COLUMNS 200."""
    changes: dict[str, str | None] = {k: None for k in os.environ if k.startswith(CHILD_ENV_DROPPED)}
    changes.update(env or {})
    if changes.get("COLUMNS") is None and "COLUMNS" not in os.environ:
        changes["COLUMNS"] = "200"
    return changes


def run_cli(
    *args: str, env: dict[str, str] | None = None, input: str | bytes | None = None, timeout: float = 60
) -> CliRun:
    """Run ``qwenvl ARGS`` in this process (click's CliRunner on ``qwenvl.cli.main.cli``, as ``main`` runs it), in the
    current (temporary) folder, with ``env`` added to the environment and ``input`` (default: nothing) on stdin.

    What a separate process would not carry over is put back afterwards: the environment, the working folder and
    the ``qwenvl`` logger (the CLI routes its warnings to stderr). A run still going after ``timeout`` seconds is
    stopped (SIGALRM) and fails the test. For what needs a real process (a terminal, signals, the installed
    entry point, the interpreter's own start-up) use ``run_cli_process``."""
    from qwenvl.cli.main import cli

    try:
        runner = CliRunner(mix_stderr=False)  # type: ignore[call-arg]  # click 8.1
    except TypeError:
        runner = CliRunner()  # click >= 8.2: stderr is always apart
    saved_env, saved_cwd = dict(os.environ), os.getcwd()
    logger = logging.getLogger("qwenvl")
    saved_log = (list(logger.handlers), logger.propagate, logger.level)
    from qwenvl import models

    warned = set(models._WARNED)  # a process warns once per unknown model name: a new process has warned of none
    models._WARNED.clear()
    alarm = threading.current_thread() is threading.main_thread()
    if alarm:

        def hung(signum: int, frame: object) -> None:
            raise _Hung

        previous = signal.signal(signal.SIGALRM, hung)
        signal.setitimer(signal.ITIMER_REAL, timeout)
    try:
        result = runner.invoke(cli, list(args), input=input, env=in_process_env(env), prog_name="qwenvl")
    except _Hung:
        pytest.fail(f"qwenvl {' '.join(args)} did not end within {timeout} s", pytrace=False)
    finally:
        if alarm:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
        logger.handlers[:], logger.propagate, logger.level = saved_log
        models._WARNED.clear()
        models._WARNED.update(warned)
        os.chdir(saved_cwd)
        for name in set(os.environ) - set(saved_env):
            del os.environ[name]
        os.environ.update(saved_env)
    stderr, exception = result.stderr, None
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        exception = result.exception
        stderr += "".join(traceback.format_exception(exception))
    return CliRun(tuple(args), result.exit_code, result.stdout, stderr, exception)


def run_cli_process(
    *args: str, env: dict[str, str] | None = None, input: str | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m qwenvl ARGS`` as a user would, in a separate process in the current (temporary) folder.

    Slower than ``run_cli`` (an interpreter and every import per run): for the smoke tests that need a process
    of their own (exit codes as the shell sees them, no traceback from the interpreter, start-up)."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(CHILD_ENV_DROPPED)}
    full_env.update(env or {})
    full_env.setdefault("COLUMNS", "200")
    return subprocess.run(
        [sys.executable, "-m", "qwenvl", *args],
        capture_output=True,
        text=True,
        env=full_env,
        input=input,
        timeout=timeout,
    )


@contextlib.contextmanager
def ctrl_c_reaches_children() -> Iterator[None]:
    """Processes started inside get SIGINT at its default (Python turns it into KeyboardInterrupt), whatever this
    process inherited: a shell's background job (``pytest ... &`` in a script, CI runners, nohup) starts with SIGINT
    ignored, a child inherits "ignored", and a Ctrl-C test then waits for an interruption that never comes. A
    handler (unlike "ignored") is reset to the default in a child at exec, so one is set for the duration."""
    if (
        signal.getsignal(signal.SIGINT) is not signal.SIG_IGN
        or threading.current_thread() is not threading.main_thread()
    ):
        yield
        return
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
