"""A real coturn for the TURN tests: Debian's ``turnserver`` on a free loopback port, with
``use-auth-secret`` (the REST credentials the service mints). A missing turnserver fails the
tests (scripts/test installs it): it is not a reason to skip them."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

TURN_SECRET = "coturn-shared-secret-for-tests-0123456789"


@dataclass
class Coturn:
    port: int
    secret: str
    log: Path

    @property
    def url(self) -> str:
        return f"turn:127.0.0.1:{self.port}?transport=udp"

    def lines(self) -> list[str]:
        return self.log.read_text(errors="replace").splitlines()


def _free_port() -> int:
    """A port free for both UDP and TCP (coturn listens on both)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.1", 0))
            port = int(udp.getsockname()[1])
            with socket.socket() as tcp:
                try:
                    tcp.bind(("127.0.0.1", port))
                except OSError:
                    continue
            return port


@contextlib.asynccontextmanager
async def coturn(secret: str = TURN_SECRET) -> AsyncIterator[Coturn]:
    binary = shutil.which("turnserver")
    assert binary, "coturn's turnserver is required (Debian: apt-get install coturn)"
    port = _free_port()
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "turn.log"
        args = [binary, "-n", "--listening-ip=127.0.0.1", "--relay-ip=127.0.0.1",
                f"--listening-port={port}", "--min-port=49152", "--max-port=65535",
                "--use-auth-secret", f"--static-auth-secret={secret}",
                "--realm=signaling.test", "--no-tls", "--no-dtls", "--no-cli",
                "--allow-loopback-peers", "--fingerprint", f"--pidfile={tmp}/turn.pid",
                f"--userdb={tmp}/turndb", "--simple-log", f"--log-file={log}"]
        proc = await asyncio.create_subprocess_exec(
            *args, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
        try:
            for _ in range(200):  # its TCP listener is up with the UDP one
                try:
                    _, writer = await asyncio.open_connection("127.0.0.1", port)
                    writer.close()
                    break
                except OSError:
                    assert proc.returncode is None, "turnserver exited"
                    await asyncio.sleep(0.05)
            else:
                raise AssertionError(f"turnserver did not listen on {port}")
            yield Coturn(port, secret, log)
        finally:
            proc.terminate()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), 5)
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
