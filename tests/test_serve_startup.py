"""serve's start-up and shutdown: an address not of this machine is said to be the address (not the port); a
signal that stopped it is its exit code (130 for SIGINT), also when SIGINT was ignored at start (a job a shell
started in the background), after the graceful shutdown."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import httpx
import pytest

from conftest import CHILD_ENV_DROPPED, run_cli


def test_an_address_not_of_this_machine_is_said_to_be_the_address(isolated_env, env):
    p = run_cli("serve", "--host", "192.0.2.1", "--api-key", "k", "--port", "8119", env=env)  # TEST-NET-1
    assert p.returncode == 2, p.stderr
    assert "not one of this machine's" in p.stderr and "another port" not in p.stderr, p.stderr


@pytest.mark.skipif(not hasattr(signal, "SIGINT") or os.name != "posix", reason="POSIX signals")
@pytest.mark.parametrize("ignored", [False, True])
def test_sigint_ends_serve_with_130_even_when_ignored_at_start(isolated_env, env, ignored):
    full = {k: v for k, v in os.environ.items() if not k.startswith(CHILD_ENV_DROPPED)}
    full.update(env)

    def start() -> None:
        if ignored:
            signal.signal(signal.SIGINT, signal.SIG_IGN)

    p = subprocess.Popen(
        [sys.executable, "-m", "qwenvl", "serve", "--no-auth", "--port", "0"],
        env=full,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=start,
    )
    try:
        line = p.stderr.readline()  # the banner: it listens
        url = line.split(" on ", 1)[1].split(": ", 1)[0]
        assert httpx.get(url + "/health", timeout=30).status_code == 200
        p.send_signal(signal.SIGINT)
        err = p.communicate(timeout=60)[1]
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(10)
    assert p.returncode == 130, (line, err)
    assert "interrupted" in err
