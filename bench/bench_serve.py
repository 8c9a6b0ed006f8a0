"""Benchmark: what `qwenvl serve` adds in front of an upstream, against calling the upstream directly.

The upstream is bench_batch.py's minimal asyncio HTTP server (answers a chat.completion at once, in its own
process). `qwenvl serve` runs as users start it (`python -m qwenvl serve ...`, its own process) in front of
that upstream. A client (httpx, its own process: this one) sends the same text request two ways:

- direct: POST {upstream}/chat/completions
- served: POST {serve}/compatible-mode/v1/chat/completions (the server plans it and calls the upstream)

1. **Latency**: sequential requests, A/B interleaved (direct, served, direct, ...); p50 and p99 of each and the
   added latency (served - direct). Goal: p50 +2 ms or less.
2. **Throughput**: requests per second at concurrency 32 for a fixed count, direct and served alternated
   twice; the ratio served / direct. Goal: 80% or more.

Run (from the repository root; not part of CI):

    .venv/bin/python bench/bench_serve.py [--backend dashscope|openai] [--requests 400] [--no-write]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_batch import ServerProcess  # noqa: E402
from results_md import machine, write_section  # noqa: E402

KEY = "sk-bench-serve"


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Serve:
    def __init__(self, upstream: str, backend: str) -> None:
        self.port = free_port()
        env = {**os.environ, "QWENVL_SERVE_API_KEY": KEY, "DASHSCOPE_API_KEY": "sk-upstream", "QWENVL_LOG": "0"}
        upstream_url = upstream if backend == "dashscope" else upstream + "/v1"
        args = [
            sys.executable,
            "-m",
            "qwenvl",
            "serve",
            "--port",
            str(self.port),
            "--backend",
            backend,
            "--upstream",
            upstream_url,
            "--max-concurrent",
            "256",
        ]
        if backend != "dashscope":
            args += ["--model", "qwen3-vl-plus", "--engine", "vllm"]
        self.proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("qwenvl serve did not start: " + (self.proc.stderr.read() if self.proc.stderr else ""))
            time.sleep(0.2)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def body(i: int) -> dict:
    return {
        "model": "qwen3-vl-plus",
        "max_tokens": 16,
        "messages": [{"role": "user", "content": [{"type": "text", "text": f"question {i}"}]}],
    }


async def latency(direct: str, served: str, n: int) -> tuple[list[float], list[float]]:
    a, b = [], []
    headers = {"Authorization": f"Bearer {KEY}"}
    async with httpx.AsyncClient(timeout=30) as h:
        for i in range(20):  # warm both paths (connections, imports, first plans)
            await h.post(direct, json=body(i), headers=headers)
            await h.post(served, json=body(i), headers=headers)
        for i in range(n):
            for url, out in ((direct, a), (served, b)) if i % 2 == 0 else ((served, b), (direct, a)):
                t = time.perf_counter()
                r = await h.post(url, json=body(i), headers=headers)
                out.append((time.perf_counter() - t) * 1000)
                assert r.status_code == 200, r.text
    return a, b


async def throughput(url: str, n: int, concurrency: int) -> float:
    headers = {"Authorization": f"Bearer {KEY}"}
    queue = iter(range(n))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=60, limits=limits) as h:

        async def worker() -> None:
            for i in queue:
                r = await h.post(url, json=body(i), headers=headers)
                assert r.status_code == 200, r.text

        t = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return n / (time.perf_counter() - t)


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--backend", default="dashscope", choices=["dashscope", "openai"])
    ap.add_argument("--requests", type=int, default=400)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    with ServerProcess(0.0) as upstream:
        serve = Serve(upstream.url, args.backend)
        try:
            direct = upstream.url + ("/chat/completions" if args.backend == "dashscope" else "/v1/chat/completions")
            served = serve.url + "/compatible-mode/v1/chat/completions"
            a, b = asyncio.run(latency(direct, served, args.requests))
            rates: dict[str, list[float]] = {"direct": [], "served": []}
            for _ in range(2):
                for name, url in (("direct", direct), ("served", served)):
                    rates[name].append(asyncio.run(throughput(url, args.requests * 2, args.concurrency)))
        finally:
            serve.stop()
    p50a, p50b, p99a, p99b = statistics.median(a), statistics.median(b), pct(a, 99), pct(b, 99)
    rate_a, rate_b = statistics.median(rates["direct"]), statistics.median(rates["served"])
    lines = [
        f"Measured {time.strftime('%Y-%m-%d')} on {machine()} (a shared machine: other work was running).",
        f"Upstream: bench_batch.py's asyncio server answering at once; `qwenvl serve --backend {args.backend}` "
        "in its own process; client: httpx, text-only requests.",
        "",
        "| | direct | through qwenvl serve | added / ratio |",
        "|---|---|---|---|",
        f"| latency p50 (ms) | {p50a:.2f} | {p50b:.2f} | +{p50b - p50a:.2f} ms |",
        f"| latency p99 (ms) | {p99a:.2f} | {p99b:.2f} | +{p99b - p99a:.2f} ms |",
        f"| throughput at concurrency {args.concurrency} (req/s) | {rate_a:.0f} | {rate_b:.0f} | "
        f"{rate_b / rate_a:.2f}x |",
        "",
        f"Goals: p50 +2 ms or less ({'met' if p50b - p50a <= 2 else 'NOT met'}); throughput 80% or more "
        f"({'met' if rate_b / rate_a >= 0.8 else 'NOT met'}). Sequential latency: {args.requests} requests each "
        f"way, interleaved; throughput: {args.requests * 2} requests each way, twice, median.",
    ]
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        write_section(f"qwenvl serve overhead ({args.backend} backend)", text)


if __name__ == "__main__":
    main()
