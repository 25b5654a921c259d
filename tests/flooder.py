"""A flooding client, run as its own process by test_hostile.py so that the flood competes
with the service for the CPU, not for the test's event loop.

    python tests/flooder.py URL TOKEN EVENT PAYLOAD_JSON SECONDS

Emits EVENT as fast as it can; when the server disconnects it, it connects again and goes on,
for SECONDS. Prints a JSON line when its first connection is up, and one at the end: how
many events it sent, how many connections it made, why they ended, and how many
connection attempts were refused.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

import socketio


async def flood(url: str, token: str, event: str, payload: object, until: float,
                report: dict[str, object]) -> None:
    client = socketio.AsyncClient(reconnection=False)
    reasons: list[object] = []
    client.on("server_disconnect", lambda data: reasons.append(data))
    try:
        await client.connect(url, auth={"token": token}, transports=["websocket"])
    except socketio.exceptions.ConnectionError:
        report["refused"] = int(str(report["refused"])) + 1
        await asyncio.sleep(0.05)
        return
    finally:
        if not report["ready"]:
            report["ready"] = True
            print(json.dumps({"ready": True}), flush=True)
    report["connections"] = int(str(report["connections"])) + 1
    sent = 0
    while client.connected and time.monotonic() < until:
        await client.emit(event, payload)
        sent += 1
        if sent % 50 == 0:
            await asyncio.sleep(0)
    report["sent"] = int(str(report["sent"])) + sent
    if reasons:
        report.setdefault("reasons", [])
        report["reasons"].append(reasons[0])  # type: ignore[attr-defined]
    await client.disconnect()
    if client.eio.http is not None:
        await client.eio.http.close()


async def main(url: str, token: str, event: str, payload: object, seconds: float) -> None:
    report: dict[str, object] = {"ready": False, "sent": 0, "connections": 0, "refused": 0}
    started = time.monotonic()
    until = started + seconds
    while time.monotonic() < until:
        await flood(url, token, event, payload, until, report)
    report["seconds"] = round(time.monotonic() - started, 2)
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4]),
                     float(sys.argv[5])))
