"""The pure core stays pure: config, errors, auth, protocol, expiry and the call rules import
neither Sanic nor python-socketio nor Redis, so they are usable and testable without a
server; the policy code (handlers, calls) never imports Redis either."""

from __future__ import annotations

import subprocess
import sys


def test_core_imports_no_transport() -> None:
    """Importing the core in a fresh interpreter loads no sanic, socketio or engineio module."""
    code = (
        "import sys, service.config, service.errors, service.auth, service.protocol, "
        "service.expiry, service.logs, service.limits, service.guard, service.calls, "
        "service.callstore, service.webhook, service.turn\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('sanic', 'socketio', 'engineio', 'redis'))\n"
        "print(','.join(bad))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    assert result.stdout.strip() == ""


def test_only_the_auth_package_imports_jwt() -> None:
    """``jwt`` is imported by service/auth/ and nowhere else in the service."""
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent / "service"
    importers = sorted(str(p.relative_to(root)) for p in root.rglob("*.py")
                       if any(line.startswith(("import jwt", "from jwt"))
                              for line in p.read_text().splitlines()))
    assert importers and all(p.startswith("auth/") for p in importers), importers


def test_only_the_cluster_package_imports_redis() -> None:
    """The handlers and the call orchestration reach Redis only through the interfaces
    (``Presence``, ``Delivery``, ``CallStore``) that service/cluster/ implements.
    (python-socketio itself imports redis-py, so this is checked in the source.)"""
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent / "service"
    importers = sorted(str(p.relative_to(root)) for p in root.rglob("*.py")
                       if any(line.startswith(("import redis", "from redis"))
                              for line in p.read_text().splitlines()))
    assert importers and all(p.startswith("cluster/") for p in importers), importers
