"""deploy/compose.yaml stays runnable: its qwenvl commands parse with today's CLI, its vLLM command line uses
JSON where vLLM wants JSON, and the GPU settings docs/scale-out.md explains are there (Docker is not run here)."""

from __future__ import annotations

import json
from pathlib import Path

import click
import pytest
import yaml

from qwenvl.cli.main import cli

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "deploy" / "compose.yaml"


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def _flags(command: list[str]) -> dict[str, str]:
    return dict(arg.removeprefix("--").split("=", 1) for arg in command if arg.startswith("--") and "=" in arg)


def _parse(args: list[str]) -> click.Context:
    """Parse ``qwenvl ARGS`` down to the leaf command the way the CLI would, without running it."""
    name, *rest = args
    return cli.commands[name].make_context(name, rest)


def test_qwenvl_serve_command_parses_with_the_cli(compose):
    command = compose["services"]["qwenvl"]["command"]
    assert command[:2] == ["qwenvl", "serve"]
    ctx = _parse(command[1:])
    assert ctx.params["backend"] == "openai" and ctx.params["engine"] == "vllm"
    assert ctx.params["upstream"] == "http://vllm:8000/v1"  # the vllm service's name and port, OpenAI path
    assert ctx.params["host"] == "0.0.0.0" and not ctx.params["no_auth"]  # published: a key is required
    env = compose["services"]["qwenvl"]["environment"]
    assert "QWENVL_SERVE_API_KEY" in env and ":?" in env["QWENVL_SERVE_API_KEY"]  # no default key


def test_a_wrong_flag_would_be_caught():
    with pytest.raises(click.UsageError):
        _parse(["serve", "--backend=openai", "--upstreams=http://vllm:8000/v1"])


def test_vllm_service_has_the_gpu_settings(compose):
    vllm = compose["services"]["vllm"]
    devices = vllm["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    flags = _flags(vllm["command"])
    assert int(flags["tensor-parallel-size"]) == devices[0]["count"]
    assert vllm.get("ipc") == "host" or vllm.get("shm_size")
    assert any(v.endswith(":/root/.cache/huggingface") for v in vllm["volumes"])
    assert "/health" in " ".join(vllm["healthcheck"]["test"])
    assert vllm["ports"] == ["127.0.0.1:8000:8000"]  # vLLM has no key: loopback only
    # qwenvl puts per-request budgets and fps in mm_processor_kwargs; recent vLLM refuses them without this flag
    assert "--trust-request-mm-kwargs" in vllm["command"]
    assert compose["services"]["qwenvl"]["depends_on"]["vllm"]["condition"] == "service_healthy"


def test_vllm_json_flags_are_json(compose):
    flags = _flags(compose["services"]["vllm"]["command"])
    limits = json.loads(flags["limit-mm-per-prompt"])  # the key=value form is rejected since vLLM 0.10
    assert set(limits) <= {"image", "video"} and all(isinstance(v, int) for v in limits.values())
    assert json.loads(flags["mm-processor-kwargs"])["max_pixels"] == 1280 * 28 * 28
    assert flags["model"].split(":-")[-1].rstrip("}") == "Qwen/Qwen2.5-VL-7B-Instruct"
