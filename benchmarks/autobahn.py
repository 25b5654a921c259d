#!/usr/bin/env python3
"""The Autobahn|Testsuite against the service's own websocket layer, beside ``websockets``.

    .venv/bin/python benchmarks/autobahn.py [--cases 1.*,2.*] [--json FILE]

Runs the suite's fuzzing client (cases 1-10: framing, pings, reserved bits and opcodes,
fragmentation, UTF-8, close handshakes and codes, large messages, auto-fragmentation; 12-13
need permessage-deflate, which the service does not negotiate) against two echo servers in
this process: the service's ``Wire`` (``service.transport.websocket``: the same parser, limits
and close handshake every Engine.IO connection has, handed each message back) and the
``websockets`` library's asyncio server, with the same limits. The limits are raised to what
the suite sends (16 MiB messages, 4 MiB in 64-byte fragments); the service's own (64 KiB,
64 fragments) are tested by the regular suite. Prints, per case group and server, how many
cases were OK, NON-STRICT, INFORMATIONAL, UNIMPLEMENTED and FAILED, then every case that was
not OK; exit status 1 when the service failed one.

The suite is a Python 2.7 program (PyPI ``autobahntestsuite``, whose sdist declares none of
its dependencies): on first use it is installed into ``.autobahn/`` with the pinned list in
``benchmarks/autobahn-requirements.txt``, from a Python 2.7 (``--python2``, or the first
``python2.7`` on PATH or under ``~/.pyenv/versions``) and ``virtualenv<20.22``. Group 9 takes a
few minutes.
"""

from __future__ import annotations

import argparse
import asyncio
import glob
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sanic import Request, Sanic  # noqa: E402
from websockets.asyncio.server import ServerConnection, serve  # noqa: E402
from websockets.version import version as websockets_version  # noqa: E402

from service.transport import Wire, accept  # noqa: E402

VENV = ROOT / ".autobahn"
REQUIREMENTS = ROOT / "benchmarks" / "autobahn-requirements.txt"
SUITE = "autobahntestsuite==25.10.1"
#: what the suite's largest cases send (9.1.6: 16 MiB; 9.3.1: 4 MiB in 64-byte fragments)
MAX_SIZE = 16 * 1024 * 1024
MAX_FRAGMENTS = 4 * 1024 * 1024 // 64 + 1
CASES = [f"{n}.*" for n in range(1, 11)]
#: the library logs a traceback for every protocol error the suite provokes
logging.getLogger("websockets").setLevel(logging.CRITICAL)
BEHAVIOURS = ("OK", "NON-STRICT", "INFORMATIONAL", "UNIMPLEMENTED", "FAILED")
Sanic.test_mode = True


def find_python2(given: str | None) -> str:
    candidates = [given] if given else [
        *sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/2.7*/bin/python2.7"))),
        shutil.which("python2.7")]
    for candidate in candidates:
        if candidate and subprocess.run(
                [candidate, "-c", "import sys; sys.exit(sys.version_info[:2] != (2, 7))"],
                capture_output=True).returncode == 0:
            return candidate
    raise SystemExit("autobahn: no Python 2.7 found (give --python2 PATH)")


def ensure_suite(python2: str | None) -> Path:
    """``wstest`` in .autobahn/, installed on first use."""
    wstest = VENV / "bin" / "wstest"
    if wstest.exists():
        return wstest
    tools = VENV / "tools"
    subprocess.run([sys.executable, "-m", "venv", str(tools)], check=True)
    subprocess.run([str(tools / "bin" / "pip"), "install", "--quiet", "virtualenv<20.22"],
                   check=True)
    subprocess.run([str(tools / "bin" / "virtualenv"), "--quiet", "-p", find_python2(python2),
                    str(VENV)], check=True)
    subprocess.run([str(VENV / "bin" / "pip"), "install", "--quiet", SUITE, "-r",
                    str(REQUIREMENTS)], check=True)
    return wstest


def service_echo() -> Sanic[Any, Any]:
    """The service's websocket layer, handing each message back."""
    app = Sanic("autobahn_echo")
    app.config.WEBSOCKET_MAX_SIZE = MAX_SIZE

    async def echo(request: Request) -> None:
        wire = accept(request, send_timeout=120)
        wire._max_fragments = MAX_FRAGMENTS  # the suite's, not the service's 64
        wire.detached = True  # served below, as the Engine.IO transport is
        task = asyncio.ensure_future(_echo(wire))
        _tasks.add(task)
        task.add_done_callback(_tasks.discard)

    echo.is_websocket = True  # type: ignore[attr-defined]
    app.add_route(echo, "/", methods=["GET"])
    app.enable_websocket()
    return app


