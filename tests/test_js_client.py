"""The official JavaScript ``socket.io-client`` v4 (npm, run by Node) against the service."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from pathlib import Path

from service.config import Rate, Secret, Settings
from tests.support import SECRET, RunningService, serving

JS = Path(__file__).parent / "js"


async def test_official_js_client() -> None:
    """tests/js/signaling.test.mjs passes: auth payload and Authorization header, websocket and
    polling, relays with stamped ``from``, error acks and refusals."""
    # every Node client comes from 127.0.0.1: lift the per-address limits for this run
    settings = Settings(jwt_secret=Secret(SECRET), limit_ip_connects=Rate(0, 0),
                        limit_ip_auth_failures=Rate(0, 0))
    async with serving(settings) as service:
        await _run_node(service)


async def _run_node(service: RunningService) -> None:
    node = shutil.which("node")
    assert node, "Node.js is required for this test (scripts/test checks for it)"
    assert (JS / "node_modules" / "socket.io-client").is_dir(), (
        "socket.io-client is not installed: run scripts/test (it runs npm ci in tests/js)")
    tokens = {"alice": service.token("alice"), "bob": service.token("bob"),
              "expired": service.token("alice", ttl=-60)}
    env = {**os.environ, "SIGNAL_URL": service.url, "SIGNAL_TOKENS": json.dumps(tokens)}
    proc = await asyncio.create_subprocess_exec(
        node, "--test", "--test-reporter=spec", str(JS / "signaling.test.mjs"), cwd=JS, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    report = out.decode()
    assert proc.returncode == 0, report
    assert "pass 12" in report and "fail 0" in report, report
