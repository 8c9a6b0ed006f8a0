"""Shared fixtures: an isolated user environment, the fake DashScope server, images, the CLI runner."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))

import qwenvl
import qwenvl.store
from dashscope_server import DashScopeServer

API_KEY = "sk-test-0123456789abcdef"


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


def run_cli(
    *args: str, env: dict[str, str] | None = None, input: str | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run `python -m qwenvl ARGS` as a user would, in the current (temporary) folder."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("DASHSCOPE_", "ALIBABA_CLOUD_"))}
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