_tasks: set[asyncio.Task[None]] = set()


async def _echo(wire: Wire) -> None:
    while (message := await wire.recv()) is not None:
        wire.send(message)
    wire.fail()


async def library_echo(connection: ServerConnection) -> None:
    async for message in connection:
        await connection.send(message)


async def run(wstest: Path, cases: list[str]) -> dict[str, dict[str, dict[str, Any]]]:
    ours = service_echo()
    server = await ours.create_server(host="127.0.0.1", port=0, return_asyncio_server=True)
    assert server is not None
    await server.startup()  # type: ignore[no-untyped-call]
    await server.start_serving()  # type: ignore[no-untyped-call]
    our_port = server.server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
    library = await serve(library_echo, "127.0.0.1", 0, max_size=MAX_SIZE, compression=None)
    library_port = next(iter(library.sockets)).getsockname()[1]
    with tempfile.TemporaryDirectory(prefix="autobahn-") as work:
        spec = {"outdir": f"{work}/reports",
                "servers": [{"agent": "service", "url": f"ws://127.0.0.1:{our_port}"},
                            {"agent": "websockets", "url": f"ws://127.0.0.1:{library_port}"}],
                "cases": cases, "exclude-cases": [], "exclude-agent-cases": {}}
        await asyncio.to_thread(Path(f"{work}/spec.json").write_text, json.dumps(spec))
        process = await asyncio.create_subprocess_exec(
            str(wstest), "-m", "fuzzingclient", "-s", f"{work}/spec.json", cwd=work,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
        try:
            await process.wait()
        finally:
            library.close()
            await library.wait_closed()
            server.close()  # type: ignore[no-untyped-call]
        report = json.loads(await asyncio.to_thread(
            Path(f"{work}/reports/index.json").read_text))
    if process.returncode != 0:
        raise SystemExit(f"autobahn: wstest exited with {process.returncode}")
    return {agent: {case: {"behavior": result["behavior"],
                           "close": result.get("behaviorClose")}
                    for case, result in results.items()}
            for agent, results in report.items()}


def case_key(case: str) -> tuple[int, ...]:
    return tuple(int(part) for part in case.split("."))


def table(results: dict[str, dict[str, dict[str, Any]]]) -> str:
    agents = list(results)
    lines = ["| group | " + " | ".join(agents) + " |", "|---" * (len(agents) + 1) + "|"]
    groups: dict[str, dict[str, Counter[str]]] = defaultdict(lambda: defaultdict(Counter))
    for agent, cases in results.items():
        for case, result in cases.items():
            groups[case.split(".")[0]][agent][result["behavior"]] += 1
    for group in sorted(groups, key=int):
        cells = [", ".join(f"{groups[group][a][b]} {b}" for b in BEHAVIOURS
                           if groups[group][a][b]) for a in agents]
        lines.append(f"| {group} | " + " | ".join(cells) + " |")
    totals = [", ".join(f"{n} {b}" for b in BEHAVIOURS
                        if (n := sum(1 for r in results[a].values() if r["behavior"] == b)))
              for a in agents]
    lines.append("| all | " + " | ".join(totals) + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default=",".join(CASES),
                        help="comma-separated case patterns (default: 1.* to 10.*)")
    parser.add_argument("--python2", help="a Python 2.7 to install the suite with")
    parser.add_argument("--json", help="write every case's result here")
    args = parser.parse_args()
    wstest = ensure_suite(args.python2)
    results = asyncio.run(run(wstest, args.cases.split(",")))
    print(f"Autobahn|Testsuite fuzzingclient ({SUITE}), websockets {websockets_version}")
    print(table(results))
    for agent, cases in results.items():
        for case in sorted(cases, key=case_key):
            if cases[case]["behavior"] != "OK":
                print(f"{agent} {case}: {cases[case]['behavior']} "
                      f"(close: {cases[case]['close']})")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, sort_keys=True))
    failed = [c for c, r in results.get("service", {}).items() if r["behavior"] == "FAILED"]
    return 1 if failed or "service" not in results else 0


if __name__ == "__main__":
    raise SystemExit(main())
