"""Real service processes (``sanic service.app``) and a private Redis server, for the
scale-out tests."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from tests.support import free_socket

SANIC = str(Path(sys.executable).with_name("sanic"))
ROOT = Path(__file__).resolve().parent.parent
SHARED_REDIS = "redis://127.0.0.1:6379/0"
REDIS_SECRET = "cluster-secret-for-tests-0123456789-0123456789"


def free_port() -> int:
    sock = free_socket()
    port = int(sock.getsockname()[1])
    sock.close()
    return port


@dataclass
class Node:
    """A ``sanic service.app`` process and what it printed."""

    proc: asyncio.subprocess.Process
    url: str
    lines: list[str] = field(default_factory=list)

    @property
    def running(self) -> bool:
        return self.proc.returncode is None

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)

    def terminate(self) -> None:
        os.killpg(self.proc.pid, signal.SIGTERM)

    def records(self) -> list[dict[str, Any]]:
        import json

        out = []
        for line in self.lines:
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    out.append(json.loads(line))
        return out


async def start_node(env: dict[str, str], *args: str, ready: str = "/healthz") -> Node:
    """Start ``sanic service.app`` on a free port with ``env`` (and nothing else SIGNAL_)."""
    port = free_port()
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("SIGNAL_")}
    full_env.update({"SIGNAL_ENV_FILE": "/dev/null", **env})
    proc = await asyncio.create_subprocess_exec(
        SANIC, "service.app", "--host", "127.0.0.1", "--port", str(port), *args,
        cwd=ROOT, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        start_new_session=True)
    node = Node(proc, f"http://127.0.0.1:{port}")

    async def pump() -> None:
        assert proc.stdout is not None
        async for raw in proc.stdout:
            node.lines.append(raw.decode(errors="replace").rstrip())

    node._pump = asyncio.ensure_future(pump())  # type: ignore[attr-defined]
    async with aiohttp.ClientSession() as http:
        for _ in range(300):
            with contextlib.suppress(aiohttp.ClientError):
                async with http.get(node.url + ready) as response:
                    if response.status == 200:
                        return node
            if proc.returncode is not None:
                break
            await asyncio.sleep(0.05)
    node.kill()
    # reap it and read its output to the end: an unread pipe left to the garbage collector
    # fails whichever test happens to be running then (ResourceWarning)
    await proc.wait()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(node._pump, 5)  # type: ignore[attr-defined]
    raise AssertionError("service did not start:\n" + "\n".join(node.lines[-40:]))


async def stop_node(node: Node) -> None:
    if node.running:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(node.proc.pid, signal.SIGINT)
        try:
            await asyncio.wait_for(node.proc.wait(), 20)
        except TimeoutError:
            node.kill()
            await node.proc.wait()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(node._pump, 2)  # type: ignore[attr-defined]


@contextlib.asynccontextmanager
async def nodes(*envs: dict[str, str], args: tuple[str, ...] = (),
                ready: str = "/readyz") -> AsyncIterator[list[Node]]:
    """Nodes started side by side (a process takes seconds to import and start; two of
    them overlap), each waited for until ``ready`` answers 200 (by default /readyz:
    subscribed to the cluster and counted as online)."""
    started: list[Node] = []
    try:
        results = await asyncio.gather(*(start_node(env, *args, ready=ready) for env in envs),
                                       return_exceptions=True)
        started = [r for r in results if isinstance(r, Node)]
        for result in results:
            if isinstance(result, BaseException):
                raise result
        yield started
    finally:
        await asyncio.gather(*(stop_node(n) for n in started))


@dataclass
class RedisServer:
    """A private redis-server on a free port, which a test may stop and start again."""

    port: int
    proc: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        binary = shutil.which("redis-server")
        assert binary, "redis-server is required (Debian: apt-get install redis-server)"
        self.proc = await asyncio.create_subprocess_exec(
            binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        from redis import asyncio as aioredis

        client = aioredis.Redis.from_url(self.url)
        try:
            for _ in range(100):
                with contextlib.suppress(Exception):
                    if await client.ping():
                        return
                await asyncio.sleep(0.05)
        finally:
            await client.aclose()
        raise AssertionError("private redis-server did not start")

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
